"""The CPU's register-tiled products (backends/cpu/tiles.py over tile_ir.py's micro-kernels) in
both widths, 8-lane (AVX2) and 16-lane (AVX-512), on every host: the host runs one of them in
the kernels, so each is held here to float64 directly, at the edges of its steps (n8 odd: the
16-lane dots' last 8 floats; columns off the 32- and 16-column steps; row counts off 6/4/2;
kv counts off 3), for f32, f16 and bf16 operands read in place at a row stride."""
from __future__ import annotations

import numpy as np
import pytest

from minigraph.backends.cpu import tiles
from minigraph.core import dtypes

F32, F16, BF16 = dtypes.TYPE_F32, dtypes.TYPE_F16, dtypes.TYPE_BF16
TOL = 2e-6   # relative to max |result|: float32 sums of <= 600 terms, both widths measured <= 5e-7


def _operand(rng, rows, cols, kind, pad=3):
    """(values the kernel sees as float64, the array it is given): rows `pad` elements longer
    than cols, so the rows sit at a stride and only [:, :cols] may be read."""
    x = rng.standard_normal((rows, cols + pad)).astype(np.float32)
    if kind == F32:
        return x[:, :cols].astype(np.float64), x[:, :cols]
    if kind == F16:
        h = x.astype(np.float16)
        return h[:, :cols].astype(np.float64), h.view(np.uint16)[:, :cols]
    bits = dtypes.f32_to_bf16(x)
    return dtypes.bf16_to_f32(bits)[:, :cols].astype(np.float64), bits[:, :cols]


def _rel(got, want):
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


@pytest.mark.parametrize("wide", [False, True], ids=["8-lane", "16-lane"])
@pytest.mark.parametrize("kind", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("na,nb,dk", [(16, 128, 576), (5, 7, 24), (4, 3, 8), (9, 4, 40), (13, 37, 203), (1, 1, 5)])
def test_dots(wide, kind, na, nb, dk):
    rng = np.random.default_rng(na * 1000 + dk)
    a = rng.standard_normal((na, dk)).astype(np.float32)
    b64, b = _operand(rng, nb, dk, kind)
    s = np.zeros((na, nb), np.float32)
    tiles.dots_w(a, na, b, nb, dk, s, kind, wide)
    assert _rel(s, a.astype(np.float64) @ b64.T) < TOL


@pytest.mark.parametrize("wide", [False, True], ids=["8-lane", "16-lane"])
@pytest.mark.parametrize("kind", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("nr,nj,dv", [(16, 128, 512), (7, 33, 80), (13, 5, 48), (6, 64, 16), (3, 9, 100), (2, 4, 7)])
def test_madd(wide, kind, nr, nj, dv):
    rng = np.random.default_rng(nr * 1000 + dv)
    p = rng.standard_normal((nj, nr)).astype(np.float32).T        # a transposed view, as GDN passes it
    voff = 2
    v64, v = _operand(rng, nj, dv + voff, kind)
    want = p.astype(np.float64) @ v64[:, voff:]
    o = np.full((nr, dv), np.nan, np.float32)                     # beta 0: o is written, never read
    tiles.madd_w(p, nr, v, voff, nj, dv, o, kind, 0.0, wide)
    assert _rel(o, want) < TOL
    o0 = rng.standard_normal((nr, dv)).astype(np.float32)
    o = o0.copy()
    tiles.madd_w(p, nr, v, voff, nj, dv, o, kind, 0.5, wide)
    assert _rel(o, 0.5 * o0 + want) < TOL


def test_public_entry_points_take_the_host_width():
    """dots / madd are the *_w forms at tile_ir.WIDE (AVX-512 on the host): same floats."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 72)).astype(np.float32)
    b = rng.standard_normal((7, 72)).astype(np.float32)
    s1, s2 = np.zeros((9, 7), np.float32), np.zeros((9, 7), np.float32)
    tiles.dots(a, 9, b, 7, 72, s1, F32)
    tiles.dots_w(a, 9, b, 7, 72, s2, F32, tiles.WIDE)
    assert np.array_equal(s1, s2)
    o1, o2 = np.zeros((9, 7), np.float32), np.zeros((9, 7), np.float32)
    tiles.madd(a[:, :7].T.copy().T, 9, b[:7, :7], 0, 7, 7, o1, F32, 0.0)
    tiles.madd_w(a[:, :7].T.copy().T, 9, b[:7, :7], 0, 7, 7, o2, F32, 0.0, tiles.WIDE)
    assert np.array_equal(o1, o2)
