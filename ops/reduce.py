"""Reductions and norms: SUM, SUM_ROWS, MEAN, CUMSUM (any axis), L2_NORM, RMS_NORM, NORM, SOFT_MAX.

Rows are along ne0 (numpy's last axis) unless an op says otherwise.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError, expect
from minigraph.core.tensor import Tensor

from minigraph.ops.common import F32, check_float, check_int, check_number, check_tensor
from minigraph.core.registry import OpDef, builder, register, uniform_sample

# sums of positive values: a zero-centred sum's NMSE fails by cancellation (llama.cpp #17471)
_POSITIVE = uniform_sample(0.1, 1.0)
SUM = register(OpDef("SUM", "reduce", lambda node, a: a.sum().reshape(1, 1, 1, 1),
                     rebuild=lambda ctx, spec, a: ctx.sum(a), sample=_POSITIVE))
SUM_ROWS = register(OpDef("SUM_ROWS", "reduce", lambda node, a: a.sum(axis=3, keepdims=True),
                          rebuild=lambda ctx, spec, a: ctx.sum_rows(a), sample=_POSITIVE))
MEAN = register(OpDef("MEAN", "reduce", lambda node, a: a.mean(axis=3, keepdims=True),
                      rebuild=lambda ctx, spec, a: ctx.mean(a), sample=_POSITIVE))
CUMSUM = register(OpDef("CUMSUM", "reduce", lambda node, a, dim: np.cumsum(a, axis=3 - dim), params=("dim",),
                        doc="inclusive prefix sum along ne[dim] (ggml: dim 0 only)",
                        rebuild=lambda ctx, spec, a: ctx.cumsum(a, spec.params.get("dim"))))


def _ref_l2(node, a, eps):
    return a / np.maximum(np.sqrt((a * a).sum(axis=3, keepdims=True)), eps)


def _ref_rms(node, a, eps):
    return a / np.sqrt((a * a).mean(axis=3, keepdims=True) + eps)


def _ref_norm(node, a, eps):
    d = a - a.mean(axis=3, keepdims=True)
    return d / np.sqrt((d * d).mean(axis=3, keepdims=True) + eps)


def _rebuild_norm(name: str):
    return lambda ctx, spec, a: getattr(ctx, name)(a, spec.params.get("eps"))


L2_NORM = register(OpDef("L2_NORM", "reduce", _ref_l2, params=("eps",), float_params=("eps",), flops=lambda n: 3.0 * np.prod(n.ne),
                         rebuild=_rebuild_norm("l2_norm")))
RMS_NORM = register(OpDef("RMS_NORM", "reduce", _ref_rms, params=("eps",), float_params=("eps",), flops=lambda n: 3.0 * np.prod(n.ne),
                          rebuild=_rebuild_norm("rms_norm")))
NORM = register(OpDef("NORM", "reduce", _ref_norm, params=("eps",), float_params=("eps",), flops=lambda n: 5.0 * np.prod(n.ne),
                      rebuild=_rebuild_norm("norm")))


def alibi_slopes(n_head: int, max_bias: float) -> np.ndarray:
    """ggml's ALiBi slope per head (all 1 when max_bias is 0)."""
    if max_bias <= 0.0:
        return np.ones(n_head)
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    return np.array([m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1) for h in range(n_head)])


