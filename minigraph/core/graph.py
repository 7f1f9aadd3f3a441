"""ggml_cgraph: nodes in topological order (each tensor once) and the leafs they read."""
from __future__ import annotations

from typing import Any, Iterator, Optional

from minigraph.core.errors import MinigraphError
from minigraph.core.tensor import Tensor


class Graph:
    """Built by build_forward_expand: `nodes` have an op (views included), `leafs` do not."""

    def __init__(self, ctx: Any = None, size: int = 0) -> None:
        self.ctx = ctx
        self.size = size  # ggml's capacity; minigraph grows as needed
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self.outputs: list[Tensor] = []  # the tensors passed to build_forward_expand
        self._seen: set[int] = set()
        self._version = 0  # bumped on every change, so cached plans know they are stale

    @classmethod
    def from_nodes(cls, ctx: Any, nodes: list[Tensor], leafs: Optional[list[Tensor]] = None,
                   outputs: Optional[list[Tensor]] = None) -> "Graph":
        """A graph over nodes already in topological order; leafs default to the sources that are
        not among the nodes (what a scheduler split or a one-backend run reads)."""
        g = cls(ctx)
        g.nodes = list(nodes)
        seen = {id(n) for n in g.nodes}
        if leafs is None:
            leafs = []
            for n in g.nodes:
                for s in n.src:
                    if s is not None and id(s) not in seen:
                        seen.add(id(s))
                        leafs.append(s)
        g.leafs = list(leafs)
        g.outputs = list(outputs or [])
        g._seen = {id(t) for t in g.nodes + g.leafs}
        return g

    @property
    def version(self) -> int:
        """Bumped by every build_forward_expand: what a cached plan of this graph is keyed by."""
        return self._version

    def plan_key(self) -> tuple[int, int, int]:
        """(version, n_nodes, n_leafs): a plan made for another key is stale."""
        return (self._version, len(self.nodes), len(self.leafs))

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.nodes)

    def build_forward_expand(self, t: Tensor) -> None:
        """ggml_build_forward_expand (see the module function)."""
        if not isinstance(t, Tensor):
            raise MinigraphError(f"build_forward_expand: expected a Tensor, got {type(t).__name__}")
        self._visit(t)
        self._version += 1
        if t not in self.outputs:
            self.outputs.append(t)

    def _visit(self, root: Tensor) -> None:
        # iterative post-order DFS over src (deep graphs must not hit Python's recursion limit)
        stack: list[tuple[Tensor, int]] = [(root, 0)]
        while stack:
            t, i = stack.pop()
            if id(t) in self._seen:
                continue
            if i < len(t.src):
                stack.append((t, i + 1))
                s = t.src[i]
                if s is not None and id(s) not in self._seen:
                    stack.append((s, 0))
                continue
            self._seen.add(id(t))
            (self.leafs if t.op is None else self.nodes).append(t)

    def node(self, i: int) -> Tensor:
        """ggml_graph_node: negative indices count from the end."""
        return self.nodes[i]

    def n_nodes(self) -> int:
        """ggml_graph_n_nodes: the number of compute nodes."""
        return len(self.nodes)

    def to_networkx(self) -> Any:
        """A networkx DiGraph: one vertex per tensor (attributes op, name, ne, nb, type), src -> dst edges."""
        import networkx as nx

        g = nx.DiGraph()
        for t in self.leafs + self.nodes:
            g.add_node(id(t), op=t.op or "NONE", name=t.name, ne=t.ne, nb=t.nb, type=t.type,
                       leaf=t.op is None, tensor=t)
        for t in self.nodes:
            for k, s in enumerate(t.src):
                if s is not None:
                    g.add_edge(id(s), id(t), slot=k)
        return g


def build_forward_expand(gf: Graph, t: Tensor) -> None:
    """ggml_build_forward_expand: add `t` and every tensor it depends on (sources first, each
    once) to `gf`: compute nodes to gf.nodes in topological order, inputs to gf.leafs."""
    gf.build_forward_expand(t)


def graph_n_nodes(gf: Graph) -> int:
    """ggml_graph_n_nodes: the number of compute nodes of `gf` (leafs not counted)."""
    return len(gf.nodes)


def graph_node(gf: Graph, i: int) -> Tensor:
    """ggml_graph_node: compute node `i` of `gf` in execution order; a negative `i` counts from
    the end (-1 is the last node, the usual output)."""
    return gf.node(i)


def graph_labels(gf: Graph) -> dict[int, str]:
    """id(tensor) -> the label every minigraph printout uses for it: its name, else leaf_<i> or
    node_<i> by its position in gf.leafs / gf.nodes (dump, the scheduler's causes and log)."""
    out = {}
    for kind, ts in (("leaf", gf.leafs), ("node", gf.nodes)):
        for i, t in enumerate(ts):
            out[id(t)] = t.name or f"{kind}_{i}"
    return out
