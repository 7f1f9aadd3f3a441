"""CPU kernels of the layout family: CONT, DUP, CPY, PAD, REPEAT, CONCAT, GET_ROWS.

Arrays are (ne3, ne2, ne1, ne0) views with any strides. VIEW, RESHAPE, PERMUTE and TRANSPOSE
only relabel memory, so they have no kernels. Every kernel is generic over the element type:
float32 data and int32 (I32) data both work, and CPY converts between them on assignment.
"""
from __future__ import annotations

from numba import carray, njit, prange, types
from numba.extending import overload

from minigraph.core.registry import register_kernel

from minigraph.backends.cpu.jit import kernel, row_index, scalar
from minigraph.backends.cpu.storage import data_ptr, from_f32, load_value, nt_copy16, store_fence, to_f32

# elements a worker copies at a time when both sides are contiguous (a flat copy: a 67 MB state
# into the recurrent cache, one row of 16.8M elements, went through one thread's carry loop at
# 1.3 GB/s; flat and split over the threads it runs at memory speed)
FLAT_BLOCK = 1 << 15
# f32 flat copies of this many bytes or more store non-temporally, as memcpy does for large sizes:
# no read for ownership of destination lines that will not stay cached (Zen 3, 2 threads, 67 MB:
# 16-20 ms with ordinary stores, numpy's memcpy 8-9 ms)
STREAM_COPY_BYTES = 4 << 20


def _copy_block(d, s, lo, hi, stream, d_type, s_type):
    """d[lo:hi] = s[lo:hi] for 1-D contiguous arrays, each element as stored_as makes it; stream:
    non-temporal stores where both are f32 and the block is whole 64-byte lines (typed by the
    overload below)."""


@overload(_copy_block, inline="always")
def _copy_block_impl(d, s, lo, hi, stream, d_type, s_type):
    if d.dtype == types.float32 and s.dtype == types.float32:
        def nt(d, s, lo, hi, stream, d_type, s_type):
            if stream and (d.ctypes.data + 4 * lo) % 64 == 0 and (hi - lo) % 16 == 0:
                for i in range(lo, hi, 16):
                    nt_copy16(d, i, s)
                store_fence()
            else:
                _copy_from(d, s, lo, hi, d_type, s_type)
        return nt

    def plain(d, s, lo, hi, stream, d_type, s_type):
        _copy_from(d, s, lo, hi, d_type, s_type)
    return plain


def stored_as(x, x_type, dst_type, dst):
    """x, an element stored as x_type, as an element of `dst` stored as dst_type: the same bits
    where the types match (F16 -> F16 copies bits, NaN payloads too), else through f32 (rounded
    to nearest even into F16 / BF16, as ggml's cpy)."""


@overload(stored_as, inline="always")
def _stored_as(x, x_type, dst_type, dst):
    if x == dst.dtype:
        def same(x, x_type, dst_type, dst):
            if x_type == dst_type:
                return x
            return from_f32(to_f32(x, x_type), dst_type, dst)
        return same
    return lambda x, x_type, dst_type, dst: from_f32(load_value(x, x_type), dst_type, dst)


@njit(inline="always", cache=True, nogil=True)
def _copy_from(d, s, lo, hi, d_type, s_type):
    """d[lo:hi] = s[lo:hi] (as stored_as) through views: a loop from a variable start stays scalar
    (LLVM cannot rule out a negative, wrapping index), 10x slower on data in cache (Zen 5, 128 KB)."""
    dv, sv = d[lo:hi], s[lo:hi]
    for i in range(hi - lo):
        dv[i] = stored_as(sv[i], s_type, d_type, d)


@scalar
def _copy_row(dst, src, i3, i2, i1, k, d_type, s_type):
    """Copy dst row (i3, i2, i1) from src's elements k, k+1, ... in src's logical row-major order
    (each element as stored_as makes it)."""
    s2, s1, s0 = src.shape[1], src.shape[2], src.shape[3]
    j0 = k % s0
    t = k // s0
    j1 = t % s1
    t = t // s1
    j2 = t % s2
    j3 = t // s2
    for i0 in range(dst.shape[3]):
        dst[i3, i2, i1, i0] = stored_as(src[j3, j2, j1, j0], s_type, d_type, dst)
        j0 += 1
        if j0 == s0:  # carry into the next src row
            j0 = 0
            j1 += 1
            if j1 == s1:
                j1 = 0
                j2 += 1
                if j2 == s2:
                    j2 = 0
                    j3 += 1


