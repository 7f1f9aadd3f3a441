"""CPU kernels of the elementwise family: binary ops (src1 tiles into src0), SCALE, unary ops.

Arrays are (ne3, ne2, ne1, ne0) views with any strides; dst may be the same memory as src0.
"""
from __future__ import annotations


import numpy as np
from numba import prange

from minigraph.core.registry import register_kernel

from minigraph.backends import scalar_math
from minigraph.backends.scalar_math import BINARY_CODES, UNARY_CODES
from minigraph.backends.cpu.jit import kernel, row_index, scalar


# Ops pass their scalar function as an int code: a dispatcher passed as an argument would keep
# Numba from caching the kernels and the compiled program; the switch is loop-invariant.
binary_fn = scalar(scalar_math.binary_fn)
unary_fn = scalar(scalar_math.unary_fn)


@kernel
def binary(dst, a, b, code):
    n3, n2, n1, n0 = dst.shape
    b3, b2, b1, b0 = b.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        brow = b[i3 % b3, i2 % b2, i1 % b1]  # the repeat's modulo once per row, not per element
        if b0 == n0:
            for i0 in range(n0):
                dst[i3, i2, i1, i0] = binary_fn(a[i3, i2, i1, i0], brow[i0], code)
        else:
            for i0 in range(n0):
                dst[i3, i2, i1, i0] = binary_fn(a[i3, i2, i1, i0], brow[i0 % b0], code)


@kernel
def unary(dst, a, code):
    n3, n2, n1, n0 = dst.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = unary_fn(a[i3, i2, i1, i0], code)


@kernel
def scale(dst, a, s, b):
    n3, n2, n1, n0 = dst.shape
    sf = np.float32(s)
    bf = np.float32(b)
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0] * sf + bf


for _op, _code in BINARY_CODES.items():
    register_kernel(_op, "cpu", binary, extra=(_code,))
for _op, _code in UNARY_CODES.items():
    register_kernel(_op, "cpu", unary, extra=(_code,))
register_kernel("SCALE", "cpu", scale)
