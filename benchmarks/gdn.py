"""GATED_DELTA_NET on the CPU, side by side in one run: minigraph vs ggml (ggml-python) vs torch.

Shapes from the issue: H_k=16, H_v=32, S=128, GDA (scalar gate), K=1, 2 threads everywhere:
decode N=1, decode N=32 (state 64 MB), prefill T=4096 N=1.

  minigraph  public API: ctx.gated_delta_net graph, mg.backend_cpu_init(threads), graph planned
             once (first compute, reported as "first run"), then graph_compute timed
  ggml       ggml-python's CPU backend through minigraph.testing.ggml_bridge.time_compute
  torch      (only if importable; optional) fla's naive reference forms re-implemented here in
             float32: the token recurrence (fla naive_recurrent_gated_delta_rule) and the chunked
             WY form (fla naive_chunk_gated_delta_rule, chunk 64), torch.set_num_threads(threads)

Every figure is the mean over `repeat` runs after one warm-up (time_compute's rule). Each
output is checked against ggml's (max |diff| / max |ggml|). Run:
    python benchmarks/gdn.py [--quick] [--threads N] [--kda] [--no-torch]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import minigraph as mg
from minigraph.testing import ggml_bridge

FULL = dict(S=128, H_k=16, H_v=32, shapes=[  # (name, T, n_seqs, repeat)
    ("decode N=1", 1, 1, 300),
    ("decode N=32", 1, 32, 20),
    ("prefill T=4096", 4096, 1, 3),
])
QUICK = dict(S=128, H_k=2, H_v=4, shapes=[
    ("decode N=1", 1, 1, 50),
    ("decode N=4", 1, 4, 20),
    ("prefill T=256", 256, 1, 3),
])
ISSUE = {  # figures quoted in the issue (ggml, fla naive recurrent, fla naive chunked)
    "decode N=1": ("296 us", "1.26 ms"), "decode N=32": ("17.5 ms", "195 ms"),
    "prefill T=4096": ("6.1k tok/s", "4.0k tok/s"),
}


def make_inputs(S, H_k, H_v, T, ns, rng, kda=False):
    """numpy arrays, shape = reversed ggml ne: q, k, v, g, beta, state."""
    def unit(shape):
        x = rng.standard_normal(shape, dtype=np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit((ns, T, H_k, S)), unit((ns, T, H_k, S))
    v = rng.standard_normal((ns, T, H_v, S), dtype=np.float32)
    g = rng.uniform(-1.0, -1e-4, (ns, T, H_v, S if kda else 1)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, (ns, T, H_v, 1)).astype(np.float32)
    state = 0.1 * rng.standard_normal((ns, H_v, S, S), dtype=np.float32)
    return q, k, v, g, beta, state


# ----------------------------------------------------------------------------- minigraph

def time_minigraph(arrs, threads, repeat):
    ctx = mg.init()
    ts = [ctx.from_numpy(a) for a in arrs]
    out = ctx.gated_delta_net(*ts, 1)
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    backend = mg.backend_cpu_init(threads)
    t0 = time.perf_counter()
    backend.graph_compute(gf)            # plan (memory, kernel build) + first run
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeat):
        backend.graph_compute(gf)
    return (time.perf_counter() - t0) / repeat, first, out.numpy().reshape(-1)


# ----------------------------------------------------------------------------- ggml

def time_ggml(arrs, threads, repeat):
    ctx = ggml_bridge.GgmlContext(mem_size=3 * sum(a.nbytes for a in arrs) + (64 << 20))
    ts = [ctx.from_numpy(np.ascontiguousarray(a)) for a in arrs]
    out = ctx.gated_delta_net(*ts, 1)
    sec = ggml_bridge.time_compute(out, n_threads=threads, repeat=repeat)
    return sec, out.numpy().reshape(-1)


# ----------------------------------------------------------------------------- torch (fla's naive forms)

def _torch_inputs(torch, arrs):
    """fla layout [B, T, H, D] (our numpy order already), q/k tiled to H_v heads (h % H_k),
    initial state [B, H, K, V] = S[i][j] (ours is stored transposed)."""
    q, k, v, g, beta, state = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrs)
    rep = v.shape[2] // q.shape[2]
    q, k = q.repeat(1, 1, rep, 1), k.repeat(1, 1, rep, 1)
    return q, k, v, g[..., 0], beta[..., 0], state.transpose(-1, -2).contiguous()


def torch_recurrent(torch, q, k, v, g, beta, h0):
    """fla naive_recurrent_gated_delta_rule, float32: o [B, T, H, V], final state [B, H, K, V]."""
    q, k, v, beta, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, beta, g))
    B, H, T, Kd = k.shape
    o = torch.zeros(B, H, T, v.shape[-1])
    h = h0.clone()
    q = q * Kd ** -0.5
    for i in range(T):
        b_q, b_k, b_v = q[:, :, i], k[:, :, i], v[:, :, i].clone()
        h = h.clone() * g[:, :, i].exp()[..., None, None]
        b_v = (b_v - (h.clone() * b_k[..., None]).sum(-2)) * beta[:, :, i][..., None]
        h = h.clone() + b_k.unsqueeze(-1) * b_v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", b_q, h)
    return o.transpose(1, 2), h


def torch_chunked(torch, q, k, v, g, beta, h0, BT=64):
    """fla naive_chunk_gated_delta_rule (WY form, chunk BT, tail padded), float32."""
    q, k, v, beta, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, beta, g))
    T = q.shape[-2]
    pad = (BT - T % BT) % BT
    if pad:
        F = torch.nn.functional
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta, g = F.pad(beta, (0, pad)), F.pad(g, (0, pad))
    b, h, L, dk = q.shape
    q = q * dk ** -0.5
    v = v * beta[..., None]
    k_beta = k * beta[..., None]

    def chunks(x):
        return x.reshape(b, h, L // BT, BT, x.shape[-1])
    q, k, v, k_beta = chunks(q), chunks(k), chunks(v), chunks(k_beta)
    decay = g.reshape(b, h, L // BT, BT).cumsum(-1)
    L_mask = (decay.unsqueeze(-1) - decay.unsqueeze(-2)).tril().exp().tril()
    upper = torch.triu(torch.ones(BT, BT, dtype=torch.bool), diagonal=0)
    attn = -((k_beta @ k.transpose(-1, -2)) * L_mask).masked_fill(upper, 0)
    for i in range(1, BT):
        attn[..., i, :i] = attn[..., i, :i].clone() + (attn[..., i, :i, None].clone()
                                                       * attn[..., :i, :i].clone()).sum(-2)
    attn = attn + torch.eye(BT)
    v = attn @ v
    k_cumdecay = attn @ (k_beta * decay.exp()[..., None])
    S = h0.clone()
    o = torch.zeros_like(v)
    strict = torch.triu(torch.ones(BT, BT, dtype=torch.bool), diagonal=1)
    for i in range(L // BT):
        q_i, k_i, v_i = q[:, :, i], k[:, :, i], v[:, :, i]
        a = (q_i @ k_i.transpose(-1, -2) * L_mask[:, :, i]).masked_fill_(strict, 0)
        v_new = v_i - k_cumdecay[:, :, i] @ S
        o[:, :, i] = (q_i * decay[:, :, i, :, None].exp()) @ S + a @ v_new
        S = S * decay[:, :, i, -1, None, None].exp() + (
            k_i * (decay[:, :, i, -1, None] - decay[:, :, i]).exp()[..., None]).transpose(-1, -2) @ v_new
    o = o.reshape(b, h, L, -1)[:, :, :T]
    return o.transpose(1, 2), S


def time_torch(torch, fn, arrs, repeat):
    ins = _torch_inputs(torch, arrs)
    with torch.inference_mode():
        fn(torch, *ins)                        # warm-up
        t0 = time.perf_counter()
        for _ in range(repeat):
            o, S = fn(torch, *ins)
        sec = (time.perf_counter() - t0) / repeat
    ns, T, H, D = arrs[2].shape
    flat = np.concatenate([o.numpy().reshape(-1), S.transpose(-1, -2).numpy().reshape(-1)])
    return sec, flat


# ----------------------------------------------------------------------------- report

def fmt_time(sec):
    return f"{sec * 1e6:.1f} us" if sec < 1e-3 else f"{sec * 1e3:.2f} ms"


def cell(sec, tokens, prefill):
    return f"{tokens / sec / 1e3:.1f}k tok/s" if prefill else fmt_time(sec)


def rel(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def machine(threads, torch):
    import numba
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    tv = f", torch {torch.__version__}" if torch else ""
    from minigraph.backends.cpu.gated_delta_net import HAVE_BLAS
    load = ", load average %.1f (other processes share these cores)" % os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, {threads} threads; numba {numba.__version__} "
            f"(layer {numba.threading_layer()}), numpy {np.__version__}{tv}; "
            f"BLAS products in the chunked form: {'yes' if HAVE_BLAS else 'no (scipy missing)'}{load}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (H_k=2, H_v=4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kda", action="store_true", help="per-key gates (torch forms skipped: GDA only)")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    S, H_k, H_v = cfg["S"], cfg["H_k"], cfg["H_v"]
    torch = None
    if not (args.no_torch or args.kda):
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    rows = []
    for name, T, ns, repeat in cfg["shapes"]:
        prefill = T > 1
        arrs = make_inputs(S, H_k, H_v, T, ns, rng, args.kda)
        mine, first, out = time_minigraph(arrs, args.threads, repeat)
        gg, ref = time_ggml(arrs, args.threads, repeat)
        row = dict(name=name, T=T, ns=ns, mine=mine, first=first, ggml=gg, err=rel(out, ref))
        if torch is not None:
            fn = torch_chunked if prefill else torch_recurrent
            tr = max(1, repeat // 10) if prefill or ns > 1 else max(1, repeat // 3)
            tsec, tout = time_torch(torch, fn, arrs, tr)
            row.update(torch=tsec, torch_form="chunked" if prefill else "recurrent",
                       torch_err=rel(tout, ref))
        rows.append(row)
        print(f"  {name}: minigraph {fmt_time(mine)}, ggml {fmt_time(gg)}"
              + (f", torch {fmt_time(row['torch'])}" if "torch" in row else ""), flush=True)

    print(f"\nGATED_DELTA_NET CPU, S={S} H_k={H_k} H_v={H_v} {'KDA' if args.kda else 'GDA'} K=1")
    print(f"machine: {machine(args.threads, torch)}\n")
    head = "| shape | minigraph | ggml | speedup vs ggml | rel diff vs ggml | first run (plan+compile) |"
    sep = "|---|---|---|---|---|---|"
    if torch is not None:
        head += " torch (fla naive form) | minigraph vs torch | torch rel diff |"
        sep += "---|---|---|"
    if not args.quick and not args.kda:
        head += " issue: ggml / fla naive |"
        sep += "---|"
    print(head)
    print(sep)
    for r in rows:
        tok = r["T"] * r["ns"]
        pf = r["T"] > 1
        line = (f"| {r['name']} | {cell(r['mine'], tok, pf)} | {cell(r['ggml'], tok, pf)} | "
                f"{r['ggml'] / r['mine']:.2f}x | {r['err']:.1e} | {fmt_time(r['first'])} |")
        if torch is not None:
            line += (f" {cell(r['torch'], tok, pf)} ({r['torch_form']}) | {r['torch'] / r['mine']:.1f}x |"
                     f" {r['torch_err']:.1e} |")
        if not args.quick and not args.kda:
            line += " %s / %s |" % ISSUE.get(r["name"], ("", ""))
        print(line)


if __name__ == "__main__":
    main()
