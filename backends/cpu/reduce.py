"""CPU kernels of the reduce family: SUM, SUM_ROWS, MEAN, CUMSUM, L2_NORM, RMS_NORM, NORM, SOFT_MAX.

Arrays are (ne3, ne2, ne1, ne0) views with any strides; a "row" is the ne0 axis (numpy's last).
Sums of squares and plain sums accumulate in float64 (cheap here, and it keeps long rows exact
to f32 rounding); every result is stored as f32. dst never shares memory with a source.
"""
from __future__ import annotations

import math

import numpy as np
from numba import prange

from minigraph.core.registry import register_kernel

from minigraph.backends.cpu.jit import kernel, row_index


@kernel
def sum_all(dst, a):
    """SUM: every element of a into dst[0, 0, 0, 0]; one f64 partial sum per row, then their sum."""
    n3, n2, n1, n0 = a.shape
    # np.empty and a plain loop to add the partials: np.zeros and .sum() would each become a
    # parallel loop of their own under parallel=True (a thread wake-up each)
    partial = np.empty(n3 * n2 * n1, np.float64)
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        s = 0.0
        for i0 in range(n0):
            s += a[i3, i2, i1, i0]
        partial[r] = s
    total = 0.0
    for r in range(n3 * n2 * n1):
        total += partial[r]
    dst[0, 0, 0, 0] = total


@kernel
def sum_rows(dst, a, divide):
    """SUM_ROWS (divide 0) and MEAN (divide 1): dst [1, ne1, ne2, ne3] = sum (or mean) over ne0."""
    n3, n2, n1, n0 = a.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        s = 0.0
        for i0 in range(n0):
            s += a[i3, i2, i1, i0]
        dst[i3, i2, i1, 0] = s / n0 if divide else s


@kernel
def cumsum(dst, a, dim):
    """Inclusive prefix sum along ne[dim] (numpy axis 3 - dim); one task per line along that axis.

    Lines are numbered with i0 fastest, so for dim > 0 neighbouring lines sit next to each other
    in memory and one thread walks them together.
    """
    n3, n2, n1, n0 = a.shape
    ax = 3 - dim
    length = a.shape[ax]
    m3 = 1 if ax == 0 else n3  # the line grid: the scanned axis collapsed to 1
    m2 = 1 if ax == 1 else n2
    m1 = 1 if ax == 2 else n1
    m0 = 1 if ax == 3 else n0
    for line in prange(m3 * m2 * m1 * m0):
        i0 = line % m0
        i1 = (line // m0) % m1
        i2 = (line // (m0 * m1)) % m2
        i3 = line // (m0 * m1 * m2)
        s = 0.0
        for j in range(length):
            if ax == 0:
                i3 = j
            elif ax == 1:
                i2 = j
            elif ax == 2:
                i1 = j
            else:
                i0 = j
            s += a[i3, i2, i1, i0]
            dst[i3, i2, i1, i0] = s


# NORM_* select the per-row scale of the shared norm kernel (ggml's three norms of a row x)
NORM_L2 = 0    # x / max(||x||, eps)
NORM_RMS = 1   # x / sqrt(mean(x^2) + eps)
NORM_MEAN = 2  # (x - mean) / sqrt(var + eps)


@kernel
def norm_rows(dst, a, eps, kind):
    n3, n2, n1, n0 = a.shape
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        mean = 0.0
        if kind == NORM_MEAN:
            for i0 in range(n0):
                mean += a[i3, i2, i1, i0]
            mean /= n0
        ss = 0.0
        for i0 in range(n0):
            d = a[i3, i2, i1, i0] - mean
            ss += d * d
        if kind == NORM_L2:
            scale = 1.0 / max(math.sqrt(ss), eps)
        else:
            scale = 1.0 / math.sqrt(ss / n0 + eps)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] = (a[i3, i2, i1, i0] - mean) * scale


@kernel
def soft_max(dst, a, mask, sinks, scale, max_bias, has_mask, has_sinks):
    """softmax(a*scale + slope*mask) along ne0, with ggml's sinks: sinks[i2] joins each row's
    max and adds exp(sink - max) to its denominator (it has no output column).

    mask row i1 goes with row i1 (the mask may have more rows); it broadcasts over ne2/ne3 by
    modulo. slope is ggml's ALiBi slope of head i2 (n_head = ne2), 1 when max_bias is 0.
    When has_mask / has_sinks is 0 that argument is a dummy and is never read.
    """
    n3, n2, n1, n0 = a.shape
    k3, k2 = mask.shape[0], mask.shape[1]
    n_log2 = 1 << int(math.floor(math.log2(n2))) if n2 > 0 else 1
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    sc = np.float32(scale)
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        slope = np.float32(1.0)
        if max_bias > 0.0:
            slope = np.float32(m0 ** (i2 + 1) if i2 < n_log2 else m1 ** (2 * (i2 - n_log2) + 1))
        # pass 1: the logits into dst, and their max
        mx = -np.inf
        # once a row (LLVM keeps a modulo inside the loop); without a mask the dummy's one row
        mrow = mask[i3 % k3, i2 % k2, i1] if has_mask else mask[0, 0, 0]
        for i0 in range(n0):
            x = a[i3, i2, i1, i0] * sc
            if has_mask:
                x += slope * mrow[i0]
            dst[i3, i2, i1, i0] = x
            mx = max(mx, x)
        sink = np.float32(0.0)
        if has_sinks:
            sink = sinks[0, 0, 0, i2]
            mx = max(mx, sink)
        # pass 2: exp(x - max) and the f64 sum; pass 3: normalise
        s = 0.0
        for i0 in range(n0):
            e = np.exp(dst[i3, i2, i1, i0] - np.float32(mx))
            dst[i3, i2, i1, i0] = e
            s += e
        if has_sinks:
            s += np.exp(sink - np.float32(mx))
        inv = np.float32(1.0 / s)
        for i0 in range(n0):
            dst[i3, i2, i1, i0] *= inv


register_kernel("SUM", "cpu", sum_all)
register_kernel("SUM_ROWS", "cpu", sum_rows, extra=(0,))
register_kernel("MEAN", "cpu", sum_rows, extra=(1,))
register_kernel("CUMSUM", "cpu", cumsum)
register_kernel("L2_NORM", "cpu", norm_rows, extra=(NORM_L2,))
register_kernel("RMS_NORM", "cpu", norm_rows, extra=(NORM_RMS,))
register_kernel("NORM", "cpu", norm_rows, extra=(NORM_MEAN,))
register_kernel("SOFT_MAX", "cpu", soft_max)
