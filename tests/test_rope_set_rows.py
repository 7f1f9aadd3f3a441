"""ROPE (ggml_rope_ext) and SET_ROWS (ggml_set_rows): the float64 reference against hand-written
formulas, the CPU and CUDA (simulator) kernels against the reference on every conformance case,
ggml's own CPU backend (ggml-python) on the same cases, the MLA rope shift of seed #18986, I64
indices, and the refusals."""
import math

import numpy as np
import pytest

import minigraph as mg
from minigraph.core import dtypes
from minigraph.core.cases import cases_for
from minigraph.ops.rope import ROPE_TYPE_NEOX, ROPE_TYPE_NORMAL
from minigraph.ops.rope_cases import mla_rope_shift
from minigraph.tools.conformance import check_case

CPU = mg.backend_cpu_init(2)
I64 = dtypes.TYPE_I64
ROPE_CASES = cases_for("ROPE")
SET_ROWS_CASES = cases_for("SET_ROWS")


def graph(*outs):
    gf = mg.Graph()
    for t in outs:
        gf.build_forward_expand(t)
    return gf


@pytest.fixture(scope="module")
def cuda():
    return mg.backend_cuda_init(0)


# -- the definition itself -------------------------------------------------------------------------

def test_i64_type():
    assert I64 == 27 and dtypes.type_size(I64) == 8 and dtypes.type_name(I64) == "i64"
    ctx = mg.Context()
    t = ctx.from_numpy(np.array([[1, -2, 3], [2**40, 5, 6]], np.int64))
    assert t.type == I64 and t.ne == (3, 2, 1, 1) and t.nb[:2] == (8, 24)
    np.testing.assert_array_equal(t.numpy(), [[1, -2, 3], [2**40, 5, 6]])


def test_rope_reference_by_hand():
    """NORMAL and NEOX on one row, written out from ggml's formulas (pair i: angle p * 10000^(-2i/n))."""
    x = np.arange(1, 9, dtype=np.float32)  # ne0 = 8, rotate n_dims = 4, copy the tail
    x64 = x.astype(np.float64)               # float32 scalars would keep the products in float32
    p = 3
    th = [p * 10000.0 ** (-2.0 * i / 4) for i in range(2)]
    want_norm, want_neox = x.astype(np.float64).copy(), x.astype(np.float64).copy()
    for i in range(2):
        c, s = math.cos(th[i]), math.sin(th[i])
        a0, a1 = x64[2 * i], x64[2 * i + 1]
        want_norm[2 * i], want_norm[2 * i + 1] = a0 * c - a1 * s, a0 * s + a1 * c
        b0, b1 = x64[i], x64[i + 2]
        want_neox[i], want_neox[i + 2] = b0 * c - b1 * s, b0 * s + b1 * c
    for mode, want in ((ROPE_TYPE_NORMAL, want_norm), (ROPE_TYPE_NEOX, want_neox)):
        ctx = mg.Context()
        y = ctx.rope(ctx.from_numpy(x.reshape(1, 1, 8)), ctx.from_numpy(np.array([p], np.int32)), 4, mode)
        np.testing.assert_allclose(mg.reference_compute(y)[y].reshape(-1), want, rtol=1e-12)
        mg.compute(y)
        np.testing.assert_allclose(y.numpy().reshape(-1), want, rtol=1e-6, atol=1e-6)


