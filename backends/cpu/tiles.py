"""Products on small float32 tiles for the CPU kernels, driving the register-tiled micro-kernels
of tile_ir.py over a whole tile (row and column edges included):

- `dots(a, na, b, nb_, dk, s, b_type)`: s[i, j] = a[i, :dk] . b[j, :dk] (FLASH_ATTN_EXT's scores)
- `madd(p, nr, vb, voff, nj, dv, o, v_type, beta)`: o[r, :dv] = beta o[r, :dv] + sum_j p[r, j] vb[j, voff + :dv]
  (FLASH_ATTN_EXT's output update, GATED_DELTA_NET's state update)
- `matmul(a, b, c)`: c = a @ b (GATED_DELTA_NET's chunk products)

Measured on the dev box (one Zen 3 core, same process as a 512^3 OpenBLAS sgemm at 79 GFLOP/s):
64x128x128 66-86 GFLOP/s (OpenBLAS 57-61), 32x32x128 66-90 (38-45), a transposed 128x32 times
32x128 81-86 (62): no operand packing, and the outputs stay in registers. On an AVX-512 host
(Zen 5, one core) the 16-lane forms: output update 16x128x512 108 -> 199-218 GFLOP/s, 64x128x128
110 -> 212; scores 16x128x576 with f16 K 109 -> 188, 64x64x128 92 -> 126 (the lanes' final sums
weigh more in a short reduction).
"""
from __future__ import annotations

import numba
import numpy as np

from minigraph.core import dtypes
from minigraph.backends.cpu.storage import BF16, to_f32
from minigraph.backends.cpu.tile_ir import (WIDE, dots1x1, dots1x1w, dots1x3, dots1x3w, dots4x1, dots4x1w,
                                            dots4x3, dots4x3w, dots8x1w, dots8x3w, pv_rows1, pv_rows1w, pv_rows2,
                                            pv_rows2w, pv_rows4, pv_rows4w, pv_rows6, pv_rows6w, pv_rows8w)

F32 = dtypes.TYPE_F32
# reassociation lets LLVM vectorise the edge loops' reductions; no nnan/ninf (-inf logits)
_FAST = dict(fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True, nogil=True, error_model="numpy")


@numba.njit(**_FAST)
def dots(a, na, b, nb_, dk, s, b_type):
    """s[i, j] = a[i, :dk] . b[j, :dk] for i < na, j < nb_: 4 x 3 register tiles of 8-lane
    accumulators (16-lane 8 x 3 and 4 x 3 where the host has AVX-512), then 4 x 1, 1 x 3 and 1 x 1
    for the edges and plain loops for the columns past the last multiple of 8. a, s: C-contiguous
    f32; b: rows at any stride with contiguous values, f32 or F16/BF16 bits (b_type) read in place."""
    dots_w(a, na, b, nb_, dk, s, b_type, WIDE)


@numba.njit(inline="always", cache=True, nogil=True)
def _dots_tile(rows, three, wide, a, i, b, j, n8, s, bf):
    """The micro-kernel for a tile of `rows` (8: wide only, 4 or 1) x 3 (three) or 1 scores."""
    if three:
        if rows == 8:
            dots8x3w(a, i, b, j, n8, s, bf)
        elif rows == 4:
            dots4x3w(a, i, b, j, n8, s, bf) if wide else dots4x3(a, i, b, j, n8, s, bf)
        else:
            dots1x3w(a, i, b, j, n8, s, bf) if wide else dots1x3(a, i, b, j, n8, s, bf)
    elif rows == 8:
        dots8x1w(a, i, b, j, n8, s, bf)
    elif rows == 4:
        dots4x1w(a, i, b, j, n8, s, bf) if wide else dots4x1(a, i, b, j, n8, s, bf)
    else:
        dots1x1w(a, i, b, j, n8, s, bf) if wide else dots1x1(a, i, b, j, n8, s, bf)


@numba.njit(**_FAST)
def dots_w(a, na, b, nb_, dk, s, b_type, wide):
    """dots with 16-lane (wide) or 8-lane kernels: the tests run both on any host."""
    n8 = dk // 8
    bf = 1 if b_type == BF16 else 0
    i = 0
    while i < na:
        # blocks of 8 rows first (wide), then of 4, then the last rows one by one
        rows = 8 if wide and i + 8 <= na else 4 if i + 4 <= na else 1
        j = 0
        while j + 3 <= nb_:
            _dots_tile(rows, True, wide, a, i, b, j, n8, s, bf)
            j += 3
        for jj in range(j, nb_):
            _dots_tile(rows, False, wide, a, i, b, jj, n8, s, bf)
        i += rows
    if 8 * n8 < dk:
        for ii in range(na):
            for jj in range(nb_):
                acc = np.float32(0.0)
                for d in range(8 * n8, dk):
                    acc += a[ii, d] * to_f32(b[jj, d], b_type)
                s[ii, jj] += acc


