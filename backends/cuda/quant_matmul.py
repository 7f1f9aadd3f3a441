"""CUDA path of MUL_MAT with a block-quantized src0 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
Q6_K) and an f32 src1, following ggml's CPU semantics as backends/cpu/quant.py does.

Two launches a node:
  1. src1's rows are quantized to src0's vec_dot type (Q8_0, Q8_1 or Q8_K) with ggml's
     reference quantizer, into a workspace of the plan: int8 quants (K a row), the block scales
     (float16-rounded for Q8_0/Q8_1, float32 for Q8_K) and the sums Q8_1 (s) and Q8_K (bsums)
     keep. src1 is read through its strides (any layout).
  2. every dst element is the dot product of a src0 row with a quantized src1 row: integer sums
     a 32-element unit, scaled by d_x * d_y (and the Q4_1/Q5_1 min and K-quant mins terms).
On a GPU with NVRTC both are the CUDA C++ kernels of quant_mmvq.cu (quantize_q8: four lanes a
32-block, a warp a super-block; mmvq: dp4a, four int8 products an instruction, a warp a src0 row,
up to eight src1 columns at once; optionally, for one src1 column, both steps in one launch; see
quant_mmvq.py); elsewhere (the simulator, no NVRTC) the Numba kernels below (quantize_src1: a
thread a block; dot_rows: a block of 32 threads a dst element).

The integer sums are exact in both, so the result equals the CPU backend's up to the order of
the float32 scaling and accumulation (tests: |diff| <= 1e-5 * max |dst| measured ~1e-7).
src0 broadcasts over dims 2/3 as ggml does (batch (i2, i3) reads src0 batch (i2 / r2, i3 / r3)).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32

from minigraph.core import dtypes as D
from minigraph.core.registry import register_quant_kernel

from minigraph.backends.cuda import quant_mmvq
from minigraph.backends.cuda.common import CudaKernel, Launch, at, block_sum, flat_launch, ne
from minigraph.backends.cuda.quant_reorder import Reordered
from minigraph.backends.cuda.quant_blocks import DOT_TYPES, UNIT, mul_rn, nearest_int, round_f16, roundf, unit_dot
from minigraph.backends.cuda.quant_rows import row_at

DOT_THREADS = 32           # threads of the Numba dot kernel's block (one dst element a block)
MAX_GRID_YZ = 65535
Q8_0, Q8_1, Q8_K = D.TYPE_Q8_0, D.TYPE_Q8_1, D.TYPE_Q8_K
USE_MMVQ = True            # benchmark knob: False runs the Numba dot kernel on a GPU too


@cuda.jit
def quantize_src1(meta, dst, a, b, yq, yd, ys, vdt):
    """src1 row r = (n, i2, i3) in dst order (r = (i3 * ne2 + i2) * ne1 + n) into the workspace:
    one thread a 32-element block (Q8_0 / Q8_1) or a 256-element super-block (Q8_K)."""
    t = cuda.grid(1)
    K = ne(meta, 2, 0)
    N = ne(meta, 0, 1)
    n2 = ne(meta, 0, 2)
    span = 256 if vdt == Q8_K else UNIT
    per_row = K // span
    if t < per_row * N * n2 * ne(meta, 0, 3):
        blk = t % per_row
        r = t // per_row
        n = r % N
        i2 = (r // N) % n2
        i3 = r // (N * n2)
        k0 = span * blk
        amax = float32(0.0)
        mx = float32(0.0)
        for j in range(span):
            x = b[at(meta, 2, k0 + j, n, i2, i3)]
            if amax < abs(x):
                amax = abs(x)
                mx = x
        y = r * K + k0
        if vdt == Q8_K:
            if amax == 0:
                yd[r * per_row + blk] = float32(0.0)
                for j in range(span):
                    yq[y + j] = 0
                for j in range(16):
                    ys[(r * per_row + blk) * 16 + j] = float32(0.0)
                return
            iscale = float32(-127.0) / mx
            for g in range(16):
                s = int32(0)
                for j in range(16):
                    q = min(127, nearest_int(mul_rn(iscale, b[at(meta, 2, k0 + 16 * g + j, n, i2, i3)])))
                    yq[y + 16 * g + j] = q
                    s += q
                ys[(r * per_row + blk) * 16 + g] = float32(s)
            yd[r * per_row + blk] = float32(1.0) / iscale
            return
        d = amax / float32(127.0)
        idv = float32(1.0) / d if d != 0 else float32(0.0)
        s = int32(0)
        for j in range(span):
            q = roundf(mul_rn(b[at(meta, 2, k0 + j, n, i2, i3)], idv))
            yq[y + j] = q
            s += q
        yd[r * per_row + blk] = round_f16(d)
        if vdt == Q8_1:
            ys[r * per_row + blk] = round_f16(float32(s) * d)


@cuda.jit
def dot_rows(meta, dst, a, b, yq, yd, ys, kind):
    """dst (m, n, i2, i3) = src0 row (m, i2 / r2, i3 / r3) . quantized src1 row (n, i2, i3):
    block (m, n, i2 + ne2 * i3), its 32 threads over the row's units, summed in shared memory."""
    sh = cuda.shared.array(DOT_THREADS, float32)
    m = cuda.blockIdx.x
    n = cuda.blockIdx.y
    n2 = ne(meta, 0, 2)
    i2 = cuda.blockIdx.z % n2
    i3 = cuda.blockIdx.z // n2
    K = ne(meta, 1, 0)
    n_units = K // UNIT
    xr = row_at(meta, 1, m, i2 // (n2 // ne(meta, 1, 2)), i3 // (ne(meta, 0, 3) // ne(meta, 1, 3)))
    r = (i3 * n2 + i2) * ne(meta, 0, 1) + n
    acc = float32(0.0)
    for u in range(cuda.threadIdx.x, n_units, DOT_THREADS):
        acc += unit_dot(kind, a, xr, u, yq, r * K, yd, ys, r * n_units)
    total = block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        dst[at(meta, 0, m, n, i2, i3)] = total


def workspace(node):
    """(yq int8, yd f32, ys f32) device arrays for src1 quantized to src0's vec_dot type."""
    vdt = D.VEC_DOT_TYPE[node.src[0].type]
    K = node.src[0].ne[0]
    rows = node.ne[1] * node.ne[2] * node.ne[3]
    n_d = rows * (K // 256 if vdt == Q8_K else K // UNIT)
    n_s = rows * (K // 16 if vdt == Q8_K else K // UNIT)
    return (cuda.device_array(max(1, rows * K), np.int8), cuda.device_array(max(1, n_d), np.float32),
            cuda.device_array(max(1, n_s), np.float32))


def _launches(node):
    a = node.src[0]
    M, N, n2, n3 = node.ne
    if M * N * n2 * n3 == 0:
        return []
    vdt = D.VEC_DOT_TYPE[a.type]
    yq, yd, ys = work = workspace(node)
    span = 256 if vdt == Q8_K else UNIT
    if USE_MMVQ and quant_mmvq.refusal(node) is None:
        return quant_mmvq.launches(node, work, Reordered.of(node))
    quant = flat_launch(quantize_src1, a.ne[0] // span * N * n2 * n3, (*work, vdt))
    return [quant, Launch(dot_rows, (M, N, n2 * n3), (DOT_THREADS,), (yq, yd, ys, a.type))]


def _supports(node):
    a, b = node.src
    if a.type not in DOT_TYPES:
        return f"MUL_MAT: no CUDA dot product for a {D.type_name(a.type)} src0 (runs on the CPU)"
    if b.type != D.TYPE_F32 or node.type != D.TYPE_F32:
        return (f"MUL_MAT: CUDA takes a quantized src0 with f32 src1 and dst, got {D.type_name(b.type)} src1, "
                f"{D.type_name(node.type)} dst")
    if node.ne[1] > MAX_GRID_YZ or node.ne[2] * node.ne[3] > MAX_GRID_YZ:
        return f"MUL_MAT: CUDA grid limits: ne1 = {node.ne[1]}, ne2*ne3 = {node.ne[2] * node.ne[3]} (<= {MAX_GRID_YZ})"
    return None


register_quant_kernel("MUL_MAT", "cuda", CudaKernel(_launches, "mul_mat_q"), supports=_supports)
