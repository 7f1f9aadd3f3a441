"""Quantized mat-vec on the CPU (one decode token), side by side in one run: minigraph's quantized
MUL_MAT vs ggml's CPU backend (ggml-python) on the same bytes, and vs minigraph's f32 mat-vec
over the same (dequantized) weights.

Weights ne [4096, M] (ggml's order: K = 4096 along ne0) with M = 4096 and M = 14336 (a llama
ffn_up), src1 one f32 token [4096, 1]; types Q8_0, Q4_0, Q4_K; 2 threads everywhere.

  mg quant   public API graph mul_mat(w_q, x), mg.backend_cpu_init(threads), planned once, then
             graph_compute timed: includes quantizing x to the vec_dot type (Q8_0 / Q8_K) and the
             Python step of the node (backends/cpu/quant.py)
  ggml quant ggml-python, the same quantized bytes, graph and plan built once, compute timed
  mg f32     minigraph's own f32 mat-vec on the dequantized weights (4 bytes per weight)

Each line runs ROUNDS blocks of `repeat` computes, interleaved across the contenders so load
bursts on the shared cores hit all alike; printed: ms per mat-vec as the median of the block
means [min .. max], and GB/s of weight bytes read. The outputs are checked against ggml's
(NMSE). Run:
    python benchmarks/quant.py [--quick] [--threads N] [--rounds R]
"""
from __future__ import annotations

import argparse
import os
import time

# Numba's OpenMP workers spin-wait after each parallel region; in interleaved rounds they would
# take the cores ggml's threads need next (ggml's Q4_0 mat-vec measured 0.6 ms best / 14 ms median
# with spinning workers). Passive waiting lets each contender have the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import minigraph as mg
from minigraph.core import dtypes, quants
from minigraph.testing import ggml_bridge

K = 4096
SHAPES = (4096, 14336)
TYPES = (dtypes.TYPE_Q8_0, dtypes.TYPE_Q4_0, dtypes.TYPE_Q4_K)


def quantize(w: np.ndarray, type_: int) -> np.ndarray:
    """ggml's bytes: ggml_quantize_chunk when ggml-python is there (fast), else minigraph's
    reference quantizer (the same bytes, slower)."""
    if ggml_bridge.available():
        return ggml_bridge.quantize_chunk(type_, w)
    return quants.quantize(w, type_)


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


def bench(m: int, threads: int, rounds: int, repeat: int, rng: np.random.Generator) -> None:
    w = rng.standard_normal((m, K)).astype(np.float32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    for t in TYPES:
        raw = quantize(w, t)
        runners = {}
        runners["mg quant"] = mg_runner(raw, x, t, threads)
        if ggml_bridge.available():
            runners["ggml quant"] = ggml_runner(raw, x, t, threads)
        runners["mg f32"] = mg_runner(quants.dequantize(raw, t), x, dtypes.TYPE_F32, threads)
        sizes = {"mg quant": raw.nbytes, "ggml quant": raw.nbytes, "mg f32": w.nbytes}
        times = {k: [] for k in runners}
        for _ in range(rounds):
            for k, (run, _) in runners.items():
                times[k].append(run(repeat))
        outs = {k: np.asarray(get()).reshape(-1) for k, (_, get) in runners.items()}
        ref = outs.get("ggml quant", outs["mg quant"])
        parts = []
        for k, ts in times.items():
            med = float(np.median(ts))
            err = float(((outs[k] - ref) ** 2).sum() / (ref ** 2).sum())
            parts.append(f"{k} {med * 1e3:7.2f} ms [{min(ts) * 1e3:.2f} .. {max(ts) * 1e3:.2f}] "
                         f"{sizes[k] / med / 1e9:5.1f} GB/s nmse {err:.1e}")
        print(f"{dtypes.type_name(t):5} w [{K}, {m}]  " + "  |  ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="M = 4096 only, 3 rounds of 5")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.repeat = 3, 5
    rng = np.random.default_rng(0)
    print(f"CPU, {args.threads} threads, one token; ggml-python {'present' if ggml_bridge.available() else 'absent'}")
    for m in SHAPES[:1] if args.quick else SHAPES:
        bench(m, args.threads, args.rounds, args.repeat, rng)


if __name__ == "__main__":
    main()
