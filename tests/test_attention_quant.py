"""FLASH_ATTN_EXT over a quantized KV cache (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) on the CPU.

The conformance cases (ops/attention_cases.py, run by tests/test_attention.py) hold the kernel
to 2e-5 NMSE against the float64 reference of the dequantized K/V, since ggml (and minigraph, as
ggml) rounds q to Q8_0 values for the K dots. Here the checks are tight: against a float64 model
that rounds q the same way (1e-10: only f32 summation order differs), and against ggml-python's
CPU backend on the same bytes (1e-9; Q4_1/Q5_1 measured ~5e-11, ggml keeps Q8_1's block sum in
f16). Plus the row dequantizer bit for bit, V-view-of-K offsets in blocks, and refusals.
"""
import math

import numpy as np
import pytest
from numba import njit

import minigraph as mg
from minigraph.backends.cpu.storage import KV_QUANT_TYPES, load_row
from minigraph.core import dtypes as D
from minigraph.core import quants
from minigraph.core.cases import nmse
from minigraph.ops import attention as A

CPU = mg.backend_cpu_init(2)
NAMES = [D.type_name(t) for t in KV_QUANT_TYPES]


@njit(cache=True)
def _load_rows(raw, out, type_):
    for r in range(raw.shape[0]):
        load_row(raw[r], out[r], type_)


@pytest.mark.parametrize("type_", KV_QUANT_TYPES, ids=NAMES)
def test_row_dequantizer_is_ggmls_bit_for_bit(type_):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((6, 96)) * 3).astype(np.float32)
    x[0] = 0.0        # an all-zero row: d = 0
    x[1, :32] = 0.25  # a flat block
    raw = quants.quantize(x, type_)
    out = np.full_like(x, np.nan)
    _load_rows(raw, out, type_)
    np.testing.assert_array_equal(out, quants.dequantize(raw, type_))


def _q8_values(q):
    """q rows as ggml's CPU dots them with a quantized K: Q8_0 (Q8_1: the same quants) values."""
    return quants.dequantize(quants.quantize(q, D.TYPE_Q8_0), D.TYPE_Q8_0).astype(np.float64)


