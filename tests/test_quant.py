"""Block-quantized types (Q4_0 ... Q8_K): ggml's enum values and layouts, the reference
quantizers against ggml's bytes, the tensor model, the CPU paths and their refusals.

The conformance cases (ops/quant_cases.py) check CPY, GET_ROWS, SET_ROWS and MUL_MAT against the
float64 reference on the CPU and on ggml; here the checks are tighter and the refusals explicit."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.core import dtypes as D
from minigraph.backends.cpu import quant as cpu_quant
from minigraph.core import quants

CPU = mg.backend_cpu_init(2)
STORAGE = [D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q5_0, D.TYPE_Q5_1, D.TYPE_Q8_0, D.TYPE_Q4_K, D.TYPE_Q5_K, D.TYPE_Q6_K]
ALL = STORAGE + [D.TYPE_Q8_1, D.TYPE_Q8_K]
# ggml.h's enum and ggml-common.h's block sizes (block length, bytes)
GGML_TABLE = {2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
              12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292)}


def _rows(type_, n_rows=5, blocks=2, seed=0):
    """Rows with the edge cases ggml's quantizers branch on: an all-zero block, a flat block,
    tiny values, all-positive rows, exact integers."""
    rng = np.random.default_rng(seed)
    n = D.blck_size(type_) * blocks
    x = rng.standard_normal((n_rows, n)).astype(np.float32)
    x[0, : D.blck_size(type_)] = 0
    x[1, -D.blck_size(type_):] = 0.25
    x[2] *= 1e-4
    x[3] = np.abs(x[3]) * 50
    x[4] = rng.integers(-3, 4, n)
    return x


def _compute(out):
    gf = mg.Graph()
    gf.build_forward_expand(out)
    CPU.graph_compute(gf)
    return gf


# -- the type table -------------------------------------------------------------------------------

def test_enum_values_and_block_layouts_are_ggmls():
    assert {t: (D.blck_size(t), D.type_size(t)) for t in ALL} == GGML_TABLE
    assert [mg.type_name(t) for t in ALL] == ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_K", "q5_K", "q6_K",
                                            "q8_1", "q8_K"]
    assert all(mg.is_quantized(t) for t in ALL) and not mg.is_quantized(mg.TYPE_F16)
    assert D.VEC_DOT_TYPE[D.TYPE_Q4_1] == D.TYPE_Q8_1 and D.VEC_DOT_TYPE[D.TYPE_Q6_K] == D.TYPE_Q8_K


def test_tensor_model_counts_blocks():
    ctx = mg.Context()
    t = ctx.new_tensor_3d(mg.TYPE_Q4_K, 512, 3, 2)
    assert t.nb == (144, 288, 864, 1728)
    assert mg.row_size(mg.TYPE_Q4_K, 512) == 288 and mg.nbytes(t) == 1728 and mg.element_size(t) == 144
    assert mg.is_contiguous(t)
    v = ctx.view_2d(t, 256, 3, t.nb[1], 144)          # the second block of every row
    assert mg.nbytes(v) == 288 * 2 + 144 and not mg.is_contiguous(v)
    assert mg.is_contiguous(ctx.reshape_2d(t, 1024, 3))


@pytest.mark.parametrize("build, match", [
    (lambda c, t: c.new_tensor_2d(mg.TYPE_Q8_0, 48, 2), "not a multiple of 32"),
    (lambda c, t: c.view_1d(t, 16, 0), "must not split its blocks"),
    (lambda c, t: c.view_1d(t, 32, 9), "must not split its blocks"),
    (lambda c, t: c.view_2d(t, 32, 2, 17, 0), "must not split its blocks"),
    (lambda c, t: c.transpose(t), "would split them"),
    (lambda c, t: c.permute(t, 1, 0, 2, 3), "would split them"),
    (lambda c, t: c.reshape_2d(t, 48, 4), "not a multiple of 32"),
    (lambda c, t: c.mul_mat(t, c.new_tensor_2d(mg.TYPE_F16, 64, 1)), "takes an f32 src1"),
    (lambda c, t: c.mul_mat(c.new_tensor_2d(mg.TYPE_Q8_K, 256, 2), c.new_tensor_2d(mg.TYPE_F32, 256, 1)),
     "dot-product type only"),
    (lambda c, t: c.cpy(t, c.new_tensor_2d(mg.TYPE_Q4_0, 64, 3)), "quantized copies go"),
    (lambda c, t: c.cpy(c.new_tensor_2d(mg.TYPE_F16, 64, 3), c.new_tensor_2d(mg.TYPE_Q4_0, 64, 3)),
     "quantized copies go"),
    (lambda c, t: c.set_rows(t, c.new_tensor_2d(mg.TYPE_F16, 64, 1), c.new_tensor_1d(mg.TYPE_I32, 1)),
     "must be f32"),
])
def test_block_splitting_and_bad_combinations_are_refused(build, match):
    ctx = mg.Context()
    t = ctx.new_tensor_2d(mg.TYPE_Q8_0, 64, 3)
    with pytest.raises(mg.MinigraphError, match=match):
        build(ctx, t)


def test_numpy_dequantizes_and_raw_bytes_round_trip():
    x = _rows(D.TYPE_Q5_1)
    ctx = mg.Context()
    t = ctx.from_numpy(x, mg.TYPE_Q5_1)
    raw = t.numpy(copy=False)
    assert raw.shape == (5, 2 * 24) and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, quants.quantize(x, D.TYPE_Q5_1))
    np.testing.assert_array_equal(t.numpy(), quants.dequantize(raw, D.TYPE_Q5_1))
    assert np.abs(t.numpy() - x).max() <= np.abs(x).max() / 15   # 5-bit steps
    again = ctx.from_numpy(raw, mg.TYPE_Q5_1, copy=False)        # uint8 rows: the raw blocks, no copy
    assert again.ne == t.ne and np.shares_memory(again.numpy(copy=False), raw)


# -- ggml's bytes ---------------------------------------------------------------------------------

@pytest.mark.ggml
@pytest.mark.parametrize("type_", ALL, ids=[D.type_name(t) for t in ALL])
def test_quantize_bytes_equal_ggml(type_):
    gb = pytest.importorskip("minigraph.testing.ggml_bridge")
    if not gb.available():
        pytest.skip("ggml-python is not installed")
    for seed in range(2):
        x = _rows(type_, seed=seed)
        mine = quants.quantize(x, type_)
        np.testing.assert_array_equal(mine, gb.quantize_chunk(type_, x))
        if type_ not in (D.TYPE_Q8_1, D.TYPE_Q8_K):   # ggml has no to_float for the dot types
            np.testing.assert_array_equal(quants.dequantize(mine, type_), gb.dequantize_rows(type_, mine))


def test_quantizers_keep_their_error_bounds():
    """Without ggml: each type's round trip stays within its step size, zero rows stay zero."""
    for t, bits in ((D.TYPE_Q4_0, 4), (D.TYPE_Q5_0, 5), (D.TYPE_Q8_0, 8), (D.TYPE_Q4_K, 4), (D.TYPE_Q6_K, 6),
                    (D.TYPE_Q8_K, 8)):
        x = _rows(t, seed=3)[[0, 1, 3, 4]]   # not the 1e-4 row: its float16 scales are subnormal
        back = quants.dequantize(quants.quantize(x, t), t)
        step = np.abs(x).max(axis=1, keepdims=True) / 2 ** (bits - 1)
        assert (np.abs(back - x) <= 1.5 * step + 1e-12).all(), D.type_name(t)
        assert (back[0, : D.blck_size(t)] == 0).all()


