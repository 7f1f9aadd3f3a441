"""FLASH_ATTN_EXT: the float64 reference against a transcription of ggml's loop, the CPU kernel
against the reference on the conformance cases, ggml's own CPU backend on the same cases,
V-as-view-of-K detection, and every refusal (the CUDA kernels: tests/test_attention_cuda.py).

Tolerances: minigraph's kernels read the exact f16/bf16 values and accumulate in f32, so every
case holds NMSE <= 1e-6 against float64 (measured <= 1e-12). ggml rounds Q to f16 (bf16) for its
K dot and accumulates f16 V in f16: measured NMSE <= 2.3e-6 (f16), <= 2.5e-7 (bf16), so ggml is
held to 2e-5 / 5e-6 (minigraph.testing.ggml_conformance.GGML_FA_TOLERANCE), f32 to 1e-6.
"""
import math

import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.cpu.attention import flash_attn_ext as fa_kernel
from minigraph.core.cases import Case, cases_for
from minigraph.core.errors import MinigraphError
from minigraph.ops import attention as A
from minigraph.ops.attention_cases import MAX_NMSE, FaCase, build_case
from minigraph.tools.conformance import check_case

CPU = mg.backend_cpu_init(2)
FA_CASES = cases_for("FLASH_ATTN_EXT")


