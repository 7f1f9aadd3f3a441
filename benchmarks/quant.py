"""Quantized mat-vec on the CPU (one decode token), side by side in one run: minigraph's quantized
MUL_MAT vs ggml's CPU backend (ggml-python) on the same bytes, and vs minigraph's f32 mat-vec
over the same (dequantized) weights.

Weights ne [4096, M] (ggml's order: K = 4096 along ne0) with M = 4096 and M = 14336 (a llama
ffn_up), src1 f32 [4096, N]: one token by default, --batch 2,4,8 for small batches (speculative
decoding, small prefill), --batch 512 for a prefill; types Q8_0, Q4_0, Q4_K by default (--types
for others); 2 threads everywhere.

  mg quant   public API graph mul_mat(w_q, x), mg.backend_cpu_init(threads), planned once, then
             graph_compute timed: includes quantizing x to the vec_dot type (Q8_0 / Q8_K) and the
             Python step of the node (backends/cpu/quant.py)
  ggml quant ggml-python, the same quantized bytes, graph and plan built once, compute timed
  mg f32     minigraph's own f32 mat-vec on the dequantized weights (4 bytes per weight)
  read       the floor: a Numba kernel on the same threads that reads every byte of the quantized
             weights once (8 bytes a load, xor-summed), i.e. what streaming the weights costs here;
             "of read" is the read's time over mg quant's (1.0 = at the floor)

Each line runs ROUNDS blocks of `repeat` computes, interleaved across the contenders so load
bursts on the shared cores hit all alike; printed: ms per mat-vec as the median of the block
means [min .. max], and GB/s of weight bytes read. The outputs are checked against ggml's
(NMSE). Run:
    python benchmarks/quant.py [--quick] [--threads N] [--rounds R] [--batch 1,2,8] [--types q4_0,q6_K]
"""
from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np
from numba import prange

import minigraph as mg
from minigraph.core import dtypes, quants
from minigraph.testing import ggml_bridge
from minigraph.testing.host import cpu_line

# Idle workers wait as a README install has them wait (backends/cpu/threads.py: OpenMP spins ~0.1
# ms after a parallel region, then sleeps); SETTLE between the contenders' blocks lets a spinning
# pool go to sleep before the next contender starts (GNU OpenMP's own 7 ms spin once cost ggml's
# Q4_0 mat-vec 0.6 -> 14 ms). This script used to force OMP_WAIT_POLICY=passive, a sleep and a
# wake-up every minigraph compute; that measured no slower for minigraph (Zen 3, two alternating
# pairs of runs, BENCHMARKS.md), but it is not what users run.
SETTLE = 0.005

K = 4096
SHAPES = (4096, 14336)
TYPES = (dtypes.TYPE_Q8_0, dtypes.TYPE_Q4_0, dtypes.TYPE_Q4_K)


def quantize(w: np.ndarray, type_: int) -> np.ndarray:
    """ggml's bytes: ggml_quantize_chunk when ggml-python is there (fast), else minigraph's
    reference quantizer (the same bytes, slower)."""
    if ggml_bridge.available():
        return ggml_bridge.quantize_chunk(type_, w)
    return quants.quantize(w, type_)


