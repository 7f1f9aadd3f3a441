"""The CPU backend's storage slots and wider executor types: FLASH_ATTN_EXT reads f16/bf16 K/V
and the f16 mask as stored (no f32 copies) inside the compiled executor, with any strides and
element offsets; GET_ROWS/SET_ROWS with I64 indices run there too. Each case asserts that the
node ran in the compiled program (plan steps) and holds NMSE <= 1e-6 against the float64
reference on the exact stored values (minigraph converts f16/bf16 exactly, accumulates in f32).
"""
import math

import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.cpu import storage
from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError
from minigraph.ops import attention as A

CPU = mg.backend_cpu_init(2)
TYPES = {"f16": mg.TYPE_F16, "bf16": mg.TYPE_BF16}


def _in_program(gf) -> bool:
    return [s[0] for s in CPU.plan(gf).steps] == ["prog"]


def _check(ctx, out):
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    ref = mg.reference_compute(gf)[out]
    CPU.graph_compute(gf)
    assert _in_program(gf), CPU.plan(gf).steps
    got = out.numpy().astype(np.float64)
    assert np.isfinite(got).all()
    err = float(((got - ref) ** 2).sum() / (ref ** 2).sum())
    assert err < 1e-6, err
    return got


def _kv(ctx, rng, type_, layout, hs, n_kv, n_kvh):
    """A K or V tensor [hs, n_kv, n_kvh, 1] of `layout`: cont, perm (cache layout [hs, n_kvh, n_kv]
    permuted), offs (odd element offset, padded rows), trans (ne0 strided: rows not contiguous)."""
    if layout == "cont":
        t = ctx.new_tensor_4d(type_, hs, n_kv, n_kvh, 1)
        t.set_data(rng.uniform(-1, 1, (1, n_kvh, n_kv, hs)).astype(np.float32))
        return t
    if layout == "perm":
        base = ctx.new_tensor_4d(type_, hs, n_kvh, n_kv, 1)
        base.set_data(rng.uniform(-1, 1, (1, n_kv, n_kvh, hs)).astype(np.float32))
        return ctx.permute(base, 0, 2, 1, 3)
    if layout == "trans":
        base = ctx.new_tensor_4d(type_, n_kv, hs, n_kvh, 1)
        base.set_data(rng.uniform(-1, 1, (1, n_kvh, hs, n_kv)).astype(np.float32))
        return ctx.permute(base, 1, 0, 2, 3)
    pad, row = 3, hs + 5   # offs: 3 elements = 6 bytes, not 4-aligned
    ts = dtypes.type_size(type_)
    n = pad + row * n_kv * n_kvh
    base = ctx.new_tensor_1d(type_, n)
    base.set_data(rng.uniform(-1, 1, n).astype(np.float32))
    return ctx.view_4d(base, hs, n_kv, n_kvh, 1, row * ts, row * n_kv * ts, row * n_kv * n_kvh * ts, pad * ts)


@pytest.mark.parametrize("type_kv", ["f16", "bf16"])
@pytest.mark.parametrize("layout,v_mode,n_q,mask", [
    ("cont", "view", 1, "rand"), ("cont", "view_offs", 3, "causal"), ("cont", "separate", 2, "rand"),
    ("offs", "view", 1, "rand"), ("offs", "separate", 4, "causal"), ("perm", "view", 1, "rand"),
    ("perm", "separate", 3, "rand"), ("trans", "separate", 2, "rand")])
def test_flash_attn_reads_16_bit_kv_in_the_program(type_kv, layout, v_mode, n_q, mask):
    rng = np.random.default_rng(5)
    ctx = mg.Context()
    dk, dv, n_head, n_kvh, n_kv = 48, 32, 8, 2, 150   # n_kv > KV_BLOCK, not a multiple of 4
    t = TYPES[type_kv]
    q = ctx.new_tensor_4d(mg.TYPE_F32, dk, n_q, n_head, 1)
    q.set_data(rng.uniform(-1, 1, (1, n_head, n_q, dk)).astype(np.float32))
    k = _kv(ctx, rng, t, layout, dk, n_kv, n_kvh)
    if v_mode == "separate":
        v = _kv(ctx, rng, t, layout, dv, n_kv, n_kvh)
    else:   # V a view of K, at element offset 0 or 7 inside K's rows
        offs = 7 if v_mode == "view_offs" else 0
        v = ctx.view_4d(k, dv, n_kv, n_kvh, 1, k.nb[1], k.nb[2], k.nb[3], offs * 2)
        assert A.v_offset_in_k(k, v) == offs
    rows = n_q + 2   # more rows (and columns) than needed: the mask is read through its strides
    vals = rng.uniform(-1, 1, (rows, n_kv + 6)).astype(np.float32)
    if mask == "causal":
        vals = np.where(np.arange(n_kv + 6)[None, :] <= n_kv - n_q + np.arange(rows)[:, None], 0.0, -np.inf)
    m = ctx.new_tensor_4d(mg.TYPE_F16, n_kv + 6, rows, 1, 1)   # f16 masks (no mask: the f32 grid)
    m.set_data(vals.astype(np.float32).reshape(1, 1, rows, n_kv + 6))
    _check(ctx, ctx.flash_attn_ext(q, k, v, m, 1.0 / math.sqrt(dk), 0.0, 0.0))


