"""GATED_DELTA_NET on the GPU: the CUDA backend's kernels vs fla's Triton kernels (fla-core), fp32.

Shapes from the issue: H_k=16, H_v=32, S=128, K=1. Three ways side by side in one run:
  ours     what the backend runs on this GPU: the CUDA C++ kernels of backends/cuda/gdn_tc.py
           (3xTF32 tensor-core chunked prefill, eight-lanes-a-row decode) on sm_80+;
  numba    the plain Numba kernels (gdn_fast.py / gdn_chunked.py: the simulator's path, and the
           previous GPU path), MINIGRAPH_CUDA_TENSOR_CORES=0;
  fla      fused_recurrent_gated_delta_rule / chunk_gated_delta_rule (KDA: fused_recurrent_kda /
           chunk_kda), q/k repeated to H_v heads in ggml's tiled order.
GPU times by CUDA events: each figure is the median of TRIALS trials (mean of reps launches each
after a warm-up), the spread min-max beside it. Decode B=1 also per call with CUDA-graph replay.
First, correctness vs the float64 reference (ops/gdn_reference.py): max |err| / max |ref| of the
output and of the final state on GDA, KDA, GQA, n_seqs, K snapshots, T 1..16384, gates down to -60.
--variants: decode items and register cap, the state pass's column tiles and warps a tile, the 3xTF32
accumulation mode, the chunked-vs-recurrent crossover, the copy floor.
Run on the device: python benchmarks/gdn_cuda.py [--quick] [--variants]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from minigraph.backends.cuda import gdn_fast as gf, gdn_tc  # noqa: E402  (the kernels the backend runs)
from minigraph.ops.gdn_reference import gated_delta_net_reference  # noqa: E402
from numba import cuda  # noqa: E402

TRIALS = 5


def make(rng, S, Hk, Hv, T, ns, ns_qk, kda, g_lo):
    def unit(shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit((ns_qk, T, Hk, S)), unit((ns_qk, T, Hk, S))
    v = rng.standard_normal((ns, T, Hv, S)).astype(np.float32)
    g = rng.uniform(g_lo, -1e-4, (ns, T, Hv, S if kda else 1)).astype(np.float32)
    beta = rng.uniform(0, 1, (ns, T, Hv, 1)).astype(np.float32)
    state = (0.1 * rng.standard_normal((ns, Hv, S, S))).astype(np.float32)
    return q, k, v, g, beta, state


class path:
    """with path(tc): plans made inside use the CUDA C++ kernels (True) or the Numba ones."""

    def __init__(self, tc):
        self.tc = tc and gdn_tc.available()

    def __enter__(self):
        self.keep = gf.TENSOR_CORES
        gf.TENSOR_CORES = self.tc
        return self

    def __exit__(self, *exc):
        gf.TENSOR_CORES = self.keep


def run_ours(arrs, K, chunked=None, tc=True):
    ns, T, Hv, S = arrs[2].shape
    d = [cuda.to_device(a) for a in arrs]
    out = cuda.to_device(np.full(S * Hv * (T * ns + K * S * ns), np.nan, np.float32))
    with path(tc):
        gf.standalone(out, *d, K, chunked=chunked)()
    cuda.synchronize()
    return out.copy_to_host().reshape(-1, S * Hv)


def errors(out, ref, S, Hv, T, ns):
    n = T * ns
    e = [float(np.abs(a - b).max() / np.abs(b).max()) for a, b in ((out[:n], ref[:n]), (out[n:], ref[n:]))]
    return e, bool(np.isfinite(out).all())


CASES = [  # S, Hk, Hv, T, ns, ns_qk, kda, K, g_lo, form (None: what the plan picks)
    (128, 2, 4, 1, 3, 1, False, 1, -1.0, None),
    (128, 2, 4, 1, 2, 2, True, 2, -20.0, None),
    (64, 1, 3, 5, 2, 1, False, 3, -1.0, None),
    (32, 2, 4, 33, 2, 2, True, 3, -20.0, None),
    (84, 2, 2, 4, 1, 1, False, 6, -1.0, None),     # K > T, S not a multiple of 32
    (128, 2, 4, 64, 2, 1, False, 1, -1.0, True),
    (128, 2, 4, 100, 2, 2, False, 1, -20.0, True),
    (128, 1, 2, 1000, 1, 1, False, 1, -1.0, None),
    (64, 1, 2, 257, 1, 1, False, 1, -60.0, None),
    (84, 2, 2, 130, 2, 1, False, 1, -2.0, True),
    (128, 1, 2, 16384, 1, 1, False, 1, -1.0, None),
    (128, 1, 2, 1000, 1, 1, True, 1, -1.0, None),
    (128, 2, 4, 200, 2, 1, True, 1, -20.0, None),
    (64, 1, 2, 257, 1, 1, True, 1, -60.0, None),
    (84, 2, 2, 130, 2, 1, True, 1, -2.0, None),
    (128, 1, 2, 4096, 1, 1, True, 1, -1.0, None),
]


def check_correctness(quick):
    print("## correctness vs float64 reference (max |err| / max |ref|: output, final state)")
    worst = {True: 0.0, False: 0.0}
    for S, Hk, Hv, T, ns, nsqk, kda, K, g_lo, form in CASES:
        if quick and T > 4096:
            T = 4096
        rng = np.random.default_rng(T + S)
        arrs = make(rng, S, Hk, Hv, T, ns, nsqk, kda, g_lo)
        ref = gated_delta_net_reference(*arrs, K)
        line = []
        for tc in (True, False):
            with path(tc):
                which = "chunked" if (gf.use_chunked(T, K, kda) if form is None else form) else "recurrent"
            (eo, es), fin = errors(run_ours(arrs, K, chunked=form, tc=tc), ref, S, Hv, T, ns)
            worst[tc] = max(worst[tc], max(eo, es) if fin else np.inf)
            line.append(f"{'ours' if tc else 'numba'} {which} {eo:.1e} / {es:.1e}{'' if fin else ' NOT FINITE'}")
        print(f"  S={S} Hk={Hk} Hv={Hv} T={T} ns={ns}/{nsqk} {'KDA' if kda else 'GDA'} K={K} g>={g_lo}: "
              + " | ".join(line), flush=True)
    print(f"  worst: ours {worst[True]:.1e} ({'PASS' if worst[True] < 2e-6 else 'FAIL'} at 2e-6), "
          f"numba {worst[False]:.1e}\n")


def cuda_time(fn, reps, trials=TRIALS):
    """(median, min, max) seconds a call over `trials` trials of `reps` calls."""
    fn()
    cuda.synchronize()
    ts = []
    for _ in range(trials):
        a, b = cuda.event(), cuda.event()
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        ts.append(cuda.event_elapsed_time(a, b) / reps * 1e-3)
    return float(np.median(ts)), min(ts), max(ts)


def torch_time(torch, fn, reps, trials=TRIALS):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(trials):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / reps * 1e-3)
    return float(np.median(ts)), min(ts), max(ts)


def launch_times(run, reps):
    """GPU time (median) of each launch of a standalone run, alone."""
    return [cuda_time(lambda la=la: la.kernel[la.grid, la.block](*run.args, *la.scalars), reps)[0]
            for la in run.launches]


def graph_replay(torch, ours, reps, per_graph=20):
    """Per-call time of `per_graph` launches captured into one CUDA graph (torch's capture stream,
    numba launching onto it), replayed `reps // per_graph` times."""
    try:
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            ours(cuda.external_stream(torch.cuda.current_stream().cuda_stream))
        torch.cuda.synchronize()
        with torch.cuda.graph(g):
            ns = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
            for _ in range(per_graph):
                ours(ns)
        n = max(1, reps // per_graph)
        g.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            g.replay()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / (n * per_graph)
    except Exception as e:  # noqa: BLE001
        print(f"  graph replay failed: {e!r}")
        return None


def fla_fns():
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception as e:  # noqa: BLE001
        print(f"fla not importable ({e!r}); ours only")
        return None
    fns = {"gda": (fused_recurrent_gated_delta_rule, chunk_gated_delta_rule)}
    try:
        from fla.ops.kda import chunk_kda, fused_recurrent_kda
        fns["kda"] = (fused_recurrent_kda, chunk_kda)
    except Exception as e:  # noqa: BLE001
        print(f"fla KDA not importable ({e!r})")
    return fns


def fla_call(torch, fns, arrs, kda):
    """fla's call on our inputs (q/k tiled to H_v heads, state [n, H_v, key, value])."""
    dev = torch.device("cuda")
    q, k, v, g, beta, st = (torch.from_numpy(a).to(dev) for a in arrs)
    rep = v.shape[2] // q.shape[2]
    q, k = q.repeat(1, 1, rep, 1).contiguous(), k.repeat(1, 1, rep, 1).contiguous()
    g = g.contiguous() if kda else g[..., 0].contiguous()
    beta = beta[..., 0].contiguous()
    h0 = st.transpose(-1, -2).contiguous()
    T = v.shape[1]
    fn = fns["kda" if kda else "gda"][0 if T == 1 else 1]
    return lambda: fn(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True)


