"""ggml's block quantizers in numpy: the reference (ggml-quants.c's `quantize_row_*_ref` and
`dequantize_row_*`, the bytes `ggml_quantize_chunk` writes without an importance matrix).

Every function is vectorised over blocks and keeps ggml's float32 arithmetic step for step
(the same operations in the same order, sums accumulated element by element), so the bytes are
ggml's bit for bit. A row is ne0 elements along the last axis; its bytes are ne0 / blck_size
blocks of `type_size` bytes (minigraph.core.dtypes.BLOCK_DTYPES spells each block struct).

    quantize(x (..., ne0) f32, type)      -> (..., row bytes) uint8
    dequantize(raw (..., row bytes), type) -> (..., ne0) f32
"""
from __future__ import annotations

import numpy as np

from minigraph.core import blocks as D
from minigraph.core.errors import MinigraphError

F = np.float32
GROUP_MAX_EPS = F(1e-15)
K_SCALE_BYTES = D.K_SCALE_SIZE


def _f16(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even), kept as float16."""
    return np.asarray(x, F).astype(np.float16)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even through the float32 magic-number add."""
    return np.rint(np.asarray(x, F)).astype(np.int32)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero (exact for float32, no +0.5 rounding trap)."""
    r = np.trunc(v)
    return r + np.where(np.abs(v - r) >= F(0.5), np.sign(v), F(0))


def _safe_inv(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F(1) / np.where(d != 0, d, F(1)), F(0)).astype(F)


def _abs_max_signed(x: np.ndarray) -> np.ndarray:
    """The first element of largest magnitude per block, with its sign (ggml's `max`)."""
    return np.take_along_axis(x, np.argmax(np.abs(x), axis=-1)[..., None], axis=-1)[..., 0]


# -- 32-element blocks -------------------------------------------------------------------------

def _q4_0(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q4_0])
    d = (_abs_max_signed(x) / F(-8)).astype(F)
    idv = _safe_inv(d)[:, None]
    y["d"] = _f16(d)
    q = np.minimum(15, np.trunc(x * idv + F(8.5)).astype(np.int8).astype(np.int32)).astype(np.uint8)
    y["qs"] = q[:, :16] | (q[:, 16:] << 4)
    return y


def _q4_1(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q4_1])
    mn, mx = x.min(axis=1), x.max(axis=1)
    d = ((mx - mn) / F(15)).astype(F)
    idv = _safe_inv(d)[:, None]
    y["d"], y["m"] = _f16(d), _f16(mn)
    q = np.minimum(15, np.trunc((x - mn[:, None]) * idv + F(0.5)).astype(np.int8).astype(np.int32)).astype(np.uint8)
    y["qs"] = q[:, :16] | (q[:, 16:] << 4)
    return y