def _ggml_loop(q, k, v, mask, sinks, scale, max_bias, softcap):
    """ggml_compute_forward_flash_attn_ext_f16_one_chunk, row by row, in float64."""
    n3, n_head, n_q, _ = q.shape
    dst = np.zeros((n3, n_q, n_head, v.shape[3]))
    slopes = A.alibi_slopes(n_head, max_bias)
    if softcap:
        scale /= softcap
    for i3 in range(n3):
        for h in range(n_head):
            kk = k[i3 // (n3 // k.shape[0]), h // (n_head // k.shape[1])]
            vv = v[i3 // (n3 // v.shape[0]), h // (n_head // v.shape[1])]
            for i1 in range(n_q):
                M, S, acc = -np.inf, 0.0, np.zeros(v.shape[3])
                for j in range(k.shape[2]):
                    mv = slopes[h] * mask[i3 % mask.shape[0], h % mask.shape[1], i1, j] if mask is not None else 0.0
                    if mv == -np.inf:
                        continue
                    s = float(q[i3, h, i1] @ kk[j]) * scale
                    if softcap:
                        s = softcap * math.tanh(s)
                    s += mv
                    ms, vs = 1.0, 1.0
                    if s > M:
                        ms, M = math.exp(M - s), s
                        acc *= ms
                    else:
                        vs = math.exp(s - M)
                    acc += vv[j] * vs
                    S = S * ms + vs
                if sinks is not None:
                    s = sinks[h]
                    ms, vs = 1.0, 1.0
                    if s > M:
                        ms, M = math.exp(M - s), s
                        acc *= ms
                    else:
                        vs = math.exp(s - M)
                    S = S * ms + vs
                dst[i3, i1, h] = acc / S if S else 0.0
    return dst


@pytest.mark.parametrize("n_head,n_kvh,n3,nk3,mask,max_bias,softcap,sinks", [
    (4, 4, 1, 1, "rand", 0.0, 0.0, False), (6, 2, 2, 1, "rand", 8.0, 0.0, True),
    (4, 1, 1, 1, None, 0.0, 30.0, True), (8, 4, 2, 2, "dead", 3.0, 5.0, False), (3, 3, 1, 1, "dead", 0.0, 0.0, True)])
def test_reference_is_ggmls_loop(n_head, n_kvh, n3, nk3, mask, max_bias, softcap, sinks):
    rng = np.random.default_rng(3)
    n_q, n_kv, dk, dv = 3, 11, 8, 6
    q = rng.uniform(-1, 1, (n3, n_head, n_q, dk))
    k = rng.uniform(-1, 1, (nk3, n_kvh, n_kv, dk))
    v = rng.uniform(-1, 1, (nk3, n_kvh, n_kv, dv))
    m = None
    if mask:
        m = rng.uniform(-1, 1, (1, 1, n_q + 1, n_kv + 2))
        if mask == "dead":
            m[..., 0, :] = -np.inf
            m[..., 1, ::2] = -np.inf
    s = rng.uniform(-2, 2, n_head) if sinks else None
    want = _ggml_loop(q, k, v, m, s, 0.3, max_bias, softcap)
    got = A._ref_flash_attn_ext(None, q, k, v, m, None if s is None else s.reshape(1, 1, 1, -1), 0.3, max_bias,
                                softcap, 0, -1, int(m is not None), int(sinks))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", FA_CASES, ids=[c.vars for c in FA_CASES])
def test_cpu_matches_reference(case):
    assert check_case(case, CPU, seed=2) is None


# The CPU kernel's register tiles cover 4 x 3 scores, 6/4/2/1 output rows and 16 output columns
# at a time; these sizes leave every kind of edge: head sizes off the 8-lane and 16-column steps,
# row counts (heads x positions) of 7 and 5, kv counts off the 3-column step, V inside K at an
# odd offset.
TILE_EDGES = [FaCase(44, 20, 7, 1, 13, 1), FaCase(36, 24, 5, 5, 10, 3, mask="causal", type_kv="f16"),
              FaCase(40, 30, 3, 1, 17, 2, layout="vk", v_offs=3, type_kv="bf16")]


@pytest.mark.parametrize("c", TILE_EDGES, ids=[c.vars() for c in TILE_EDGES])
def test_cpu_tile_edges(c):
    case = Case("FLASH_ATTN_EXT", c.vars(), lambda ctx, rng: build_case(ctx, rng, c), MAX_NMSE)
    assert check_case(case, CPU, seed=5) is None


def _strided_columns(ctx, rng):
    """K and V whose values within a row lie n_kv elements apart (permuted from [n_kv, hs]):
    the kernel cannot read these rows in place and converts them into its tiles instead."""
    def kv(hs, type_):
        base = ctx.from_numpy(rng.uniform(-1, 1, (1, 2, hs, 19)).astype(np.float32), type_)
        return ctx.permute(base, 1, 0, 2, 3)            # ne [hs, 19, 2, 1], nb0 = 19 elements
    q = ctx.from_numpy(rng.uniform(-1, 1, (1, 4, 3, 24)).astype(np.float32))
    k, v = kv(24, mg.TYPE_F16), kv(20, mg.TYPE_BF16)
    assert k.nb[0] == 19 * 2 and v.nb[0] == 19 * 2
    return ctx.flash_attn_ext(q, k, v, None, 0.2, 0.0, 0.0)


def test_cpu_strided_columns():
    assert check_case(Case("FLASH_ATTN_EXT", "strided", _strided_columns, MAX_NMSE), CPU, seed=1) is None


def _per_head_mask(ctx, rng):
    """A mask with its own rows for each of 2 heads (ne2 = 2, broadcast over 4 heads: head h reads
    plane h % 2), -inf in a different place in each, with ALiBi slopes: the kernel cannot share
    one mask row between the heads of its group here."""
    q = ctx.from_numpy(rng.uniform(-1, 1, (1, 4, 3, 16)).astype(np.float32))
    k = ctx.from_numpy(rng.uniform(-1, 1, (1, 1, 21, 16)).astype(np.float32))
    v = ctx.from_numpy(rng.uniform(-1, 1, (1, 1, 21, 16)).astype(np.float32))
    m = rng.uniform(-1, 1, (1, 2, 3, 21)).astype(np.float32)
    m[0, 0, :, :5] = -np.inf
    m[0, 1, :, 15:] = -np.inf
    m[0, 1, 2, :] = -np.inf
    mask = ctx.new_tensor_4d(mg.TYPE_F16, 21, 3, 2, 1)
    mask.set_data(m)
    return ctx.flash_attn_ext(q, k, v, mask, 0.3, 4.0, 0.0)


def test_cpu_per_head_mask():
    assert check_case(Case("FLASH_ATTN_EXT", "per_head_mask", _per_head_mask, MAX_NMSE), CPU, seed=1) is None


def test_grid_covers_the_asked_axes():
    v = " ".join(c.vars for c in FA_CASES)
    for want in ("hsk=64,hsv=64", "hsk=128,hsv=128", "hsk=192,hsv=128", "hsk=576,hsv=512", "nr=1,", "nr=4,",
                 "nr=16,", "mask=none", "mask=causal", "max_bias=8", "logit_softcap=20", "sinks=1",
                 "type_KV=f32", "type_KV=f16", "type_KV=bf16", "kv_view=perm", "kv_view=offs", "kv_view=vk", "nb=1,"):
        assert want in v, want
    assert any(int(c.vars.split("kv=")[1].split(",")[0]) % 32 for c in FA_CASES)


def test_v_view_of_k_is_detected():
    ctx = mg.Context()
    k = ctx.new_tensor_4d(mg.TYPE_F16, 576, 10, 1, 1)
    q = ctx.new_tensor_4d(mg.TYPE_F32, 576, 1, 16, 1)
    v = ctx.view_4d(k, 512, 10, 1, 1, k.nb[1], k.nb[2], k.nb[3], 0)
    assert ctx.flash_attn_ext(q, k, v, None, 1.0).op_params["v_in_k"] == 0
    v64 = ctx.view_4d(k, 512, 10, 1, 1, k.nb[1], k.nb[2], k.nb[3], 64 * 2)
    assert ctx.flash_attn_ext(q, k, v64, None, 1.0).op_params["v_in_k"] == 64
    # a K that is itself a view at an odd offset: V's offset counts from K's row start
    big = ctx.new_tensor_1d(mg.TYPE_F32, 3 + 64 * 10 + 7)
    k2 = ctx.view_4d(big, 64, 10, 1, 1, 64 * 4, 640 * 4, 640 * 4, 3 * 4)
    v2 = ctx.view_4d(big, 32, 10, 1, 1, 64 * 4, 640 * 4, 640 * 4, (3 + 16) * 4)
    q2 = ctx.new_tensor_4d(mg.TYPE_F32, 64, 1, 2, 1)
    assert ctx.flash_attn_ext(q2, k2, v2, None, 1.0).op_params["v_in_k"] == 16
    # not a view of K: another tensor, other row strides, past K's row, or a different root
    other = ctx.new_tensor_4d(mg.TYPE_F16, 512, 10, 1, 1)
    assert ctx.flash_attn_ext(q, k, other, None, 1.0).op_params["v_in_k"] == -1
    kk = ctx.new_tensor_4d(mg.TYPE_F16, 576, 20, 1, 1)
    ks = ctx.view_4d(kk, 576, 10, 1, 1, kk.nb[1] * 2, kk.nb[2], kk.nb[3], 0)
    vs = ctx.view_4d(kk, 512, 10, 1, 1, kk.nb[1], kk.nb[2], kk.nb[3], 0)
    assert ctx.flash_attn_ext(q, ks, vs, None, 1.0).op_params["v_in_k"] == -1
    vpast = ctx.view_4d(k, 512, 9, 1, 1, k.nb[1], k.nb[2], k.nb[3], 100 * 2)
    assert A.v_offset_in_k(k, vpast) == -1


def test_kernel_takes_v_from_k_when_told():
    """With v_in_k >= 0 the kernel never reads the V array: poison it and the result holds."""
    rng = np.random.default_rng(0)
    q = rng.uniform(-1, 1, (1, 16, 1, 96)).astype(np.float32)
    k = rng.uniform(-1, 1, (1, 1, 300, 96)).astype(np.float32)
    m = rng.uniform(-1, 0, (1, 1, 1, 300)).astype(np.float32)
    want = A._ref_flash_attn_ext(None, q.astype(np.float64), k.astype(np.float64), k[..., 16:80].astype(np.float64),
                                 m.astype(np.float64), None, 0.1, 0.0, 0.0, 0, 16, 1, 0)
    poison = np.full((1, 1, 300, 64), np.nan, np.float32)
    for build in (fa_kernel.serial, fa_kernel.parallel):
        dst = np.empty((1, 1, 16, 64), np.float32)
        build(dst, q, k, poison, m, np.zeros((1, 1, 1, 1), np.float32), 0.1, 0.0, 0.0, 0, 16, 1, 0, *[mg.TYPE_F32] * 6)
        np.testing.assert_allclose(dst, want, rtol=2e-5, atol=2e-6)


def test_empty_kv_gives_zeros_and_sink_only_rows():
    ctx = mg.Context()
    q = ctx.from_numpy(np.ones((1, 2, 3, 8), np.float32))
    k = ctx.from_numpy(np.zeros((1, 1, 0, 8), np.float32))
    v = ctx.from_numpy(np.zeros((1, 1, 0, 4), np.float32))
    out = ctx.flash_attn_ext(q, k, v, None, 1.0)
    A.flash_attn_ext_add_sinks(out, ctx.from_numpy(np.array([0.5, -1.0], np.float32)))
    assert out.ne == (4, 2, 3, 1)
    mg.compute(out, CPU)
    assert np.array_equal(out.numpy(), np.zeros((3, 2, 4), np.float32))


def test_prec_and_sinks_api():
    ctx = mg.Context()
    c = FaCase(64, 64, 4, 2, 9, 2)
    out = build_case(ctx, np.random.default_rng(0), c)
    assert A.flash_attn_ext_get_prec(out) == A.PREC_DEFAULT
    A.flash_attn_ext_set_prec(out, A.PREC_F32)
    assert out.op_params["prec"] == 10 and A.PREC_F32 == 10 and A.PREC_DEFAULT == 0
    sinks = ctx.from_numpy(np.zeros(4, np.float32))
    A.flash_attn_ext_add_sinks(out, sinks)
    assert out.src[4] is sinks and out.op_params["has_sinks"] == 1
    with pytest.raises(MinigraphError, match="already has sinks"):
        A.flash_attn_ext_add_sinks(out, sinks)
    A.flash_attn_ext_add_sinks(out, None)
    assert out.src[4] is None and out.op_params["has_sinks"] == 0
    with pytest.raises(MinigraphError, match="ne0 == n_head"):
        A.flash_attn_ext_add_sinks(out, ctx.from_numpy(np.zeros(3, np.float32)))
    with pytest.raises(MinigraphError, match="f32"):
        A.flash_attn_ext_add_sinks(out, ctx.new_tensor_1d(mg.TYPE_F16, 4))
    with pytest.raises(MinigraphError, match="PREC_DEFAULT"):
        A.flash_attn_ext_set_prec(out, 3)
    with pytest.raises(MinigraphError, match="FLASH_ATTN_EXT node"):
        A.flash_attn_ext_set_prec(sinks, A.PREC_F32)


def _t(ctx, type_, *ne):
    return ctx.new_tensor_4d(type_, *(list(ne) + [1] * (4 - len(ne))))


@pytest.mark.parametrize("what,match", [
    ("q_f16", "q must be f32"), ("dk", "ne0 == q's ne0"), ("n_kv", "ne1 == k's ne1"),
    ("heads", "must divide q's ne2"), ("ne3", "must divide q's ne2 = 4 and its ne3"),
    ("mask_type", "mask must be f16"), ("mask_small", "at least"), ("mask_heads", "mask's ne2"),
    ("alibi", "needs a mask"), ("scale", "finite"), ("scale_type", "must be a number"), ("k_int", "quantized KV cache type"),
    ("not_tensor", "expected a Tensor")])
def test_refusals(what, match):
    ctx = mg.Context()
    F32, F16 = mg.TYPE_F32, mg.TYPE_F16
    q, k, v = _t(ctx, F32, 64, 3, 4, 2), _t(ctx, F16, 64, 10, 2, 2), _t(ctx, F16, 32, 10, 2, 2)
    mask, args = _t(ctx, F16, 10, 3), [1.0, 0.0, 0.0]
    if what == "q_f16":
        q = _t(ctx, F16, 64, 3, 4, 2)
    elif what == "dk":
        k = _t(ctx, F16, 32, 10, 2, 2)
    elif what == "n_kv":
        v = _t(ctx, F16, 32, 11, 2, 2)
    elif what == "heads":
        k = _t(ctx, F16, 64, 10, 3, 2)
    elif what == "ne3":
        k = _t(ctx, F16, 64, 10, 2, 3)
    elif what == "mask_type":
        mask = _t(ctx, mg.TYPE_I32, 10, 3)
    elif what == "mask_small":
        mask = _t(ctx, F16, 9, 3)
    elif what == "mask_heads":
        mask = _t(ctx, F16, 10, 3, 3)
    elif what == "alibi":
        mask, args = None, [1.0, 8.0, 0.0]
    elif what == "scale":
        args = [float("nan"), 0.0, 0.0]
    elif what == "scale_type":
        args = ["1", 0.0, 0.0]
    elif what == "k_int":
        k = _t(ctx, mg.TYPE_I32, 64, 10, 2, 2)
    elif what == "not_tensor":
        v = np.zeros((2, 2, 10, 32), np.float32)
    with pytest.raises(MinigraphError, match=match):
        ctx.flash_attn_ext(q, k, v, mask, *args)


def test_result_layout_is_permuted():
    ctx = mg.Context()
    out = build_case(ctx, np.random.default_rng(0), FaCase(64, 48, 6, 3, 9, 5, ne3=2, nk3=2))
    assert out.ne == (48, 6, 5, 2) and out.type == mg.TYPE_F32
    assert A.FLASH_ATTN_EXT.flops(out) == 2.0 * 5 * 6 * 2 * 9 * (64 + 48)


@pytest.mark.ggml
def test_ggml_cpu_agrees_on_every_case():
    pytest.importorskip("ggml", reason="ggml-python (the optional ggml extra, pip install -e .[ggml]) is the reference engine here")
    from minigraph.testing.ggml_conformance import run_all

    res = run_all(op="FLASH_ATTN_EXT")
    bad = [r for r in res if r["status"] in ("fail", "crash", "hang")]
    assert not bad, bad
    skipped = [r["case"] for r in res if r["status"] == "skip"]
    assert all("ext=" in c for c in skipped), skipped   # only minigraph's extensions are skipped
    assert sum(r["status"] == "ok" for r in res) == len(FA_CASES) - len(skipped)
