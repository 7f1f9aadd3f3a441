"""Attention fusion: llama.cpp's attention without flash attention -> one FLASH_ATTN_EXT.

What is matched (llm_graph_context::build_attn_mha with flash attention off), from structure only:

    kq   = mul_mat(k, q)                       k [DK, n_kv, H_kv, nk3], q [DK, n_q, H, ne3] (permuted)
    kq   = scale(tanh(scale(kq, a)), c)        optional: attn_soft_cap / Grok's softcap (any SCALEs
                                               with no bias around one TANH), or plain SCALEs
    kq   = soft_max_ext(kq, mask, s, max_bias) (soft_max: no mask, s = 1)
    vt   = cont(transpose(v)), or the v_trans cache layout (any [n_kv, DV, H_kv, nv3] view)
    kqv  = mul_mat(vt, kq)                     [DV, n_q, H, ne3]
    out  = permute(kqv, 0, 2, 1, 3)            (optional) [DV, H, n_q, ne3]: FLASH_ATTN_EXT's layout

and swapped for flash_attn_ext(q, k, v, mask, scale, max_bias, softcap) where v = the transpose
of vt (so V may stay a view of K: MLA's V-is-a-view signal survives). GQA is mul_mat's block
broadcast (head h reads KV head h // (H / H_kv)), FLASH_ATTN_EXT's own. The softmax scale s and
the SCALEs fold into FA's scale; a softcap chain a, c becomes FA softcap = s*c and scale = a*s*c
(softmax(s*c*tanh(a*qk)) == softmax(S*tanh(scale*qk / S)) with S = s*c). The mask is used as it is
(f32 or f16: FLASH_ATTN_EXT takes both).

Preconditions, each a logged near miss naming the node when it fails (Inductor's users rule):
the logits chain and the softmax are read only by the next node of the chain and are not graph
outputs; SCALEs have no bias; only one TANH; FLASH_ATTN_EXT accepts the operands; the backend
the region would run on (where kqv is placed) supports_op the fused node.

One difference by construction: a query row whose every logit is -inf (a fully masked row) is
NaN in the unfused softmax (0/0) and 0 from FLASH_ATTN_EXT; llama.cpp never reads such rows.

Replacement: when kqv's one reader is permute(kqv, 0, 2, 1, 3) the fused node takes that
permute's place (and its name); otherwise kqv becomes permute(fa, 0, 2, 1, 3) (contiguous, via a
cont, when some reader is a view) and the fused node carries kqv's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.registry import OPS
from minigraph.core.tensor import Tensor
from minigraph.ops.attention import PREC_F32, flash_attn_ext_add_sinks, flash_attn_ext_set_prec
from minigraph.passes.elementwise import user_names
from minigraph.passes.patterns import AX0213, Miss, P, PatternMatcher, normalise, relabel_chain
from minigraph.passes.pipeline import PassLog, Rewrite, Target
from minigraph.passes.template import norm_consumers

PASS = "attention"

# the anchor: kqv = mul_mat(vt, soft_max(...)); the rest is peeled by _logits
KQV = P("MUL_MAT", (P.var("vt"), P("SOFT_MAX", name="sm")), name="kqv")


@dataclass
class Region:
    """What a match found: FA's operands and parameters, and the nodes it replaces (in order)."""

    q: Tensor
    k: Tensor
    vt: Tensor
    mask: Optional[Tensor]
    scale: float
    max_bias: float
    softcap: float
    sinks: Optional[Tensor]
    chain: list          # kq, its SCALE/TANH nodes, the softmax (each read only by the next)


def _who(t: Tensor) -> str:
    return f"{t.op} {describe(t)}"


