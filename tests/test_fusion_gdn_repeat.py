"""The gdn_repeat pass (minigraph/passes/gdn_repeat.py): q/k REPEATs that tile heads into a
GATED_DELTA_NET are dropped and the op reads the H_k-head tensors; llama.cpp's interleaved
Qwen3-Next repeat too, the node then mapping heads interleaved (gated_delta_net_set_bcast) where
the backend supports it (CPU and CUDA); every other layout (repeated sequences, one of q/k only,
a backend without the map) is a logged near miss that leaves the graph as written. Results always equal
the unfused graph's."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.cpu.backend import CpuBackend
from minigraph.models.delta_net import (build_delta_net_autoregressive, build_delta_net_chunking,
                                        build_delta_net_fused)
from test_fusion import CPU, inputs, ops_of, run_both

S = 16


def repeat_heads(ctx, x, H_v, form):
    """x [S, H_k, T, N] up to H_v heads: "tiled" (Qwen3.5's ggml_repeat_4d: head h = h % H_k),
    "interleaved" (Qwen3-Next: reshape, repeat_4d, reshape: head h = h // r)."""
    S_, H_k, T, N = x.ne
    if form == "tiled":
        return ctx.repeat_4d(x, S_, H_v, T, N)
    if form == "repeat":
        return ctx.repeat(x, ctx.new_tensor_4d(mg.TYPE_F32, S_, H_v, T, N))
    y = ctx.repeat_4d(ctx.reshape_4d(x, S_, 1, H_k, T * N), S_, H_v // H_k, H_k, T * N)
    return ctx.reshape_4d(y, S_, H_v, T, N)


def gqa_graph(builder, H_k, H_v, T, N, form, seed=0):
    ctx = mg.Context()
    q, k, *rest = inputs(ctx, seed, S, H_k, H_v, T, N, 0)
    o, s = builder(ctx, repeat_heads(ctx, q, H_v, form), repeat_heads(ctx, k, H_v, form), *rest)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, s)
    return gf, (o, s)


def log_of(run, status):
    return [m for p, s, m in run.log.entries if p == "gdn_repeat" and s == status]


def assert_same(gf, outs, backend=CPU, exact=False):
    plain, fused = run_both(gf, outs, backend)
    for a, b in zip(plain, fused):
        if exact:
            np.testing.assert_array_equal(b, a)
        else:
            np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("builder,T,N", [(build_delta_net_chunking, 20, 1), (build_delta_net_chunking, 9, 2),
                                         (build_delta_net_autoregressive, 1, 2)])
@pytest.mark.parametrize("form", ["tiled", "repeat"])
def test_tiled_repeat_is_absorbed(builder, T, N, form):
    gf, outs = gqa_graph(builder, 2, 4, T, N, form)
    assert ops_of(gf).count("REPEAT") >= 2
    run = mg.optimize(gf, CPU)
    assert "REPEAT" not in ops_of(run) and ops_of(run).count("GATED_DELTA_NET") == 1
    gdn = next(n for n in run.nodes if n.op == "GATED_DELTA_NET")
    assert gdn.src[0].ne == (S, 2, T, N) and gdn.src[1].ne == (S, 2, T, N) and gdn.src[2].ne[1] == 4
    assert gdn.op_params["fused_from"][-2:] == ["REPEAT", "REPEAT"] and len(log_of(run, "fused")) == 1
    assert_same(gf, outs)


def test_direct_fused_op_reads_the_unrepeated_heads_bit_for_bit():
    """A GATED_DELTA_NET built by hand on repeated q/k: same arithmetic on the same values."""
    gf, outs = gqa_graph(build_delta_net_fused, 2, 6, 7, 1, "tiled")
    run = mg.optimize(gf, CPU)
    assert ops_of(run) == ["L2_NORM", "L2_NORM", "GATED_DELTA_NET", "VIEW", "VIEW"]
    assert_same(gf, outs, exact=True)


@pytest.mark.parametrize("builder,T,N", [(build_delta_net_chunking, 12, 1), (build_delta_net_chunking, 70, 2),
                                         (build_delta_net_autoregressive, 1, 2), (build_delta_net_fused, 5, 1)])
def test_interleaved_repeat_is_absorbed_with_the_interleaved_head_map(builder, T, N):
    """llama.cpp's Qwen3-Next repeat maps value head h to q/k head h // r; the op's default map
    is h % H_k, so the new node takes bcast 1 (GDN_BCAST_INTERLEAVED)."""
    gf, outs = gqa_graph(builder, 2, 6, T, N, "interleaved")
    run = mg.optimize(gf, CPU)
    assert "REPEAT" not in ops_of(run)
    gdn = next(n for n in run.nodes if n.op == "GATED_DELTA_NET")
    assert gdn.src[0].ne[1] == 2 and mg.gated_delta_net_get_bcast(gdn) == mg.GDN_BCAST_INTERLEAVED
    assert "interleaved (bcast 1)" in log_of(run, "fused")[0]
    assert_same(gf, outs)


def test_interleaved_repeat_to_fewer_heads_than_the_values_is_a_near_miss():
    """q/k repeated interleaved to 4 heads, the op then tiling them over 8 value heads: value head
    h reads (h % 4) // 2, which neither head map is."""
    ctx = mg.Context()
    q, k, *rest = inputs(ctx, 4, S, 2, 8, 6, 1, 0)
    out = ctx.gated_delta_net(repeat_heads(ctx, q, 4, "interleaved"), repeat_heads(ctx, k, 4, "interleaved"), *rest, 1)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    run = mg.optimize(gf, CPU)
    assert ops_of(run).count("REPEAT") == 2
    assert "needs the repeat to make every value head" in log_of(run, "near_miss")[0]
    assert_same(gf, (out,), exact=True)


def test_interleaved_repeat_of_one_head_is_absorbed():
    """With H_k == 1 both mappings send every value head to head 0."""
    gf, outs = gqa_graph(build_delta_net_fused, 1, 3, 5, 1, "interleaved")
    run = mg.optimize(gf, CPU)
    assert "REPEAT" not in ops_of(run)
    assert next(n for n in run.nodes if n.op == "GATED_DELTA_NET").src[0].ne == (S, 1, 5, 1)
    assert_same(gf, outs, exact=True)


def test_repeated_sequences_are_a_near_miss_unless_one():
    """REPEAT tiles sequences (n % N_x); the op maps value sequence n to n // (N / N_x)."""
    for n_x, absorbed in ((2, False), (1, True)):
        ctx = mg.Context()
        q, k, *rest = inputs(ctx, 3, S, 2, 4, 3, 4, 0)
        q, k = (ctx.l2_norm(ctx.from_numpy(np.random.default_rng(i).standard_normal((n_x, 3, 2, S)).astype(np.float32)), 1e-6)
                for i in (1, 2))
        out = ctx.gated_delta_net(ctx.repeat_4d(q, S, 4, 3, 4), ctx.repeat_4d(k, S, 4, 3, 4), *rest, 1)
        gf = ctx.new_graph()
        mg.build_forward_expand(gf, out)
        run = mg.optimize(gf, CPU)
        assert ("REPEAT" not in ops_of(run)) == absorbed
        assert bool(log_of(run, "near_miss")) != absorbed
        if not absorbed:
            assert "sequences" in log_of(run, "near_miss")[0]
        assert_same(gf, (out,), exact=True)


def test_only_q_repeated_is_a_near_miss():
    ctx = mg.Context()
    q, k, *rest = inputs(ctx, 4, S, 2, 4, 3, 1, 0)
    k4 = ctx.l2_norm(ctx.from_numpy(np.random.default_rng(5).standard_normal((1, 3, 4, S)).astype(np.float32)), 1e-6)
    out = ctx.gated_delta_net(ctx.repeat_4d(q, S, 4, 3, 1), k4, *rest, 1)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    run = mg.optimize(gf, CPU)
    assert "REPEAT" in ops_of(run) and "only q" in log_of(run, "near_miss")[0]


class NoGqa(CpuBackend):
    """A backend whose GATED_DELTA_NET needs H_k == H_v."""
    name = "CPU-noGQA"

    def __init__(self):
        super().__init__(1)

    def supports_op(self, node):
        if node.op == "GATED_DELTA_NET" and node.src[0].ne[1] != node.src[2].ne[1]:
            return mg.Support(False, "GQA refused")
        return super().supports_op(node)


def test_rewrite_respects_supports_op():
    gf, outs = gqa_graph(build_delta_net_fused, 2, 4, 4, 1, "tiled")
    be = NoGqa()
    run = mg.optimize(gf, be)
    assert ops_of(run).count("REPEAT") == 2
    assert "GQA refused" in log_of(run, "near_miss")[0]
    assert_same(gf, outs, be, exact=True)


def test_shared_repeat_stays_for_its_other_reader():
    ctx = mg.Context()
    q, k, *rest = inputs(ctx, 6, S, 2, 4, 3, 1, 0)
    rq, rk = ctx.repeat_4d(q, S, 4, 3, 1), ctx.repeat_4d(k, S, 4, 3, 1)
    out = ctx.gated_delta_net(rq, rk, *rest, 1)
    other = ctx.sum(rq)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    mg.build_forward_expand(gf, other)
    run = mg.optimize(gf, CPU)
    assert ops_of(run).count("REPEAT") == 1
    gdn = next(n for n in run.nodes if n.op == "GATED_DELTA_NET")
    assert gdn.src[0].ne[1] == 2
    assert_same(gf, (out, other), exact=True)


@pytest.mark.parametrize("T", [1, 2])
def test_cuda_backend_absorbs_the_interleaved_repeat(T):
    """On CUDA too (the simulator in CI): decode and the recurrence read q/k head h // r."""
    from test_cuda_backend import SKIP
    if SKIP is not None:   # no numba-cuda: neither a GPU nor the simulator to run it on (SKIP says which)
        pytest.skip(SKIP)
    be = mg.backend_cuda_init(0)
    gf, outs = gqa_graph(build_delta_net_fused, 2, 4, T, 1, "interleaved")
    run = mg.optimize(gf, be)
    assert "REPEAT" not in ops_of(run) and "interleaved (bcast 1)" in log_of(run, "fused")[0]
    assert_same(gf, outs, be)


def test_cuda_backend_absorbs_too():
    """On the CUDA backend (the simulator in CI): the repeat goes, the results stay."""
    from test_cuda_backend import SKIP
    if SKIP is not None:   # no numba-cuda: neither a GPU nor the simulator to run it on (SKIP says which)
        pytest.skip(SKIP)
    be = mg.backend_cuda_init(0)
    gf, outs = gqa_graph(build_delta_net_fused, 2, 4, 2, 1, "tiled")
    run = mg.optimize(gf, be)
    assert "REPEAT" not in ops_of(run) and log_of(run, "fused")
    assert_same(gf, outs, be)
    want = mg.reference_compute(gf)
    for t in outs:
        np.testing.assert_allclose(t.numpy(), want[t], atol=2e-5)