def test_rope_yarn_reference_by_hand():
    """YaRN with freq_factors on one pair: the blend of the interpolated and extrapolated angle."""
    n_dims, n_ctx, base, fs, ext, attn, bf, bs = 8, 64, 100.0, 0.5, 0.75, 0.9, 2.0, 1.0
    ff = np.array([1.0, 2.0, 4.0, 8.0], np.float32)
    x = np.linspace(-1, 1, 8).astype(np.float32).astype(np.float64)
    p = 7
    low = max(0.0, math.floor(n_dims * math.log(n_ctx / (bf * 2 * math.pi)) / (2 * math.log(base))))
    high = min(n_dims - 1.0, math.ceil(n_dims * math.log(n_ctx / (bs * 2 * math.pi)) / (2 * math.log(base))))
    assert (low, high) == (1, 3)  # the ramp really blends at these parameters
    want = x.astype(np.float64).copy()
    for i in range(4):
        extrap = p * base ** (-2.0 * i / n_dims) / float(ff[i])
        ramp = (1 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))) * ext
        theta = fs * extrap * (1 - ramp) + extrap * ramp
        m = attn * (1 + 0.1 * math.log(1 / fs))
        c, s = math.cos(theta) * m, math.sin(theta) * m
        want[2 * i], want[2 * i + 1] = x[2 * i] * c - x[2 * i + 1] * s, x[2 * i] * s + x[2 * i + 1] * c
    ctx = mg.Context()
    y = ctx.rope_ext(ctx.from_numpy(x.reshape(1, 1, 8).astype(np.float32)), ctx.from_numpy(np.array([p], np.int32)),
                     ctx.from_numpy(ff),
                     n_dims, ROPE_TYPE_NORMAL, n_ctx, base, fs, ext, attn, bf, bs)
    np.testing.assert_allclose(mg.reference_compute(y)[y].reshape(-1), want, rtol=1e-12)