def _logits(sm: Tensor) -> Union[tuple, Miss]:
    """Peel the softmax input down to kq = mul_mat(k, q): (kq, chain nodes, outer, inner, tanh?)
    where the softmax sees outer * tanh(inner * kq) (or outer * kq without a TANH)."""
    outer, inner, tanh = 1.0, 1.0, False
    chain: list[Tensor] = []
    x = normalise(sm.src[0])
    while x is not None and x.op in ("SCALE", "TANH"):
        if x.op == "TANH":
            if tanh:
                return Miss(x, "a second TANH before the softmax (one softcap is all FLASH_ATTN_EXT has)")
            tanh = True
        elif x.op_params.get("b", 0.0) != 0.0:
            return Miss(x, f"SCALE with a bias (b={x.op_params['b']}) before the softmax: not a softmax scale")
        elif tanh:
            inner *= float(x.op_params["s"])
        else:
            outer *= float(x.op_params["s"])
        chain.append(x)
        x = normalise(x.src[0])
    if x is None or x.op != "MUL_MAT":
        return Miss(x if x is not None else sm, f"the softmax reads {x.op if x is not None else 'nothing'} "
                                                "where the attention pattern has kq = mul_mat(k, q)")
    chain.append(x)
    return x, chain[::-1], outer, inner, tanh


def _region(kqv: Tensor, caps: dict) -> Union[Region, Miss]:
    sm = caps["sm"]
    peeled = _logits(sm)
    if isinstance(peeled, Miss):
        return peeled
    kq, chain, outer, inner, tanh = peeled
    s = float(sm.op_params["scale"])
    if tanh:
        softcap = s * outer
        if softcap == 0.0:
            return Miss(sm, "the softcap chain scales the logits to zero")
        scale = inner * softcap
    else:
        scale, softcap = s * outer, 0.0
    mask = sm.src[1] if sm.op_params.get("has_mask") else None
    sinks = sm.src[2] if sm.op_params.get("has_sinks") else None
    return Region(q=kq.src[1], k=kq.src[0], vt=caps["vt"], mask=mask, scale=scale,
                  max_bias=float(sm.op_params["max_bias"]), softcap=softcap, sinks=sinks, chain=chain + [sm])


ATTENTION = PatternMatcher([(KQV, _region)])


def _v_for_fa(ctx: Context, vt: Tensor) -> Tensor:
    """FLASH_ATTN_EXT's v [DV, n_kv, H_kv, nv3] from mul_mat's vt [n_kv, DV, H_kv, nv3]: the v of
    cont(transpose(v)) (no copy; V stays a view of K), else a transposed view of vt (v_trans cache)."""
    for x in relabel_chain(vt):
        if x.op == "TRANSPOSE" and x.ne == vt.ne:
            return x.src[0]
    return ctx.transpose(vt)


def _dead_v_chain(vt: Tensor, kqv: Tensor, readers: dict, keep: set) -> list[Tensor]:
    """The cont(transpose(v)) nodes that only this kqv reads (and no one keeps): they leave the
    graph with it."""
    out: list[Tensor] = []
    nxt = kqv
    for x in relabel_chain(vt):
        if x.op is None or id(x) in keep or any(u is not nxt for u in readers.get(id(x), ())):
            break
        out.append(x)
        if x.op == "TRANSPOSE":
            return out
        nxt = x
    return []


def _single_users(r: Region, kqv: Tensor, consumers: dict, keep_norm: set) -> Optional[Miss]:
    """Every chain node is read only by the next one (kqv for the softmax) and is not an output."""
    for x, nxt in zip(r.chain, r.chain[1:] + [kqv]):
        if id(x) in keep_norm:
            return Miss(x, f"{x.op} of the attention is a graph output (its value would disappear)")
        readers = [c for c, _ in consumers.get(id(x), [])]
        others = [c for c in readers if c is not nxt]
        if others:
            return Miss(x, f"{x.op} of the attention is also read by {_who(others[0])} (fusing would drop it)")
    return None


