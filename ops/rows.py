"""SET_ROWS: scatter rows into a tensor in place (ggml_set_rows; llama.cpp's KV-cache write).

a [ne0, n_rows, ne2, ne3] is the destination (f32, f16 or bf16), b [ne0, n, ne2, ne3] the rows
(f32 or f16), c [n, ne11, ne12] the I32 or I64 row indices, broadcast over b as ggml does
(b's ne2 a multiple of ne11, b's ne3 a multiple of ne12):

    a[:, c[i, i2 % ne11, i3 % ne12], i2, i3] = b[:, i, i2, i3]

The result is a view of a (a's ne and nb) written in place; rows of a that no index names keep
their values. A repeated index keeps the last row written (i in increasing order). Indices are
data: the CPU backend and the reference refuse one outside [0, n_rows) at compute time.
As in ggml the node's sources are (b, c, a).
"""
from __future__ import annotations

import numpy as np

from minigraph.core import dtypes, quants
from minigraph.core.errors import MinigraphError, expect
from minigraph.core.registry import OpDef, builder, register
from minigraph.core.tensor import Tensor, nelements

from minigraph.ops.common import check_tensor


def _ref_set_rows(node, b, c, a):
    """float64 reference: b (ne3, ne2, n, ne0), c (1, ne12, ne11, n), a (ne3, ne2, n_rows, ne0)."""
    out = np.array(a, np.float64)
    n_rows = a.shape[2]
    idx = np.asarray(c).astype(np.int64)
    for i3 in range(b.shape[0]):
        for i2 in range(b.shape[1]):
            rows = idx[0, i3 % idx.shape[1], i2 % idx.shape[2], :]
            bad = (rows < 0) | (rows >= n_rows)
            if bad.any():
                raise MinigraphError(f"SET_ROWS: row index {int(rows[bad][0])} outside [0, {n_rows}) "
                                     f"of '{node.name or '<unnamed>'}' (ne={list(node.ne)})")
            for i in range(b.shape[2]):  # in order: a repeated index keeps the last row
                out[i3, i2, rows[i], :] = b[i3, i2, i, :]
    return out


def _ref_set_rows_any(node, b, c, a):
    # a quantized destination holds each written row quantized and dequantized again
    if dtypes.is_quantized(node.type):
        b = quants.roundtrip(b, node.type)
    return _ref_set_rows(node, b, c, a)


def _sample_set_rows(node, i: int, rng: np.random.Generator):
    """Sources (b, c, a): c gets distinct rows of a per index row, where a has enough rows."""
    if i != 1:
        return None
    c, n_rows = node.src[1], node.src[2].ne[1]
    shape = tuple(reversed(c.ne))
    if c.ne[0] > n_rows:
        return rng.integers(0, max(n_rows, 1), size=shape)
    rows = [rng.permutation(n_rows)[: c.ne[0]] for _ in range(int(np.prod(shape[:-1])))]
    return np.array(rows).reshape(shape)


SET_ROWS = register(OpDef("SET_ROWS", "rows", _ref_set_rows_any, flops=lambda n: 0.0, sample=_sample_set_rows,
                          rebuild=lambda ctx, spec, b, c, a: ctx.set_rows(a, b, c),
                          doc="a[:, c[i], i2, i3] = b[:, i, i2, i3], in place (ggml_set_rows)"))


@builder("set_rows")
def set_rows(ctx, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Write b's rows into a at the row indices c, in place: the KV-cache write (ggml_set_rows).

    a:      [ne0, n_rows, ne2, ne3] f32/f16/bf16 or quantized (a Q8_0 / Q4_0 KV cache), the destination.
    b:      [ne0, n, ne2, ne3] f32/f16 (f32 into a quantized a: each row is quantized as ggml does).
    c:      [n, ne11, ne12] I32 or I64 row indices into a, with ne2 % ne11 == 0 and ne3 % ne12 == 0
            (broadcast over b's dims 2 and 3); an index outside 0..n_rows-1 is refused at compute.
    result: a view of a (a's ne and nb) whose rows c[i] hold b's rows i.
    """
    check_tensor("set_rows", a, b, c)
    quant = dtypes.is_quantized(a.type)
    expect(a.type in dtypes.FLOAT_TYPES or (quant and a.type != dtypes.TYPE_Q8_1), "set_rows",
           f"destination a must be f32/f16/bf16 or quantized (Q4_0 ... Q8_K), got {dtypes.type_name(a.type)}", a, b, c)
    expect(b.type in (dtypes.TYPE_F32, dtypes.TYPE_F16), "set_rows", "rows b must be f32 or f16", a, b, c)
    expect(not quant or b.type == dtypes.TYPE_F32, "set_rows", "rows written into a quantized a must be f32 "
           "(ggml quantizes them with the type's from_float)", a, b, c)
    expect(c.type in dtypes.INT_TYPES, "set_rows", "indices c must be i32 or i64", a, b, c)
    expect(a.ne[0] == b.ne[0] and a.ne[2] == b.ne[2] and a.ne[3] == b.ne[3], "set_rows",
           "a and b must agree in ne0, ne2 and ne3", a, b, c)
    expect(b.ne[1] == c.ne[0] and c.ne[3] == 1 and c.ne[1] > 0 and c.ne[2] > 0
           and b.ne[2] % c.ne[1] == 0 and b.ne[3] % c.ne[2] == 0, "set_rows",
           "c must be [b's ne1, a divisor of b's ne2, a divisor of b's ne3, 1]", a, b, c)
    if nelements(b) > 0:
        expect(a.ne[1] > 0, "set_rows", "a has no rows to write", a, b, c)
    return ctx.new_node(SET_ROWS, a.type, a.ne, [b, c, a], nb=a.nb, view_src=a)
