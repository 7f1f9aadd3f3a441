"""Fusion benchmark: llama.cpp's chunked delta net unfused vs fused (mg.optimize) vs the fused op
called directly, and elementwise fusion of a gate chain, on the CPU or CUDA backend. Prints markdown.

    python benchmarks/fusion.py [--backend cpu|cuda] [--threads N] [--reps R] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import minigraph as mg
from minigraph.models.delta_net import build_delta_net_chunking, build_delta_net_fused


def timed(fn, reps: int) -> float:
    """Median wall time (ms) of fn() after two warm-up calls (compile + plan)."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def delta_net_inputs(ctx, rng, S, H, T, N, kda):
    def t(ne, lo=-1.0, hi=1.0):
        return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
    q = ctx.l2_norm(t([S, H, T, N]), 1e-6)
    k = ctx.l2_norm(t([S, H, T, N]), 1e-6)
    return q, k, t([S, H, T, N]), t([S if kda else 1, H, T, N], -3.0, -1e-4), t([1, H, T, N], 0.0, 1.0), \
        t([S, S, H, N], -0.5, 0.5)


def bench_delta_net(cpu, S, H, T, N, kda, reps):
    ctx = mg.Context()
    args = delta_net_inputs(ctx, np.random.default_rng(0), S, H, T, N, kda)
    o, s = build_delta_net_chunking(ctx, *args)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, s)
    of, sf = build_delta_net_fused(ctx, *args)
    gd = ctx.new_graph()
    mg.build_forward_expand(gd, of)
    mg.build_forward_expand(gd, sf)
    t_unfused = timed(lambda: mg.compute(gf, cpu, fuse=False), reps)
    ref = o.numpy().copy()
    t_fused = timed(lambda: mg.compute(gf, cpu), reps)
    err = float(np.abs(o.numpy() - ref).max())
    t_direct = timed(lambda: mg.compute(gd, cpu, fuse=False), reps)
    run = mg.optimize(gf, cpu)
    return dict(case=f"{'KDA' if kda else 'GDA'} S={S} H={H} T={T} n_seqs={N}", nodes=len(gf), nodes_fused=len(run),
                nodes_direct=len(gd), unfused=t_unfused, fused=t_fused, direct=t_direct, err=err)


def bench_gate_chain(cpu, H, T, N, reps):
    """Qwen3-Next's gates: decay = exp(softplus(a + dt_bias) * A), beta = sigmoid(b)."""
    ctx = mg.Context()
    rng = np.random.default_rng(1)
    a = ctx.from_numpy(rng.standard_normal((N, T, H)).astype(np.float32))
    b = ctx.from_numpy(rng.standard_normal((N, T, H)).astype(np.float32))
    dt = ctx.from_numpy(rng.standard_normal(H).astype(np.float32))
    A = ctx.from_numpy(-np.abs(rng.standard_normal(H)).astype(np.float32))
    decay = ctx.exp(ctx.scale(ctx.mul(ctx.softplus(ctx.add(a, dt)), A), 1.0))
    beta = ctx.sigmoid(ctx.scale(b, 1.0))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, decay)
    mg.build_forward_expand(gf, beta)
    t_unfused = timed(lambda: mg.compute(gf, cpu, fuse=False), reps)
    ref = decay.numpy().copy()
    t_fused = timed(lambda: mg.compute(gf, cpu), reps)
    same = bool(np.array_equal(decay.numpy(), ref))
    return dict(case=f"gate chain [H={H}, T={T}, n_seqs={N}]", nodes=len(gf), nodes_fused=len(mg.optimize(gf, cpu)),
                unfused=t_unfused, fused=t_fused, same=same)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    a = ap.parse_args()
    if a.backend == "cuda":
        from numba import cuda

        cpu = mg.backend_cuda_init(0)
        name = getattr(cuda.get_current_device(), "name", b"simulator")
        where = f"CUDA backend on {name.decode() if isinstance(name, bytes) else name} (times include the host round trip)"
    else:
        cpu = mg.backend_cpu_init(a.threads)
        where = f"CPU backend, {cpu.n_threads} threads ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    print(f"{where}, median of {a.reps} runs after 2 warm-ups\n")
    cases = [(128, 4, 64, 1, 0), (128, 4, 512, 1, 0), (128, 8, 1024, 1, 0), (128, 4, 100, 2, 0),
             (128, 4, 256, 1, 1), (64, 4, 1, 1, 0)]
    if a.quick:
        cases = [(64, 2, 100, 1, 0), (64, 2, 40, 1, 1)]
    print("| delta net (chunked graph, as llama.cpp builds it) | nodes unfused | nodes fused | nodes direct "
          "| unfused ms | fused (mg.optimize) ms | direct fused op ms | unfused/fused | fused/direct | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for S, H, T, N, kda in cases:
        r = bench_delta_net(cpu, S, H, T, N, kda, a.reps)
        print(f"| {r['case']} | {r['nodes']} | {r['nodes_fused']} | {r['nodes_direct']} | {r['unfused']:.2f} | "
              f"{r['fused']:.2f} | {r['direct']:.2f} | {r['unfused'] / r['fused']:.1f}x | "
              f"{r['fused'] / r['direct']:.2f}x | {r['err']:.1e} |")
    print("\n| elementwise chain | nodes unfused | nodes fused | unfused ms | fused ms | speed-up | bit-identical |")
    print("|---|---|---|---|---|---|---|")
    for H, T, N in ([(32, 512, 1), (32, 4096, 4)] if not a.quick else [(32, 512, 1)]):
        r = bench_gate_chain(cpu, H, T, N, a.reps * 4)
        print(f"| {r['case']} | {r['nodes']} | {r['nodes_fused']} | {r['unfused']:.3f} | {r['fused']:.3f} | "
              f"{r['unfused'] / r['fused']:.2f}x | {r['same']} |")


if __name__ == "__main__":
    main()
