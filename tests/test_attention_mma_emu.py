"""The CUDA C++ FLASH_ATTN_EXT kernels (backends/cuda/attention_mma.cu) without a GPU: run through
tests/cuda_emu.py (the PTX instructions done in C++, every thread an OS thread, cp.async landing
only at its wait) against the float64 reference; and, where NVRTC is installed, compiled for
sm_90 with no register spills.

Tolerance: q and the softmax weights are rounded to f16 for the mma (as on the GPU); measured
NMSE ~4e-8 on these shapes, 1e-6 leaves room without hiding a layout bug (a wrong fragment or a
stage read before it landed gives > 1e-2).
"""
import numpy as np
import pytest

import minigraph as mg
from minigraph.ops.attention_cases import FaCase, build_case

import cuda_emu

MAX_NMSE = 1e-6

pytestmark = pytest.mark.skipif(cuda_emu.available() is not None, reason=f"emulator: {cuda_emu.available()}")

# (case, config override), two builds between them covering the four ldmatrix forms: V read from
# the K tile with 32 kv rows a tile (one S n-tile a warp: x2), GQA with every score option and one
# O n-tile a warp (x2.trans), ne3 broadcast, n_kv not a multiple of the tile; then the same two
# cases split over DK (SPLITK, MLA's form: q and P in registers, partial S through shared memory;
# the second with one warp, so its 5 k-steps split evenly and the partials outgrow the q region)
_VK = FaCase(128, 64, 8, 1, 150, 2, type_kv="f16", layout="vk", sinks=True)
_PERM = FaCase(80, 32, 6, 2, 77, 3, type_kv="f16", layout="perm", mask="dead_row", max_bias=8.0, softcap=20.0,
               sinks=True, mask_f32=True, ne3=2, nk3=1)
CASES = [
    (_VK, {"BN": 32, "STAGES": 3}),
    (_PERM, {}),
    (_VK, {"BN": 32, "STAGES": 3, "SPLITK": 1}),
    (_PERM, {"SPLITK": 1, "WARPS": 1}),
]


@pytest.mark.parametrize("c,override", CASES, ids=[c.vars() + "".join(f"_{k}{v}" for k, v in o.items()) for c, o in CASES])
def test_emulated_kernels_match_reference(c, override):
    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(4), c)
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    got = cuda_emu.run_flash_attn(out, 3, override).astype(np.float64).reshape(ref.shape)
    assert np.isfinite(got).all()
    err = float(((got - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))
    assert err < MAX_NMSE, err


@pytest.mark.skipif(not cuda_emu.nvrtc_available(), reason="NVRTC is not installed")
@pytest.mark.parametrize("dk,dv,share,kv", [(576, 512, 1, mg.TYPE_F16), (128, 128, 0, mg.TYPE_F16),
                                             (576, 512, 1, mg.TYPE_Q8_0), (128, 128, 0, mg.TYPE_Q8_0),
                                             (128, 128, 0, mg.TYPE_Q4_0)])
def test_nvrtc_builds_without_spills(dk, dv, share, kv):
    """The configs the MLA and GQA benchmarks run (f16 and quantized caches) compile for sm_90
    and keep everything in registers (a spill would be local-memory traffic inside the kv loop)."""
    from dataclasses import replace

    from minigraph.backends.cuda import attention_mma as fm

    ctx = mg.Context()
    q = ctx.new_tensor_4d(mg.TYPE_F32, dk, 1, 16, 1)
    k = ctx.new_tensor_4d(kv, dk, 512, 1 if share else 4, 1)
    v = ctx.view_4d(k, dv, 512, k.ne[2], 1, k.nb[1], k.nb[2], k.nb[3], 0) if share else \
        ctx.new_tensor_4d(kv, dv, 512, 4, 1)
    c = fm.config(ctx.flash_attn_ext(q, k, v, None, 0.1))
    assert c.SHARE == share and c.KVT == (0 if kv == mg.TYPE_F16 else kv)
    _, log = fm.nvrtc_compile(replace(c), "sm_90", ("--ptxas-options=-v",))
    if "spill stores" not in log:  # NVRTC builds that print no ptxas statistics (seen with NVRTC 13)
        pytest.skip("this NVRTC returns no ptxas statistics for --ptxas-options=-v")
    chunk = log[log.index("fa_mma_chunk"):] if "fa_mma_chunk" in log else log
    assert "0 bytes spill stores" in chunk and "0 bytes stack frame" in chunk, log


# A quantized cache through the same emulated kernel (KVT: raw blocks by cp.async, decoded in
# shared memory). Held to the CPU backend, which rounds q to Q8_0 values as ggml's CPU and the
# kernel do: what is left is the kernel's f16 roundings (q's Q8_0 values times scale, the decoded
# K/V values d * q, P), measured ~1e-7 NMSE here; 2e-6 leaves room without hiding a decode bug
# (a wrong nibble half, block scale or row gives > 1e-2). Two builds: an MLA-like V view over a
# packed Q8_0 tile (16-byte pieces across row ends, n_kv past a tile's end), and a permuted Q4_0
# cache (llama.cpp's layout: each row in 4-byte pieces) with a separate V, GQA and every score option.
QUANT_EMU_NMSE = 2e-6
QUANT_CASES = [
    (FaCase(128, 64, 8, 1, 150, 2, type_kv="q8_0", layout="vk", sinks=True), {"BN": 32, "STAGES": 3}, (1, 8)),
    (FaCase(64, 64, 6, 2, 77, 3, type_kv="q4_0", layout="perm", mask="dead_row", max_bias=8.0, softcap=20.0,
            sinks=True), {}, (0, 4)),
]


@pytest.mark.parametrize("c,override,copy", QUANT_CASES, ids=[c.vars() for c, _, _ in QUANT_CASES])
def test_emulated_quantized_cache_matches_cpu(c, override, copy):
    from minigraph.backends.cuda import attention_mma as fm
    from minigraph.ops.attention_cases import QUANT_NMSE

    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(5), c)
    cfg = fm.config(out)
    assert (cfg.KVT, cfg.PACKED, cfg.CW) == (int(out.src[1].type), *copy)
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    mg.backend_cpu_init().graph_compute(gf)
    on_cpu = out.numpy().astype(np.float64)
    got = cuda_emu.run_flash_attn(out, 3, override).astype(np.float64).reshape(ref.shape)
    assert np.isfinite(got).all()
    err = float(((got - on_cpu) ** 2).sum() / (on_cpu ** 2).sum())
    assert err < QUANT_EMU_NMSE, err
    assert float(((got - ref) ** 2).sum() / (ref ** 2).sum()) < QUANT_NMSE


