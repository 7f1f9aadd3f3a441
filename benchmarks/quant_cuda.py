"""Decode-shaped mat-vec on a GPU with quantized weights: minigraph's quantized MUL_MAT (CUDA),
minigraph's f32 MUL_MAT on the same shapes, torch's f16 matmul (a reference, when torch is
installed), and the device's measured read bandwidth, side by side in one run.

One token (src1 one column), weights [K, M] (ggml ne: K = ne0 the row length). GPU time only:
each case is one minigraph graph of C mat-vecs over C distinct weight copies (together > 4x the
L2 cache, so every mat-vec reads its weights from HBM), captured as the backend's CUDA graph and
replayed R times between CUDA events; the time per mat-vec is the total / (R * C). "node" is the
whole quantized MUL_MAT (quantize src1 to Q8_0/Q8_1/Q8_K, then the dot kernel; Q4_0 and Q4_K read
the reordered copy of their weights, quant_reorder.py, and "q4_0 ggml" / "q4_K ggml" are the same
over ggml's bytes); "dot" replays a CUDA graph of the dot launches only (the same as "node" where
one src1 column is quantized inside the dot kernel). Bandwidth = weight bytes / time. Read
bandwidth: a sum over a 2 GiB f32 buffer (torch; not measured without it). Spread: the min and
max of `--runs` timed runs of each case.

`--variants` times the same weights and buffers again with other quant_mmvq settings (keys of
quant_mmvq.CONFIG, compile-time constants, PDL=0 among them (no programmatic dependent launch; a bit
mask of ggml types); other keys set module knobs: FUSE=1 the one-launch form for one column up to
FUSED_MAX_BYTES of weights, FUSED_MAX_BYTES=1e12 at any size; REORDER=0 the kernels over ggml's
bytes where the plan reads a reordered copy), one CUDA graph each, e.g.
--variants "one:FUSE=1;mb12:MIN_BLOCKS=12;nopdl:PDL=0".

    python benchmarks/quant_cuda.py [--types q8_0,q4_0,q4_K] [--runs 5] [--f32] [--variants SPEC] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import minigraph as mg
from minigraph.core import dtypes as D
from minigraph.backends.cuda import quant_mmvq, quant_reorder
from minigraph.backends.cuda.backend import CudaBackend, _CudaGraph

L2_BYTES = 60 << 20        # H200: 50 MiB; the copies together exceed 4x this
SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]   # (K = ne0, M = ne1)


def random_blocks(type_: int, m: int, k: int, rng) -> np.ndarray:
    """m rows of random block bytes with small finite float16 scales (the values do not matter
    for the timing; NaN/inf scales would only make the check below noisy)."""
    ts, bl = D.type_size(type_), D.blck_size(type_)
    raw = rng.integers(0, 256, size=(m, k // bl, ts), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    fields = D.BLOCK_DTYPES[type_].fields
    for name in ("d", "dmin", "m"):
        if name in fields:
            off = fields[name][1]
            raw[..., off:off + 2] = scale
    return raw.reshape(m, -1)


def _events_time(stream, fn, reps: int) -> float:
    from numba import cuda

    start, stop = cuda.event(), cuda.event()
    start.record(stream)
    for _ in range(reps):
        fn()
    stop.record(stream)
    stop.synchronize()
    return cuda.event_elapsed_time(start, stop) / 1e3


def parse_variants(spec: str) -> list[tuple[str, dict, dict]]:
    """"name:KEY=V,KEY=V;..." -> [(name, CONFIG overrides, module knob overrides)]"""
    out = []
    for item in filter(None, spec.split(";")):
        name, _, body = item.partition(":")
        conf, knobs = {}, {}
        for kv in filter(None, body.split(",")):
            k, _, v = kv.partition("=")
            (conf if k in quant_mmvq.CONFIG else knobs)[k] = int(float(v))
        out.append((name, conf, knobs))
    return out


def bench_variants(be: CudaBackend, plan, variants, runs: int, reps: int, copies: int) -> dict:
    """name -> [us a mat-vec] of the plan's quantized MUL_MATs relaunched under each variant."""
    stream = be.stream
    base = dict(quant_mmvq.CONFIG)
    base_knobs = {k: getattr(quant_mmvq, k) for k in ("FUSE", "FUSED_MAX_BYTES")}
    firsts = {}
    for cfg, args, n in plan.launches:
        if n.op == "MUL_MAT" and n not in firsts:
            firsts[n] = args
    bound = {id(r.node): r for r in plan.prepares}   # the plan's reordered copies, by node
    out = {}
    try:
        for name, conf, knobs in variants:
            quant_mmvq.CONFIG.update(conf)
            knobs = dict(knobs)
            over_copy = knobs.pop("REORDER", 1)      # REORDER=0: the kernels over ggml's bytes
            for k, v in {**base_knobs, **knobs}.items():
                setattr(quant_mmvq, k, v)
            seq = []
            for n, args in firsts.items():
                for la in quant_mmvq.launches(n, tuple(args[4:7]), bound.get(id(n)) if over_copy else None):
                    seq.append((la.kernel[la.grid, la.block, stream], args, n))
            g = _CudaGraph.capture(stream, seq)
            out[name] = [_events_time(stream, lambda: g.launch(stream), reps) / (reps * copies) * 1e6
                         for _ in range(runs)]
            quant_mmvq.CONFIG.clear()
            quant_mmvq.CONFIG.update(base)
    finally:
        quant_mmvq.CONFIG.clear()
        quant_mmvq.CONFIG.update(base)
        for k, v in base_knobs.items():
            setattr(quant_mmvq, k, v)
    return out


