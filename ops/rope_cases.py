"""Conformance cases of ROPE and SET_ROWS (test-backend-ops style), appended to the core's CASES.

ROPE: modes NORMAL/NEOX x n_dims full/partial x freq_factors on/off x YaRN on/off x layouts, in
place and not, f16, and llama.cpp's MLA rope shift (seed #18986): the K cache rows are
[kv 512 | pe 64] and the shift ropes, in place, a view_3d that covers only the pe part of each
row (offset 512 elements, row stride 576). SET_ROWS: I32/I64 indices, ggml's broadcasting of
the indices over ne2/ne3, f32/f16/bf16 destinations, layouts of the destination.
"""
from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np

from minigraph.core import dtypes
from minigraph.core.cases import CASES, LAYOUTS, Case, make_input
from minigraph.ops.rope import ROPE_TYPE_NEOX, ROPE_TYPE_NORMAL

HEAD, N_HEAD, N_TOK, NE3 = 32, 3, 5, 2
# (n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)
PLAIN = (0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
YARN = (4096, 10000.0, 0.25, 1.0, 0.9, 32.0, 1.0)
F16_NMSE = 1e-6   # f16 storage rounds each result (2^-11 relative)


def _positions(ctx, rng, n):
    return ctx.from_numpy(rng.integers(-20, 300, size=n).astype(np.int32))


def _rope_case(ctx, rng, mode, n_dims, ff, yarn, layout, inplace=False, type_=dtypes.TYPE_F32):
    a = make_input(ctx, rng, [HEAD, N_HEAD, N_TOK, NE3], layout, type_=type_, name="x")
    pos = _positions(ctx, rng, N_TOK)
    c = ctx.from_numpy(rng.uniform(0.5, 4.0, size=n_dims // 2 + 1).astype(np.float32)) if ff else None
    fn = ctx.rope_ext_inplace if inplace else ctx.rope_ext
    return fn(a, pos, c, n_dims, mode, *(YARN if yarn else PLAIN))


def mla_rope_shift(ctx, rng, n_kv, yarn, kv=512, pe=64, mode=ROPE_TYPE_NORMAL):
    """llama.cpp's build_graph_shift for an MLA cache: K [kv + pe, n_kv] (one KV head), the pe
    part of every row roped in place by the shift of its cell. Returns (K, the roped view)."""
    k_cache = make_input(ctx, rng, [kv + pe, n_kv], name="k_cache")
    row = k_cache.nb[1]
    k_pe = ctx.view_3d(k_cache, pe, 1, n_kv, row, row, kv * k_cache.nb[0])
    shift = ctx.from_numpy(rng.integers(-64, 64, size=n_kv).astype(np.int32))
    params = (4096, 10000.0, 0.025, 1.0, 0.7, 32.0, 1.0) if yarn else PLAIN
    return k_cache, ctx.rope_ext_inplace(k_pe, shift, None, pe, mode, *params)


def _set_rows_case(ctx, rng, dst_type, idx_type, c_ne, layout, n=4, n_rows=10, ne0=8, ne2=2, ne3=3,
                   src_type=dtypes.TYPE_F32):
    a = make_input(ctx, rng, [ne0, n_rows, ne2, ne3], layout, type_=dst_type, name="cache")
    b = make_input(ctx, rng, [ne0, n, ne2, ne3], type_=src_type, name="rows")
    k1, k2 = c_ne
    idx = np.stack([rng.permutation(n_rows)[:n] for _ in range(k1 * k2)]).reshape(k2, k1, n)
    c = ctx.from_numpy(idx.astype(np.int64 if idx_type == dtypes.TYPE_I64 else np.int32))
    return ctx.set_rows(a, b, c)


def _cases() -> Iterator[Case]:
    for mode, n_dims, ff, yarn, layout in itertools.product((ROPE_TYPE_NORMAL, ROPE_TYPE_NEOX), (HEAD, 16),
                                                            (0, 1), (0, 1), LAYOUTS):
        yield Case("ROPE", f"ne=[{HEAD},{N_HEAD},{N_TOK},{NE3}],mode={mode},n_dims={n_dims},ff={ff},yarn={yarn},"
                   f"layout={layout}",
                   lambda c, r, m=mode, d=n_dims, f=ff, y=yarn, L=layout: _rope_case(c, r, m, d, f, y, L))
    for mode, layout in itertools.product((ROPE_TYPE_NORMAL, ROPE_TYPE_NEOX), LAYOUTS):
        yield Case("ROPE", f"inplace=1,mode={mode},n_dims=16,ff=1,yarn=1,layout={layout}",
                   lambda c, r, m=mode, L=layout: _rope_case(c, r, m, 16, 1, 1, L, inplace=True))
        yield Case("ROPE", f"type=f16,mode={mode},n_dims=16,ff=0,yarn=1,layout={layout}",
                   lambda c, r, m=mode, L=layout: _rope_case(c, r, m, 16, 0, 1, L, type_=dtypes.TYPE_F16), F16_NMSE)
    yield Case("ROPE", "inplace=1,type=f16,mode=2,n_dims=32,ff=1,yarn=1,layout=offs",
               lambda c, r: _rope_case(c, r, ROPE_TYPE_NEOX, 32, 1, 1, "offs", inplace=True, type_=dtypes.TYPE_F16),
               F16_NMSE)
    for yarn in (0, 1):
        yield Case("ROPE", f"mla_rope_shift=1,kv=512,pe=64,n_kv=6,yarn={yarn}",
                   lambda c, r, y=yarn: mla_rope_shift(c, r, 6, y)[1])
    types = ((dtypes.TYPE_F32, 1e-7), (dtypes.TYPE_F16, F16_NMSE), (dtypes.TYPE_BF16, 1e-4))
    for (dst, tol), idx, c_ne, layout in itertools.product(types, (dtypes.TYPE_I32, dtypes.TYPE_I64),
                                                           ((1, 1), (2, 3), (2, 1), (1, 3)), LAYOUTS):
        if layout != "cont" and (dst != dtypes.TYPE_F32 or c_ne != (2, 1)):
            continue  # the layouts on one broadcast shape: enough to cover the strides
        yield Case("SET_ROWS", f"type={dtypes.type_name(dst)},idx={dtypes.type_name(idx)},c_ne=[4,{c_ne[0]},{c_ne[1]}],"
                   f"layout={layout}",
                   lambda c, r, d=dst, i=idx, k=c_ne, L=layout: _set_rows_case(c, r, d, i, k, L), tol)
    for dst, tol in types[:2]:  # ggml also takes f16 rows (copied as is into an f16 destination)
        yield Case("SET_ROWS", f"src=f16,type={dtypes.type_name(dst)},idx=i32,c_ne=[4,2,1],layout=cont",
                   lambda c, r, d=dst: _set_rows_case(c, r, d, dtypes.TYPE_I32, (2, 1), "cont", src_type=dtypes.TYPE_F16),
                   tol)
    yield Case("SET_ROWS", "kv_cache=1,type=f16,idx=i64,ne=[128,64,1,1],n=7",
               lambda c, r: _set_rows_case(c, r, dtypes.TYPE_F16, dtypes.TYPE_I64, (1, 1), "cont", 7, 64, 128, 1, 1),
               F16_NMSE)


CASES.extend(_cases())