@pytest.mark.parametrize("mask_type", [mg.TYPE_F16, mg.TYPE_F32])
def test_mask_types_and_alibi_in_the_program(mask_type):
    """f16 and f32 masks (with -inf entries and a fully masked row) read as stored, ALiBi on top."""
    rng = np.random.default_rng(7)
    ctx = mg.Context()
    q = ctx.new_tensor_4d(mg.TYPE_F32, 64, 5, 6, 1)
    q.set_data(rng.uniform(-1, 1, (1, 6, 5, 64)).astype(np.float32))
    k = _kv(ctx, rng, mg.TYPE_F16, "cont", 64, 70, 3)
    v = _kv(ctx, rng, mg.TYPE_F16, "cont", 64, 70, 3)
    vals = rng.uniform(-1, 1, (5, 70)).astype(np.float32)
    vals[0] = -np.inf
    vals[2, ::2] = -np.inf
    m = ctx.new_tensor_4d(mask_type, 70, 5, 1, 1)
    m.set_data(vals.reshape(1, 1, 5, 70))
    got = _check(ctx, ctx.flash_attn_ext(q, k, v, m, 0.125, 8.0, 0.0))
    assert np.array_equal(got[0], np.zeros_like(got[0]))   # query row 0 sees nothing: zeros


@pytest.mark.parametrize("type_kv", ["f16", "bf16"])
@pytest.mark.parametrize("n_q,n_kv", [(1, 700), (40, 300)])
def test_mqa_decode_split_and_causal_prefill(type_kv, n_q, n_kv):
    """MLA-like MQA (16 heads, 1 KV head, V a view of K at offset 8): decode splits the kv range
    over the task queue and merges the chunks; causal prefill has uneven tasks and blocks whose
    dead columns are trimmed."""
    rng = np.random.default_rng(1)
    ctx = mg.Context()
    q = ctx.new_tensor_4d(mg.TYPE_F32, 96, n_q, 16, 1)
    q.set_data(rng.uniform(-1, 1, (1, 16, n_q, 96)).astype(np.float32))
    k = _kv(ctx, rng, TYPES[type_kv], "cont", 96, n_kv, 1)
    v = ctx.view_4d(k, 64, n_kv, 1, 1, k.nb[1], k.nb[2], k.nb[3], 8 * 2)
    causal = np.where(np.arange(n_kv)[None, :] <= n_kv - n_q + np.arange(n_q)[:, None], 0.0, -np.inf)
    m = ctx.new_tensor_4d(mg.TYPE_F16, n_kv, n_q, 1, 1)
    m.set_data(causal.astype(np.float32).reshape(1, 1, n_q, n_kv))
    _check(ctx, ctx.flash_attn_ext(q, k, v, m, 0.1, 0.0, 0.0))


def test_storage_conversions_are_exact_and_round_to_nearest_even():
    """to_f32 / from_f32 agree with numpy (f16) and dtypes (bf16) bit for bit, specials included."""
    import numba

    @numba.njit
    def roundtrip(x, type_):
        out_bits = np.empty(x.size, np.uint16)
        back = np.empty(x.size, np.float32)
        for i in range(x.size):
            out_bits[i] = storage.from_f32(x[i], type_, out_bits)
            back[i] = storage.to_f32(out_bits[i], type_)
        return out_bits, back

    x = np.concatenate([np.random.default_rng(0).normal(0, 100, 2000), [0.0, -0.0, 1e-8, -7e-6, 65504.0, 65520.0,
                        1e6, np.inf, -np.inf, np.nan, 1.0009765625, 1.00048828125]]).astype(np.float32)
    bits, back = roundtrip(x, mg.TYPE_F16)
    with np.errstate(over="ignore"):   # 1e6 and 65520 round to inf, as they must
        assert np.array_equal(bits, x.astype(np.float16).view(np.uint16))
    assert np.array_equal(back, bits.view(np.float16).astype(np.float32), equal_nan=True)
    bits, back = roundtrip(x, mg.TYPE_BF16)
    assert np.array_equal(bits, dtypes.f32_to_bf16(x))
    assert np.array_equal(back, dtypes.bf16_to_f32(bits), equal_nan=True)


