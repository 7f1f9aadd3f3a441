"""The MLA layer (minigraph.models.mla, llama.cpp's absorbed deepseek2 attention) against the
float64 non-absorbed reference (minigraph.models.mla_reference) on the CPU backend and on the
CUDA backend (simulator without a GPU), decode and prefill, flash attention on and off; the
K-cache rope shift; the V-is-a-view-of-K signal; refusals.

Tolerances (NMSE of the layer output): 1e-9 where every tensor is f32 (f32 rounding only);
5e-6 with flash attention on an f32 cache, because llama.cpp casts K and V to f16 for it
(rounding each cache value by up to 2^-11, ~1e-7 NMSE measured). An f16 cache is rounded the
same way in the reference, so it keeps 1e-9."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.models import mla
from minigraph.models.mla_reference import layer_reference, rope_shift_reference, rope_yarn
from minigraph.testing.restricted import restricted_cuda

CPU = mg.backend_cpu_init(2)
I32, I64, F16, F32 = mg.TYPE_I32, mg.TYPE_I64, mg.TYPE_F16, mg.TYPE_F32


def nmse(got, want):
    return float(((np.asarray(got, np.float64) - want) ** 2).sum() / (want ** 2).sum())


def build(cfg, n_tokens, n_past, *, seed=0, flash=True, cast=True, **kw):
    ctx = mg.Context()
    rng = np.random.default_rng(seed)
    w = mla.random_weights(ctx, cfg, rng)
    inp = mla.make_inputs(ctx, cfg, rng, n_tokens, n_past, **kw)
    gf = ctx.new_graph()
    out = mla.build_mla_attn(ctx, gf, cfg, w, inp.cur, inp.inp_pos, inp.k_cache, inp.k_idxs, inp.kq_mask,
                             flash_attn=flash, cast_f16=cast)
    return gf, out, w, inp


def check(cfg, gf, out, w, inp, backend, tol, fuse=False):
    want, want_cache = layer_reference(cfg, w, inp)
    mg.compute(gf, backend, fuse=fuse)
    assert out.ne == (cfg.n_embd, inp.x.shape[0], 1, 1)
    err = nmse(out.numpy(), want)
    assert err < tol, err
    cache = inp.k_cache.numpy().astype(np.float64)
    np.testing.assert_allclose(cache, want_cache, rtol=2e-3 if inp.cache0.dtype == np.float16 else 1e-5, atol=1e-6)
    written = inp.idxs.astype(np.int64)
    assert not np.allclose(cache[written], inp.cache0[written])   # the new rows landed


# -- CPU ---------------------------------------------------------------------------------------

CPU_CASES = [  # (config, n_tokens, n_past, flash, cache type, index type, scatter, kv_size, tolerance)
    ("small", 1, 6, True, F16, I64, False, 10, 1e-9),      # decode: an existing cache, empty cells masked
    ("small", 5, 0, True, F16, I64, True, 8, 1e-9),        # prefill into scattered cells, causal
    ("small", 1, 6, False, F16, I32, True, 9, 1e-9),       # decode without flash attention
    ("q_lora", 4, 3, False, F32, I32, False, 9, 1e-9),     # wq_a / q_a_norm / wq_b, prefill after a prefix
    ("q_lora", 3, 2, True, F32, I64, False, 0, 5e-6),      # f32 cache: llama.cpp casts K/V to f16 for FA
]
CONFIGS = {"small": mla.SMALL, "q_lora": mla.SMALL_Q_LORA}


@pytest.mark.parametrize("name, n_tokens, n_past, flash, cache, idx, scatter, kv_size, tol", CPU_CASES)
def test_layer_matches_reference_on_cpu(name, n_tokens, n_past, flash, cache, idx, scatter, kv_size, tol):
    cfg = CONFIGS[name]
    gf, out, w, inp = build(cfg, n_tokens, n_past, flash=flash, cache_type=cache, idx_type=idx, scatter=scatter,
                            kv_size=kv_size)
    check(cfg, gf, out, w, inp, CPU, tol)


def test_flash_and_plain_paths_agree_and_v_is_a_view_of_k():
    cfg = mla.SMALL
    outs = []
    for flash in (True, False):
        gf, out, _, inp = build(cfg, 3, 4, flash=flash, seed=3)
        mg.compute(gf, CPU, fuse=False)
        outs.append(out.numpy().copy())
    assert nmse(outs[0], outs[1].astype(np.float64)) < 1e-9
    gf, *_ = build(cfg, 1, 4)
    fa = next(n for n in gf.nodes if n.op == "FLASH_ATTN_EXT")
    q, k, v, mask = fa.src[:4]
    assert fa.op_params["v_in_k"] == 0 and v.root is k.root and k.type == F16 and mask.type == F16
    assert v.ne[0] == cfg.n_lora_kv and k.ne[0] == cfg.n_embd_k_cache and v.nb[1:] == k.nb[1:]
    assert q.ne == (cfg.n_embd_k_cache, 1, cfg.n_head, 1) and k.ne[2] == 1   # MQA: one latent head
    assert mg.flash_attn_ext_get_prec(fa) == mg.PREC_F32
    order = [n.op for n in gf.nodes]
    assert order.index("SET_ROWS") < order.index("FLASH_ATTN_EXT")   # the write runs first


def test_deepseek_v2_lite_shapes():
    """The benchmark config builds with DeepSeek-V2-Lite's dimensions (not computed here)."""
    cfg = mla.DEEPSEEK_V2_LITE
    ctx = mg.Context()
    w = mla.random_weights(ctx, cfg, np.random.default_rng(0))
    k_cache = ctx.new_tensor_2d(F16, cfg.n_embd_k_cache, 64)
    gf = ctx.new_graph()
    out = mla.build_mla_attn(ctx, gf, cfg, w, ctx.new_tensor_2d(F32, 2048, 2), ctx.new_tensor_1d(I32, 2), k_cache,
                             ctx.new_tensor_1d(I64, 2), ctx.new_tensor_4d(F32, 64, 2, 1, 1))
    fa = next(n for n in gf.nodes if n.op == "FLASH_ATTN_EXT")
    assert (cfg.n_embd_k_cache, fa.src[2].ne[0], fa.ne[0], fa.ne[1]) == (576, 512, 512, 16)
    assert out.ne == (2048, 2, 1, 1) and abs(cfg.kq_scale - 0.11472) < 1e-4   # (1 + 0.1 * 0.707 ln 40)^2 / sqrt(192)


