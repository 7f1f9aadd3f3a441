"""Dev benchmark: minigraph's GATED_DELTA_NET CPU kernel vs ggml's CPU op (ggml-python).

Shapes from the issue (H_k=16, H_v=32, S=128, GDA, K=1), 2 threads on both sides; each
figure is the minimum over repeats. Run: python benchmarks/gdn_kernel_dev.py [--threads N]
"""
import argparse
import time

import numba
import numpy as np

from minigraph.backends.cpu import gated_delta_net as gdn

SHAPES = [  # (name, T, n_seqs, repeats, ggml figure from the issue)
    ("decode N=1", 1, 1, 300, "296 us"),
    ("decode N=32", 1, 32, 30, "17.5 ms"),
    ("prefill T=4096", 4096, 1, 3, "6.1k tok/s"),
]
S, H_K, H_V = 128, 16, 32


def make_inputs(T, ns, rng, gate_width=1):
    """numpy arrays in kernel order (ne3, ne2, ne1, ne0)."""
    q = rng.standard_normal((ns, T, H_K, S), dtype=np.float32)
    k = rng.standard_normal((ns, T, H_K, S), dtype=np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((ns, T, H_V, S), dtype=np.float32)
    g = rng.uniform(-1.0, -1e-4, (ns, T, H_V, gate_width)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, (ns, T, H_V, 1)).astype(np.float32)
    state = 0.1 * rng.standard_normal((ns, H_V, S, S), dtype=np.float32)
    return q, k, v, g, beta, state


def time_minigraph(arrs, K, reps):
    ns, T = arrs[2].shape[:2]
    out = np.empty((1, 1, T * ns + K * S * ns, S * H_V), np.float32)
    gdn.gated_delta_net(out, *arrs, K)  # compile / warm
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter()
        gdn.gated_delta_net(out, *arrs, K)
        best = min(best, time.perf_counter() - t0)
    return best, out


def time_ggml(arrs, K, reps, threads):
    import ggml
    import ggml.utils as gu
    mem = 3 * sum(a.nbytes for a in arrs) + 64 * 2**20
    ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=mem, mem_buffer=None))
    try:
        ts = [gu.from_numpy(np.ascontiguousarray(a), ctx) for a in arrs]
        node = ggml.ggml_gated_delta_net(ctx, *ts, K)
        gf = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(gf, node)
        best = 1e9
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            ggml.ggml_graph_compute_with_ctx(ctx, gf, threads)
            best = min(best, time.perf_counter() - t0)
        return best, gu.to_numpy(node).copy()
    finally:
        ggml.ggml_free(ctx)


def fmt(sec, tokens):
    return f"{sec * 1e6:10.1f} us {tokens / sec:10.0f} tok/s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kda", action="store_true", help="per-key gates instead of scalar")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    print(f"numba threads {numba.get_num_threads()}, layer {numba.threading_layer()}"
          if False else f"numba threads {numba.get_num_threads()}")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    gdn.gated_delta_net(np.empty((1, 1, 2 + S, S * H_V), np.float32),
                        *make_inputs(1, 1, rng), 1)
    print(f"compile/load {time.perf_counter() - t0:.2f} s, threading layer "
          f"{numba.threading_layer()}")
    for name, T, ns, reps, issue in SHAPES:
        arrs = make_inputs(T, ns, rng, S if args.kda else 1)
        mine, out = time_minigraph(arrs, 1, reps)
        try:
            ref, ref_out = time_ggml(arrs, 1, reps, args.threads)
        except ImportError:
            print(f"{name:16s} minigraph {fmt(mine, T * ns)}  (ggml-python missing)")
            continue
        err = np.abs(out[0, 0] - ref_out).max() / np.abs(ref_out).max()
        print(f"{name:16s} minigraph {fmt(mine, T * ns)} | ggml {fmt(ref, T * ns)} | "
              f"speedup {ref / mine:5.2f}x | max rel diff {err:.1e} | issue ggml {issue}")


if __name__ == "__main__":
    main()