# -- I64 indices in the compiled executor ----------------------------------------------------

@pytest.mark.parametrize("idx_type", [np.int32, np.int64])
def test_set_rows_with_i32_and_i64_indices_runs_in_the_program(idx_type):
    """SET_ROWS takes I32 or I64 row indices (as ggml); GET_ROWS I32 only (as ggml): both run in
    the compiled executor, with the I64 buffers viewed as such."""
    rng = np.random.default_rng(3)
    ctx = mg.Context()
    cache = ctx.from_numpy(np.zeros((2, 9, 16), np.float32))                     # ne [16, 9, 2]
    src = ctx.from_numpy(rng.uniform(-1, 1, (2, 3, 16)).astype(np.float32))
    written = ctx.set_rows(cache, src, ctx.from_numpy(np.array([[2, 5, 6], [0, 3, 8]], idx_type)))
    back = ctx.get_rows(written, ctx.from_numpy(np.array([[5, 0, 8], [3, 3, 7]], np.int32)))
    gf = ctx.new_graph()
    gf.build_forward_expand(back)
    ref = mg.reference_compute(gf)[back]
    CPU.graph_compute(gf)
    assert _in_program(gf), CPU.plan(gf).steps
    np.testing.assert_array_equal(back.numpy(), ref.astype(np.float32))
    assert np.abs(back.numpy()).sum() > 0   # rows written by set_rows were read back


def test_i64_index_out_of_range_is_refused_from_the_program():
    ctx = mg.Context()
    cache = ctx.from_numpy(np.zeros((4, 8), np.float32))
    out = ctx.set_rows(cache, ctx.from_numpy(np.ones((2, 8), np.float32)), ctx.from_numpy(np.array([1, 4], np.int64)))
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    with pytest.raises(MinigraphError, match="SET_ROWS"):
        CPU.graph_compute(gf)
    assert _in_program(gf)


@pytest.mark.parametrize("cache_type,rows_type", [(mg.TYPE_F16, np.float32), (mg.TYPE_BF16, np.float32),
                                                  (mg.TYPE_F16, np.float16)])
def test_set_rows_writes_a_16_bit_cache_in_place_in_the_program(cache_type, rows_type):
    """The KV-cache write: b's rows rounded (to nearest even) straight into the f16/bf16 cache,
    the other rows untouched, no f32 copy of the cache."""
    rng = np.random.default_rng(4)
    ctx = mg.Context()
    old = rng.uniform(-1, 1, (1, 12, 40)).astype(np.float32)
    cache = ctx.new_tensor_4d(cache_type, 40, 12, 1, 1)
    cache.set_data(old)
    rows = rng.uniform(-3, 3, (1, 3, 40)).astype(rows_type)
    out = ctx.set_rows(cache, ctx.from_numpy(rows), ctx.from_numpy(np.array([7, 0, 11], np.int64)))
    before = cache.numpy().copy()
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    CPU.graph_compute(gf)
    assert _in_program(gf), CPU.plan(gf).steps
    want = before.reshape(12, 40).copy()
    r32 = rows.astype(np.float32).reshape(3, 40)
    stored = r32.astype(np.float16).astype(np.float32) if cache_type == mg.TYPE_F16 else dtypes.bf16_to_f32(dtypes.f32_to_bf16(r32))
    want[[7, 0, 11]] = stored
    np.testing.assert_array_equal(cache.numpy().reshape(12, 40), want)


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("layout", ["cont", "perm", "offs", "apart"])
@pytest.mark.parametrize("kind", TYPES)
def test_mul_mat_reads_f16_bf16_weights_as_stored(kind, layout, n):
    """MUL_MAT takes src0 as a storage slot: F16 / BF16 weights go to the register tiles as their
    bits (rows of adjacent values), or through one f32 conversion to the row dots (N <= 3) and
    the copying tiles (values 3 elements apart: permuted, nb0 < nb1); broadcast over dim 2."""
    rng = np.random.default_rng(20)
    ctx = mg.Context()
    t = TYPES[kind]
    if layout == "apart":
        base = ctx.new_tensor_3d(t, 3, 40, 70)                       # ne [3, 40, 70] -> [40, 70, 3]
        base.set_data(rng.uniform(-1, 1, (70, 40, 3)).astype(np.float32))
        a = ctx.permute(base, 2, 0, 1, 3)
        assert a.nb[0] == 3 * dtypes.type_size(t) < a.nb[1]
    else:
        a = _kv(ctx, rng, t, layout, 40, 70, 3)
    b = ctx.from_numpy(rng.uniform(-1, 1, (1, 6, n, 40)).astype(np.float32))   # ne [40, n, 6]: r2 = 2
    if layout == "apart":
        b = ctx.from_numpy(rng.uniform(-1, 1, (1, 3, n, 40)).astype(np.float32))
    _check(ctx, ctx.mul_mat(a, b))