# -- CPU paths ------------------------------------------------------------------------------------

# 7 rows: one task; 2 full tasks of the CPU's mat-vec (quant.ROWS_PER_TASK rows) and a partial one
ROWS = (7, 2 * cpu_quant.ROWS_PER_TASK + 5)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("type_", STORAGE, ids=[D.type_name(t) for t in STORAGE])
def test_mul_mat_is_ggmls_integer_dot(type_, m):
    """MUL_MAT equals the float64 product of the dequantized weights and the dequantized
    vec_dot-type src1 up to float32 rounding (ggml's semantics), with ne0 = 256 * k, odd rows and
    broadcast dims, in one or several CPU tasks (a dropped partial task fails it); and ggml's CPU
    backend gives the same numbers."""
    rng = np.random.default_rng(1)
    k = 512
    w = rng.standard_normal((1, 2, m, k)).astype(np.float32)
    x = rng.standard_normal((3, 4, 2, k)).astype(np.float32)
    ctx = mg.Context()
    a = ctx.from_numpy(w, type_)
    out = ctx.mul_mat(a, ctx.from_numpy(x))
    _compute(out)
    vt = D.VEC_DOT_TYPE[type_]
    xq = quants.dequantize(quants.quantize(x, vt), vt).astype(np.float64)
    wd = np.repeat(a.numpy().astype(np.float64).reshape(1, 2, m, k), 2, axis=1)   # ne12 / ne02 = 2: in blocks
    want = xq @ np.swapaxes(wd, -1, -2)
    if vt == D.TYPE_Q8_1:   # ggml keeps q8_1's block sum s as float16
        tol = 1e-6
    else:
        tol = 1e-10
    got = out.numpy()
    assert got.shape == (3, 4, 2, m)
    assert ((got - want) ** 2).sum() / (want ** 2).sum() < tol
    gb = pytest.importorskip("minigraph.testing.ggml_bridge")
    if gb.available():
        g = gb.GgmlContext(1 << 24)
        gout = g.mul_mat(g.from_block_bytes(a.numpy(copy=False), type_), g.from_numpy(x))
        ref = gb.compute(gout)[0]
        assert ((got - ref) ** 2).sum() / (ref ** 2).sum() < 1e-10