def _pack_qh(q: np.ndarray) -> np.ndarray:
    """The fifth bits of 32 quants as ggml's little-endian uint32 qh (bit j = quant j)."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack_qh(qh: np.ndarray) -> np.ndarray:
    word = np.ascontiguousarray(qh).view("<u4").reshape(-1, 1)
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4


def _q5_0(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q5_0])
    d = (_abs_max_signed(x) / F(-16)).astype(F)
    idv = _safe_inv(d)[:, None]
    y["d"] = _f16(d)
    q = np.minimum(31, np.trunc(x * idv + F(16.5)).astype(np.int8).astype(np.int32)).astype(np.uint8)
    y["qs"] = (q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)
    y["qh"] = _pack_qh(q)
    return y


def _q5_1(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q5_1])
    mn, mx = x.min(axis=1), x.max(axis=1)
    d = ((mx - mn) / F(31)).astype(F)
    idv = _safe_inv(d)[:, None]
    y["d"], y["m"] = _f16(d), _f16(mn)
    q = np.trunc((x - mn[:, None]) * idv + F(0.5)).astype(np.int32).astype(np.uint8)
    y["qs"] = (q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)
    y["qh"] = _pack_qh(q)
    return y


def _q8_0(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q8_0])
    d = (np.abs(x).max(axis=1) / F(127)).astype(F)
    y["d"] = _f16(d)
    y["qs"] = _roundf(x * _safe_inv(d)[:, None]).astype(np.int8)
    return y


def _q8_1(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q8_1])
    d = (np.abs(x).max(axis=1) / F(127)).astype(F)
    q = _roundf(x * _safe_inv(d)[:, None]).astype(np.int8)
    y["d"], y["qs"] = _f16(d), q
    y["s"] = _f16(q.astype(np.int32).sum(axis=1).astype(F) * d)
    return y


def _dq4_0(b):
    q = np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=1).astype(np.int32) - 8
    return q.astype(F) * b["d"].astype(F)[:, None]


def _dq4_1(b):
    q = np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=1).astype(F)
    return q * b["d"].astype(F)[:, None] + b["m"].astype(F)[:, None]


def _dq5_0(b):
    q = (np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=1).astype(np.int32) | _unpack_qh(b["qh"])) - 16
    return q.astype(F) * b["d"].astype(F)[:, None]


def _dq5_1(b):
    q = np.concatenate([b["qs"] & 15, b["qs"] >> 4], axis=1).astype(np.int32) | _unpack_qh(b["qh"])
    return q.astype(F) * b["d"].astype(F)[:, None] + b["m"].astype(F)[:, None]


def _dq8_0(b):
    return b["qs"].astype(F) * b["d"].astype(F)[:, None]


# -- K-quants (256-element super-blocks) ---------------------------------------------------------

def _make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep):
    """make_qkx2_quants (use_mad = false) over groups x, w (G, n): (scale, -min, L)."""
    n = x.shape[1]
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    mn = np.where(mn > 0, F(0), mn).astype(F)
    flat = mx == mn
    rng = np.where(flat, F(1), mx - mn).astype(F)
    iscale = (F(nmax) / rng).astype(F)
    scale = (F(1) / iscale).astype(F)
    L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = np.zeros(len(x), F)
    for i in range(n):
        diff = scale * L[:, i].astype(F) + mn - x[:, i]
        best = best + w[:, i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = ((F(rmin) + F(rdelta) * F(step) + F(nmax)) / (mx - mn + flat)).astype(F)
        laux = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        lf = laux.astype(F)
        sum_l = np.zeros(len(x), F)
        sum_l2 = np.zeros(len(x), F)
        sum_xl = np.zeros(len(x), F)
        for i in range(n):
            wl = w[:, i] * lf[:, i]
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * lf[:, i]
            sum_xl = sum_xl + wl * x[:, i]
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, F(1))
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = ((sum_w * sum_xl - sum_x * sum_l) / safe).astype(F)
            this_min = ((sum_l2 * sum_x - sum_l * sum_xl) / safe).astype(F)
            pos = this_min > 0
            this_scale = np.where(pos, sum_xl / np.where(sum_l2 != 0, sum_l2, F(1)), this_scale).astype(F)
        this_min = np.where(pos, F(0), this_min).astype(F)
        cur = np.zeros(len(x), F)
        for i in range(n):
            diff = this_scale * lf[:, i] + this_min - x[:, i]
            cur = cur + w[:, i] * (diff * diff)
        better = ok & (cur < best) & ~flat
        L = np.where(better[:, None], laux, L)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    return np.where(flat, F(0), scale).astype(F), (-mn).astype(F), L


def _k_weights(xs):
    """quantize_row_q{4,5}_K_ref's weights: sqrt(mean x^2) + |x| per 32-element group."""
    sum_x2 = np.zeros(len(xs), F)
    for i in range(xs.shape[1]):
        sum_x2 = sum_x2 + xs[:, i] * xs[:, i]
    av_x = np.sqrt(sum_x2 / F(32)).astype(F)
    return (av_x[:, None] + np.abs(xs)).astype(F)


