"""Fusion benchmark: llama.cpp's chunked delta net unfused vs fused (mg.optimize) vs the fused op
called directly, and elementwise fusion of a gate chain, on the CPU or CUDA backend. Prints markdown.

    python benchmarks/fusion.py [--backend cpu|cuda] [--threads N] [--reps R] [--quick] [--gqa] [--part all|delta_net|elementwise]

The gate-chain table times unfused and fused runs alternately (side by side), so load that drifts
on a shared machine biases neither; its ratio is the number to read. Under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) it runs a tiny chain once: a check of the code path, not a benchmark.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigraph as mg
from minigraph.testing.host import cpu_model
from minigraph.core import flags
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


def delta_net_inputs(ctx, rng, S, H, T, N, kda, H_k=None):
    """q, k [S, H_k, T, N] (l2-normalised; H_k defaults to H), v, g, beta, state for H value heads."""
    H_k = H_k or H

    def t(ne, lo=-1.0, hi=1.0):
        return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
    q = ctx.l2_norm(t([S, H_k, T, N]), 1e-6)
    k = ctx.l2_norm(t([S, H_k, T, N]), 1e-6)
    return q, k, t([S, H, T, N]), t([S if kda else 1, H, T, N], -3.0, -1e-4), t([1, H, T, N], 0.0, 1.0), \
        t([S, S, H, N], -0.5, 0.5)


def repeat_heads(ctx, x, H, form):
    """q or k [S, H_k, T, N] up to H heads as llama.cpp's callers do before the chunked graph:
    "tiled" (Qwen3.5: ggml_repeat_4d, head h = h % H_k) or "interleaved" (Qwen3-Next: head h // r)."""
    S, H_k, T, N = x.ne
    if form == "tiled":
        return ctx.repeat_4d(x, S, H, T, N)
    y = ctx.repeat_4d(ctx.reshape_4d(x, S, 1, H_k, T * N), S, H // H_k, H_k, T * N)
    return ctx.reshape_4d(y, S, H, T, N)


def bench_delta_net(cpu, S, H, T, N, kda, reps, H_k=None, form="tiled"):
    ctx = mg.Context()
    args = delta_net_inputs(ctx, np.random.default_rng(0), S, H, T, N, kda, H_k)
    gqa = args[0].ne[1] != H
    q, k = (repeat_heads(ctx, x, H, form) for x in args[:2]) if gqa else args[:2]
    o, s = build_delta_net_chunking(ctx, q, k, *args[2:])
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
    heads = f"H_k={args[0].ne[1]} H_v={H} ({form} q/k repeat)" if gqa else f"H={H}"
    left = [n.op for n in run.nodes].count("REPEAT")
    # compute-buffer bytes of each form (seed #18792: "can llama-bench display the compute buffer usage?")
    mem = [cpu.reserve(g) for g in (gf, run.graph, gd)]
    return dict(case=f"{'KDA' if kda else 'GDA'} S={S} {heads} T={T} n_seqs={N}", nodes=len(gf), nodes_fused=len(run),
                nodes_direct=len(gd), unfused=t_unfused, fused=t_fused, direct=t_direct, err=err, repeats=left, mem=mem)


def timed_pair(fa, fb, reps: int) -> tuple[float, float]:
    """Median wall times (ms) of fa() and fb(), run alternately after two warm-up calls each."""
    for f in (fa, fb, fa, fb):
        f()
    times: tuple[list, list] = ([], [])
    for _ in range(reps):
        for f, ts in zip((fa, fb), times):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times[0])), 1e3 * float(np.median(times[1]))


def gate_chain_graph(H, T, N, resident=None):
    """Qwen3-Next's gates: decay = exp(softplus(a + dt_bias) * A), beta = sigmoid(b). With
    `resident`, the inputs live in that backend's memory (no per-run upload or change check)."""
    ctx = mg.Context()
    rng = np.random.default_rng(1)
    a = ctx.from_numpy(rng.standard_normal((N, T, H)).astype(np.float32))
    b = ctx.from_numpy(rng.standard_normal((N, T, H)).astype(np.float32))
    dt = ctx.from_numpy(rng.standard_normal(H).astype(np.float32))
    A = ctx.from_numpy(-np.abs(rng.standard_normal(H)).astype(np.float32))
    if resident is not None:
        for t in (a, b, dt, A):
            mg.backend_tensor_alloc(resident, t)
    decay = ctx.exp(ctx.scale(ctx.mul(ctx.softplus(ctx.add(a, dt)), A), 1.0))
    beta = ctx.sigmoid(ctx.scale(b, 1.0))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, decay)
    mg.build_forward_expand(gf, beta)
    return gf, decay, beta


