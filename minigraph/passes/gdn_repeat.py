"""GQA repeats into GATED_DELTA_NET: a q/k REPEAT that only repeats heads is dropped, the op reads
the H_k-head tensor itself (it broadcasts q/k heads: value head h reads q/k head h % H_k, or
h // (H_v / H_k) with gated_delta_net_set_bcast(node, GDN_BCAST_INTERLEAVED)).

Why: llama.cpp's callers repeat q and k up to H_v heads before the delta net (its chunked graph
cannot broadcast heads), and the delta-net passes fuse the region from the repeated q/k, so the
two REPEAT nodes (each writing H_v/H_k times the q/k bytes) stay in front of the fused op.

When the rewrite is exact (ggml's REPEAT is result[i] = a[i mod a.ne] in every dim; ggml's op maps
value head h to q/k head h % H_k and value sequence n to q/k sequence n // (n_seqs / n_seqs_qk)):
  tiled   q = repeat(x) with x [S, H_k, T, N_x] and the result [S, H_q, T, N_q] (ggml_repeat /
          ggml_repeat_4d on the head dim, what llama.cpp's Qwen3.5 builds): head h of q is head
          h % H_k of x, so the op on x reads head (h % H_q) % H_k = h % H_k, the same. Sequences:
          only N_x == N_q (not repeated) or N_x == 1 (then both maps give 0).
  interleaved  reshape(repeat_4d(reshape(x, S, 1, H_k, T*N), S, r, H_k, T*N), S, r*H_k, T, N)
          (llama.cpp's Qwen3-Next): head h of q is head h // r of x, not h % H_k. The new node
          takes bcast 1 (GDN_BCAST_INTERLEAVED: h // (H_v / H_k)), which equals h // r when the
          repeat makes all H_v heads (r H_k == H_v); H_k == 1 or r == 1 needs no switch. ggml.h
          plans the switch (TODO ggml_gated_delta_net_set_bcast, TAG_GGML_GDN_BCAST); a backend
          that does not support it keeps the repeat, a logged near miss (CPU and CUDA support it).
Preconditions: q and k are both such repeats of same-shaped tensors (the op needs q.ne == k.ne);
the backend that runs the GATED_DELTA_NET supports_op the new node. A REPEAT that other nodes
also read stays for them; the op reads its source either way.
"""
from __future__ import annotations

from typing import Optional, Union

from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.core.tensor import Tensor, is_contiguous
from minigraph.ops.gated_delta_net import gated_delta_net_get_bcast, gated_delta_net_set_bcast
from minigraph.passes.pipeline import PassLog, Rewrite, Target
from minigraph.passes.patterns import Miss, normalise

PASS = "gdn_repeat"


def _head_source(t: Tensor, Hv: int, bcast: int) -> Union[None, Miss, tuple[Tensor, tuple, Tensor, int]]:
    """For the q (or k) input t [S, H_q, T, N_q] of a GATED_DELTA_NET with H_v value heads and
    head map `bcast`: None when it is not a REPEAT (behind relabels), a Miss when it is one the op
    cannot absorb, else (x, ne, repeat, bcast): the tensor to read instead, the [S, H_k, T, N_x]
    shape to read it as and the head map the node then needs."""
    rep = normalise(t)
    if rep is None or rep.op != "REPEAT":
        return None
    x = rep.src[0]
    S, Hq, T, Nq = t.ne
    a, b = rep.ne, x.ne
    if a == t.ne and b[0] == S and b[2] == T and Hq % b[1] == 0:              # tiled
        if b[3] not in (Nq, 1):
            return Miss(rep, f"REPEAT tiles q/k sequences ({b[3]} -> {Nq}: n % {b[3]}) while "
                             f"GATED_DELTA_NET maps value sequence n to n // {Nq // b[3]}")
        if bcast and b[1] != Hq:
            return Miss(rep, "a tiled q/k repeat feeding a GATED_DELTA_NET that maps heads interleaved (bcast 1)")
        return x, (S, b[1], T, b[3]), rep, bcast
    if (a[0] == S and b[:1] == (S,) and b[1] == 1 and b[2:] == a[2:] and a[3] == T * Nq
            and a[1] * a[2] == Hq):                                              # interleaved
        r, Hk = a[1], a[2]
        if r == 1 or Hk == 1:
            return x, (S, Hk, T, Nq), rep, bcast
        if Hq != Hv or bcast:
            return Miss(rep, f"interleaved q/k repeat to {Hq} heads (head h reads h // {r}) feeding a GATED_DELTA_NET "
                             f"of {Hv} value heads{' that maps heads interleaved already' if bcast else ''}: "
                             "the op's interleaved map needs the repeat to make every value head")
        return x, (S, Hk, T, Nq), rep, 1
    return Miss(rep, f"REPEAT {list(b)} -> {list(a)} feeding GATED_DELTA_NET as {list(t.ne)} is not a "
                     "plain head repeat (S and T must stay, heads tile)")


