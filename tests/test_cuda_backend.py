"""The Numba CUDA backend vs the float64 op references (mg.reference_compute).

Runs on a real GPU, or on numba-cuda's simulator with NUMBA_ENABLE_CUDASIM=1 set before Python
starts (numba reads it at import). The simulator runs every GPU thread as a Python thread, so
the cases here are small; bigger ones are marked `gpu` and skipped there.
"""
import os

import numpy as np
import pytest

import minigraph as mg
from minigraph.core.registry import kernels_for
from minigraph.run import backend_cuda_init


def _skip_reason():
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed (pip install minigraph[cuda])"
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return None
    if not cuda.is_available():
        return "no CUDA GPU (set NUMBA_ENABLE_CUDASIM=1 to run these tests on the simulator)"
    return None


SKIP = _skip_reason()
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
pytestmark = [pytest.mark.skipif(SKIP is not None, reason=SKIP or ""),
              # tiny test grids: numba-cuda's low-occupancy warning is expected noise here
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]
gpu = pytest.mark.skipif(SIM, reason="bigger case: real GPU only (the simulator is slow)")

MAX_NMSE = 1e-7
rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def be():
    return backend_cuda_init(0)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def transposed(ctx, arr):
    """arr's values as a non-contiguous tensor (a transpose view of the swapped data)."""
    return ctx.transpose(ctx.from_numpy(np.ascontiguousarray(np.swapaxes(arr, -1, -2))))


def strided(ctx, arr):
    """arr's values as a row-strided view (rows padded by 3 floats, offset by one row)."""
    shape = arr.shape
    pad = np.zeros(shape[:-1] + (shape[-1] + 3,), np.float32)
    pad[..., : shape[-1]] = arr
    big = np.concatenate([np.zeros_like(pad[..., :1, :]), pad], axis=-2)
    t = ctx.from_numpy(big)
    ne = list(reversed(shape)) + [1] * (4 - len(shape))
    return ctx.view_4d(t, ne[0], ne[1], ne[2], ne[3], t.nb[1], t.nb[2], t.nb[3], t.nb[1])


