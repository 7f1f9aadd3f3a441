"""FLASH_ATTN_EXT on the GPU: the CUDA backend's kernels (backends/cuda/attention.py), side by side
in one run, on the shapes of the attention issue.

  mla-view  MLA decode: 16 query heads, 1 KV head, DK 576, DV 512, f16 cache, V a view of K
            (view_4d(k, 512, ..., k.nb1..3, 0)), n_kv=32768, ne3=8 streams, f16 mask of zeros.
            Reported: GPU time and the effective K-cache read bandwidth (K cache bytes / time).
  mla-copy  the same with V a separate f16 copy of K's first 512 columns (goal: view <= 0.6x copy).
  gqa       32 query heads, 8 KV heads, D=128, f16 K/V, decode n_kv=32768, against torch SDPA's
            flash backend (f16 q, enable_gqa) in the same run (goal: within 1.25x of SDPA).
Every case is checked against torch (f32 math on the GPU) first. GPU times: CUDA events around
one replay of the plan's captured CUDA graph (the node's launches, no host work), `--runs`
replays after warm-up; median, min and max are printed with the device name. Each line names the
chunk kernel that ran (attention.kernel_path: mma = attention_mma.cu, tc = the Numba tensor-core
kernel, plain = fa_split) and, for mma, its config and kv chunks.

    python benchmarks/attention_cuda.py [--runs 30] [--n-kv 32768] [--ne3 8] [--tc] [--plain] [--sweep] [--quant]

--tc / --plain also time the Numba tensor-core / plain kernels on the same data (before/after in
one run); --sweep times other attention_mma configs (tile rows, stages, warps, waves, S split over DK
or not) per case.
--quant times mla-view over a Q8_0 and a Q4_0 cache (the same values quantized; 34 / 18 bytes a
32-value block, 0.53x / 0.28x the f16 bytes) on attention_mma.cu (a few configs: SWEEP_QUANT),
the Q8_0 cache again on the plain fa_split kernel (before), and gqa over a Q8_0 cache, next to
the f16 cache's default path, with effective bytes/s of the cache as stored.
"""
from __future__ import annotations

import argparse
import math
import statistics

import numpy as np

import minigraph as mg
from minigraph.ops.attention import v_offset_in_k

DK, DV = 576, 512
# --sweep: attention_mma.OVERRIDE points tried after each case's default config
SWEEP_MLA_VIEW = ({"SPLITK": 0}, {"BN": 16, "STAGES": 4}, {"BN": 16, "STAGES": 5}, {"BN": 64, "STAGES": 2},
                  {"BN": 32, "STAGES": 3})
SWEEP_MLA_COPY = ({"SPLITK": 0}, {"BN": 16, "STAGES": 3}, {"WAVES": 2})
SWEEP_GQA = ({"WARPS": 8, "STAGES": 3}, {"BN": 32, "STAGES": 4}, {"BN": 64, "STAGES": 4})
SWEEP_QUANT_MLA = ({"STAGES": 4}, {"BN": 64, "STAGES": 2}, {"BN": 64, "WARPS": 8, "STAGES": 3}, {"WAVES": 2})
SWEEP_QUANT_GQA = ({"STAGES": 2}, {"BN": 32, "STAGES": 4}, {"WARPS": 8, "STAGES": 4})


def _events_us(stream, launch, runs: int) -> list[float]:
    from numba import cuda

    for _ in range(3):
        launch()
    stream.synchronize()
    ts = []
    for _ in range(runs):
        a, b = cuda.event(), cuda.event()
        a.record(stream)
        launch()
        b.record(stream)
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return ts


def _spread(ts: list[float]) -> str:
    return f"median {statistics.median(ts):8.1f} us (min {min(ts):.1f}, max {max(ts):.1f}, {len(ts)} runs)"


def _plan_replay(be, out):
    """Compute once (uploads, compiles, checks), capture the CUDA graph, return a replay callable."""
    gf = mg.Graph()
    gf.build_forward_expand(out)
    be.graph_compute(gf)
    be.graph_compute(gf)        # the second compute captures the CUDA graph
    plan = be.plan(gf)
    if plan.graph_exec is None:   # the simulator (a smoke run) has no CUDA graphs
        print(f"    no CUDA graph ({plan.graph_error or 'graphs off'}): timing plain launches")
        return gf, plan._launch_all
    return gf, lambda: plan.graph_exec.launch(be.stream)