def test_refusals():
    cfg = mla.SMALL
    ctx = mg.Context()
    w = mla.random_weights(ctx, cfg, np.random.default_rng(0))
    good = dict(cur=ctx.new_tensor_2d(F32, cfg.n_embd, 2), inp_pos=ctx.new_tensor_1d(I32, 2),
                k_cache=ctx.new_tensor_2d(F16, cfg.n_embd_k_cache, 8), k_idxs=ctx.new_tensor_1d(I64, 2),
                kq_mask=ctx.new_tensor_4d(F32, 8, 2, 1, 1))
    for key, bad in (("k_cache", ctx.new_tensor_2d(F16, cfg.n_embd_k_cache + 1, 8)),
                     ("cur", ctx.new_tensor_2d(F32, cfg.n_embd + 2, 2)), ("kq_mask", ctx.new_tensor_4d(F32, 8, 1, 1, 1))):
        with pytest.raises(mg.MinigraphError, match="build_mla_attn"):
            mla.build_mla_attn(ctx, ctx.new_graph(), cfg, w, **{**good, key: bad})
    with pytest.raises(mg.MinigraphError, match="make_inputs"):
        mla.make_inputs(ctx, cfg, np.random.default_rng(0), 4, 3, kv_size=5)
    q = ctx.new_tensor_3d(F32, 8, 2, 1)
    k = ctx.new_tensor_4d(F32, 8, 1, 4, 1)
    with pytest.raises(mg.MinigraphError, match="soft_max_add_sinks"):   # one sink a head: 2 heads, not 3
        mla.build_attn_mha(ctx, q, k, k, None, None, ctx.new_tensor_1d(F32, 3), None, 1.0, flash_attn=False)


# -- the rope shift ----------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [F16, F32])
def test_rope_shift_moves_positions(cache):
    """Shift a prefilled cache by +d: its pe parts equal a prefill at positions p + d (YaRN's
    magnitude is 1 with deepseek's adjusted attn_factor, so two rotations compose), and the latent
    kv parts are untouched."""
    cfg, d, n = mla.SMALL, 5, 6
    gf, _, w, inp = build(cfg, n, 0, cache_type=cache, kv_size=8)
    mg.compute(gf, CPU)
    before = inp.k_cache.numpy().astype(np.float64)
    ctx = inp.k_cache.ctx
    shift = np.zeros(8, np.int32)
    shift[inp.idxs] = d
    k_pe = mla.build_rope_shift(ctx, cfg, inp.k_cache, ctx.from_numpy(shift))
    assert k_pe.view_src is inp.k_cache and k_pe.view_offs == cfg.n_lora_kv * mg.type_size(cache)
    assert k_pe.ne[:3] == (cfg.n_rot, 1, 8) and k_pe.nb[1] == k_pe.nb[2] == cfg.n_embd_k_cache * mg.type_size(cache)
    mg.compute(k_pe, CPU)
    after = inp.k_cache.numpy().astype(np.float64)
    np.testing.assert_array_equal(after[:, :cfg.n_lora_kv], before[:, :cfg.n_lora_kv])
    tol = 2e-3 if cache == F16 else 1e-5
    np.testing.assert_allclose(after, rope_shift_reference(cfg, before, shift), rtol=tol, atol=tol)
    kv = inp.x.astype(np.float64) @ w.names["attn_kv_a_mqa"].numpy().astype(np.float64).T
    fresh = rope_yarn(kv[:, cfg.n_lora_kv:], inp.pos + d, cfg)
    np.testing.assert_allclose(after[inp.idxs, cfg.n_lora_kv:], fresh, rtol=10 * tol, atol=10 * tol)


# -- CUDA (simulator without a GPU): mul_mat goes to the CPU to keep the simulator's time short --

