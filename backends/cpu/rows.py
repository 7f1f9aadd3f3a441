"""CPU kernel of the rows family: SET_ROWS (rows of b scattered into a, in place).

Arrays are (ne3, ne2, ne1, ne0) views with any strides. dst is a's memory (the node is a view of
a); the a argument itself is not read. The indices come as int32 or int64 arrays (I32 or I64).
dst and b come in their storage types (storage slots: an f16/bf16 KV cache is written in place,
never converted as a whole), each with its type code.
"""
from __future__ import annotations

from numba import prange

from minigraph.core.registry import register_kernel

from minigraph.backends.cpu.jit import kernel
from minigraph.backends.cpu.storage import from_f32, to_f32


@kernel
def set_rows(dst, b, idx, a, dst_type, b_type, a_type):
    """dst[i3, i2, idx[0, i3 % ne12, i2 % ne11, i], :] = b[i3, i2, i, :].

    b (ne3, ne2, n, ne0), idx (1, ne12, ne11, n), dst (ne3, ne2, n_rows, ne0). Every index is
    checked before anything is written; rows go in order i = 0, 1, ... within each (i3, i2), so a
    repeated index keeps the last row (the parallel loop runs over (i3, i2) only).
    """
    b3, b2, n, n0 = b.shape
    n_rows = dst.shape[2]
    k2, k1 = idx.shape[1], idx.shape[2]
    for j2 in range(k2):  # serial check first: no raise inside the parallel loop
        for j1 in range(k1):
            for i in range(n):
                row = idx[0, j2, j1, i]
                if row < 0 or row >= n_rows:
                    raise IndexError("set_rows: row index out of range")
    for r in prange(b3 * b2):
        i3 = r // b2
        i2 = r % b2
        for i in range(n):
            row = idx[0, i3 % k2, i2 % k1, i]
            for i0 in range(n0):
                dst[i3, i2, row, i0] = from_f32(to_f32(b[i3, i2, i, i0], b_type), dst_type, dst)


register_kernel("SET_ROWS", "cpu", set_rows, index_slots=(2,), storage_slots=(0, 1, 3))
