"""Device helpers for ggml's block formats on CUDA (Numba): reading a block's float16 scales,
dequantizing one element, the integer dot product of one 32-element unit against src1's 8-bit
quants, and writing a Q8_0 / Q4_0 block as ggml's reference quantizer does.

A quantized tensor reaches a kernel as its raw bytes (a flat uint8 array; meta in bytes for
offsets and nb, elements for ne: common.py). Every row is cut into units of 32 elements: a
32-element block (Q4_0 ... Q8_0) is one unit, a 256-element super-block (Q4_K, Q5_K, Q6_K) eight
(unit u of a row covers its elements 32u .. 32u + 31, in block i = u // 8, part u % 8).

Exactness. The values follow backends/cpu/quant.py step for step. NVVM fuses a multiply into a
following add (FMA contraction) unless told otherwise, which would round differently from the
CPU's separate steps, so every multiply whose result is added goes through `mul_rn`
(libdevice's __fmul_rn, never fused). float16 scales are decoded and rounded with integer and
ldexp arithmetic (exact, no bit casts, which plain Numba lacks on the simulator).
"""
from __future__ import annotations

import math

from numba import cuda, float32, int32

from minigraph.core import dtypes as D

from minigraph.backends.cuda.common import SIM

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q5_0, D.TYPE_Q5_1, D.TYPE_Q8_0
Q4_K, Q5_K, Q6_K = D.TYPE_Q4_K, D.TYPE_Q5_K, D.TYPE_Q6_K
DOT_TYPES = (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)   # src0 types of MUL_MAT (and rows read)
WRITE_TYPES = (Q8_0, Q4_0)                                     # types written by CPY / SET_ROWS
UNIT = 32
F16_MAX_ROUNDED = 65520.0   # from here on a float32 rounds to float16 inf

if SIM:  # the simulator's libdevice stubs return NaN; Python multiplies float32 without fusing
    @cuda.jit(device=True)
    def mul_rn(a, b):
        return float32(a) * float32(b)
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def mul_rn(a, b):
        """a * b rounded once, never fused into a following add."""
        return libdevice.fmul_rn(float32(a), float32(b))


@cuda.jit(device=True)
def f16_at(a, o):
    """The little-endian float16 at byte o of a, as float32."""
    b = int32(a[o]) | (int32(a[o + 1]) << 8)
    e = (b >> 10) & 31
    m = b & 1023
    if e == 31:
        v = float32(math.inf) if m == 0 else float32(math.nan)
    elif e == 0:
        v = float32(math.ldexp(float32(m), int(-24)))
    else:
        v = float32(math.ldexp(float32(m | 1024), int(e - 25)))
    return -v if b & 0x8000 else v


@cuda.jit(device=True)
def i8_at(a, o):
    v = int32(a[o])
    return v - 256 if v >= 128 else v


@cuda.jit(device=True)
def rint_pos(v):
    """Round v >= 0 (< 2^23) to the nearest integer, halves to even (ggml's nearest_int)."""
    r = math.floor(v)
    f = v - r
    if f > 0.5 or (f == 0.5 and int32(r) % 2 == 1):
        r += 1.0
    return float32(r)


@cuda.jit(device=True)
def nearest_int(v):
    return int32(rint_pos(v)) if v >= 0 else -int32(rint_pos(-v))


@cuda.jit(device=True)
def trunc(v):
    """Toward zero, as a float (math.trunc takes no numpy float32 on the simulator)."""
    return float32(math.floor(v)) if v >= 0 else -float32(math.floor(-v))


@cuda.jit(device=True)
def roundf(v):
    """C roundf: halves away from zero."""
    r = trunc(v)
    if abs(v - r) >= 0.5:
        r += 1.0 if v > 0 else -1.0
    return int32(r)


@cuda.jit(device=True)
def round_f16(x):
    """GGML_FP32_TO_FP16 then back to float32 (round to nearest even; subnormals, inf)."""
    ax = abs(x)
    if ax != ax or ax == math.inf:
        return x
    if ax == 0:
        return x
    m, e = math.frexp(ax)                    # ax = m * 2^e, 0.5 <= m < 1
    shift = min(11, e + 24)                  # significant bits kept: 11, fewer as a subnormal
    r = math.ldexp(rint_pos(float32(math.ldexp(m, int(shift)))), int(e - shift))
    r = float32(r)
    if r >= F16_MAX_ROUNDED:
        r = float32(math.inf)
    return r if x > 0 else -r


