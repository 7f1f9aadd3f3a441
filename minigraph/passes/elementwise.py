"""Elementwise fusion: chains of elementwise ops over one shape -> one FUSED_ELEMENTWISE node.

Rule (loop fusion as in XLA / Inductor): a group grows from its last node (in graph order) up
through its sources; a source joins when it is an elementwise op (ops/fused.py ELEMENTWISE_OPS)
that writes its own f32 memory (not an in-place view), has the group's ne, is not a result the
user reads, and every node that reads it is already in the group (Inductor's users rule). The
group must be placed on one backend (the first of the priority list that supports each node)
that supports the fused node, read at most MAX_INPUTS distinct tensors and hold >= 2 ops.
Inputs may repeat into the shape wherever the unfused ops allowed it (src1 of a binary op).
"""
from __future__ import annotations

from minigraph.core.context import Context
from minigraph.core.dtypes import TYPE_F32
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.ops.fused import ELEMENTWISE_OPS, MAX_INPUTS
from minigraph.passes.pipeline import PassLog, Rewrite, Target
from minigraph.passes.patterns import P
from minigraph.core.tensor import Tensor

PASS = "elementwise"
ELEMENTWISE = P(ELEMENTWISE_OPS, check=lambda t, c: t.view_src is None and t.type == TYPE_F32
                and all(s is not None and s.type == TYPE_F32 for s in t.src), why="in-place or not f32")


def user_names(nodes) -> list[str]:
    """The distinct non-empty names of `nodes`, in order (the user names a fused node absorbs)."""
    out: list[str] = []
    for n in nodes:
        if n.name and n.name not in out:
            out.append(n.name)
    return out


def _fusible(t: Tensor) -> bool:
    return isinstance(ELEMENTWISE.match(t), dict)


def _grow(root: Tensor, users: dict, keep: set, assigned: set, target: Target) -> list[Tensor]:
    """The group of `root`, in graph order of discovery (sources after their consumers)."""
    where = target.placement(root)
    group = [root]
    ids = {id(root)}
    changed = True
    while changed:
        changed = False
        for x in list(group):
            for s in x.src:
                if (s is None or id(s) in ids or id(s) in assigned or id(s) in keep or s.ne != root.ne
                        or not _fusible(s) or not all(id(u) in ids for u in users.get(id(s), ()))
                        or target.placement(s) is not where):
                    continue
                group.append(s)
                ids.add(id(s))
                changed = True
    return group


def _program(group: list[Tensor], order: dict) -> tuple[tuple, list[Tensor]]:
    """SSA program over the group (topological order) and its distinct external inputs."""
    nodes = sorted(group, key=lambda n: order[id(n)])
    temp = {id(n): k for k, n in enumerate(nodes)}
    inputs: list[Tensor] = []
    program = []
    for n in nodes:
        operands = []
        for s in n.src:
            if id(s) in temp:
                operands.append(("t", temp[id(s)]))
            else:
                if not any(s is x for x in inputs):
                    inputs.append(s)
                operands.append(("in", next(i for i, x in enumerate(inputs) if x is s)))
        consts = (n.op_params["s"], n.op_params["b"]) if n.op == "SCALE" else ()
        program.append((n.op, tuple(operands), consts))
    return tuple(program), inputs


def elementwise_pass(graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    users: dict[int, list[Tensor]] = {}
    for n in graph.nodes:
        for s in n.src:
            if s is not None and not any(u is n for u in users.get(id(s), ())):
                users.setdefault(id(s), []).append(n)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    ctx = Context()
    assigned: set[int] = set()
    rewrites = []
    for root in reversed(graph.nodes):
        if id(root) in assigned or not _fusible(root):
            continue
        group = _grow(root, users, keep, assigned, target)
        if len(group) < 2:
            continue
        program, inputs = _program(group, order)
        ops = [p[0] for p in program]
        if len(inputs) > MAX_INPUTS:
            log.add(PASS, "refused", f"{'+'.join(ops)}: {len(inputs)} inputs, at most {MAX_INPUTS}")
            continue
        try:
            fused = ctx.fused_elementwise(program, inputs, fused_from=ops)
        except MinigraphError as e:
            log.add(PASS, "refused", f"{'+'.join(ops)}: {e}")
            continue
        fused.op_params["fused_pattern"] = PASS
        backend = target.placement(root)
        ok = target.supports(backend, fused) if backend is not None else None
        if not ok:
            log.add(PASS, "refused", f"{'+'.join(ops)}: {getattr(backend, 'name', '?')} does not support "
                                     f"FUSED_ELEMENTWISE: {ok.reason if ok is not None else 'no backend'}")
            continue
        # the fused node computes root's value, so it takes root's name; the names the user gave
        # the intermediates it absorbs stay visible in the dump's fused-from column
        fused.name = root.name
        fused.op_params["fused_names"] = user_names(n for n in group if n is not root)
        assigned |= {id(n) for n in group}
        rewrites.append(Rewrite(PASS, fused, replace={id(root): fused}, keep=[root], absorbed=group))
        log.add(PASS, "fused", f"{len(group)} ops ({'+'.join(ops)}) over ne={list(root.ne)} -> FUSED_ELEMENTWISE")
    return rewrites