@numba.njit(parallel=True, cache=True)
def _read(words, parts):
    """xor of every 8-byte word, in `parts` contiguous slices read in parallel."""
    out = np.zeros(parts, np.int64)
    n = words.shape[0]
    for p in prange(parts):
        s = np.int64(0)
        w = words[p * n // parts:(p + 1) * n // parts]   # a view: a loop from a variable start stays scalar
        for i in range(w.shape[0]):
            s ^= w[i]
        out[p] = s
    return out


def read_runner(raw, threads):
    words = raw.reshape(-1)[: raw.size // 8 * 8].view(np.int64)

    def run(n):
        numba.set_num_threads(threads)
        t0 = time.perf_counter()
        for _ in range(n):
            _read(words, 64)
        return (time.perf_counter() - t0) / n
    run(1)
    return run, None


def mg_runner(w, x, type_, threads):
    ctx = mg.Context()
    a = ctx.from_numpy(w, type_) if dtypes.is_quantized(type_) else ctx.from_numpy(w)
    out = ctx.mul_mat(a, ctx.from_numpy(x))
    gf = mg.Graph()
    gf.build_forward_expand(out)
    be = mg.backend_cpu_init(threads)
    be.graph_compute(gf)                       # plan + compile once

    def run(n):
        t0 = time.perf_counter()
        for _ in range(n):
            be.graph_compute(gf)
        return (time.perf_counter() - t0) / n
    return run, lambda: out.numpy()


def ggml_runner(raw, x, type_, threads):
    g = ggml_bridge.GgmlContext(raw.nbytes + (64 << 20))
    out = g.mul_mat(g.from_block_bytes(raw, type_), g.from_numpy(x))
    return (lambda n: ggml_bridge.time_compute(out, n_threads=threads, repeat=n)), \
        (lambda: ggml_bridge.compute(out, n_threads=threads)[0])


def bench(m: int, n: int, types: list, threads: int, rounds: int, repeat: int, rng: np.random.Generator) -> None:
    w = rng.standard_normal((m, K)).astype(np.float32)
    x = rng.standard_normal((n, K)).astype(np.float32)
    reps = max(1, repeat // max(1, n // 8))        # fewer computes per block for big batches
    for t in types:
        raw = quantize(w, t)
        runners = {}
        runners["mg quant"] = mg_runner(raw, x, t, threads)
        if ggml_bridge.available():
            runners["ggml quant"] = ggml_runner(raw, x, t, threads)
        runners["mg f32"] = mg_runner(quants.dequantize(raw, t), x, dtypes.TYPE_F32, threads)
        if n == 1:
            runners["read"] = read_runner(raw, threads)
        sizes = {"mg quant": raw.nbytes, "ggml quant": raw.nbytes, "mg f32": w.nbytes, "read": raw.nbytes}
        times = {k: [] for k in runners}
        for _ in range(rounds):
            for k, (run, _) in runners.items():
                time.sleep(SETTLE)
                times[k].append(run(reps))
        outs = {k: np.asarray(get()).reshape(-1) for k, (_, get) in runners.items() if get is not None}
        ref = outs.get("ggml quant", outs["mg quant"])
        parts = []
        for k, ts in times.items():
            med = float(np.median(ts))
            part = f"{k} {med * 1e3:7.2f} ms [{min(ts) * 1e3:.2f} .. {max(ts) * 1e3:.2f}] {sizes[k] / med / 1e9:5.1f} GB/s"
            if k in outs:
                part += f" nmse {float(((outs[k] - ref) ** 2).sum() / (ref ** 2).sum()):.1e}"
            if n > 1:
                part += f" ({med / n * 1e6:.0f} us/col)"
            parts.append(part)
        if "read" in times:
            parts.append(f"mg quant at {np.median(times['read']) / np.median(times['mg quant']):.2f} of read")
        print(f"{dtypes.type_name(t):5} w [{K}, {m}] N={n}  " + "  |  ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--batch", default="1", help="src1 columns, a comma list (default 1)")
    ap.add_argument("--types", default=",".join(dtypes.type_name(t) for t in TYPES))
    ap.add_argument("--quick", action="store_true", help="M = 4096 only, 3 rounds of 5")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.repeat = 3, 5
    names = {dtypes.type_name(t).lower(): t for t in dtypes.VEC_DOT_TYPE}
    types = [names[t.strip().lower()] for t in args.types.split(",")]
    rng = np.random.default_rng(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"{cpu_line(args.threads)}; ggml-python {'present' if ggml_bridge.available() else 'absent'}; "
          f"load average {load[0]:.2f}")
    for n in (int(b) for b in args.batch.split(",")):
        for m in SHAPES[:1] if args.quick else SHAPES:
            bench(m, n, types, args.threads, args.rounds, args.repeat, rng)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"load average at the end {load[0]:.2f}")


if __name__ == "__main__":
    main()
