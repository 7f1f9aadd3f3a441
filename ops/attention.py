"""Attention: FLASH_ATTN_EXT (ggml_flash_attn_ext, ggml_flash_attn_ext_set_prec / _add_sinks).

Layout, as ggml (ne order, ne0 fastest):
    q     [DK, n_q,  n_head,    ne3]      f32
    k     [DK, n_kv, n_head_kv, nk3]      f32 / f16 / bf16 / KV_QUANT_TYPES, n_head % n_head_kv == 0, ne3 % nk3 == 0
    v     [DV, n_kv, n_head_v,  nv3]      same types (K's and V's may differ), n_head % n_head_v == 0 (DK != DV allowed)
    mask  [>= n_kv, >= n_q, m2, m3]       f16 (as ggml) or f32, n_head % m2 == 0, ne3 % m3 == 0; or None
    sinks [n_head]                        f32 (src[4], set by flash_attn_ext_add_sinks)
    result [DV, n_head, n_q, ne3]         f32: note the permuted order (heads before query rows)

Per (query row, head h): s_j = scale * q.k_j (then softcap * tanh(s_j / softcap) when
logit_softcap != 0) + slope_h * mask[j]; out = sum_j softmax(s)_j v_j, where a sink adds
exp(sink_h) to the softmax denominator only. slope_h is ALiBi's (ggml's m0/m1 formula over
n_head_log2) when max_bias > 0, else 1. A row whose every logit is -inf (and no sink) gives 0.

"V is a view of K" (MLA: V's rows are the first DV values of K's rows, the same storage with
the same row strides) is detected here and recorded as the param `v_in_k` (the element offset of
V's row inside K's row, -1 otherwise), so kernels may take V from the K row they already loaded.

A quantized KV cache (KV_QUANT_TYPES: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, llama.cpp's cache types):
the reference reads the dequantized K and V (ggml's to_float). ggml's CPU kernel also quantizes
q to K's vec_dot type (Q8_0 / Q8_1) for the dot products; minigraph's CPU kernel does the same,
so both sit ~1e-6 NMSE from this reference (q keeps ~8 bits a block). An MLA V view of a
quantized K must start on a block (a view that splits a block is refused when it is made).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError, expect
from minigraph.core.registry import OpDef, builder, register
from minigraph.core.tensor import Tensor

from minigraph.ops.common import F32, check_float, check_number, check_tensor

PREC_DEFAULT = 0
PREC_F32 = 10
OP = "flash_attn_ext"
# the block-quantized K/V types (ggml's CPU takes them: q quantized to the vec_dot type, V to_float)
KV_QUANT_TYPES = (dtypes.TYPE_Q8_0, dtypes.TYPE_Q4_0, dtypes.TYPE_Q4_1, dtypes.TYPE_Q5_0, dtypes.TYPE_Q5_1)


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ggml's ALiBi slope per head (float64): m0^(h+1) below n_head_log2, m1^(2(h-n_head_log2)+1) above."""
    if max_bias <= 0.0:
        return np.ones(n_head)
    n_head_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_head_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_head_log2)
    h = np.arange(n_head)
    return np.where(h < n_head_log2, m0 ** (h + 1), m1 ** (2 * (h - n_head_log2) + 1))


