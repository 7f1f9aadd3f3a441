"""CUDA kernels of the reduce family: SUM, SUM_ROWS, MEAN, CUMSUM, L2_NORM, RMS_NORM, NORM, SOFT_MAX.

Row reductions (along ne0) run one block of RBLOCK threads per row: threads stride over the row,
partial sums meet in shared memory (common.block_sum). Sums accumulate in float64, as the CPU
kernels do; results are stored as f32. CUMSUM runs one thread per line along its axis.
dst never shares memory with a source.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from minigraph.core.registry import register_kernel

from minigraph.backends.cuda.common import SIM, CudaKernel, Launch, at, block_max, block_sum, f32_only, flat_launch, ne, nelem, nrows, size, unflat

RBLOCK = 32 if SIM else 256  # threads per row block (a power of two)

NORM_L2 = 0    # x / max(||x||, eps)
NORM_RMS = 1   # x / sqrt(mean(x^2) + eps)
NORM_MEAN = 2  # (x - mean) / sqrt(var + eps)


@cuda.jit(device=True)
def row_of(meta, r):
    """(i1, i2, i3) of row r of slot 1 (the source)."""
    n1 = ne(meta, 1, 1)
    n2 = ne(meta, 1, 2)
    return r % n1, (r // n1) % n2, r // (n1 * n2)


@cuda.jit
def sum_all(meta, dst, a):
    """SUM: one block; each thread sums a strided share of all elements."""
    sh = cuda.shared.array(RBLOCK, float64)
    s = 0.0
    n = size(meta, 1)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        i0, i1, i2, i3 = unflat(meta, 1, i)
        s += a[at(meta, 1, i0, i1, i2, i3)]
    total = block_sum(sh, s)
    if cuda.threadIdx.x == 0:
        dst[at(meta, 0, 0, 0, 0, 0)] = total


@cuda.jit
def sum_rows(meta, dst, a, divide):
    """SUM_ROWS (divide 0), MEAN (divide 1): block r reduces row r."""
    sh = cuda.shared.array(RBLOCK, float64)
    i1, i2, i3 = row_of(meta, cuda.blockIdx.x)
    n0 = ne(meta, 1, 0)
    s = 0.0
    for i0 in range(cuda.threadIdx.x, n0, cuda.blockDim.x):
        s += a[at(meta, 1, i0, i1, i2, i3)]
    total = block_sum(sh, s)
    if cuda.threadIdx.x == 0:
        dst[at(meta, 0, 0, i1, i2, i3)] = total / n0 if divide else total


@cuda.jit
def cumsum(meta, dst, a, dim):
    """Inclusive prefix sum along ne[dim]: thread t walks line t (the grid with ne[dim] set to 1)."""
    t = cuda.grid(1)
    n0 = ne(meta, 1, 0)
    n1 = ne(meta, 1, 1)
    n2 = ne(meta, 1, 2)
    n3 = ne(meta, 1, 3)
    m0 = 1 if dim == 0 else n0
    m1 = 1 if dim == 1 else n1
    m2 = 1 if dim == 2 else n2
    m3 = 1 if dim == 3 else n3
    if t < m0 * m1 * m2 * m3:
        i0 = t % m0
        r = t // m0
        i1 = r % m1
        r = r // m1
        i2 = r % m2
        i3 = r // m2
        s = 0.0
        for j in range(ne(meta, 1, dim)):
            if dim == 0:
                i0 = j
            elif dim == 1:
                i1 = j
            elif dim == 2:
                i2 = j
            else:
                i3 = j
            s += a[at(meta, 1, i0, i1, i2, i3)]
            dst[at(meta, 0, i0, i1, i2, i3)] = s


@cuda.jit
def norm_rows(meta, dst, a, eps, kind):
    sh = cuda.shared.array(RBLOCK, float64)
    i1, i2, i3 = row_of(meta, cuda.blockIdx.x)
    n0 = ne(meta, 1, 0)
    tid = cuda.threadIdx.x
    mean = 0.0
    if kind == NORM_MEAN:
        s = 0.0
        for i0 in range(tid, n0, cuda.blockDim.x):
            s += a[at(meta, 1, i0, i1, i2, i3)]
        mean = block_sum(sh, s) / n0
    ss = 0.0
    for i0 in range(tid, n0, cuda.blockDim.x):
        d = a[at(meta, 1, i0, i1, i2, i3)] - mean
        ss += d * d
    ss = block_sum(sh, ss)
    if kind == NORM_L2:
        scale = 1.0 / max(math.sqrt(ss), eps)
    else:
        scale = 1.0 / math.sqrt(ss / n0 + eps)
    for i0 in range(tid, n0, cuda.blockDim.x):
        dst[at(meta, 0, i0, i1, i2, i3)] = (a[at(meta, 1, i0, i1, i2, i3)] - mean) * scale


@cuda.jit(device=True)
def _logit(meta, a, mask, i0, i1, i2, i3, sc, slope, has_mask):
    x = a[at(meta, 1, i0, i1, i2, i3)] * sc
    if has_mask:
        x += slope * mask[at(meta, 2, i0, i1, i2 % ne(meta, 2, 2), i3 % ne(meta, 2, 3))]
    return x


@cuda.jit
def soft_max(meta, dst, a, mask, sinks, scale, max_bias, has_mask, has_sinks, m0, m1, n_log2):
    """softmax(a*scale + slope*mask) along ne0, block r on row r; slope is ggml's ALiBi slope of
    head i2 (m0, m1, n_log2 come from the host), 1 when max_bias is 0; sinks[i2] (has_sinks)
    joins the row's max and its denominator. Three passes over the row: max, sum of exp, store."""
    shf = cuda.shared.array(RBLOCK, float32)
    sh = cuda.shared.array(RBLOCK, float64)
    i1, i2, i3 = row_of(meta, cuda.blockIdx.x)
    n0 = ne(meta, 1, 0)
    tid = cuda.threadIdx.x
    sc = float32(scale)
    slope = float32(1.0)
    if max_bias > 0.0:
        slope = float32(m0 ** (i2 + 1) if i2 < n_log2 else m1 ** (2 * (i2 - n_log2) + 1))
    mx = float32(-np.inf)
    for i0 in range(tid, n0, cuda.blockDim.x):
        mx = max(mx, _logit(meta, a, mask, i0, i1, i2, i3, sc, slope, has_mask))
    mx = block_max(shf, mx)
    sink = float32(0.0)
    if has_sinks:
        sink = sinks[at(meta, 3, i2, 0, 0, 0)]
        mx = max(mx, sink)
    s = 0.0
    for i0 in range(tid, n0, cuda.blockDim.x):
        s += math.exp(_logit(meta, a, mask, i0, i1, i2, i3, sc, slope, has_mask) - mx)
    total = block_sum(sh, s)
    if has_sinks:
        total += math.exp(sink - mx)
    inv = float32(1.0 / total)
    for i0 in range(tid, n0, cuda.blockDim.x):
        e = math.exp(_logit(meta, a, mask, i0, i1, i2, i3, sc, slope, has_mask) - mx)
        dst[at(meta, 0, i0, i1, i2, i3)] = e * inv


