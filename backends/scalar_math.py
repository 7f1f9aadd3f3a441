"""The scalar math of the elementwise ops, written once and compiled per backend.

Plain Python over `math` (float32 in, float32 out under Numba): the CPU backend compiles these
with `numba.njit`, the CUDA backend with `cuda.jit(device=True)`. An op picks its function by
an int code that is uniform across a kernel launch, so the branch costs nothing per element.
"""
from __future__ import annotations

import math

import numpy as np

BINARY_CODES = {"ADD": 0, "SUB": 1, "MUL": 2, "DIV": 3}
UNARY_CODES = {"NEG": 0, "ABS": 1, "SQR": 2, "SQRT": 3, "EXP": 4, "LOG": 5, "SIGMOID": 6, "SILU": 7,
               "GELU": 8, "TANH": 9, "RELU": 10, "SOFTPLUS": 11}

GELU_C = np.float32(math.sqrt(2.0 / math.pi))
GELU_A = np.float32(0.044715)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
SOFTPLUS_MAX = np.float32(20.0)  # ggml: softplus is the identity above 20


def binary_fn(x, y, code):
    if code == 0:
        return x + y
    if code == 1:
        return x - y
    if code == 2:
        return x * y
    return x / y


def unary_fn(x, code):
    if code == 0:
        return -x
    if code == 1:
        return abs(x)
    if code == 2:
        return x * x
    if code == 3:
        return math.sqrt(x)
    if code == 4:
        return math.exp(x)
    if code == 5:
        return math.log(x)
    if code == 6 or code == 7:  # sigmoid, silu: exp of a non-positive number only, never overflows
        if x >= ZERO:
            s = ONE / (ONE + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (ONE + e)
        return s if code == 6 else x * s
    if code == 8:  # ggml's tanh approximation
        return HALF * x * (ONE + math.tanh(GELU_C * x * (ONE + GELU_A * x * x)))
    if code == 9:
        return math.tanh(x)
    if code == 10:
        return x if x > ZERO else ZERO * x
    return x if x > SOFTPLUS_MAX else math.log1p(math.exp(x))  # x <= 20 here: exp stays finite


def tri_keep(i0, i1, tri_type):
    """Whether TRI keeps element (col i0, row i1): ggml's TRI_TYPE_UPPER_DIAG 0, UPPER 1,
    LOWER_DIAG 2, LOWER 3."""
    if tri_type == 0:
        return i0 >= i1
    if tri_type == 1:
        return i0 > i1
    if tri_type == 2:
        return i0 <= i1
    return i0 < i1
