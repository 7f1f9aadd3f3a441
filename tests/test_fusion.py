"""Fusion passes (minigraph/optimize.py): fused and unfused graphs agree; near misses, refused ops and
intermediates read from outside leave the graph alone; the input graph never changes."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.cpu.backend import CpuBackend
from minigraph.models.delta_net import build_delta_net_autoregressive, build_delta_net_chunking

CPU = mg.backend_cpu_init(2)


class Refusing(CpuBackend):
    name = "CPU-R"

    def __init__(self, refuse):
        super().__init__(2)
        self.refuse = set(refuse)

    def supports_op(self, node):
        if node.op in self.refuse:
            return mg.Support(False, f"CPU-R refuses {node.op}")
        return super().supports_op(node)


class Tweaked:
    """A context that builds what it is told, except: every reshape_4d gets a cont and a name (a
    graph "written by anyone"), and the `nth` call of `op` is swapped for `swap` (a near miss)."""

    def __init__(self, ctx, op=None, nth=0, swap=None, noise=False):
        self.ctx, self.op, self.nth, self.swap, self.noise, self.calls = ctx, op, nth, swap, noise, 0

    def __getattr__(self, name):
        fn = getattr(self.ctx, name)
        if name == self.op:
            def counted(*a):
                self.calls += 1
                return (self.swap or fn)(*a) if self.calls == self.nth else fn(*a)
            return counted
        if name == "reshape_4d" and self.noise:
            return lambda *a: self.ctx.cont(fn(*a)).set_name(f"x{self.calls}")
        return fn


def inputs(ctx, seed, S, H_k, H_v, T, N, kda):
    rng = np.random.default_rng(seed)

    def t(ne, lo=-1.0, hi=1.0):
        return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
    q = ctx.l2_norm(t([S, H_k, T, N]), 1e-6)
    k = ctx.l2_norm(t([S, H_k, T, N]), 1e-6)
    return (q, k, t([S, H_v, T, N]), t([S if kda else 1, H_v, T, N], -3.0, -1e-4), t([1, H_v, T, N], 0.0, 1.0),
            t([S, S, H_v, N], -0.5, 0.5))


def layer(ctx, builder, args, extra_outputs=()):
    """The delta net followed by downstream consumers (a norm of the output, the state written back)."""
    o, s = builder(ctx, *args)
    y = ctx.rms_norm(ctx.cont(o), 1e-6)
    gf = ctx.new_graph()
    for t in (y, s, o, *extra_outputs):
        mg.build_forward_expand(gf, t)
    return gf, (y, s, o)


def run_both(gf, outs, backend=CPU):
    snapshot = [(n.op, tuple(id(s) for s in n.src), n.ne) for n in gf.nodes]
    mg.compute(gf, backend, fuse=False)
    plain = [t.numpy().copy() for t in outs]
    mg.compute(gf, backend)
    fused = [t.numpy().copy() for t in outs]
    assert snapshot == [(n.op, tuple(id(s) for s in n.src), n.ne) for n in gf.nodes]  # input graph unchanged
    return plain, fused


def ops_of(g):
    return [n.op for n in g.nodes]


@pytest.mark.parametrize("kda", [0, 1])
@pytest.mark.parametrize("T,N", [(1, 1), (5, 2), (33, 1), (64, 1), (65, 2), (100, 1)])
def test_chunked_delta_net_fuses_and_agrees(kda, T, N):
    ctx = mg.Context()
    gf, outs = layer(ctx, build_delta_net_chunking, inputs(ctx, T + 7 * N + kda, 16, 2, 2, T, N, kda))
    run = mg.optimize(gf, CPU)
    assert ops_of(run).count("GATED_DELTA_NET") == 1 and "SOLVE_TRI" not in ops_of(run)
    gdn = next(n for n in run.nodes if n.op == "GATED_DELTA_NET")
    assert len(gdn.op_params["fused_from"]) > 60 and "SOLVE_TRI" in gdn.op_params["fused_from"]
    assert len(run) < 15 < 60 < len(gf)
    plain, fused = run_both(gf, outs)
    for a, b in zip(plain, fused):
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)


def test_chunked_written_by_anyone_with_other_heads_and_chunk_size():
    """Extra conts and names around every reshape, H = 3, S = 8, chunk size 32: still found."""
    ctx = mg.Context()
    args = inputs(ctx, 3, 8, 3, 3, 40, 2, 0)
    o, s = build_delta_net_chunking(Tweaked(ctx, noise=True), *args, chunk_size=32)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, s)
    assert "GATED_DELTA_NET" in ops_of(mg.optimize(gf, CPU))
    plain, fused = run_both(gf, (o, s))
    for a, b in zip(plain, fused):
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)


def test_two_layers_fuse_twice():
    ctx = mg.Context()
    args = inputs(ctx, 1, 16, 2, 2, 20, 1, 0)
    o1, s1 = build_delta_net_chunking(ctx, *args)
    o2, s2 = build_delta_net_chunking(ctx, ctx.l2_norm(ctx.cont(o1), 1e-6), *args[1:5], s1)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o2)
    mg.build_forward_expand(gf, s2)
    assert ops_of(mg.optimize(gf, CPU)).count("GATED_DELTA_NET") == 2
    plain, fused = run_both(gf, (o2, s2))
    for a, b in zip(plain, fused):
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("op,nth,swap", [("exp", 3, "sigmoid"), ("tri", 2, None), ("neg", 2, "abs")])
def test_near_miss_is_left_alone(op, nth, swap):
    ctx = mg.Context()
    tw = Tweaked(ctx, op, nth)
    if swap:
        tw.swap = getattr(ctx, swap)
    else:  # tri: a different triangle type
        tw.swap = lambda a, t: ctx.tri(a, mg.TRI_TYPE_UPPER)
    o, s = build_delta_net_chunking(tw, *inputs(ctx, 5, 16, 2, 2, 10, 1, 0))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, s)
    run = mg.optimize(gf, CPU)
    assert "GATED_DELTA_NET" not in ops_of(run) and "SOLVE_TRI" in ops_of(run)
    assert any(status == "near_miss" for p, status, _ in run.log.entries if p == "delta_net_chunked")
    plain, fused = run_both(gf, (o, s))
    for a, b in zip(plain, fused):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_rewrite_respects_supports_op():
    ctx = mg.Context()
    gf, outs = layer(ctx, build_delta_net_chunking, inputs(ctx, 2, 16, 2, 2, 9, 1, 0))
    r = Refusing({"GATED_DELTA_NET", "FUSED_ELEMENTWISE"})
    run = mg.optimize(gf, r)
    assert run.graph is gf and "SOLVE_TRI" in ops_of(run)
    assert any("CPU-R does not support GATED_DELTA_NET" in m for _, s, m in run.log.entries if s == "refused")
    plain, fused = run_both(gf, outs, r)
    for a, b in zip(plain, fused):
        np.testing.assert_array_equal(a, b)
    # the scheduler: the region runs on the first backend that supports its anchor
    sched = mg.backend_sched_new([r, CPU])
    assert "GATED_DELTA_NET" not in ops_of(mg.optimize(gf, sched))
    assert "GATED_DELTA_NET" in ops_of(mg.optimize(gf, mg.backend_sched_new([CPU])))


def test_intermediate_read_outside_is_left_alone():
    ctx = mg.Context()
    args = inputs(ctx, 4, 16, 2, 2, 12, 1, 0)
    o, s = build_delta_net_chunking(ctx, *args)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, s)
    solve = next(n for n in gf.nodes if n.op == "SOLVE_TRI")
    mg.build_forward_expand(gf, ctx.sum(solve))  # someone reads an intermediate
    assert "GATED_DELTA_NET" not in ops_of(mg.optimize(gf, CPU))
    assert any("read from outside" in m for *_, m in mg.optimize(gf, CPU).log.entries)


@pytest.mark.parametrize("gqa,N", [(1, 1), (2, 3)])
def test_autoregressive_gda_fuses(gqa, N):
    ctx = mg.Context()
    gf, outs = layer(ctx, build_delta_net_autoregressive, inputs(ctx, gqa + N, 16, 2, 2 * gqa, 1, N, 0))
    run = mg.optimize(gf, CPU)
    assert ops_of(run).count("GATED_DELTA_NET") == 1 and "SUM_ROWS" not in ops_of(run)
    plain, fused = run_both(gf, outs)
    for a, b in zip(plain, fused):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-4)


def test_autoregressive_kda_is_not_the_fused_math():
    ctx = mg.Context()
    gf, outs = layer(ctx, build_delta_net_autoregressive, inputs(ctx, 9, 16, 2, 2, 1, 2, 1))
    assert "GATED_DELTA_NET" not in ops_of(mg.optimize(gf, CPU))
    assert any("KDA" in m for *_, m in mg.optimize(gf, CPU).log.entries)


def gate_chain(ctx, rng, H=6, T=40, N=2):
    a = ctx.from_numpy(rng.standard_normal((N, T, H)).astype(np.float32))
    dt = ctx.from_numpy(rng.standard_normal(H).astype(np.float32))
    A = ctx.from_numpy(-np.abs(rng.standard_normal(H)).astype(np.float32))
    b = ctx.from_numpy(rng.standard_normal((N, T, H)).astype(np.float32))
    g = ctx.mul(ctx.softplus(ctx.add(a, dt)), A)       # Qwen3-Next's gate
    beta = ctx.sigmoid(ctx.scale(b, 0.5))
    return ctx.exp(g), beta


def test_elementwise_chain_is_one_kernel_and_bit_identical():
    ctx = mg.Context()
    decay, beta = gate_chain(ctx, np.random.default_rng(0))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, decay)
    mg.build_forward_expand(gf, beta)
    run = mg.optimize(gf, CPU)
    assert ops_of(run) == ["FUSED_ELEMENTWISE", "FUSED_ELEMENTWISE"]
    assert sorted(n.op_params["fused_from"] for n in run.nodes) == [["ADD", "SOFTPLUS", "MUL", "EXP"], ["SCALE", "SIGMOID"]]
    plain, fused = run_both(gf, (decay, beta))
    for a, b in zip(plain, fused):
        np.testing.assert_array_equal(a, b)
    ref = mg.reference_compute(gf)
    np.testing.assert_allclose(decay.numpy(), ref[decay], rtol=1e-5)


def test_elementwise_keeps_shared_and_output_intermediates():
    ctx = mg.Context()
    rng = np.random.default_rng(1)
    x = ctx.from_numpy(rng.standard_normal((4, 9)).astype(np.float32))
    e = ctx.exp(x)                     # read twice: by neg and by the graph (an output)
    y = ctx.add(ctx.neg(e), e)
    z = ctx.sqr(ctx.sum_rows(y))       # a reduction ends the chain
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, z)
    mg.build_forward_expand(gf, e)
    run = mg.optimize(gf, CPU)
    fused = [n for n in run.nodes if n.op == "FUSED_ELEMENTWISE"]
    assert len(fused) == 1 and fused[0].op_params["fused_from"] == ["NEG", "ADD"]
    plain, out = run_both(gf, (z, e))
    for a, b in zip(plain, out):
        np.testing.assert_array_equal(a, b)


def test_flags_turn_fusion_off(monkeypatch):
    ctx = mg.Context()
    decay, _ = gate_chain(ctx, np.random.default_rng(2))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, decay)
    monkeypatch.setenv("MINIGRAPH_FUSION", "0")
    assert mg.optimize(gf, CPU).graph is gf
    monkeypatch.setenv("MINIGRAPH_FUSION", "1")
    assert mg.optimize(gf, CPU).graph is not gf and mg.optimize(gf, CPU, fuse=False).graph is gf


def test_debug_log_prints_near_misses(monkeypatch, capsys):
    monkeypatch.setenv("MINIGRAPH_FUSION_DEBUG", "1")
    ctx = mg.Context()
    tw = Tweaked(ctx, "exp", 1, ctx.sigmoid)
    o, s = build_delta_net_chunking(tw, *inputs(ctx, 6, 16, 2, 2, 7, 1, 0))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.optimize(gf, CPU)
    out = capsys.readouterr().out
    assert "[fusion] delta_net_chunked: near_miss" in out and "SIGMOID" in out


def test_sched_runs_the_fused_graph():
    ctx = mg.Context()
    gf, outs = layer(ctx, build_delta_net_chunking, inputs(ctx, 8, 16, 2, 2, 30, 1, 1))
    mg.compute(gf, CPU, fuse=False)
    plain = [t.numpy().copy() for t in outs]
    sched = mg.backend_sched_new([CPU])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(outs[0]) is CPU
    for a, t in zip(plain, outs):
        np.testing.assert_allclose(t.numpy(), a, atol=3e-5, rtol=1e-4)


def test_sched_first_run_binds_a_permuted_output():
    """The user's attention output is a permute of a view of memory the fused graph never
    allocates: the first (fused) run through the scheduler must still give it its values."""
    ctx = mg.Context()
    args = inputs(ctx, 9, 16, 2, 2, 70, 1, 0)
    o, s = build_delta_net_chunking(ctx, *args)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, o)
    mg.build_forward_expand(gf, s)
    sched = mg.backend_sched_new([CPU])
    sched.graph_compute(gf)
    assert len(mg.optimize(gf, sched)) < 10
    ref = mg.reference_compute(gf)
    np.testing.assert_allclose(o.numpy(), ref[o], atol=3e-5)
    np.testing.assert_allclose(s.numpy(), ref[s], atol=3e-5)