def bench_gate_chain(backend, H, T, N, reps, timing=None):
    """Fused vs unfused gate chain: checked on `backend`; timed on `timing` (default: the same
    graph on `backend`; else a copy whose inputs live on `timing`), synchronised after each run."""
    gf, decay, beta = gate_chain_graph(H, T, N)
    mg.compute(gf, backend, fuse=False)
    ref = [decay.numpy().copy(), beta.numpy().copy()]
    mg.compute(gf, backend)
    same = all(np.array_equal(t.numpy(), r) for t, r in zip((decay, beta), ref))
    gt = gf if timing is None else gate_chain_graph(H, T, N, resident=timing)[0]
    timing = timing or backend

    def run(fuse: bool) -> None:
        mg.compute(gt, timing, fuse=fuse)
        timing.synchronize()
    t_unfused, t_fused = timed_pair(lambda: run(False), lambda: run(True), reps)
    return dict(case=f"gate chain [H={H}, T={T}, n_seqs={N}]", nodes=len(gf), nodes_fused=len(mg.optimize(gf, backend)),
                unfused=t_unfused, fused=t_fused, same=same)


def delta_net_table(cpu, cases, reps) -> None:
    print("| delta net (chunked graph, as llama.cpp builds it) | nodes unfused | nodes fused | nodes direct "
          "| unfused ms | fused (mg.optimize) ms | direct fused op ms | unfused/fused | fused/direct | REPEAT left "
          "| compute buffer MiB unfused / fused / direct | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for S, H, T, N, kda, *gqa in cases:
        r = bench_delta_net(cpu, S, H, T, N, kda, reps, *gqa)
        mib = " / ".join(f"{b / 2**20:.2f}" for b in r["mem"])
        print(f"| {r['case']} | {r['nodes']} | {r['nodes_fused']} | {r['nodes_direct']} | {r['unfused']:.2f} | "
              f"{r['fused']:.2f} | {r['direct']:.2f} | {r['unfused'] / r['fused']:.1f}x | "
              f"{r['fused'] / r['direct']:.2f}x | {r['repeats']} | {mib} | {r['err']:.1e} |")


def gate_chain_table(backend, quick: bool, reps: int, simulator: bool = False) -> None:
    shapes, reps = ([(32, 512, 1)] if quick else [(32, 512, 1), (32, 4096, 4)]), reps * 4
    if simulator:
        shapes, reps = [(4, 8, 1)], 1  # every GPU thread is a Python thread there: check the path only
    timing = None
    if getattr(backend, "download_outputs", False):  # CUDA: time the device work alone
        from minigraph.backends.cuda.backend import CudaBackend

        timing = CudaBackend(backend.device, download_outputs=False)
        print("\nElementwise chains: inputs and outputs stay on the GPU (no host round trip).")
    print("\n| elementwise chain | nodes unfused | nodes fused | unfused ms | fused ms | speed-up | bit-identical |")
    print("|---|---|---|---|---|---|---|")
    for H, T, N in shapes:
        r = bench_gate_chain(backend, H, T, N, reps, timing)
        print(f"| {r['case']} | {r['nodes']} | {r['nodes_fused']} | {r['unfused']:.3f} | {r['fused']:.3f} | "
              f"{r['unfused'] / r['fused']:.2f}x | {r['same']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--part", choices=("all", "delta_net", "elementwise"), default="all", help="which tables")
    ap.add_argument("--gqa", action="store_true", help="only the GQA (repeated q/k) delta-net cases")
    a = ap.parse_args()
    if a.backend == "cuda":
        from numba import cuda

        cpu = mg.backend_cuda_init(0)
        name = getattr(cuda.get_current_device(), "name", b"simulator")
        where = f"CUDA backend on {name.decode() if isinstance(name, bytes) else name} (times include the host round trip)"
    else:
        cpu = mg.backend_cpu_init(a.threads)
        where = f"CPU backend, {cpu.n_threads} threads ({os.cpu_count()} cores, {cpu_model()})"
    print(f"{where}, median of {a.reps} runs after 2 warm-ups\n")
    cases = [(128, 4, 64, 1, 0), (128, 4, 512, 1, 0), (128, 8, 1024, 1, 0), (128, 4, 100, 2, 0),
             (128, 4, 256, 1, 1), (64, 4, 1, 1, 0),
             # Qwen3-Next-shaped GQA (H_k=4, H_v=8): q/k repeated before the chunked graph
             (128, 8, 100, 1, 0, 4, "tiled"), (128, 8, 100, 1, 0, 4, "interleaved"), (128, 8, 1, 1, 0, 4, "tiled")]
    if a.quick:
        cases = [(64, 2, 100, 1, 0), (64, 2, 40, 1, 1), (64, 4, 100, 1, 0, 2, "tiled")]
    if a.gqa:
        cases = [c for c in cases if len(c) > 5]
    if a.part != "elementwise":
        delta_net_table(cpu, cases, a.reps)
    if a.part != "delta_net":
        gate_chain_table(cpu, a.quick, a.reps, a.backend == "cuda" and flags.cuda_simulator())


if __name__ == "__main__":
    main()