@cuda.jit(device=True)
def f16_bits(h):
    """The IEEE half bits of h, a float32 that is a float16 value (round_f16's result)."""
    sign = 0x8000 if math.copysign(1.0, h) < 0 else 0
    ah = abs(h)
    if ah != ah:
        return sign | 0x7E00
    if ah == math.inf:
        return sign | 0x7C00
    if ah < 6.103515625e-05:                 # 2^-14: a subnormal (or zero), units of 2^-24
        return sign | int32(math.ldexp(ah, int(24)))
    m, e = math.frexp(ah)
    return sign | ((e + 14) << 10) | (int32(math.ldexp(m, int(11))) - 1024)


@cuda.jit(device=True)
def scale_min_k4(a, so, j):
    """get_scale_min_k4: the 6-bit scale and min of group j from the 12 bytes at so."""
    if j < 4:
        return int32(a[so + j] & 63), int32(a[so + j + 4] & 63)
    sc = (int32(a[so + j + 4]) & 15) | ((int32(a[so + j - 4]) >> 6) << 4)
    mn = (int32(a[so + j + 4]) >> 4) | ((int32(a[so + j]) >> 6) << 4)
    return sc, mn


@cuda.jit(device=True)
def nibble(a, qs, j):
    """Quant j (0..31) of a 32-element block whose 16 bytes of nibbles start at qs."""
    if j < 16:
        return int32(a[qs + j]) & 15
    return int32(a[qs + j - 16]) >> 4


@cuda.jit(device=True)
def bit_of(a, qh, j):
    """Bit j of the little-endian 32-bit qh at byte qh (Q5_0 / Q5_1's fifth bits)."""
    return (int32(a[qh + (j >> 3)]) >> (j & 7)) & 1


