"""The ggml bridge against numpy: data in/out, and a few ops of the real ggml CPU backend."""
import numpy as np
import pytest

pytest.importorskip("ggml")

from minigraph.testing import ggml_bridge as gb  # noqa: E402

pytestmark = pytest.mark.ggml
rng = np.random.default_rng(0)


def test_roundtrip_and_layout():
    ctx = gb.GgmlContext()
    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    t = ctx.from_numpy(a)
    assert t.ne == (5, 4, 3, 2) and t.nb == (4, 20, 80, 240) and t.type == gb.TYPE_F32
    np.testing.assert_array_equal(t.numpy(), a)
    # a permuted view: numpy() follows nb, shape follows ne
    p = ctx.permute(t, 1, 0, 2, 3)
    np.testing.assert_array_equal(p.numpy(), a.transpose(0, 1, 3, 2))
    # trailing ne of 1 are dropped like ggml_n_dims
    assert ctx.from_numpy(np.zeros((1, 7), np.float32)).numpy().shape == (7,)
    i = ctx.from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3))
    assert i.type == gb.TYPE_I32 and i.numpy().tolist() == [[0, 1, 2], [3, 4, 5]]


def test_add():
    ctx = gb.GgmlContext()
    a, b = rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((1, 3, 8)).astype(np.float32)
    out = ctx.add(ctx.from_numpy(a), ctx.from_numpy(b))      # b broadcasts along ne2
    assert out.op == "ADD"
    np.testing.assert_allclose(gb.compute(out)[0], a + b, rtol=1e-6)


def test_mul_mat():
    ctx = gb.GgmlContext()
    a = rng.standard_normal((2, 6, 16)).astype(np.float32)    # ne [16, 6, 2]
    b = rng.standard_normal((2, 5, 16)).astype(np.float32)    # ne [16, 5, 2]
    out = ctx.mul_mat(ctx.from_numpy(a), ctx.from_numpy(b))   # ne [6, 5, 2] = b @ a^T
    assert out.ne == (6, 5, 2, 1)
    np.testing.assert_allclose(gb.compute(out)[0], b @ a.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)


def test_cumsum_and_tri():
    ctx = gb.GgmlContext()
    a = rng.standard_normal((3, 7, 7)).astype(np.float32)
    x = ctx.from_numpy(a)
    cs, lo, up = ctx.cumsum(x), ctx.tri(x, gb.TRI_TYPE_LOWER_DIAG), ctx.tri(x, gb.TRI_TYPE_UPPER)
    got = gb.compute([cs, lo, up])
    np.testing.assert_allclose(got[0], np.cumsum(a, axis=-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1], np.tril(a))         # keeps i0 <= i1 (row index i1)
    np.testing.assert_array_equal(got[2], np.triu(a, 1))


def test_solve_tri():
    ctx = gb.GgmlContext()
    n, m = 8, 3
    L = np.tril(rng.standard_normal((2, n, n))) + 4 * np.eye(n)
    B = rng.standard_normal((2, n, m))
    x = ctx.solve_tri(ctx.from_numpy(L.astype(np.float32)), ctx.from_numpy(B.astype(np.float32)),
                      True, True, False)                       # left, lower, not unit diagonal
    np.testing.assert_allclose(gb.compute(x)[0], np.linalg.solve(L, B), rtol=1e-4, atol=1e-5)


def test_time_compute_positive():
    ctx = gb.GgmlContext()
    out = ctx.mul_mat(ctx.from_numpy(np.ones((64, 64), np.float32)), ctx.from_numpy(np.ones((64, 64), np.float32)))
    assert gb.time_compute(out, n_threads=2, repeat=3) > 0
    np.testing.assert_array_equal(out.numpy(), np.full((64, 64), 64, np.float32))
