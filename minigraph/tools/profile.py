"""`minigraph dump --profile`: per-node time, share of the total, GFLOP/s and GB/s.

How a node is timed: after the graph's inputs get data (their own, or uniform random values for
leafs without any), every compute node is run ALONE as a one-node graph on the backend the
scheduler placed it on: once to warm up (compile, plan), then `repeat` times; its time is the
median. Nodes run in topological order, so each one reads the values its sources produced.
Views cost nothing (no compute). The whole graph is also timed through the scheduler, so the
sum of the nodes can be compared with the real run (the sum includes one dispatch per node).
FLOPs come from each op's OpDef.flops; bytes are the node's and its sources' ggml_nbytes.
The user's graph is never modified (profiling runs separate one-node graphs).
"""
from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Optional

from minigraph.tools.dump import Prepared, _ne, label, table
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.tools.graphio import fill_random_inputs
from minigraph.core.tensor import Tensor, nbytes


@dataclass
class NodeTime:
    index: int
    op: str
    name: str
    backend: str
    ne: list
    seconds: float
    flops: float
    bytes: int


def one_node_graph(node: Tensor) -> Graph:
    """A graph whose only node is `node` and whose leafs are its sources (views included)."""
    g = Graph(node.ctx)
    g.nodes = [node]
    seen: set[int] = {id(node)}
    for s in node.src:
        if s is not None and id(s) not in seen:
            seen.add(id(s))
            g.leafs.append(s)
    g.outputs = [node]
    g._seen = seen
    return g


def _time(fn: Any, repeat: int) -> float:
    fn()  # warm-up: compile, plan, upload
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _run_on(backend: Any, g: Graph) -> Any:
    def run() -> None:
        backend.graph_compute(g)
        backend.synchronize()

    return run


def profile_nodes(p: Prepared, repeat: int = 5, seed: int = 0) -> tuple[list[NodeTime], float]:
    """Per-node times (topological order) and the whole graph's time through the scheduler."""
    from minigraph.core.registry import OPS

    gf = p.graph
    fill_random_inputs(gf, seed)
    source = p.source if p.source is not None else gf
    fuse = p.fusion == "on"  # --no-fuse: the scheduler must not fuse by itself either
    whole = _time(lambda: (p.sched.graph_compute(source, fuse=fuse), None), repeat)
    rows = []
    for i, n in enumerate(gf.nodes):
        op = OPS[n.op]
        be = p.sched.get_tensor_backend(n)
        secs = 0.0 if op.is_view else _time(_run_on(be, one_node_graph(n)), repeat)
        rows.append(NodeTime(i, n.op, label(n, p.labels), be.name if be is not None else "-", list(n.ne), secs,
                             0.0 if op.is_view else float(op.flops(n)),
                             0 if op.is_view else nbytes(n) + sum(nbytes(s) for s in n.src if s is not None)))
    return rows, whole


def _rate(x: float, secs: float) -> str:
    return f"{x / secs / 1e9:.2f}" if secs > 0 and x > 0 else ""


def by_op(rows: list[NodeTime]) -> list[dict]:
    """Aggregate per op, most expensive first."""
    agg: dict[str, dict] = {}
    for r in rows:
        a = agg.setdefault(r.op, {"op": r.op, "count": 0, "seconds": 0.0, "flops": 0.0, "bytes": 0})
        a["count"] += 1
        a["seconds"] += r.seconds
        a["flops"] += r.flops
        a["bytes"] += r.bytes
    return sorted(agg.values(), key=lambda a: -a["seconds"])


def matching(rows: list[NodeTime], pattern: Optional[str]) -> list[NodeTime]:
    """The rows whose op or name matches --filter (all of them without one)."""
    if not pattern:
        return rows
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise MinigraphError(f"--filter {pattern!r}: bad regex: {e}") from None
    return [r for r in rows if rx.search(r.op) or rx.search(r.name)]


def _covers(rows: list[NodeTime], kept: list[NodeTime], pattern: Optional[str]) -> str:
    """What the sum and the shares are over, in words."""
    if not pattern:
        return f"all {len(rows)} nodes"
    return f"the {len(kept)} of {len(rows)} nodes matching --filter {pattern!r}"


def render_profile(rows: list[NodeTime], whole: float, top: Optional[int] = None,
                   pattern: Optional[str] = None) -> str:
    """tinygrad DEBUG=2 style: the nodes matching --filter (all without one; the top N by time
    with --top), then the per-op totals of the same nodes. Shares are of those nodes' sum, and
    the last line says which nodes that sum covers."""
    kept = matching(rows, pattern)
    total = sum(r.seconds for r in kept) or 1e-30
    shown = sorted(kept, key=lambda r: -r.seconds)[:top] if top else kept
    cum, cells = 0.0, []
    for r in shown:
        cum += r.seconds
        cells.append([str(r.index), r.op, r.name, r.backend, _ne(r.ne),
                      "view" if r.flops == 0 and r.bytes == 0 else f"{r.seconds * 1e6:.1f}",
                      f"{100 * r.seconds / total:.1f}", f"{100 * cum / total:.1f}",
                      _rate(r.flops, r.seconds), _rate(r.bytes, r.seconds)])
    head = ["#", "op", "name", "backend", "ne", "time us", "share %", "cum %", "GFLOP/s", "GB/s"]
    of = f"{len(kept)} nodes matching {pattern!r}" if pattern else f"{len(rows)} nodes"
    title = f"profile: top {top} of {of} by time" if top else f"profile: {of}"
    out = [title + " (each node run alone as a one-node graph, median of repeats)", ""]
    out += table(head, cells, right=(0, 5, 6, 7, 8, 9))
    ops = by_op(kept)
    out += ["", f"by op: top {top} of {len(ops)} ops" if top and top < len(ops) else "by op:"]
    out += table(["op", "count", "time us", "share %", "GFLOP/s", "GB/s"],
                 [[a["op"], str(a["count"]), f"{a['seconds'] * 1e6:.1f}", f"{100 * a['seconds'] / total:.1f}",
                   _rate(a["flops"], a["seconds"]), _rate(a["bytes"], a["seconds"])] for a in ops[:top]],
                 right=(1, 2, 3, 4, 5))
    out += ["", f"sum of {_covers(rows, kept, pattern)}: {sum(r.seconds for r in kept) * 1e6:.1f} us (shares are of "
                f"this sum); whole graph through the scheduler {whole * 1e6:.1f} us"]
    return "\n".join(out) + "\n"


def profile_json(rows: list[NodeTime], whole: float, top: Optional[int] = None,
                 pattern: Optional[str] = None) -> dict:
    """The profile as data; like the text, everything follows --filter (sum_covers says how)."""
    kept = matching(rows, pattern)
    total = sum(r.seconds for r in kept) or 1e-30
    shown = sorted(kept, key=lambda r: -r.seconds)[:top] if top else kept
    return {"profile": {
        "method": "each node alone as a one-node graph on its scheduled backend; median of repeats",
        "filter": pattern,
        "nodes": [{**r.__dict__, "share": r.seconds / total,
                   "gflops": r.flops / r.seconds / 1e9 if r.seconds > 0 else None,
                   "gbps": r.bytes / r.seconds / 1e9 if r.seconds > 0 else None} for r in shown],
        "by_op": by_op(kept)[:top] if top else by_op(kept),
        "sum_seconds": sum(r.seconds for r in kept), "sum_covers": _covers(rows, kept, pattern),
        "graph_seconds": whole}}
