"""CPU kernel of the rope family: ROPE (ggml_rope_ext, NORMAL and NEOX modes, YaRN).

Arrays are (ne3, ne2, ne1, ne0) views with any strides: a may be a permuted view or a strided
window of a K cache at an offset, and dst (a's memory when the node is in place) has its own
strides. Each pair is read before it is written, so in place is safe. The angles depend on the
token only: they are computed once per (token, pair), then every head of the token uses them.
The scalar math (corr dims, YaRN blend) is ops/rope.py's, compiled here.
"""
from __future__ import annotations


import numpy as np
from numba import prange

from minigraph.core.registry import register_kernel
from minigraph.ops import rope as rope_op

from minigraph.backends.cpu.jit import kernel, row_index, scalar

NEOX = rope_op.ROPE_TYPE_NEOX
yarn_corr_dims = scalar(rope_op.yarn_corr_dims)
yarn_mscale = scalar(rope_op.yarn_mscale)
rope_yarn = scalar(rope_op.rope_yarn)


@kernel
def rope(dst, a, pos, ff, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
         beta_fast, beta_slow, has_ff):
    """dst = a with pairs 0..n_dims/2-1 of each row rotated by the angles of position pos[i2].

    a, dst (ne3, ne2, ne1, ne0); pos (1, 1, 1, ne2) int32; ff (1, 1, 1, >= n_dims/2) float32,
    read only when has_ff (else a dummy). NORMAL pairs (2i, 2i+1), NEOX pairs (i, i + n_dims/2).
    """
    n3, n2, n1, n0 = dst.shape
    half = n_dims // 2
    low, high = 0.0, 0.0
    if ext_factor != 0.0:
        low, high = yarn_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
    mscale = yarn_mscale(attn_factor, freq_scale, ext_factor)
    theta_scale = freq_base ** (-2.0 / n_dims)
    cos = np.empty((n2, half), np.float32)  # f32 like ggml's cache: the row loop stays in f32
    sin = np.empty((n2, half), np.float32)
    for i2 in prange(n2):
        theta = float(pos[0, 0, 0, i2])
        for i in range(half):  # ggml's cache: the angle scaled pair by pair
            t = theta / ff[0, 0, 0, i] if has_ff else theta
            cos[i2, i], sin[i2, i] = rope_yarn(t, freq_scale, low, high, i, ext_factor, mscale)
            theta *= theta_scale
    for r in prange(n3 * n2 * n1):
        i3, i2, i1 = row_index(r, n2, n1)
        src = a[i3, i2, i1]
        out = dst[i3, i2, i1]
        c = cos[i2]
        s = sin[i2]
        if mode == NEOX:  # element i pairs with i + half
            for i in range(half):
                x0 = src[i]
                x1 = src[i + half]
                out[i] = x0 * c[i] - x1 * s[i]
                out[i + half] = x0 * s[i] + x1 * c[i]
        else:             # NORMAL: element 2i pairs with 2i + 1
            for i in range(half):
                x0 = src[2 * i]
                x1 = src[2 * i + 1]
                out[2 * i] = x0 * c[i] - x1 * s[i]
                out[2 * i + 1] = x0 * s[i] + x1 * c[i]
        for i0 in range(n_dims, n0):
            out[i0] = src[i0]


register_kernel("ROPE", "cpu", rope, index_slots=(2,))
