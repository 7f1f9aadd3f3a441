"""FLASH_ATTN_EXT on the CUDA backend (numba-cuda's simulator without a GPU): the split-KV kernels
against the float64 reference on every KV type (f32, f16, bf16 read in place), f16/f32 masks,
GQA/MQA, DK != DV, softcap, ALiBi, sinks, dead rows, permuted / offset / V-in-K layouts, ne3
broadcast, several kv chunks; what it refuses goes to the CPU through the scheduler.

Tolerance: the kernels read the exact f16/bf16 values and accumulate in f32, so NMSE against
float64 stays near f32 rounding (measured < 1e-12 here); 1e-9 leaves room without hiding a bug
(a wrong row or a lost chunk gives > 1e-3).
"""
import os

import numpy as np
import pytest

import minigraph as mg
from minigraph.ops.attention import flash_attn_ext_add_sinks
from minigraph.ops.attention_cases import FaCase, build_case

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
CPU = mg.backend_cpu_init(2)
MAX_NMSE = 1e-9


def _cuda():
    try:
        from numba import cuda
    except ImportError:
        return None
    if not SIM and not cuda.is_available():
        return None
    return mg.backend_cuda_init(0)


BE = _cuda()
pytestmark = [pytest.mark.skipif(BE is None, reason="numba-cuda is not installed or there is no GPU / simulator"),
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]
gpu = pytest.mark.skipif(SIM, reason="bigger case: real GPU only (the simulator is slow)")

CASES = [
    FaCase(8, 8, 2, 2, 5, 2),                                              # f16 mask (ggml's)
    FaCase(8, 8, 2, 2, 5, 2, type_kv="f16", mask="none"),
    FaCase(8, 8, 4, 1, 7, 1, sinks=True, type_kv="bf16", mask_f32=True),    # MQA
    FaCase(8, 8, 6, 2, 5, 3, mask="dead_row", max_bias=8.0, softcap=5.0, sinks=True, type_kv="f16"),
    FaCase(8, 8, 6, 3, 9, 2, mask="dead_row"),                             # a row that sees nothing, no sink
    FaCase(16, 8, 2, 1, 6, 2, mask="causal", layout="vk", v_offs=4, type_kv="f16"),
    FaCase(40, 32, 4, 1, 6, 1, layout="vk", type_kv="f16"),                 # MLA-like: V = K[:32], offset 0
    FaCase(40, 32, 4, 1, 6, 1, layout="vk", type_kv="bf16", mask="causal"),
    FaCase(8, 8, 2, 2, 6, 2, layout="perm", type_kv="bf16"),
    FaCase(8, 8, 2, 2, 6, 2, layout="offs", mask="none", type_kv="f16"),    # odd element offset, padded rows
    FaCase(8, 8, 2, 2, 6, 2, layout="offs", type_kv="bf16", mask_f32=True),
    FaCase(8, 8, 2, 1, 5, 2, ne3=2, nk3=1, mask_f32=True),                 # K/V broadcast over ne3
    FaCase(8, 8, 2, 2, 5, 1, ne3=2, nk3=2, type_kv="f16"),
    FaCase(40, 8, 2, 2, 5, 2, type_kv="f16"),                              # DK 40: lanes past DK idle
    FaCase(8, 8, 2, 1, 23, 1, sinks=True, type_kv="f16"),                  # 23 kv rows: several chunks
]


def _check(out, be=BE):
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    be.graph_compute(gf)
    got = np.asarray(out.numpy(), np.float64)
    assert got.shape == ref.shape and np.isfinite(got).all()
    err = float(((got - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))
    assert err < MAX_NMSE, err
    return got, ref


@pytest.mark.parametrize("c", CASES, ids=[c.vars() for c in CASES])
def test_cuda_matches_reference(c):
    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(1), c)
    s = BE.supports_op(out)
    assert s, s.reason
    _check(out)


def test_several_chunks_are_planned_for_decode():
    """Few queries over many kv rows: the plan splits the kv range (flash decoding), and the
    combine of the chunks' partials gives the same result as one pass."""
    from minigraph.backends.cuda.attention import MIN_CHUNK, plan_split

    n_kv = 5 * MIN_CHUNK + 3
    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(2), FaCase(8, 8, 2, 1, n_kv, 1, sinks=True, type_kv="f16"))
    rw, chunk, n_chunks = plan_split(out)
    assert n_chunks > 1 and chunk * n_chunks >= n_kv > chunk * (n_chunks - 1)
    assert rw == 2                          # both heads of the MQA group share each K row read
    _check(out)


