"""Patterns traced from a builder (Inductor's register_replacement): the builder IS the pattern.

`Template` runs a graph builder (e.g. llama.cpp's chunked delta net from minigraph.models) on
placeholder leafs of given shapes; `match_template` then grows a node-for-node correspondence
between the template and a real graph from one seed pair (the anchor), walking sources and
consumers. Nodes correspond when their op, op_params, type and ne agree (and, for VIEWs, their
strides and offset); edges when the sources agree after relabel-only chains are looked through
(minigraph.patterns.normalise), so a graph written by anyone with the same math matches, whatever
names it uses and however it spells its reshapes. Placeholders bind to the real inputs.

The first disagreement is returned as a Miss naming the real node: a near miss's reason.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from minigraph.core.context import Context
from minigraph.core.dtypes import TYPE_F32
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.passes.patterns import Miss, is_relabel, normalise, relabel_chain, same_param
from minigraph.core.tensor import Tensor

IGNORED_PARAMS = ("fused_from", "fused_pattern", "fused_names")


def norm_consumers(nodes: Sequence[Tensor]) -> dict[int, list[tuple[Tensor, int]]]:
    """id(tensor) -> [(consumer, slot)] where the consumer reads it through relabel-only chains
    (relabel nodes themselves are transparent, not consumers)."""
    out: dict[int, list[tuple[Tensor, int]]] = {}
    for c in nodes:
        if is_relabel(c):
            continue
        for i, s in enumerate(c.src):
            if s is not None:
                out.setdefault(id(normalise(s)), []).append((c, i))
    return out


class Template:
    """A builder traced on placeholders: `inputs`, `outputs`, `nodes` (topological), consumers."""

    def __init__(self, builder: Callable[..., Any], shapes: Sequence[Sequence[int]], **kw: Any) -> None:
        self.ctx = Context()
        self.inputs = [self.ctx.new_tensor_4d(TYPE_F32, *ne) for ne in shapes]
        outs = builder(self.ctx, *self.inputs, **kw)
        self.outputs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        g = Graph(self.ctx)
        for o in self.outputs:
            g.build_forward_expand(o)
        self.nodes = g.nodes
        self.core = [n for n in g.nodes if not is_relabel(n)]
        self.consumers = norm_consumers(g.nodes)
        self.input_ids = {id(t): i for i, t in enumerate(self.inputs)}


@dataclass
class TemplateMatch:
    """What a match found: real tensor per template node, per input and per output."""

    node: dict = field(default_factory=dict)       # id(template node) -> real node
    inputs: list = field(default_factory=list)     # per placeholder: the real tensor (same ne)
    outputs: list = field(default_factory=list)    # per template output: the real normalised producer
    region: dict = field(default_factory=dict)     # id(real node) -> real node (the matched core)


def _local(t: Tensor, a: Tensor) -> Optional[str]:
    """Why real node `a` cannot stand for template node `t` (None if it can)."""
    if a.op != t.op:
        return f"expected {t.op}, found {a.op or 'a leaf'}"
    if a.type != t.type or a.ne != t.ne:
        return f"{a.op}: ne={list(a.ne)}, expected ne={list(t.ne)}"
    if len(a.src) != len(t.src) or any((x is None) != (y is None) for x, y in zip(a.src, t.src)):
        return f"{a.op}: different sources"
    for k in set(t.op_params) | set(a.op_params):
        if k not in IGNORED_PARAMS and not same_param(a.op_params.get(k), t.op_params.get(k)):
            return f"{a.op}: {k}={a.op_params.get(k)!r}, expected {t.op_params.get(k)!r}"
    if (a.view_src is None) != (t.view_src is None):
        return f"{a.op}: in-place write where the pattern has none (or the reverse)"
    if a.op == "VIEW":
        rel_a = a.view_offs - (a.src[0].view_offs if a.src[0].view_src is not None else 0)
        rel_t = t.view_offs - (t.src[0].view_offs if t.src[0].view_src is not None else 0)
        if a.nb != t.nb or rel_a != rel_t:
            return f"VIEW: nb={list(a.nb)} offset={rel_a}, expected nb={list(t.nb)} offset={rel_t}"
    return None


def match_template(tp: Template, t_anchor: Tensor, a_anchor: Tensor,
                   consumers: dict[int, list[tuple[Tensor, int]]]) -> Union[TemplateMatch, Miss]:
    """Grow the correspondence from (t_anchor, a_anchor); `consumers` is norm_consumers of the real
    graph. Returns the match, or the first Miss."""
    why = _local(t_anchor, a_anchor)
    if why:
        return Miss(a_anchor, why)
    fwd: dict[int, Tensor] = {id(t_anchor): a_anchor}
    back: dict[int, Tensor] = {id(a_anchor): t_anchor}
    bound: dict[int, Tensor] = {}      # id(placeholder) -> real normalised producer
    bound_at: dict[int, Tensor] = {}   # id(placeholder) -> real tensor with the placeholder's ne
    queue = deque([t_anchor])
    deferred: list[Tensor] = []

    def mapped(tn: Tensor) -> Optional[Tensor]:
        return bound.get(id(tn)) if id(tn) in tp.input_ids else fwd.get(id(tn))

    def add(tn: Tensor, an: Tensor) -> Optional[Miss]:
        if id(an) in back:
            return Miss(an, f"{an.op} already stands for another {back[id(an)].op} of the pattern")
        why = _local(tn, an)
        if why:
            return Miss(an, why)
        fwd[id(tn)], back[id(an)] = an, tn
        queue.append(tn)
        return None

    def edge(ts: Tensor, as_: Tensor, consumer: Tensor) -> Optional[Miss]:
        if ts.ne != as_.ne:
            return Miss(consumer, f"{consumer.op} reads ne={list(as_.ne)}, expected ne={list(ts.ne)}")
        tn, an = normalise(ts), normalise(as_)
        if id(tn) in tp.input_ids:
            if id(tn) in bound:
                return None if bound[id(tn)] is an else Miss(
                    consumer, f"{consumer.op} reads a different tensor where the pattern reads input {tp.input_ids[id(tn)]}")
            if an.op is not None and id(an) in back:
                return Miss(an, "an input of the pattern is computed inside the matched region")
            at = [x for x in relabel_chain(as_) if x.ne == tn.ne]
            bound[id(tn)] = an
            bound_at[id(tn)] = at[-1] if at else an
            return None
        if id(tn) in fwd:
            return None if fwd[id(tn)] is an else Miss(consumer, f"{consumer.op} reads {an.op or 'a leaf'} "
                                                        f"where the pattern reads {tn.op}")
        return add(tn, an)

    def consumer_candidates(tc: Tensor, slot: int, a: Tensor) -> list[Tensor]:
        out = []
        for ac, s in consumers.get(id(a), []):
            if s != slot or id(ac) in back or _local(tc, ac):
                continue
            ok = True
            for j, ts in enumerate(tc.src):
                m = mapped(normalise(ts)) if ts is not None else None
                if m is not None and normalise(ac.src[j]) is not m:
                    ok = False
                    break
            if ok:
                out.append(ac)
        return out

    def walk_consumers(tn: Tensor, greedy: bool) -> Union[bool, Miss]:
        """Map the template consumers of tn; False when one is still ambiguous."""
        a = fwd[id(tn)]
        done = True
        for tc, slot in tp.consumers.get(id(tn), []):
            if id(tc) in fwd:
                continue
            cands = consumer_candidates(tc, slot, a)
            if not cands:
                return Miss(a, f"no consumer of this {a.op} matches the pattern's {tc.op} (src {slot})")
            if len(cands) > 1 and not greedy:
                done = False
                continue
            miss = add(tc, cands[0])
            if miss:
                return miss
        return done

    while True:
        while queue:
            tn = queue.popleft()
            a = fwd[id(tn)]
            for ts, as_ in zip(tn.src, a.src):
                if ts is not None:
                    miss = edge(ts, as_, a)
                    if miss:
                        return miss
            res = walk_consumers(tn, greedy=False)
            if isinstance(res, Miss):
                return res
            if res is False:
                deferred.append(tn)
        if not deferred:
            break
        progress = False
        for tn in list(deferred):
            res = walk_consumers(tn, greedy=False)
            if isinstance(res, Miss):
                return res
            if res is True:
                deferred.remove(tn)
                progress = True
        if not progress and not queue:  # still ambiguous: take the first candidate, verify later
            res = walk_consumers(deferred.pop(0), greedy=True)
            if isinstance(res, Miss):
                return res
    for tn in tp.core:
        if id(tn) not in fwd and id(tn) not in tp.input_ids:
            return Miss(None, f"the pattern's {tn.op} ne={list(tn.ne)} has no counterpart")
    if len(bound) != len(tp.inputs):
        return Miss(None, "not every input of the pattern was found")
    m = TemplateMatch(node=fwd, region={id(a): a for a in fwd.values()})
    m.inputs = [bound_at[id(t)] for t in tp.inputs]
    m.outputs = [mapped(normalise(o)) for o in tp.outputs]
    if any(o is None for o in m.outputs):
        raise MinigraphError("match_template: a template output was not matched")  # cannot happen
    return m
