"""Per-node cost of a 2000-node chain of small adds, side by side, plus compile and start times.

minigraph's compiled CPU executor vs ggml's CPU backend (ggml-python) vs numpy (one call per op),
in one run on one machine. Usage: python benchmarks/chain.py [--nodes 2000] [--size 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

START_SNIPPET = """
import time; t0 = time.perf_counter()
import numpy as np, minigraph as mg
t1 = time.perf_counter()
ctx = mg.Context(); x = ctx.from_numpy(np.ones({size}, np.float32)); b = ctx.from_numpy(np.ones({size}, np.float32))
for _ in range({nodes}): x = ctx.add(x, b)
gf = ctx.new_graph(); mg.build_forward_expand(gf, x)
cpu = mg.backend_cpu_init({threads}); cpu.graph_compute(gf)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    n, size = args.nodes, args.size

    import minigraph as mg
    ctx = mg.Context()
    x = ctx.from_numpy(np.ones(size, np.float32))
    b = ctx.from_numpy(np.ones(size, np.float32))
    for _ in range(n):
        x = ctx.add(x, b)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, x)
    cpu = mg.backend_cpu_init(args.threads)
    cpu.graph_compute(gf)
    t_mg = best_of(lambda: cpu.graph_compute(gf), args.repeat)

    xa, ba = np.ones(size, np.float32), np.ones(size, np.float32)

    def numpy_chain():
        y = xa
        for _ in range(n):
            y = np.add(y, ba)
    t_np = best_of(numpy_chain, args.repeat)

    t_ggml = None
    try:
        from minigraph.testing import ggml_bridge
        if ggml_bridge.available():
            g = ggml_bridge.GgmlContext()
            gx = g.from_numpy(np.ones(size, np.float32))
            gb = g.from_numpy(np.ones(size, np.float32))
            for _ in range(n):
                gx = g.add(gx, gb)
            t_ggml = min(ggml_bridge.time_compute([gx], n_threads=args.threads, repeat=args.repeat) for _ in range(3))
    except ImportError:
        pass

    # cold compile (empty caches) and a cached start, each in a fresh process
    snippet = START_SNIPPET.format(size=size, nodes=n, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MINIGRAPH_CACHE_DIR=tmp, NUMBA_CACHE_DIR=tmp)
        cold = [float(v) for v in subprocess.check_output([sys.executable, "-c", snippet], env=env).split()]
        warm = [float(v) for v in subprocess.check_output([sys.executable, "-c", snippet], env=env).split()]

    us = lambda s: s / n * 1e6  # noqa: E731
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}, threads={args.threads}")
    print(f"chain of {n} ADD nodes on f32[{size}], best of {args.repeat}\n")
    print("| engine | per compute | per node | vs ggml |")
    print("| --- | --- | --- | --- |")
    rows = [("minigraph CPU (compiled executor)", t_mg), ("ggml CPU backend (ggml-python)", t_ggml),
            ("numpy, one call per op", t_np)]
    for name, t in rows:
        if t is None:
            print(f"| {name} | not installed | | |")
            continue
        if not t_ggml or t is t_ggml:
            ratio = "baseline" if t is t_ggml else ""
        else:
            ratio = f"{t_ggml / t:.2f}x faster" if t <= t_ggml else f"{t / t_ggml:.2f}x slower"
        print(f"| {name} | {t * 1e3:.3f} ms | {us(t):.3f} us | {ratio} |")
    print(f"\nimport minigraph: {cold[0]:.2f} s cold, {warm[0]:.2f} s cached; build + plan + first compute: "
          f"{cold[1]:.2f} s with empty caches (Numba compiles), {warm[1]:.2f} s in a second process (disk cache)")


if __name__ == "__main__":
    main()
