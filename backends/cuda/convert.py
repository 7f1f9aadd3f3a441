"""Element conversions CUDA kernels share: f16 / bf16 storage values read as f32, error reports.

A kernel slot of type F16 is a float16 array (Numba converts on load: float32(x) is one cvt
instruction); BF16 is a uint16 array of raw bits, widened here without a bit cast (plain Numba
has none that also runs on the simulator): the exponent and mantissa fields scale through
math.ldexp, exact for every bf16 value, inf and NaN included.
"""
from __future__ import annotations

import math

from numba import cuda, float32, int32, uint32


@cuda.jit(device=True)
def bf16_to_f32(bits):
    """The f32 value of the bf16 whose 16 bits are `bits` (any unsigned integer < 65536)."""
    b = uint32(bits)
    e = int32((b >> 7) & 0xFF)
    m = int32(b & 0x7F)
    if e == 0xFF:
        v = float32(math.inf) if m == 0 else float32(math.nan)
    elif e == 0:
        v = float32(math.ldexp(float32(m), int(-133)))           # subnormal: m * 2^-133
    else:
        v = float32(math.ldexp(float32(m | 0x80), int(e - 134)))  # (1 + m/128) * 2^(e - 127)
    return -v if b & 0x8000 else v


@cuda.jit(device=True)
def to_f32(x, bf16):
    """A K/V/table element as f32: `bf16` says the array holds bf16 bits (else f32 or f16 values).
    The flag is a run-time argument, uniform over the launch, so one kernel takes every type."""
    if bf16:
        return bf16_to_f32(uint32(x))
    return float32(x)


@cuda.jit(device=True)
def report(err, code, a, b, c, d):
    """First report wins: err[0] = code (!= 0), err[1..4] = a, b, c, d (what the message names)."""
    if cuda.atomic.cas(err, 0, 0, code) == 0:
        err[1] = a
        err[2] = b
        err[3] = c
        err[4] = d


ERR_WORDS = 5