def test_mixed_kv_types_and_per_head_v():
    """K f16 with V f32; V with fewer heads than K (each warp then carries one row)."""
    rng = np.random.default_rng(3)
    ctx = mg.Context()

    def leaf(type_, *ne):
        t = ctx.new_tensor_4d(type_, *ne)
        t.set_data(rng.uniform(-1, 1, tuple(reversed(ne))).astype(np.float32)
                   if type_ == mg.TYPE_F32 else rng.uniform(-1, 1, tuple(reversed(ne))).astype(np.float16))
        return t

    q = leaf(mg.TYPE_F32, 8, 2, 4, 1)
    out = ctx.flash_attn_ext(q, leaf(mg.TYPE_F16, 8, 6, 2, 1), leaf(mg.TYPE_F32, 16, 6, 2, 1), None, 0.3)
    _check(out)
    out = ctx.flash_attn_ext(q, leaf(mg.TYPE_F16, 8, 6, 4, 1), leaf(mg.TYPE_F16, 8, 6, 2, 1), None, 0.3)
    _check(out)


def test_sinks_only_row_and_all_masked():
    """Every score -inf: 0 without sinks, 0 with sinks (the sink takes all the weight)."""
    ctx = mg.Context()
    q = ctx.from_numpy(np.ones((1, 2, 2, 8), np.float32))
    k = ctx.from_numpy(np.ones((1, 1, 5, 8), np.float16))
    mask = ctx.new_tensor_4d(mg.TYPE_F16, 5, 2, 1, 1)
    mask.set_data(np.full((1, 1, 2, 5), -np.inf, np.float16))
    for sinks in (False, True):
        out = ctx.flash_attn_ext(q, k, k, mask, 0.5)
        if sinks:
            flash_attn_ext_add_sinks(out, ctx.from_numpy(np.array([0.5, -1.0], np.float32)))
        gf = mg.Graph()
        gf.build_forward_expand(out)
        BE.graph_compute(gf)
        np.testing.assert_array_equal(out.numpy(), 0.0)


# the tensor-core kernels (real GPU, f16 K/V) round q and the softmax weights to f16 for the mma,
# as ggml's CUDA kernels do; ggml itself is held to 2e-5 on f16 (test_attention.py)
TC_MAX_NMSE = 1e-5
BIG = [FaCase(576, 512, 16, 1, 3000, 1, type_kv="f16", layout="vk", sinks=True),
       FaCase(576, 512, 16, 1, 70, 4, mask="causal", type_kv="f16", layout="vk"),
       FaCase(576, 512, 16, 1, 1001, 1, type_kv="f16", ne3=3, nk3=3),
       FaCase(192, 128, 8, 2, 1000, 3, type_kv="f16", layout="perm", softcap=30.0),
       FaCase(192, 128, 8, 2, 1000, 3, type_kv="bf16", layout="perm"),
       FaCase(128, 128, 32, 8, 4100, 1, type_kv="f16"),
       FaCase(128, 128, 32, 8, 517, 2, type_kv="f16", mask="dead_row", max_bias=8.0, sinks=True),
       FaCase(128, 128, 8, 8, 300, 300, mask="causal", type_kv="f16"),
       FaCase(128, 64, 6, 2, 77, 7, type_kv="f16", layout="vk", v_offs=0),
       FaCase(128, 64, 6, 2, 700, 3, type_kv="f16", layout="vk", v_offs=64, mask_f32=True),   # V from the K tile at 64
       FaCase(80, 32, 4, 2, 333, 5, type_kv="f16", ne3=2, nk3=1),          # DK % 64 != 0, one O n-tile a warp
       FaCase(64, 64, 4, 4, 33, 3, type_kv="f16", layout="offs", max_bias=8.0),
       FaCase(64, 64, 4, 4, 33, 3, type_kv="bf16", layout="offs", max_bias=8.0)]
PATHS = {"mma": (True, True), "tensor_cores": (False, True), "plain": (False, False)}   # (USE_MMA, USE_TC)


def _expected_path(c, path):
    if c.type_kv != "f16" or path == "plain":
        return "plain"
    if path == "mma" and c.layout != "offs":
        return "mma"
    return "tc" if c.hsk % 64 == 0 and c.layout != "offs" else "plain"


