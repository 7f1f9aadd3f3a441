"""Conformance cases of the block-quantized types (Q4_0 ... Q6_K) in CPY, GET_ROWS, SET_ROWS and
MUL_MAT, in the shape of test-backend-ops' quantized grid.

A quantized input is a leaf made with `ctx.from_numpy(values, type)`: minigraph quantizes with its
reference quantizer, ggml's bridge with ggml_quantize_chunk (the same bytes), so one builder runs
on both. The float64 reference reads the dequantized data; a quantized destination holds its rows
quantized and dequantized again (minigraph.core.quants.roundtrip). MUL_MAT quantizes src1 to the
type's vec_dot type (Q8_0 / Q8_1 / Q8_K) as ggml's CPU does, so it gets a looser tolerance
against the float64 product of the dequantized weights (src1 keeps ~7 bits per block).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from minigraph.core import dtypes
from minigraph.core.cases import CASES, Case, make_input

STORAGE_TYPES = (dtypes.TYPE_Q4_0, dtypes.TYPE_Q4_1, dtypes.TYPE_Q5_0, dtypes.TYPE_Q5_1, dtypes.TYPE_Q8_0,
                 dtypes.TYPE_Q4_K, dtypes.TYPE_Q5_K, dtypes.TYPE_Q6_K)
CACHE_TYPES = (dtypes.TYPE_Q8_0, dtypes.TYPE_Q4_0)
MUL_MAT_NMSE = 5e-4   # src1 rounded to 8-bit blocks: measured 2e-5 .. 6e-5 on these cases


def _row_len(type_: int, blocks: int) -> int:
    return dtypes.blck_size(type_) * blocks


def quant_input(ctx: Any, rng: np.random.Generator, ne, type_: int, lo: float = -1.0, hi: float = 1.0) -> Any:
    """A quantized leaf of logical shape `ne` from uniform values (quantized by ggml's reference)."""
    ne = list(ne) + [1] * (4 - len(ne))
    data = rng.uniform(lo, hi, size=tuple(reversed(ne))).astype(np.float32)
    return ctx.from_numpy(data, type_)


def _quant_rows_view(ctx: Any, rng: np.random.Generator, k: int, m: int, ne2: int, type_: int) -> Any:
    """Rows 1..m of each plane of a [k, m + 2, ne2] quantized tensor: src0 rows nb1 apart, a
    byte offset of one row, planes nb2 apart (no block is split)."""
    big = quant_input(ctx, rng, [k, m + 2, ne2], type_)
    return ctx.view_3d(big, k, m, ne2, big.nb[1], big.nb[2], big.nb[1])


def _distinct_rows(rng: np.random.Generator, n_rows: int, n: int, planes: int) -> np.ndarray:
    """I64 indices [n, planes]: n distinct rows per plane (a repeated index would race in ggml)."""
    return np.stack([rng.permutation(n_rows)[:n] for _ in range(planes)]).astype(np.int64)


def _cases() -> Iterator[Case]:
    for t in STORAGE_TYPES:
        name = dtypes.type_name(t)
        k = _row_len(t, 2 if dtypes.blck_size(t) > 32 else 3)   # ne0 = 512 or 96
        for layout in ("cont", "perm"):
            ext = ",ext=strided_source_quantized" if layout == "perm" else ""
            yield Case("CPY", f"type_src=f32,type_dst={name},ne=[{k},3,2,1],layout={layout}{ext}",
                       lambda c, r, t=t, k=k, L=layout: c.cpy(make_input(c, r, [k, 3, 2], L),
                                                               c.new_tensor_3d(t, k, 3, 2)))
        yield Case("CPY", f"type_src={name},type_dst=f32,ne=[{k},3,2,1]",
                   lambda c, r, t=t, k=k: c.cpy(quant_input(c, r, [k, 3, 2], t),
                                                c.new_tensor_3d(dtypes.TYPE_F32, k, 3, 2)))
        yield Case("GET_ROWS", f"type={name},ne=[{k},10,2,1],rows=5",
                   lambda c, r, t=t, k=k: c.get_rows(quant_input(c, r, [k, 10, 2], t),
                                                     c.from_numpy(r.integers(0, 10, size=(2, 5)).astype(np.int32))))
        k_mm = _row_len(t, 2 if dtypes.blck_size(t) > 32 else 4)   # 256 * 2 or 32 * 4
        for n, ne12, ne13 in ((1, 2, 1), (5, 4, 3)):
            yield Case("MUL_MAT", f"type_a={name},type_b=f32,m=7,n={n},k={k_mm},bs=[{ne12},{ne13}]",
                       lambda c, r, t=t, k=k_mm, n=n, b2=ne12, b3=ne13: c.mul_mat(
                           quant_input(c, r, [k, 7, 2, 1], t), make_input(c, r, [k, n, b2, b3])), MUL_MAT_NMSE)
        yield Case("MUL_MAT", f"type_a={name},type_b=f32,m=7,n=3,k={k_mm},src0=row_view",
                   lambda c, r, t=t, k=k_mm: c.mul_mat(_quant_rows_view(c, r, k, 7, 2, t), make_input(c, r, [k, 3, 2])),
                   MUL_MAT_NMSE)
    for t in CACHE_TYPES:
        name = dtypes.type_name(t)
        yield Case("SET_ROWS", f"type={name},ne=[64,10,2,1],n=3,idx=i64",
                   lambda c, r, t=t: c.set_rows(quant_input(c, r, [64, 10, 2], t), make_input(c, r, [64, 3, 2]),
                                                c.from_numpy(_distinct_rows(r, 10, 3, 2))))


CASES.extend(_cases())
