"""ROPE: rotary position embedding (ggml_rope, ggml_rope_ext and their _inplace forms), with YaRN.

a [ne0 = head dim, ne1 = n_head, ne2 = n_tokens, ne3] (f32 or f16), b I32 positions [ne2], c an
optional f32 freq_factors [>= n_dims/2]. The result has a's ne and type: a new contiguous tensor,
or (the _inplace forms) a view of a written in place, with a's strides, so a strided view of a
K cache (the pe part of each row, at an offset) is roped where it lies.

Pair i (0 <= i < n_dims/2) of row (i1, i2, i3) is rotated by the angle of position p = b[i2]:
    theta_extrap = p * freq_base^(-2i/n_dims) / freq_factors[i]
    theta_interp = freq_scale * theta_extrap
    theta        = theta_interp                                       (ext_factor == 0)
                 = theta_interp * (1 - r) + theta_extrap * r           r = ramp(i) * ext_factor
    (x0, x1)    -> mscale * (x0 cos - x1 sin, x0 sin + x1 cos)
mscale is attn_factor, times 1 + 0.1 ln(1/freq_scale) when ext_factor != 0; ramp(i) falls from 1
to 0 between YaRN's correction dims (yarn_corr_dims). Mode ROPE_TYPE_NORMAL pairs elements
(2i, 2i+1), ROPE_TYPE_NEOX pairs (i, i + n_dims/2). Elements n_dims..ne0-1 are copied.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import expect
from minigraph.core.registry import OpDef, builder, register
from minigraph.core.tensor import Tensor, is_vector, nelements

from minigraph.ops.common import check_int, check_number, check_tensor

# ggml.h's GGML_ROPE_TYPE_* values; ROPE_TYPE_NORM is llama.cpp's name for NORMAL
ROPE_TYPE_NORMAL = 0
ROPE_TYPE_NORM = ROPE_TYPE_NORMAL
ROPE_TYPE_NEOX = 2
ROPE_TYPE_MROPE = 8
ROPE_TYPE_VISION = 24
ROPE_TYPE_IMROPE = 40
_MODE_NAMES = {ROPE_TYPE_MROPE: "MROPE", ROPE_TYPE_VISION: "VISION", ROPE_TYPE_IMROPE: "IMROPE"}

PARAMS = ("n_dims", "mode", "n_ctx_orig", "freq_base", "freq_scale", "ext_factor", "attn_factor",
          "beta_fast", "beta_slow", "has_freq_factors")
BUILDER_PARAMS = PARAMS[:-1]   # has_freq_factors is recorded from c, not passed
FLOAT_PARAMS = ("freq_base", "freq_scale", "ext_factor", "attn_factor", "beta_fast", "beta_slow")


# -- YaRN's scalar math (plain Python: the reference uses it, the backends compile it) ----------

def yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow):
    """ggml_rope_yarn_corr_dims: (low, high) pair indices where the ramp leaves 1 and reaches 0.

    A pair whose wavelength fits n_ctx_orig/beta rotations lies at index n_dims*ln(n_ctx_orig/
    (2 pi beta)) / (2 ln freq_base); low is floored at 0, high capped at n_dims - 1."""
    den = 2.0 * math.log(freq_base)
    start = math.floor(n_dims * math.log(n_ctx_orig / (beta_fast * 2.0 * math.pi)) / den)
    end = math.ceil(n_dims * math.log(n_ctx_orig / (beta_slow * 2.0 * math.pi)) / den)
    return max(0.0, start), min(n_dims - 1.0, end)


def yarn_mscale(attn_factor, freq_scale, ext_factor):
    """The magnitude factor applied to cos and sin."""
    if ext_factor != 0.0:
        return attn_factor * (1.0 + 0.1 * math.log(1.0 / freq_scale))
    return attn_factor


def rope_yarn(theta_extrap, freq_scale, low, high, i, ext_factor, mscale):
    """(cos, sin) * mscale of pair i's angle: interpolated, blended with the extrapolated angle
    by YaRN's ramp when ext_factor != 0 (ggml's rope_yarn; mscale from yarn_mscale)."""
    theta_interp = freq_scale * theta_extrap
    theta = theta_interp
    if ext_factor != 0.0:
        y = (i - low) / max(0.001, high - low)
        ramp = (1.0 - min(1.0, max(0.0, y))) * ext_factor
        theta = theta_interp * (1.0 - ramp) + theta_extrap * ramp
    return math.cos(theta) * mscale, math.sin(theta) * mscale


# -- the op -------------------------------------------------------------------------------------

def _ref_rope(node, a, pos, ff, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor,
              attn_factor, beta_fast, beta_slow, has_freq_factors):
    """float64 reference: a (ne3, ne2, ne1, ne0), pos (1, 1, 1, ne2), ff (1, 1, 1, >= n_dims/2)."""
    half = n_dims // 2
    i = np.arange(half, dtype=np.float64)
    theta_extrap = pos.reshape(-1)[:, None].astype(np.float64) * freq_base ** (-2.0 * i / n_dims)
    if has_freq_factors:
        theta_extrap = theta_extrap / ff.reshape(-1)[:half]
    theta = freq_scale * theta_extrap
    if ext_factor != 0.0:
        low, high = yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
        ramp = (1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)) * ext_factor
        theta = theta * (1.0 - ramp) + theta_extrap * ramp
    mscale = yarn_mscale(attn_factor, freq_scale, ext_factor)
    cos = (np.cos(theta) * mscale)[None, :, None, :]   # (1, ne2, 1, half): one angle per token
    sin = (np.sin(theta) * mscale)[None, :, None, :]
    out = np.array(a, np.float64)
    if mode == ROPE_TYPE_NEOX:
        x0, x1 = a[..., :half], a[..., half:n_dims]
        out[..., :half], out[..., half:n_dims] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    else:
        x0, x1 = a[..., 0:n_dims:2], a[..., 1:n_dims:2]
        out[..., 0:n_dims:2], out[..., 1:n_dims:2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
    return out


def _rope_flops(node) -> float:
    """6 per rotated pair (4 mul, 2 add) plus the copied tail; the angles are per token."""
    n_dims = node.op_params["n_dims"]
    rows = nelements(node) // max(node.ne[0], 1)
    return float(rows * (3 * n_dims + node.ne[0] - n_dims))


def _sample(node, i: int, rng: np.random.Generator):
    """Positions in [0, 1024) (a context's worth of angles, not just 0 and 1), freq_factors in [0.5, 2)."""
    shape = tuple(reversed(node.src[i].ne))
    if i == 1:
        return rng.integers(0, 1024, size=shape)
    if i == 2:
        return rng.uniform(0.5, 2.0, size=shape)
    return None


ROPE = register(OpDef("ROPE", "rope", _ref_rope, params=PARAMS, float_params=FLOAT_PARAMS, flops=_rope_flops, sample=_sample,
                      rebuild=lambda ctx, spec, a, b, c=None: (ctx.rope_ext_inplace if spec.inplace else ctx.rope_ext)(
                          a, b, c, *(spec.params.get(k) for k in BUILDER_PARAMS)),
                      doc="rotary position embedding of pairs of ne0, angle from b[i2] (ggml_rope_ext)"))


def _rope(ctx, a: Tensor, b: Tensor, c: Optional[Tensor], n_dims, mode, n_ctx_orig, freq_base, freq_scale,
          ext_factor, attn_factor, beta_fast, beta_slow, inplace: bool, name: str) -> Tensor:
    check_tensor(name, a, b)
    ts = [a, b] + ([c] if c is not None else [])
    n_dims, mode, n_ctx_orig = (check_int(name, k, v) for k, v in
                                (("n_dims", n_dims), ("mode", mode), ("n_ctx_orig", n_ctx_orig)))
    floats = {k: check_number(name, k, v) for k, v in zip(FLOAT_PARAMS, (freq_base, freq_scale, ext_factor,
                                                                         attn_factor, beta_fast, beta_slow))}
    expect(a.type in (dtypes.TYPE_F32, dtypes.TYPE_F16), name, f"a must be f32 or f16, got {dtypes.type_name(a.type)}", *ts)
    expect(mode & 1 == 0, name, f"mode {mode}: mode & 1 is no longer supported by ggml", *ts)
    expect(mode not in _MODE_NAMES, name, f"mode {mode} (ROPE_TYPE_{_MODE_NAMES.get(mode)}) is ggml_rope_multi's: "
           "minigraph implements ROPE_TYPE_NORMAL (0) and ROPE_TYPE_NEOX (2)", *ts)
    expect(mode in (ROPE_TYPE_NORMAL, ROPE_TYPE_NEOX), name,
           f"unknown mode {mode}: expected ROPE_TYPE_NORMAL (0) or ROPE_TYPE_NEOX (2)", *ts)
    expect(0 < n_dims <= a.ne[0] and n_dims % 2 == 0, name,
           f"n_dims {n_dims} must be even and in 1..ne0 = {a.ne[0]}", *ts)
    expect(b.type == dtypes.TYPE_I32 and is_vector(b) and b.ne[0] == a.ne[2], name,
           f"b must be an I32 vector of positions with ne0 = a's ne2 = {a.ne[2]}", *ts)
    if c is not None:
        check_tensor(name, c)
        expect(c.type == dtypes.TYPE_F32 and c.ne[0] >= n_dims // 2, name,
               f"c (freq_factors) must be f32 with ne0 >= n_dims/2 = {n_dims // 2}", *ts)
    expect(floats["freq_base"] > 0.0, name, f"freq_base {floats['freq_base']} must be positive", *ts)
    if floats["ext_factor"] != 0.0:
        expect(n_ctx_orig > 0 and floats["beta_fast"] > 0.0 and floats["beta_slow"] > 0.0
               and floats["freq_scale"] > 0.0 and floats["freq_base"] != 1.0, name,
               "YaRN (ext_factor != 0) needs n_ctx_orig > 0, beta_fast > 0, beta_slow > 0, freq_scale > 0 "
               f"and freq_base != 1 (got {n_ctx_orig}, {floats['beta_fast']}, {floats['beta_slow']}, "
               f"{floats['freq_scale']}, {floats['freq_base']})", *ts)
    params = {"n_dims": n_dims, "mode": mode, "n_ctx_orig": n_ctx_orig, **floats, "has_freq_factors": int(c is not None)}
    if inplace:
        return ctx.new_node(ROPE, a.type, a.ne, [a, b, c], params=params, nb=a.nb, view_src=a)
    return ctx.new_node(ROPE, a.type, a.ne, [a, b, c], params=params)


@builder("rope_ext")
def rope_ext(ctx, a: Tensor, b: Tensor, c: Optional[Tensor], n_dims: int, mode: int, n_ctx_orig: int,
             freq_base: float, freq_scale: float, ext_factor: float, attn_factor: float, beta_fast: float,
             beta_slow: float) -> Tensor:
    """Rotary position embedding with YaRN and freq_factors (ggml_rope_ext; see the module doc).

{args}    result: [ne0, n_head, n_tokens, ne3], a's type, contiguous.
    """
    return _rope(ctx, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
                 beta_fast, beta_slow, False, "rope_ext")


@builder("rope_ext_inplace")
def rope_ext_inplace(ctx, a: Tensor, b: Tensor, c: Optional[Tensor], n_dims: int, mode: int, n_ctx_orig: int,
                     freq_base: float, freq_scale: float, ext_factor: float, attn_factor: float,
                     beta_fast: float, beta_slow: float) -> Tensor:
    """rope_ext written into a (ggml_rope_ext_inplace).

{args}    result: a view of a (a's ne and nb), written in place.
    """
    return _rope(ctx, a, b, c, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
                 beta_fast, beta_slow, True, "rope_ext_inplace")


# the parameters both rope builders document (their docstrings hold an {args} slot)
_ROPE_ARGS = """    a:      [head dim ne0, n_head, n_tokens, ne3] f32/f16, any strides and byte offset (e.g. the pe
            part of an MLA K cache row).
    b:      [n_tokens] I32 positions, one per ne2 index.
    c:      [>= n_dims/2] f32 freq_factors dividing each pair's frequency, or None.
    n_dims: rotated dims (even, <= ne0); the tail ne0 - n_dims is copied (partial rotation).
    mode:   ROPE_TYPE_NORMAL (0, adjacent pairs) or ROPE_TYPE_NEOX (2, halves); mrope/vision refused.
    n_ctx_orig: the training context length (YaRN's correction dims).
    freq_base: theta base (10000 in most models).
    freq_scale: position interpolation factor (1: none).
    ext_factor: YaRN extrapolation mix (0: off).
    attn_factor: magnitude scale of cos/sin (1: none).
    beta_fast: YaRN ramp low bound (32 in ggml's defaults).
    beta_slow: YaRN ramp high bound (1 in ggml's defaults).
"""
for _f in (rope_ext, rope_ext_inplace):
    _f.__doc__ = _f.__doc__.format(args=_ROPE_ARGS)


@builder("rope")
def rope(ctx, a: Tensor, b: Tensor, n_dims: int, mode: int) -> Tensor:
    """rope_ext without freq_factors or YaRN: freq_base 10000, freq_scale 1, attn_factor 1 (ggml_rope).

    a:      [head dim ne0, n_head, n_tokens, ne3] f32/f16, any strides.
    b:      [n_tokens] I32 positions.
    n_dims: rotated dims (even, <= ne0); the tail is copied.
    mode:   ROPE_TYPE_NORMAL (0) or ROPE_TYPE_NEOX (2).
    result: [ne0, n_head, n_tokens, ne3], a's type, contiguous.
    """
    return _rope(ctx, a, b, None, n_dims, mode, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0, False, "rope")


@builder("rope_inplace")
def rope_inplace(ctx, a: Tensor, b: Tensor, n_dims: int, mode: int) -> Tensor:
    """rope written into a (ggml_rope_inplace).

    a:      [head dim ne0, n_head, n_tokens, ne3] f32/f16, any strides.
    b:      [n_tokens] I32 positions.
    n_dims: rotated dims (even, <= ne0); the tail is copied.
    mode:   ROPE_TYPE_NORMAL (0) or ROPE_TYPE_NEOX (2).
    result: a view of a (a's ne and nb), written in place.
    """
    return _rope(ctx, a, b, None, n_dims, mode, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0, True, "rope_inplace")
