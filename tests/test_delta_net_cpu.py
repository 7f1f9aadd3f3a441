"""llama.cpp's delta-net graphs, transcribed with minigraph's API, on minigraph's CPU backend:
the chunked (padded) and autoregressive decompositions against the fused GATED_DELTA_NET."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.models.delta_net import (build_delta_net_autoregressive, build_delta_net_chunking,
                                        build_delta_net_fused)

CPU = mg.backend_cpu_init(2)


def _inputs(ctx, rng, S, H_k, H_v, T, N, kda):
    def t(ne, lo=-1.0, hi=1.0):
        return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
    q = ctx.l2_norm(t([S, H_k, T, N]), 1e-6)
    k = ctx.l2_norm(t([S, H_k, T, N]), 1e-6)
    v = t([S, H_v, T, N])
    g = t([S if kda else 1, H_v, T, N], -3.0, -1e-4)
    b = t([1, H_v, T, N], 0.0, 1.0)
    s = t([S, S, H_v, N], -0.5, 0.5)
    return q, k, v, g, b, s


def _run(*tensors):
    gf = tensors[0].ctx.new_graph()
    for t in tensors:
        mg.build_forward_expand(gf, t)
    CPU.graph_compute(gf)
    ref = mg.reference_compute(gf)
    return [t.numpy() for t in tensors], [ref[t] for t in tensors], gf


@pytest.mark.parametrize("kda", [0, 1])
@pytest.mark.parametrize("T,N", [(1, 1), (4, 2), (33, 1), (63, 1), (64, 2), (65, 1), (100, 2)])
def test_chunked_graph_matches_fused_op(kda, T, N):
    ctx = mg.Context()
    args = _inputs(ctx, np.random.default_rng(T * 10 + N + kda), 16, 2, 2, T, N, kda)
    o_c, s_c = build_delta_net_chunking(ctx, *args)
    o_f, s_f = build_delta_net_fused(ctx, *args)
    (oc, sc, of, sf), (roc, rsc, rof, rsf), gf = _run(o_c, s_c, o_f, s_f)
    assert np.allclose(oc, of, atol=2e-5) and np.allclose(sc, sf, atol=2e-5)
    assert np.allclose(of, rof, atol=2e-5) and np.allclose(sf, rsf, atol=2e-5)
    assert np.allclose(roc, rof, atol=1e-9) and np.allclose(rsc, rsf, atol=1e-9)  # exact in float64
    assert len(gf) > 60  # the decomposition really is the long graph


@pytest.mark.parametrize("gqa,N", [(1, 1), (2, 1), (2, 3)])
def test_autoregressive_graph_matches_fused_op_gda(gqa, N):
    ctx = mg.Context()
    args = _inputs(ctx, np.random.default_rng(gqa + N), 16, 2, 2 * gqa, 1, N, 0)
    o_a, s_a = build_delta_net_autoregressive(ctx, *args)
    o_f, s_f = build_delta_net_fused(ctx, *args)
    (oa, sa, of, sf), _, _ = _run(o_a, s_a, o_f, s_f)
    assert np.allclose(oa, of, atol=2e-5) and np.allclose(sa, sf, atol=2e-5)


def test_autoregressive_kda_decays_along_the_value_index():
    """llama.cpp's autoregressive graph reshapes a KDA gate to [1, S, H, n]: the decay lands on the
    value index, the fused op's on the key index. Pinned so a fix upstream shows up."""
    ctx = mg.Context()
    args = _inputs(ctx, np.random.default_rng(7), 16, 2, 2, 1, 2, 1)
    o_a, s_a = build_delta_net_autoregressive(ctx, *args)
    o_f, s_f = build_delta_net_fused(ctx, *args)
    (oa, sa, of, sf), _, _ = _run(o_a, s_a, o_f, s_f)
    assert np.abs(sa - sf).max() > 1e-2


def test_fused_snapshot_views():
    ctx = mg.Context()
    args = _inputs(ctx, np.random.default_rng(3), 8, 1, 2, 5, 1, 0)
    out = ctx.gated_delta_net(*args, 3)
    attn, last, back2 = ctx.gated_delta_net_attn(out), ctx.gated_delta_net_state(out, 0), ctx.gated_delta_net_state(out, 2)
    # the state two tokens back equals the final state of the op run on the first T-2 tokens
    ctx2 = mg.Context()
    a2 = _inputs(ctx2, np.random.default_rng(3), 8, 1, 2, 5, 1, 0)
    short = [ctx2.view_4d(t, t.ne[0], t.ne[1], 3, t.ne[3], t.nb[1], t.nb[2], t.nb[3], 0) for t in a2[:5]]
    out2 = ctx2.gated_delta_net(*[ctx2.cont(t) for t in short], a2[5], 1)
    (at, la, b2), _, _ = _run(attn, last, back2)
    (s2,), _, _ = _run(ctx2.gated_delta_net_state(out2, 0))
    assert at.shape == (5, 2, 8) and la.shape == (2, 8, 8)
    assert np.allclose(b2, s2, atol=1e-5)