@cuda.jit(device=True)
def dequant(kind, a, xr, i0):
    """Element i0 of the quantized row starting at byte xr of a, as dequantize_row_* gives it."""
    u = i0 // UNIT
    j = i0 % UNIT
    if kind == Q8_0:
        xa = xr + 34 * u
        return float32(i8_at(a, xa + 2 + j)) * f16_at(a, xa)
    if kind == Q4_0:
        xa = xr + 18 * u
        return float32(nibble(a, xa + 2, j) - 8) * f16_at(a, xa)
    if kind == Q4_1:
        xa = xr + 20 * u
        return mul_rn(float32(nibble(a, xa + 4, j)), f16_at(a, xa)) + f16_at(a, xa + 2)
    if kind == Q5_0:
        xa = xr + 22 * u
        return float32(nibble(a, xa + 6, j) + 16 * bit_of(a, xa + 2, j) - 16) * f16_at(a, xa)
    if kind == Q5_1:
        xa = xr + 24 * u
        return mul_rn(float32(nibble(a, xa + 8, j) + 16 * bit_of(a, xa + 4, j)), f16_at(a, xa)) + f16_at(a, xa + 2)
    i = u // 8
    g = u % 8
    if kind == Q6_K:
        xa = xr + 210 * i
        h = g // 4
        quarter = g % 4
        lo = int32(a[xa + 64 * h + 32 * (quarter % 2) + j]) >> (4 * (quarter // 2))
        hi = (int32(a[xa + 128 + 32 * h + j]) >> (2 * quarter)) & 3
        q = ((lo & 15) | (hi << 4)) - 32
        sc = i8_at(a, xa + 192 + 8 * h + 2 * quarter + j // 16)
        return mul_rn(mul_rn(f16_at(a, xa + 208), float32(sc)), float32(q))
    five = kind == Q5_K
    xa = xr + (176 if five else 144) * i
    sc, mn = scale_min_k4(a, xa + 4, g)
    q = (int32(a[xa + (48 if five else 16) + 32 * (g // 2) + j]) >> (4 * (g % 2))) & 15
    if five:
        q += 16 * ((int32(a[xa + 16 + j]) >> g) & 1)
    d1 = mul_rn(f16_at(a, xa), float32(sc))
    m1 = mul_rn(f16_at(a, xa + 2), float32(mn))
    return mul_rn(d1, float32(q)) - m1


@cuda.jit(device=True)
def unit_dot(kind, a, xr, u, yq, yo, yd, ys, r_blocks):
    """Unit u of the src0 row at byte xr of a times src1's quantized row: its share of the dot.

    yq: src1's int8 quants from index yo (the row's first); yd / ys: its scales and sums for the
    row's blocks from index r_blocks (Q8_0 / Q8_1: one a unit, s for Q8_1; Q8_K: d one a
    super-block, ys the 16-element sums, two a unit)."""
    y = yo + UNIT * u
    if kind == Q8_0 or kind == Q4_0 or kind == Q4_1 or kind == Q5_0 or kind == Q5_1:
        size = 34 if kind == Q8_0 else (18 if kind == Q4_0 else (20 if kind == Q4_1 else (22 if kind == Q5_0 else 24)))
        xa = xr + size * u
        s = int32(0)
        for j in range(UNIT):
            if kind == Q8_0:
                q = i8_at(a, xa + 2 + j)
            elif kind == Q4_0:
                q = nibble(a, xa + 2, j) - 8
            elif kind == Q4_1:
                q = nibble(a, xa + 4, j)
            elif kind == Q5_0:
                q = nibble(a, xa + 6, j) + 16 * bit_of(a, xa + 2, j) - 16
            else:
                q = nibble(a, xa + 8, j) + 16 * bit_of(a, xa + 4, j)
            s += q * int32(yq[y + j])
        part = float32(s) * (f16_at(a, xa) * yd[r_blocks + u])
        if kind == Q4_1 or kind == Q5_1:
            part += f16_at(a, xa + 2) * ys[r_blocks + u]   # m_x times src1's block sum
        return part
    i = u // 8
    g = u % 8
    dy = yd[r_blocks // 8 + i]
    if kind == Q6_K:
        xa = xr + 210 * i
        h = g // 4
        quarter = g % 4
        s0 = int32(0)
        s1 = int32(0)
        lo0 = xa + 64 * h + 32 * (quarter % 2)
        lo_shift = 4 * (quarter // 2)
        for j in range(UNIT):
            lo = int32(a[lo0 + j]) >> lo_shift
            hi = (int32(a[xa + 128 + 32 * h + j]) >> (2 * quarter)) & 3
            p = (((lo & 15) | (hi << 4)) - 32) * int32(yq[y + j])
            if j < 16:
                s0 += p
            else:
                s1 += p
        sc = xa + 192 + 8 * h + 2 * quarter
        return float32(i8_at(a, sc) * s0 + i8_at(a, sc + 1) * s1) * (f16_at(a, xa + 208) * dy)
    five = kind == Q5_K
    xa = xr + (176 if five else 144) * i
    qs = xa + (48 if five else 16) + 32 * (g // 2)
    s = int32(0)
    shift = 4 * (g % 2)
    for j in range(UNIT):
        q = (int32(a[qs + j]) >> shift) & 15
        if five:
            q += 16 * ((int32(a[xa + 16 + j]) >> g) & 1)
        s += q * int32(yq[y + j])
    sc, mn = scale_min_k4(a, xa + 4, g)
    bsum = ys[2 * (r_blocks + u)] + ys[2 * (r_blocks + u) + 1]
    return float32(sc * s) * (f16_at(a, xa) * dy) - float32(mn) * bsum * (f16_at(a, xa + 2) * dy)


@cuda.jit(device=True)
def write_block(kind, xs, out, o):
    """quantize_row_q8_0_ref / quantize_row_q4_0_ref of the 32 floats xs into out[o:]."""
    amax = float32(0.0)
    mx = float32(0.0)
    for j in range(UNIT):
        if amax < abs(xs[j]):
            amax = abs(xs[j])
            mx = xs[j]
    d = amax / float32(127.0) if kind == Q8_0 else mx / float32(-8.0)
    idv = float32(1.0) / d if d != 0 else float32(0.0)
    bits = f16_bits(round_f16(d))
    out[o] = bits & 255
    out[o + 1] = (bits >> 8) & 255
    if kind == Q8_0:
        for j in range(UNIT):
            out[o + 2 + j] = roundf(mul_rn(xs[j], idv)) & 255
    else:
        for j in range(16):
            q0 = min(15, int32(trunc(mul_rn(xs[j], idv) + float32(8.5))))
            q1 = min(15, int32(trunc(mul_rn(xs[16 + j], idv) + float32(8.5))))
            out[o + 2 + j] = q0 | (q1 << 4)