def test_cpy_quantizes_in_logical_order_and_back():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    ctx = mg.Context()
    base = ctx.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2)))  # stored transposed
    src = ctx.permute(base, 1, 0, 2, 3)                                  # logical x again
    q = ctx.cpy(src, ctx.new_tensor_3d(mg.TYPE_Q4_0, 64, 3, 2))
    back = ctx.cpy(q, ctx.new_tensor_3d(mg.TYPE_F16, 64, 3, 2))
    _compute(back)
    np.testing.assert_array_equal(q.numpy(copy=False), quants.quantize(x, D.TYPE_Q4_0))
    q4 = quants.dequantize(quants.quantize(x, D.TYPE_Q4_0), D.TYPE_Q4_0)
    np.testing.assert_array_equal(back.numpy(), q4.astype(np.float16))


def test_get_rows_dequantizes_and_refuses_bad_indices():
    x = _rows(D.TYPE_Q6_K, n_rows=6, blocks=1)
    ctx = mg.Context()
    a = ctx.from_numpy(x, mg.TYPE_Q6_K)
    out = ctx.get_rows(a, ctx.from_numpy(np.array([5, 0, 5], np.int32)))
    _compute(out)
    np.testing.assert_array_equal(out.numpy(), a.numpy()[[5, 0, 5]])
    bad = ctx.get_rows(a, ctx.from_numpy(np.array([6], np.int32)))
    with pytest.raises(mg.MinigraphError, match="row index 6"):
        _compute(bad)


@pytest.mark.parametrize("type_", [D.TYPE_Q8_0, D.TYPE_Q4_0], ids=["q8_0", "q4_0"])
def test_set_rows_writes_quantized_cache_rows(type_):
    rng = np.random.default_rng(4)
    cache0 = rng.standard_normal((1, 8, 64)).astype(np.float32)
    rows = rng.standard_normal((1, 3, 64)).astype(np.float32)
    ctx = mg.Context()
    cache = ctx.from_numpy(cache0, type_)
    before = cache.numpy(copy=False).copy()
    out = ctx.set_rows(cache, ctx.from_numpy(rows), ctx.from_numpy(np.array([6, 1, 6], np.int64)))
    _compute(out)
    raw = cache.numpy(copy=False)
    np.testing.assert_array_equal(raw[1], quants.quantize(rows[0, 1], type_))
    np.testing.assert_array_equal(raw[6], quants.quantize(rows[0, 2], type_))   # the last write wins
    untouched = [0, 2, 3, 4, 5, 7]
    np.testing.assert_array_equal(raw[untouched], before[untouched])


def test_nodes_without_a_quantized_kernel_are_refused_with_a_reason():
    ctx = mg.Context()
    a = ctx.new_tensor_2d(mg.TYPE_Q4_0, 64, 2)
    node = ctx.cont(a)
    ok, reason = CPU.supports_op(node)
    assert not ok and "quantized" in reason and "q4_0" in reason
    ok, reason = CPU.supports_op(ctx.mul_mat(a, ctx.new_tensor_2d(mg.TYPE_F32, 64, 1)))
    assert ok


def test_cuda_claims_quantized_mul_mat_and_refuses_k_quant_quantizing():
    """CUDA runs MUL_MAT over a quantized src0 (tests/test_quant_cuda.py checks the results)
    but quantizes into Q8_0/Q4_0 only: a CPY into Q4_K is refused, naming the type."""
    pytest.importorskip("numba.cuda")
    try:
        cuda = mg.backend_cuda_init(0)
    except Exception as e:  # noqa: BLE001  (no device and no simulator)
        pytest.skip(f"no CUDA backend here: {e}")
    ctx = mg.Context()
    mm = ctx.mul_mat(ctx.new_tensor_2d(mg.TYPE_Q8_0, 64, 2), ctx.new_tensor_2d(mg.TYPE_F32, 64, 1))
    assert cuda.supports_op(mm)
    cp = ctx.cpy(ctx.new_tensor_2d(mg.TYPE_F32, 256, 2), ctx.new_tensor_2d(mg.TYPE_Q4_K, 256, 2))
    ok, reason = cuda.supports_op(cp)
    assert not ok and "q4_K" in reason and "CPU" in reason


