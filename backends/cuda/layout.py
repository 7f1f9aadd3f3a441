"""CUDA kernels of the layout family: CONT, DUP, CPY, PAD, REPEAT, CONCAT, GET_ROWS.

One thread per dst element, every tensor read and written through its strides (common.py).
CONT, DUP and CPY of contiguous tensors are a sliced launch (common.py) that copies element i to
element i: the generic form's 64-bit divisions per element ran a 537 MB CPY (a delta-net state
into its cache, H200) at ~170 GB/s.
VIEW, RESHAPE, PERMUTE and TRANSPOSE relabel memory and have no kernels. The kernels are generic
over the buffer type (Numba specialises per f32/i32 buffer), so I32 data copies too, and CPY
converts between f32 and i32 on assignment. GET_ROWS also gathers f16/bf16 tables into f32 rows
(read in place, widened per element) with i32 or i64 indices, and reports an index out of range
through the error words (common.py), so the compute fails as on the CPU instead of giving a row.
"""
from __future__ import annotations

from dataclasses import replace

from numba import cuda

from minigraph.core import dtypes
from minigraph.core.registry import register_kernel
from minigraph.core.tensor import is_contiguous

from minigraph.backends.cuda.common import CudaKernel, at, f32_or_i32, flat_launch, ne, nelem, size, unflat
from minigraph.backends.cuda.convert import ERR_WORDS, bf16_to_f32, report


@cuda.jit
def logical_copy(meta, dst, a):
    """CONT, DUP: dst's i-th element in row-major order is a's i-th (the shapes may differ)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        d0, d1, d2, d3 = unflat(meta, 0, i)
        s0, s1, s2, s3 = unflat(meta, 1, i)
        dst[at(meta, 0, d0, d1, d2, d3)] = a[at(meta, 1, s0, s1, s2, s3)]


@cuda.jit
def cpy(meta, dst, a, b):
    """CPY: as logical_copy into b's memory (dst is a view of b; b itself is not read)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        d0, d1, d2, d3 = unflat(meta, 0, i)
        s0, s1, s2, s3 = unflat(meta, 1, i)
        dst[at(meta, 0, d0, d1, d2, d3)] = a[at(meta, 1, s0, s1, s2, s3)]


@cuda.jit
def copy_contig(dst, a):
    """CONT, DUP of contiguous tensors (sliced launch): element i to element i."""
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = a[i]


@cuda.jit
def cpy_contig(dst, a, b):
    """CPY between contiguous tensors (sliced launch; b, whose memory dst views, is not read)."""
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = a[i]


@cuda.jit
def pad(meta, dst, a, p0, p1, p2, p3):
    """Zeros after a's end in every dim (the p's are implied by the shapes)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        o = at(meta, 0, i0, i1, i2, i3)
        if i0 < ne(meta, 1, 0) and i1 < ne(meta, 1, 1) and i2 < ne(meta, 1, 2) and i3 < ne(meta, 1, 3):
            dst[o] = a[at(meta, 1, i0, i1, i2, i3)]
        else:
            dst[o] = 0


@cuda.jit
def repeat(meta, dst, a):
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        dst[at(meta, 0, i0, i1, i2, i3)] = a[at(meta, 1, i0 % ne(meta, 1, 0), i1 % ne(meta, 1, 1),
                                                i2 % ne(meta, 1, 2), i3 % ne(meta, 1, 3))]


@cuda.jit
def concat(meta, dst, a, b, dim):
    """a then b along ggml dim `dim`."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        o = at(meta, 0, i0, i1, i2, i3)
        if i0 < ne(meta, 1, 0) and i1 < ne(meta, 1, 1) and i2 < ne(meta, 1, 2) and i3 < ne(meta, 1, 3):
            dst[o] = a[at(meta, 1, i0, i1, i2, i3)]
        else:
            n = ne(meta, 1, dim)  # where b starts along dim
            dst[o] = b[at(meta, 2, i0 - (n if dim == 0 else 0), i1 - (n if dim == 1 else 0),
                          i2 - (n if dim == 2 else 0), i3 - (n if dim == 3 else 0))]


