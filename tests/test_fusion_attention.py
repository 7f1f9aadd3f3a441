"""The attention fusion pass (minigraph/passes/attention.py): llama.cpp's attention without flash
attention (build_attn_mha, minigraph.models.mla) becomes FLASH_ATTN_EXT; fused and unfused agree
to 1e-6 NMSE in f32 (GQA, ALiBi, softcap, the transposed-V cache, streams, the MLA layer); near
misses are logged naming the node and leave the graph alone; names survive."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.cpu.backend import CpuBackend
from minigraph.models import mla

CPU = mg.backend_cpu_init(2)
F16, F32 = mg.TYPE_F16, mg.TYPE_F32


def nmse(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a - b) ** 2).sum() / (b ** 2).sum())


def row(t, n):
    return mg.row_size(t, n)


def gqa(ctx, rng, D=16, Dv=8, H=4, H_kv=2, T=3, n_kv=7, n_stream=1, mask=True, max_bias=0.0, softcap=0.0,
        v_trans=False, kv_type=F32, kv_size=9, sinks=False):
    """q [D, H, T * n_stream], K/V cache views as llama_kv_cache::get_k / get_v build them, the
    mask [n_kv, T, 1, n_stream] (random, -inf sprinkled, one cell always open), then build_attn_mha."""
    def leaf(ne, lo=-1.0, hi=1.0, type_=F32):
        a = rng.uniform(lo, hi, size=tuple(reversed(ne)))
        return ctx.from_numpy(a.astype(np.float16 if type_ == F16 else np.float32))
    q = leaf([D, H, T * n_stream]).set_name("Qcur")
    kc = leaf([D * H_kv, kv_size, n_stream], type_=kv_type).set_name("cache_k")
    k = ctx.view_4d(kc, D, H_kv, n_kv, n_stream, row(kv_type, D), row(kv_type, D * H_kv),
                    row(kv_type, D * H_kv * kv_size), 0)
    if v_trans:   # llama.cpp's transposed V cache (flash attention off): element (cell, dim) at dim * kv_size + cell
        vc = leaf([kv_size, Dv * H_kv, n_stream], type_=kv_type).set_name("cache_v")
        v = ctx.view_4d(vc, n_kv, H_kv, Dv, n_stream, row(kv_type, kv_size * Dv), row(kv_type, kv_size),
                        row(kv_type, kv_size * Dv * H_kv), 0)
    else:
        vc = leaf([Dv * H_kv, kv_size, n_stream], type_=kv_type).set_name("cache_v")
        v = ctx.view_4d(vc, Dv, H_kv, n_kv, n_stream, row(kv_type, Dv), row(kv_type, Dv * H_kv),
                        row(kv_type, Dv * H_kv * kv_size), 0)
    m = None
    if mask:
        a = rng.uniform(-2.0, 0.0, size=(n_stream, 1, T, n_kv))
        a[rng.uniform(size=a.shape) < 0.3] = -np.inf
        a[..., 0] = 0.0
        m = ctx.from_numpy(a.astype(np.float32)).set_name("kq_mask")
    sk = ctx.from_numpy(rng.uniform(-2.0, 2.0, size=H).astype(np.float32)).set_name("sinks") if sinks else None
    out = mla.build_attn_mha(ctx, q, k, v, None, m, sk, None, 1.0 / np.sqrt(D), flash_attn=False,
                             max_bias=max_bias, softcap=softcap)
    return ctx.rms_norm(out, 1e-6).set_name("downstream")


def graph(*outs):
    gf = mg.Graph()
    for t in outs:
        gf.build_forward_expand(t)
    return gf


def both(gf, outs, backend=CPU):
    """Unfused and fused values of outs; checks the input graph is left as it was."""
    snapshot = [(n.op, tuple(id(s) for s in n.src)) for n in gf.nodes]
    mg.compute(gf, backend, fuse=False)
    plain = [t.numpy().copy() for t in outs]
    mg.compute(gf, backend)
    fused = [t.numpy().copy() for t in outs]
    assert snapshot == [(n.op, tuple(id(s) for s in n.src)) for n in gf.nodes]
    return plain, fused


def ops(g):
    return [n.op for n in g.nodes]


GQA_CASES = [dict(),                                                 # GQA 4/2, mask
             dict(mask=False, v_trans=True, n_stream=2),              # no mask, transposed V cache, 2 streams
             dict(H=6, H_kv=1, softcap=3.0, max_bias=8.0),            # MQA, softcap, ALiBi
             dict(kv_type=F16, T=1, n_kv=9, H=2, H_kv=2, D=8, Dv=8),  # MHA decode, f16 cache
             dict(sinks=True, max_bias=4.0)]                          # gpt-oss sinks (soft_max_add_sinks), ALiBi


@pytest.mark.parametrize("kw", GQA_CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "plain" for c in GQA_CASES])
def test_gqa_layer_fuses_and_agrees(kw):
    ctx = mg.Context()
    out = gqa(ctx, np.random.default_rng(1), **kw)
    gf = graph(out)
    run = mg.optimize(gf, CPU)
    assert "FLASH_ATTN_EXT" in ops(run.graph) and "SOFT_MAX" not in ops(run.graph), str(run.log)
    assert "TANH" not in ops(run.graph) and ops(run.graph).count("MUL_MAT") == 0
    fa = next(n for n in run.graph.nodes if n.op == "FLASH_ATTN_EXT")
    assert (fa.src[4] is not None and fa.src[4].name == "sinks") == kw.get("sinks", False)
    (a,), (b,) = both(gf, [out])
    assert nmse(b, a) < 1e-6


def test_fused_parameters_and_names():
    """softmax(s * c * tanh(a * kq) + mask) is FA with softcap s*c and scale a*s*c; the fused
    node takes kqv's name (the permute after it is absorbed), the others go to fused_names."""
    ctx = mg.Context()
    out = gqa(ctx, np.random.default_rng(2), D=16, softcap=5.0)
    run = mg.optimize(graph(out), CPU)
    fa = next(n for n in run.graph.nodes if n.op == "FLASH_ATTN_EXT")
    s, c = 1.0 / 4.0, 5.0
    assert fa.op_params["logit_softcap"] == pytest.approx(s * c) and fa.op_params["scale"] == pytest.approx(s)
    assert fa.name == "kqv" and mg.flash_attn_ext_get_prec(fa) == mg.PREC_F32
    assert fa.op_params["fused_pattern"] == "attention"
    assert {"kq", "kq_scaled_1", "kq_tanh", "kq_scaled_2", "kq_soft_max", "v_cont"} <= set(fa.op_params["fused_names"])
    assert fa.op_params["fused_from"][-1] == "PERMUTE" and "SOFT_MAX" in fa.op_params["fused_from"]
    assert any(s == "fused" and "FLASH_ATTN_EXT" in m for p, s, m in run.log.entries if p == "attention")