def _heads(x: np.ndarray, n3: int, n2: int) -> np.ndarray:
    """Broadcast a (x3, x2, ...) array to (n3, n2, ...) as ggml does: index i reads i // (n / x)."""
    return np.repeat(np.repeat(x, n3 // x.shape[0], axis=0), n2 // x.shape[1], axis=1)


def _ref_flash_attn_ext(node, q, k, v, mask, sinks, scale, max_bias, logit_softcap, prec, v_in_k,
                        has_mask, has_sinks):
    n3, n_head, n_q, _ = q.shape
    n_kv = k.shape[2]
    s = np.matmul(q, np.swapaxes(_heads(k, n3, n_head), -1, -2)) * scale   # (n3, H, n_q, n_kv)
    if logit_softcap != 0.0:
        s = logit_softcap * np.tanh(s / logit_softcap)
    if has_mask:
        i3 = np.arange(n3) % mask.shape[0]
        i2 = np.arange(n_head) % mask.shape[1]
        m = mask[i3[:, None], i2[None, :], :n_q, :n_kv]
        s = s + alibi_slopes(n_head, max_bias)[None, :, None, None] * m
    top = s.max(axis=-1, initial=-np.inf)
    if has_sinks:
        sink = sinks.reshape(-1)[:n_head][None, :, None]
        top = np.maximum(top, sink)
    safe = np.where(np.isfinite(top), top, 0.0)
    p = np.exp(s - safe[..., None])
    den = p.sum(axis=-1)
    if has_sinks:
        den = den + np.exp(sink - safe)
    out = np.matmul(p, _heads(v, n3, n_head)) / np.where(den > 0, den, 1.0)[..., None]
    out = np.where((den > 0)[..., None], out, 0.0)
    return np.swapaxes(out, 1, 2)   # (n3, n_q, H, DV): ggml's permute(0, 2, 1, 3)


def _flops(node) -> float:
    q, k, v = node.src[0], node.src[1], node.src[2]
    return 2.0 * q.ne[1] * q.ne[2] * q.ne[3] * k.ne[1] * (k.ne[0] + v.ne[0])


def _sample(node, i: int, rng: np.random.Generator):
    """The mask (source 3) in [-2, 0]: an additive bias, as a causal or padding mask's finite part."""
    return rng.uniform(-2.0, 0.0, size=tuple(reversed(node.src[3].ne))) if i == 3 else None


FLASH_ATTN_EXT = register(OpDef(
    "FLASH_ATTN_EXT", "attention", _ref_flash_attn_ext, sample=_sample,
    params=("scale", "max_bias", "logit_softcap", "prec", "v_in_k", "has_mask", "has_sinks"),
    float_params=("scale", "max_bias", "logit_softcap"), flops=_flops,
    rebuild=lambda ctx, spec, q, k, v, mask=None, sinks=None: _rebuild(ctx, spec, q, k, v, mask, sinks),
    doc="ggml_flash_attn_ext: softmax(scale*q.k + slope*mask) v per head, result [DV, n_head, n_q, ne3]"))


def v_offset_in_k(k: Tensor, v: Tensor) -> int:
    """Element offset of V's row inside K's row when V is a view of K's storage with K's row
    strides and V's rows lie inside K's rows (MLA's V = view_4d(k, DV, ..., k.nb[1..3], offs)); else -1."""
    if v.view_src is None or v.root is not k.root or v.type != k.type:
        return -1
    if tuple(v.nb[1:]) != tuple(k.nb[1:]) or tuple(v.ne[1:]) != tuple(k.ne[1:]) or v.nb[0] != k.nb[0]:
        return -1
    k_offs = k.view_offs if k.view_src is not None else 0
    delta = v.view_offs - k_offs
    if k.nb[0] <= 0 or delta < 0 or delta % k.nb[0]:
        return -1
    off = delta // k.nb[0] * dtypes.blck_size(k.type)   # nb0 is a block's bytes for a quantized K
    return off if off + v.ne[0] <= k.ne[0] else -1


@builder("flash_attn_ext")
def flash_attn_ext(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float,
                   max_bias: float = 0.0, logit_softcap: float = 0.0) -> Tensor:
    """Fused attention softmax(scale * q.k^T + mask + alibi) . v, online softmax (ggml_flash_attn_ext).

    q:      [DK, n_q, n_head, ne3] f32.
    k:      [DK, n_kv, n_head_kv, nk3] f32/f16/bf16, or a quantized cache (q8_0, q4_0, q4_1, q5_0,
            q5_1: then q is quantized to K's vec_dot type for the dots, as ggml's CPU does); any
            strides and byte offset (whole blocks when quantized); n_head % n_head_kv == 0
            (GQA/MQA). Extension: nk3 may divide ne3 (ggml asks nk3 == ne3).
    v:      [DV, n_kv, n_head_kv, nv3] of the same types (dequantized rows when quantized); DV may
            differ from DK (576/512, 192/128). When V is a view of K (same root, V's rows inside
            K's rows, as MLA builds it) kernels read K once.
    mask:   [>= n_kv, >= n_q, m2, m3] f16 (as ggml) or f32 (extension), added to the scores; or None.
    scale:  the score scale, usually 1/sqrt(DK).
    max_bias: ALiBi maximum bias (0: off; > 0 needs a mask), slopes as ggml's m0/m1 over n_head.
    logit_softcap: 0 for off, else scores become softcap * tanh(scores / softcap).
    result: [DV, n_head, n_q, ne3] f32 (note: head before query row, as ggml). See the module
            docstring for the math; mg.flash_attn_ext_add_sinks adds gpt-oss sinks.
    """
    check_tensor(OP, q, k, v)
    check_float(OP, q)
    for name, t in (("k", k), ("v", v)):
        expect(t.type in dtypes.FLOAT_TYPES or t.type in KV_QUANT_TYPES, OP, f"{name} must be f32/f16/bf16 or a "
               f"quantized KV cache type (q8_0, q4_0, q4_1, q5_0, q5_1), '{t.name}' is {dtypes.type_name(t.type)}", q, k, v)
    expect(q.type == F32, OP, "q must be f32 (as ggml's CPU kernel reads it)", q, k, v)
    params = {"scale": check_number(OP, "scale", scale), "max_bias": check_number(OP, "max_bias", max_bias),
              "logit_softcap": check_number(OP, "logit_softcap", logit_softcap)}
    expect(all(math.isfinite(x) for x in params.values()), OP, f"scale/max_bias/logit_softcap must be finite, got {params}", q)
    DK, n_q, n_head, n3 = q.ne
    expect(k.ne[0] == DK, OP, f"k needs ne0 == q's ne0 (DK = {DK})", q, k, v)
    expect(v.ne[1] == k.ne[1], OP, f"v needs ne1 == k's ne1 (n_kv = {k.ne[1]})", q, k, v)
    for name, t in (("k", k), ("v", v)):
        expect(t.ne[2] > 0 and t.ne[3] > 0 and n_head % t.ne[2] == 0 and n3 % t.ne[3] == 0, OP,
               f"{name}'s ne2 (kv heads) must divide q's ne2 = {n_head} and its ne3 must divide q's ne3 = {n3}", q, k, v)
    if mask is not None:
        check_tensor(OP, mask)
        expect(mask.type in (F32, dtypes.TYPE_F16), OP, "mask must be f16 (as ggml) or f32", q, k, v, mask)
        expect(mask.ne[0] >= k.ne[1] and mask.ne[1] >= n_q, OP,
               f"mask must be at least [n_kv = {k.ne[1]}, n_q = {n_q}]", q, k, v, mask)
        expect(mask.ne[2] > 0 and mask.ne[3] > 0 and n_head % mask.ne[2] == 0 and n3 % mask.ne[3] == 0, OP,
               f"mask's ne2 must divide n_head = {n_head} and its ne3 must divide ne3 = {n3}", q, k, v, mask)
    expect(params["max_bias"] <= 0.0 or mask is not None, OP, "max_bias > 0 (ALiBi) needs a mask, as ggml", q, k, v)
    params.update(prec=PREC_DEFAULT, v_in_k=v_offset_in_k(k, v), has_mask=int(mask is not None), has_sinks=0)
    return ctx.new_node(FLASH_ATTN_EXT, F32, [v.ne[0], n_head, n_q, n3], [q, k, v, mask, None], params=params)


def _check_node(fn: str, a: Any) -> None:
    if not isinstance(a, Tensor) or a.op != "FLASH_ATTN_EXT":
        raise MinigraphError(f"{fn}: expects a FLASH_ATTN_EXT node, got {getattr(a, 'op', type(a).__name__)!r}")


def flash_attn_ext_set_prec(a: Tensor, prec: int) -> None:
    """ggml_flash_attn_ext_set_prec: PREC_DEFAULT (0) or PREC_F32 (10). minigraph's kernels
    accumulate in f32 either way; the value is kept for dumps and graph files."""
    _check_node("flash_attn_ext_set_prec", a)
    if isinstance(prec, bool) or prec not in (PREC_DEFAULT, PREC_F32):
        raise MinigraphError(f"flash_attn_ext_set_prec: prec must be PREC_DEFAULT (0) or PREC_F32 (10), got {prec!r}")
    a.op_params["prec"] = int(prec)


def flash_attn_ext_get_prec(a: Tensor) -> int:
    """ggml_flash_attn_ext_get_prec."""
    _check_node("flash_attn_ext_get_prec", a)
    return int(a.op_params["prec"])


def flash_attn_ext_add_sinks(a: Tensor, sinks: Optional[Tensor]) -> None:
    """ggml_flash_attn_ext_add_sinks: sinks f32 [n_head] become src[4], one extra logit per head
    in the softmax denominator (gpt-oss). None removes them. Call before building the graph."""
    _check_node("flash_attn_ext_add_sinks", a)
    if sinks is None:
        a.src[4] = None
        a.op_params["has_sinks"] = 0
        return
    check_tensor("flash_attn_ext_add_sinks", sinks)
    expect(a.src[4] is None, "flash_attn_ext_add_sinks", "the node already has sinks", a, a.src[4])
    expect(sinks.type == F32 and sinks.ne[0] == a.src[0].ne[2], "flash_attn_ext_add_sinks",
           f"sinks must be f32 with ne0 == n_head = {a.src[0].ne[2]}", a.src[0], sinks)
    a.src[4] = sinks
    a.op_params["has_sinks"] = 1


def _rebuild(ctx, spec: Any, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
             sinks: Optional[Tensor]) -> Tensor:
    """A FLASH_ATTN_EXT node from a graph file, through the builder and the two module functions
    (in another engine's context, ggml-python's for `test-backend-ops --against ggml`, its own)."""
    p = spec.params
    t = ctx.flash_attn_ext(q, k, v, mask, p.get("scale"), p.get("max_bias", 0.0), p.get("logit_softcap", 0.0))
    add_sinks, set_prec = ((flash_attn_ext_add_sinks, flash_attn_ext_set_prec) if isinstance(t, Tensor)
                           else (ctx.flash_attn_ext_add_sinks, ctx.flash_attn_ext_set_prec))
    if sinks is not None:
        add_sinks(t, sinks)
    if "prec" in p:
        set_prec(t, p["prec"])
    return t
