"""CPU compute under contention: idle vs one core kept busy by another process, per thread policy.

Two graphs (the shapes of issue 12):
  layer   llama.cpp's chunked delta-net layer as written (not fused: ~100 nodes, a dozen of them
          big enough for the parallel kernel build), S=128, H=8, T=100, GDA
  chain   2000 small ADD nodes on f32[16] (every node serial)
For each policy a child process (the threading layer and OpenMP's wait policy are fixed when a
process starts) alternates blocks of computes with the machine as it is ("idle") and with a child
of its own spinning on the last usable core ("loaded", timing starts SETTLE s after the spinner,
so a load-aware policy has seen it), ROUNDS times, so both conditions meet the same background
load. Reported: median and 90th percentile per compute of each condition, loaded/idle of the
medians (the goal: <= 2x), the threads the computes ran with, and the load average. This
machine may be shared: "idle" is whatever else runs (the load average says how much).

    python benchmarks/contention.py [--rounds 3] [--policies NAME,...] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# name -> environment of the child. The defaults of `import minigraph` are MINIGRAPH_THREADS=auto
# and GOMP_SPINCOUNT=3000 (backends/cpu/threads.py); GNU OpenMP's own default is 300000.
POLICIES = {
    "2 threads, omp, GNU's default spin (~7 ms)": dict(NUMBA_THREADING_LAYER="omp", MINIGRAPH_THREADS="2",
                                                      GOMP_SPINCOUNT="300000"),
    "2 threads, omp, OMP_WAIT_POLICY=passive": dict(NUMBA_THREADING_LAYER="omp", MINIGRAPH_THREADS="2",
                                                    OMP_WAIT_POLICY="passive"),
    "2 threads, omp, short spin (GOMP_SPINCOUNT=3000)": dict(NUMBA_THREADING_LAYER="omp", MINIGRAPH_THREADS="2"),
    "2 threads, workqueue": dict(NUMBA_THREADING_LAYER="workqueue", MINIGRAPH_THREADS="2"),
    "2 threads, tbb": dict(NUMBA_THREADING_LAYER="tbb", MINIGRAPH_THREADS="2"),
    "1 thread": dict(NUMBA_THREADING_LAYER="omp", MINIGRAPH_THREADS="1"),
    "load-aware, omp, GNU's default spin": dict(NUMBA_THREADING_LAYER="omp", MINIGRAPH_THREADS="auto",
                                               GOMP_SPINCOUNT="300000"),
    "load-aware, omp, short spin (the default)": dict(NUMBA_THREADING_LAYER="omp", MINIGRAPH_THREADS="auto"),
}
SETTLE = 0.6       # seconds between starting the spinner and timing (the load monitor looks every 0.25 s)
SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def layer_graph(S: int, H: int, T: int):
    import minigraph as mg
    from minigraph.models.delta_net import build_delta_net_chunking

    rng = np.random.default_rng(0)
    ctx = mg.Context()

    def inp(ne, lo=-1.0, hi=1.0):
        return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
    q = ctx.l2_norm(inp([S, H, T, 1]), 1e-6)
    k = ctx.l2_norm(inp([S, H, T, 1]), 1e-6)
    v, g, b, s = inp([S, H, T, 1]), inp([1, H, T, 1], -2.0, -0.01), inp([1, H, T, 1], 0.0, 1.0), inp([S, S, H, 1])
    o, st = build_delta_net_chunking(ctx, q, k, v, g, b, s)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, st)
    return gf


def chain_graph(n: int):
    import minigraph as mg

    ctx = mg.Context()
    x = ctx.from_numpy(np.ones(16, np.float32))
    b = ctx.from_numpy(np.ones(16, np.float32))
    for _ in range(n):
        x = ctx.add(x, b)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, x)
    return gf


def child(args) -> None:
    """Runs one policy (its environment already set) and prints one JSON line."""
    import numba

    import minigraph as mg
    from minigraph.backends.cpu.threads import usable_cores

    S, H, T = (64, 4, 100) if args.quick else (128, 8, 100)
    cpu = mg.backend_cpu_init()
    graphs = {"layer": layer_graph(S, H, T), "chain": chain_graph(2000)}
    reps = {"layer": 6 if args.quick else 12, "chain": 60}
    runs = {name: (lambda g=g: mg.compute(g, cpu, fuse=False)) for name, g in graphs.items()}
    for fn in runs.values():
        fn()
        fn()
    core = usable_cores()[-1]
    out: dict = {"layer_nodes": len(graphs["layer"]), "layer_shape": f"S={S} H={H} T={T}",
                 "layer": numba.threading_layer(), "times": {}, "threads": {}, "load": []}
    for _ in range(args.rounds):
        for cond in ("idle", "loaded"):
            spinner = None
            if cond == "loaded":
                spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(core)])
            time.sleep(SETTLE)
            out["load"].append(os.getloadavg()[0])
            for name, fn in runs.items():
                ts = out["times"].setdefault(f"{name} {cond}", [])
                th = out["threads"].setdefault(f"{name} {cond}", [])
                for _ in range(reps[name]):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                    th.append(cpu.last_threads)
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    print(json.dumps(out))


def stats(ts: list) -> tuple[float, float]:
    a = 1e3 * np.asarray(ts)
    return float(np.median(a)), float(np.percentile(a, 90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--policies", default="", help="comma-separated substrings of policy names (default: all)")
    ap.add_argument("--quick", action="store_true", help="a smaller layer, fewer computes")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    wanted = [p for p in POLICIES if not args.policies or any(w.strip() in p for w in args.policies.split(","))]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, numpy {np.__version__}; load average at start "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.rounds} rounds of idle/loaded blocks\n")
    rows, shape = [], "delta-net layer"
    for name in wanted:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
        env.update(POLICIES[name])
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--rounds", str(args.rounds)] + (["--quick"] if args.quick else [])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if p.returncode != 0 or not lines:
            why = (p.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append(f"| {name} | not run: {why[:100]} |")
            continue
        r = json.loads(lines[-1])
        if r["layer"] != POLICIES[name]["NUMBA_THREADING_LAYER"]:
            rows.append(f"| {name} | not run: Numba chose the {r['layer']} layer |")
            continue
        cells = []
        for g in ("layer", "chain"):
            (mi, pi), (ml, pl) = stats(r["times"][f"{g} idle"]), stats(r["times"][f"{g} loaded"])
            cells += [f"{mi:.2f} / {pi:.2f}", f"{ml:.2f} / {pl:.2f}", f"{ml / mi:.1f}x"]
        th = {c: sorted(set(r["threads"][f"layer {c}"])) for c in ("idle", "loaded")}
        load = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {th['idle']} / {th['loaded']} | {load} |")
        shape = f"{r['layer_nodes']}-node delta-net layer ({r['layer_shape']})"
    print(f"layer: {shape}; chain: 2000 ADD nodes. "
          "Times in ms per compute, median / 90th percentile.\n")
    print("| policy | layer idle | layer loaded | loaded/idle | chain idle | chain loaded | loaded/idle "
          "| threads idle / loaded | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