def test_mla_layer_without_flash_attention_fuses_to_the_flash_graph():
    """The MLA non-flash layer: kqv feeds wv_b, so kqv becomes a permuted view of the fused node;
    V stays a view of K (v_in_k = 0) and the result equals the layer built with flash attention."""
    cfg = mla.SMALL
    outs = {}
    for flash in (False, True):
        ctx = mg.Context()
        rng = np.random.default_rng(4)
        w = mla.random_weights(ctx, cfg, rng)
        inp = mla.make_inputs(ctx, cfg, rng, 4, 3, cache_type=F32, scatter=True)
        gf = ctx.new_graph()
        out = mla.build_mla_attn(ctx, gf, cfg, w, inp.cur, inp.inp_pos, inp.k_cache, inp.k_idxs, inp.kq_mask,
                                 flash_attn=flash, cast_f16=False)
        if not flash:
            run = mg.optimize(gf, CPU)
            fa = next(n for n in run.graph.nodes if n.op == "FLASH_ATTN_EXT")
            assert fa.op_params["v_in_k"] == 0 and fa.name == "kqv" and fa.src[3] is inp.kq_mask
            kqv_view = next(n for n in run.graph.nodes if n.name == "kqv (permuted)")
            assert kqv_view.op == "PERMUTE" and kqv_view.view_src is fa
            (unfused,), (fused,) = both(gf, [out])
            assert nmse(fused, unfused) < 1e-6
            outs[flash] = fused
        else:
            mg.compute(gf, CPU)
            outs[flash] = out.numpy()
    assert nmse(outs[False], outs[True]) < 1e-6


def test_plain_soft_max_and_a_scale_before_it():
    """kq = scale(mul_mat(k, q), s) then soft_max(kq) (no mask): FA with scale s."""
    rng = np.random.default_rng(5)
    ctx = mg.Context()
    q = ctx.from_numpy(rng.uniform(-1, 1, (2, 3, 8)).astype(np.float32))     # [8, 3, 2]: D, n_q, H
    k = ctx.from_numpy(rng.uniform(-1, 1, (1, 5, 8)).astype(np.float32))     # [8, 5, 1]
    v = ctx.from_numpy(rng.uniform(-1, 1, (1, 5, 4)).astype(np.float32))     # [4, 5, 1]
    kq = ctx.soft_max(ctx.scale(ctx.mul_mat(k, q), 0.7))
    kqv = ctx.mul_mat(ctx.cont(ctx.transpose(v)), kq).set_name("attn")      # [4, 3, 2]
    gf = graph(kqv)
    run = mg.optimize(gf, CPU)
    fa = next(n for n in run.graph.nodes if n.op == "FLASH_ATTN_EXT")
    assert fa.op_params["scale"] == pytest.approx(0.7) and fa.op_params["has_mask"] == 0 and fa.name == "attn"
    want = mg.reference_compute(gf)[kqv]     # the unfused graph in float64 (saves compiling its CPU program)
    got = mg.compute(kqv, CPU)
    assert got.shape == (2, 3, 4) and nmse(got, want) < 1e-6


