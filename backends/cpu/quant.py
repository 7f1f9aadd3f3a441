"""CPU paths of the nodes that touch block-quantized tensors (Q4_0 ... Q8_K): MUL_MAT with a
quantized src0, CPY to and from quantized types, GET_ROWS from quantized rows, SET_ROWS into a
quantized cache.

Calling convention (registry.register_quant_kernel): fn(node, build, dst, *srcs), where a
quantized tensor comes as its raw rows, a uint8 array (ne3, ne2, ne1, row bytes) strided like
nb, and every other tensor as float32 (I32/I64 indices as themselves).

MUL_MAT follows ggml's CPU backend: each src1 row is quantized to src0's vec_dot type (Q8_0,
Q8_1 or Q8_K, with ggml's quantizer) and every result element is an integer dot product over
the blocks, scaled per block (the `ggml_vec_dot_*_q8_*` generic kernels); a Numba kernel runs it
over src0 rows in parallel. The copies quantize and dequantize with the numpy reference
(minigraph.core.quants), which is ggml's code step for step, vectorised over blocks.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from minigraph.core import dtypes as D
from minigraph.core import quants
from minigraph.core.errors import fail
from minigraph.core.registry import register_quant_kernel
from minigraph.core.tensor import nbytes

from minigraph.backends.cpu.jit import JIT_OPTIONS, kernel

import numba

# every float16 bit pattern as float32: the block scales are read through this table
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
F32 = np.float32


@numba.njit(inline="always", **JIT_OPTIONS)
def _h(u8, off, f16):
    """The little-endian float16 at byte `off`, as float32."""
    return f16[np.int64(u8[off]) | (np.int64(u8[off + 1]) << 8)]


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_q4_0(a, ao, bu, bi, bo, nblk, f16):
    s = F32(0.0)
    for i in range(nblk):
        xa = ao + i * 18
        xb = bo + i * 34
        sumi = np.int32(0)
        for j in range(16):
            v = np.int32(a[xa + 2 + j])
            sumi += ((v & 15) - 8) * np.int32(bi[xb + 2 + j]) + ((v >> 4) - 8) * np.int32(bi[xb + 18 + j])
        s += F32(sumi) * _h(a, xa, f16) * _h(bu, xb, f16)
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_q4_1(a, ao, bu, bi, bo, nblk, f16):
    s = F32(0.0)
    for i in range(nblk):
        xa = ao + i * 20
        xb = bo + i * 36
        sumi = np.int32(0)
        for j in range(16):
            v = np.int32(a[xa + 4 + j])
            sumi += (v & 15) * np.int32(bi[xb + 4 + j]) + (v >> 4) * np.int32(bi[xb + 20 + j])
        s += (_h(a, xa, f16) * _h(bu, xb, f16)) * F32(sumi) + _h(a, xa + 2, f16) * _h(bu, xb + 2, f16)
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _qh32(a, off):
    return (np.int64(a[off]) | (np.int64(a[off + 1]) << 8) | (np.int64(a[off + 2]) << 16)
            | (np.int64(a[off + 3]) << 24))


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_q5_0(a, ao, bu, bi, bo, nblk, f16):
    s = F32(0.0)
    for i in range(nblk):
        xa = ao + i * 22
        xb = bo + i * 34
        qh = _qh32(a, xa + 2)
        sumi = np.int32(0)
        for j in range(16):
            v = np.int32(a[xa + 6 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            sumi += (((v & 15) | h0) - 16) * np.int32(bi[xb + 2 + j]) + (((v >> 4) | h1) - 16) * np.int32(bi[xb + 18 + j])
        s += (_h(a, xa, f16) * _h(bu, xb, f16)) * F32(sumi)
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_q5_1(a, ao, bu, bi, bo, nblk, f16):
    s = F32(0.0)
    for i in range(nblk):
        xa = ao + i * 24
        xb = bo + i * 36
        qh = _qh32(a, xa + 4)
        sumi = np.int32(0)
        for j in range(16):
            v = np.int32(a[xa + 8 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            sumi += ((v & 15) | h0) * np.int32(bi[xb + 4 + j]) + ((v >> 4) | h1) * np.int32(bi[xb + 20 + j])
        s += (_h(a, xa, f16) * _h(bu, xb, f16)) * F32(sumi) + _h(a, xa + 2, f16) * _h(bu, xb + 2, f16)
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_q8_0(a, ai, ao, bu, bi, bo, nblk, f16):
    s = F32(0.0)
    for i in range(nblk):
        xa = ao + i * 34
        xb = bo + i * 34
        sumi = np.int32(0)
        for j in range(32):
            sumi += np.int32(ai[xa + 2 + j]) * np.int32(bi[xb + 2 + j])
        s += F32(sumi) * (_h(a, xa, f16) * _h(bu, xb, f16))
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _scale_min_k4(a, sc_off, j):
    """get_scale_min_k4: the 6-bit scale and min of group j from the 12 scale bytes."""
    if j < 4:
        return np.int32(a[sc_off + j]) & 63, np.int32(a[sc_off + j + 4]) & 63
    d = (np.int32(a[sc_off + j + 4]) & 15) | ((np.int32(a[sc_off + j - 4]) >> 6) << 4)
    m = (np.int32(a[sc_off + j + 4]) >> 4) | ((np.int32(a[sc_off + j]) >> 6) << 4)
    return d, m


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_qk4(a, ao, bi, b16, bf, bo, nblk, f16, five):
    """Q4_K (five=False) and Q5_K (five=True) . Q8_K over nblk super-blocks."""
    s = F32(0.0)
    bsz = 176 if five else 144
    qs_off = 48 if five else 16
    for i in range(nblk):
        xa = ao + i * bsz
        xb = bo + i * 292
        sum_mins = np.int32(0)
        acc = np.int32(0)
        for g in range(8):
            sc, mn = _scale_min_k4(a, xa + 4, g)
            sum_mins += mn * (np.int32(b16[(xb + 260) // 2 + 2 * g]) + np.int32(b16[(xb + 260) // 2 + 2 * g + 1]))
            q = xa + qs_off + 32 * (g // 2)
            shift = 4 * (g % 2)
            y = xb + 4 + 32 * g
            part = np.int32(0)
            if five:
                for l in range(32):
                    v = ((np.int32(a[q + l]) >> shift) & 15) | (((np.int32(a[xa + 16 + l]) >> g) & 1) << 4)
                    part += v * np.int32(bi[y + l])
            else:
                for l in range(32):
                    part += ((np.int32(a[q + l]) >> shift) & 15) * np.int32(bi[y + l])
            acc += sc * part
        yd = bf[xb // 4]
        s += (_h(a, xa, f16) * yd) * F32(acc) - (_h(a, xa + 2, f16) * yd) * F32(sum_mins)
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _dot_q6_k(a, ai, ao, bi, bf, bo, nblk, f16):
    s = F32(0.0)
    for i in range(nblk):
        xa = ao + i * 210
        xb = bo + i * 292
        acc = np.int32(0)
        for h in range(2):
            ql = xa + 64 * h
            qh = xa + 128 + 32 * h
            y = xb + 4 + 128 * h
            for quarter in range(4):
                lo = ql + 32 * (quarter % 2)
                shift = 4 * (quarter // 2)
                for half16 in range(2):
                    part = np.int32(0)
                    for l in range(16 * half16, 16 * half16 + 16):
                        v = (((np.int32(a[lo + l]) >> shift) & 15) | (((np.int32(a[qh + l]) >> (2 * quarter)) & 3) << 4)) - 32
                        part += v * np.int32(bi[y + 32 * quarter + l])
                    acc += np.int32(ai[xa + 192 + 8 * h + 2 * quarter + half16]) * part
        s += (_h(a, xa + 208, f16) * bf[xb // 4]) * F32(acc)
    return s


@numba.njit(inline="always", **JIT_OPTIONS)
def _vec_dot(kind, a, ai, ao, bu, bi, b16, bf, bo, nblk, f16):
    if kind == D.TYPE_Q4_0:
        return _dot_q4_0(a, ao, bu, bi, bo, nblk, f16)
    if kind == D.TYPE_Q4_1:
        return _dot_q4_1(a, ao, bu, bi, bo, nblk, f16)
    if kind == D.TYPE_Q5_0:
        return _dot_q5_0(a, ao, bu, bi, bo, nblk, f16)
    if kind == D.TYPE_Q5_1:
        return _dot_q5_1(a, ao, bu, bi, bo, nblk, f16)
    if kind == D.TYPE_Q8_0:
        return _dot_q8_0(a, ai, ao, bu, bi, bo, nblk, f16)
    if kind == D.TYPE_Q4_K:
        return _dot_qk4(a, ao, bi, b16, bf, bo, nblk, f16, False)
    if kind == D.TYPE_Q5_K:
        return _dot_qk4(a, ao, bi, b16, bf, bo, nblk, f16, True)
    return _dot_q6_k(a, ai, ao, bi, bf, bo, nblk, f16)


@kernel
def mul_mat_q(dst, a, ai, a_nb1, a_nb2, a_nb3, a3, a2, bu, bi, b16, bf, b_row, kind, nblk, f16):
    """dst[i3, i2, n, m] = vec_dot(src0 row (i3 // r3, i2 // r2, m), quantized src1 row (i3, i2, n)).

    a / ai: src0's bytes from its first one, as uint8 / int8, rows a_nb1 apart (ggml's nb);
    bu / bi / b16 / bf: the quantized src1 (packed rows of b_row bytes) as uint8 / int8 / int16 /
    float32; kind: src0's ggml type; nblk: blocks per row. Parallel over src0 rows."""
    n3, n2, n1, m_rows = dst.shape
    r3 = n3 // a3
    r2 = n2 // a2
    for task in prange(n3 * n2 * m_rows):
        i3 = task // (n2 * m_rows)
        i2 = (task // m_rows) % n2
        m = task % m_rows
        ao = (i3 // r3) * a_nb3 + (i2 // r2) * a_nb2 + m * a_nb1
        for n in range(n1):
            bo = ((i3 * n2 + i2) * n1 + n) * b_row
            dst[i3, i2, n, m] = _vec_dot(kind, a, ai, ao, bu, bi, b16, bf, bo, nblk, f16)


def _flat_bytes(raw: np.ndarray, n: int) -> np.ndarray:
    """The n bytes from raw's first one as a contiguous 1-D array (no copy)."""
    return np.lib.stride_tricks.as_strided(raw, shape=(n,), strides=(1,))


def _mul_mat(node, build, dst, a_raw, b):
    a = node.src[0]
    bq = quants.quantize(np.ascontiguousarray(b, F32), D.VEC_DOT_TYPE[a.type])
    flat = bq.reshape(-1)
    if flat.size % 4:  # Q8_0/Q8_1 rows of odd block counts: pad so the int16/f32 views exist
        flat = np.concatenate([flat, np.zeros(4 - flat.size % 4, np.uint8)])
    a_bytes = _flat_bytes(a_raw, nbytes(a)) if nbytes(a) else np.zeros(1, np.uint8)
    getattr(mul_mat_q, build)(dst, a_bytes, a_bytes.view(np.int8), a.nb[1], a.nb[2], a.nb[3], a.ne[3], a.ne[2],
                              flat, flat.view(np.int8), flat.view(np.int16), flat.view(np.float32), bq.shape[-1],
                              a.type, a.ne[0] // D.blck_size(a.type), F16_TABLE)


def _mul_mat_supports(node):
    a = node.src[0]
    if D.is_quantized(node.src[1].type) or D.is_quantized(node.type):
        return "MUL_MAT: CPU takes a quantized src0 only (src1 and dst f32)"
    if a.type not in D.VEC_DOT_TYPE or a.type in (D.TYPE_Q8_1, D.TYPE_Q8_K):
        return f"MUL_MAT: no CPU dot product for {D.type_name(a.type)} src0"
    return None


# -- copies ------------------------------------------------------------------------------------

def _cpy(node, build, dst, a, b):
    src = node.src[0]
    if D.is_quantized(node.type):  # f32 -> quantized: dst's rows from a's elements in logical order
        rows = np.ascontiguousarray(a, F32).reshape(node.ne[3], node.ne[2], node.ne[1], node.ne[0])
        dst[...] = quants.quantize(rows, node.type)
    else:  # quantized -> f32 / f16 (dst is an f32 array here)
        vals = D.to_float(np.ascontiguousarray(a), src.type)
        dst[...] = vals.reshape(dst.shape)


def _cpy_supports(node):
    src = node.src[0]
    if D.is_quantized(node.type) and (src.type != D.TYPE_F32 or node.type == D.TYPE_Q8_1):
        return f"CPY: CPU quantizes f32 only, not {D.type_name(src.type)} -> {D.type_name(node.type)}"
    if D.is_quantized(src.type) and node.type not in (D.TYPE_F32, D.TYPE_F16):
        return f"CPY: CPU dequantizes to f32/f16 only, not {D.type_name(src.type)} -> {D.type_name(node.type)}"
    return None


def _check_rows(op, node, idx, n_rows):
    bad = (idx < 0) | (idx >= n_rows)
    if bad.any():
        raise fail(op, f"row index {int(idx[bad][0])} is outside 0..{n_rows - 1} of node '{node.name}'", node.src)


def _get_rows(node, build, dst, a_raw, idx):
    """dst[i12, i11, i10, :] = dequantized a[i12 % a3, i11 % a2, idx[0, i12, i11, i10], :]."""
    a3, a2, a1 = a_raw.shape[:3]
    ix = np.asarray(idx[0]).astype(np.int64)  # (ne12, ne11, ne10)
    _check_rows("GET_ROWS", node, ix, a1)
    i3 = (np.arange(ix.shape[0]) % a3)[:, None, None]
    i2 = (np.arange(ix.shape[1]) % a2)[None, :, None]
    dst[...] = D.to_float(a_raw[i3, i2, ix], node.src[0].type)


def _get_rows_supports(node):
    if node.src[1].type != D.TYPE_I32 or node.type != D.TYPE_F32:
        return "GET_ROWS: quantized rows come out as f32, with i32 indices"
    return None


def _set_rows(node, build, dst, b, idx, a):
    """dst[i3, i2, idx[0, i3 % ne12, i2 % ne11, i], :] = quantized b[i3, i2, i, :]."""
    n_rows = dst.shape[2]
    ix = np.asarray(idx[0]).astype(np.int64)  # (ne12, ne11, n)
    _check_rows("SET_ROWS", node, ix, n_rows)
    bq = quants.quantize(np.ascontiguousarray(b, F32), node.type)
    for i3 in range(bq.shape[0]):
        for i2 in range(bq.shape[1]):
            rows = ix[i3 % ix.shape[0], i2 % ix.shape[1]]
            if len(np.unique(rows)) == len(rows):
                dst[i3, i2, rows] = bq[i3, i2]
            else:  # a repeated index keeps the last row, as ggml's loop does
                for i, r in enumerate(rows):
                    dst[i3, i2, r] = bq[i3, i2, i]


def _set_rows_supports(node):
    if node.src[0].type != D.TYPE_F32 or node.type == D.TYPE_Q8_1:
        return "SET_ROWS: CPU writes f32 rows into a quantized destination (not q8_1)"
    return None


register_quant_kernel("MUL_MAT", "cpu", _mul_mat, supports=_mul_mat_supports)
register_quant_kernel("CPY", "cpu", _cpy, supports=_cpy_supports)
register_quant_kernel("GET_ROWS", "cpu", _get_rows, supports=_get_rows_supports)
register_quant_kernel("SET_ROWS", "cpu", _set_rows, supports=_set_rows_supports)
