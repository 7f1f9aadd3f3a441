"""`minigraph compare`: run a graph two ways and name the first node whose output diverges.

Ways: a backend through the scheduler ("cpu", "cuda"), the float64 numpy reference
("reference"), or the graph as written vs after the fusion passes (--fused-vs-unfused). Every
compute node's value is kept (all nodes are marked as outputs for the memory planner, so no
buffer is reused), then nodes are compared in topological order: a NaN/inf mismatch or an NMSE
above the tolerance is a divergence. Leaf memory is restored between the two runs, so in-place
writes into inputs do not leak from one run into the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from minigraph.core.cases import nmse
from minigraph.tools.dump import backends_for, label, optimize
from minigraph.core.graph import Graph
from minigraph.device.buffers import backend_tensor_get
from minigraph.core.tensor import Tensor
from minigraph.tools.conformance import node_values

DEFAULT_TOL = 1e-6  # NMSE, as test-backend-ops measures it


@dataclass
class Run:
    way: str
    graph: Graph
    values: dict  # id(node) -> numpy array


def _compute_nodes(gf: Graph) -> list[Tensor]:
    from minigraph.core.registry import OPS

    return [n for n in gf.nodes if not OPS[n.op].is_view]


def checked_tensors(gf: Graph) -> list[Tensor]:
    """The tensors whose values are compared: compute nodes, then outputs that are views."""
    nodes = _compute_nodes(gf)
    seen = {id(n) for n in nodes}
    return nodes + [t for t in gf.outputs if id(t) not in seen and t.op is not None]


def _keep_all(gf: Graph) -> Graph:
    """The same nodes with every compute node an output, so the planner keeps every value."""
    g = Graph(gf.ctx)
    g.nodes, g.leafs = list(gf.nodes), list(gf.leafs)
    g.outputs = list(gf.outputs) + [n for n in _compute_nodes(gf) if n not in gf.outputs]
    g._seen = {id(t) for t in g.nodes + g.leafs}
    return g


def _snapshot(gf: Graph) -> list[tuple[Tensor, Any]]:
    return [(t.root, t.root._buf.data.copy()) for t in gf.leafs
            if t.root._buf is not None and t.root._buf.is_host and t.root._buf.backend is None]


def _restore(snap: list[tuple[Tensor, Any]]) -> None:
    for root, data in snap:
        root._buf.data[...] = data


def run_way(gf: Graph, way: str, fuse: Optional[bool] = None) -> Run:
    """Every compute node's value after running `gf` on `way` (reference, cpu, cuda, auto)."""
    import minigraph as mg

    if way == "reference":
        res = mg.reference_compute(gf)
        return Run(way, gf, {id(n): res[n] for n in checked_tensors(gf)})
    sched = mg.backend_sched_new(backends_for(way))
    g = _keep_all(gf)
    sched.graph_compute(g, fuse=fuse)
    return Run(way, gf, {id(n): np.asarray(node_values(n), np.float64) for n in checked_tensors(gf)})


def stats(a: np.ndarray) -> dict:
    fin = a[np.isfinite(a)]
    if fin.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "nonfinite": int(a.size)}
    return {"min": float(fin.min()), "max": float(fin.max()), "mean": float(fin.mean()),
            "std": float(fin.std()), "nonfinite": int(a.size - fin.size)}


def _ggml_index(shape: tuple, flat: int) -> list[int]:
    """A flat C-order index into numpy shape reversed(ne) as ggml's (i0, i1, i2, i3)."""
    idx = list(reversed([int(i) for i in np.unravel_index(flat, shape)])) if shape else []
    return idx + [0] * (4 - len(idx))


def diverges(a: np.ndarray, b: np.ndarray, tol: float) -> Optional[dict]:
    """None when a matches b, else the statistics of the divergence."""
    if a.shape != b.shape:
        return {"reason": f"shape {a.shape} != {b.shape}"}
    fa, fb = np.isfinite(a), np.isfinite(b)
    both = fa & fb
    err = nmse(a[both], b[both]) if both.any() else 0.0
    bad_fin = (fa != fb) | ((~fa) & (~fb) & (a != b))  # NaN vs value, or inf of the other sign
    if not bad_fin.any() and err <= tol:
        return None
    rms = float(np.sqrt(np.mean(np.square(b[both])))) if both.any() else 0.0
    diff = np.where(both, np.abs(a - b), 0.0)
    bad = bad_fin | (diff > np.sqrt(tol) * max(rms, 1e-30))
    first = int(np.flatnonzero(bad.reshape(-1))[0]) if bad.any() else int(np.argmax(diff))
    reason = "NaN/inf mismatch" if bad_fin.any() else f"NMSE {err:.3g} > {tol:g}"
    return {"reason": reason, "nmse": err, "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "first_bad_index": _ggml_index(a.shape, first),
            "first_bad_values": [float(a.reshape(-1)[first]), float(b.reshape(-1)[first])]}


