"""CPU kernels of the elementwise family: binary ops (src1 tiles into src0), SCALE, unary ops.

Arrays are (ne3, ne2, ne1, ne0) views with any strides; dst may be the same memory as src0.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from minigraph.ops.registry import register_kernel

from .jit import kernel, scalar


# Ops pass their scalar function as an int code: a dispatcher passed as an argument would keep
# Numba from caching the kernels and the compiled program; the switch is loop-invariant.
BINARY_CODES = {"ADD": 0, "SUB": 1, "MUL": 2, "DIV": 3}
UNARY_CODES = {"NEG": 0, "ABS": 1, "SQR": 2, "SQRT": 3, "EXP": 4, "LOG": 5, "SIGMOID": 6, "SILU": 7,
               "GELU": 8, "TANH": 9, "RELU": 10, "SOFTPLUS": 11}
GELU_C = np.float32(math.sqrt(2.0 / math.pi))
ONE = np.float32(1.0)


@scalar
def binary_fn(x, y, code):
    if code == 0:
        return x + y
    if code == 1:
        return x - y
    if code == 2:
        return x * y
    return x / y


@scalar
def unary_fn(x, code):
    if code == 0:
        return -x
    if code == 1:
        return abs(x)
    if code == 2:
        return x * x
    if code == 3:
        return np.sqrt(x)
    if code == 4:
        return np.exp(x)
    if code == 5:
        return np.log(x)
    if code == 6:
        return ONE / (ONE + np.exp(-x))
    if code == 7:
        return x / (ONE + np.exp(-x))
    if code == 8:  # ggml's tanh approximation
        return np.float32(0.5) * x * (ONE + np.tanh(GELU_C * x * (ONE + np.float32(0.044715) * x * x)))
    if code == 9:
        return np.tanh(x)
    if code == 10:
        return x if x > 0 else np.float32(0.0) * x
    return x if x > np.float32(20.0) else np.log1p(np.exp(x))  # softplus, as ggml: identity above 20


@kernel
def binary(dst, a, b, code):
    n3, n2, n1, n0 = dst.shape
    b3, b2, b1, b0 = b.shape
    for r in prange(n3 * n2 * n1):
        i3 = r // (n2 * n1)
        i2 = (r // n1) % n2
        i1 = r % n1
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
        i3 = r // (n2 * n1)
        i2 = (r // n1) % n2
        i1 = r % n1
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = unary_fn(a[i3, i2, i1, i0], code)


@kernel
def scale(dst, a, s, b):
    n3, n2, n1, n0 = dst.shape
    sf = np.float32(s)
    bf = np.float32(b)
    for r in prange(n3 * n2 * n1):
        i3 = r // (n2 * n1)
        i2 = (r // n1) % n2
        i1 = r % n1
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = a[i3, i2, i1, i0] * sf + bf


for _op, _code in BINARY_CODES.items():
    register_kernel(_op, "cpu", binary, extra=(_code,))
for _op, _code in UNARY_CODES.items():
    register_kernel(_op, "cpu", unary, extra=(_code,))
register_kernel("SCALE", "cpu", scale)