@numba.njit(**_FAST)
def madd(p, nr, vb, voff, nj, dv, o, v_type, beta):
    """o[r, :dv] = beta * o[r, :dv] + sum_j p[r, j] * vb[j, voff:voff + dv] for r < nr (beta 0: o
    is only written, whatever it held; 1: exactly o + ...): blocks of 6, 4, 2 and 1 output rows x
    16 columns (AVX-512: 8, 6, 4, 2 and 1 rows x 32 columns, then one of 16) kept in registers over
    the whole j loop; the columns past the last multiple of 16 as plain loops. p: any f32 2-D array
    (transposed views too); o: C-contiguous f32; vb: rows at any stride with contiguous values,
    f32 or F16/BF16 bits (v_type)."""
    madd_w(p, nr, vb, voff, nj, dv, o, v_type, beta, WIDE)


@numba.njit(inline="always", cache=True, nogil=True)
def _pv_block(rows, wide, p, r, vb, voff, nj, o, d0, bf, beta):
    """The micro-kernel for `rows` (8: wide only, 6, 4, 2 or 1) output rows from column d0: 32
    columns (wide) or 16 (8 rows: two blocks of 4)."""
    if wide:
        if rows == 8:
            pv_rows8w(p, r, vb, voff, nj, o, d0, bf, beta)
        elif rows == 6:
            pv_rows6w(p, r, vb, voff, nj, o, d0, bf, beta)
        elif rows == 4:
            pv_rows4w(p, r, vb, voff, nj, o, d0, bf, beta)
        elif rows == 2:
            pv_rows2w(p, r, vb, voff, nj, o, d0, bf, beta)
        else:
            pv_rows1w(p, r, vb, voff, nj, o, d0, bf, beta)
    elif rows == 8:
        pv_rows4(p, r, vb, voff, nj, o, d0, bf, beta)
        pv_rows4(p, r + 4, vb, voff, nj, o, d0, bf, beta)
    elif rows == 6:
        pv_rows6(p, r, vb, voff, nj, o, d0, bf, beta)
    elif rows == 4:
        pv_rows4(p, r, vb, voff, nj, o, d0, bf, beta)
    elif rows == 2:
        pv_rows2(p, r, vb, voff, nj, o, d0, bf, beta)
    else:
        pv_rows1(p, r, vb, voff, nj, o, d0, bf, beta)


@numba.njit(**_FAST)
def madd_w(p, nr, vb, voff, nj, dv, o, v_type, beta, wide):
    """madd with 16-lane (wide) or 8-lane kernels: the tests run both on any host."""
    d16 = dv - dv % 16
    d32 = dv - dv % 32 if wide else 0   # the wide kernels' 32-column steps; 16-column ones after
    bf = 1 if v_type == BF16 else 0
    beta = np.float32(beta)
    r = 0
    while r < nr:
        left = nr - r   # blocks of 8 rows (wide), of 6, then at most one each of 4, 2 and 1
        rows = 8 if wide and left >= 8 else 6 if left >= 6 else 4 if left >= 4 else 2 if left >= 2 else 1
        for d0 in range(0, d32, 32):
            _pv_block(rows, True, p, r, vb, voff, nj, o, d0, bf, beta)
        for d0 in range(d32, d16, 16):
            _pv_block(rows, False, p, r, vb, voff, nj, o, d0, bf, beta)
        r += rows
    if d16 < dv:
        for rr in range(nr):
            orow = o[rr]
            for d in range(d16, dv):
                orow[d] = orow[d] * beta if beta != 0 else np.float32(0.0)
            for j in range(nj):
                x = p[rr, j]
                for d in range(d16, dv):
                    orow[d] += x * to_f32(vb[j, voff + d], v_type)


@numba.njit(**_FAST)
def matmul(a, b, c):
    """c = a @ b: a [m, k] any f32 2-D array (a transposed view too), b [k, n] f32 with contiguous
    rows, c [m, n] C-contiguous f32 (numpy shapes)."""
    if b.strides[1] != 4 or a.shape[1] != b.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1]:
        raise ValueError("matmul: shapes do not match, or b's rows are not contiguous")
    madd(a, a.shape[0], b, 0, a.shape[1], b.shape[1], c, F32, 0.0)