def compare_runs(ra: Run, rb: Run, nodes: list[Tensor], labels: dict, tol: float) -> dict:
    """The first node (topological order) that diverges, or the worst match."""
    worst = {"nmse": -1.0}
    index = {id(n): i for i, n in enumerate(ra.graph.nodes)}
    for n in nodes:
        i = index.get(id(n), -1)
        if id(n) not in ra.values or id(n) not in rb.values:
            continue
        a, b = ra.values[id(n)], rb.values[id(n)]
        d = diverges(a, b, tol)
        where = {"index": i, "op": n.op, "name": label(n, labels),
                 "src": [label(s, labels) for s in n.src if s is not None]}
        if d is not None:
            return {"diverged": True, "node": where, **d, "a": {"way": ra.way, **stats(a)},
                    "b": {"way": rb.way, **stats(b)}}
        fin = np.isfinite(a) & np.isfinite(b)
        err = nmse(a[fin], b[fin]) if fin.any() else 0.0
        if err > worst["nmse"]:
            worst = {"nmse": err, "node": where}
    return {"diverged": False, "worst": worst}


def compare(gf: Graph, ways: list[str], labels: dict, tol: float = DEFAULT_TOL,
            fused_vs_unfused: bool = False, backend: str = "cpu") -> dict:
    """Run gf both ways (restoring its inputs in between) and compare node by node."""
    snap = _snapshot(gf)
    if fused_vs_unfused:
        bks = backends_for(backend)
        run, _ = optimize(gf, bks[0], True)
        fused = run.graph
        ra = run_way(gf, backend, fuse=False)
        ra.way = "unfused"
        _restore(snap)
        rb = run_way(fused, backend)
        rb.way = "fused"
        # user nodes that fusion replaced: compare them with the tensor that now holds their value
        fused_nodes = {id(n) for n in _compute_nodes(fused)}
        pairs = list(run.results)  # (user tensor, tensor holding its value)
        for user, holder in pairs:
            if holder is not user and id(user) in ra.values:
                rb.values[id(user)] = rb.values.get(id(holder)) if id(holder) in rb.values else \
                    np.asarray(backend_tensor_get(holder), np.float64)
        users = {id(u) for u, _ in pairs}
        nodes = [n for n in checked_tensors(gf) if id(n) in fused_nodes or id(n) in users]
    else:
        ra = run_way(gf, ways[0])
        _restore(snap)
        rb = run_way(gf, ways[1])
        nodes = checked_tensors(gf)
    _restore(snap)
    out = compare_runs(ra, rb, nodes, labels, tol)
    out.update({"ways": [ra.way, rb.way], "tol": tol, "compared": len(nodes)})
    return out


def _fmt_stats(s: dict) -> str:
    if s["min"] is None:
        return f"{s['way']:>10}: all {s['nonfinite']} values non-finite"
    extra = f", {s['nonfinite']} non-finite" if s["nonfinite"] else ""
    return (f"{s['way']:>10}: min {s['min']:.6g}  max {s['max']:.6g}  mean {s['mean']:.6g}  "
            f"std {s['std']:.6g}{extra}")


def render(res: dict) -> str:
    a, b = res["ways"]
    if not res["diverged"]:
        w = res["worst"]
        tail = (f"; closest to the tolerance: node {w['node']['index']} {w['node']['op']} "
                f"'{w['node']['name']}' (NMSE {w['nmse']:.3g})") if "node" in w else ""
        return f"{a} vs {b}: {res['compared']} nodes match (NMSE <= {res['tol']:g}){tail}\n"
    n = res["node"]
    lines = [f"{a} vs {b}: first divergence at node {n['index']} {n['op']} '{n['name']}' "
             f"(src: {', '.join(n['src'])})", f"  {res['reason']}"]
    if "nmse" in res:
        i0 = res["first_bad_index"]
        va, vb = res["first_bad_values"]
        lines += [f"  max |diff| {res['max_abs_diff']:.6g}; first bad index (i0,i1,i2,i3) = {tuple(i0)}: "
                  f"{a} {va:.9g}, {b} {vb:.9g}",
                  "  " + _fmt_stats(res["a"]), "  " + _fmt_stats(res["b"])]
    return "\n".join(lines) + "\n"
