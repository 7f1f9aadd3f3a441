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
# O n-tile a warp (x2.trans), ne3 broadcast, n_kv not a multiple of the tile
CASES = [
    (FaCase(128, 64, 8, 1, 150, 2, type_kv="f16", layout="vk", sinks=True), {"BN": 32, "STAGES": 3}),
    (FaCase(80, 32, 6, 2, 77, 3, type_kv="f16", layout="perm", mask="dead_row", max_bias=8.0, softcap=20.0,
            sinks=True, mask_f32=True, ne3=2, nk3=1), {}),
]


@pytest.mark.parametrize("c,override", CASES, ids=[c.vars() for c, _ in CASES])
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


def _nvrtc() -> bool:
    try:
        from cuda.bindings import nvrtc

        return nvrtc.nvrtcVersion()[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # noqa: BLE001 - no cuda.bindings or no libnvrtc: skip
        return False


@pytest.mark.skipif(not _nvrtc(), reason="NVRTC is not installed")
@pytest.mark.parametrize("dk,dv,share", [(576, 512, 1), (128, 128, 0)])
def test_nvrtc_builds_without_spills(dk, dv, share):
    """The configs the MLA and GQA benchmarks run compile for sm_90 and keep everything in
    registers (a spill would be local-memory traffic inside the kv loop)."""
    from dataclasses import replace

    from minigraph.backends.cuda import attention_mma as fm

    ctx = mg.Context()
    q = ctx.new_tensor_4d(mg.TYPE_F32, dk, 1, 16, 1)
    k = ctx.new_tensor_4d(mg.TYPE_F16, dk, 512, 1 if share else 4, 1)
    v = ctx.view_4d(k, dv, 512, k.ne[2], 1, k.nb[1], k.nb[2], k.nb[3], 0) if share else \
        ctx.new_tensor_4d(mg.TYPE_F16, dv, 512, 4, 1)
    c = fm.config(ctx.flash_attn_ext(q, k, v, None, 0.1))
    assert c.SHARE == share
    _, log = fm.nvrtc_compile(replace(c), "sm_90", ("--ptxas-options=-v",))
    if "spill stores" not in log:  # NVRTC builds that print no ptxas statistics (seen with NVRTC 13)
        pytest.skip("this NVRTC returns no ptxas statistics for --ptxas-options=-v")
    chunk = log[log.index("fa_mma_chunk"):] if "fa_mma_chunk" in log else log
    assert "0 bytes spill stores" in chunk and "0 bytes stack frame" in chunk, log
