"""CPU kernels of the reduce and linalg families vs the float64 op references, and the op
definitions vs the real ggml (through ggml-python) where ggml has the op.

Each kernel runs directly on numpy 4-D views (shape reversed(ne), strides reversed(nb)) built
from the root data of its sources, serial into a contiguous dst and parallel into a permuted dst
inside a sentinel-guarded buffer (no write may land outside dst).
"""
import numpy as np
import pytest

import minigraph as mg
import minigraph.backends.cpu  # noqa: F401  (registers the kernels)
from minigraph.backends.cpu.backend import _storage_codes
from minigraph.core.registry import KERNELS, OPS

MAX_NMSE = 1e-7  # test-backend-ops' default
SENTINEL = np.float32(-12345.0)
rng = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def view4(t):
    """The (ne3, ne2, ne1, ne0) float32 view of tensor t over its root's data, strides nb."""
    root = t.root
    data = np.ascontiguousarray(root.numpy(), dtype=np.float32).reshape(-1)  # roots are contiguous
    offs = t.view_offs if t.view_src is not None else 0
    return np.ndarray(tuple(reversed(t.ne)), np.float32, buffer=data, offset=offs, strides=tuple(reversed(t.nb)))


def kernel_args(node):
    srcs = [np.zeros((1, 1, 1, 1), np.float32) if s is None else view4(s) for s in node.src]
    params = [node.op_params[k] for k in OPS[node.op].params]
    kern = KERNELS["cpu"][node.op]
    fn = kern.for_node(node)   # the form a plan would compile (MUL_MAT: dot or tiles)
    fn.load_helpers()   # its builds are called straight from here, not through a plan
    return fn, srcs, params + _storage_codes(node, kern.storage_slots) + list(kern.extra)


def run_serial(node):
    fn, srcs, rest = kernel_args(node)
    dst = np.full(tuple(reversed(node.ne)), np.nan, np.float32)
    fn.serial(dst, *srcs, *rest)
    return dst


def run_parallel_permuted(node):
    """The parallel build into a dst with swapped ne0/ne1 strides, padded by sentinels."""
    fn, srcs, rest = kernel_args(node)
    shape = tuple(reversed(node.ne))
    size, pad = int(np.prod(shape)), 16
    buf = np.full(size + 2 * pad, SENTINEL, np.float32)
    dst = buf[pad:pad + size].reshape(shape[:2] + (shape[3], shape[2])).swapaxes(2, 3)
    dst[...] = np.nan
    fn.parallel(dst, *srcs, *rest)
    assert np.all(buf[:pad] == SENTINEL) and np.all(buf[pad + size:] == SENTINEL), "write outside dst"
    return np.array(dst)


