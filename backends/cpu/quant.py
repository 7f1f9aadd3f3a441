"""CPU paths of the nodes that touch block-quantized tensors (Q4_0 ... Q8_K): MUL_MAT with a
quantized src0, CPY to and from quantized types, GET_ROWS from quantized rows, SET_ROWS into a
quantized cache.

Calling convention (registry.register_quant_kernel): fn(node, build, dst, *srcs), where a
quantized tensor comes as its raw rows, a uint8 array (ne3, ne2, ne1, row bytes) strided like
nb, and every other tensor as float32 (I32/I64 indices as themselves).

MUL_MAT follows ggml's CPU backend: each src1 row is quantized to src0's vec_dot type (Q8_0,
Q8_1 or Q8_K, with ggml's reference quantizer, in Numba) and every result element is a dot
product of the integer quants, scaled per block (the `ggml_vec_dot_*_q8_*` kernels, written as
vector LLVM IR in backends/cpu/quant_dot.py); a Numba kernel runs them over src0 rows in parallel.
GET_ROWS and CPY to f32 dequantize rows with a Numba kernel (ggml's
dequantize_row_* step for step: the same floats). CPY to Q8_0/Q4_0 and SET_ROWS into a Q8_0/Q4_0
cache quantize with a Numba kernel (the reference quantizer step for step: the same bytes);
other types quantize with the numpy reference (minigraph.core.quants).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from minigraph.core import dtypes as D
from minigraph.core import quants
from minigraph.core.errors import fail
from minigraph.core.registry import Kernel, register_quant_kernel
from minigraph.core.tensor import nbytes

from minigraph.backends.cpu.jit import JIT_OPTIONS, fetch_add, kernel, row_index
from minigraph.backends.cpu.quant_dot import (ROW_KINDS, ROWS, dot_q4_0, dot_q4_0_rows, dot_q4_1, dot_q4_1_rows, dot_q4_k,
                                              dot_q4_k_rows, dot_q5_0, dot_q5_0_rows, dot_q5_1, dot_q5_1_rows, dot_q5_k,
                                              dot_q5_k_rows, dot_q6_k, dot_q6_k_rows, dot_q8_0, dot_q8_0_rows)

import numba

# every float16 bit pattern as float32: the block scales are read through this table
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
F32 = np.float32


@numba.njit(inline="always", **JIT_OPTIONS)
def _h(u8, off, f16):
    """The little-endian float16 at byte `off`, as float32."""
    return f16[np.int64(u8[off]) | (np.int64(u8[off + 1]) << 8)]


U15 = np.uint8(15)
U4 = np.uint8(4)
F8 = np.float32(8.0)
F16 = np.float32(16.0)


@numba.njit(inline="always", **JIT_OPTIONS)
def _scale_min_k4(a, sc_off, j):
    """get_scale_min_k4: the 6-bit scale and min of group j from the 12 scale bytes."""
    if j < 4:
        return F32(a[sc_off + j] & 63), F32(a[sc_off + j + 4] & 63)
    d = (a[sc_off + j + 4] & 15) | ((a[sc_off + j - 4] >> 6) << 4)
    m = (a[sc_off + j + 4] >> 4) | ((a[sc_off + j] >> 6) << 4)
    return F32(d), F32(m)



# -- MUL_MAT: src1 rows quantized to the vec_dot type (Numba, the reference quantizers step for
# step), then ggml's integer dot products (backends/cpu/quant_dot.py, vector code in LLVM IR) ---

@kernel
def quantize_q8(x, yq, yd, ys, with_sum, lanes, lane_off, f16):
    """Rows x (R, K) f32 -> Q8_0, or Q8_1 when with_sum: quants yq (R, K) int8, block scales yd
    (R, K / 32) as float32 (the float16-rounded d the dot products use), and for Q8_1 the block
    sums ys (R, K / 32), s = fp16(d * sum of quants), as float32 (quantize_row_q8_{0,1}_ref).
    lane_off != 0: lanes (R, K / 4) int32 = lane_off * the sum of each 4 quants (Q4_0 / Q5_0's
    negated offsets, where their unsigned dot products start: LANE_OFFSET)."""
    for r in prange(x.shape[0]):
        scratch = np.empty(1, np.float32)
        for i in range(x.shape[1] // 32):
            o = 32 * i
            amax = F32(0.0)
            for j in range(32):
                amax = max(amax, abs(x[r, o + j]))
            d = amax / F32(127.0)
            idv = F32(1.0) / d if d != 0 else F32(0.0)
            yd[r, i] = f16[_f16_bits(d, scratch)]
            s = 0
            for j in range(32):
                v = x[r, o + j] * idv
                q = np.trunc(v)
                if abs(v - q) >= F32(0.5):       # roundf: halves away from zero
                    q += F32(1.0) if v > 0 else F32(-1.0)
                yq[r, o + j] = np.int64(q)
                s += np.int64(q)
            if with_sum:
                ys[r, i] = f16[_f16_bits(F32(s) * d, scratch)]
            if lane_off:
                for j in range(8):
                    lanes[r, 8 * i + j] = lane_off * (np.int64(yq[r, o + 4 * j]) + yq[r, o + 4 * j + 1] +
                                                      yq[r, o + 4 * j + 2] + yq[r, o + 4 * j + 3])


@kernel
def quantize_q8_k(x, yq, yd, bsums):
    """Rows x (R, K) f32 -> Q8_K (quantize_row_q8_K_ref): quants yq (R, K) int8, d yd (R, K / 256)
    float32, and the int16 sums of each 16 quants, bsums (R, K / 16)."""
    for r in prange(x.shape[0]):
        for i in range(x.shape[1] // 256):
            o = 256 * i
            amax = F32(0.0)
            mx = F32(0.0)
            for j in range(256):
                if abs(x[r, o + j]) > amax:     # the first element of largest magnitude, signed
                    amax = abs(x[r, o + j])
                    mx = x[r, o + j]
            iscale = F32(-127.0) / mx if amax != 0 else F32(0.0)
            for g in range(16):
                s = 0
                for j in range(16):
                    q = min(127, np.int64(np.rint(iscale * x[r, o + 16 * g + j]))) if amax != 0 else 0
                    yq[r, o + 16 * g + j] = q
                    s += q
                bsums[r, 16 * i + g] = s
            yd[r, i] = F32(1.0) / iscale if amax != 0 else F32(0.0)


# the serial quantizers, as module-level dispatchers the program form calls
_quantize_q8 = quantize_q8.serial
_quantize_q8_k = quantize_q8_k.serial


@numba.njit(inline="always", **JIT_OPTIONS)
def _vec_dot(kind, a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16):
    if kind == D.TYPE_Q4_0:
        return dot_q4_0(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q4_1:
        return dot_q4_1(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q5_0:
        return dot_q5_0(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q5_1:
        return dot_q5_1(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q8_0:
        return dot_q8_0(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q4_K:
        return dot_q4_k(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q5_K:
        return dot_q5_k(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)
    return dot_q6_k(a, ao, yq, yo, yd, ydo, ys, yso, nblk, f16)


@numba.njit(inline="always", **JIT_OPTIONS)
def _vec_dot_rows(kind, a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16):
    """ROWS src0 rows `step` bytes apart against one src1 row (kind in ROW_KINDS): the floats
    _vec_dot gives each row."""
    if kind == D.TYPE_Q4_0:
        return dot_q4_0_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q4_1:
        return dot_q4_1_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q5_0:
        return dot_q5_0_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q5_1:
        return dot_q5_1_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q8_0:
        return dot_q8_0_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q4_K:
        return dot_q4_k_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    if kind == D.TYPE_Q5_K:
        return dot_q5_k_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)
    return dot_q6_k_rows(a, ao, step, yq, yo, yd, ydo, ys, yso, nblk, f16)


# src0 rows per task (ggml's mat-vec chunk too): 64 tasks for a 4096-row weight, enough for the
# threads to even out their ends. Zen 5, 2 threads, one token, three alternating runs: 64 against
# 16 rows, [4096, 14336] q4_0 1.13-1.22 vs 1.46-2.46 ms, q8_0 1.30-1.37 vs 1.66-1.88, q4_K
# 0.99-1.18 vs 1.16-1.22; [4096, 4096] 0.28-0.35 vs 0.33-0.40 (each task a longer stream of rows
# for the prefetchers, a quarter of the shared queue's atomics)
ROWS_PER_TASK = 64
MAX_LANES = 64      # prange lanes taking tasks from a shared queue (idle lanes cost nothing)
# Claims shrink as the rows run out (OpenMP's "guided"): long runs of consecutive rows first, for
# the prefetchers. Sapphire Rapids, 2 threads, 4096 x 4096 Q4_K, two processes each: fixed claims
# of 64 rows 330-340 us, 1/8 of the rest 296-306, 1/2 308-312 (Q8_0 within noise)
GUIDE = 8


@numba.njit(inline="always", **JIT_OPTIONS)
def _rows(dst, i3, i2, m0, m1, a, ao0, a_nb1, yq, yd, ys, ys_row, kind, nblk, f16):
    """dst[i3, i2, :, m0:m1]: src0 rows against every src1 column (the rows stay in L1), ROWS
    rows at a time (the types of quant_dot.ROW_KINDS), the rest one by one."""
    n2, n1 = dst.shape[1], dst.shape[2]
    k = yq.shape[0] // max(1, dst.shape[0] * n2 * n1)
    m = m0
    if kind in ROW_KINDS and n1 == 1:
        # one src1 column (a decode token): the dot alone in the row loop. Inside the loop over
        # the columns LLVM kept the row group's pointers on the stack: Ice Lake, Q4_0 4096 x
        # 4096, the task loop alone in one process, one thread 1.03-1.05 -> 0.70-0.77 ms
        r = i3 * n2 + i2
        yo, ydo, yso = r * k, r * nblk, r * ys_row
        while m + ROWS <= m1:
            got = _vec_dot_rows(kind, a, ao0 + m * a_nb1, a_nb1, yq, yo, yd, ydo, ys, yso, nblk, f16)
            for j in range(ROWS):
                dst[i3, i2, 0, m + j] = got[j]
            m += ROWS
    elif kind in ROW_KINDS:
        while m + ROWS <= m1:
            ao = ao0 + m * a_nb1
            for n in range(n1):
                r = (i3 * n2 + i2) * n1 + n
                got = _vec_dot_rows(kind, a, ao, a_nb1, yq, r * k, yd, r * nblk, ys, r * ys_row, nblk, f16)
                for j in range(ROWS):
                    dst[i3, i2, n, m + j] = got[j]
            m += ROWS
    for m in range(m, m1):
        ao = ao0 + m * a_nb1
        for n in range(n1):
            r = (i3 * n2 + i2) * n1 + n
            dst[i3, i2, n, m] = _vec_dot(kind, a, ao, yq, r * k, yd, r * nblk, ys, r * ys_row, nblk, f16)


@numba.njit(inline="always", **JIT_OPTIONS)
def _mul_mat_tasks(dst, a, a_nb1, a_nb2, a_nb3, a3, a2, yq, yd, ys, ys_row, kind, nblk, f16):
    """The body of mul_mat_q (inlined into both of its forms, so its prange runs in parallel).
    The threads claim runs of src0 rows from a shared counter (dst's rows, all (i3, i2) in turn),
    each 1/GUIDE of what is left and at least ROWS_PER_TASK: a thread slowed by another process's
    work on its core claims fewer of them."""
    n3, n2, n1, m_rows = dst.shape
    r3 = n3 // a3
    r2 = n2 // a2
    total = n3 * n2 * m_rows
    # not np.zeros: under parallel=True Numba turns np.zeros into a parallel loop of its own, a
    # second fork/join (thread wake-up) per node that cost 10-25% of a 4096 x 4096 mat-vec
    queue = np.empty(1, np.int64)
    queue[0] = 0
    for lane in prange(min((total + ROWS_PER_TASK - 1) // ROWS_PER_TASK, MAX_LANES)):
        while True:
            # guided: a claim is 1/GUIDE of the rows left (at least ROWS_PER_TASK), so each thread
            # streams long runs of consecutive rows first and the claims shrink towards the end
            size = max(ROWS_PER_TASK, (total - queue[0]) // GUIDE // ROWS * ROWS)
            g = fetch_add(queue, size)
            if g >= total:
                break
            end = min(g + size, total)
            while g < end:
                i32 = g // m_rows
                m0 = g - i32 * m_rows
                m1 = min(m_rows, m0 + (end - g))
                i3 = i32 // n2
                i2 = i32 - i3 * n2
                _rows(dst, i3, i2, m0, m1, a, (i3 // r3) * a_nb3 + (i2 // r2) * a_nb2,
                      a_nb1, yq, yd, ys, ys_row, kind, nblk, f16)
                g += m1 - m0


@kernel
def mul_mat_q(dst, a, a_nb1, a_nb2, a_nb3, a3, a2, yq, yd, ys, ys_row, kind, nblk, f16):
    """dst[i3, i2, n, m] = vec_dot(src0 row (i3 // r3, i2 // r2, m), quantized src1 row (i3, i2, n)).

    a: src0's bytes from its first one (uint8), rows a_nb1 apart (ggml's nb); yq / yd / ys: src1
    quantized to the vec_dot type, flat, rows in dst order (int8 quants, float32 block scales,
    extra bytes per row ys_row: Q8_1 sums or Q8_K bsums); kind: src0's ggml type; nblk: blocks
    per row. The per-node path (from Python, quantize_src1 first)."""
    _mul_mat_tasks(dst, a, a_nb1, a_nb2, a_nb3, a3, a2, yq, yd, ys, ys_row, kind, nblk, f16)


# bytes of one block of each quantized type, indexed by ggml type (from dtypes: one definition;
# a global array is a constant of the kernels that read it)
BLOCK_BYTES = np.zeros(max(D.QUANT_TYPES) + 1, np.int64)
for _t in D.QUANT_TYPES:
    BLOCK_BYTES[_t] = D.type_size(_t)


@kernel(any_layout=True)   # it copies src1 into rows of its own: one compiled form for every layout
def mul_mat_q_program(dst, a, b, kind):
    """MUL_MAT with a quantized src0 inside the compiled executor: dst (ne13, ne12, ne11, ne01)
    f32, a src0's raw rows (ne03, ne02, ne01, row bytes; byte strides nb03, nb02, nb01, 1), b
    src1 (ne13, ne12, ne11, ne10) f32 with any strides, kind src0's type (its storage code).
    src1 is quantized here (the same Numba quantizers as quantize_src1), then mul_mat_q's loop.
    The half table is the module's (a global array: Numba keeps it as a constant of the kernel)."""
    f16 = F16_TABLE
    n3, n2, n1, k = b.shape
    x = np.empty((n3 * n2 * n1, k), np.float32)
    for r in range(x.shape[0]):
        # the row's indices outside the element loop: divided per element they cost 30-45 us of
        # a 4096-long src1 row (Sapphire Rapids; a 4096 x 4096 Q8_0 mat-vec is ~400 us)
        i3, i2, i1 = row_index(r, n2, n1)
        for i in range(k):
            x[r, i] = b[i3, i2, i1, i]
    yq = np.empty((x.shape[0], k), np.int8)
    if kind == D.TYPE_Q4_K or kind == D.TYPE_Q5_K or kind == D.TYPE_Q6_K:
        yd = np.empty((x.shape[0], k // 256), np.float32)
        bsums = np.empty((x.shape[0], k // 16), np.int16)
        _quantize_q8_k(x, yq, yd, bsums)
        ys = bsums.reshape(-1).view(np.uint8)
        ys_row = 2 * (k // 16)
    else:
        with_sum = kind == D.TYPE_Q4_1 or kind == D.TYPE_Q5_1
        off = _Q4_0_OFFSET if kind == D.TYPE_Q4_0 else _Q5_0_OFFSET if kind == D.TYPE_Q5_0 else 0
        yd = np.empty((x.shape[0], k // 32), np.float32)
        sums = np.empty((x.shape[0], k // 32) if with_sum else (1, 1), np.float32)
        lanes = np.empty((x.shape[0], k // 4) if off else (1, 1), np.int32)
        _quantize_q8(x, yq, yd, sums, with_sum, lanes, off, f16)
        ys = lanes.reshape(-1).view(np.uint8) if off else sums.reshape(-1).view(np.uint8)
        ys_row = k if off else 4 * (k // 32) if with_sum else 0
    s3, s2, s1, _ = a.strides
    _mul_mat_tasks(dst, a, s1, s2, s3, a.shape[0], a.shape[1], yq.reshape(-1), yd.reshape(-1), ys, ys_row, kind,
                   a.shape[3] // BLOCK_BYTES[kind], f16)


def _flat_bytes(raw: np.ndarray, n: int) -> np.ndarray:
    """The n bytes from raw's first one as a contiguous 1-D array (no copy; n = 0: one zero byte)."""
    if raw.flags.c_contiguous and raw.size == n and n:
        return raw.reshape(-1)
    return np.lib.stride_tricks.as_strided(raw, shape=(n,), strides=(1,)) if n else np.zeros(1, np.uint8)


# what src0's quants are stored above their value (Q4_0: q - 8, Q5_0: q - 16), negated: the dot
# products take q unsigned and start from -offset * src1's sums of each 4 quants
LANE_OFFSET = {D.TYPE_Q4_0: -8, D.TYPE_Q5_0: -16}
_Q4_0_OFFSET, _Q5_0_OFFSET = LANE_OFFSET[D.TYPE_Q4_0], LANE_OFFSET[D.TYPE_Q5_0]   # for the program (Numba)


def quantize_src1(b: np.ndarray, src0_type: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """src1 (..., K) f32 quantized to src0_type's vec_dot type with ggml's reference quantizer,
    split for mul_mat_q: (quants int8, block scales float32, extra bytes, extra bytes per row).
    Serial, as in mul_mat_q_program (a small share of any mat-mul: K values a src1 row)."""
    vec_dot_type = D.VEC_DOT_TYPE[src0_type]
    k = b.shape[-1]
    x = np.ascontiguousarray(b, F32).reshape(-1, k)
    yq = np.empty((len(x), k), np.int8)
    if vec_dot_type == D.TYPE_Q8_K:
        yd = np.empty((len(x), k // 256), F32)
        bsums = np.empty((len(x), k // 16), np.int16)
        _quantize_q8_k(x, yq, yd, bsums)
        return yq.reshape(-1), yd.reshape(-1), bsums.reshape(-1).view(np.uint8), 2 * (k // 16)
    with_sum = vec_dot_type == D.TYPE_Q8_1
    off = LANE_OFFSET.get(src0_type, 0)
    yd = np.empty((len(x), k // 32), F32)
    ys = np.empty((len(x), k // 32) if with_sum else (1, 1), F32)
    lanes = np.empty((len(x), k // 4) if off else (1, 1), np.int32)
    _quantize_q8(x, yq, yd, ys, with_sum, lanes, off, F16_TABLE)
    if off:
        return yq.reshape(-1), yd.reshape(-1), lanes.reshape(-1).view(np.uint8), k
    return yq.reshape(-1), yd.reshape(-1), ys.reshape(-1).view(np.uint8), 4 * (k // 32) if with_sum else 0


def _mul_mat(node, build, dst, a_raw, b):
    a = node.src[0]
    yq, yd, ys, ys_row = quantize_src1(b, a.type)
    getattr(mul_mat_q, build)(dst, _flat_bytes(a_raw, nbytes(a)), a.nb[1], a.nb[2], a.nb[3], a.ne[3], a.ne[2],
                              yq, yd, ys, ys_row, a.type, a.ne[0] // D.blck_size(a.type), F16_TABLE)


def _mul_mat_supports(node):
    a = node.src[0]
    if D.is_quantized(node.src[1].type) or D.is_quantized(node.type):
        return "MUL_MAT: CPU takes a quantized src0 only (src1 and dst f32)"
    if a.type not in D.VEC_DOT_TYPE or a.type in (D.TYPE_Q8_1, D.TYPE_Q8_K):
        return f"MUL_MAT: no CPU dot product for {D.type_name(a.type)} src0"
    return None


# -- dequantizing rows (GET_ROWS, CPY to f32): dequantize_row_* step for step, so the values are
# ggml's bit for bit (one float32 multiply, then the min, per element) --------------------------

@numba.njit(inline="always", **JIT_OPTIONS)
def _dq_row(kind, a, ai, ao, out, nblk, f16):
    """Dequantize the nblk blocks at byte ao of a (ai: the same bytes as int8) into out."""
    for i in range(nblk):
        if kind == D.TYPE_Q8_0:
            xa = ao + i * 34
            d = _h(a, xa, f16)
            for j in range(32):
                out[32 * i + j] = F32(ai[xa + 2 + j]) * d
        elif kind == D.TYPE_Q4_0 or kind == D.TYPE_Q4_1:
            xa = ao + i * (18 if kind == D.TYPE_Q4_0 else 20)
            qs = xa + (2 if kind == D.TYPE_Q4_0 else 4)
            d = _h(a, xa, f16)
            for j in range(16):
                v = a[qs + j]
                if kind == D.TYPE_Q4_0:
                    out[32 * i + j] = (F32(v & U15) - F8) * d
                    out[32 * i + 16 + j] = (F32(v >> U4) - F8) * d
                else:
                    m = _h(a, xa + 2, f16)
                    out[32 * i + j] = F32(v & U15) * d + m
                    out[32 * i + 16 + j] = F32(v >> U4) * d + m
        elif kind == D.TYPE_Q5_0 or kind == D.TYPE_Q5_1:
            one = kind == D.TYPE_Q5_1
            xa = ao + i * (24 if one else 22)
            qh = xa + (4 if one else 2)
            d = _h(a, xa, f16)
            m = _h(a, xa + 2, f16) if one else F32(0.0)
            for j in range(16):
                v = a[qh + 4 + j]
                h0 = F32((a[qh + (j >> 3)] >> (j & 7)) & 1) * F16
                h1 = F32((a[qh + 2 + (j >> 3)] >> (j & 7)) & 1) * F16
                if one:
                    out[32 * i + j] = (F32(v & U15) + h0) * d + m
                    out[32 * i + 16 + j] = (F32(v >> U4) + h1) * d + m
                else:
                    out[32 * i + j] = (F32(v & U15) + h0 - F16) * d
                    out[32 * i + 16 + j] = (F32(v >> U4) + h1 - F16) * d
        elif kind == D.TYPE_Q4_K or kind == D.TYPE_Q5_K:
            five = kind == D.TYPE_Q5_K
            xa = ao + i * (176 if five else 144)
            d = _h(a, xa, f16)
            dmin = _h(a, xa + 2, f16)
            for g in range(8):
                sc, mn = _scale_min_k4(a, xa + 4, g)
                d1 = d * sc
                m1 = dmin * mn
                q = xa + (48 if five else 16) + 32 * (g // 2)
                shift = 4 * (g % 2)
                for j in range(32):
                    v = F32((a[q + j] >> shift) & 15)
                    if five:
                        v += F32((a[xa + 16 + j] >> g) & 1) * F16
                    out[256 * i + 32 * g + j] = d1 * v - m1
        else:  # Q6_K
            xa = ao + i * 210
            d = _h(a, xa + 208, f16)
            for h in range(2):
                for quarter in range(4):
                    lo = xa + 64 * h + 32 * (quarter % 2)
                    shift = 4 * (quarter // 2)
                    for j in range(32):
                        hi = (a[xa + 128 + 32 * h + j] >> (2 * quarter)) & 3
                        q = F32(((a[lo + j] >> shift) & 15) | (hi << 4)) - F32(32.0)
                        sc = F32(ai[xa + 192 + 8 * h + 2 * quarter + j // 16])
                        out[256 * i + 128 * h + 32 * quarter + j] = d * sc * q


@kernel
def dequantize_rows(out, a, ai, offs, kind, nblk, f16):
    """out[r, :] = the dequantized row at byte offs[r] of a (rows in parallel)."""
    for r in prange(out.shape[0]):
        _dq_row(kind, a, ai, offs[r], out[r], nblk, f16)


def _dequantize(node, build, raw: np.ndarray, type_: int, offs: np.ndarray) -> np.ndarray:
    """Rows of a quantized tensor's raw view (byte offsets from its first byte) as float32."""
    k = raw.shape[-1] // D.type_size(type_) * D.blck_size(type_)
    out = np.empty((len(offs), k), F32)
    span = int(offs.max()) + raw.shape[-1] if len(offs) else 1
    a = _flat_bytes(raw, span)
    getattr(dequantize_rows, build)(out, a, a.view(np.int8), offs.astype(np.int64), type_,
                                    k // D.blck_size(type_), F16_TABLE)
    return out


def _row_offsets(raw: np.ndarray, i3, i2, i1) -> np.ndarray:
    """Byte offsets (from raw's first byte) of rows (i3, i2, i1) of a raw (ne3, ne2, ne1, bytes) view."""
    s3, s2, s1, _ = raw.strides
    return (np.asarray(i3) * s3 + np.asarray(i2) * s2 + np.asarray(i1) * s1).reshape(-1)


# -- quantizing rows into a Q8_0 / Q4_0 cache (CPY, SET_ROWS): quantize_row_q8_0_ref and
# quantize_row_q4_0_ref step for step, so the bytes are ggml's -------------------------------------

NUMBA_QUANTIZE = (D.TYPE_Q8_0, D.TYPE_Q4_0)   # the other types quantize with minigraph.core.quants


@numba.njit(inline="always", **JIT_OPTIONS)
def _f16_bits(f, scratch):
    """GGML_FP32_TO_FP16: float32 -> IEEE half bits, round to nearest even (subnormals, inf, NaN)."""
    scratch[0] = f
    u = np.int64(scratch.view(np.uint32)[0])
    sign = (u >> 16) & 0x8000
    e = (u >> 23) & 0xFF
    m = u & 0x7FFFFF
    if e == 0xFF:
        return sign | 0x7C00 | (0x200 if m else 0)
    e16 = e - 112           # e - 127 + 15
    if e16 >= 31:
        return sign | 0x7C00
    if e16 <= 0:            # a half subnormal (or zero): units of 2^-24
        if e16 < -10:
            return sign
        m = m | 0x800000
        shift = 14 - e16
        r = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (r & 1)):
            r += 1
        return sign | r
    r = (e16 << 10) | (m >> 13)
    rem = m & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (r & 1)):
        r += 1              # a carry into the exponent is right (up to inf)
    return sign | r


@numba.njit(inline="always", **JIT_OPTIONS)
def _put_f16(out, off, bits):
    out[off] = np.uint8(bits & 0xFF)
    out[off + 1] = np.uint8(bits >> 8)


@numba.njit(inline="always", **JIT_OPTIONS)
def _q_row(kind, x, out, nblk, scratch):
    """One row x (nblk blocks) into out (its bytes)."""
    for i in range(nblk):
        xb = x[32 * i: 32 * i + 32]
        if kind == D.TYPE_Q8_0:
            amax = F32(0.0)
            for j in range(32):
                amax = max(amax, abs(xb[j]))
            d = amax / F32(127.0)
            idv = F32(1.0) / d if d != 0 else F32(0.0)
            o = 34 * i
            _put_f16(out, o, _f16_bits(d, scratch))
            for j in range(32):
                v = xb[j] * idv
                r = np.trunc(v)
                if abs(v - r) >= F32(0.5):       # roundf: halves away from zero
                    r += F32(1.0) if v > 0 else F32(-1.0)
                out[o + 2 + j] = np.uint8(np.int64(r) & 0xFF)
        else:  # Q4_0
            amax = F32(0.0)
            mx = F32(0.0)
            for j in range(32):
                if amax < abs(xb[j]):
                    amax = abs(xb[j])
                    mx = xb[j]
            d = mx / F32(-8.0)
            idv = F32(1.0) / d if d != 0 else F32(0.0)
            o = 18 * i
            _put_f16(out, o, _f16_bits(d, scratch))
            for j in range(16):
                q0 = min(15, np.int64(xb[j] * idv + F32(8.5)))
                q1 = min(15, np.int64(xb[16 + j] * idv + F32(8.5)))
                out[o + 2 + j] = np.uint8(q0 | (q1 << 4))


@kernel
def quantize_rows(out, x, kind, nblk):
    """out[r] = row x[r] quantized to `kind` (Q8_0 or Q4_0) as ggml's reference quantizer does."""
    for r in prange(x.shape[0]):
        scratch = np.empty(1, np.float32)
        _q_row(kind, x[r], out[r], nblk, scratch)


def _quantize(build, rows: np.ndarray, type_: int) -> np.ndarray:
    """Rows (..., ne0) f32 -> raw blocks (..., row bytes): Numba for Q8_0/Q4_0, else the reference."""
    if type_ not in NUMBA_QUANTIZE:
        return quants.quantize(rows, type_)
    k = rows.shape[-1]
    flat = np.ascontiguousarray(rows, F32).reshape(-1, k)
    out = np.empty((flat.shape[0], k // 32 * D.type_size(type_)), np.uint8)
    getattr(quantize_rows, build)(out, flat, type_, k // 32)
    return out.reshape(*rows.shape[:-1], -1)


# -- copies ------------------------------------------------------------------------------------

def _cpy(node, build, dst, a, b):
    src = node.src[0]
    if D.is_quantized(node.type):  # f32 -> quantized: dst's rows from a's elements in logical order
        rows = np.ascontiguousarray(a, F32).reshape(node.ne[3], node.ne[2], node.ne[1], node.ne[0])
        dst[...] = _quantize(build, rows, node.type)
    else:  # quantized -> f32 / f16 (dst is an f32 array here)
        n3, n2, n1 = a.shape[:3]
        i3, i2, i1 = np.meshgrid(np.arange(n3), np.arange(n2), np.arange(n1), indexing="ij")
        vals = _dequantize(node, build, a, src.type, _row_offsets(a, i3, i2, i1))
        dst[...] = vals.reshape(dst.shape)


def _cpy_supports(node):
    src = node.src[0]
    if D.is_quantized(node.type) and (src.type != D.TYPE_F32 or node.type == D.TYPE_Q8_1):
        return f"CPY: CPU quantizes f32 only, not {D.type_name(src.type)} -> {D.type_name(node.type)}"
    if D.is_quantized(src.type) and node.type not in (D.TYPE_F32, D.TYPE_F16):
        return f"CPY: CPU dequantizes to f32/f16 only, not {D.type_name(src.type)} -> {D.type_name(node.type)}"
    return None


def _check_rows(op, node, idx, n_rows):
    bad = (idx < 0) | (idx >= n_rows)
    if bad.any():
        raise fail(op, f"row index {int(idx[bad][0])} is outside 0..{n_rows - 1} of node '{node.name}'", node.src)


def _get_rows(node, build, dst, a_raw, idx):
    """dst[i12, i11, i10, :] = dequantized a[i12 % a3, i11 % a2, idx[0, i12, i11, i10], :]."""
    a3, a2, a1 = a_raw.shape[:3]
    ix = np.asarray(idx[0]).astype(np.int64)  # (ne12, ne11, ne10)
    _check_rows("GET_ROWS", node, ix, a1)
    i3 = (np.arange(ix.shape[0]) % a3)[:, None, None]
    i2 = (np.arange(ix.shape[1]) % a2)[None, :, None]
    offs = _row_offsets(a_raw, *np.broadcast_arrays(i3, i2, ix))
    dst[...] = _dequantize(node, build, a_raw, node.src[0].type, offs).reshape(dst.shape)


def _get_rows_supports(node):
    if node.src[1].type != D.TYPE_I32 or node.type != D.TYPE_F32:
        return "GET_ROWS: quantized rows come out as f32, with i32 indices"
    return None


def _set_rows(node, build, dst, b, idx, a):
    """dst[i3, i2, idx[0, i3 % ne12, i2 % ne11, i], :] = quantized b[i3, i2, i, :]."""
    n_rows = dst.shape[2]
    ix = np.asarray(idx[0]).astype(np.int64)  # (ne12, ne11, n)
    _check_rows("SET_ROWS", node, ix, n_rows)
    bq = _quantize(build, np.ascontiguousarray(b, F32), node.type)
    for i3 in range(bq.shape[0]):
        for i2 in range(bq.shape[1]):
            rows = ix[i3 % ix.shape[0], i2 % ix.shape[1]]
            if len(np.unique(rows)) == len(rows):
                dst[i3, i2, rows] = bq[i3, i2]
            else:  # a repeated index keeps the last row, as ggml's loop does
                for i, r in enumerate(rows):
                    dst[i3, i2, r] = bq[i3, i2, i]


def _set_rows_supports(node):
    if node.src[0].type != D.TYPE_F32 or node.type == D.TYPE_Q8_1:
        return "SET_ROWS: CPU writes f32 rows into a quantized destination (not q8_1)"
    return None


register_quant_kernel("MUL_MAT", "cpu", _mul_mat, supports=_mul_mat_supports,
                      program=Kernel(mul_mat_q_program, storage_slots=(1,)))
register_quant_kernel("CPY", "cpu", _cpy, supports=_cpy_supports)
register_quant_kernel("GET_ROWS", "cpu", _get_rows, supports=_get_rows_supports)
register_quant_kernel("SET_ROWS", "cpu", _set_rows, supports=_set_rows_supports)