def _replacement(ctx: Context, kqv: Tensor, fa: Tensor, consumers: dict, keep_norm: set,
                 graph: Graph) -> tuple[dict, list, list]:
    """(replace, keep, absorbed-extra): where the fused node's value goes in the graph."""
    readers = consumers.get(id(kqv), [])
    if len(readers) == 1 and id(kqv) not in keep_norm:
        c = readers[0][0]
        if (c.op == "PERMUTE" and all(c.op_params.get(a) == v for a, v in AX0213.items())
                and normalise(c.src[0]) is kqv and c.src[0].ne == kqv.ne and c.ne == fa.ne):
            fa.name = c.name or kqv.name
            return {id(c): fa}, [c], [c]
    fa.name = kqv.name
    view_readers = any(OPS[c.op].is_view for c, _ in readers) or any(
        OPS[n.op].is_view and n.src and n.src[0] is kqv for n in graph.nodes)
    new = ctx.permute(fa, 0, 2, 1, 3)
    new = ctx.cont(new) if view_readers or id(kqv) in keep_norm else new
    new.name = f"{kqv.name} (permuted)" if kqv.name else ""
    return {id(kqv): new}, [kqv], []


def attention_pass(graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    ctx = Context()
    consumers = None
    readers: dict[int, list[Tensor]] = {}
    keep_norm: set = set()
    taken: set[int] = set()
    rewrites = []
    for kqv in graph.nodes:
        if kqv.op != "MUL_MAT" or id(kqv) in taken:
            continue
        r, misses = ATTENTION.rewrite(kqv)
        for miss in misses:
            log.add(PASS, "near_miss", miss)
        if r is None:
            continue
        if consumers is None:
            consumers = norm_consumers(graph.nodes)
            keep_norm = {id(normalise(t)) for t in graph.nodes + graph.leafs if id(t) in keep}
            for n in graph.nodes:
                for x in n.src:
                    if x is not None:
                        readers.setdefault(id(x), []).append(n)
        miss = _single_users(r, kqv, consumers, keep_norm)
        if miss is not None:
            log.add(PASS, "near_miss", miss)
            continue
        if taken & {id(x) for x in r.chain}:
            log.add(PASS, "near_miss", Miss(kqv, "region overlaps one already rewritten"))
            continue
        try:
            fa = ctx.flash_attn_ext(r.q, r.k, _v_for_fa(ctx, r.vt), r.mask, r.scale, r.max_bias, r.softcap)
            flash_attn_ext_add_sinks(fa, r.sinks)   # the softmax's sinks (gpt-oss) become FA's
        except MinigraphError as e:
            log.add(PASS, "near_miss", Miss(kqv, f"FLASH_ATTN_EXT refuses the operands: {e}"))
            continue
        flash_attn_ext_set_prec(fa, PREC_F32)
        backend = target.placement(kqv)
        ok = target.supports(backend, fa) if backend is not None else None
        if not ok:
            why = ok.reason if ok is not None else "no backend runs kqv"
            log.add(PASS, "refused", f"{_who(kqv)}: {getattr(backend, 'name', '?')} does not support "
                                     f"FLASH_ATTN_EXT here: {why}")
            continue
        replace, kept, extra = _replacement(ctx, kqv, fa, consumers, keep_norm, graph)
        absorbed = r.chain + _dead_v_chain(r.vt, kqv, readers, keep)[::-1] + [kqv] + extra
        fa.op_params["fused_from"] = [n.op for n in absorbed]
        fa.op_params["fused_pattern"] = PASS
        fa.op_params["fused_names"] = [n for n in user_names(absorbed) if n != fa.name]
        taken |= {id(x) for x in absorbed}
        rewrites.append(Rewrite(PASS, fa, replace=replace, keep=kept, absorbed=absorbed))
        q, k = r.q, r.k
        log.add(PASS, "fused", f"{len(absorbed)} nodes -> FLASH_ATTN_EXT DK={q.ne[0]} DV={r.vt.ne[1]} "
                               f"n_head={q.ne[2]} n_head_kv={k.ne[2]} n_q={q.ne[1]} n_kv={k.ne[1]} "
                               f"scale={r.scale:.6g} max_bias={r.max_bias:g} softcap={r.softcap:g}")
    return rewrites