def nmse(out, ref):
    return float(((out - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))


def check(be, out, exact=False, max_nmse=MAX_NMSE):
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    be.graph_compute(gf)
    got = np.asarray(out.numpy(), np.float64)
    assert got.shape == ref.shape
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{out.op}: nan mismatch"
    assert np.array_equal(np.isinf(got), np.isinf(ref)), f"{out.op}: inf mismatch"
    fin = np.isfinite(ref)
    if exact:
        assert np.array_equal(got[fin], ref[fin]), f"{out.op}: not exact"
    else:
        assert nmse(got[fin], ref[fin]) < max_nmse, f"{out.op}: NMSE {nmse(got[fin], ref[fin]):.3g}"
    return got


# -- elementwise --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_repeat_and_strides(be, op):
    ctx = mg.Context()
    a = transposed(ctx, randn(2, 3, 4))                    # ne [4, 3, 2], non-contiguous
    b = ctx.from_numpy(randn(1, 1, 4) + (3.0 if op == "div" else 0.0))  # repeats over ne1/ne2
    check(be, getattr(ctx, op)(a, b))


def test_binary_contiguous_fast_path(be):
    ctx = mg.Context()
    a = ctx.from_numpy(randn(2, 3, 5))
    check(be, ctx.add(a, ctx.from_numpy(randn(1, 1, 5))))      # a row repeated: flat fast path
    check(be, ctx.mul(a, ctx.from_numpy(randn(1, 3, 5))))      # a matrix repeated over ne2
    check(be, ctx.sub(a, ctx.from_numpy(randn(1, 3, 1))))      # a column: generic path
    check(be, ctx.div(a, ctx.new_f32(3.0)))                    # a scalar


def test_binary_inplace_and_scale(be):
    ctx = mg.Context()
    a = ctx.from_numpy(randn(3, 5))
    b = ctx.from_numpy(randn(3, 5))
    x = ctx.scale(ctx.mul(a, b), 0.5)
    x = ctx.add_inplace(x, b)
    check(be, ctx.scale_bias(x, 2.0, -1.0))


UNARY = ["neg", "abs", "sqr", "sqrt", "exp", "log", "sigmoid", "silu", "gelu", "tanh", "relu", "softplus"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(be, op):
    ctx = mg.Context()
    x = randn(4, 6, scale=3.0)
    x[0, 0] = 25.0  # softplus' identity branch
    if op in ("sqrt", "log"):
        x = np.abs(x) + 0.1
    check(be, getattr(ctx, op)(strided(ctx, x)), max_nmse=1e-10)


# -- layout ---------------------------------------------------------------------------------------

def test_cont_dup_reshape(be):
    ctx = mg.Context()
    a = transposed(ctx, randn(2, 3, 4))
    check(be, ctx.cont(a), exact=True)
    check(be, ctx.cont_2d(a, 6, 4), exact=True)
    check(be, ctx.dup(strided(ctx, randn(3, 5))), exact=True)


def test_cpy_into_leaf_and_view(be):
    ctx = mg.Context()
    x = randn(3, 4)
    dst = ctx.new_tensor_2d(mg.TYPE_F32, 3, 4)
    check(be, ctx.cpy(transposed(ctx, x), dst), exact=True)
    # the destination leaf itself holds the copy on the host too (downloaded after compute)
    np.testing.assert_array_equal(dst.numpy(), x.reshape(4, 3))
    big = ctx.from_numpy(np.zeros((4, 5), np.float32))
    view = ctx.view_2d(big, 3, 4, big.nb[1], 8)
    check(be, ctx.cpy(ctx.from_numpy(randn(4, 3)), view), exact=True)


def test_contiguous_copies_fast_path(be):
    """CONT / DUP / CPY of contiguous tensors take the sliced element-i-to-i launch, also into a
    view at an offset inside a leaf, whose other elements stay as they were."""
    from minigraph.backends.cuda import layout

    ctx = mg.Context()
    a = ctx.from_numpy(randn(2, 3, 4))
    check(be, ctx.cont_2d(a, 6, 4), exact=True)
    check(be, ctx.dup(a), exact=True)
    base = randn(40)
    big = ctx.from_numpy(base.copy())
    view = ctx.view_2d(big, 4, 6, 16, 28)                      # elements 7 .. 30, contiguous
    out = ctx.cpy(ctx.from_numpy(randn(6, 4)), view)
    check(be, out, exact=True)
    want = base.copy()
    want[7:31] = out.src[0].numpy().reshape(-1)
    np.testing.assert_array_equal(big.numpy(), want)
    for node, fast in ((out, True), (ctx.dup(a), True), (ctx.cont(transposed(ctx, randn(3, 4))), False)):
        la = kernels_for("cuda")[node.op].fn.launches(node)
        kern = layout.cpy_contig if node.op == "CPY" else layout.copy_contig
        assert (la[0].kernel is kern) == fast and la[0].sliced == fast


def test_pad_repeat_concat(be):
    ctx = mg.Context()
    a = transposed(ctx, randn(2, 3, 4))
    check(be, ctx.pad(a, 1, 2, 0, 1), exact=True)
    check(be, ctx.repeat(ctx.from_numpy(randn(1, 3)), ctx.new_tensor_3d(mg.TYPE_F32, 6, 2, 2)), exact=True)
    for dim in range(4):
        x = randn(2, 2, 3, 4)
        shape = list(x.shape)
        shape[3 - dim] = 1
        b = strided(ctx, randn(*shape))
        check(be, ctx.concat(ctx.from_numpy(x), b, dim), exact=True)


def test_get_rows(be):
    ctx = mg.Context()
    table = strided(ctx, randn(2, 5, 4))                  # ne [4, 5, 2]
    idx = ctx.from_numpy(np.array([[4, 0, 2], [1, 1, 3], [0, 4, 4], [2, 2, 0]], np.int32).reshape(2, 2, 3))
    check(be, ctx.get_rows(table, idx), exact=True)      # ne2 of idx (2) = table's (2)
    ints = ctx.from_numpy(np.arange(12, dtype=np.int32).reshape(3, 4))
    check(be, ctx.get_rows(ints, ctx.from_numpy(np.array([2, 0], np.int32))), exact=True)


# -- reduce ---------------------------------------------------------------------------------------

def test_sums(be):
    ctx = mg.Context()
    a = transposed(ctx, randn(2, 3, 37))
    check(be, ctx.sum(a))
    check(be, ctx.sum_rows(a))
    check(be, ctx.mean(strided(ctx, randn(3, 70))))


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_cumsum(be, dim):
    ctx = mg.Context()
    check(be, ctx.cumsum(transposed(ctx, randn(2, 3, 4, 5)), dim))


@pytest.mark.parametrize("op", ["l2_norm", "rms_norm", "norm"])
def test_norms(be, op):
    ctx = mg.Context()
    check(be, getattr(ctx, op)(transposed(ctx, randn(2, 40, 3)), 1e-5))


def test_soft_max(be):
    ctx = mg.Context()
    check(be, ctx.soft_max(strided(ctx, randn(3, 50, scale=4.0))))
    a = ctx.from_numpy(randn(2, 4, 3, 6))                 # ne [6, 3, 4, 2]: 4 heads
    mask = ctx.from_numpy(randn(1, 2, 5, 6))             # more rows than a; broadcast over ne2/ne3
    check(be, ctx.soft_max_ext(a, mask, 0.7, 8.0))
    check(be, ctx.soft_max_ext(a, mask, 1.3, 0.0))


# -- linalg ---------------------------------------------------------------------------------------

def test_mul_mat_out_prod(be):
    ctx = mg.Context()
    a = ctx.from_numpy(randn(1, 2, 7, 9))                 # [K=9, M=7, 2, 1]
    b = transposed(ctx, randn(2, 4, 5, 9))                # [K=9, N=5, 4, 2] non-contiguous
    check(be, ctx.mul_mat(a, b))
    a2 = ctx.from_numpy(randn(1, 2, 6, 5))                # [M=5, K=6, 2, 1]
    b2 = strided(ctx, randn(1, 4, 6, 3))                  # [N=3, K=6, 4, 1]
    check(be, ctx.out_prod(a2, b2))


def test_tri_fill_diag(be):
    ctx = mg.Context()
    a = transposed(ctx, randn(2, 5, 5))
    for t in range(4):
        check(be, ctx.tri(a, t), exact=True)
    check(be, ctx.fill(a, 2.5), exact=True)
    check(be, ctx.diag(ctx.from_numpy(randn(3, 1, 4))), exact=True)


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("uni", [False, True])
def test_solve_tri(be, left, lower, uni):
    ctx = mg.Context()
    n, k = 5, 3
    A = randn(2, n, n, scale=0.3) + np.eye(n, dtype=np.float32) * 2.0
    B = randn(2, n, k) if left else randn(2, k, n)
    check(be, ctx.solve_tri(ctx.from_numpy(A), transposed(ctx, B), left, lower, uni),
          max_nmse=1e-10)


# -- write ----------------------------------------------------------------------------------------

def test_acc_set(be):
    ctx = mg.Context()
    a = ctx.from_numpy(randn(3, 4, 6))
    b = transposed(ctx, randn(2, 2, 3))                   # ne [3, 2, 2]
    nb1, nb2 = a.nb[1], a.nb[2]
    check(be, ctx.acc(a, b, nb1, nb2, a.nb[3], 4 + nb1))
    check(be, ctx.set(a, b, nb1, nb2, a.nb[3], 8))
    check(be, ctx.set_2d(a, ctx.from_numpy(randn(2, 5)), nb1, 4))
    x = ctx.scale(a, 1.0)
    check(be, ctx.acc_inplace(x, b, nb1, nb2, a.nb[3], 0))


# -- gated delta net --------------------------------------------------------------------------

def _gdn(ctx, S, Hk, Hv, T, N, Nqk, kda, K):
    q = ctx.from_numpy(randn(Nqk, T, Hk, S, scale=0.5))
    k = ctx.from_numpy(randn(Nqk, T, Hk, S, scale=0.5))
    v = ctx.from_numpy(randn(N, T, Hv, S))
    g = ctx.from_numpy(-np.abs(randn(N, T, Hv, S if kda else 1, scale=0.3)))
    beta = ctx.from_numpy(1.0 / (1.0 + np.exp(-randn(N, T, Hv, 1))))
    state = ctx.from_numpy(randn(N, Hv, S, S, scale=0.1))
    return ctx.gated_delta_net(q, k, v, g, beta, state, K)


@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("T,K", [(1, 1), (3, 2), (2, 4)])
def test_gated_delta_net(be, kda, T, K):
    ctx = mg.Context()
    check(be, _gdn(ctx, 8, 1, 2, T, 2, 1, kda, K))


# -- the backend --------------------------------------------------------------------------------

def test_refusals_have_reasons(be):
    ctx = mg.Context()
    h = ctx.new_tensor_1d(mg.TYPE_F16, 4)
    s = be.supports_op(ctx.add(h, h))
    assert not s and "f32" in s.reason
    assert be.supports_op(ctx.add(ctx.new_tensor_1d(mg.TYPE_F32, 4), ctx.new_tensor_1d(mg.TYPE_F32, 4)))


def test_reuse_plan_and_reupload_changed_input(be):
    ctx = mg.Context()
    a = ctx.from_numpy(randn(4, 8))
    b = ctx.from_numpy(randn(4, 8))
    out = ctx.tanh(ctx.add(a, b))
    gf = mg.Graph()
    gf.build_forward_expand(out)
    for _ in range(3):
        x, y = randn(4, 8), randn(4, 8)
        a.set_data(x)
        b.set_data(y)
        be.graph_compute(gf)
        np.testing.assert_allclose(out.numpy(), np.tanh(x + y), rtol=1e-5, atol=1e-6)
    assert len({id(be.plan(gf))}) == 1


def test_zero_copy_in_and_out(be):
    from numba import cuda

    ctx = mg.Context()
    x = randn(3, 4)
    t = be.tensor_from_device_array(ctx, cuda.to_device(x))
    out = ctx.mul(t, ctx.from_numpy(np.full((1, 4), 2.0, np.float32)))
    mg.compute(out, be)
    np.testing.assert_array_equal(out.numpy(), 2 * x)
    np.testing.assert_array_equal(be.tensor_device_array(out).copy_to_host(), 2 * x)
    tv = be.tensor_device_array(ctx.transpose(out))          # strided export, no copy
    np.testing.assert_array_equal(np.asarray(tv.copy_to_host()).reshape(4, 3), (2 * x).T)


def test_buffers_set_get(be):
    ctx = mg.Context()
    t = ctx.new_tensor_2d(mg.TYPE_F32, 4, 3)
    mg.backend_tensor_alloc(be, t)
    buf = mg.tensor_buffer(t)
    assert buf.backend is be and not buf.is_host
    x = randn(3, 4)
    buf.set(t, x.view(np.uint8).reshape(-1))
    np.testing.assert_array_equal(buf.get(t).view(np.float32).reshape(3, 4), x)
    tt = ctx.transpose(t)  # non-contiguous: read through nb, packed
    np.testing.assert_array_equal(buf.get(tt).view(np.float32).reshape(4, 3), x.T)
    buf.set(tt, np.ascontiguousarray(x.T * 3).view(np.uint8).reshape(-1))
    np.testing.assert_array_equal(buf.get(t).view(np.float32).reshape(3, 4), x * 3)
    # a node reading a device-resident tensor computes in place of the copy
    out = ctx.scale(t, 2.0)
    mg.compute(out, be)
    np.testing.assert_allclose(out.numpy(), x * 6)


# -- real GPU only ------------------------------------------------------------------------------

@gpu
def test_cuda_graph_replay(be):
    from minigraph.backends.cuda.backend import CudaBackend

    ctx = mg.Context()
    a = ctx.from_numpy(randn(64, 64))
    y = ctx.from_numpy(randn(64, 64))
    x = a
    for _ in range(50):
        x = ctx.add(x, y)
    gf = mg.Graph()
    gf.build_forward_expand(x)
    gb = CudaBackend(0, use_graphs=True)
    for i in range(4):
        v = randn(64, 64)
        a.set_data(v)
        gb.graph_compute(gf)
        np.testing.assert_allclose(x.numpy(), v + 50 * y.numpy(), rtol=1e-4, atol=1e-4)
    plan = gb.plan(gf)
    assert plan.graph_error is None and plan.graph_exec is not None


@gpu
def test_big_cases(be):
    ctx = mg.Context()
    check(be, ctx.mul_mat(ctx.from_numpy(randn(2, 200, 96)), ctx.from_numpy(randn(2, 130, 96))), max_nmse=1e-6)
    check(be, ctx.soft_max_ext(ctx.from_numpy(randn(1, 8, 64, 1000)), ctx.from_numpy(randn(1, 1, 64, 1000)), 0.1, 8.0))
    check(be, ctx.rms_norm(ctx.from_numpy(randn(64, 4096)), 1e-6))
    check(be, ctx.norm(transposed(ctx, randn(300, 513)), 1e-6))
    check(be, ctx.sum(ctx.from_numpy(randn(1000, 1000))), max_nmse=1e-10)
    check(be, ctx.cumsum(ctx.from_numpy(randn(16, 2000)), 0), max_nmse=1e-8)
    check(be, ctx.solve_tri(ctx.from_numpy(randn(64, 64, scale=0.05) + 2 * np.eye(64, dtype=np.float32)),
                            ctx.from_numpy(randn(64, 32)), True, True, False), max_nmse=1e-9)


@gpu
@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("T,K", [(1, 1), (16, 3)])
def test_gated_delta_net_big(be, kda, T, K):
    ctx = mg.Context()
    check(be, _gdn(ctx, 128, 2, 4, T, 2, 1, kda, K), max_nmse=1e-6)