@pytest.mark.parametrize("layout", ["cont", "perm", "offs"])
@pytest.mark.parametrize("kind", TYPES)
def test_get_rows_reads_f16_bf16_tables_as_stored(kind, layout):
    """GET_ROWS takes its table as a storage slot: an F16 / BF16 table (a token embedding) is read
    row by row as its bits inside the compiled program, never converted whole; the rows come out
    as f32, exactly the stored values; ne2 broadcast over the table's heads."""
    rng = np.random.default_rng(21)
    ctx = mg.Context()
    table = _kv(ctx, rng, TYPES[kind], layout, 24, 30, 2)              # ne [24, 30, 2]
    idx = ctx.from_numpy(np.array([[29, 0, 7], [3, 3, 11]], np.int32))  # ne [3, 2]
    out = ctx.get_rows(table, idx)
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    ref = mg.reference_compute(gf)[out]
    CPU.graph_compute(gf)
    assert _in_program(gf), CPU.plan(gf).steps
    assert out.type == mg.TYPE_F32
    np.testing.assert_array_equal(out.numpy(), ref.astype(np.float32))


def test_get_rows_from_an_i32_table_stays_in_the_program():
    ctx = mg.Context()
    table = ctx.from_numpy(np.arange(40, dtype=np.int32).reshape(8, 5) * 1000003)   # odd, past 2**24: no float round trip
    out = ctx.get_rows(table, ctx.from_numpy(np.array([7, 2], np.int32)))
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    CPU.graph_compute(gf)
    assert _in_program(gf), CPU.plan(gf).steps
    np.testing.assert_array_equal(out.numpy(), (np.arange(40).reshape(8, 5) * 1000003)[[7, 2]])


COPY_TYPES = {"f32": mg.TYPE_F32, **TYPES}


@pytest.mark.parametrize("layout", ["cont", "perm", "offs"])
@pytest.mark.parametrize("dst_kind", COPY_TYPES)
@pytest.mark.parametrize("src_kind", COPY_TYPES)
def test_cpy_and_cont_convert_f16_bf16_in_the_program(src_kind, dst_kind, layout):
    """CPY and CONT take dst and src in their storage types: F16 / BF16 copied as bits, f32 <->
    F16 / BF16 rounded to nearest even (ggml's rule), from any layout, in the compiled program,
    exactly the reference's values; a contiguous pair takes the flat copy or conversion."""
    rng = np.random.default_rng(22)
    ctx = mg.Context()
    src = _kv(ctx, rng, COPY_TYPES[src_kind], layout, 24, 30, 2)      # ne [24, 30, 2]
    dst = ctx.new_tensor_3d(COPY_TYPES[dst_kind], 24, 30, 2)
    outs = [ctx.cpy(src, dst)]
    if src_kind == dst_kind:
        outs.append(ctx.cont(ctx.permute(src, 1, 0, 2, 3)))
    gf = ctx.new_graph()
    for o in outs:
        gf.build_forward_expand(o)
    ref = mg.reference_compute(gf)
    CPU.graph_compute(gf)
    assert _in_program(gf), CPU.plan(gf).steps
    for o in outs:   # the reference's values rounded to dst's type, as they must be stored
        want = dtypes.to_float(dtypes.from_float(np.asarray(ref[o], np.float32), o.type), o.type)
        np.testing.assert_array_equal(np.asarray(o.numpy(), np.float64), np.asarray(want, np.float64))