def _quant_node(ctx, type_k, type_v, dk=128, perm=False, share=False):
    q = ctx.new_tensor_4d(mg.TYPE_F32, dk, 1, 8, 1)
    if perm:   # llama.cpp's cache view: rows of one head 2 heads' bytes apart
        k = ctx.permute(ctx.new_tensor_4d(type_k, dk, 2, 64, 1), 0, 2, 1, 3)
    else:
        k = ctx.new_tensor_4d(type_k, dk, 64, 2, 1)
    v = ctx.view_4d(k, dk, 64, 2, 1, k.nb[1], k.nb[2], k.nb[3], 0) if share else ctx.new_tensor_4d(type_v, dk, 64, 2, 1)
    return ctx.flash_attn_ext(q, k, v, None, 0.1)


def test_quantized_admission():
    """Which quantized caches the C++ kernel takes (pure planning, no GPU): Q8_0 / Q4_0 K and V of
    one type whose raw rows a cp.async copy fits; the rest is left to fa_split with a reason."""
    from minigraph.backends.cuda import attention_mma as fm

    ctx = mg.Context()
    packed = fm.config(_quant_node(ctx, mg.TYPE_Q8_0, mg.TYPE_Q8_0))
    assert (packed.KVT, packed.PACKED, packed.CW) == (mg.TYPE_Q8_0, 1, 8)       # 136-byte rows
    perm = fm.config(_quant_node(ctx, mg.TYPE_Q4_0, mg.TYPE_Q4_0, perm=True))
    assert (perm.KVT, perm.PACKED, perm.CW) == (mg.TYPE_Q4_0, 0, 8)             # 72-byte rows, 144 apart
    assert packed.MIN_BLOCKS == 2 and fm.smem_bytes(packed) <= fm.SMEM_PER_SM // 2 - 1024
    assert fm._types_and_rows(_quant_node(ctx, mg.TYPE_Q8_0, mg.TYPE_Q8_0, share=True)) is None
    why = fm._types_and_rows(_quant_node(ctx, mg.TYPE_Q5_1, mg.TYPE_Q5_1))
    assert "both q8_0 or both q4_0" in why
    assert "both" in fm._types_and_rows(_quant_node(ctx, mg.TYPE_Q8_0, mg.TYPE_F16))
    odd = _quant_node(ctx, mg.TYPE_Q8_0, mg.TYPE_Q8_0, dk=32)                   # 34-byte rows
    assert "multiples of 4" in fm._types_and_rows(odd)
    assert fm.config(odd).KVT == 0
