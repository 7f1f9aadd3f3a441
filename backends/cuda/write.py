"""CUDA kernels of the write family: ACC (region += b) and SET (region = b).

Two launches per node: dst = a (skipped when the node is built in place, dst being a's memory),
then one thread per element of b writes its region element. The region has b's ne, element
stride 1 and row strides nb1, nb2, nb3 (bytes), starting at byte `offset` of dst; dst is
contiguous (the builder checks a), and region element k (flat, row-major) is dst's k-th element.
The builder also checks that the region lies inside dst and never overlaps itself, so the
threads of the second launch never collide. f32 only: the byte params are in f32 units.
"""
from __future__ import annotations

from numba import cuda

from minigraph.core.registry import register_kernel

from minigraph.backends.cuda.common import CudaKernel, at, f32_only, flat_launch, nelem, size, unflat

F32_SIZE = 4


@cuda.jit
def copy_src0(meta, dst, a, b):
    """dst = a, element for element (same shape)."""
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        dst[at(meta, 0, i0, i1, i2, i3)] = a[at(meta, 1, i0, i1, i2, i3)]


@cuda.jit
def region_write(meta, dst, a, b, nb1, nb2, nb3, offset, accumulate):
    i = cuda.grid(1)
    if i < size(meta, 2):
        i0, i1, i2, i3 = unflat(meta, 2, i)
        k = (offset + i1 * nb1 + i2 * nb2 + i3 * nb3) // F32_SIZE + i0
        j0, j1, j2, j3 = unflat(meta, 0, k)
        o = at(meta, 0, j0, j1, j2, j3)
        v = b[at(meta, 2, i0, i1, i2, i3)]
        dst[o] = dst[o] + v if accumulate else v


def _launches(accumulate):
    def launches(node):
        out = []
        if node.view_src is None:  # not built in place: start from a copy of a
            out.append(flat_launch(copy_src0, nelem(node.ne), with_params=False))
        out.append(flat_launch(region_write, nelem(node.src[1].ne), (accumulate,)))
        return out
    return launches


register_kernel("ACC", "cuda", CudaKernel(_launches(1), "region_write"), supports=f32_only)
register_kernel("SET", "cuda", CudaKernel(_launches(0), "region_write"), supports=f32_only)