@pytest.fixture(scope="module")
def cuda():
    return restricted_cuda(["MUL_MAT"], name="CUDA0")


@pytest.fixture(scope="module")
def sched(cuda):
    return mg.backend_sched_new([cuda, CPU])


@pytest.mark.filterwarnings("ignore:Grid size:Warning")
@pytest.mark.parametrize("n_tokens, n_past, flash, idx, on_device", [(1, 4, True, I32, True), (3, 1, False, I64, False)])
def test_layer_matches_reference_on_cuda(cuda, sched, n_tokens, n_past, flash, idx, on_device):
    """f32 cache and mask uncast (cast_f16=False): the CUDA kernels are f32. A cache in device
    memory is written there (i32 indices); i64 indices (CPU only) with a host cache: the CPU
    writes it and the attention on CUDA reads what it wrote."""
    cfg = mla.MlaConfig(n_head=2)
    gf, out, w, inp = build(cfg, n_tokens, n_past, flash=flash, cast=False, cache_type=F32, idx_type=idx,
                            kv_size=n_tokens + n_past + 1)
    if on_device:
        mg.backend_tensor_alloc(cuda, inp.k_cache)
    check(cfg, gf, out, w, inp, sched, 1e-9)
    on = {n.op: sched.get_tensor_backend(n).name for n in gf.nodes if n.op in ("ROPE", "CONCAT", "SET_ROWS",
                                                                                "FLASH_ATTN_EXT", "SOFT_MAX")}
    assert on["ROPE"] == on["CONCAT"] == "CUDA0" and on.get("FLASH_ATTN_EXT", on.get("SOFT_MAX")) == "CUDA0"
    assert on["SET_ROWS"] == ("CUDA0" if on_device else "CPU")   # the write runs where the cache lives


@pytest.mark.filterwarnings("ignore:Grid size:Warning")
def test_rope_shift_on_cuda(cuda, sched):
    cfg = mla.MlaConfig(n_head=2)
    ctx = mg.Context()
    rng = np.random.default_rng(7)
    cache = rng.standard_normal((6, cfg.n_embd_k_cache)).astype(np.float32)
    shift = rng.integers(-20, 20, size=6).astype(np.int32)
    k_cache = mg.backend_tensor_alloc(cuda, ctx.from_numpy(cache))
    k_pe = mla.build_rope_shift(ctx, cfg, k_cache, ctx.from_numpy(shift))
    mg.compute(k_pe, sched)
    assert sched.get_tensor_backend(k_pe).name == "CUDA0"
    np.testing.assert_allclose(k_cache.numpy(), rope_shift_reference(cfg, cache, shift), rtol=1e-5, atol=1e-5)


# -- a Q8_0 cache (llama.cpp's -ctk q8_0) --------------------------------------------------------
# set_rows quantizes the new rows; the reference writes the same rows quantized and dequantized
# again (quants.roundtrip) and attends over the dequantized cache (the graph's float64 reference
# matches it to 1e-30), so what is left is FLASH_ATTN_EXT's rounding of q to Q8_0 values for the K
# dots (ggml's CPU semantics, ~1/254 of a block's max each): measured 5e-6 .. 4e-5 NMSE over seeds
# 0-2 on these N(0, 1) caches, whose logits span several units (the conformance cases' uniform
# data: ~1e-6); 1e-4 leaves room, a wrong row or block scale gives > 1e-2.
QUANT_LAYER_NMSE = 1e-4

@pytest.mark.parametrize("n_tokens, n_past", [(1, 6), (3, 2)])
def test_layer_over_a_q8_0_cache_on_cpu(n_tokens, n_past):
    cfg = mla.SMALL_Q8
    gf, out, w, inp = build(cfg, n_tokens, n_past, cache_type=mg.TYPE_Q8_0, kv_size=10)
    fa = next(n for n in gf.nodes if n.op == "FLASH_ATTN_EXT")
    assert fa.src[1].type == fa.src[2].type == mg.TYPE_Q8_0 and fa.op_params["v_in_k"] == 0
    want, want_cache = layer_reference(cfg, w, inp)
    mg.compute(gf, CPU)
    err = nmse(out.numpy(), want)
    assert 0 < err < QUANT_LAYER_NMSE, err
    written = inp.idxs.astype(np.int64)
    cache = inp.k_cache.numpy().astype(np.float64)
    np.testing.assert_allclose(cache, want_cache, rtol=0, atol=1e-6)   # the same quantizer on both sides
    assert not np.allclose(cache[written], inp.cache0[written])


def test_q8_0_cache_refusals():
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError, match="whole 32-value blocks"):
        mla.make_inputs(ctx, mla.SMALL, np.random.default_rng(0), 1, 2, cache_type=mg.TYPE_Q8_0)
    with pytest.raises(mg.MinigraphError, match="is not one of"):
        mla.make_inputs(ctx, mla.SMALL, np.random.default_rng(0), 1, 2, cache_type=mg.TYPE_Q4_K)
    with pytest.raises(mg.MinigraphError, match="needs flash attention"):
        build(mla.SMALL_Q8, 1, 2, flash=False, cache_type=mg.TYPE_Q8_0)
