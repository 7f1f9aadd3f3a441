"""The planning every backend does the same way before its own work: refuse what it cannot run,
give memory to the leafs that need none of their values, and plan the compute buffer.

CpuPlan and CudaPlan (and the scheduler, for the leafs) derive all three from here, so "which
leafs need data" has one definition.
"""
from __future__ import annotations

from typing import Any

from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.registry import OPS
from minigraph.core.tensor import Tensor
from minigraph.memory.alloc import MemoryPlan, plan_memory


def leafs_needing_data(graph: Graph) -> list[Tensor]:
    """The graph's leafs whose initial values some node reads: a leaf that is only measured
    (FILL's input, any OpDef.shape_only slot) or written before it is read (CPY's destination)
    needs no data."""
    written: set[int] = set()
    read: set[int] = set()
    for n in graph.nodes:
        op = OPS[n.op]
        for i, s in enumerate(n.src):
            if s is not None and id(s.root) not in written and (i not in op.shape_only or s.root is not s):
                read.add(id(s.root))
        if n.view_src is not None and not op.is_view:
            if n.op != "CPY" and id(n.root) not in written:
                read.add(id(n.root))  # an in-place write keeps the rest of its destination
            written.add(id(n.root))
    return [leaf for leaf in graph.leafs if id(leaf) in read]


def bind_leafs(graph: Graph) -> None:
    """Leafs without memory: refuse those whose values are read, give the others zeroed host memory."""
    needed = {id(t) for t in leafs_needing_data(graph)}
    for leaf in graph.leafs:
        if leaf.root._buf is None:  # a leaf may be a view (e.g. a scheduler split's input)
            if id(leaf) in needed:
                raise MinigraphError(f"graph input {describe(leaf)} has no data: call set_data() first")
            leaf.alloc_host()


def check_supported(backend: Any, graph: Graph) -> None:
    for n in graph.nodes:
        s = backend.supports_op(n)
        if not s:
            raise MinigraphError(f"{n.op}: the {backend.name} backend cannot run {describe(n)}: {s.reason}")


def can_inplace(node: Tensor) -> bool:
    return OPS[node.op].inplace_ok


def prepare(backend: Any, graph: Graph) -> MemoryPlan:
    """What a backend plans first for a graph it runs alone: support, leafs, the memory plan."""
    if not isinstance(graph, Graph):
        raise MinigraphError(f"{backend.name}.graph_compute: expected a Graph, got {type(graph).__name__}")
    check_supported(backend, graph)
    bind_leafs(graph)
    return plan_memory(graph, can_inplace=can_inplace)