def _softmax_node(gf):
    return next(n for n in gf.nodes if n.op == "SOFT_MAX")


def test_softmax_read_twice_is_a_near_miss():
    ctx = mg.Context()
    out = gqa(ctx, np.random.default_rng(6))
    gf = graph(out)
    sm = _softmax_node(gf)
    extra = ctx.sum_rows(sm).set_name("probe")
    gf = graph(out, extra)
    run = mg.optimize(gf, CPU)
    assert "FLASH_ATTN_EXT" not in ops(run.graph)
    msgs = [m for p, s, m in run.log.entries if p == "attention" and s == "near_miss"]
    assert any("SOFT_MAX" in m and "also read by SUM_ROWS 'probe'" in m and "'kq_soft_max'" in m for m in msgs), msgs
    (a, pa), (b, pb) = both(gf, [out, extra])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("what", ["output", "bias", "two_tanh", "not_kq"])
def test_other_near_misses(what):
    rng = np.random.default_rng(7)
    ctx = mg.Context()
    q = ctx.from_numpy(rng.uniform(-1, 1, (2, 3, 8)).astype(np.float32))
    k = ctx.from_numpy(rng.uniform(-1, 1, (1, 5, 8)).astype(np.float32))
    v = ctx.from_numpy(rng.uniform(-1, 1, (1, 5, 4)).astype(np.float32))
    kq = ctx.mul_mat(k, q).set_name("kq")
    want = {"output": "graph output", "bias": "bias", "two_tanh": "second TANH", "not_kq": "mul_mat(k, q)"}[what]
    if what == "bias":
        kq = ctx.scale_bias(kq, 0.5, 0.1)
    elif what == "two_tanh":
        kq = ctx.tanh(ctx.scale(ctx.tanh(kq), 2.0))
    elif what == "not_kq":
        kq = ctx.exp(kq)
    sm = ctx.soft_max_ext(kq, None, 0.25, 0.0).set_name("probs")
    kqv = ctx.mul_mat(ctx.cont(ctx.transpose(v)), sm)
    gf = graph(sm, kqv) if what == "output" else graph(kqv)
    run = mg.optimize(gf, CPU)
    assert "FLASH_ATTN_EXT" not in ops(run.graph)
    msgs = [m for p, s, m in run.log.entries if p == "attention" and s == "near_miss"]
    assert any(want in m for m in msgs), msgs


class NoFlash(CpuBackend):
    name = "CPU-NOFA"

    def supports_op(self, node):
        if node.op == "FLASH_ATTN_EXT":
            return mg.Support(False, "CPU-NOFA refuses FLASH_ATTN_EXT")
        return super().supports_op(node)


def test_backend_without_the_fused_op_is_refused():
    ctx = mg.Context()
    out = gqa(ctx, np.random.default_rng(8))
    gf = graph(out)
    be = NoFlash(2)
    run = mg.optimize(gf, be)
    assert "FLASH_ATTN_EXT" not in ops(run.graph)
    assert any(s == "refused" and "CPU-NOFA does not support FLASH_ATTN_EXT" in m for p, s, m in run.log.entries)


def test_debug_log_prints_near_misses(monkeypatch, capsys):
    monkeypatch.setenv("MINIGRAPH_FUSION_DEBUG", "1")
    ctx = mg.Context()
    out = gqa(ctx, np.random.default_rng(9))
    gf = graph(out)
    gf = graph(out, ctx.sum_rows(_softmax_node(gf)))
    mg.optimize(gf, CPU)
    assert "[fusion] attention: near_miss" in capsys.readouterr().out


def test_cuda_target_fuses_what_its_kernel_takes():
    """On [CUDA, CPU] the region is judged where kqv runs: f32 K/V on CUDA fuse there; a head of
    1100 (over the CUDA kernel's 1024) is refused with its reason; an f16 cache sends kqv (and so
    the fused node) to the CPU. No compute: optimize only asks supports_op."""
    try:
        cuda = mg.backend_cuda_init(0)
    except mg.MinigraphError:
        pytest.skip("numba-cuda is not installed")
    for kw, fused in ((dict(), True), (dict(D=1100, T=1, n_kv=3, kv_size=3), False), (dict(kv_type=F16), True)):
        ctx = mg.Context()
        gf = graph(gqa(ctx, np.random.default_rng(10), **kw))
        run = mg.optimize(gf, [cuda, CPU])
        assert ("FLASH_ATTN_EXT" in ops(run.graph)) == fused, str(run.log)
        if not fused:
            assert any(s == "refused" and "CUDA" in m and "1024" in m for p, s, m in run.log.entries if p == "attention")