def _empty_ok(fn):
    """Row kernels launch one block per row: a node with no elements launches nothing."""
    return lambda node: [] if nelem(node.ne) == 0 else fn(node)


def _rows(kernel, name, *extra):
    return CudaKernel(_empty_ok(lambda node: [Launch(kernel, (nrows(node.src[0].ne),), (RBLOCK,), extra)]), name)


def _cumsum_launches(node):
    dim = node.op_params["dim"]
    return [flat_launch(cumsum, nelem(node.ne) // max(1, node.ne[dim]))]


def _soft_max_launches(node):
    n_head = node.src[0].ne[2]
    max_bias = float(node.op_params["max_bias"])
    n_log2 = 1 << int(math.floor(math.log2(n_head))) if n_head > 0 else 1
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    return [Launch(soft_max, (nrows(node.ne),), (RBLOCK,), (m0, m1, n_log2))]


register_kernel("SUM", "cuda", CudaKernel(lambda node: [Launch(sum_all, (1,), (RBLOCK,))], "sum_all"),
                supports=f32_only)
register_kernel("SUM_ROWS", "cuda", _rows(sum_rows, "sum_rows", 0), supports=f32_only)
register_kernel("MEAN", "cuda", _rows(sum_rows, "sum_rows", 1), supports=f32_only)
register_kernel("CUMSUM", "cuda", CudaKernel(_empty_ok(_cumsum_launches), "cumsum"), supports=f32_only)
register_kernel("L2_NORM", "cuda", _rows(norm_rows, "norm_rows", NORM_L2), supports=f32_only)
register_kernel("RMS_NORM", "cuda", _rows(norm_rows, "norm_rows", NORM_RMS), supports=f32_only)
register_kernel("NORM", "cuda", _rows(norm_rows, "norm_rows", NORM_MEAN), supports=f32_only)
register_kernel("SOFT_MAX", "cuda", CudaKernel(_empty_ok(_soft_max_launches), "soft_max"), supports=f32_only)
