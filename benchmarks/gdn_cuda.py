"""GATED_DELTA_NET on the GPU: the CUDA backend's kernels (backends/cuda/gdn_fast.py) vs fla's
Triton kernels (fla-core), fp32.

Shapes from the issue: H_k=16, H_v=32, S=128, GDA, K=1: decode B=256 and B=1 (ours: warp-per-rows
recurrence; fla: fused_recurrent_gated_delta_rule), prefill T=4096 and 16384 B=1 (ours: chunked
WY form, 3 kernels; fla: chunk_gated_delta_rule). fla gets q/k repeated to H_v heads. GPU times by
CUDA events (mean over reps after warm-up); decode B=1 also as "per call" wall time of
back-to-back Python launches, and for ours as CUDA-graph replay (numba launches captured on
torch's stream). With --before FILE (a gdn_fast.py from before it followed the backend convention,
e.g. `git show 482e05a:backends/cuda/gdn_fast.py > before.py`; loaded standalone: its
gdn_recurrent / gdn_chunked / gdn_workspace) its kernels are timed in the same run. First, correctness of ours vs the float64 reference (ops/gdn_reference.py)
on GDA, KDA, GQA, n_seqs, K snapshots, T 1..16384, gates down to -60.
Run on the device: python benchmarks/gdn_cuda.py [--quick] [--before FILE]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


from minigraph.backends.cuda import gdn_chunked, gdn_fast as gf  # noqa: E402  (the kernels the backend runs)
from minigraph.ops.gdn_reference import gated_delta_net_reference  # noqa: E402
from numba import cuda  # noqa: E402


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


def run_ours(arrs, K, chunked=None):
    ns, T, Hv, S = arrs[2].shape
    d = [cuda.to_device(a) for a in arrs]
    out = cuda.to_device(np.full(S * Hv * (T * ns + K * S * ns), np.nan, np.float32))
    gf.standalone(out, *d, K, chunked=chunked)()
    cuda.synchronize()
    return out.copy_to_host().reshape(-1, S * Hv)


def check_correctness(quick):
    print("## correctness vs float64 reference (max |err| / max |ref|)")
    cases = [  # S, Hk, Hv, T, ns, ns_qk, kda, K, g_lo, form (None: what the plan picks)
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
        (128, 1, 2, 4096 if quick else 16384, 1, 1, False, 1, -1.0, None),
        (128, 1, 2, 1000, 1, 1, True, 1, -1.0, None),
    ]
    worst = 0.0
    for S, Hk, Hv, T, ns, nsqk, kda, K, g_lo, form in cases:
        rng = np.random.default_rng(T + S)
        arrs = make(rng, S, Hk, Hv, T, ns, nsqk, kda, g_lo)
        which = "chunked" if (gf.use_chunked(T, K, kda) if form is None else form) else "recurrent"
        out = run_ours(arrs, K, chunked=form)
        ref = gated_delta_net_reference(*arrs, K)
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        finite = bool(np.isfinite(out).all())
        worst = max(worst, err if finite else np.inf)
        print(f"  {which:9s} S={S} Hk={Hk} Hv={Hv} T={T} ns={ns}/{nsqk} {'KDA' if kda else 'GDA'} K={K} "
              f"g>={g_lo}: {err:.1e} {'finite' if finite else 'NOT FINITE'}", flush=True)
    print(f"  worst {worst:.1e} -> {'PASS' if worst < 2e-5 else 'FAIL'}\n")


def cuda_time(fn, reps):
    fn()
    cuda.synchronize()
    a, b = cuda.event(), cuda.event()
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return cuda.event_elapsed_time(a, b) / reps * 1e-3


def torch_time(torch, fn, reps):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps * 1e-3


def wall_per_call(sync, fn, reps):
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def launch_times(run, reps):
    """GPU time of each launch of a standalone run, alone."""
    return [cuda_time(lambda la=la: la.kernel[la.grid, la.block](*run.args, *la.scalars), reps)
            for la in run.launches]


def old_kernels(before, d, out, T, ns, Hv, S):
    """The previous gdn_fast's call for this shape (its own kernels and workspace)."""
    if T == 1:
        return lambda: before.gdn_recurrent(out, *d, 1)
    ws = before.gdn_workspace(ns, Hv, T, S)
    return lambda: before.gdn_chunked(out, *d, 1, workspace=ws)


