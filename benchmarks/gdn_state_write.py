"""Decode-step benchmark of the gdn_state_write pass: GATED_DELTA_NET then llama.cpp's ggml_cpy of
its final state into the recurrent cache, unfused (the op writes its snapshot slot, the copy reads
it and writes the cache) against fused (the op writes the cache slot itself, in place over the
state it read), beside the op alone (no copy) and a plain copy of the state (numpy's, or a
device-to-device copy on CUDA: what a good CPY costs). One run, all alternating each round; median
(min-max) ms a step and the fused step's state traffic (read + write) in GB/s. Prints markdown.

    python benchmarks/gdn_state_write.py [--backend cpu|cuda] [--threads N] [--seqs 1,32] [--kda] [--rounds R] [--reps N]

Shapes: Qwen3-Next / Qwen3.5 delta-net layers, S=128, H_k=16, H_v=32, f32 state (64 KB a head).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import minigraph as mg
from minigraph.testing.host import cpu_model

S, H_K, H_V = 128, 16, 32


def layer(backend, N: int, kda: bool, copy: bool, seed: int = 0):
    """(graph, cache) of one decode step over a cache of N state slots read and written in place."""
    ctx = mg.Context()
    rng = np.random.default_rng(seed)

    def leaf(ne, x):
        t = ctx.new_tensor_4d(mg.TYPE_F32, *ne)
        if backend.name != "CPU":
            mg.backend_tensor_alloc(backend, t)
        mg.backend_tensor_set(t, x.astype(np.float32))
        return t

    def unit(ne):
        x = rng.standard_normal(ne[::-1])
        return leaf(ne, x / np.linalg.norm(x, axis=-1, keepdims=True))
    n = S * S * H_V * N
    cache = leaf([n, 1, 1, 1], 0.1 * rng.standard_normal(n))
    q, k = unit([S, H_K, 1, N]), unit([S, H_K, 1, N])
    v = leaf([S, H_V, 1, N], rng.standard_normal((N, 1, H_V, S)))
    g = leaf([S if kda else 1, H_V, 1, N], rng.uniform(-1.0, -1e-4, (N, 1, H_V, S if kda else 1)))
    beta = leaf([1, H_V, 1, N], rng.uniform(0.0, 1.0, (N, 1, H_V, 1)))
    state = ctx.reshape_4d(cache, S, S, H_V, N)
    r = ctx.gated_delta_net(q, k, v, g, beta, state, 1)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, ctx.gated_delta_net_attn(r))
    if copy:
        mg.build_forward_expand(gf, ctx.cpy(ctx.gated_delta_net_state(r), cache))
    return gf, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="1,32")
    ap.add_argument("--kda", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20, help="steps timed together a round")
    a = ap.parse_args()
    if a.backend == "cuda":
        from numba import cuda
        be, sync = mg.backend_cuda_init(0), cuda.synchronize
        name = getattr(cuda.get_current_device(), "name", "numba-cuda simulator")
        where = name.decode() if isinstance(name, bytes) else name

        def plain_copy(n):
            src, dst = cuda.to_device(np.ones(n, np.float32)), cuda.device_array(n, np.float32)
            return lambda: dst.copy_to_device(src)
    else:
        be, sync = mg.backend_cpu_init(a.threads), (lambda: None)
        where = f"{cpu_model()}, {a.threads} threads, load {os.getloadavg()[0]:.1f}"

        def plain_copy(n):
            src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
            return lambda: np.copyto(dst, src)
    print(f"GATED_DELTA_NET decode + state write, {'KDA' if a.kda else 'GDA'}, S={S} H_k={H_K} H_v={H_V}, "
          f"{a.backend} ({where}), {a.rounds} rounds x {a.reps} steps\n")
    print("| n_seqs | state MB | unfused (op + cpy) | fused (op writes the cache) | op alone | copy of the state "
          "| unfused / fused | (op alone + copy) / fused | fused GB/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for N in (int(x) for x in a.seqs.split(",")):
        ways = {"unfused": layer(be, N, a.kda, True)[0], "alone": layer(be, N, a.kda, False)[0]}
        run = mg.optimize(layer(be, N, a.kda, True)[0], be)
        assert any(p == "gdn_state_write" and s == "fused" for p, s, _ in run.log.entries), str(run.log)
        ways["fused"] = run.graph     # each graph straight to the backend: the same Python path for all
        calls = {w: (lambda gf: lambda: be.graph_compute(gf))(gf) for w, gf in ways.items()}
        calls["copy"] = plain_copy(S * S * H_V * N)
        times: dict = {w: [] for w in calls}
        for call in calls.values():
            call()                               # compile and plan
        for _ in range(a.rounds):
            for w, call in calls.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(a.reps):
                    call()
                sync()
                times[w].append(1e3 * (time.perf_counter() - t0) / a.reps)
        med = {w: float(np.median(t)) for w, t in times.items()}
        mb = 4 * S * S * H_V * N / 1e6

        def cell(w):
            return f"{med[w]:.3f} ({min(times[w]):.3f}-{max(times[w]):.3f})"
        print(f"| {N} | {mb:.1f} | {cell('unfused')} | {cell('fused')} | {cell('alone')} | {cell('copy')} | "
              f"{med['unfused'] / med['fused']:.2f}x | {(med['alone'] + med['copy']) / med['fused']:.2f}x | "
              f"{2 * mb / med['fused']:.1f} |")


if __name__ == "__main__":
    main()