@njit(inline="always", cache=True, nogil=True)
def _flat_copy(dst, a, d_type, a_type):
    """dst = a element by element in memory order when both are contiguous (then row-major order
    is memory order on both sides), split over the threads (a conversion where the types differ);
    False (nothing done) otherwise."""
    if not (dst.flags.c_contiguous and a.flags.c_contiguous):
        return False
    d, s = carray(data_ptr(dst), dst.size), carray(data_ptr(a), a.size)
    stream = d_type == a_type and dst.size * dst.itemsize >= STREAM_COPY_BYTES
    for c in prange((dst.size + FLAT_BLOCK - 1) // FLAT_BLOCK):
        _copy_block(d, s, c * FLAT_BLOCK, min((c + 1) * FLAT_BLOCK, dst.size), stream, d_type, a_type)
    return True


@kernel
def logical_copy(dst, a, d_type, a_type):
    """CONT, DUP: dst's elements in row-major order are a's in row-major order (shapes may differ);
    both in their storage types (d_type, a_type: F16 / BF16 as their bits)."""
    n3, n2, n1, n0 = dst.shape
    if dst.size == 0:
        return
    if _flat_copy(dst, a, d_type, a_type):
        return
    for r in prange(n3 * n2 * n1):
        _copy_row(dst, a, r // (n2 * n1), (r // n1) % n2, r % n1, r * n0, d_type, a_type)


@kernel
def cpy(dst, a, b, d_type, a_type, b_type):
    """CPY: as logical_copy (f32 <-> F16 / BF16 conversions included); dst is a view of b's
    memory, and b itself is never read."""
    n3, n2, n1, n0 = dst.shape
    if dst.size == 0:
        return
    if _flat_copy(dst, a, d_type, a_type):
        return
    for r in prange(n3 * n2 * n1):
        _copy_row(dst, a, r // (n2 * n1), (r // n1) % n2, r % n1, r * n0, d_type, a_type)


@kernel
def pad(dst, a, p0, p1, p2, p3):
    """Zeros after a's end in every dim (dst.shape = a.shape + p); the p's are implied by the shapes."""
    n3, n2, n1, n0 = dst.shape
    a3, a2, a1, a0 = a.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        inside = i3 < a3 and i2 < a2 and i1 < a1
        for i0 in range(n0):
            if inside and i0 < a0:
                dst[i3, i2, i1, i0] = a[i3, i2, i1, i0]
            else:
                dst[i3, i2, i1, i0] = 0


@kernel
def repeat(dst, a):
    """Tile a over dst: each of dst's dims is a multiple of a's."""
    n3, n2, n1, n0 = dst.shape
    a3, a2, a1, a0 = a.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        arow = a[i3 % a3, i2 % a2, i1 % a1]   # once a row: LLVM keeps the modulos inside the loop
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = arow[i0 % a0]


@kernel
def concat(dst, a, b, dim):
    """a then b along ggml dim `dim` (0 = ne0, numpy axis 3); all other dims match."""
    n3, n2, n1, n0 = dst.shape
    # where b starts in dst, per ggml dim
    o0 = a.shape[3] if dim == 0 else 0
    o1 = a.shape[2] if dim == 1 else 0
    o2 = a.shape[1] if dim == 2 else 0
    o3 = a.shape[0] if dim == 3 else 0
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        row_in_a = i3 < a.shape[0] and i2 < a.shape[1] and i1 < a.shape[2]
        for i0 in range(n0):
            if row_in_a and i0 < a.shape[3]:
                dst[i3, i2, i1, i0] = a[i3, i2, i1, i0]
            else:
                dst[i3, i2, i1, i0] = b[i3 - o3, i2 - o2, i1 - o1, i0 - o0]


@kernel
def get_rows(dst, a, idx, a_type):
    """dst[i12, i11, i10, :] = a[i12 % a3, i11 % a2, idx[0, i12, i11, i10], :].

    a (ne03, ne02, ne01, ne00) in its storage type (a_type: F16 / BF16 tables as their bits, read
    row by row, never converted whole), idx (1, ne12, ne11, ne10) int32, dst (ne12, ne11, ne10,
    ne00) f32 (i32 for an i32 table). Every index is checked before anything is read.
    """
    n3, n2, n1, n0 = dst.shape
    a3, a2, a1 = a.shape[0], a.shape[1], a.shape[2]
    for i3 in range(n3):  # serial check first: no raise inside the parallel loop
        for i2 in range(n2):
            for i1 in range(n1):
                row = idx[0, i3, i2, i1]
                if row < 0 or row >= a1:
                    raise IndexError("get_rows: row index out of range")
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        arow = a[i3 % a3, i2 % a2, idx[0, i3, i2, i1]]
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = load_value(arow[i0], a_type)


# dst and src in their storage types: F16 / BF16 copies and conversions inside the program, not
# from Python through f32 copies ([512, 512, 32], 2 threads: cont of a permuted F16 80 -> 17 ms,
# cpy f32 -> F16 64 -> 1.8 ms, F16 -> f32 15.9 -> 1.8 ms)
register_kernel("CONT", "cpu", logical_copy, storage_slots=(0, 1))
register_kernel("DUP", "cpu", logical_copy, storage_slots=(0, 1))
register_kernel("CPY", "cpu", cpy, storage_slots=(0, 1, 2))   # b (never read) typed like dst
register_kernel("PAD", "cpu", pad)
register_kernel("REPEAT", "cpu", repeat)
register_kernel("CONCAT", "cpu", concat)
# the table in its storage type: an F16 token embedding was converted whole on every compute
# (32000 x 4096, two rows: 213 ms; as stored 6 us)
register_kernel("GET_ROWS", "cpu", get_rows, index_slots=(2,), storage_slots=(1,))
