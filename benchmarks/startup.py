"""Start-up cost: cold (empty caches) and cached first runs, side by side for several installs.

Each measurement is a fresh process with NUMBA_CACHE_DIR and MINIGRAPH_CACHE_DIR pointing at a
new empty folder (cold), then a second fresh process on the same folders (cached). Workloads:

  quickstart  `python examples/quickstart.py` of this checkout: the whole process, wall clock
  delta_net   a gated delta-net layer (minigraph.models.delta_net.build_delta_net_chunking,
              S=32, H=4, T=70) through mg.compute (so fused into GATED_DELTA_NET): the process,
              and the first mg.compute alone, timed inside it

Every figure is wall seconds and the process's CPU seconds (user + system, its children
included), median over --runs with min-max. CPU seconds move less than wall seconds when other
processes share the cores; the load average before and after is printed with them.

Compare installs in one run (interleaved, so a burst of load hits them alike), e.g. main and a
branch, each installed in its own virtual environment:

    python benchmarks/startup.py --python before=/venvs/main/bin/python --python after=.venv/bin/python
    python benchmarks/startup.py --runs 3 --what quickstart
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DELTA_NET = """
import time
t0 = time.perf_counter()
import numpy as np
import minigraph as mg
from minigraph.models.delta_net import build_delta_net_chunking
S, H, T = 32, 4, 70
rng = np.random.default_rng(0)
ctx = mg.Context()
def inp(ne, lo=-1.0, hi=1.0):
    return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
q = ctx.l2_norm(inp([S, H, T, 1]), 1e-6)
k = ctx.l2_norm(inp([S, H, T, 1]), 1e-6)
v, g, b, s = inp([S, H, T, 1]), inp([1, H, T, 1], -2.0, -0.01), inp([1, H, T, 1], 0.0, 1.0), inp([S, S, H, 1])
out, state = build_delta_net_chunking(ctx, q, k, v, g, b, s)
gf = ctx.new_graph()
mg.build_forward_expand(gf, out)
mg.build_forward_expand(gf, state)
t1 = time.perf_counter()
mg.compute(gf)
t2 = time.perf_counter()
assert np.isfinite(out.numpy()).all()
print(f"first compute {t2 - t1:.3f}")
"""


def run_once(python: str, what: str, cache: str) -> dict[str, float]:
    """One fresh process of workload `what` on cache folder `cache`: wall, cpu (and first compute)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache, "numba"),
               MINIGRAPH_CACHE_DIR=os.path.join(cache, "minigraph"), MINIGRAPH_QUIET="1")
    cmd = [python, os.path.join(ROOT, "examples", "quickstart.py")] if what == "quickstart" else [python, "-c", DELTA_NET]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{python} {what} failed:\n{res.stderr[-3000:]}")
    out = {"wall": wall, "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}
    for line in res.stdout.splitlines():
        if line.startswith("first compute "):
            out["compute"] = float(line.split()[2])
    return out


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", metavar="[LABEL=]PYTHON",
                    help="an interpreter with minigraph installed (repeatable; default this one)")
    ap.add_argument("--runs", type=int, default=3, help="cold+cached pairs per install and workload (default 3)")
    ap.add_argument("--what", default="quickstart,delta_net", help="comma list of quickstart, delta_net")
    args = ap.parse_args()
    pythons = []
    for spec in args.python or [sys.executable]:
        label, _, py = spec.rpartition("=")
        pythons.append((label or py, py))
    works = [w.strip() for w in args.what.split(",")]
    if any(w not in ("quickstart", "delta_net") for w in works):
        raise SystemExit(f"--what {args.what!r}: expected quickstart and/or delta_net")

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; load average before: %.2f %.2f %.2f" % os.getloadavg())
    results: dict[tuple, list[dict]] = {}
    for r in range(args.runs):
        for what in works:
            for label, py in pythons:
                cache = tempfile.mkdtemp(prefix="mg-startup-")
                try:
                    for kind in ("cold", "cached"):
                        m = run_once(py, what, cache)
                        results.setdefault((what, label, kind), []).append(m)
                        extra = f", first compute {m['compute']:.2f} s" if "compute" in m else ""
                        print(f"  run {r + 1}: {what:10s} {label:10s} {kind:6s} {m['wall']:6.2f} s wall, "
                              f"{m['cpu']:6.2f} s cpu{extra}  (load %.1f)" % os.getloadavg()[0], flush=True)
                finally:
                    shutil.rmtree(cache, ignore_errors=True)

    print(f"\nmedian (min-max) over {args.runs} runs, seconds")
    print(f"{'workload':10s} {'install':10s} {'start':6s} {'wall':>19s} {'cpu':>19s} {'first compute':>19s}")
    for (what, label, kind), ms in results.items():
        comp = spread([m["compute"] for m in ms]) if "compute" in ms[0] else ""
        print(f"{what:10s} {label:10s} {kind:6s} {spread([m['wall'] for m in ms]):>19s} "
              f"{spread([m['cpu'] for m in ms]):>19s} {comp:>19s}")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