@cuda.jit(device=True)
def gathered_row(meta, idx, err, i0, i1, i2, i3):
    """The table row dst (i0, i1, i2, i3) of a GET_ROWS reads: idx[i1, i2, i3], or -1 when that
    index lies outside the table's ne1 (the first such index is reported in `err`, code 1)."""
    row = idx[at(meta, 2, i1, i2, i3, 0)]
    if row < 0 or row >= ne(meta, 1, 1):
        if i0 == 0:
            report(err, 1, row, i1, i2, i3)
        return -1
    return row


@cuda.jit
def get_rows(meta, dst, a, idx, bf16, err):
    """dst (i0, i10, i11, i12) = a (i0, idx[i10, i11, i12], i11 % ne02, i12 % ne03), as f32 from an
    f32/f16/bf16 table (bf16: raw bits, converted), or i32 from an i32 table.

    A GPU kernel cannot raise: an index outside a's rows is never dereferenced, its dst row gets 0,
    and the first one is reported in `err` (code 1, the index, its position i10, i11, i12), which
    the plan turns into the CPU backend's MinigraphError after the run.
    """
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        row = gathered_row(meta, idx, err, i0, i1, i2, i3)
        o = at(meta, 0, i0, i1, i2, i3)
        if row < 0:
            dst[o] = 0
        else:
            x = a[at(meta, 1, i0, row, i2 % ne(meta, 1, 2), i3 % ne(meta, 1, 3))]
            if bf16:
                dst[o] = bf16_to_f32(x)
            else:
                dst[o] = x


def _flat(kernel, name):
    return CudaKernel(lambda node: [flat_launch(kernel, nelem(node.ne))], name)


def _copy(generic, contig, name):
    """A copy's launch: the sliced element-i-to-i kernel when dst and the source are contiguous."""
    def launches(node):
        fast = is_contiguous(node) and is_contiguous(node.src[0])
        return [flat_launch(contig if fast else generic, nelem(node.ne), sliced=fast)]
    return CudaKernel(launches, name)


def _get_rows_launches(node):
    bf16 = int(node.src[0].type == dtypes.TYPE_BF16)
    return [replace(flat_launch(get_rows, nelem(node.ne), (bf16,)), n_err=ERR_WORDS)]


def _get_rows_explain(node, words) -> str:
    return (f"get_rows: row index {int(words[1])} at indices[{int(words[2])}, {int(words[3])}, {int(words[4])}] "
            f"is outside 0..{node.src[0].ne[1] - 1} (the table's ne1 = {node.src[0].ne[1]} rows)")


def _get_rows_supports(node):
    table, idx = node.src
    if idx.type not in dtypes.INT_TYPES:
        return f"GET_ROWS: indices must be i32 or i64, got {dtypes.type_name(idx.type)}"
    if table.type == dtypes.TYPE_I32:
        return None if node.type == dtypes.TYPE_I32 else "GET_ROWS: an i32 table gives i32 rows on CUDA"
    if table.type not in dtypes.FLOAT_TYPES or node.type != dtypes.TYPE_F32:
        return (f"GET_ROWS: CUDA gathers f32/f16/bf16 tables into f32 rows (or i32 into i32), got "
                f"{dtypes.type_name(table.type)} -> {dtypes.type_name(node.type)}")
    return None


register_kernel("CONT", "cuda", _copy(logical_copy, copy_contig, "logical_copy"), supports=f32_or_i32)
register_kernel("DUP", "cuda", _copy(logical_copy, copy_contig, "logical_copy"), supports=f32_or_i32)
register_kernel("CPY", "cuda", _copy(cpy, cpy_contig, "cpy"), supports=f32_or_i32)
register_kernel("PAD", "cuda", _flat(pad, "pad"), supports=f32_or_i32)
register_kernel("REPEAT", "cuda", _flat(repeat, "repeat"), supports=f32_or_i32)
register_kernel("CONCAT", "cuda", _flat(concat, "concat"), supports=f32_or_i32)
register_kernel("GET_ROWS", "cuda", CudaKernel(_get_rows_launches, "get_rows", _get_rows_explain), supports=_get_rows_supports,
                index_slots=(2,))