def _pack_scale_min_k4(ls, lm):
    """The 12 scale bytes of a Q4_K/Q5_K block from 8 six-bit scales and mins (nb, 8)."""
    s = np.zeros((len(ls), K_SCALE_BYTES), np.uint8)
    s[:, 0:4] = ls[:, 0:4]
    s[:, 4:8] = lm[:, 0:4]
    s[:, 8:12] = (ls[:, 4:8] & 15) | ((lm[:, 4:8] & 15) << 4)
    s[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    s[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return s



def scale_min_k4(s):
    """get_scale_min_k4 for all 8 groups: (scales, mins), each (nb, 8) int32."""
    s = s.astype(np.int32)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _qk_scales(x, nmax, rmin, rdelta, nstep, out_type):
    """The shared part of Q4_K and Q5_K: per-group fit, 6-bit scales, requantized L (nb, 256)."""
    nb = len(x)
    xs = x.reshape(nb * 8, 32)
    scales, mins, L = _make_qkx2_quants(xs, _k_weights(xs), nmax, rmin, rdelta, nstep)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 256)
    max_scale = np.maximum(scales.max(axis=1), F(0))
    max_min = np.maximum(mins.max(axis=1), F(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F(63) / np.where(max_scale > 0, max_scale, F(1)), F(0)).astype(F)
        inv_min = np.where(max_min > 0, F(63) / np.where(max_min > 0, max_min, F(1)), F(0)).astype(F)
    ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 255).astype(np.uint8)
    lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 255).astype(np.uint8)
    y = np.zeros(nb, D.BLOCK_DTYPES[out_type])
    y["scales"] = _pack_scale_min_k4(ls, lm)
    y["d"] = _f16(max_scale / F(63))
    y["dmin"] = _f16(max_min / F(63))
    sc, m = scale_min_k4(y["scales"])
    d = y["d"].astype(F)[:, None] * sc.astype(F)
    dm = y["dmin"].astype(F)[:, None] * m.astype(F)
    xg = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        req = np.clip(nearest_int(np.where(d[..., None] != 0, (xg + dm[..., None]) / d[..., None], F(0))), 0, nmax)
    L = np.where((d != 0)[..., None], req, L.reshape(nb, 8, 32)).reshape(nb, 256)
    return y, L


def _q4_k(x):
    y, L = _qk_scales(x, 15, -1.0, 0.1, 20, D.TYPE_Q4_K)
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    y["qs"] = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(-1, 128)
    return y


def _q5_k(x):
    y, L = _qk_scales(x, 31, -0.5, 0.1, 15, D.TYPE_Q5_K)
    L = L.reshape(-1, 4, 2, 32).astype(np.uint8)  # (block, n = 64-chunk, low/high half, j)
    y["qs"] = ((L[:, :, 0] & 15) | ((L[:, :, 1] & 15) << 4)).reshape(-1, 128)
    hi = (L >> 4) & 1  # bit 2n of qh[j] from the low half, bit 2n+1 from the high half
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    y["qh"] = ((hi[:, :, 0] << shifts) | (hi[:, :, 1] << (shifts + 1))).sum(axis=1, dtype=np.uint8)
    return y