@pytest.mark.parametrize("type_", STORAGE, ids=[D.type_name(t) for t in STORAGE])
def test_cpu_dequantize_kernel_is_the_reference_bit_for_bit(type_):
    """GET_ROWS and CPY to f32 dequantize with a Numba kernel: the same floats as ggml's
    dequantize_row_* (the reference, itself checked against ggml's to_float)."""
    x = _rows(type_, n_rows=5, blocks=2)
    ctx = mg.Context()
    a = ctx.from_numpy(x.reshape(1, 5, -1), type_)
    rows = ctx.get_rows(a, ctx.from_numpy(np.array([4, 0, 2], np.int32)))
    back = ctx.cpy(ctx.view_2d(a, a.ne[0], 2, a.nb[1], a.nb[1]), ctx.new_tensor_2d(mg.TYPE_F32, a.ne[0], 2))
    gf = mg.Graph()
    gf.build_forward_expand(rows)
    gf.build_forward_expand(back)
    CPU.graph_compute(gf)
    ref = quants.dequantize(quants.quantize(x, type_), type_)
    np.testing.assert_array_equal(rows.numpy(), ref[[4, 0, 2]])
    np.testing.assert_array_equal(back.numpy(), ref[1:3])


def test_graph_files_keep_quantized_leaves(tmp_path):
    ctx = mg.Context()
    a = ctx.from_numpy(_rows(D.TYPE_Q4_K, blocks=1), mg.TYPE_Q4_K).set_name("w")
    out = ctx.mul_mat(a, ctx.from_numpy(np.ones((1, 256), np.float32)).set_name("x"))
    gf = _compute(out)
    mg.save_graph(gf, tmp_path / "g.json")
    g2 = mg.load_graph(tmp_path / "g.json")
    CPU.graph_compute(g2)
    leaf = next(t for t in g2.leafs if t.name == "w")
    assert leaf.type == mg.TYPE_Q4_K
    np.testing.assert_array_equal(leaf.numpy(copy=False), a.numpy(copy=False))
    np.testing.assert_array_equal(g2.nodes[-1].numpy(), out.numpy())


@pytest.mark.parametrize("type_", [D.TYPE_Q8_0, D.TYPE_Q4_0], ids=["q8_0", "q4_0"])
def test_cpu_cache_quantizer_is_the_reference_byte_for_byte(type_):
    """CPY into a Q8_0/Q4_0 tensor quantizes with a Numba kernel: ggml's bytes, also where the
    float16 scale is subnormal (1e-7 rows) and where x * id lands on a half (integer rows)."""
    rng = np.random.default_rng(5)
    x = np.concatenate([_rows(type_, blocks=4, seed=6), (rng.standard_normal((3, 128)) * 1e-7),
                        rng.integers(-127, 128, (2, 128)) / 2.0]).astype(np.float32)
    ctx = mg.Context()
    q = ctx.cpy(ctx.from_numpy(x), ctx.new_tensor_2d(type_, 128, len(x)))
    _compute(q)
    np.testing.assert_array_equal(q.numpy(copy=False), quants.quantize(x, type_))


def test_scheduler_quantizes_on_the_cpu_and_multiplies_on_cuda():
    """With CUDA first (simulated here), the CPY into Q4_K falls back to the CPU (CUDA refuses
    it with a reason) and the quantized MUL_MAT and the f32 node after it run on CUDA."""
    pytest.importorskip("numba.cuda")
    try:
        cuda = mg.backend_cuda_init(0)
    except Exception as e:  # noqa: BLE001  (no device and no simulator)
        pytest.skip(f"no CUDA backend here: {e}")
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    ctx = mg.Context()
    wq = ctx.cpy(ctx.from_numpy(w), ctx.new_tensor_2d(mg.TYPE_Q4_K, 256, 4))
    mm = ctx.mul_mat(wq, ctx.from_numpy(x))
    out = ctx.scale(mm, 0.5)
    gf = mg.Graph()
    gf.build_forward_expand(out)
    sched = mg.backend_sched_new([cuda, CPU])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(wq) is CPU
    assert sched.get_tensor_backend(mm) is cuda and sched.get_tensor_backend(out) is cuda
    wd = quants.dequantize(quants.quantize(w, D.TYPE_Q4_K), D.TYPE_Q4_K).astype(np.float64)
    xd = quants.dequantize(quants.quantize(x, D.TYPE_Q8_K), D.TYPE_Q8_K)[0]
    np.testing.assert_allclose(out.numpy().reshape(-1), 0.5 * (wd @ xd), rtol=1e-5)
