"""MLA layer benchmark (minigraph.models.mla, DeepSeek-V2-Lite dims): the whole attention block of
one layer (projections, rope, cache write, attention, wv_b, wo) three ways, side by side:

    flash      llama.cpp's graph with flash attention (FLASH_ATTN_EXT, V a view of K)
    unfused    llama.cpp's graph without flash attention (mul_mat / soft_max_ext / mul_mat), as written
    fused      the same graph after mg.optimize (the attention pass swaps in FLASH_ATTN_EXT)

    python benchmarks/mla.py [--threads N] [--reps R] [--n-kv 4096] [--prefill 512] [--quick]

The three ways run in rounds (flash, unfused, fused, flash, ...), so load that drifts on a shared
machine biases none of them; each cell is the median over the rounds with the min-max spread.
f16 cache, i64 cell indices, causal mask; the cache holds n_kv - n_tokens earlier tokens.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import minigraph as mg
from minigraph.core import flags
from minigraph.models import mla


def build(cfg, n_tokens, n_kv, flash):
    ctx = mg.Context()
    rng = np.random.default_rng(0)
    w = mla.random_weights(ctx, cfg, rng)
    inp = mla.make_inputs(ctx, cfg, rng, n_tokens, n_kv - n_tokens)
    gf = ctx.new_graph()
    out = mla.build_mla_attn(ctx, gf, cfg, w, inp.cur, inp.inp_pos, inp.k_cache, inp.k_idxs, inp.kq_mask,
                             flash_attn=flash)
    return gf, out


def bench(cpu, cfg, n_tokens, n_kv, reps):
    g_flash, o_flash = build(cfg, n_tokens, n_kv, True)
    g_plain, o_plain = build(cfg, n_tokens, n_kv, False)
    ways = {"flash": lambda: mg.compute(g_flash, cpu), "unfused": lambda: mg.compute(g_plain, cpu, fuse=False),
            "fused": lambda: mg.compute(g_plain, cpu)}
    outs = {}
    for name, fn in ways.items():       # warm-up: compile, plan, optimize
        fn()
        fn()
        outs[name] = (o_flash if name == "flash" else o_plain).numpy().copy()
    times = {name: [] for name in ways}
    for _ in range(reps):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    ref = outs["unfused"].astype(np.float64)
    err = {n: float(((o - ref) ** 2).sum() / (ref ** 2).sum()) for n, o in outs.items()}
    return times, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n-kv", type=int, default=4096, help="cells attended in decode")
    ap.add_argument("--prefill", type=int, default=512, help="prefill tokens (n_q = n_kv, causal); 0 skips")
    ap.add_argument("--quick", action="store_true", help="n_kv 512, prefill 64, 3 rounds")
    args = ap.parse_args()
    if args.quick:
        args.n_kv, args.prefill, args.reps = 512, 64, 3
    cpu = mg.backend_cpu_init(args.threads)
    cfg = mla.DEEPSEEK_V2_LITE
    print(f"# MLA layer, DeepSeek-V2-Lite dims (16 heads, cache rows 576 = kv 512 | pe 64, V 512), CPU")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{cpu.n_threads} threads; NUMBA threading layer default; MINIGRAPH_FUSION={int(flags.fusion_enabled())}")
    print()
    print("| case | flash (ms) | unfused (ms) | fused (ms) | unfused / fused | NMSE fused vs unfused |")
    print("| --- | --- | --- | --- | --- | --- |")
    cases = [("decode", 1, args.n_kv)] + ([("prefill", args.prefill, args.prefill)] if args.prefill else [])
    for name, n_tokens, n_kv in cases:
        times, err = bench(cpu, cfg, n_tokens, n_kv, args.reps)
        med = {k: float(np.median(v)) for k, v in times.items()}
        cell = {k: f"{med[k]:.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in times.items()}
        print(f"| {name} n_q={n_tokens} n_kv={n_kv} | {cell['flash']} | {cell['unfused']} | {cell['fused']} | "
              f"{med['unfused'] / med['fused']:.2f}x | {err['fused']:.1e} |")
    print()
    print(f"median of {args.reps} rounds (min-max); the three ways alternate within each round.")


if __name__ == "__main__":
    main()
