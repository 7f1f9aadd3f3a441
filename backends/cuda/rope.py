"""CUDA kernel of the rope family: ROPE (NORMAL and NEOX modes, YaRN, freq_factors).

One thread per pair slot of a row: slot k < n_dims/2 reads its two elements, rotates them and
writes both (so in place is safe: no other thread touches them); a slot past the rotated part
copies elements 2k and 2k+1 of the tail. Every tensor is read through its strides (common.py),
so strided views at any offset work. The per-node constants (YaRN's corr dims, mscale, the
frequency step) are computed on the host at plan time from ops/rope.py's scalar math. f32 only:
f16 nodes go to the CPU backend.
"""
from __future__ import annotations

import math

from numba import cuda

from minigraph.core.registry import register_kernel
from minigraph.ops import rope as rope_op

from minigraph.backends.cuda.common import CudaKernel, at, f32_only, flat_launch, ne, nrows

NEOX = rope_op.ROPE_TYPE_NEOX
rope_yarn = cuda.jit(device=True)(rope_op.rope_yarn)


@cuda.jit
def rope(meta, dst, a, pos, ff, n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor,
         beta_fast, beta_slow, has_ff, low, high, mscale, theta_scale):
    """Slot k of row (i1, i2, i3): NORMAL rotates (2k, 2k+1), NEOX (k, k + n_dims/2), by the angle
    of position pos[i2] (divided by ff[k] when has_ff)."""
    n0 = ne(meta, 0, 0)
    n1 = ne(meta, 0, 1)
    n2 = ne(meta, 0, 2)
    slots = (n0 + 1) // 2
    i = cuda.grid(1)
    if i < slots * n1 * n2 * ne(meta, 0, 3):
        k = i % slots
        r = i // slots
        i1 = r % n1
        r = r // n1
        i2 = r % n2
        i3 = r // n2
        half = n_dims // 2
        if k < half:
            theta = pos[at(meta, 2, i2, 0, 0, 0)] * theta_scale ** k
            if has_ff:
                theta = theta / ff[at(meta, 3, k, 0, 0, 0)]
            c, s = rope_yarn(theta, freq_scale, low, high, k, ext_factor, mscale)
            j0 = k if mode == NEOX else 2 * k
            j1 = j0 + (half if mode == NEOX else 1)
            x0 = a[at(meta, 1, j0, i1, i2, i3)]
            x1 = a[at(meta, 1, j1, i1, i2, i3)]
            dst[at(meta, 0, j0, i1, i2, i3)] = x0 * c - x1 * s
            dst[at(meta, 0, j1, i1, i2, i3)] = x0 * s + x1 * c
        else:
            j0 = 2 * k
            dst[at(meta, 0, j0, i1, i2, i3)] = a[at(meta, 1, j0, i1, i2, i3)]
            if j0 + 1 < n0:
                dst[at(meta, 0, j0 + 1, i1, i2, i3)] = a[at(meta, 1, j0 + 1, i1, i2, i3)]


def _launches(node):
    p = node.op_params
    low, high = 0.0, 0.0
    if p["ext_factor"] != 0.0:
        low, high = rope_op.yarn_corr_dims(p["n_dims"], p["n_ctx_orig"], p["freq_base"], p["beta_fast"], p["beta_slow"])
    mscale = rope_op.yarn_mscale(p["attn_factor"], p["freq_scale"], p["ext_factor"])
    theta_scale = math.pow(p["freq_base"], -2.0 / p["n_dims"])
    slots = (node.ne[0] + 1) // 2
    return [flat_launch(rope, slots * nrows(node.ne), (float(low), float(high), float(mscale), float(theta_scale)))]


register_kernel("ROPE", "cuda", CudaKernel(_launches, "rope"), supports=lambda n: f32_only(n, index_slots=(2,)),
                index_slots=(2,))
