"""FLASH_ATTN_EXT on the CPU, MLA shapes, side by side in one run: minigraph vs ggml (ggml-python).

MLA (DeepSeek-style, V a view of K): 16 query heads, 1 KV head, DK 576, DV 512, f16 KV cache,
V = view_4d(k, 512, n_kv, 1, 1, k.nb[1], k.nb[2], k.nb[3], 0), 2 threads everywhere:
    decode   n_q = 1,   n_kv = 4096, f16 mask of zeros
    prefill  n_q = 512, n_kv = 512,  causal f16 mask
    view vs copy: decode at n_kv = 32768, V a view of K vs V a separate f16 tensor (same values)

  minigraph  public API graph, mg.backend_cpu_init(threads), planned once (first compute), then
             graph_compute timed. The CPU backend hands f16 sources to kernels as f32 copies
             (backends/cpu/backend.py _run_node), so this includes converting K (and V) every run.
  kernel     the same Numba kernel called on f32 arrays converted once beforehand: what the op
             costs without the per-run f16 -> f32 copies
  ggml       ggml-python's CPU backend, graph and plan built once, compute timed

Each line runs ROUNDS blocks of `repeat` computes, interleaved across the contenders so load
bursts on the shared cores hit all alike; printed: median of the block means [min .. max].
Outputs are checked against ggml's (max |diff| / max |ggml|). Run:
    python benchmarks/attention.py [--quick] [--threads N]
"""
from __future__ import annotations

import argparse
import math
import time

import numba
import numpy as np

import minigraph as mg
from minigraph.backends.cpu.attention import flash_attn_ext as fa_kernel
from minigraph.core import dtypes
from minigraph.testing import ggml_bridge

N_HEAD, DK, DV = 16, 576, 512
ROUNDS = 5
GOALS = {"decode": "minigraph >= 4x ggml", "prefill": "minigraph >= 3x ggml", "view": "view <= 0.75x copy"}


def inputs(n_q: int, n_kv: int, causal: bool, rng: np.random.Generator):
    q = rng.uniform(-1, 1, (1, N_HEAD, n_q, DK)).astype(np.float32)
    k = rng.uniform(-1, 1, (1, 1, n_kv, DK)).astype(np.float16)
    if causal:
        i = np.arange(n_q)[:, None]
        j = np.arange(n_kv)[None, :]
        m = np.where(j <= n_kv - n_q + i, 0.0, -np.inf).astype(np.float16)
    else:
        m = np.zeros((n_q, n_kv), np.float16)
    return q, k, m.reshape(1, 1, n_q, n_kv)


def build(ctx, q, k, m, v_view: bool):
    """The MLA node on a minigraph or ggml_bridge context (both take the same calls)."""
    n_q, n_kv = q.shape[2], k.shape[2]
    tq = ctx.new_tensor_4d(dtypes.TYPE_F32, DK, n_q, N_HEAD, 1)
    tq.set_data(q)
    tk = ctx.new_tensor_4d(dtypes.TYPE_F16, DK, n_kv, 1, 1)
    tk.set_data(k)
    if v_view:
        tv = ctx.view_4d(tk, DV, n_kv, 1, 1, tk.nb[1], tk.nb[2], tk.nb[3], 0)
    else:
        tv = ctx.new_tensor_4d(dtypes.TYPE_F16, DV, n_kv, 1, 1)
        tv.set_data(np.ascontiguousarray(k[..., :DV]))
    tm = ctx.new_tensor_4d(dtypes.TYPE_F16, n_kv, n_q, 1, 1)
    tm.set_data(m)
    return ctx.flash_attn_ext(tq, tk, tv, tm, 1.0 / math.sqrt(DK), 0.0, 0.0)


class Minigraph:
    def __init__(self, q, k, m, v_view, threads):
        ctx = mg.Context()
        self.out = build(ctx, q, k, m, v_view)
        self.gf = ctx.new_graph()
        self.gf.build_forward_expand(self.out)
        self.cpu = mg.backend_cpu_init(threads)
        t0 = time.perf_counter()
        self.cpu.graph_compute(self.gf)
        self.first = time.perf_counter() - t0

    def __call__(self):
        self.cpu.graph_compute(self.gf)

    def result(self):
        return self.out.numpy()


