"""GATED_DELTA_NET CPU decode kernel, A/B in one process: `_gdn_decode` from two (or more) copies
of backends/cpu/gdn_rows.py, side by side with a copy floor.

Why: the decode is short (~100 us at N=1) and this machine is shared, so two kernels timed in two
runs differ more by the load than by their code. Here every kernel is loaded from its own file
(e.g. main's tree and a branch's) and they run in alternating blocks, in reversed order every
other round, on the same inputs; each figure is the min and the median over the blocks. The copy
floor (read the state once, write a copy once, rows of 4 KB) runs in the same rotation.

Shapes: S=128, H_k=16, H_v=32 (benchmarks/gdn.py's), decode N=1 (2 MB state, in L3) and N=32
(64 MB, DRAM; its snapshot written with streaming stores as the entry point would), K=1. Each file
is loaded under a made-up module name, so Numba's cache goes to a private temporary folder (a
cached kernel records its module's name: it must not reach the package's own cache).

    python benchmarks/gdn_decode_ab.py [--threads 2] [--kda] [--ns 1,32] FILE [FILE ...]
    e.g. python benchmarks/gdn_decode_ab.py /work/main/backends/cpu/gdn_rows.py backends/cpu/gdn_rows.py
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import tempfile
import time

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "minigraph-gdn-decode-ab"))

import numba  # noqa: E402
import numpy as np  # noqa: E402

import minigraph  # noqa: E402,F401  (sets OpenMP's wait policy before Numba starts its threads)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gdn import _copy_rows  # noqa: E402  (the same copy floor as benchmarks/gdn.py)

S, H_K, H_V = 128, 16, 32
SHAPES = {1: (5, 41), 32: (1, 11)}   # n_seqs: (calls a block, blocks)


def load_kernel(path):
    """`_gdn_decode` and STREAM_BYTES of the gdn_rows.py at `path`, as a module of its own."""
    name = "gdn_rows_ab_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod          # Numba's cache finds a kernel's module by name
    spec.loader.exec_module(mod)
    return mod._gdn_decode, mod.STREAM_BYTES


def _params(fn):
    return list(inspect.signature(fn.py_func).parameters)


def _extra(fn, state):
    """The state-destination arguments of kernels that take them (sd unused: to_sd 0)."""
    return (state, 0) if "to_sd" in _params(fn) else ()


def _bcast(fn):
    """The q/k head map of kernels that take it (0: tiled), so older copies of gdn_rows.py run too."""
    return (0,) if "bcast" in _params(fn) else ()


def make_inputs(ns, kda, rng):
    """q, k, v, g, beta, state in kernel order (reversed ggml ne)."""
    def unit(shape):
        x = rng.standard_normal(shape, dtype=np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit((ns, 1, H_K, S)), unit((ns, 1, H_K, S))
    v = rng.standard_normal((ns, 1, H_V, S), dtype=np.float32)
    g = rng.uniform(-1.0, -1e-4, (ns, 1, H_V, S if kda else 1)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, (ns, 1, H_V, 1)).astype(np.float32)
    state = 0.1 * rng.standard_normal((ns, H_V, S, S), dtype=np.float32)
    return q, k, v, g, beta, state


def measure(kernels, ns, kda, rng):
    """{label: [seconds a call, one per block]} and each kernel's max |diff| / max |first|."""
    arrs = make_inputs(ns, kda, rng)
    calls, outs = {}, []
    for label, (fn, stream_bytes) in kernels.items():
        dst = np.zeros((1, 1, ns + S * ns, S * H_V), np.float32)
        stream = arrs[5].nbytes >= stream_bytes
        calls[label] = (lambda fn, dst, stream: lambda: fn(dst, *arrs, *_extra(fn, arrs[5]), 1, *_bcast(fn), stream))(fn, dst, stream)
        outs.append(dst)
    src = arrs[5].reshape(-1, 1024)
    copy = np.empty_like(src)
    calls["copy floor"] = lambda: _copy_rows(copy, src)
    for call in calls.values():
        call()                       # compile / load, and the output to compare
    diffs = [float(np.abs(o - outs[0]).max() / np.abs(outs[0]).max()) for o in outs]
    repeat, rounds = SHAPES[ns]
    times = {label: [] for label in calls}
    for r in range(rounds):
        order = list(calls) if r % 2 == 0 else list(calls)[::-1]
        for label in order:
            calls[label]()
            t0 = time.perf_counter()
            for _ in range(repeat):
                calls[label]()
            times[label].append((time.perf_counter() - t0) / repeat)
    return times, diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="gdn_rows.py files (the first is the reference)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kda", action="store_true", help="per-key gates (default GDA)")
    ap.add_argument("--ns", default="1,32", help="n_seqs to run, of 1,32")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    kernels = {}
    for i, path in enumerate(args.files):
        kernels[f"{i}: {os.path.relpath(path)}"] = load_kernel(path)
    rng = np.random.default_rng(0)
    for ns in (int(x) for x in args.ns.split(",")):
        times, diffs = measure(kernels, ns, args.kda, rng)
        print(f"decode N={ns}, S={S} H_k={H_K} H_v={H_V} {'KDA' if args.kda else 'GDA'} K=1, "
              f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
        ref = np.median(times[next(iter(kernels))])
        for j, (label, ts) in enumerate(times.items()):
            med = np.median(ts)
            extra = f"  ref/this {ref / med:.2f}x  diff {diffs[j]:.1e}" if j < len(diffs) else ""
            print(f"  {label:60s} min {min(ts) * 1e6:8.1f} us  median {med * 1e6:8.1f} us{extra}")


if __name__ == "__main__":
    main()