def nmse(out, ref):
    return float(((out - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))


def check(node, exact=False):
    ref = np.asarray(mg.reference_compute(node)[node], np.float64).reshape(tuple(reversed(node.ne)))
    for out in (run_serial(node), run_parallel_permuted(node)):
        assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.array_equal(np.isinf(out), np.isinf(ref)), \
            f"{node.op}: nan/inf mismatch"
        fin = np.isfinite(ref)
        if exact:
            assert np.array_equal(out[fin], ref[fin]), f"{node.op}: not exact"
        else:
            assert nmse(out[fin], ref[fin]) < MAX_NMSE, f"{node.op}: NMSE {nmse(out[fin], ref[fin]):.3g}"
    return ref


def t_permuted(ctx, arr):
    """arr's data as a tensor with ne0/ne1 swapped (a transposed, non-contiguous view)."""
    return ctx.transpose(ctx.from_numpy(np.ascontiguousarray(np.swapaxes(arr, -1, -2))))


# ---------------------------------------------------------------------------------------------
# reduce

SHAPES = [(1,), (3,), (17, 1), (5, 65), (2, 3, 17), (2, 3, 4, 65)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", ["sum", "sum_rows", "mean"])
def test_sums(op, shape):
    ctx = mg.Context()
    x = randn(*shape)
    check(getattr(ctx, op)(ctx.from_numpy(x)))
    if len(shape) >= 2:
        check(getattr(ctx, op)(t_permuted(ctx, x)))


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
@pytest.mark.parametrize("permuted", [False, True])
def test_cumsum_each_dim(dim, permuted):
    ctx = mg.Context()
    x = randn(3, 5, 17, 65)
    a = t_permuted(ctx, x) if permuted else ctx.from_numpy(x)
    check(ctx.cumsum(a, dim=dim))
    # a 4-D permutation that moves every axis, and an offset view
    p = ctx.permute(ctx.from_numpy(randn(2, 3, 4, 5)), 2, 0, 3, 1)
    check(ctx.cumsum(p, dim=dim))
    base = ctx.from_numpy(randn(4, 6, 9, 33))
    v = ctx.view_4d(base, 17, 5, 3, 2, base.nb[1], base.nb[2], base.nb[3], 3 * base.nb[0] + base.nb[1])
    check(ctx.cumsum(v, dim=dim))


def test_cumsum_chunk_rows():
    """Chunked delta-net shape: rows of 64 (a chunk), and a transposed 64 x 64 chunk along dim 1."""
    ctx = mg.Context()
    check(ctx.cumsum(ctx.from_numpy(randn(2, 4, 33, 64)), dim=0))
    check(ctx.cumsum(t_permuted(ctx, randn(2, 4, 64, 64)), dim=1))


@pytest.mark.parametrize("op,eps", [("l2_norm", 1e-6), ("rms_norm", 1e-6), ("norm", 1e-5)])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_norms(op, eps, shape):
    ctx = mg.Context()
    x = randn(*shape) + np.float32(0.5)
    check(getattr(ctx, op)(ctx.from_numpy(x), eps))
    if len(shape) >= 2:
        check(getattr(ctx, op)(t_permuted(ctx, x), eps))


def test_norms_zero_row_uses_eps():
    ctx = mg.Context()
    x = np.zeros((3, 17), np.float32)
    for op in ("l2_norm", "rms_norm", "norm"):
        assert np.all(run_serial(getattr(ctx, op)(ctx.from_numpy(x), 1e-6)) == 0.0)


@pytest.mark.parametrize("shape", [(1,), (17,), (3, 65), (2, 6, 5, 17)], ids=str)
def test_soft_max_plain(shape):
    ctx = mg.Context()
    x = randn(*shape, scale=4.0)
    check(ctx.soft_max(ctx.from_numpy(x)))
    check(ctx.soft_max_ext(ctx.from_numpy(x), None, 0.3, 0.0))
    if len(shape) >= 2:
        check(ctx.soft_max(t_permuted(ctx, x)))


@pytest.mark.parametrize("max_bias", [0.0, 8.0])
@pytest.mark.parametrize("mask_shape", [(1, 1, 7, 17), (2, 3, 5, 17), (1, 2, 9, 17)], ids=str)
def test_soft_max_mask_alibi(mask_shape, max_bias):
    """f32 mask with extra rows and ne2/ne3 broadcast; ALiBi over 6 heads (not a power of 2)."""
    ctx = mg.Context()
    x = randn(2, 6, 5, 17, scale=3.0)
    mask = randn(*mask_shape)
    mask[..., 11:] = -np.inf                       # a causal-style tail, never a whole row
    check(ctx.soft_max_ext(ctx.from_numpy(x), ctx.from_numpy(mask), 0.5, max_bias))
    check(ctx.soft_max_ext(t_permuted(ctx, x), ctx.from_numpy(mask), 0.5, max_bias))


# ---------------------------------------------------------------------------------------------
# linalg

@pytest.mark.parametrize("K", [1, 3, 17, 65])
@pytest.mark.parametrize("M,N", [(1, 1), (3, 17), (17, 3), (65, 5), (130, 9)])
def test_mul_mat(K, M, N):
    ctx = mg.Context()
    check(ctx.mul_mat(ctx.from_numpy(randn(M, K)), ctx.from_numpy(randn(N, K))))
    # b transposed (non-contiguous), a with permuted batch dims, broadcast over dims 2 and 3
    a = ctx.permute(ctx.from_numpy(randn(2, 1, M, K)), 0, 1, 3, 2)      # ne [K, M, 2, 1]
    b = t_permuted(ctx, randn(3, 4, N, K))                                # ne [K, N, 4, 3]
    check(ctx.mul_mat(a, b))


def test_mul_mat_broadcast_both_dims():
    ctx = mg.Context()
    a = ctx.from_numpy(randn(2, 3, 33, 65))                   # ne [65, 33, 3, 2]
    b = ctx.from_numpy(randn(4, 6, 7, 65))                    # ne [65, 7, 6, 4]: r2 = 2, r3 = 2
    check(ctx.mul_mat(a, b))
    for n in (1, 3):                                          # the dot path (N <= MM_DOT_MAX_N) too
        check(ctx.mul_mat(a, ctx.from_numpy(randn(4, 6, n, 65))))
    base = ctx.from_numpy(randn(3, 40, 80))                   # a row-offset view with padded rows
    a = ctx.view_3d(base, 65, 33, 3, base.nb[1], base.nb[2], 5 * base.nb[0] + 2 * base.nb[1])
    check(ctx.mul_mat(a, ctx.from_numpy(randn(6, 7, 65))))


@pytest.mark.parametrize("N", [1, 5])
def test_mul_mat_src0_values_apart(N):
    """src0 whose values are not adjacent (nb0 = 12 bytes < nb1: not transposed in ggml's sense)
    takes the row dots (N <= 3) or the copying tiles; adjacent values take the register tiles."""
    ctx = mg.Context()
    a = ctx.permute(ctx.from_numpy(randn(70, 33, 3)), 2, 0, 1, 3)      # ne [33, 70, 3], nb0 = 12
    assert a.nb[0] == 12 and a.nb[0] < a.nb[1]
    check(ctx.mul_mat(a, ctx.from_numpy(randn(3, N, 33))))


@pytest.mark.parametrize("N", [1, 3, 4, 9])
def test_mul_mat_long_k(N):
    """K over several 256-wide slices (the last one partial), M over two 64-row blocks."""
    ctx = mg.Context()
    check(ctx.mul_mat(ctx.from_numpy(randn(2, 70, 600)), ctx.from_numpy(randn(2, N, 600))))


@pytest.mark.parametrize("K,M,N", [(1, 1, 1), (3, 17, 5), (17, 3, 65), (65, 9, 2)])
def test_out_prod(K, M, N):
    ctx = mg.Context()
    check(ctx.out_prod(ctx.from_numpy(randn(K, M)), ctx.from_numpy(randn(K, N))))
    a = ctx.from_numpy(randn(1, 2, K, M))                     # ne [M, K, 2, 1]
    b = t_permuted(ctx, randn(3, 4, K, N))                    # ne [N, K, 4, 3]
    check(ctx.out_prod(a, b))


@pytest.mark.parametrize("tri_type", [0, 1, 2, 3])
def test_tri(tri_type):
    ctx = mg.Context()
    for x in (randn(2, 3, 17, 17), randn(5, 7), randn(1, 1)):
        check(ctx.tri(ctx.from_numpy(x), tri_type), exact=True)
        check(ctx.tri(t_permuted(ctx, x), tri_type), exact=True)


def test_fill_and_diag():
    ctx = mg.Context()
    x = randn(2, 3, 5, 17)
    check(ctx.fill(ctx.from_numpy(x), 2.5), exact=True)
    check(ctx.fill(t_permuted(ctx, x), -1.0), exact=True)
    check(ctx.diag(ctx.from_numpy(randn(2, 3, 1, 17))), exact=True)
    check(ctx.diag(ctx.permute(ctx.from_numpy(randn(3, 2, 1, 5)), 0, 1, 3, 2)), exact=True)


def well_conditioned(batch, n, lower, uni):
    """A triangle of small entries, a dominant diagonal (or garbage 0 diagonal when uni, which
    must not be read), and NaN in the other triangle (must not be read either)."""
    a = randn(*batch, n, n, scale=0.5 / np.sqrt(n))
    keep = np.tril(np.ones((n, n), bool), -1) if lower else np.triu(np.ones((n, n), bool), 1)
    a = np.where(keep, a, np.float32(np.nan))
    idx = np.arange(n)
    a[..., idx, idx] = 0.0 if uni else (2.0 + rng.uniform(0, 1, (*batch, n))) * rng.choice([-1, 1], (*batch, n))
    return a.astype(np.float32)


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("uni", [True, False])
def test_solve_tri_all_variants(left, lower, uni):
    ctx = mg.Context()
    n, k = 17, 5
    A = well_conditioned((2, 3), n, lower, uni)
    Bn = randn(2, 3, n, k) if left else randn(2, 3, k, n)
    check(ctx.solve_tri(ctx.from_numpy(A), ctx.from_numpy(Bn), left, lower, uni))
    # B as a transposed view, and n = 1
    check(ctx.solve_tri(ctx.from_numpy(A), t_permuted(ctx, Bn), left, lower, uni))
    A1 = well_conditioned((1,), 1, lower, uni)
    check(ctx.solve_tri(ctx.from_numpy(A1), ctx.from_numpy(randn(1, 1, 3) if left else randn(1, 3, 1)),
                        left, lower, uni))


def test_solve_tri_unit_lower_64():
    """The chunked delta-net system: (I + strictly lower) X = B on 64 x 64 chunks."""
    ctx = mg.Context()
    A = well_conditioned((2, 4), 64, True, True)
    check(ctx.solve_tri(ctx.from_numpy(A), ctx.from_numpy(randn(2, 4, 64, 64)), True, True, True))
    check(ctx.solve_tri(ctx.from_numpy(A), ctx.from_numpy(randn(2, 4, 64, 128)), True, True, True))


def test_solve_tri_zero_pivot_gives_inf_not_crash():
    ctx = mg.Context()
    A = well_conditioned((1,), 4, True, False)
    A[0, 2, 2] = 0.0
    node = ctx.solve_tri(ctx.from_numpy(A), ctx.from_numpy(randn(1, 4, 2)), True, True, False)
    for out in (run_serial(node), run_parallel_permuted(node)):
        assert np.all(np.isfinite(out[0, 0, :2])) and not np.all(np.isfinite(out[0, 0, 2:]))


# ---------------------------------------------------------------------------------------------
# the op definitions vs the real ggml (one shape each; ggml aborts on bad args, so only valid ones)

def _ggml_vs_ours(build, inputs, exact=False):
    gb = pytest.importorskip("minigraph.testing.ggml_bridge")
    if not gb.available():
        pytest.skip("ggml-python is not installed")
    gctx, ctx = gb.GgmlContext(), mg.Context()
    got = gb.compute(build(gctx, *[None if x is None else gctx.from_numpy(x) for x in inputs]))[0]
    node = build(ctx, *[None if x is None else ctx.from_numpy(x) for x in inputs])
    ref = np.asarray(mg.reference_compute(node)[node]).reshape(got.shape)
    out = run_serial(node).reshape(got.shape)
    if exact:
        assert np.array_equal(ref, got) and np.array_equal(out, got)
    else:
        assert nmse(got, ref) < MAX_NMSE and nmse(out, got) < MAX_NMSE


X = randn(2, 3, 5, 17)
SQ = randn(2, 3, 7, 7)
L = np.tril(randn(2, 8, 8)) + 4 * np.eye(8, dtype=np.float32)
MASK = randn(1, 3, 7, 17)
MASK[..., 11:] = -np.inf
GGML_CASES = {
    "mul_mat": (lambda c, a, b: c.mul_mat(a, b), [randn(1, 2, 7, 17), randn(3, 4, 5, 17)]),
    "out_prod": (lambda c, a, b: c.out_prod(a, b), [randn(1, 2, 7, 17), randn(3, 4, 7, 5)]),
    "cumsum": (lambda c, a: c.cumsum(a), [X]),
    "tri_upper_diag": (lambda c, a: c.tri(a, mg.TRI_TYPE_UPPER_DIAG), [SQ]),
    "tri_upper": (lambda c, a: c.tri(a, mg.TRI_TYPE_UPPER), [SQ]),
    "tri_lower_diag": (lambda c, a: c.tri(a, mg.TRI_TYPE_LOWER_DIAG), [SQ]),
    "tri_lower": (lambda c, a: c.tri(a, mg.TRI_TYPE_LOWER), [SQ]),
    "fill": (lambda c, a: c.fill(a, 2.5), [X]),
    "diag": (lambda c, a: c.diag(a), [X[:, :, :1, :]]),
    "solve_tri": (lambda c, a, b: c.solve_tri(a, b, True, True, False), [L, randn(2, 8, 3)]),
    "soft_max_ext": (lambda c, a, m: c.soft_max_ext(a, m, 0.7, 8.0), [randn(2, 6, 5, 17), MASK]),
    "soft_max_ext_nomask": (lambda c, a, m: c.soft_max_ext(a, m, 0.7, 0.0), [X, None]),
    "l2_norm": (lambda c, a: c.l2_norm(a, 1e-6), [X]),
    "rms_norm": (lambda c, a: c.rms_norm(a, 1e-6), [X]),
    "norm": (lambda c, a: c.norm(a, 1e-5), [X]),
    "sum_rows": (lambda c, a: c.sum_rows(a), [X]),
    "mean": (lambda c, a: c.mean(a), [X]),
    "sum": (lambda c, a: c.sum(a), [X]),
}
EXACT = {"tri_upper_diag", "tri_upper", "tri_lower_diag", "tri_lower", "fill", "diag"}


@pytest.mark.ggml
@pytest.mark.parametrize("name", list(GGML_CASES))
def test_op_definition_matches_ggml(name):
    build, inputs = GGML_CASES[name]
    _ggml_vs_ours(build, inputs, exact=name in EXACT)