def test_rope_is_rope_ext_with_defaults():
    rng = np.random.default_rng(3)
    ctx = mg.Context()
    a = ctx.from_numpy(rng.uniform(-1, 1, (4, 2, 16)).astype(np.float32))
    pos = ctx.from_numpy(np.array([0, 5, -3, 100], np.int32))
    y1 = ctx.rope(a, pos, 12, ROPE_TYPE_NEOX)
    y2 = ctx.rope_ext(a, pos, None, 12, ROPE_TYPE_NEOX, 0, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    assert y1.op_params == y2.op_params
    mg.compute(graph(y1, y2))
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert y1.view_src is None and ctx.rope_inplace(a, pos, 12, ROPE_TYPE_NEOX).view_src is a


# -- kernels against the reference -------------------------------------------------------------

@pytest.mark.parametrize("case", ROPE_CASES + SET_ROWS_CASES, ids=[c.name for c in ROPE_CASES + SET_ROWS_CASES])
def test_cpu_matches_reference(case):
    err = check_case(case, CPU, seed=2)
    assert err is None, f"{case.name}: {err}"


# the simulator runs one Python thread per GPU thread: every f32 case with I32 indices but the
# cont/perm/offs triples of the plain grid are thinned to the yarn+ff corner
CUDA_CASES = [c for c in ROPE_CASES + SET_ROWS_CASES
              if "f16" not in c.vars and "bf16" not in c.vars and "i64" not in c.vars
              and ("ne=[32" not in c.vars or "ff=1,yarn=1" in c.vars)]


@pytest.mark.parametrize("case", CUDA_CASES, ids=[c.name for c in CUDA_CASES])
def test_cuda_matches_reference(cuda, case):
    err = check_case(case, cuda, seed=2)
    assert err is None, f"{case.name}: {err}"


def test_cuda_refuses_what_it_cannot_run(cuda):
    """f16 ROPE and a bf16 SET_ROWS destination are answered by supports_op, so the scheduler falls back."""
    ctx = mg.Context()
    a16 = ctx.new_tensor_3d(mg.TYPE_F16, 8, 2, 3)
    pos = ctx.from_numpy(np.zeros(3, np.int32))
    s = cuda.supports_op(ctx.rope(a16, pos, 8, 0))
    assert not s and "f16" in s.reason
    rows = ctx.new_tensor_2d(mg.TYPE_F32, 8, 2)
    s = cuda.supports_op(ctx.set_rows(ctx.new_tensor_2d(mg.TYPE_BF16, 8, 10), rows,
                                      ctx.from_numpy(np.array([1, 2], np.int64))))
    assert not s and "bf16" in s.reason
    for cache_type in (mg.TYPE_F32, mg.TYPE_F16):
        for idx_type in (np.int32, np.int64):
            cache = ctx.new_tensor_2d(cache_type, 8, 10)
            assert cuda.supports_op(ctx.set_rows(cache, rows, ctx.from_numpy(np.array([1, 2], idx_type))))


def test_sched_runs_bf16_set_rows_on_cpu(cuda):
    rng = np.random.default_rng(4)
    ctx = mg.Context()
    cache = ctx.new_tensor_2d(mg.TYPE_BF16, 8, 6).set_name("cache")
    cache.set_data(np.zeros((6, 8), np.uint16))
    rows = ctx.from_numpy(rng.uniform(-1, 1, (2, 8)).astype(np.float32))
    y = ctx.set_rows(cache, ctx.scale(rows, 2.0), ctx.from_numpy(np.array([4, 1], np.int64)))
    gf = graph(y)
    sched = mg.backend_sched_new([cuda, CPU])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(y) is CPU
    assert sched.get_tensor_backend(y.src[0]) is cuda     # the scale before it stays on the GPU
    want = np.zeros((6, 8), np.float32)
    want[[4, 1]] = 2 * rows.numpy()
    np.testing.assert_allclose(cache.numpy(), want, rtol=1e-2)  # numpy() widens bf16 to f32


@pytest.mark.parametrize("cache_type", [np.float32, np.float16])
@pytest.mark.parametrize("idx_type", [np.int32, np.int64])
def test_cuda_set_rows_types(cuda, cache_type, idx_type):
    """f32/f16 rows into an f32/f16 cache with i32/i64 indices (an i64 index above 2^31 is refused)."""
    rng = np.random.default_rng(6)
    ctx = mg.Context()
    cache = ctx.from_numpy(np.full((7, 5), -1, cache_type))
    rows = ctx.from_numpy(rng.uniform(-2, 2, (3, 5)).astype(np.float32))
    idx = ctx.from_numpy(np.array([6, 0, 3], idx_type))
    y = ctx.set_rows(cache, rows, idx)
    gf = graph(y)
    ref = mg.reference_compute(gf)[y]
    cuda.graph_compute(gf)
    np.testing.assert_array_equal(y.numpy(), ref.astype(cache_type))
    if idx_type is np.int64:
        idx.set_data(np.array([6, 2**33, 3], idx_type))
        with pytest.raises(mg.MinigraphError, match="SET_ROWS.*8589934592"):
            cuda.graph_compute(gf)


# -- the MLA rope shift (seed #18986) ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("yarn", [0, 1])
def test_mla_rope_shift_ropes_only_the_pe_part(backend, yarn, request):
    be = CPU if backend == "cpu" else request.getfixturevalue("cuda")
    ctx = mg.Context()
    k_cache, k_pe = mla_rope_shift(ctx, np.random.default_rng(5), 6, yarn)
    assert k_pe.view_src is k_cache and k_pe.view_offs == 512 * 4 and k_pe.nb[1:3] == (576 * 4, 576 * 4)
    before = k_cache.numpy().copy()
    gf = graph(k_pe)
    ref = mg.reference_compute(gf)[k_cache]
    be.graph_compute(gf)
    after = k_cache.numpy()
    np.testing.assert_array_equal(after[:, :512], before[:, :512])        # the kv part is untouched
    assert np.abs(after[:, 512:] - before[:, 512:]).max() > 0.1           # the pe part moved
    np.testing.assert_allclose(after, ref, rtol=1e-5, atol=1e-5)


# -- SET_ROWS semantics ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_set_rows_repeated_index_keeps_the_last_row(backend, request):
    be = CPU if backend == "cpu" else request.getfixturevalue("cuda")
    ctx = mg.Context()
    cache = ctx.from_numpy(np.full((5, 4), -1.0, np.float32))
    rows = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    y = ctx.set_rows(cache, rows, ctx.from_numpy(np.array([2, 0, 2], np.int32)))
    gf = graph(y)
    ref = mg.reference_compute(gf)[y]
    be.graph_compute(gf)
    want = np.full((5, 4), -1.0, np.float32)
    want[0], want[2] = [4, 5, 6, 7], [8, 9, 10, 11]
    np.testing.assert_array_equal(ref, want)
    np.testing.assert_array_equal(y.numpy(), want)
    assert y.view_src is cache and y.src[2] is cache and y.src[0] is rows  # ggml's (b, c, a) order


@pytest.mark.parametrize("idx_type, bad", [(np.int32, 5), (np.int32, -1), (np.int64, 5), (np.int64, -1), (np.int64, 2**33)])
def test_set_rows_out_of_range_index_at_compute_time(idx_type, bad):
    ctx = mg.Context()
    cache = ctx.from_numpy(np.zeros((5, 4), np.float32)).set_name("kv")
    idx = ctx.from_numpy(np.array([0, bad], idx_type)).set_name("slots")
    y = ctx.set_rows(cache, ctx.from_numpy(np.ones((2, 4), np.float32)), idx).set_name("kv_write")
    gf = graph(y)
    with pytest.raises(mg.MinigraphError, match="SET_ROWS") as info:
        CPU.graph_compute(gf)
    assert "kv_write" in str(info.value)
    np.testing.assert_array_equal(cache.numpy(), 0)  # checked before anything was written
    with pytest.raises(mg.MinigraphError, match="SET_ROWS"):
        mg.reference_compute(gf)
    idx.set_data(np.array([0, 3], idx_type))         # the same graph computes once fixed
    CPU.graph_compute(gf)
    np.testing.assert_array_equal(cache.numpy()[[0, 3]], 1)


@pytest.mark.parametrize("bad", [9, -2])
def test_cuda_refuses_out_of_range_indices_after_compute(cuda, bad):
    """A GPU kernel cannot raise: it checks every index before writing, reports the bad one, and the
    plan raises the CPU backend's MinigraphError after the run; nothing was written."""
    ctx = mg.Context()
    cache = ctx.from_numpy(np.zeros((5, 4), np.float32)).set_name("kv")
    idx = ctx.from_numpy(np.array([1, bad, 2], np.int32)).set_name("slots")
    y = ctx.set_rows(cache, ctx.from_numpy(np.ones((3, 4), np.float32)), idx).set_name("kv_write")
    gf = graph(y)
    with pytest.raises(mg.MinigraphError, match=f"SET_ROWS.*kv_write.*row index {bad} at indices.1, 0, 0."):
        cuda.graph_compute(gf)
    np.testing.assert_array_equal(cache.numpy(), 0)
    idx.set_data(np.array([1, 3, 2], np.int32))       # the same graph computes once fixed
    cuda.graph_compute(gf)
    np.testing.assert_array_equal(cache.numpy()[[1, 2, 3]], 1)


# -- ggml's own CPU backend ----------------------------------------------------------------------

@pytest.mark.ggml
def test_ggml_agrees_on_rope_and_set_rows():
    pytest.importorskip("ggml", reason="ggml-python (the optional ggml extra, pip install -e .[ggml]) is the reference engine here")
    from minigraph.testing.ggml_conformance import run_all

    res = run_all(op="ROPE,SET_ROWS")
    bad = [r for r in res if r["status"] in ("fail", "crash", "hang")]
    assert not bad, bad
    ok = {r["case"] for r in res if r["status"] == "ok"}
    assert len(ok) >= 55
    assert any("mla_rope_shift=1" in c and "yarn=1" in c for c in ok)
    assert any("idx=i64" in c for c in ok) and any("type=f16" in c and c.startswith("ROPE") for c in ok)
    skipped = {r["why"] for r in res if r["status"] == "skip"}
    assert skipped == {"ggml needs contiguous rows for this op", "the bridge has no numpy type for bf16 data",
                       "ggml-python 0.0.45's ggml_set_rows takes f32 rows only (current ggml also f16)"}


# -- refusals ------------------------------------------------------------------------------------

def _rope_args(ctx, **kw):
    args = dict(a=ctx.new_tensor_3d(mg.TYPE_F32, 16, 2, 3).set_name("x"),
                b=ctx.from_numpy(np.zeros(3, np.int32)).set_name("pos"), c=None, n_dims=16, mode=0,
                n_ctx_orig=0, freq_base=10000.0, freq_scale=1.0, ext_factor=0.0, attn_factor=1.0,
                beta_fast=0.0, beta_slow=0.0)
    args.update(kw)
    return args


ROPE_REFUSALS = [
    ("mode_1", dict(mode=1), "mode & 1"),
    ("mrope", dict(mode=8), "MROPE"),
    ("vision", dict(mode=24), "VISION"),
    ("imrope", dict(mode=40), "IMROPE"),
    ("mode_4", dict(mode=4), "unknown mode"),
    ("n_dims_odd", dict(n_dims=7), "n_dims 7"),
    ("n_dims_too_big", dict(n_dims=18), "n_dims 18"),
    ("n_dims_zero", dict(n_dims=0), "n_dims 0"),
    ("n_dims_float", dict(n_dims=16.0), "n_dims must be an int"),
    ("base_zero", dict(freq_base=0.0), "freq_base"),
    ("yarn_no_ctx", dict(ext_factor=1.0, beta_fast=32.0, beta_slow=1.0), "YaRN"),
    ("yarn_no_beta", dict(ext_factor=1.0, n_ctx_orig=4096), "YaRN"),
    ("scale_str", dict(freq_scale="1"), "freq_scale must be a number"),
]


@pytest.mark.parametrize("kw, match", [r[1:] for r in ROPE_REFUSALS], ids=[r[0] for r in ROPE_REFUSALS])
def test_rope_refusals(kw, match):
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError, match=match) as info:
        ctx.rope_ext(**_rope_args(ctx, **kw))
    assert "rope_ext" in str(info.value)


