"""CPU kernels of the linalg family: MUL_MAT, OUT_PROD, TRI, FILL, DIAG, SOLVE_TRI.

Arrays are (ne3, ne2, ne1, ne0) views with any strides, so a matrix [cols, rows] is arr[.., row, col].
src0 broadcasts over dims 2/3 as ggml does: batch (i3, i2) reads src0[i3 // r3, i2 // r2].
dst never shares memory with a source.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from minigraph.core.registry import register_kernel

from minigraph.backends import scalar_math
from minigraph.backends.cpu.jit import JIT_OPTIONS, Helper, kernel, row_index, scalar
from minigraph.backends.cpu.storage import load_row
from minigraph.backends.cpu.tiles import dots
from minigraph.core import dtypes

tri_keep = scalar(scalar_math.tri_keep)

# MUL_MAT tiles: a task owns MM_BLOCK_M rows of src0; per slice of MM_BLOCK_K along K it copies
# them, transposed, into a contiguous [MM_BLOCK_K, MM_BLOCK_M] buffer (64 KiB: stays in L2 and is
# no large allocation) and walks src1 MM_BLOCK_N rows at a time. The 4 x 64 f32 accumulator tile
# keeps the inner loop a contiguous multiply-add over m that LLVM vectorises without fastmath.
MM_BLOCK_M = 64
MM_BLOCK_N = 4
MM_BLOCK_K = 256
# with few src1 rows (matrix x vector) the transposed copy of src0 costs more than it saves:
# those products run as row dot products (src0 rows of adjacent values take the register tiles
# for any N; others 8 independent f32 lanes, vectorisable without fastmath)
MM_DOT_MAX_N = 3
DOT_LANES = 8
DOT_ROWS = 64        # src0 rows a task of the tiled dot path


@numba.njit(inline="always", **JIT_OPTIONS)
def _tile_product(at, bt, acc, k_len):
    """acc[n, m] = sum_k bt[n, k] * at[k, m] for a full MM_BLOCK_N x MM_BLOCK_M tile."""
    for n in range(MM_BLOCK_N):
        for m in range(MM_BLOCK_M):
            acc[n, m] = 0.0
    for k in range(k_len):
        for n in range(MM_BLOCK_N):
            bv = bt[n, k]
            for m in range(MM_BLOCK_M):
                acc[n, m] += bv * at[k, m]


@numba.njit(inline="always", **JIT_OPTIONS)
def _row_dot(a, j3, j2, m, b, i3, i2, n, k_len, part):
    """sum_k a[j3, j2, m, k] * b[i3, i2, n, k] in DOT_LANES f32 lanes (part: scratch of that size)."""
    k_main = k_len - k_len % DOT_LANES
    for lane in range(DOT_LANES):
        part[lane] = 0.0
    for k0 in range(0, k_main, DOT_LANES):
        for lane in range(DOT_LANES):
            part[lane] += a[j3, j2, m, k0 + lane] * b[i3, i2, n, k0 + lane]
    s = np.float32(0.0)
    for k in range(k_main, k_len):
        s += a[j3, j2, m, k] * b[i3, i2, n, k]
    for lane in range(DOT_LANES):
        s += part[lane]
    return s


def as_f32(a, a_type):
    """src0 as float32: itself when stored as f32, else a converted copy of its F16 / BF16 bits
    (the paths that index it element by element; the register tiles read the bits in place)."""


@overload(as_f32, inline="always")
def _as_f32(a, a_type):
    if isinstance(a, types.Array) and a.dtype == types.float32:
        return lambda a, a_type: a

    def convert(a, a_type):
        out = np.empty(a.shape, np.float32)
        for i3 in range(a.shape[0]):
            for i2 in range(a.shape[1]):
                for i1 in range(a.shape[2]):
                    load_row(a[i3, i2, i1], out[i3, i2, i1], a_type)
        return out
    return convert


@kernel
def mul_mat_dot(dst, a, b, a_type):
    """MUL_MAT as dot products of src0 rows with src1 rows: tiles.dots' register tiles where src0's
    values are adjacent (any N), else (N <= MM_DOT_MAX_N) row dots read straight from a and b.
    dst[i3, i2, n, m] = sum_k a[i3 // r3, i2 // r2, m, k] * b[i3, i2, n, k]; a [K, M], b [K, N]."""
    n3, n2, n_rows, m_rows = dst.shape
    k_len = a.shape[3]
    r3 = n3 // a.shape[0]
    r2 = n2 // a.shape[1]
    if a.strides[3] == a.itemsize and k_len >= 8:
        # src0 rows with adjacent values: tiles.dots' register tiles (each src1 value loaded once for
        # three src0 rows, 8 or 16 lanes), on src1's rows copied contiguous once
        bc = np.empty((n3 * n2, n_rows, k_len), np.float32)
        for r in range(n3 * n2):
            for n in range(n_rows):
                brow = b[r // n2, r % n2, n]
                for k in range(k_len):
                    bc[r, n, k] = brow[k]
        n_blk = (m_rows + DOT_ROWS - 1) // DOT_ROWS
        for task in prange(n3 * n2 * n_blk):
            r = task // n_blk
            i3 = r // n2
            i2 = r - i3 * n2
            m0 = (task - r * n_blk) * DOT_ROWS
            mw = min(DOT_ROWS, m_rows - m0)
            s = np.zeros((n_rows, DOT_ROWS), np.float32)
            dots(bc[r], n_rows, a[i3 // r3, i2 // r2, m0:m0 + mw], mw, k_len, s, a_type)
            for n in range(n_rows):
                for m in range(mw):
                    dst[i3, i2, n, m0 + m] = s[n, m]
        return
    af = as_f32(a, a_type)
    for task in prange(n3 * n2 * m_rows):
        i3 = task // (n2 * m_rows)
        i2 = (task // m_rows) % n2
        m = task % m_rows
        part = np.empty(DOT_LANES, np.float32)
        for n in range(n_rows):
            dst[i3, i2, n, m] = _row_dot(af, i3 // r3, i2 // r2, m, b, i3, i2, n, k_len, part)


@numba.njit(**JIT_OPTIONS)
def _tiled_task(dst, a, b, task):
    """One task of mul_mat_tiled: MM_BLOCK_M rows of src0 against every row of src1, for one
    batch (i3, i2)."""
    n3, n2, n_rows, m_rows = dst.shape
    k_len = a.shape[3]
    r3 = n3 // a.shape[0]
    r2 = n2 // a.shape[1]
    n_mblk = (m_rows + MM_BLOCK_M - 1) // MM_BLOCK_M
    i3 = task // (n2 * n_mblk)
    i2 = (task // n_mblk) % n2
    j3 = i3 // r3
    j2 = i2 // r2
    m0 = (task % n_mblk) * MM_BLOCK_M
    mw = min(m_rows - m0, MM_BLOCK_M)
    at = np.zeros((MM_BLOCK_K, MM_BLOCK_M), np.float32)  # columns past mw stay zero
    bt = np.zeros((MM_BLOCK_N, MM_BLOCK_K), np.float32)  # rows past nw are stale, never stored
    acc = np.empty((MM_BLOCK_N, MM_BLOCK_M), np.float32)
    if k_len == 0:
        for n in range(n_rows):
            for m in range(mw):
                dst[i3, i2, n, m0 + m] = 0.0
    for k0 in range(0, k_len, MM_BLOCK_K):
        kw = min(k_len - k0, MM_BLOCK_K)
        for m in range(mw):
            for k in range(kw):
                at[k, m] = a[j3, j2, m0 + m, k0 + k]
        for n0 in range(0, n_rows, MM_BLOCK_N):
            nw = min(n_rows - n0, MM_BLOCK_N)
            for n in range(nw):
                for k in range(kw):
                    bt[n, k] = b[i3, i2, n0 + n, k0 + k]
            _tile_product(at, bt, acc, kw)
            for n in range(nw):
                for m in range(mw):
                    if k0 == 0:
                        dst[i3, i2, n0 + n, m0 + m] = acc[n, m]
                    else:
                        dst[i3, i2, n0 + n, m0 + m] += acc[n, m]


_A4 = numba.types.Array(numba.float32, 4, "A")
# called by address from both builds (jit.Helper): the tile code compiles once, not in each
TILED_TASK = Helper(_tiled_task, (_A4, _A4, _A4, numba.types.int64))
_call_tiled_task = TILED_TASK.call


@kernel(any_layout=True, helpers=(TILED_TASK,))
def mul_mat_tiled(dst, a, b, a_type):
    """MUL_MAT in tiles (N > MM_DOT_MAX_N): what it reads it copies into contiguous tiles first,
    so any strides do as well as contiguous ones (one compiled form for every layout).
    dst[i3, i2, n, m] = sum_k a[i3 // r3, i2 // r2, m, k] * b[i3, i2, n, k]; a [K, M], b [K, N]."""
    n_mblk = (dst.shape[3] + MM_BLOCK_M - 1) // MM_BLOCK_M
    af = as_f32(a, a_type)
    for task in prange(dst.shape[0] * dst.shape[1] * n_mblk):
        _call_tiled_task(dst, af, b, task)


def _pick_mul_mat(node):
    """mul_mat_dot where src0's rows hold adjacent values (its register tiles, any N) or N =
    node.ne[1] <= MM_DOT_MAX_N, else the copying tiles: the plan compiles one. Sapphire Rapids, 2
    threads, f32 [4096, 4096] x N: N = 4 18.8 -> 1.6 ms, 64 58.8 -> 11.9, 512 342 -> 79 ms (217
    GFLOP/s; numpy's OpenBLAS 6.3 / 12.4 / 59 ms)."""
    a = node.src[0]
    return mul_mat_dot if node.ne[1] <= MM_DOT_MAX_N or a.nb[0] == dtypes.type_size(a.type) else mul_mat_tiled


@kernel
def out_prod(dst, a, b):
    """dst[i3, i2, n, m] = sum_k a[i3 // r3, i2 // r2, k, m] * b[i3, i2, k, n]; a [M, K], b [N, K]."""
    n3, n2, n_rows, m_rows = dst.shape
    k_len = a.shape[2]
    r3 = n3 // a.shape[0]
    r2 = n2 // a.shape[1]
    for task in prange(n3 * n2 * n_rows):
        i3 = task // (n2 * n_rows)
        i2 = (task // n_rows) % n2
        n = task % n_rows
        acc = np.zeros(m_rows, np.float32)
        ab = a[i3 // r3, i2 // r2]     # not indexed per element: LLVM keeps the divisions in the loop
        for k in range(k_len):
            bv = b[i3, i2, k, n]
            ak = ab[k]
            for m in range(m_rows):
                acc[m] += ak[m] * bv
        for m in range(m_rows):
            dst[i3, i2, n, m] = acc[m]


@kernel
def tri(dst, a, tri_type):
    """Keep element (col i0, row i1) where ggml's TRI_TYPE test holds, else 0.

    0 UPPER_DIAG: i0 >= i1, 1 UPPER: i0 > i1, 2 LOWER_DIAG: i0 <= i1, 3 LOWER: i0 < i1.
    """
    n3, n2, n1, n0 = dst.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0] if tri_keep(i0, i1, tri_type) else np.float32(0.0)


@kernel
def fill(dst, a, c):
    """Every element of dst is c (a only gives the shape)."""
    n3, n2, n1, n0 = dst.shape
    cf = np.float32(c)
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = cf


@kernel
def diag(dst, a):
    """a [n, 1, ne2, ne3] -> dst [n, n, ne2, ne3] with a's row on the diagonal."""
    n3, n2, n1, n0 = dst.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = a[i3, i2, 0, i0] if i0 == i1 else np.float32(0.0)


@kernel
def solve_tri(dst, a, b, left, lower, uni):
    """Triangular solve per batch, f64 accumulation; A is a[.., row, col], n x n.

    left:  A X = B, B [k, n] (n rows): each column of B is one system A x = b.
    right: X A = B, B [n, k] (k rows): each row of B is one system A^T x = b.
    A^T of a lower A is upper, so the substitution runs forward when left == lower and backward
    otherwise; T[i, j] below is A[i, j] (left) or A[j, i] (right). Only A's `lower`/upper
    triangle is read, its diagonal not at all when uni. A zero pivot gives inf/nan.
    """
    n3, n2, b_rows, b_cols = b.shape
    n = a.shape[3]
    n_sys = b_cols if left else b_rows
    forward = (lower != 0) == (left != 0)
    for task in prange(n3 * n2 * n_sys):
        i3 = task // (n2 * n_sys)
        i2 = (task // n_sys) % n2
        v = task % n_sys
        x = np.empty(n, np.float64)
        for step in range(n):
            i = step if forward else n - 1 - step
            j_lo = 0 if forward else i + 1
            j_hi = i if forward else n
            s = np.float64(b[i3, i2, i, v] if left else b[i3, i2, v, i])
            for j in range(j_lo, j_hi):
                t = a[i3, i2, i, j] if left else a[i3, i2, j, i]
                s -= t * x[j]
            if not uni:
                s /= a[i3, i2, i, i]
            x[i] = s
            if left:
                dst[i3, i2, i, v] = s
            else:
                dst[i3, i2, v, i] = s


# src0 in its storage type: F16 / BF16 weights are read as stored, not copied to f32 every compute
register_kernel("MUL_MAT", "cpu", mul_mat_tiled, pick=_pick_mul_mat, storage_slots=(1,))
register_kernel("OUT_PROD", "cpu", out_prod)
register_kernel("TRI", "cpu", tri)
register_kernel("FILL", "cpu", fill)
register_kernel("DIAG", "cpu", diag)
register_kernel("SOLVE_TRI", "cpu", solve_tri)
