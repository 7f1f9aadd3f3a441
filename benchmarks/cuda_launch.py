"""Per-node cost of the CUDA backend on a long chain of tiny kernels: plain launches vs CUDA graph.

A chain of N small adds (x = x + y, N nodes of 256 floats each) is all launch overhead: the
kernels take ~2 us of GPU time apiece. Each mode computes the same graph; a compute call
(graph_compute: input check, launches or one cuGraphLaunch, output download, synchronize) is
timed whole, and the table gives its time per node. The first compute (kernel compilation) and
the second (CUDA graph capture) are reported apart and not included.

    python benchmarks/cuda_launch.py [--nodes 1000] [--repeats 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np

import minigraph as mg
from minigraph.backends.cuda.backend import CudaBackend


def build_chain(n_nodes: int, size: int):
    ctx = mg.Context()
    x0 = ctx.from_numpy(np.zeros(size, np.float32))
    y = ctx.from_numpy(np.full(size, 1.0, np.float32))
    x = x0
    for _ in range(n_nodes):
        x = ctx.add(x, y)
    gf = mg.Graph()
    gf.build_forward_expand(x)
    return gf, x0, x


def bench(use_graphs: bool, n_nodes: int, size: int, repeats: int) -> dict:
    gf, x0, out = build_chain(n_nodes, size)
    be = CudaBackend(0, use_graphs=use_graphs)
    t0 = time.perf_counter()
    be.graph_compute(gf)                     # plans, compiles, launches plainly
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    be.graph_compute(gf)                     # graphs: captures + instantiates + launches
    second = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        x0.set_data(np.full(size, float(r), np.float32))  # a changed input: re-uploaded each time
        t0 = time.perf_counter()
        be.graph_compute(gf)
        times.append(time.perf_counter() - t0)
        assert np.allclose(out.numpy(), r + n_nodes), "wrong result"
    plan = be.plan(gf)
    best, med = min(times), float(np.median(times))
    return {"mode": "cuda graph" if use_graphs else "plain launches", "nodes": n_nodes,
            "first_s": first, "second_s": second, "median_ms": med * 1e3, "best_ms": best * 1e3,
            "us_per_node_median": med / n_nodes * 1e6, "us_per_node_best": best / n_nodes * 1e6,
            "graph_error": plan.graph_error, "graph_used": plan.graph_exec is not None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    from numba import cuda

    warnings.filterwarnings("ignore", message="Grid size")  # one-block kernels on purpose

    dev = cuda.get_current_device()
    name = getattr(dev, "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    rows = [bench(False, args.nodes, args.size, args.repeats), bench(True, args.nodes, args.size, args.repeats)]
    print(f"device: {name}; chain of {args.nodes} ADD nodes of {args.size} f32; "
          f"{args.repeats} timed computes per mode (whole graph_compute call)")
    print(f"{'mode':<16}{'us/node med':>12}{'us/node best':>13}{'ms/compute':>12}{'1st call s':>11}{'2nd call s':>11}")
    for r in rows:
        print(f"{r['mode']:<16}{r['us_per_node_median']:>12.2f}{r['us_per_node_best']:>13.2f}{r['median_ms']:>12.2f}"
              f"{r['first_s']:>11.2f}{r['second_s']:>11.3f}")
        if r["graph_error"]:
            print(f"  graph capture failed: {r['graph_error']}")
    speedup = rows[0]["us_per_node_median"] / rows[1]["us_per_node_median"]
    print(f"speed-up of graph replay: {speedup:.1f}x; goal <= 2 us/node: "
          f"{'met' if rows[1]['us_per_node_median'] <= 2.0 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
