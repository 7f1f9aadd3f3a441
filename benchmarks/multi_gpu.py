"""One GPU vs two (nvidia-h200-x2): the delta-net stack of minigraph.testing.toy_models on CUDA0 alone,
split by layers over CUDA0 + CUDA1 (tensor_split [0.5, 0.5], llama.cpp's -sm layer) and split by rows
(every MUL_MAT weight over both GPUs, -sm row). Per mode: wall time of sched.graph_compute (it
synchronizes every GPU at the end) as median [min, max] over rounds of reps after warm-up, the bytes
copied between the GPUs per run and by which path (peer or host), the weight bytes each GPU holds,
the scheduler's splits and placements, and the max |diff| against the one-GPU run.

A layer split runs the layers one after the other (one sequence: the GPUs take turns), so it buys
memory (each GPU holds its share of the weights), not speed; a row split runs each MUL_MAT's halves
at once on both GPUs and pays a gather per MUL_MAT.

Run on the 2-GPU machine: python benchmarks/multi_gpu.py [--layers 8 --embd 2048 --tokens 256 --reps 5
--rounds 3 --json out.json]. With fewer than two GPUs it says so and exits with status 2.
--fake runs the same script on two fake devices (CPU; to check the script, its times mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import minigraph as mg
from minigraph.testing.toy_models import delta_net_stack


def gpu_count() -> tuple[int, str]:
    try:
        from numba import cuda

        from minigraph.core import flags

        if flags.cuda_simulator():
            return 0, "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)"
        if not cuda.is_available():
            return 0, "no CUDA driver or GPU"
        return len(cuda.gpus), ", ".join(g.name.decode() if isinstance(g.name, bytes) else str(g.name)
                                         for g in cuda.gpus)
    except Exception as e:  # noqa: BLE001 - report why, do not crash
        return 0, f"{type(e).__name__}: {e}"


def build(a):
    return delta_net_stack(n_layer=a.layers, n_embd=a.embd, n_head=a.heads, head_dim=a.head_dim,
                           n_tokens=a.tokens, n_vocab=a.vocab, seed=0)


def weight_bytes(m) -> dict:
    held: dict = {}
    for w in m.weights.values():
        buf = mg.tensor_buffer(w)
        if buf is None:
            continue
        parts = getattr(buf, "parts", None)
        if parts:
            for _, _, _, p in parts:
                name = mg.tensor_buffer(p).backend.name
                held[name] = held.get(name, 0) + p.nbytes()
        else:
            held[buf.backend.name] = held.get(buf.backend.name, 0) + w.nbytes()
    return held


def setup(mode, a, g0, g1, cpu):
    m = build(a)
    if mode == "one GPU":
        sched = mg.backend_sched_new([g0, cpu])
        for name, w in m.weights.items():
            if name != "inp_embd":
                mg.backend_tensor_alloc(g0, w)
    elif mode == "layer split":
        sched = mg.backend_sched_new([g0, g1, cpu], tensor_split=[0.5, 0.5])
        sched.alloc_layer_weights(m.graph)
    else:
        buft = mg.split_buffer_type([g0, g1], [0.5, 0.5])
        mats = {id(n.src[0]) for n in m.graph.nodes if n.op == "MUL_MAT"}
        for name, w in m.weights.items():
            if name != "inp_embd":
                mg.backend_tensor_alloc(buft if id(w) in mats else g0, w)
        sched = mg.backend_sched_new([g0, g1, cpu])
    return m, sched


def measure(mode, a, g0, g1, cpu, ref):
    m, sched = setup(mode, a, g0, g1, cpu)
    for _ in range(a.warmup):
        sched.graph_compute(m.graph)
    sched.reset_copy_stats()
    rounds = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        for _ in range(a.reps):
            sched.graph_compute(m.graph)
        rounds.append((time.perf_counter() - t) / a.reps * 1e3)
    out = [m.logits.numpy()] + [s.numpy() for s in m.states]
    diff = 0.0 if ref is None else max(float(np.abs(x - y).max()) for x, y in zip(out, ref))
    rep, stats = sched.report(), sched.get_copy_stats()
    runs = max(stats["runs"], 1)
    row = {
        "mode": mode, "ms_median": statistics.median(rounds), "ms_min": min(rounds), "ms_max": max(rounds),
        "max_abs_diff_vs_one_gpu": diff, "n_splits": rep["n_splits"],
        "bytes_between_gpus_per_run": stats["bytes_between_devices"] // runs,
        "paths_per_run": {k: {p: b // runs for p, b in v["paths"].items()} for k, v in stats["by_pair"].items()},
        "weight_bytes": weight_bytes(m), "compute_buffers": rep["buffer_size"], "layers": rep["layers"],
        "n_row_splits": len(rep["row_splits"]),
        "placements": _count_causes(rep),
    }
    return out, row


def _count_causes(rep) -> dict:
    c: dict = {}
    for p in rep["placements"]:
        k = f"{p['backend']}:{p['cause']}"
        c[k] = c.get(k, 0) + 1
    return dict(sorted(c.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--embd", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default="")
    ap.add_argument("--fake", action="store_true", help="two fake devices (checks the script, times mean nothing)")
    a = ap.parse_args()
    cpu = mg.backend_cpu_init()
    if a.fake:
        from minigraph.testing.fake_devices import fake_devices

        (g0, g1), what = fake_devices(2), "two FAKE devices (CPU): times mean nothing"

        def peer_status() -> dict:
            return {"fake": "buffer to buffer"}
    else:
        n, what = gpu_count()
        if n < 2:
            print(f"benchmarks/multi_gpu.py needs two CUDA GPUs (the nvidia-h200-x2 machine); found {n} ({what}). "
                  "Nothing was measured.", file=sys.stderr)
            return 2
        g0, g1 = mg.backend_cuda_init(0), mg.backend_cuda_init(1)
        from minigraph.backends.cuda.peer import peer_access, peer_status

        peer_access(0, 1), peer_access(1, 0)
    print(f"machine: {platform.node()}, GPUs: {what}; peer access: {peer_status()}")
    print(f"model: {a.layers} delta-net layers, n_embd {a.embd}, {a.heads} heads x {a.head_dim}, "
          f"{a.tokens} tokens, vocab {a.vocab}; {a.rounds} rounds x {a.reps} reps after {a.warmup} warm-up")
    rows, ref = [], None
    for mode in ("one GPU", "layer split", "row split"):
        out, row = measure(mode, a, g0, g1, cpu, ref)
        ref = out if ref is None else ref
        rows.append(row)
        print(f"{mode:12s} {row['ms_median']:9.2f} ms [{row['ms_min']:.2f}, {row['ms_max']:.2f}]  "
              f"{row['bytes_between_gpus_per_run']:>10d} B between GPUs/run  splits {row['n_splits']:3d}  "
              f"max|diff| {row['max_abs_diff_vs_one_gpu']:.1e}  weights {row['weight_bytes']}", flush=True)
    for row in rows:
        print(f"\n{row['mode']}: paths {row['paths_per_run']}\n  layers {row['layers']}\n"
              f"  compute buffers {row['compute_buffers']}\n  placements {row['placements']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": platform.node(), "gpus": what, "peer": peer_status(), "args": vars(a),
                       "rows": rows, "pid": os.getpid()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