def bench_minigraph(be: CudaBackend, type_: int, k: int, m: int, runs: int, reps: int, rng,
                    variants=()) -> dict:
    bytes_w = m * k // D.blck_size(type_) * D.type_size(type_)
    copies = max(2, -(-4 * L2_BYTES // bytes_w))
    ctx = mg.Context()
    x = ctx.from_numpy(rng.standard_normal((1, k)).astype(np.float32))
    outs = []
    for _ in range(copies):
        if D.is_quantized(type_):
            w = ctx.from_numpy(random_blocks(type_, m, k, rng), type_)
        else:
            w = ctx.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
        outs.append(ctx.mul_mat(w, x))
    gf = mg.Graph()
    for o in outs:
        gf.build_forward_expand(o)
    be.graph_compute(gf)
    be.graph_compute(gf)                     # the second compute captures the CUDA graph
    plan = be.plan(gf)
    assert plan.graph_exec is not None, plan.graph_error
    assert all(np.isfinite(o.numpy()).all() for o in outs[:2])
    stream = be.stream
    node = [_events_time(stream, lambda: plan.graph_exec.launch(stream), reps) / (reps * copies) for _ in range(runs)]
    row = {"type": D.type_name(type_), "K": k, "M": m, "weight_MB": bytes_w / 1e6, "copies": copies,
           "node_us": [t * 1e6 for t in node]}
    if D.is_quantized(type_):
        dot_launches = [la for la in plan.launches
                        if la[2].op == "MUL_MAT" and getattr(la[0], "kernel_name", "mmvq").startswith("mmvq")]
        row["mmvq"] = quant_mmvq.refusal(outs[0]) is None
        row["fused"] = row["mmvq"] and quant_mmvq.fused(outs[0])
        g = _CudaGraph.capture(stream, dot_launches)
        dot = [_events_time(stream, lambda: g.launch(stream), reps) / (reps * copies) for _ in range(runs)]
        row["dot_us"] = [t * 1e6 for t in dot]
        if variants and row["mmvq"]:
            row["variants"] = bench_variants(be, plan, variants, runs, reps, copies)
    return row


def bench_torch(k: int, m: int, runs: int, reps: int) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    bytes_w = m * k * 2
    copies = max(2, -(-4 * L2_BYTES // bytes_w))
    ws = [torch.randn(m, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
    x = torch.randn(k, 1, device="cuda", dtype=torch.float16)

    def one():
        for w in ws:
            torch.matmul(w, x)

    one()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        one()
    times = []
    for _ in range(runs):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            g.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / (reps * copies))
    return {"type": "torch f16", "K": k, "M": m, "weight_MB": bytes_w / 1e6, "copies": copies,
            "node_us": [t * 1e6 for t in times]}


def read_bandwidth(runs: int) -> list[float]:
    n = 1 << 29                                   # 2 GiB of f32
    try:
        import torch

        a = torch.ones(n, device="cuda", dtype=torch.float32)
        a.sum()
        out = []
        for _ in range(runs):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(5):
                a.sum()
            e.record()
            e.synchronize()
            out.append(5 * 4 * n / (s.elapsed_time(e) / 1e3))
        return out
    except ImportError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q8_0,q4_0,q4_K")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--f32", action="store_true", help="also minigraph's f32 MUL_MAT (slow kernel, big copies)")
    ap.add_argument("--variants", default="", help='e.g. "one:FUSE=1;mb12:MIN_BLOCKS=12"')
    ap.add_argument("--json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    be = CudaBackend(0)
    bw = read_bandwidth(args.runs)
    peak = float(np.median(bw)) if bw else 4.08e12
    rows = []
    for k, m in SHAPES:
        for name in args.types.split(","):
            rows.append(bench_minigraph(be, D.type_from_name(name), k, m, args.runs, args.reps, rng,
                                        parse_variants(args.variants)))
            t = D.type_from_name(name)
            if t in quant_reorder.KINDS and quant_reorder.REORDER:   # the same over ggml's bytes, side by side
                quant_reorder.REORDER = False
                try:
                    rows.append({**bench_minigraph(be, t, k, m, args.runs, args.reps, rng),
                                 "type": f"{name} ggml"})
                finally:
                    quant_reorder.REORDER = True
        if args.f32:
            rows.append(bench_minigraph(be, D.TYPE_F32, k, m, args.runs, max(2, args.reps // 10), rng))
        t = bench_torch(k, m, args.runs, args.reps)
        if t:
            rows.append(t)
    print(f"read bandwidth: {peak / 1e12:.2f} TB/s (median of {len(bw)}: "
          f"{', '.join(f'{b / 1e12:.2f}' for b in bw)})" if bw else "read bandwidth: not measured (no torch); 4.08 TB/s assumed")
    print(f"{'type':10} {'K':>6} {'M':>6} {'MB':>7} {'node us (min-max)':>20} {'TB/s':>6} {'% bw':>5} "
          f"{'dot us (min-max)':>20} {'TB/s':>6} {'% bw':>5}")
    for r in rows:
        med = float(np.median(r["node_us"]))
        tbs = r["weight_MB"] * 1e6 / (med * 1e-6) / 1e12
        line = (f"{r['type']:10} {r['K']:6} {r['M']:6} {r['weight_MB']:7.1f} "
                f"{med:8.2f} ({min(r['node_us']):5.2f}-{max(r['node_us']):5.2f}) {tbs:6.2f} {100 * tbs * 1e12 / peak:5.0f}")
        if "dot_us" in r:
            dm = float(np.median(r["dot_us"]))
            dt = r["weight_MB"] * 1e6 / (dm * 1e-6) / 1e12
            line += (f" {dm:8.2f} ({min(r['dot_us']):5.2f}-{max(r['dot_us']):5.2f}) {dt:6.2f} "
                     f"{100 * dt * 1e12 / peak:5.0f}{'' if r.get('mmvq') else ' (numba dot)'}"
                     f"{' (fused)' if r.get('fused') else ''}")
        print(line)
    vrows = [r for r in rows if r.get("variants")]
    if vrows:
        print("\nvariants (us a mat-vec, median (min-max); % of read bandwidth):")
        for r in vrows:
            cells = []
            for name, ts in r["variants"].items():
                med = float(np.median(ts))
                pct = 100 * r["weight_MB"] * 1e6 / (med * 1e-6) / peak
                cells.append(f"{name} {med:.2f} ({min(ts):.2f}-{max(ts):.2f}) {pct:.0f}%")
            print(f"{r['type']:6} {r['K']:6} {r['M']:6}  " + " | ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"read_bw": bw, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
