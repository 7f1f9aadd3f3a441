"""CUDA kernels of the elementwise family: ADD SUB MUL DIV (src1 repeats into src0), SCALE, unary ops.

One thread per dst element (cuda.grid + bounds guard); the element's (i0..i3) come from its
flat index over dst's ne, and every tensor is read through its own strides (common.py). dst may
be src0's memory (in-place): each thread reads its element before writing it.

Fast path: when every tensor is contiguous (and src1 is src0's shape, or one contiguous block
that src0 repeats, such as a row), element i is simply flat index i: no 64-bit divisions to
find (i0..i3), no per-dimension modulo, and no meta row (a sliced launch: each tensor is its
own 1-D array, common.py). In a replayed CUDA graph of small nodes the generic index
arithmetic and the layout loads are most of a kernel's time.
"""
from __future__ import annotations


import numpy as np
from numba import cuda

from minigraph.core.registry import register_kernel
from minigraph.core.tensor import is_contiguous

from minigraph.backends.cuda.common import CudaKernel, at, f32_only, flat_launch, ne, nelem, size, unflat

from minigraph.backends.scalar_math import BINARY_CODES, UNARY_CODES
from minigraph.backends import scalar_math

binary_fn = cuda.jit(device=True)(scalar_math.binary_fn)
unary_fn = cuda.jit(device=True)(scalar_math.unary_fn)


@cuda.jit
def binary(meta, dst, a, b, code):
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        y = b[at(meta, 2, i0 % ne(meta, 2, 0), i1 % ne(meta, 2, 1), i2 % ne(meta, 2, 2), i3 % ne(meta, 2, 3))]
        dst[at(meta, 0, i0, i1, i2, i3)] = binary_fn(a[at(meta, 1, i0, i1, i2, i3)], y, code)


@cuda.jit
def unary(meta, dst, a, code):
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        dst[at(meta, 0, i0, i1, i2, i3)] = unary_fn(a[at(meta, 1, i0, i1, i2, i3)], code)


@cuda.jit
def scale(meta, dst, a, s, b):
    i = cuda.grid(1)
    if i < size(meta, 0):
        i0, i1, i2, i3 = unflat(meta, 0, i)
        dst[at(meta, 0, i0, i1, i2, i3)] = a[at(meta, 1, i0, i1, i2, i3)] * np.float32(s) + np.float32(b)


@cuda.jit
def binary_contig(dst, a, b, code):
    """All contiguous (sliced launch); b's elements repeat along a's flat order (b.size divides n)."""
    i = cuda.grid(1)
    if i < dst.size:
        j = i if b.size == dst.size else i % b.size
        dst[i] = binary_fn(a[i], b[j], code)


@cuda.jit
def unary_contig(dst, a, code):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = unary_fn(a[i], code)


@cuda.jit
def scale_contig(dst, a, s, b):
    i = cuda.grid(1)
    if i < dst.size:
        dst[i] = a[i] * np.float32(s) + np.float32(b)


def tiles_flat(b, a) -> bool:
    """b repeated over a is b's flat block repeated along a's flat order (b = a trailing-1 prefix
    shape: ne[k] of b equals a's up to some dim, then 1s)."""
    k = 0
    while k < 4 and b.ne[k] == a.ne[k]:
        k += 1
    return all(n == 1 for n in b.ne[k:])


def _elementwise(generic, contig, name, code=None):
    extra = () if code is None else (code,)

    def launches(node):
        srcs = [t for t in node.src if t is not None]
        fast = all(is_contiguous(t) for t in [node, *srcs]) and (len(srcs) < 2 or tiles_flat(srcs[1], srcs[0]))
        return [flat_launch(contig if fast else generic, nelem(node.ne), extra, sliced=fast)]
    return CudaKernel(launches, name)


for _op, _code in BINARY_CODES.items():
    register_kernel(_op, "cuda", _elementwise(binary, binary_contig, "binary", _code), supports=f32_only)
for _op, _code in UNARY_CODES.items():
    register_kernel(_op, "cuda", _elementwise(unary, unary_contig, "unary", _code), supports=f32_only)
register_kernel("SCALE", "cuda", _elementwise(scale, scale_contig, "scale"), supports=f32_only)