def _model(q, kd, vd, mask, scale):
    """Float64 attention of the Q8_0-rounded q over dequantized K/V (GQA by head blocks)."""
    n_head, n_kvh = q.shape[1], kd.shape[1]
    kd = np.repeat(kd, n_head // n_kvh, axis=1)
    vd = np.repeat(vd, n_head // n_kvh, axis=1)
    s = _q8_values(q) @ np.swapaxes(kd, -1, -2) * scale + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.swapaxes((p @ vd) / p.sum(-1, keepdims=True), 1, 2)


def _build(ctx, q, k, v, mask, type_, v_view):
    ck = ctx.from_numpy(k, type_)
    if v_view:   # MLA: V = the first DV values of each K row (whole blocks)
        cv = ctx.view_4d(ck, v.shape[-1], ck.ne[1], ck.ne[2], ck.ne[3], ck.nb[1], ck.nb[2], ck.nb[3], 0)
    else:
        cv = ctx.from_numpy(v, type_)
    return ctx.flash_attn_ext(ctx.from_numpy(q), ck, cv, ctx.from_numpy(mask.astype(np.float16)),
                              1.0 / math.sqrt(q.shape[-1]), 0.0, 0.0)


@pytest.mark.parametrize("type_,dk,dv,n_head,n_kvh,n_kv,n_q,v_view", [
    (D.TYPE_Q8_0, 576, 512, 16, 1, 45, 2, True),     # MLA: 18 / 16 blocks, V a view of K
    (D.TYPE_Q4_0, 64, 64, 4, 2, 33, 3, False),
    (D.TYPE_Q4_1, 64, 32, 4, 4, 20, 1, False),
    (D.TYPE_Q5_0, 96, 64, 2, 1, 17, 2, False),
    (D.TYPE_Q5_1, 64, 64, 4, 1, 40, 2, False),
], ids=["q8_0-mla", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_cpu_is_ggmls_semantics(type_, dk, dv, n_head, n_kvh, n_kv, n_q, v_view):
    rng = np.random.default_rng(7)
    q = rng.uniform(-1, 1, (1, n_head, n_q, dk)).astype(np.float32)
    k = rng.uniform(-1, 1, (1, n_kvh, n_kv, dk)).astype(np.float32)
    v = k[..., :dv] if v_view else rng.uniform(-1, 1, (1, n_kvh, n_kv, dv)).astype(np.float32)
    mask = rng.uniform(-1, 1, (1, 1, n_q, n_kv)).astype(np.float32)
    mask[0, 0, :, 3] = -np.inf
    ctx = mg.Context()
    out = _build(ctx, q, k, v, mask, type_, v_view)
    assert out.op_params["v_in_k"] == (0 if v_view else -1)
    mg.compute(out, CPU)
    got = out.numpy()
    kd = quants.dequantize(quants.quantize(k, type_), type_).astype(np.float64)
    vd = kd[..., :dv] if v_view else quants.dequantize(quants.quantize(v, type_), type_).astype(np.float64)
    want = _model(q, kd, vd, mask.astype(np.float16).astype(np.float64), 1.0 / math.sqrt(dk))
    assert nmse(got, want) < 1e-10
    gb = pytest.importorskip("minigraph.testing.ggml_bridge")
    if not gb.available():
        pytest.skip("ggml-python is not installed")
    g = gb.GgmlContext(1 << 26)
    ref = gb.compute(_build(g, q, k, v, mask, type_, v_view))[0]
    assert nmse(got, ref.reshape(got.shape)) < 1e-9


def test_v_view_offsets_count_blocks_and_split_blocks_are_refused():
    ctx = mg.Context()
    k = ctx.new_tensor_4d(mg.TYPE_Q8_0, 576, 10, 1, 1)
    q = ctx.new_tensor_4d(mg.TYPE_F32, 576, 1, 16, 1)
    v = ctx.view_4d(k, 512, 10, 1, 1, k.nb[1], k.nb[2], k.nb[3], 0)
    assert ctx.flash_attn_ext(q, k, v, None, 1.0).op_params["v_in_k"] == 0
    v2 = ctx.view_4d(k, 512, 10, 1, 1, k.nb[1], k.nb[2], k.nb[3], 2 * 34)   # llama.cpp's old [pe | kv] layout
    assert ctx.flash_attn_ext(q, k, v2, None, 1.0).op_params["v_in_k"] == 64
    with pytest.raises(mg.MinigraphError, match="must not split its blocks"):
        ctx.view_4d(k, 500, 10, 1, 1, k.nb[1], k.nb[2], k.nb[3], 0)        # ne0 not whole blocks
    with pytest.raises(mg.MinigraphError, match="must not split its blocks"):
        ctx.view_4d(k, 512, 10, 1, 1, k.nb[1], k.nb[2], k.nb[3], 17)       # starts inside a block


@pytest.mark.parametrize("type_", [mg.TYPE_Q4_K, mg.TYPE_Q6_K, mg.TYPE_Q8_1, mg.TYPE_Q8_K],
                         ids=["q4_K", "q6_K", "q8_1", "q8_K"])
def test_other_quantized_types_are_refused(type_):
    ctx = mg.Context()
    q = ctx.new_tensor_4d(mg.TYPE_F32, 256, 1, 2, 1)
    k = ctx.new_tensor_4d(type_, 256, 8, 1, 1)
    v = ctx.new_tensor_4d(mg.TYPE_F16, 256, 8, 1, 1)
    with pytest.raises(mg.MinigraphError, match="quantized KV cache type") as e:
        ctx.flash_attn_ext(q, k, v, None, 1.0)
    assert "flash_attn_ext" in str(e.value) and D.type_name(type_) in str(e.value)
    with pytest.raises(mg.MinigraphError, match="quantized KV cache type"):
        ctx.flash_attn_ext(q, v, k, None, 1.0)


def test_cpu_claims_quantized_caches_with_a_reason():
    ctx = mg.Context()
    q = ctx.new_tensor_4d(mg.TYPE_F32, 64, 1, 2, 1)
    k = ctx.new_tensor_4d(mg.TYPE_Q4_0, 64, 8, 1, 1)
    ok, reason = CPU.supports_op(ctx.flash_attn_ext(q, k, k, None, 1.0))
    assert ok and reason == "quantized kernel"
    assert A.KV_QUANT_TYPES == KV_QUANT_TYPES


@pytest.mark.slow
def test_mixed_cache_types():
    """K q8_0 with V f16 and the reverse (each pair compiles its own kernel form, ~20 s)."""
    rng = np.random.default_rng(9)
    q = rng.uniform(-1, 1, (1, 4, 2, 64)).astype(np.float32)
    k = rng.uniform(-1, 1, (1, 2, 33, 64)).astype(np.float32)
    v = rng.uniform(-1, 1, (1, 2, 33, 64)).astype(np.float32)
    mask = np.zeros((1, 1, 2, 33), np.float32)
    for kt, vt in ((D.TYPE_Q8_0, D.TYPE_F16), (D.TYPE_F16, D.TYPE_Q4_0)):
        ctx = mg.Context()
        ck = ctx.from_numpy(k, kt) if D.is_quantized(kt) else ctx.from_numpy(k.astype(np.float16))
        cv = ctx.from_numpy(v, vt) if D.is_quantized(vt) else ctx.from_numpy(v.astype(np.float16))
        out = ctx.flash_attn_ext(ctx.from_numpy(q), ck, cv, ctx.from_numpy(mask.astype(np.float16)), 0.125)
        mg.compute(out, CPU)
        kd = ck.numpy().astype(np.float64).reshape(k.shape)
        vd = cv.numpy().astype(np.float64).reshape(v.shape)
        qq = _q8_values(q) if D.is_quantized(kt) else q.astype(np.float64)
        s = qq @ np.swapaxes(np.repeat(kd, 2, axis=1), -1, -2) * 0.125
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.swapaxes((p @ np.repeat(vd, 2, axis=1)) / p.sum(-1, keepdims=True), 1, 2)
        assert nmse(out.numpy(), want) < 1e-10
