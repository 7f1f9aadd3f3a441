"""CUDA paths of GET_ROWS, CPY and SET_ROWS with a block-quantized tensor (Numba kernels).

  GET_ROWS  quantized table (Q4_0 ... Q6_K) -> f32 rows, i32/i64 indices: one thread per dst
            element, dequantized as dequantize_row_* does (the CPU backend's floats, bit for bit).
  CPY       quantized -> f32/f16 (the same dequantization, any dst strides), and
            f32 -> Q8_0/Q4_0: one thread per dst block, its 32 elements taken from src0 in
            logical order (any src0 strides), quantized as the reference quantizer does (its bytes).
  SET_ROWS  f32 rows into a Q8_0/Q4_0 destination (a quantized KV cache), i32/i64 indices: one
            thread per (block column, i2, i3) walks the rows in order, so a repeated index keeps
            the last row; every thread checks all indices before it writes, so an index out of
            range writes nothing, as on the CPU.
Bad indices are reported through the error words and raised after the compute (common.py); a
GET_ROWS row with a bad index is zeros, never read from outside the table. Whatever else touches
a quantized tensor (quantizing to K-quants, Q4_1, Q5_*; f16 sources) is refused here and runs on
the CPU backend through the scheduler.
"""
from __future__ import annotations

from dataclasses import replace

from numba import cuda, float32

from minigraph.core import dtypes as D
from minigraph.core.registry import register_quant_kernel

from minigraph.backends.cuda.common import SLOT_W, CudaKernel, at, flat_launch, ne, nelem, size, unflat
from minigraph.backends.cuda.convert import ERR_WORDS, report
from minigraph.backends.cuda.layout import gathered_row
from minigraph.backends.cuda.quant_blocks import DOT_TYPES, UNIT, WRITE_TYPES, dequant, write_block


@cuda.jit(device=True)
def row_at(meta, s, i1, i2, i3):
    """Byte offset of row (i1, i2, i3) of quantized slot s."""
    b = s * SLOT_W
    return meta[b] + i1 * meta[b + 6] + i2 * meta[b + 7] + i3 * meta[b + 8]


@cuda.jit
def get_rows_q(meta, dst, a, idx, kind, err):
    """dst (i0, i10, i11, i12) = dequantized a (i0, idx[i10, i11, i12], i11 % ne02, i12 % ne03)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        row = gathered_row(meta, idx, err, i0, i1, i2, i3)
        o = at(meta, 0, i0, i1, i2, i3)
        if row < 0:
            dst[o] = 0
        else:
            dst[o] = dequant(kind, a, row_at(meta, 1, row, i2 % ne(meta, 1, 2), i3 % ne(meta, 1, 3)), i0)


@cuda.jit
def cpy_dequant(meta, dst, a, b, kind):
    """dst's i-th element (row-major) = a's i-th, dequantized (dst f32 or f16, any strides)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        d0, d1, d2, d3 = unflat(meta, 0, i)
        s0, s1, s2, s3 = unflat(meta, 1, i)
        dst[at(meta, 0, d0, d1, d2, d3)] = dequant(kind, a, row_at(meta, 1, s1, s2, s3), s0)


