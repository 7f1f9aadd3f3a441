"""GATED_DELTA_NET prefill on the GPU, kernel by kernel: the tensor-core chunked path's launches (prep;
the state pass, which writes the output too: backends/cuda/gdn_tc.py) timed alone and together, fla-core's chunk kernel in the
same process, and the output / final state against float64 on a short case. S=128, H_k=16, H_v=32,
GDA (--kda: KDA, gates per key), fp32, B=1; GPU time by CUDA events, median of TRIALS trials (min-max).

    python benchmarks/gdn_prefill_split.py [--T 4096 16384] [--kda] [--baseline DIR] [--no-fla] [--ncu]
                                           [--variants [--only ..]]

--baseline DIR: the kernels built from DIR's gdn_tc*.cu / gdn_tc.cuh (another tree's
backends/cuda) timed beside this tree's, trial by trial in turn with fla, and their outputs compared
(the C functions must take this tree's arguments: since session 9 a trailing q/k head divisor hd);
--kda-threads N ..: this tree's KDA prep also built with blocks of N threads (256 or 512).

--ncu: one run of each kernel at the first T and nothing else (the script to run under ncu).
--variants: the state pass's column tiles a block x warps a tile, the 3xTF32 accumulation mode and
the fp32 split (gdn_tc.ACC, SPLIT): the kernels timed at the first T and checked against
float64 (T=1000, gates >= -20).
First, always: benchmarks/gdn_cuda.py's correctness cases on this path (max |err| / max |ref|).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from numba import cuda

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gdn_cuda import CASES, cuda_time, errors, fla_call, fla_fns, make, path, run_ours, torch_time  # noqa: E402

from minigraph.backends.cuda import gdn_fast as gf, gdn_tc  # noqa: E402
from minigraph.ops.gdn_reference import gated_delta_net_reference  # noqa: E402

S, HK, HV = 128, 16, 32


def us(t):
    return f"{t[0] * 1e6:.1f} us ({t[1] * 1e6:.0f}-{t[2] * 1e6:.0f})"


def accuracy():
    worst = 0.0
    for S_, Hk, Hv, T, ns, nsqk, kda, K, g_lo, form in CASES:
        arrs = make(np.random.default_rng(T + S_), S_, Hk, Hv, T, ns, nsqk, kda, g_lo)
        ref = gated_delta_net_reference(*arrs, K)
        (eo, es), fin = errors(run_ours(arrs, K, chunked=form, tc=True), ref, S_, Hv, T, ns)
        worst = max(worst, eo, es) if fin else np.inf
        print(f"  S={S_} Hk={Hk} Hv={Hv} T={T} ns={ns}/{nsqk} {'KDA' if kda else 'GDA'} K={K} g>={g_lo}: "
              f"out {eo:.1e} state {es:.1e}{'' if fin else ' NOT FINITE'}", flush=True)
    print(f"  worst {worst:.1e} ({'PASS' if worst < 2e-6 else 'FAIL'} at 2e-6)", flush=True)


def variants(T, trials, configs=None):
    if not hasattr(gdn_tc, "SPLIT"):
        print("  (no state-pass variants in this tree)")
        return
    arrs = make(np.random.default_rng(1), S, 1, 2, 1000, 1, 1, False, -20.0)
    ref = gated_delta_net_reference(*arrs, 1)
    d1 = [cuda.to_device(a) for a in arrs]
    o1 = cuda.device_array(S * 2 * (1000 + S), np.float32)
    args1 = (cuda.to_device(gf.contiguous_meta(o1.size, *arrs)), *(a.reshape(a.size) for a in (o1, *d1)), 1)
    big = make(np.random.default_rng(0), S, HK, HV, T, 1, 1, False, -1.0)
    d = [cuda.to_device(a) for a in big]
    out = cuda.device_array(S * HV * (T + S), np.float32)
    args = (cuda.to_device(gf.contiguous_meta(out.size, *big)), *(a.reshape(a.size) for a in (out, *d)), 1)
    ws = gdn_tc.workspace(S, HV, T, 1)
    keep = gdn_tc.SPLIT
    for nj, ks, acc, split in configs or ((2, 4, 3, 1), (2, 4, 1, 1), (2, 2, 3, 1), (2, 4, 0, 1), (2, 4, 3, 2),
                                          (1, 4, 3, 1)):
        gdn_tc.SPLIT = split
        try:
            las = gdn_tc.chunked_launches(S, HV, T, 1, False, ws, nj=nj, acc=acc, ks=ks)
            ts = [cuda_time(lambda la=la: la.kernel[la.grid, la.block](*args, *la.scalars), max(2, 40960 // T), trials)
                  for la in las]
            for lb in gdn_tc.chunked_launches(S, 2, 1000, 1, False, None, nj=nj, acc=acc, ks=ks):
                lb.kernel[lb.grid, lb.block](*args1, *lb.scalars)
            (eo, es), _ = errors(o1.copy_to_host().reshape(ref.shape), ref, S, 2, 1000, 1)
            regs = [la.kernel.regs for la in las]
            print(f"  tiles={nj} warps/tile={ks} acc={acc} split={split} regs={regs}: prep / state "
                  + " / ".join(us(t) for t in ts) + f"; error out {eo:.1e} state {es:.1e}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  tiles={nj} warps/tile={ks} acc={acc} split={split}: failed {e!r}", flush=True)
    gdn_tc.SPLIT = keep


class baseline:
    """Within it, gdn_tc builds its kernels from `folder`'s sources (this tree's when folder is '')
    with KDA prep blocks of `kda_threads` (None: gdn_tc's). A baseline's prep may have another
    shared-memory layout, so it gets the most a block may take."""

    def __init__(self, folder, kda_threads=None):
        self.folder, self.kda_threads = folder, kda_threads

    def __enter__(self):
        self.keep = (gdn_tc._HERE, gdn_tc._CACHE, gdn_tc.PREP_SMEM_KDA, gdn_tc.PREP_SMEM,
                     getattr(gdn_tc, "KDA_THREADS", None))
        gdn_tc._CACHE = {}
        if self.folder:
            gdn_tc._HERE = os.path.abspath(self.folder)
            gdn_tc.PREP_SMEM_KDA = gdn_tc.PREP_SMEM = gdn_tc.MAX_SMEM
        if self.kda_threads:
            gdn_tc.KDA_THREADS = self.kda_threads
        return self

    def __exit__(self, *exc):
        gdn_tc._HERE, gdn_tc._CACHE, gdn_tc.PREP_SMEM_KDA, gdn_tc.PREP_SMEM, thr = self.keep
        if thr is not None:
            gdn_tc.KDA_THREADS = thr


def in_turn(torch, fns, reps, trials):
    """{name: (median, min, max) seconds a call}: each trial times every function once in turn."""
    got = {n: [] for n in fns}
    for fn in fns.values():
        fn()
    cuda.synchronize()
    for _ in range(trials):
        for n, fn in fns.items():
            got[n].append((torch_time(torch, fn, reps, 1) if n == "fla" else cuda_time(fn, reps, 1))[0])
    return {n: (float(np.median(v)), min(v), max(v)) for n, v in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--kda", action="store_true", help="per-key gates (KDA; fla: chunk_kda)")
    ap.add_argument("--baseline", type=str, default="", help="folder of baseline gdn_tc*.cu, gdn_tc.cuh")
    ap.add_argument("--kda-threads", type=int, nargs="*", default=[], help="also KDA prep blocks of these threads")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness cases")
    ap.add_argument("--only", type=str, default="", help="variants: nj,ks,acc,split;... instead of the list")
    args = ap.parse_args()
    assert gdn_tc.available(), "no tensor-core path here"
    if args.ncu:
        T = args.T[0]
        arrs = make(np.random.default_rng(0), S, HK, HV, T, 1, 1, args.kda, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        out = cuda.device_array(S * HV * (T + S), np.float32)
        with path(True):
            run = gf.standalone(out, *d, 1)
        run()
        cuda.synchronize()
        return 0
    if not args.no_check:
        accuracy()
    if args.variants:
        only = [tuple(int(x) for x in v.split(",")) for v in args.only.split(";") if v]
        variants(args.T[0], args.trials, only or None)
    import torch
    fns = None if args.no_fla else fla_fns()
    if args.kda and fns is not None and "kda" not in fns:
        fns = None
    for T in args.T:
        reps = max(2, 40960 // T)
        arrs = make(np.random.default_rng(0), S, HK, HV, T, 1, 1, args.kda, -1.0)
        d = [cuda.to_device(a) for a in arrs]
        runs = {}
        builds = [("ours", "", None)] + ([("base", args.baseline, None)] if args.baseline else []) + [
            (f"ours kda_threads={n}", "", n) for n in args.kda_threads]
        for name, folder, nthr in builds:
            out = cuda.device_array(S * HV * (T + S), np.float32)
            with path(True), baseline(folder, nthr):
                runs[name] = (gf.standalone(out, *d, 1), out)
        fns_t = {}
        for name, (run, _) in runs.items():
            fns_t[name] = run
            for n, la in enumerate(run.launches):
                fns_t[f"{name} k{n}"] = lambda la=la, run=run: la.kernel[la.grid, la.block](*run.args, *la.scalars)
        if fns is not None:
            fns_t["fla"] = fla_call(torch, fns, arrs, args.kda)
        ts = in_turn(torch, fns_t, reps, args.trials)
        for name, (run, out) in runs.items():
            ks = [ts[f"{name} k{n}"] for n in range(len(run.launches))]
            line = f"  T={T} {name}: {us(ts[name])} = " + " + ".join(us(k) for k in ks)
            if "fla" in ts:
                line += f"; fla chunk {us(ts['fla'])}: fla / {name} {ts['fla'][0] / ts[name][0]:.2f}x"
            print(line, flush=True)
        if args.baseline:
            for run, _ in runs.values():
                run()
            cuda.synchronize()
            b = runs["base"][1].copy_to_host()
            for n in runs:
                if n != "base":
                    a = runs[n][1].copy_to_host()
                    print(f"  T={T}: {n} vs base max rel diff {np.abs(a - b).max() / np.abs(b).max():.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