@gpu
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("c", BIG, ids=lambda c: c.vars())
def test_cuda_big_cases(c, path, monkeypatch):
    from minigraph.backends.cuda import attention as fa

    monkeypatch.setattr(fa, "USE_MMA", PATHS[path][0])
    monkeypatch.setattr(fa, "USE_TC", PATHS[path][1])
    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(4), c)
    assert BE.supports_op(out)
    got_path = fa.kernel_path(out)
    assert got_path == _expected_path(c, path), (fa.attention_mma.refusal(out), fa.tc_refusal(out))
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    BE.graph_compute(gf)
    got = np.asarray(out.numpy(), np.float64)
    assert np.isfinite(got).all()
    err = float(((got - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))
    assert err < (MAX_NMSE if got_path == "plain" else TC_MAX_NMSE), err


@gpu
def test_mma_refusal_names_the_layout():
    """K at an odd element offset cannot be copied in 16-byte pieces: the C++ kernel says so and
    the node still runs (on the plain kernel), right."""
    from minigraph.backends.cuda import attention as fa

    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(6), FaCase(64, 64, 2, 2, 40, 1, type_kv="f16", layout="offs"))
    why = fa.attention_mma.refusal(out)
    assert why and "16-byte aligned" in why
    _check_tc(out)


def _check_tc(out):
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    BE.graph_compute(gf)
    got = np.asarray(out.numpy(), np.float64)
    err = float(((got - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))
    assert err < TC_MAX_NMSE, err


@gpu
def test_mma_graph_replay_sees_new_inputs():
    """The C++ launches sit in the captured CUDA graph: a replay after new q data gives the new
    result (the driver launch reads the buffers, not a snapshot)."""
    from minigraph.backends.cuda import attention as fa

    rng = np.random.default_rng(7)
    ctx = mg.Context()
    qa = rng.uniform(-1, 1, (1, 8, 1, 128)).astype(np.float32)
    q = ctx.from_numpy(qa, copy=False)
    k = ctx.from_numpy(rng.uniform(-1, 1, (1, 2, 600, 128)).astype(np.float16))
    v = ctx.from_numpy(rng.uniform(-1, 1, (1, 2, 600, 128)).astype(np.float16))
    out = ctx.flash_attn_ext(q, k, v, None, 0.1)
    assert fa.kernel_path(out) == "mma", fa.attention_mma.refusal(out)
    gf = mg.Graph()
    gf.build_forward_expand(out)
    for i in range(3):                       # compute, capture, replay
        qa[...] = rng.uniform(-1, 1, qa.shape)
        ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
        BE.graph_compute(gf)
        err = float(((out.numpy() - ref) ** 2).sum() / (ref ** 2).sum())
        assert err < TC_MAX_NMSE, (i, err)


def _leaf(ctx, type_, *ne):
    t = ctx.new_tensor_4d(type_, *(list(ne) + [1] * (4 - len(ne))))
    t.set_data(np.random.default_rng(5).uniform(-1, 1, tuple(reversed(t.ne))).astype(np.float32))
    return t


def test_refusal_runs_on_cpu_through_the_scheduler():
    """Head sizes past the kernel's registers are refused with a reason; the scheduler puts the
    node on the CPU and the result is right, with the CUDA nodes around it still on the GPU."""
    ctx = mg.Context()
    q = _leaf(ctx, mg.TYPE_F32, 1100, 1, 2)
    k = _leaf(ctx, mg.TYPE_F32, 1100, 4, 2)
    v = _leaf(ctx, mg.TYPE_F32, 8, 4, 2)
    qs = ctx.scale(q, 0.5)
    out = ctx.flash_attn_ext(qs, k, v, None, 0.03)
    y = ctx.scale(out, 2.0)
    s = BE.supports_op(out)
    assert not s and "1024" in s.reason
    assert BE.supports_op(y)
    gf = ctx.new_graph()
    gf.build_forward_expand(y)
    ref = mg.reference_compute(gf)[y]
    sched = mg.backend_sched_new([BE, CPU])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(out) is CPU
    assert sched.get_tensor_backend(qs) is BE
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_refusals_name_the_reason():
    ctx = mg.Context()
    q = _leaf(ctx, mg.TYPE_F32, 8, 1, 2)
    ok = ctx.flash_attn_ext(q, _leaf(ctx, mg.TYPE_BF16, 8, 4, 2), _leaf(ctx, mg.TYPE_F16, 8, 4, 2), None, 1.0)
    assert BE.supports_op(ok)
    big_v = ctx.flash_attn_ext(q, _leaf(ctx, mg.TYPE_F16, 8, 4, 2), _leaf(ctx, mg.TYPE_F16, 2000, 4, 2), None, 1.0)
    s = BE.supports_op(big_v)
    assert not s and "DV=2000" in s.reason


# a quantized KV cache: fa_split decodes the blocks in registers and, as ggml's CPU (and
# minigraph's), dots a quantized K with q's Q8_0 values, so CUDA is held to the CPU result
# tightly (same floats, other f32 order) and to the float64 reference of the dequantized data
# at the conformance cases' QUANT_NMSE (q's rounding: ~1e-6). On a GPU the Q8_0 / Q4_0 cases whose
# rows a cp.async fits run attention_mma.cu instead, which rounds q's Q8_0 values, the decoded
# K/V and P to f16 for the mma: held to the CPU at QUANT_MMA_NMSE (test_attention_mma_emu.py's bound)
QUANT_MMA_NMSE = 2e-6
QUANT_CASES = [
    FaCase(32, 32, 2, 1, 5, 2, type_kv="q8_0"),
    FaCase(64, 32, 2, 1, 6, 1, layout="vk", type_kv="q4_0", sinks=True),     # MLA-like: V = K[:32], from registers
    FaCase(64, 64, 4, 2, 70, 1, type_kv="q8_0", mask="none"),                # GQA decode: mma on a GPU
    FaCase(64, 32, 2, 2, 5, 2, layout="vk", v_offs=32, type_kv="q5_1", mask="causal"),   # V one block into K
    FaCase(32, 32, 2, 2, 6, 2, layout="perm", type_kv="q4_1"),
    FaCase(32, 32, 2, 2, 6, 2, layout="offs", type_kv="q5_0", mask="none"),   # a block of padding per row
    FaCase(32, 32, 2, 1, 23, 1, sinks=True, type_kv="q8_0", max_bias=8.0),    # several chunks
]


@pytest.mark.parametrize("c", QUANT_CASES, ids=[c.vars() for c in QUANT_CASES])
def test_cuda_quantized_cache_matches_cpu(c):
    from minigraph.ops.attention_cases import QUANT_NMSE

    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(1), c)
    s = BE.supports_op(out)
    assert s and s.reason == "quantized kernel", s.reason
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    CPU.graph_compute(gf)
    on_cpu = out.numpy().copy()
    BE.graph_compute(gf)
    got = np.asarray(out.numpy(), np.float64)
    assert np.isfinite(got).all()
    from minigraph.backends.cuda import attention as fa

    tol = MAX_NMSE if fa.kernel_path(out) == "plain" else QUANT_MMA_NMSE
    assert float(((got - on_cpu) ** 2).sum() / (on_cpu.astype(np.float64) ** 2).sum()) < tol
    assert float(((got - ref) ** 2).sum() / (ref ** 2).sum()) < QUANT_NMSE