@cuda.jit
def cpy_quantize(meta, dst, a, b, kind, block_bytes):
    """Block u of dst row (i1, i2, i3) from the 32 elements of f32 src0 at the same logical places."""
    t = cuda.grid(1)
    n_units = ne(meta, 0, 0) // UNIT
    n1 = ne(meta, 0, 1)
    n2 = ne(meta, 0, 2)
    if t < n_units * n1 * n2 * ne(meta, 0, 3):
        u = t % n_units
        i1 = (t // n_units) % n1
        i2 = (t // (n_units * n1)) % n2
        i3 = t // (n_units * n1 * n2)
        xs = cuda.local.array(UNIT, float32)
        first = ((i3 * n2 + i2) * n1 + i1) * ne(meta, 0, 0) + UNIT * u
        for j in range(UNIT):
            s0, s1, s2, s3 = unflat(meta, 1, first + j)
            xs[j] = a[at(meta, 1, s0, s1, s2, s3)]
        write_block(kind, xs, dst, row_at(meta, 0, i1, i2, i3) + block_bytes * u)


@cuda.jit
def set_rows_q(meta, dst, b, idx, a, kind, block_bytes, err):
    """dst block u of row idx[i, i2 % ne11, i3 % ne12] (plane i2, i3) = b (32u.., i, i2, i3) quantized."""
    n_units = ne(meta, 1, 0) // UNIT
    n2 = ne(meta, 1, 2)
    t = cuda.grid(1)
    if t < n_units * n2 * ne(meta, 1, 3):
        u = t % n_units
        i2 = (t // n_units) % n2
        i3 = t // (n_units * n2)
        n_rows = ne(meta, 0, 1)
        for c2 in range(ne(meta, 2, 2)):       # every index first: nothing is written if one is bad
            for c1 in range(ne(meta, 2, 1)):
                for i in range(ne(meta, 1, 1)):
                    row = idx[at(meta, 2, i, c1, c2, 0)]
                    if row < 0 or row >= n_rows:
                        if t == 0:
                            report(err, 1, row, i, c1, c2)
                        return
        xs = cuda.local.array(UNIT, float32)
        k1 = i2 % ne(meta, 2, 1)
        k2 = i3 % ne(meta, 2, 2)
        for i in range(ne(meta, 1, 1)):
            row = idx[at(meta, 2, i, k1, k2, 0)]
            for j in range(UNIT):
                xs[j] = b[at(meta, 1, UNIT * u + j, i, i2, i3)]
            write_block(kind, xs, dst, row_at(meta, 0, row, i2, i3) + block_bytes * u)


# -- admission, launches, messages ----------------------------------------------------------

def _get_rows_supports(node):
    table, idx = node.src
    if idx.type not in D.INT_TYPES:
        return f"GET_ROWS: indices must be i32 or i64, got {D.type_name(idx.type)}"
    if table.type not in DOT_TYPES or node.type != D.TYPE_F32:
        return (f"GET_ROWS: CUDA dequantizes {', '.join(map(D.type_name, DOT_TYPES))} rows into f32, "
                f"not {D.type_name(table.type)} -> {D.type_name(node.type)} (runs on the CPU)")
    return None


def _cpy_supports(node):
    src = node.src[0]
    if D.is_quantized(src.type):
        if src.type in DOT_TYPES and node.type in (D.TYPE_F32, D.TYPE_F16):
            return None
        return (f"CPY: CUDA dequantizes {', '.join(map(D.type_name, DOT_TYPES))} into f32/f16 only, not "
                f"{D.type_name(src.type)} -> {D.type_name(node.type)} (runs on the CPU)")
    if src.type == D.TYPE_F32 and node.type in WRITE_TYPES:
        return None
    return (f"CPY: CUDA quantizes f32 into q8_0/q4_0 only, not {D.type_name(src.type)} -> "
            f"{D.type_name(node.type)} (runs on the CPU)")


def _set_rows_supports(node):
    b, c, a = node.src
    if c.type not in D.INT_TYPES:
        return f"SET_ROWS: indices must be i32 or i64, got {D.type_name(c.type)}"
    if b.type != D.TYPE_F32 or a.type not in WRITE_TYPES:
        return (f"SET_ROWS: CUDA writes f32 rows into q8_0/q4_0 only, not {D.type_name(b.type)} -> "
                f"{D.type_name(a.type)} (runs on the CPU)")
    return None


def _get_rows_launches(node):
    return [replace(flat_launch(get_rows_q, nelem(node.ne), (node.src[0].type,)), n_err=ERR_WORDS)]


def _cpy_launches(node):
    src = node.src[0]
    if D.is_quantized(src.type):
        return [flat_launch(cpy_dequant, nelem(node.ne), (src.type,))]
    n_blocks = nelem(node.ne) // UNIT
    return [flat_launch(cpy_quantize, n_blocks, (node.type, D.type_size(node.type)))]


def _set_rows_launches(node):
    b, a = node.src[0], node.src[2]
    n = b.ne[0] // UNIT * b.ne[2] * b.ne[3]
    return [replace(flat_launch(set_rows_q, n, (a.type, D.type_size(a.type))), n_err=ERR_WORDS)]


def _get_rows_explain(node, words) -> str:
    n = node.src[0].ne[1]
    return (f"get_rows: row index {int(words[1])} at indices[{int(words[2])}, {int(words[3])}, {int(words[4])}] "
            f"is outside 0..{n - 1} (the {D.type_name(node.src[0].type)} table's ne1 = {n} rows)")


def _set_rows_explain(node, words) -> str:
    n = node.src[2].ne[1]
    return (f"set_rows: row index {int(words[1])} at indices[{int(words[2])}, {int(words[3])}, {int(words[4])}] "
            f"is outside 0..{n - 1} (the {D.type_name(node.src[2].type)} destination's ne1 = {n} rows); "
            f"nothing was written")


register_quant_kernel("GET_ROWS", "cuda", CudaKernel(_get_rows_launches, "get_rows_q", _get_rows_explain),
                      supports=_get_rows_supports)
register_quant_kernel("CPY", "cuda", CudaKernel(_cpy_launches, "cpy_q"), supports=_cpy_supports)
register_quant_kernel("SET_ROWS", "cuda", CudaKernel(_set_rows_launches, "set_rows_q", _set_rows_explain),
                      supports=_set_rows_supports)