def _make_qx_quants_rmse1(x, nmax):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) over groups (G, n): (scale, L + nmax)."""
    n = x.shape[1]
    amax = np.abs(x).max(axis=1)
    mx = _abs_max_signed(x)
    zero = amax < GROUP_MAX_EPS
    safe_max = np.where(zero, F(1), mx).astype(F)
    iscale = (F(-nmax) / safe_max).astype(F)
    w = (x * x).astype(F)

    def fit(isc):
        l = np.clip(nearest_int(isc[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(F)
        sumlx = np.zeros(len(x), F)
        suml2 = np.zeros(len(x), F)
        for i in range(n):
            sumlx = sumlx + w[:, i] * x[:, i] * lf[:, i]
            suml2 = suml2 + w[:, i] * lf[:, i] * lf[:, i]
        return l, sumlx, suml2

    L, sumlx, suml2 = fit(iscale)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F(1)), F(0)).astype(F)
    best = (scale * sumlx).astype(F)
    for step in range(-9, 10):
        if step == 0:
            continue
        isc = (-(F(nmax) + F(0.1) * F(step)) / safe_max).astype(F)
        l, slx, sl2 = fit(isc)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (slx / np.where(sl2 != 0, sl2, F(1))).astype(F)
        L = np.where(better[:, None], l, L)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * slx, best).astype(F)
    L = np.where(zero[:, None], 0, L + nmax)
    return np.where(zero, F(0), scale).astype(F), L


def _q6_k(x):
    nb = len(x)
    scales, L = _make_qx_quants_rmse1(x.reshape(nb * 16, 16), 32)
    scales, L = scales.reshape(nb, 16), L.reshape(nb, 256)
    abs_s = np.abs(scales)
    max_scale = np.take_along_axis(scales, np.argmax(abs_s, axis=1)[:, None], axis=1)[:, 0]
    zero = abs_s.max(axis=1) < GROUP_MAX_EPS
    y = np.zeros(nb, D.BLOCK_DTYPES[D.TYPE_Q6_K])
    iscale = (F(-128) / np.where(zero, F(1), max_scale)).astype(F)
    y["d"] = np.where(zero, np.float16(0), _f16(F(1) / iscale))
    sc8 = np.minimum(127, nearest_int(iscale[:, None] * scales))
    y["scales"] = np.where(zero[:, None], 0, sc8).astype(np.int8)
    d = y["d"].astype(F)[:, None] * y["scales"].astype(F)
    xg = x.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        req = np.clip(nearest_int(np.where(d[..., None] != 0, xg / d[..., None], F(0))), -32, 31) + 32
    L = np.where((d != 0)[..., None], req, L.reshape(nb, 16, 16)).reshape(nb, 2, 4, 32).astype(np.uint8)
    ql = np.stack([(L[:, :, 0] & 15) | ((L[:, :, 2] & 15) << 4), (L[:, :, 1] & 15) | ((L[:, :, 3] & 15) << 4)], axis=2)
    y["ql"] = np.where(zero[:, None], 0, ql.reshape(nb, 128))
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    y["qh"] = np.where(zero[:, None], 0, qh.reshape(nb, 64))
    return y


def _q8_k(x):
    y = np.zeros(len(x), D.BLOCK_DTYPES[D.TYPE_Q8_K])
    amax = np.abs(x).max(axis=1)
    mx = _abs_max_signed(x)
    zero = amax == 0
    iscale = (F(-127) / np.where(zero, F(1), mx)).astype(F)
    q = np.where(zero[:, None], 0, np.minimum(127, nearest_int(iscale[:, None] * x))).astype(np.int8)
    y["qs"] = q
    y["bsums"] = q.reshape(-1, 16, 16).astype(np.int32).sum(axis=2).astype(np.int16)
    y["d"] = np.where(zero, F(0), F(1) / iscale)
    return y


def _dq_k4(b, high):
    """Q4_K / Q5_K: d * sc * q - dmin * m per 32-element group."""
    sc, m = scale_min_k4(b["scales"])
    d = b["d"].astype(F)[:, None] * sc.astype(F)
    dm = b["dmin"].astype(F)[:, None] * m.astype(F)
    qs = b["qs"].reshape(-1, 4, 32)
    q = np.stack([qs & 15, qs >> 4], axis=2).astype(np.int32)  # (nb, 4, 2, 32)
    if high is not None:
        bit = np.arange(8).reshape(1, 4, 2, 1)
        q = q + (((high[:, None, None, :].astype(np.int32) >> bit) & 1) << 4)
    q = q.reshape(-1, 8, 32).astype(F)
    return (d[..., None] * q - dm[..., None]).reshape(-1, 256)


def _dq6_k(b):
    ql = b["ql"].reshape(-1, 2, 64).astype(np.int32)
    qh = b["qh"].reshape(-1, 2, 32).astype(np.int32)
    q1 = ((ql[:, :, :32] & 15) | (((qh >> 0) & 3) << 4)) - 32
    q2 = ((ql[:, :, 32:] & 15) | (((qh >> 2) & 3) << 4)) - 32
    q3 = ((ql[:, :, :32] >> 4) | (((qh >> 4) & 3) << 4)) - 32
    q4 = ((ql[:, :, 32:] >> 4) | (((qh >> 6) & 3) << 4)) - 32
    q = np.stack([q1, q2, q3, q4], axis=2).reshape(-1, 2, 4, 2, 16)  # (nb, half, quarter, is, l)
    sc = b["scales"].reshape(-1, 2, 4, 2).astype(F)  # sc[is + 2*quarter] within each 128-half
    d = b["d"].astype(F)[:, None, None, None, None]
    return (d * sc[..., None] * q.astype(F)).reshape(-1, 256)


def _dq8_k(b):
    return b["qs"].astype(F) * b["d"].astype(F)[:, None]


_QUANTIZE = {D.TYPE_Q4_0: _q4_0, D.TYPE_Q4_1: _q4_1, D.TYPE_Q5_0: _q5_0, D.TYPE_Q5_1: _q5_1,
             D.TYPE_Q8_0: _q8_0, D.TYPE_Q8_1: _q8_1, D.TYPE_Q4_K: _q4_k, D.TYPE_Q5_K: _q5_k,
             D.TYPE_Q6_K: _q6_k, D.TYPE_Q8_K: _q8_k}
_DEQUANTIZE = {D.TYPE_Q4_0: _dq4_0, D.TYPE_Q4_1: _dq4_1, D.TYPE_Q5_0: _dq5_0, D.TYPE_Q5_1: _dq5_1,
               D.TYPE_Q8_0: _dq8_0, D.TYPE_Q8_1: _dq8_0, D.TYPE_Q4_K: lambda b: _dq_k4(b, None),
               D.TYPE_Q5_K: lambda b: _dq_k4(b, b["qh"]), D.TYPE_Q6_K: _dq6_k, D.TYPE_Q8_K: _dq8_k}


def quantize(x: np.ndarray, type_: int) -> np.ndarray:
    """ggml_quantize_chunk(type_, x, ...) without imatrix: rows (..., ne0) f32 -> (..., row bytes) uint8."""
    x = np.ascontiguousarray(x, F)
    if type_ not in _QUANTIZE:
        raise MinigraphError(f"quantize: type {type_} is not a block-quantized type")
    qk, ts, name = D.BLCK[type_], D.BLOCK_DTYPES[type_].itemsize, D.QUANT_NAMES[type_]
    if x.ndim == 0 or x.shape[-1] % qk:
        raise MinigraphError(f"quantize: rows of {x.shape[-1] if x.ndim else 1} elements are not a multiple of "
                             f"{name}'s block of {qk}")
    lead = x.shape[:-1]
    nblk = x.size // qk
    with np.errstate(over="ignore", invalid="ignore"):
        blocks = _QUANTIZE[type_](x.reshape(nblk, qk)) if nblk else np.zeros(0, D.BLOCK_DTYPES[type_])
    return blocks.view(np.uint8).reshape(*lead, x.shape[-1] // qk * ts)


def dequantize(raw: np.ndarray, type_: int) -> np.ndarray:
    """dequantize_row_*: (..., row bytes) uint8 -> rows (..., ne0) f32."""
    raw = np.ascontiguousarray(raw, np.uint8)
    if type_ not in _DEQUANTIZE:
        raise MinigraphError(f"dequantize: type {type_} is not a block-quantized type")
    qk, ts, name = D.BLCK[type_], D.BLOCK_DTYPES[type_].itemsize, D.QUANT_NAMES[type_]
    if raw.ndim == 0 or raw.shape[-1] % ts:
        raise MinigraphError(f"dequantize: {raw.shape[-1] if raw.ndim else 1} bytes are not whole "
                             f"{name} blocks of {ts} bytes")
    lead = raw.shape[:-1]
    nblk = raw.size // ts
    if nblk == 0:
        return np.zeros((*lead, 0), F)
    out = _DEQUANTIZE[type_](raw.reshape(nblk, ts).view(D.BLOCK_DTYPES[type_]).reshape(nblk))
    return np.asarray(out, F).reshape(*lead, raw.shape[-1] // ts * qk)


def roundtrip(x: np.ndarray, type_: int) -> np.ndarray:
    """What a write of rows x (..., ne0) into a `type_` tensor leaves there, as float64: the rows
    quantized (ggml's reference quantizer, from float32) and dequantized again."""
    return dequantize(quantize(np.asarray(x, F), type_), type_).astype(np.float64)