def _ref_soft_max(node, a, mask, sinks, scale, max_bias, has_mask, has_sinks):
    x = a * scale
    if has_mask:
        m = mask[:, :, : a.shape[2], :]
        m = np.tile(m, (a.shape[0] // m.shape[0], a.shape[1] // m.shape[1], 1, 1))
        x = x + alibi_slopes(a.shape[1], max_bias)[None, :, None, None] * m
    mx = x.max(axis=3, keepdims=True)
    if has_sinks:   # one more logit per head (ne2) in the denominator, never in the output
        sink = sinks.reshape(-1)[: a.shape[1]][None, :, None, None]
        mx = np.maximum(mx, sink)
    e = np.exp(x - mx)
    total = e.sum(axis=3, keepdims=True)
    if has_sinks:
        total = total + np.exp(sink - mx)
    return e / total


def _rebuild_soft_max(ctx, spec, a: Tensor, mask: Optional[Tensor], sinks: Optional[Tensor] = None) -> Tensor:
    t = ctx.soft_max_ext(a, mask, spec.params.get("scale"), spec.params.get("max_bias"))
    soft_max_add_sinks(t, sinks)
    return t


SOFT_MAX = register(OpDef("SOFT_MAX", "reduce", _ref_soft_max, params=("scale", "max_bias", "has_mask", "has_sinks"),
                          float_params=("scale", "max_bias"),
                          flops=lambda n: 4.0 * np.prod(n.ne),
                          rebuild=_rebuild_soft_max))


@builder("sum")
def sum_(ctx, a: Tensor) -> Tensor:
    """Sum of all elements (ggml_sum).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    result: [1, 1, 1, 1] f32 (ggml keeps a's type; the same for f32 input).
    """
    check_float("sum", a)
    return ctx.new_node(SUM, F32, [1, 1, 1, 1], [a])


@builder("sum_rows")
def sum_rows(ctx, a: Tensor) -> Tensor:
    """Sum of each row, along ne0 (ggml_sum_rows).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    result: [1, ne1, ne2, ne3] f32 (ggml keeps a's type; the same for f32 input).
    """
    check_float("sum_rows", a)
    return ctx.new_node(SUM_ROWS, F32, [1, a.ne[1], a.ne[2], a.ne[3]], [a])


@builder("mean")
def mean(ctx, a: Tensor) -> Tensor:
    """Mean of each row, along ne0 (ggml_mean).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    result: [1, ne1, ne2, ne3] f32.
    """
    check_float("mean", a)
    return ctx.new_node(MEAN, F32, [1, a.ne[1], a.ne[2], a.ne[3]], [a])


@builder("cumsum")
def cumsum(ctx, a: Tensor, dim: int = 0) -> Tensor:
    """Inclusive prefix sum along one axis, ne[dim] (ggml_cumsum).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    dim:    the axis to sum along, 0..3. Extension: ggml_cumsum has no dim and always sums along
            ne0; the default 0 keeps that behaviour.
    result: [ne0, ne1, ne2, ne3] f32, contiguous: result[i] = a[0] + ... + a[i] along dim.
    """
    check_float("cumsum", a)
    dim = check_int("cumsum", "dim", dim)
    expect(0 <= dim < 4, "cumsum", f"dim {dim} must be in 0..3", a)
    return ctx.new_node(CUMSUM, F32, a.ne, [a], params={"dim": dim})


def _norm(ctx, op: OpDef, a: Tensor, eps: float, name: str) -> Tensor:
    check_float(name, a)
    eps = check_number(name, "eps", eps)
    expect(eps >= 0.0, name, f"eps {eps} must be non-negative", a)
    return ctx.new_node(op, F32, a.ne, [a], params={"eps": eps})


@builder("l2_norm")
def l2_norm(ctx, a: Tensor, eps: float) -> Tensor:
    """Divide each row (along ne0) by its L2 norm: x / max(sqrt(sum(x*x)), eps) (ggml_l2_norm).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    eps:    lower bound of the norm (>= 0), so an all-zero row stays zero.
    result: [ne0, ne1, ne2, ne3] f32, contiguous.
    """
    return _norm(ctx, L2_NORM, a, eps, "l2_norm")


@builder("rms_norm")
def rms_norm(ctx, a: Tensor, eps: float) -> Tensor:
    """Root-mean-square normalisation of each row: x / sqrt(mean(x*x) + eps) (ggml_rms_norm).

    No learned weight: multiply the result by one (ctx.mul) as llama.cpp does.

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    eps:    added to the mean square (>= 0), e.g. 1e-6.
    result: [ne0, ne1, ne2, ne3] f32, contiguous.
    """
    return _norm(ctx, RMS_NORM, a, eps, "rms_norm")


@builder("norm")
def norm(ctx, a: Tensor, eps: float) -> Tensor:
    """Layer normalisation of each row: (x - mean) / sqrt(variance + eps) (ggml_norm).

    No learned weight or bias: apply them with ctx.mul and ctx.add as llama.cpp does.

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    eps:    added to the variance (>= 0), e.g. 1e-5.
    result: [ne0, ne1, ne2, ne3] f32, contiguous.
    """
    return _norm(ctx, NORM, a, eps, "norm")


@builder("soft_max")
def soft_max(ctx, a: Tensor) -> Tensor:
    """Softmax of each row along ne0 (ggml_soft_max): soft_max_ext(a, None, 1.0, 0.0).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    result: [ne0, ne1, ne2, ne3] f32, contiguous; each row sums to 1.
    """
    return soft_max_ext(ctx, a, None, 1.0, 0.0)


@builder("soft_max_ext")
def soft_max_ext(ctx, a: Tensor, mask: Optional[Tensor], scale: float, max_bias: float) -> Tensor:
    """Softmax along ne0 of a * scale + slope * mask, fused (ggml_soft_max_ext).

    The ALiBi slope of head h (h = the ne2 index) is 1 when max_bias is 0, else ggml's
    geometric sequence over the ne2 heads.

    a:        [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides (attention: [n_kv, n_tokens, n_head, n_seq]).
    mask:     None, or [ne0, >= ne1, ne2 / r2, ne3 / r3] f32 or f16, added to the scaled logits
              (-inf masks a position); only its first ne1 rows are read; it repeats over dims 2 and 3.
    scale:    factor applied to a before the mask (e.g. 1 / sqrt(head_dim)).
    max_bias: ALiBi maximum bias; 0.0 disables ALiBi.
    result:   [ne0, ne1, ne2, ne3] f32, contiguous; each row sums to 1.
    """
    check_float("soft_max_ext", a)
    params = {"scale": check_number("soft_max_ext", "scale", scale),
              "max_bias": check_number("soft_max_ext", "max_bias", max_bias), "has_mask": int(mask is not None)}
    if mask is not None:
        check_tensor("soft_max_ext", mask)
        expect(mask.type in (F32, dtypes.TYPE_F16) and mask.ne[0] == a.ne[0] and mask.ne[1] >= a.ne[1]
               and mask.ne[2] > 0 and mask.ne[3] > 0 and a.ne[2] % mask.ne[2] == 0 and a.ne[3] % mask.ne[3] == 0,
               "soft_max_ext", "mask must be f32/f16 [ne0, >= ne1, divisor of ne2, divisor of ne3]", a, mask)
    params["has_sinks"] = 0
    return ctx.new_node(SOFT_MAX, F32, a.ne, [a, mask, None], params=params)


def soft_max_add_sinks(a: Tensor, sinks: Optional[Tensor]) -> None:
    """ggml_soft_max_add_sinks: sinks f32 [n_head] (n_head = a's src ne2) become the SOFT_MAX
    node's src[2], one extra logit per head in each row's denominator (gpt-oss attention without
    flash attention; the probabilities no longer sum to 1). None removes them. Call before
    building the graph."""
    fn = "soft_max_add_sinks"
    if not isinstance(a, Tensor) or a.op != "SOFT_MAX":
        raise MinigraphError(f"{fn}: expects a SOFT_MAX node, got {getattr(a, 'op', type(a).__name__)!r}")
    if sinks is None:
        a.src[2] = None
        a.op_params["has_sinks"] = 0
        return
    check_tensor(fn, sinks)
    expect(a.src[2] is None, fn, "the node already has sinks", a, a.src[2])
    expect(sinks.type == F32 and sinks.ne[0] == a.src[0].ne[2], fn,
           f"sinks must be f32 with ne0 == n_head = {a.src[0].ne[2]} (the softmax input's ne2)", a.src[0], sinks)
    a.src[2] = sinks
    a.op_params["has_sinks"] = 1