def _reference(torch, q, k, v, scale):
    """q (B, Hq, 1, D) f32, k/v (B, Hk, N, D) numpy: softmax(q k^T * scale) v in f32 (torch on the
    GPU when there, else numpy), query head h reading kv head h // (Hq / Hk) (the group's queries
    as rows of one matmul, no repeated K)."""
    B, H, _, D = q.shape
    rows = q.reshape(B, k.shape[1], H // k.shape[1], D)
    if torch is None:
        s = np.matmul(rows, np.swapaxes(k.astype(np.float32), -1, -2)) * scale
        p = np.exp(s - s.max(-1, keepdims=True))
        return (np.matmul(p / p.sum(-1, keepdims=True), v.astype(np.float32))).reshape(B, H, -1)
    dev = torch.device("cuda")
    rows, k, v = (torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in (rows, k, v))
    s = torch.matmul(rows, k.float().transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(s, dim=-1), v.float()).reshape(B, H, -1).cpu().numpy()


def _path(out) -> str:
    from minigraph.backends.cuda import attention as fa

    path = fa.kernel_path(out)
    if path == "mma":
        c, chunk, n_chunks = fa.attention_mma.plan(out)
        return (f"[mma BN={c.BN} stages={c.STAGES} warps={c.WARPS} share={c.SHARE} blocks/SM<={c.MIN_BLOCKS} "
                f"waves={c.WAVES}; {n_chunks} chunks of {chunk}]")
    why = fa.attention_mma.refusal(out) if fa.USE_MMA else "off"
    return f"[{path}; mma: {why}]"


def mla(be, torch, n_kv: int, ne3: int, runs: int, view: bool, sweep: tuple = (), kv_type: int = mg.TYPE_F16) -> float:
    rng = np.random.default_rng(0)
    ctx = mg.Context()
    kc = rng.uniform(-1, 1, (ne3, 1, n_kv, DK)).astype(np.float16)
    qa = rng.uniform(-1, 1, (ne3, 16, 1, DK)).astype(np.float32)
    if kv_type == mg.TYPE_F16:
        k = ctx.new_tensor_4d(mg.TYPE_F16, DK, n_kv, 1, ne3).set_name("k_cache")
        k.set_data(kc)
    else:   # the same values in a quantized cache; the reference reads them dequantized
        k = ctx.from_numpy(kc.astype(np.float32), kv_type).set_name("k_cache")
        kc = k.numpy().reshape(kc.shape)
    if view:
        v = ctx.view_4d(k, DV, n_kv, 1, ne3, k.nb[1], k.nb[2], k.nb[3], 0)
        assert v_offset_in_k(k, v) == 0
    else:
        v = ctx.new_tensor_4d(mg.TYPE_F16, DV, n_kv, 1, ne3).set_name("v_copy")
        v.set_data(np.ascontiguousarray(kc[..., :DV]))
    q = ctx.from_numpy(qa)      # numpy (ne3, 16, 1, DK): ne [DK, n_q=1, 16 heads, ne3]
    mask = ctx.new_tensor_4d(mg.TYPE_F16, n_kv, 1, 1, 1)
    mask.set_data(np.zeros((1, 1, 1, n_kv), np.float16))
    scale = 1.0 / math.sqrt(192)    # DeepSeek's: 1/sqrt(qk_nope + qk_rope head dims)
    ref = _reference(torch, qa, kc, kc[..., :DV], scale)
    kbytes = mg.nbytes(k)
    name = ("mla-view" if view else "mla-copy") + ("" if kv_type == mg.TYPE_F16 else f"-{mg.type_name(kv_type)}")
    med = 0.0
    for ov in ({},) + tuple(sweep):
        with _override(ov):
            out = ctx.flash_attn_ext(q, k, v, mask, scale)
            gf, replay = _plan_replay(be, out)
            got = out.numpy().reshape(ne3, 16, DV)
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            ts = _events_us(be.stream, replay, runs)
            m = statistics.median(ts)
            med = med or m
            extra = "" if view else f", K+V read {(kbytes + ne3 * n_kv * DV * 2) / m / 1e6:.2f} TB/s"
            print(f"{name:9s} n_kv={n_kv} ne3={ne3}: {_spread(ts)}; K cache {kbytes / 1e6:.0f} MB -> effective "
                  f"K read {kbytes / m / 1e6:.2f} TB/s (best {kbytes / min(ts) / 1e6:.2f}){extra}; max rel err "
                  f"{err:.1e} {_path(out)}", flush=True)
    return med


class _override:
    """attention_mma.OVERRIDE set for a with-block (a sweep point), restored after."""

    def __init__(self, ov: dict) -> None:
        self.ov = ov

    def __enter__(self) -> None:
        from minigraph.backends.cuda import attention_mma

        self.old = dict(attention_mma.OVERRIDE)
        attention_mma.OVERRIDE.clear()
        attention_mma.OVERRIDE.update(self.ov)

    def __exit__(self, *exc) -> None:
        from minigraph.backends.cuda import attention_mma

        attention_mma.OVERRIDE.clear()
        attention_mma.OVERRIDE.update(self.old)


def gqa(be, torch, n_kv: int, runs: int, sweep: tuple = (), sdpa: bool = True, kv_type: int = mg.TYPE_F16) -> float:
    rng = np.random.default_rng(1)
    ctx = mg.Context()
    H, HK, D = 32, 8, 128
    ka = rng.uniform(-1, 1, (1, HK, n_kv, D)).astype(np.float16)
    va = rng.uniform(-1, 1, (1, HK, n_kv, D)).astype(np.float16)
    qa = rng.uniform(-1, 1, (1, H, 1, D)).astype(np.float32)
    if kv_type == mg.TYPE_F16:
        k = ctx.new_tensor_4d(mg.TYPE_F16, D, n_kv, HK, 1)
        k.set_data(ka)
        v = ctx.new_tensor_4d(mg.TYPE_F16, D, n_kv, HK, 1)
        v.set_data(va)
    else:   # the same values quantized; the reference reads them dequantized
        k = ctx.from_numpy(ka.astype(np.float32), kv_type)
        v = ctx.from_numpy(va.astype(np.float32), kv_type)
        ka, va = k.numpy().reshape(ka.shape), v.numpy().reshape(va.shape)
        sdpa = False
    q = ctx.from_numpy(qa)
    scale = 1.0 / math.sqrt(D)
    ref = _reference(torch, qa, ka, va, scale)[0]
    byt = mg.nbytes(k) + mg.nbytes(v)
    name = "gqa" if kv_type == mg.TYPE_F16 else f"gqa-{mg.type_name(kv_type)}"
    first = None
    for ov in ({},) + tuple(sweep):
        with _override(ov):
            out = ctx.flash_attn_ext(q, k, v, None, scale)
            gf, replay = _plan_replay(be, out)
            got = out.numpy().reshape(H, D)
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            ts = _events_us(be.stream, replay, runs)
            first = first or ts
            print(f"{name:9s} n_kv={n_kv} minigraph: {_spread(ts)}; K+V {byt / 1e6:.0f} MB -> "
                  f"{byt / statistics.median(ts) / 1e6:.2f} TB/s; max rel err {err:.1e} {_path(out)}", flush=True)
    ts = first
    if torch is None or not sdpa:
        return statistics.median(ts)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    dev = torch.device("cuda")
    kt, vt, q16 = (torch.from_numpy(a).to(dev).half() for a in (ka, va, qa))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        o = F.scaled_dot_product_attention(q16, kt, vt, scale=scale, enable_gqa=True)
        err_t = float((o[0, :, 0].float().cpu().numpy() - ref).__abs__().max() / np.abs(ref).max())
        st = torch.cuda.Stream()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=st):
            F.scaled_dot_product_attention(q16, kt, vt, scale=scale, enable_gqa=True)
        tt = []
        for i in range(runs + 3):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            if i >= 3:
                tt.append(a.elapsed_time(b) * 1e3)
    print(f"gqa       n_kv={n_kv} torch SDPA flash: {_spread(tt)}; max rel err {err_t:.1e}; "
          f"minigraph / SDPA = {statistics.median(ts) / statistics.median(tt):.2f}x (goal <= 1.25x)")
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--n-kv", type=int, default=32768)
    ap.add_argument("--ne3", type=int, default=8)
    ap.add_argument("--tc", action="store_true", help="also time the Numba tensor-core kernel")
    ap.add_argument("--plain", action="store_true", help="also time the plain (no tensor core) kernels")
    ap.add_argument("--sweep", action="store_true", help="also time other attention_mma configs")
    ap.add_argument("--quant", action="store_true", help="also time mla-view over a Q8_0 cache")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:       # a smoke run (simulator): numpy references, no SDPA
        torch = None
    from numba import cuda

    be = mg.backend_cuda_init(0)
    name = getattr(cuda.get_current_device(), "name", "simulator")
    print(f"device: {name.decode() if isinstance(name, bytes) else name}, torch {getattr(torch, '__version__', None)}")
    sw = a.sweep
    t_view = mla(be, torch, a.n_kv, a.ne3, a.runs, view=True, sweep=SWEEP_MLA_VIEW if sw else ())
    t_copy = mla(be, torch, a.n_kv, a.ne3, a.runs, view=False, sweep=SWEEP_MLA_COPY if sw else ())
    print(f"mla view / copy = {t_view / t_copy:.2f}x (goal <= 0.6x)")
    t_gqa = gqa(be, torch, a.n_kv, a.runs, sweep=SWEEP_GQA if sw else ())
    from minigraph.backends.cuda import attention as fa

    if a.tc:
        fa.USE_MMA = False
        print("Numba tensor-core kernel (attention_tc.py):")
        tv = mla(be, torch, a.n_kv, a.ne3, a.runs, view=True)
        tcp = mla(be, torch, a.n_kv, a.ne3, a.runs, view=False)
        print(f"mla view / copy = {tv / tcp:.2f}x")
        gqa(be, torch, a.n_kv, a.runs, sdpa=False)
    if a.quant:
        use = fa.USE_MMA
        print("quantized cache (attention_mma.cu decodes the blocks in shared memory) next to f16:")
        kb16 = a.ne3 * a.n_kv * DK * 2
        t8 = mla(be, torch, a.n_kv, a.ne3, a.runs, view=True, sweep=SWEEP_QUANT_MLA, kv_type=mg.TYPE_Q8_0)
        t4 = mla(be, torch, a.n_kv, a.ne3, a.runs, view=True, kv_type=mg.TYPE_Q4_0)
        fa.USE_MMA = False
        t8p = mla(be, torch, a.n_kv, a.ne3, a.runs, view=True, kv_type=mg.TYPE_Q8_0)
        fa.USE_MMA = use
        for what, t, bb in (("q8_0 mma", t8, 34), ("q4_0 mma", t4, 18), ("q8_0 fa_split (before)", t8p, 34)):
            kb = a.ne3 * a.n_kv * (DK // 32) * bb
            print(f"mla {what} vs f16 default path: time {t / t_view:.2f}x, bytes/s {(kb / t) / (kb16 / t_view):.2f}x "
                  f"({kb / t / 1e6:.2f} vs {kb16 / t_view / 1e6:.2f} TB/s)")
        tg = gqa(be, torch, a.n_kv, a.runs, sweep=SWEEP_QUANT_GQA, kv_type=mg.TYPE_Q8_0)
        print(f"gqa q8_0 mma vs f16 default path: time {tg / t_gqa:.2f}x, bytes/s {(34 / 64) * t_gqa / tg:.2f}x")
    if a.plain:
        fa.USE_MMA = False
        fa.USE_TC = False
        print("plain kernels (fa_split, what the simulator and CI run):")
        mla(be, torch, a.n_kv, a.ne3, a.runs, view=True)
        gqa(be, torch, a.n_kv, a.runs, sdpa=False)


if __name__ == "__main__":
    main()