def bench_row(torch, fns, name, T, ns, reps, kda=False, numba=True):
    S, Hk, Hv = 128, 16, 32
    arrs = make(np.random.default_rng(0), S, Hk, Hv, T, ns, ns, kda, -1.0)
    d = [cuda.to_device(a) for a in arrs]
    out = cuda.device_array(S * Hv * (T * ns + S * ns), np.float32)
    row = dict(name=name)
    with path(True):
        ours = gf.standalone(out, *d, 1)
    row["ours"] = cuda_time(ours, reps)
    if T > 1:
        row["kernels"] = launch_times(ours, reps)
    if numba:
        with path(False):
            nb = gf.standalone(cuda.device_array_like(out), *d, 1)
        row["numba"] = cuda_time(nb, max(2, reps // 2))
    if T == 1 and ns == 1:
        row["ours_graph"] = graph_replay(torch, ours, 20 * reps)
    if fns is not None and ("kda" in fns or not kda):
        try:
            fla = fla_call(torch, fns, arrs, kda)
            row["fla"] = torch_time(torch, fla, reps)
            o, hT = fla()
            ours()
            mine = out.copy_to_host()
            n_attn = S * Hv * T * ns
            ref_o = o.float().cpu().numpy().reshape(-1)
            row["diff"] = float(np.abs(mine[:n_attn] - ref_o).max() / np.abs(ref_o).max())
        except Exception as e:  # noqa: BLE001
            print(f"  fla failed on {name}: {e!r}")
    if T == 1:      # state read + written once: the bandwidth figure
        row["TB/s"] = 2 * ns * Hv * S * S * 4 / row["ours"][0] / 1e12
    print(f"  {name}: {row}", flush=True)
    return row


def benchmark(quick):
    import torch
    fns = fla_fns()
    shapes = [("decode B=256", 1, 256, 20, False), ("decode B=32", 1, 32, 50, False),
              ("decode B=256 KDA", 1, 256, 20, True), ("decode B=32 KDA", 1, 32, 50, True),
              ("decode B=1", 1, 1, 200, False),
              ("prefill T=4096", 4096, 1, 10, False), ("prefill T=16384", 16384, 1, 4, False),
              ("prefill T=4096 KDA", 4096, 1, 10, True), ("prefill T=16384 KDA", 16384, 1, 4, True)]
    if quick:
        shapes = [s for s in shapes if s[1] <= 4096]
    rows = [bench_row(torch, fns, *s) for s in shapes]
    print(f"\n## GATED_DELTA_NET CUDA fp32, S=128 H_k=16 H_v=32 K=1 on {_devname()} (median of {TRIALS}, "
          "min-max)")
    print("| shape | ours (GPU time) | numba (GPU time) | fla (GPU time) | fla / ours | numba / ours | "
          "ours per call (graph replay) | TB/s | out rel diff vs fla |")
    print("|---|---|---|---|---|---|---|---|---|")
    us = lambda x: "-" if x is None else f"{x[0] * 1e6:.1f} us ({x[1] * 1e6:.0f}-{x[2] * 1e6:.0f})"  # noqa: E731
    for r in rows:
        fr = f"{r['fla'][0] / r['ours'][0]:.2f}x" if "fla" in r else "-"
        nr = f"{r['numba'][0] / r['ours'][0]:.2f}x" if "numba" in r else "-"
        gr = f"{r['ours_graph'] * 1e6:.1f} us" if r.get("ours_graph") else "-"
        tb = f"{r['TB/s']:.2f}" if "TB/s" in r else "-"
        print(f"| {r['name']} | {us(r['ours'])} | {us(r.get('numba'))} | {us(r.get('fla'))} | {fr} | {nr} | {gr} | "
              f"{tb} | {r.get('diff', float('nan')):.1e} |")
    for r in rows:
        if "kernels" in r:
            print(f"  {r['name']} per kernel (prep, state and output): " + ", ".join(f"{x * 1e6:.1f} us" for x in r["kernels"]))
    return rows


def variants(quick):
    """Decode items and register cap, the state pass's columns and warps a block, the 3xTF32
    accumulation mode, the chunked-vs-recurrent crossover, the copy floor."""
    import torch
    S, Hk, Hv = 128, 16, 32
    ns = 32 if quick else 256
    print("\n## copy floor: device-to-device copy of the decode state (bytes read + written)")
    x = torch.empty(ns * Hv * S * S, dtype=torch.float32, device="cuda").normal_()
    y = torch.empty_like(x)
    t = torch_time(torch, lambda: y.copy_(x), 20)
    print(f"  B={ns}: {t[0] * 1e6:.1f} us ({t[1] * 1e6:.0f}-{t[2] * 1e6:.0f}), {2 * x.numel() * 4 / t[0] / 1e12:.2f} TB/s")
    del x, y
    print(f"\n## decode B={ns}: rows per item, register cap")
    for kda in (False, True):
        arrs = make(np.random.default_rng(0), S, Hk, Hv, 1, ns, ns, kda, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        out = cuda.device_array(S * Hv * (ns + S * ns), np.float32)
        with path(True):
            run = gf.standalone(out, *d, 1)
        for rows, regs in ((4, 0), (4, 128), (2, 0), (4, None)):
            nvrtc = regs is None   # the default form: NVRTC, launch bounds (gdn_tc.DEC_NVRTC)
            la = gdn_tc.decode_launch(S, Hv, ns, kda, rows=rows, regs=regs or 0, nvrtc=nvrtc)
            t = cuda_time(lambda: la.kernel[la.grid, la.block](*run.args, *la.scalars), 20)
            how = "nvrtc" if nvrtc else f"linked cap={regs or '-'} regs=" + str(
                next(iter(la.kernel.overloads.values()))._codelibrary.get_cufunc().attrs.regs)
            print(f"  {'KDA' if kda else 'GDA'} rows={4 * rows} {how}: {t[0] * 1e6:.1f} us "
                  f"({t[1] * 1e6:.0f}-{t[2] * 1e6:.0f}) {2 * ns * Hv * S * S * 4 / t[0] / 1e12:.2f} TB/s", flush=True)
    print("\n## prefill T=4096 B=1 GDA: state pass column tiles x warps a tile, accumulation mode (error: T=1000, "
          "g >= -20)")
    arrs = make(np.random.default_rng(1), S, 1, 2, 1000, 1, 1, False, -20.0)
    ref = gated_delta_net_reference(*arrs, 1)
    d1 = [cuda.to_device(a) for a in arrs]
    o1 = cuda.device_array(S * 2 * (1000 + S), np.float32)
    args1 = (cuda.to_device(gf.contiguous_meta(o1.size, *arrs)), *(a.reshape(a.size) for a in (o1, *d1)), 1)
    T = 4096
    big = make(np.random.default_rng(0), S, Hk, Hv, T, 1, 1, False, -1.0)
    d = [cuda.to_device(a) for a in big]
    out = cuda.device_array(S * Hv * (T + S), np.float32)
    args = (cuda.to_device(gf.contiguous_meta(out.size, *big)), *(a.reshape(a.size) for a in (out, *d)), 1)
    ws = gdn_tc.workspace(S, Hv, T, 1)
    for nj, ks, acc in ((2, 4, 3), (2, 4, 1), (2, 2, 3), (2, 4, 0), (1, 4, 3)):
        las = gdn_tc.chunked_launches(S, Hv, T, 1, False, ws, nj=nj, acc=acc, ks=ks)
        ts = [cuda_time(lambda la=la: la.kernel[la.grid, la.block](*args, *la.scalars), 5)[0] for la in las]
        for la in gdn_tc.chunked_launches(S, 2, 1000, 1, False, None, nj=nj, acc=acc, ks=ks):
            la.kernel[la.grid, la.block](*args1, *la.scalars)
        (eo, es), _ = errors(o1.copy_to_host().reshape(ref.shape), ref, S, 2, 1000, 1)
        regs = [next(iter(la.kernel.dispatcher.overloads.values()))._codelibrary.get_cufunc().attrs.regs for la in las]
        print(f"  tiles={nj} warps/tile={ks} acc={acc} regs={regs}: {sum(ts) * 1e6:.1f} us ("
              + ", ".join(f"{x * 1e6:.1f}" for x in ts) + f"); error out {eo:.1e} state {es:.1e}", flush=True)
    print("\n## recurrence vs tensor-core chunked, B=1 (H_k=16, H_v=32)")
    for T in (48, 64, 128):
        arrs = make(np.random.default_rng(0), S, Hk, Hv, T, 1, 1, False, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        out = cuda.device_array(S * Hv * (T + S), np.float32)
        with path(True):
            tr = cuda_time(gf.standalone(out, *d, 1, chunked=False), 10)
            tc = cuda_time(gf.standalone(out, *d, 1, chunked=True), 10)
        print(f"  T={T}: recurrent {tr[0] * 1e6:.1f} us, chunked {tc[0] * 1e6:.1f} us")


PROBE = r"""
extern "C" __device__ int gdn_mma_probe(float* out, long long iters) {
    const unsigned tid = blockIdx.x * blockDim.x + threadIdx.x;
    u32 a[4], b[2];
    for (int e = 0; e < 4; ++e) a[e] = tf32_rna(1e-3f * (float)((tid + e) & 7));
    for (int e = 0; e < 2; ++e) b[e] = tf32_rna(1e-3f * (float)((tid + 3 * e) & 7));
    float c[8][4];
    for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) c[j][e] = 0.f;
    for (long long it = 0; it < iters; ++it) {
#pragma unroll
        for (int j = 0; j < 8; ++j) mma_tf32(c[j], a, b);
    }
    float s = 0.f;
    for (int j = 0; j < 8; ++j)
        for (int e = 0; e < 4; ++e) s += c[j][e];
    out[tid] = s;
    return 0;
}
"""


def mma_rate():
    """mma.sync m16n8k8 tf32 a clock an SM: 8 independent accumulators a warp, 8 warps a block,
    4 blocks an SM (the ceiling the 3xTF32 kernels work under; each of their products costs 3)."""
    import os
    from numba import types
    from minigraph.backends.cuda import gdn_tc as tc
    with open(os.path.join(os.path.dirname(tc.__file__), "gdn_tc.cuh")) as f:
        src = f.read() + PROBE
    fn = cuda.declare_device("gdn_mma_probe", types.int32(types.CPointer(types.float32), types.int64),
                             link=[cuda.CUSource(src)], abi="c")

    @cuda.jit("void(float32[::1], int64)")
    def probe(out, iters):
        fn(tc.fptr(out, 0), iters)
    dev = cuda.get_current_device()
    sms = dev.MULTIPROCESSOR_COUNT
    try:
        clk = dev.CLOCK_RATE * 1e3           # kHz
    except Exception:  # noqa: BLE001
        clk = 1.98e9
    blocks, iters = 4 * sms, 4096
    out = cuda.device_array(blocks * 256, np.float32)
    t = cuda_time(lambda: probe[blocks, 256](out, iters), 3)[0]
    n = blocks * 8 * iters * 8
    print(f"\n## mma.sync m16n8k8 tf32: {n / t / 1e9:.1f} G/s, {n / t / sms / clk:.3f} a clock an SM "
          f"({n * 2048 / t / 1e12:.0f} TFLOP/s tf32 at the {clk / 1e9:.2f} GHz clock the device reports)")


def kda_prefill(with_fla=True):
    """KDA prefill B=1, ours (tensor-core chunked, per kernel) and fla's chunk_kda."""
    import torch
    fns = fla_fns() if with_fla else None
    print("\n## prefill KDA B=1 (S=128, H_k=16, H_v=32)")
    for T in (4096, 16384):
        S, Hk, Hv = 128, 16, 32
        arrs = make(np.random.default_rng(0), S, Hk, Hv, T, 1, 1, True, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        out = cuda.device_array(S * Hv * (T + S), np.float32)
        with path(True):
            ours = gf.standalone(out, *d, 1)
        t = cuda_time(ours, 4 if T > 4096 else 10)
        ks = launch_times(ours, 4)
        line = f"  T={T}: ours {t[0] * 1e6:.1f} us ({t[1] * 1e6:.0f}-{t[2] * 1e6:.0f}; " + ", ".join(
            f"{x * 1e6:.1f}" for x in ks) + ")"
        if fns is not None and "kda" in fns:
            try:
                fla = fla_call(torch, fns, arrs, True)
                tf = torch_time(torch, fla, 4 if T > 4096 else 10)
                o, _ = fla()
                ours()
                mine = out.copy_to_host()[:S * Hv * T]
                ref = o.float().cpu().numpy().reshape(-1)
                line += (f", fla chunk_kda {tf[0] * 1e6:.1f} us ({tf[1] * 1e6:.0f}-{tf[2] * 1e6:.0f}): "
                         f"{tf[0] / t[0]:.2f}x, out rel diff {np.abs(mine - ref).max() / np.abs(ref).max():.1e}")
            except Exception as e:  # noqa: BLE001
                line += f", fla failed: {e!r}"
        print(line, flush=True)


def _devname():
    n = cuda.get_current_device().name
    return n.decode() if isinstance(n, bytes) else n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--variants", action="store_true", help="decode items, state BV, accumulation, crossover")
    ap.add_argument("--only-variants", action="store_true", help="the mma rate, KDA prefill and the variants alone")
    args = ap.parse_args()
    print(f"tensor-core path: {gdn_tc.available()}")
    if args.only_variants:
        mma_rate()
        kda_prefill()
        variants(args.quick)
        return 0
    if not args.skip_check:
        check_correctness(args.quick)
    benchmark(args.quick)
    if args.variants:
        mma_rate()
        variants(args.quick)


if __name__ == "__main__":
    sys.exit(main())
