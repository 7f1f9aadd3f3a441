"""e^x in float32 as a polynomial that LLVM vectorises, for the CPU kernels: Numba here has no
SVML, so each libm expf is a scalar call (it cost ~15% of the attention prefill; a KDA delta-net
chunk needs 2048 of them). Used by FLASH_ATTN_EXT's softmax and GATED_DELTA_NET's per-key gates.

exp(x) = 2^n e^r with x = n ln2 + r, |r| <= ln2 / 2: a Cody-Waite split of ln2 and Cephes' expf
polynomial, max relative error ~1e-7 on [EXP_MIN, EXP_MAX] (as libm's expf). LLVM must not
reassociate it (the range reduction depends on its order): `exp_nonpos` is inlined, so its
caller is compiled without reassoc; `exp_row` is compiled on its own for that reason.
"""
import numpy as np
from numba import njit

from minigraph.backends.cpu.storage import f32_from_bits

LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693359375)
LN2_LO = np.float32(-2.12194440e-4)
EXP_MIN = np.float32(-87.0)   # e^x at or below: 0 (2^-126 is the smallest normal float)
EXP_MAX = np.float32(88.0)    # e^x above: inf
EXACT_ORDER = {"contract", "nsz", "arcp"}


@njit(inline="always", cache=True, nogil=True, fastmath=EXACT_ORDER)
def exp_poly(xc):
    """e^xc for EXP_MIN <= xc <= EXP_MAX (float32)."""
    n = np.floor(xc * LOG2E + np.float32(0.5))
    r = xc - n * LN2_HI
    r = r - n * LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    # n + 127 in int32 (n + 127 would be a float64 sum: two conversions a lane pair)
    return p * f32_from_bits((np.int32(n) + np.int32(127)) << 23)


@njit(inline="always", cache=True, nogil=True, fastmath=EXACT_ORDER)
def exp_nonpos(x):
    """e^x for x <= 0 (a logit minus the running max; -inf gives 0)."""
    xc = x if x > EXP_MIN else EXP_MIN
    e = exp_poly(xc)
    return e if x > EXP_MIN else np.float32(0.0)


@njit(cache=True, nogil=True, fastmath=EXACT_ORDER, error_model="numpy")
def exp_row(x):
    """x[:] = e^x[:] in place, a 1-D float32 array of any sign (0 at EXP_MIN and below, as
    exp_nonpos; inf above EXP_MAX; NaN stays NaN)."""
    for i in range(x.shape[0]):
        v = x[i]
        xc = min(max(v, EXP_MIN), EXP_MAX)
        e = exp_poly(xc)
        e = e if v > EXP_MIN else np.float32(0.0)
        e = e if v <= EXP_MAX else np.float32(np.inf)
        # NaN as a constant, not v: storing v back where it came from became a masked store
        # (vmaskmovps, microcoded on Zen 3: 3x the whole loop)
        x[i] = e if v == v else np.float32(np.nan)