def _as(ctx: Context, x: Tensor, ne: tuple) -> Tensor:
    if x.ne == ne:
        return x
    return ctx.reshape_4d(x if is_contiguous(x) else ctx.cont(x), *ne)


def _absorb(node: Tensor, target: Target, ctx: Context) -> Union[None, Miss, Rewrite]:
    bcast = gated_delta_net_get_bcast(node)
    found = [_head_source(node.src[i], node.src[2].ne[1], bcast) for i in (0, 1)]
    if found == [None, None]:
        return None
    for f in found:
        if isinstance(f, Miss):
            return f
    if None in found:
        which = "k" if found[1] is None else "q"
        return Miss(node, f"only {'q' if which == 'k' else 'k'} is a head REPEAT ({which} is not): "
                          "GATED_DELTA_NET needs q and k of one shape")
    (xq, neq, rq, bq), (xk, nek, rk, bk) = found
    if neq != nek or bq != bk:
        return Miss(node, f"q and k repeat differently: {list(neq)} and {list(nek)}, "
                          f"{'interleaved' if bq else 'tiled'} and {'interleaved' if bk else 'tiled'}")
    try:
        fused = ctx.gated_delta_net(_as(ctx, xq, neq), _as(ctx, xk, nek), *node.src[2:], node.op_params["K"])
        gated_delta_net_set_bcast(fused, bq)
    except MinigraphError as e:
        return Miss(node, f"GATED_DELTA_NET refuses the repeat's sources: {e}")
    backend = target.placement(node)
    ok = target.supports(backend, fused) if backend is not None else None
    if not ok:
        why = ok.reason if ok is not None else "no backend runs the node"
        return Miss(node, f"{getattr(backend, 'name', '?')} does not support the H_k={neq[1]} GATED_DELTA_NET"
                          f"{' with bcast 1' if bq else ''}: {why}")
    absorbed = [node, rq] + ([rk] if rk is not rq else [])                # q and k may be one tensor
    fused.name = node.name
    fused.op_params["fused_from"] = list(node.op_params.get("fused_from", ["GATED_DELTA_NET"])) + ["REPEAT"] * (len(absorbed) - 1)
    fused.op_params["fused_pattern"] = "+".join(p for p in (node.op_params.get("fused_pattern"), PASS) if p)
    fused.op_params["fused_names"] = list(node.op_params.get("fused_names", [])) + [r.name for r in absorbed[1:] if r.name]
    return Rewrite(PASS, fused, replace={id(node): fused}, keep=[node], absorbed=absorbed)


def gdn_repeat_pass(graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    ctx = Context()
    rewrites = []
    for node in graph.nodes:
        if node.op != "GATED_DELTA_NET":
            continue
        out: Optional[Union[Miss, Rewrite]] = _absorb(node, target, ctx)
        if out is None:
            continue
        if isinstance(out, Miss):
            log.add(PASS, "near_miss", out)
            continue
        rewrites.append(out)
        S, Hk = out.fused.src[0].ne[:2]
        how = " interleaved (bcast 1)" if gated_delta_net_get_bcast(out.fused) else ""
        log.add(PASS, "fused", f"{len(out.absorbed) - 1} q/k REPEAT -> GATED_DELTA_NET reads H_k={Hk} heads{how} "
                               f"(H_v={out.fused.src[2].ne[1]}, S={S})")
    return rewrites
