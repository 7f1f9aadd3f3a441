"""CPU kernels of the write family: ACC (region += b) and SET (region = b).

Arrays are (ne3, ne2, ne1, ne0) views. dst is contiguous with a's shape (and is a's memory when
the node is in place). The region has b's shape, element stride 1 and row strides nb1, nb2, nb3;
it starts at byte `offset` of dst, in units of dst's element size (the executor rescales them
when an f16/bf16 node is computed in f32).
"""
from __future__ import annotations

from numba import prange

from minigraph.core.registry import register_kernel

from minigraph.backends.cpu.jit import kernel, row_index


@kernel
def region_write(dst, a, b, nb1, nb2, nb3, offset, accumulate):
    """dst = a, then dst_flat[offset + i0 + i1*s1 + i2*s2 + i3*s3] = b[i3, i2, i1, i0] (+ old when
    `accumulate`, i.e. ACC).

    s1..s3 and the offset are nb1..nb3 and offset in elements; dst_flat is dst in row-major order.
    """
    n3, n2, n1, n0 = dst.shape
    b3, b2, b1, b0 = b.shape
    ts = dst.itemsize
    s1, s2, s3, off = nb1 // ts, nb2 // ts, nb3 // ts, offset // ts
    if b.size > 0:
        last = off + (b3 - 1) * s3 + (b2 - 1) * s2 + (b1 - 1) * s1 + (b0 - 1)
        if off < 0 or s1 < 0 or s2 < 0 or s3 < 0 or last >= dst.size:
            raise IndexError("acc/set: region lies outside the destination")
    # dst = a (harmless when the node is in place and dst is a's memory)
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0]
    # the region: rows of b never overlap each other (checked by the builder)
    for r in prange(b3 * b2 * b1):
        i3 = r // (b2 * b1)
        i2 = (r // b1) % b2
        i1 = r % b1
        k = off + i3 * s3 + i2 * s2 + i1 * s1  # flat index of the row's first element
        j0 = k % n0
        t = k // n0
        j1 = t % n1
        t = t // n1
        j2 = t % n2
        j3 = t // n2
        for i0 in range(b0):
            if accumulate:
                dst[j3, j2, j1, j0] += b[i3, i2, i1, i0]
            else:
                dst[j3, j2, j1, j0] = b[i3, i2, i1, i0]
            j0 += 1
            if j0 == n0:  # carry into dst's next row
                j0 = 0
                j1 += 1
                if j1 == n1:
                    j1 = 0
                    j2 += 1
                    if j2 == n2:
                        j2 = 0
                        j3 += 1


register_kernel("ACC", "cpu", region_write, extra=(1,))
register_kernel("SET", "cpu", region_write, extra=(0,))
