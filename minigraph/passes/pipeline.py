"""The optimize stage: the graph that will actually run (fusion passes applied). The input graph is unchanged.

Pipeline (each pass: Graph in, rewrites out, a new Graph built from them):
  1. delta_net_chunked         llama.cpp's chunked delta net (GDA/KDA)  -> GATED_DELTA_NET + 2 views
  2. delta_net_autoregressive  llama.cpp's one-token delta net (GDA)    -> GATED_DELTA_NET + 2 views
  3. gdn_repeat                q/k REPEATs that tile heads into a GATED_DELTA_NET -> the op reads the
                               H_k-head tensors (it broadcasts heads itself)
  4. gdn_state_write           cpy(GATED_DELTA_NET's final state, cache slot) -> the op writes the slot
                               itself (the CPY stays, marked written_by: backends skip it)
  5. attention                 llama.cpp's attention without flash attn -> FLASH_ATTN_EXT (+ a permute view)
  6. elementwise               chains of elementwise ops over one shape -> FUSED_ELEMENTWISE
A rewrite happens only where the backend the region would run on (the first of the target's
backends, in priority order, that supports the region's anchor node) `supports_op` the fused node.
Every fused node carries op_params["fused_from"] (the op names it replaced), op_params["fused_pattern"]
and op_params["fused_names"] (the user names it absorbed).

`Pipeline.optimize(gf, target, fuse)` returns an `Optimized` result: the graph to run, the
(user tensor, tensor holding its value) pairs, provenance and the pass log. The rewritten graph is
made of new tensors where anything changed, so after a run the caller binds the results
(minigraph.memory.binding.bind_results) to make the user's tensors show their values. Results are
cached per (graph, target) at the graph's plan key. MINIGRAPH_FUSION_DEBUG=1 prints the pass log.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from minigraph.core import flags
from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.plan_cache import PlanCache
from minigraph.core.tensor import FLAG_OUTPUT, Tensor, contiguous_strides
from minigraph.memory.binding import ResultBinder

COUNTERS: Counter = Counter()  # "<pass>.fused", "<pass>.near_miss", "<pass>.refused" (Inductor's counters)


class RewriteRefused(MinigraphError):
    """A rewrite that cannot be spliced in (a consumer addresses the replaced tensor's raw memory)."""


@dataclass
class Rewrite:
    """One match turned into new nodes: `replace` maps id(old tensor) -> new tensor (consumers of
    old read new), `absorbed` lists the old nodes the fused node computes (for provenance)."""

    name: str
    fused: Tensor
    replace: dict = field(default_factory=dict)
    keep: list = field(default_factory=list)       # the old tensors (keeps ids valid)
    absorbed: list = field(default_factory=list)


class Target:
    """Where regions run: backends in priority order (a Backend, a list, or a scheduler)."""

    def __init__(self, backend: Any) -> None:
        b = getattr(backend, "backends", backend)
        self.backends = list(b) if isinstance(b, (list, tuple)) else [b]
        self._cache: dict[tuple, Any] = {}

    def supports(self, backend: Any, node: Tensor) -> Any:
        key = (id(backend), id(node))
        if key not in self._cache:
            self._cache[key] = backend.supports_op(node)
        return self._cache[key]

    def placement(self, node: Tensor) -> Optional[Any]:
        """The first backend that supports `node` (where the scheduler would put it)."""
        for b in self.backends:
            if self.supports(b, node):
                return b
        return None


class PassLog:
    """What each pass matched, refused and nearly matched (MINIGRAPH_FUSION_DEBUG=1 prints it)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str]] = []

    def add(self, pass_name: str, status: str, msg: Any) -> None:
        COUNTERS[f"{pass_name}.{status}"] += 1
        self.entries.append((pass_name, status, str(msg)))
        if flags.fusion_debug():
            print(f"[fusion] {pass_name}: {status}: {msg}")

    def __str__(self) -> str:
        return "\n".join(f"{p}: {s}: {m}" for p, s, m in self.entries)


def _clone(n: Tensor, srcs: list, ctx: Context) -> Tensor:
    """n with new sources; a view keeps its geometry relative to its (new) parent."""
    if n.view_src is None:
        t = Tensor(ctx, n.type, n.ne, n.nb, op=n.op, src=srcs, op_params=n.op_params)
    else:
        p = next(i for i, s in enumerate(n.src) if s is not None and s.root is n.root)
        old, new = n.src[p], srcs[p]
        rel = n.view_offs - (old.view_offs if old.view_src is not None else 0)
        nb = n.nb
        if new is not old and (new.nb != old.nb or new.ne != old.ne):
            if n.op in ("PERMUTE", "TRANSPOSE"):
                axes = [n.op_params[f"axis{i}"] for i in range(4)] if n.op == "PERMUTE" else [1, 0, 2, 3]
                nbl = [0] * 4
                for i, ax in enumerate(axes):
                    nbl[ax] = new.nb[i]
                nb = tuple(nbl)
            elif n.op == "RESHAPE" and new.nb == contiguous_strides(new.type, new.ne):
                nb = contiguous_strides(n.type, n.ne)
            else:
                raise RewriteRefused(f"{n.op} {describe(n)} addresses the raw memory of a rewritten tensor")
        t = Tensor(ctx, n.type, n.ne, nb, op=n.op, src=srcs, op_params=n.op_params, view_src=new, view_offs=rel)
    t.name, t.flags = n.name, n.flags
    ctx.tensors.append(t)
    return t


def rebuild(gf: Graph, outputs: Sequence[Tensor], rewrites: Sequence[Rewrite], ctx: Context) -> tuple[Graph, dict]:
    """A new graph computing `outputs` with the rewrites spliced in; returns it and id(old) -> new
    for every replaced or re-created tensor. Unchanged tensors are shared, not copied."""
    replace: dict[int, Tensor] = {}
    for rw in rewrites:
        replace.update(rw.replace)
    old = {id(t) for t in gf.nodes} | {id(t) for t in gf.leafs}
    new_of: dict[int, Tensor] = {}
    fixed: dict[int, Tensor] = {}

    def fix(t: Tensor) -> Tensor:
        """A rewrite's new tensor, re-pointed at the rebuilt versions of the old tensors it reads
        (a fused region may read another region's output)."""
        if id(t) in old:
            return new_of.get(id(t), t)
        if id(t) not in fixed:
            srcs = [None if s is None else fix(s) for s in t.src]
            fixed[id(t)] = t if all(a is b for a, b in zip(srcs, t.src)) else _clone(t, srcs, ctx)
        return fixed[id(t)]

    for n in gf.nodes:
        if id(n) in replace:
            new_of[id(n)] = fix(replace[id(n)])
            continue
        srcs = [None if s is None else new_of.get(id(s), s) for s in n.src]
        if any(a is not b for a, b in zip(srcs, n.src)):
            new_of[id(n)] = _clone(n, srcs, ctx)
    g = Graph(ctx)
    for o in outputs:
        g.build_forward_expand(new_of.get(id(o), o))
    return g, new_of


def _results(gf: Graph) -> list[Tensor]:
    outs = list(gf.outputs) or [n for n in gf.nodes[-1:]]
    seen = {id(t) for t in outs}
    return outs + [n for n in gf.nodes if n.flags & FLAG_OUTPUT and id(n) not in seen]


@dataclass
class Optimized:
    """What the optimize stage returns for one (graph, target): `graph` runs in place of the user's
    graph; `results` pairs each user tensor whose value another tensor now computes with that
    tensor; `provenance` maps id(user node) to the tensor that now computes it; `log` is the pass
    log. `binder` keeps what binding the results learnt between computes."""

    graph: Graph
    results: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    log: PassLog = field(default_factory=PassLog)
    binder: ResultBinder = field(default_factory=ResultBinder)

    # the graph's own view, so code that only reads the graph can take either
    @property
    def nodes(self) -> list:
        return self.graph.nodes

    @property
    def leafs(self) -> list:
        return self.graph.leafs

    def __len__(self) -> int:
        return len(self.graph.nodes)


class Pipeline:
    """Named passes run in order, each `pass(graph, target, log, keep) -> [Rewrite]`."""

    def __init__(self, passes: Sequence[Any]) -> None:
        self.passes = list(passes)
        self._cache = PlanCache()

    def __call__(self, gf: Graph, target: Any, fuse: Optional[bool] = None) -> Optimized:
        return self.optimize(gf, target, fuse)

    def optimize(self, gf: Graph, target: Any, fuse: Optional[bool] = None) -> Optimized:
        """The Optimized result of running gf on `target` (a Backend, a list in priority order or a
        scheduler). fuse=False (or MINIGRAPH_FUSION=0 when fuse is None): gf as written."""
        if not isinstance(gf, Graph):
            raise MinigraphError(f"optimize: expected a Graph, got {type(gf).__name__}")
        if not (flags.fusion_enabled() if fuse is None else fuse):
            return Optimized(gf)
        return self._cache.get(gf, lambda: self._run(gf, target), tag=id(target))

    def _run(self, gf: Graph, backend: Any) -> Optimized:
        target, log, ctx = Target(backend), PassLog(), Context()
        results = [(u, u) for u in _results(gf)]
        prov: dict[int, Tensor] = {}
        graph = gf
        for p in self.passes:
            keep = {id(c) for _, c in results}
            rewrites = p(graph, target, log, keep)
            if not rewrites:
                continue
            try:
                graph, new_of = rebuild(graph, [c for _, c in results], rewrites, ctx)
            except RewriteRefused as e:
                log.add(p.__name__.replace("_pass", ""), "refused", e)
                continue
            absorbed = {id(a): rw.fused for rw in rewrites for a in rw.absorbed}
            results = [(u, new_of.get(id(c), c)) for u, c in results]
            for n in gf.nodes:
                cur = prov.get(id(n), n)
                cur = new_of.get(id(cur)) or absorbed.get(id(cur)) or cur
                if cur is not n:
                    prov[id(n)] = cur
        if graph is gf:
            return Optimized(gf, log=log)
        return Optimized(graph, [(u, c) for u, c in results if c is not u], prov, log)


def view_segment(ctx: Context, fused: Tensor, ne: Sequence[int], offset: int) -> Tensor:
    """A contiguous view of `ne` elements at byte `offset` of a fused node's packed output."""
    nb = contiguous_strides(fused.type, ne)
    return ctx.view_4d(fused, *ne, nb[1], nb[2], nb[3], offset)
