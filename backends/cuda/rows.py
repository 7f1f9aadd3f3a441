"""CUDA kernel of the rows family: SET_ROWS (rows of b scattered into a, in place).

One thread per (i0, i2, i3) element column of the destination: it walks b's rows i = 0, 1, ...
in order, so a repeated index keeps the last row, as on the CPU and in the reference, and no
two threads write the same element. A GPU kernel cannot raise: an index outside a's rows is
skipped (nothing written); the CPU backend refuses it. f32 rows into an f32 destination with
I32 indices; other types go to the CPU backend (I64 waits for int64 device buffers).
"""
from __future__ import annotations

from numba import cuda

from minigraph.core import dtypes
from minigraph.core.registry import register_kernel

from minigraph.backends.cuda.common import CudaKernel, at, f32_only, flat_launch, ne


@cuda.jit
def set_rows(meta, dst, b, idx, a):
    """dst (i0, idx[i, i2 % ne11, i3 % ne12], i2, i3) = b (i0, i, i2, i3) for i in 0..n-1."""
    n0 = ne(meta, 1, 0)
    n2 = ne(meta, 1, 2)
    j = cuda.grid(1)
    if j < n0 * n2 * ne(meta, 1, 3):
        i0 = j % n0
        i2 = (j // n0) % n2
        i3 = j // (n0 * n2)
        k1 = i2 % ne(meta, 2, 1)
        k2 = i3 % ne(meta, 2, 2)
        n_rows = ne(meta, 0, 1)
        for i in range(ne(meta, 1, 1)):
            row = idx[at(meta, 2, i, k1, k2, 0)]
            if row >= 0 and row < n_rows:
                dst[at(meta, 0, i0, row, i2, i3)] = b[at(meta, 1, i0, i, i2, i3)]


def _supports(node):
    if node.src[1].type != dtypes.TYPE_I32:
        return (f"SET_ROWS: CUDA indices must be i32, got {dtypes.type_name(node.src[1].type)} "
                "(the CUDA backend has no int64 device buffers)")
    return f32_only(node, index_slots=(2,))


def _launches(node):
    b = node.src[0]
    return [flat_launch(set_rows, b.ne[0] * b.ne[2] * b.ne[3])]


register_kernel("SET_ROWS", "cuda", CudaKernel(_launches, "set_rows"), supports=_supports, index_slots=(2,))