@pytest.mark.parametrize("what", ["pos_f32", "pos_len", "pos_2d", "ff_i32", "ff_short", "a_i32", "a_bf16", "not_tensor"])
def test_rope_tensor_refusals(what):
    ctx = mg.Context()
    kw = {
        "pos_f32": dict(b=ctx.from_numpy(np.zeros(3, np.float32))),
        "pos_len": dict(b=ctx.from_numpy(np.zeros(4, np.int32))),
        "pos_2d": dict(b=ctx.from_numpy(np.zeros((3, 3), np.int32))),
        "ff_i32": dict(c=ctx.from_numpy(np.ones(8, np.int32))),
        "ff_short": dict(c=ctx.from_numpy(np.ones(7, np.float32))),
        "a_i32": dict(a=ctx.new_tensor_3d(mg.TYPE_I32, 16, 2, 3)),
        "a_bf16": dict(a=ctx.new_tensor_3d(mg.TYPE_BF16, 16, 2, 3)),
        "not_tensor": dict(b=np.zeros(3, np.int32)),
    }[what]
    with pytest.raises(mg.MinigraphError, match="rope_ext_inplace"):
        ctx.rope_ext_inplace(**_rope_args(ctx, **kw))


@pytest.mark.parametrize("what", ["ne0", "ne2", "n_vs_c", "c_f32", "c_4d", "c_bcast", "b_i32", "a_i32"])
def test_set_rows_refusals(what):
    ctx = mg.Context()
    f32, i32 = mg.TYPE_F32, mg.TYPE_I32
    a = ctx.new_tensor_3d(f32, 8, 10, 4).set_name("cache")
    b = ctx.new_tensor_3d(f32, 8, 3, 4).set_name("rows")
    c = ctx.new_tensor_2d(i32, 3, 2).set_name("idx")
    args = {
        "ne0": (a, ctx.new_tensor_3d(f32, 7, 3, 4), c),
        "ne2": (a, ctx.new_tensor_3d(f32, 8, 3, 2), c),
        "n_vs_c": (a, b, ctx.new_tensor_2d(i32, 4, 2)),
        "c_f32": (a, b, ctx.new_tensor_2d(f32, 3, 2)),
        "c_4d": (ctx.new_tensor_4d(f32, 8, 10, 4, 2), ctx.new_tensor_4d(f32, 8, 3, 4, 2), ctx.new_tensor_4d(i32, 3, 2, 1, 2)),
        "c_bcast": (a, b, ctx.new_tensor_2d(i32, 3, 3)),
        "b_i32": (a, ctx.new_tensor_3d(i32, 8, 3, 4), c),
        "a_i32": (ctx.new_tensor_3d(i32, 8, 10, 4), b, c),
    }[what]
    with pytest.raises(mg.MinigraphError, match="set_rows"):
        ctx.set_rows(*args)