def _helper_kernels():
    """Kernels around the device helpers, made at call time with `cuda` a module global (the
    simulator swaps module globals, not closures)."""
    global cuda
    from numba import cuda

    from minigraph.backends.cuda.attention import f16_round, qvalue

    @cuda.jit
    def rnd(x, out):
        i = cuda.threadIdx.x
        if i < x.size:
            out[i] = f16_round(x[i])

    @cuda.jit
    def dec(raw, bb, t, out):
        r = cuda.blockIdx.x
        j = cuda.threadIdx.x
        for b in range(out.shape[1] // 32):
            out[r, 32 * b + j] = qvalue(raw[r], b * bb, j, t)

    return rnd, dec


def test_cuda_f16_round_and_block_decode_are_ggmls():
    """The device helpers on their own: f16 rounding of scales (ties, subnormals) and every
    block type's decode against the reference dequantizer, bit for bit."""
    from minigraph.core import quants
    from minigraph.ops.attention import KV_QUANT_TYPES

    rnd, dec = _helper_kernels()
    x = np.array([0.0, 1.0, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 3e-5, 6.1e-5, 2 ** -25, 1.5 * 2 ** -24,
                  0.1, 1 / 127, 70000.0], np.float32)
    out = np.zeros_like(x)
    rnd[1, 32](x, out)
    with np.errstate(over="ignore"):   # 70000 -> inf, as f16 rounding does
        np.testing.assert_array_equal(out, x.astype(np.float16).astype(np.float32))
    vals = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    for t in KV_QUANT_TYPES:
        raw = quants.quantize(vals, t)
        got = np.zeros_like(vals)
        dec[3, 32](raw, raw.shape[1] // 2, t, got)
        np.testing.assert_array_equal(got, quants.dequantize(raw, t))