def benchmark(quick, before):
    import torch
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except Exception as e:  # noqa: BLE001
        print(f"fla not importable ({e!r}); ours only")
        chunk_gated_delta_rule = fused_recurrent_gated_delta_rule = None
    S, Hk, Hv = 128, 16, 32
    rows = []
    shapes = [("decode B=256", 1, 256, 20), ("decode B=1", 1, 1, 500),
              ("prefill T=4096", 4096, 1, 10), ("prefill T=16384", 16384, 1, 5)]
    if quick:
        shapes = [("decode B=32", 1, 32, 20), ("decode B=1", 1, 1, 200), ("prefill T=4096", 4096, 1, 5)]
    for name, T, ns, reps in shapes:
        rng = np.random.default_rng(0)
        arrs = make(rng, S, Hk, Hv, T, ns, ns, False, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        out = cuda.device_array(S * Hv * (T * ns + S * ns), np.float32)
        ours = gf.standalone(out, *d, 1)
        row = dict(name=name, ours=cuda_time(ours, reps))
        if T > 1:
            row["kernels"] = launch_times(ours, reps)
        if before is not None:
            row["before"] = cuda_time(old_kernels(before, d, cuda.device_array_like(out), T, ns, Hv, S),
                                      max(2, reps // 2))
        if T == 1:
            row["ours_call"] = wall_per_call(cuda.synchronize, ours, reps)
            row["ours_graph"] = graph_replay(torch, ours, reps)
        if chunk_gated_delta_rule is not None:
            dev = torch.device("cuda")
            q, k, v, g, beta, st = (torch.from_numpy(a).to(dev) for a in arrs)
            rep = Hv // Hk
            q, k = q.repeat(1, 1, rep, 1), k.repeat(1, 1, rep, 1)
            g, beta = g[..., 0].contiguous(), beta[..., 0].contiguous()
            h0 = st.transpose(-1, -2).contiguous()
            fla_fn = fused_recurrent_gated_delta_rule if T == 1 else chunk_gated_delta_rule

            def fla():
                return fla_fn(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True)
            row["fla"] = torch_time(torch, fla, reps)
            if T == 1:
                row["fla_call"] = wall_per_call(torch.cuda.synchronize, fla, reps)
            o, hT = fla()
            ours()
            mine = out.copy_to_host()
            n_attn = S * Hv * T * ns
            ref_o = o.float().cpu().numpy().reshape(-1)
            row["diff"] = float(np.abs(mine[:n_attn] - ref_o).max() / np.abs(ref_o).max())
        rows.append(row)
        print(f"  {name}: {row}", flush=True)
    print(f"\n## GATED_DELTA_NET CUDA fp32, S={S} H_k={Hk} H_v={Hv} GDA K=1 on {_devname()}")
    print("| shape | ours (GPU time) | before (GPU time) | fla (GPU time) | ours vs fla | ours per call (launch) "
          "| ours per call (graph replay) | fla per call | out rel diff vs fla | goal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    goals = {"decode B=256": "<= 450 us", "decode B=1": "<= 10 us/call", "prefill T=4096": "<= fla",
             "prefill T=16384": "<= fla"}
    us = lambda x: f"{x * 1e6:.1f} us" if x is not None else "-"  # noqa: E731
    for r in rows:
        print(f"| {r['name']} | {us(r['ours'])} | {us(r.get('before'))} | {us(r.get('fla'))} | "
              f"{(r['fla'] / r['ours']) if 'fla' in r else float('nan'):.2f}x | {us(r.get('ours_call'))} | "
              f"{us(r.get('ours_graph'))} | {us(r.get('fla_call'))} | {r.get('diff', float('nan')):.1e} | "
              f"{goals.get(r['name'], '')} |")
    for r in rows:
        if "kernels" in r:
            print(f"  {r['name']} per kernel (prep, state, out): " + ", ".join(us(x) for x in r["kernels"]))


def variants(quick):
    """Decode with other rows-per-warp / cache hints; recurrence vs chunked around CHUNKED_MIN_T."""
    S, Hk, Hv = 128, 16, 32
    ns = 32 if quick else 256
    arrs = make(np.random.default_rng(0), S, Hk, Hv, 1, ns, ns, False, -1.0)
    d = [cuda.to_device(a) for a in arrs]
    out = cuda.device_array(S * Hv * (ns + S * ns), np.float32)
    run = gf.standalone(out, *d, 1)
    print(f"\n## decode B={ns} variants (rows per group, groups per warp, warps, .cs hints, max registers)")
    tb = lambda t: f"{t * 1e6:.1f} us ({2 * ns * Hv * S * S * 4 / t / 1e12:.2f} TB/s)"  # noqa: E731
    kern = gf.recurrent_kernel(8, True)
    t = cuda_time(lambda: kern[(-(-S // (gf.REC_WARPS * 8)), Hv, ns), gf.REC_WARPS * gf.WARP](*run.args), 20)
    print(f"  recurrent rpw=8 hint: {tb(t)}")
    for rpw, groups, warps, hint, regs in [(4, 8, 4, True, 0), (4, 8, 4, True, 96), (4, 8, 4, True, 80),
                                           (4, 16, 4, True, 96), (4, 8, 8, True, 96), (4, 4, 4, True, 96),
                                           (8, 4, 4, True, 128)]:
        kern = gf.decode_kernel(rpw, groups, warps, hint, regs)
        grid = (-(-S // (warps * rpw * groups)), Hv, ns)
        t = cuda_time(lambda: kern[grid, warps * gf.WARP](*run.args), 20)
        print(f"  decode rpw={rpw} groups={groups} warps={warps} hint={hint} regs={regs or '-'}: {tb(t)}", flush=True)
    print("\n## chunk size, prefill T=4096 B=1: total (prep, state, out)")
    arrs = make(np.random.default_rng(0), S, Hk, Hv, 4096, 1, 1, False, -1.0)
    d = [cuda.to_device(a) for a in arrs]
    out = cuda.device_array(S * Hv * (4096 + S), np.float32)
    keep = gf.CHUNK
    for L in (32, 64):
        gf.CHUNK = L
        run = gf.standalone(out, *d, 1)
        print(f"  L={L}: {cuda_time(run, 5) * 1e6:.1f} us (" + ", ".join(f"{x * 1e6:.1f}" for x in launch_times(run, 5))
              + ")", flush=True)
    gf.CHUNK = keep
    print("\n## prep kernel register cap, T=4096 (L=64)")
    run = gf.standalone(out, *d, 1)
    la = run.launches[0]
    for regs in (0, 80, 96, 128):
        kern, _ = gdn_chunked.make_prep(gf.CHUNK, regs)
        t = cuda_time(lambda: kern[la.grid, la.block](*run.args, *la.scalars), 5)
        print(f"  max_registers={regs or '-'}: {t * 1e6:.1f} us", flush=True)
    print("\n## recurrence vs chunked, B=1")
    for T in (16, 32, 64, 128, 256):
        arrs = make(np.random.default_rng(0), S, Hk, Hv, T, 1, 1, False, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        out = cuda.device_array(S * Hv * (T + S), np.float32)
        tr = cuda_time(gf.standalone(out, *d, 1, chunked=False), 10)
        tc = cuda_time(gf.standalone(out, *d, 1, chunked=True), 10)
        print(f"  T={T}: recurrent {tr * 1e6:.1f} us, chunked {tc * 1e6:.1f} us")


def _devname():
    n = cuda.get_current_device().name
    return n.decode() if isinstance(n, bytes) else n


def graph_replay(torch, ours, reps, per_graph=20):
    """Per-call time of `per_graph` decode launches captured into one CUDA graph (torch's capture
    stream, numba launching onto it), replayed `reps // per_graph` times."""
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--variants", action="store_true", help="decode variants, recurrence vs chunked by T")
    ap.add_argument("--before", help="a previous gdn_fast.py to time in the same run")
    args = ap.parse_args()
    if not args.skip_check:
        check_correctness(args.quick)
    if args.variants:
        variants(args.quick)
    benchmark(args.quick, _load("gdn_fast_before", args.before) if args.before else None)


if __name__ == "__main__":
    sys.exit(main())