class Kernel:
    """The kernel on f32 arrays made once (V from K's tile when v_view, else its own array)."""

    def __init__(self, q, k, m, v_view, threads):
        numba.set_num_threads(threads)
        n_q = q.shape[2]
        self.q = q
        self.k = k.astype(np.float32)
        self.v = self.k[..., :DV] if v_view else np.ascontiguousarray(self.k[..., :DV])
        self.m = m.astype(np.float32)
        self.s = np.zeros((1, 1, 1, 1), np.float32)
        self.dst = np.empty((1, n_q, N_HEAD, DV), np.float32)
        self.v_in_k = 0 if v_view else -1
        self()

    def __call__(self):
        fa_kernel.parallel(self.dst, self.q, self.k, self.v, self.m, self.s, 1.0 / math.sqrt(DK), 0.0, 0.0,
                           0, self.v_in_k, 1, 0)

    def result(self):
        return self.dst[0]


class Ggml:
    def __init__(self, q, k, m, v_view, threads):
        self.ctx = ggml_bridge.GgmlContext(mem_size=(q.nbytes + 2 * k.nbytes + m.nbytes) * 2 + (64 << 20))
        self.out = build(self.ctx, q, k, m, v_view)
        self.gf = self.ctx._graph([self.out], 64)
        self.plan, self.work = self.ctx._plan(self.gf, threads)
        self()

    def __call__(self):
        self.ctx._run(self.gf, self.plan)

    def result(self):
        return self.out.numpy()


def timed(fn, repeat):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def race(contenders: dict, repeat: int) -> dict:
    blocks = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, fn in contenders.items():
            blocks[name].append(timed(fn, repeat))
    return {name: np.array(v) for name, v in blocks.items()}


def fmt(t: np.ndarray) -> str:
    return f"{np.median(t) * 1e3:8.2f} ms [{t.min() * 1e3:.2f} .. {t.max() * 1e3:.2f}]"


def agree(a, b) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smaller n_kv, fewer repeats")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = dict(decode=(1, 1024 if args.quick else 4096, False, 10),
                 prefill=(128 if args.quick else 512, 128 if args.quick else 512, True, 2))
    print(f"FLASH_ATTN_EXT MLA: n_head={N_HEAD} n_head_kv=1 DK={DK} DV={DV} f16 KV, V view of K, "
          f"{args.threads} threads, {ROUNDS} rounds")
    for name, (n_q, n_kv, causal, repeat) in sizes.items():
        q, k, m = inputs(n_q, n_kv, causal, rng)
        c = {"minigraph": Minigraph(q, k, m, True, args.threads), "kernel": Kernel(q, k, m, True, args.threads),
             "ggml": Ggml(q, k, m, True, args.threads)}
        t = race(c, repeat)
        g = np.median(t["ggml"])
        print(f"\n{name} n_q={n_q} n_kv={n_kv}{' causal' if causal else ''}   goal: {GOALS[name]}")
        for who, ts in t.items():
            print(f"  {who:10s} {fmt(ts)}   ggml/this {g / np.median(ts):5.2f}x")
        print(f"  minigraph first run (plan + compile) {c['minigraph'].first:.2f} s; "
              f"max rel diff vs ggml {agree(c['minigraph'].result(), c['ggml'].result()):.2e}")
    n_kv = 4096 if args.quick else 32768
    q, k, m = inputs(1, n_kv, False, rng)
    print(f"\nview vs copy: decode n_kv={n_kv}   goal: {GOALS['view']}")
    c = {"minigraph view": Minigraph(q, k, m, True, args.threads), "minigraph copy": Minigraph(q, k, m, False, args.threads),
         "kernel view": Kernel(q, k, m, True, args.threads), "kernel copy": Kernel(q, k, m, False, args.threads)}
    t = race(c, 3)
    for who, ts in t.items():
        print(f"  {who:15s} {fmt(ts)}")
    for who in ("minigraph", "kernel"):
        print(f"  {who}: view/copy {np.median(t[who + ' view']) / np.median(t[who + ' copy']):.2f}")


if __name__ == "__main__":
    main()
