"""The gdn_state_write pass (minigraph/passes/gdn_state_write.py): llama.cpp's copy of a
GATED_DELTA_NET's final state into the recurrent cache becomes the op's own write (its state
destination); the CPY stays in the graph marked written_by and backends skip it. Every form of
the CPU kernel (decode, recurrence, chunked), in place (the slot the state was read from) and
into another slot, gives the unfused graph's bytes; every illegal layout is a logged near miss
that leaves the graph as written."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.core.errors import MinigraphError
from minigraph.core.registry import written_by
from minigraph.models.delta_net import build_delta_net_autoregressive, build_delta_net_fused
from minigraph.ops.gated_delta_net import attach_state_dst, state_dst
from test_cuda_backend import SIM, SKIP, be  # noqa: F401 - `be`: that module's backend fixture
from test_fusion import CPU, ops_of

S, H_K, H_V = 16, 2, 4
PASS = "gdn_state_write"


class Layer:
    """One delta-net layer over a recurrent cache of three state slots: the state read from slot
    1 (a view, or a copy of it), the new state written to `to` with ctx.cpy, the output normed."""

    def __init__(self, builder=build_delta_net_fused, T=1, N=1, kda=0, to=1, copy_in=False, seed=0, K=1,
                 v_in_cache=False, cache_on=None):
        self.ctx = ctx = mg.Context()
        rng = np.random.default_rng(seed)

        def t(ne, lo=-1.0, hi=1.0):
            return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
        self.n = n = S * S * H_V * N
        init = rng.uniform(-0.5, 0.5, size=3 * n).astype(np.float32)
        if cache_on is None:
            self.cache = ctx.from_numpy(init).set_name("cache")
        else:   # resident in a backend's memory
            self.cache = ctx.new_tensor_1d(mg.TYPE_F32, 3 * n).set_name("cache")
            mg.backend_tensor_alloc(cache_on, self.cache)
            mg.backend_tensor_set(self.cache, init)
        q, k = (ctx.l2_norm(t([S, H_K, T, N]), 1e-6) for _ in range(2))
        self.v, g, b = t([S, H_V, T, N]), t([S if kda else 1, H_V, T, N], -3.0, -1e-4), t([1, H_V, T, N], 0.0, 1.0)
        if v_in_cache:   # v read from the slot the state goes to
            self.v = ctx.reshape_4d(ctx.view_1d(self.cache, S * H_V * T * N, 4 * n * to), S, H_V, T, N)
        st = ctx.view_1d(self.cache, n, 4 * n)
        st = ctx.reshape_4d(ctx.cont(st) if copy_in else st, S, S, H_V, N)
        if K == 1:
            self.o, self.s = builder(ctx, q, k, self.v, g, b, st)
        else:
            r = ctx.gated_delta_net(q, k, self.v, g, b, st, K)
            self.o, self.s = ctx.gated_delta_net_attn(r), ctx.gated_delta_net_state(r)
        self.y = ctx.rms_norm(ctx.cont(self.o), 1e-6).set_name("y")
        self.dst = ctx.view_1d(self.cache, n, 4 * n * to)
        self.extra = []

    def graph(self, *first):
        self.c = self.ctx.cpy(self.s, self.dst).set_name("state_write")
        gf = self.ctx.new_graph()
        for t in (*first, self.y, self.c, *self.extra):
            mg.build_forward_expand(gf, t)
        return gf


def run_both(make, backend=CPU):
    """(optimized run, [(y, cache) unfused, (y, cache) fused]): each from a fresh graph, since the
    layer writes its own input cache."""
    out, run = [], None
    for fuse in (False, True):
        layer = make()
        gf = layer.graph()
        if fuse:
            run = mg.optimize(gf, backend)
        mg.compute(gf, backend, fuse=fuse)
        out.append((layer.y.numpy().copy(), layer.cache.numpy().copy()))
    return run, out


def log_of(run, status):
    return [m for p, s, m in run.log.entries if p == PASS and s == status]


@pytest.mark.parametrize("T,N,kda", [(1, 2, 0), (1, 1, 1), (3, 1, 0), (20, 1, 0), (20, 2, 1)])
@pytest.mark.parametrize("to", [1, 2])
def test_state_copy_becomes_the_ops_write(T, N, kda, to):
    """Decode (T=1), recurrence (T=3) and chunked (T=20) forms; to=1: in place over the slot the
    state was read from, to=2: another slot. Bit for bit the unfused graph's output and cache."""
    run, ((y0, c0), (y1, c1)) = run_both(lambda: Layer(T=T, N=N, kda=kda, to=to))
    assert len(log_of(run, "fused")) == 1 and ("in place" in log_of(run, "fused")[0]) == (to == 1)
    gdn = next(n for n in run.nodes if n.op == "GATED_DELTA_NET")
    cpy = next(n for n in run.nodes if n.op == "CPY")
    assert state_dst(gdn) is not None and state_dst(gdn).root.name == "cache"
    assert state_dst(gdn).view_offs == 4 * S * S * H_V * N * to and written_by(cpy) == "GATED_DELTA_NET"
    assert gdn.op_params["fused_from"][-1] == "CPY" and "state_write" in gdn.op_params["fused_names"]
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(c1, c0)
    n = S * S * H_V * N
    before = Layer(T=T, N=N, kda=kda, to=to).cache.numpy()
    assert not np.array_equal(c1[to * n:(to + 1) * n], before[to * n:(to + 1) * n])   # the slot was written


def test_llamas_autoregressive_graph_and_a_copied_in_state():
    """llama.cpp's one-token graph, fused by the autoregressive pass first, then its state copy;
    the state read through a copy of the slot (as build_rs' get_rows gives it)."""
    run, ((y0, c0), (y1, c1)) = run_both(lambda: Layer(build_delta_net_autoregressive, T=1, N=2, copy_in=True))
    assert len(log_of(run, "fused")) == 1 and "in place" not in log_of(run, "fused")[0]
    np.testing.assert_allclose(y1, y0, atol=1e-6)
    np.testing.assert_allclose(c1, c0, atol=1e-6)


def test_the_backends_skip_the_written_by_copy():
    layer = Layer(T=1, N=1)
    gf = layer.graph()
    run = mg.optimize(gf, CPU)
    plan = CPU.plan(run.graph)
    ran = plan.nodes + [s[1] for s in plan.steps if s[0] == "node"]
    assert "CPY" in ops_of(run) and not any(n.op == "CPY" for n in ran)
    assert any(n.op == "GATED_DELTA_NET" for n in ran)


def _near_miss(make, why, *first):
    layer = make()
    gf = layer.graph(*(f(layer) for f in first))
    run = mg.optimize(gf, CPU)
    assert not log_of(run, "fused") and "CPY" in ops_of(run)
    assert not any(n.op == "GATED_DELTA_NET" and state_dst(n) is not None for n in run.nodes)
    misses = log_of(run, "near_miss")
    assert any(why in m for m in misses), misses
    plain = make()
    gp = plain.graph(*(f(plain) for f in first))
    mg.compute(gp, CPU, fuse=False)
    mg.compute(gf, CPU)
    np.testing.assert_allclose(layer.cache.numpy(), plain.cache.numpy(), atol=1e-6)


def test_a_state_the_graph_also_returns_stays_in_the_result():
    def make():
        layer = Layer(T=3)
        layer.extra = [layer.s]
        return layer
    _near_miss(make, "holds the GATED_DELTA_NET's final state")


def test_a_second_reader_of_the_final_state_keeps_the_copy():
    def make():
        layer = Layer(T=3)
        layer.extra = [layer.ctx.sum(layer.s)]
        return layer
    _near_miss(make, "reads the GATED_DELTA_NET's final state too")


def test_more_snapshots_than_the_final_state():
    _near_miss(lambda: Layer(T=3, K=2), "K=2")


def test_a_strided_destination():
    def make():
        layer = Layer(T=1)
        c = layer.ctx
        # the same bytes, reached column-major: the copy's element order is not the memory order
        layer.dst = c.transpose(c.reshape_2d(c.view_1d(layer.cache, layer.n, 8 * layer.n), S * H_V, S))
        layer.s = c.reshape_2d(layer.s, S, S * H_V)
        return layer
    _near_miss(make, "not contiguous f32")


def test_a_destination_that_overlaps_v():
    _near_miss(lambda: Layer(T=1, to=2, v_in_cache=True), "overlaps the op's v")


def test_a_copy_of_part_of_the_state():
    def make():
        layer = Layer(T=1)
        layer.dst = layer.ctx.view_1d(layer.cache, S * H_V, 0)
        layer.s = layer.ctx.view_1d(layer.s, S * H_V, 0)
        return layer
    _near_miss(make, "copies part of")


def test_a_destination_read_between_the_op_and_the_copy():
    """A node ordered between the GATED_DELTA_NET and the CPY reads the slot the copy writes: the
    fused write would come before it, not after."""
    def reader(layer):
        c = layer.ctx
        return c.add(c.sum(c.cont(layer.o)), c.sum(layer.dst))   # o first: the slot's reader comes after the op
    _near_miss(lambda: Layer(T=1, to=2), "reads the state's destination between", reader)


def test_a_computed_destination():
    def make():
        layer = Layer(T=1)
        layer.dst = layer.ctx.scale(layer.ctx.view_1d(layer.cache, layer.n, 0), 2.0)
        return layer
    _near_miss(make, "computed tensor")


def test_attach_state_dst_refusals():
    ctx = mg.Context()
    layer = Layer(T=1)
    gdn = layer.o.root
    with pytest.raises(MinigraphError, match="contiguous f32"):
        attach_state_dst(gdn, ctx.new_tensor_1d(mg.TYPE_F32, 7))
    two = Layer(T=1, K=2)
    with pytest.raises(MinigraphError, match="K == 1"):
        attach_state_dst(two.o.root, ctx.new_tensor_4d(mg.TYPE_F32, S, S, H_V, 1))
    with pytest.raises(MinigraphError, match="without one"):
        attach_state_dst(layer.y, ctx.new_tensor_4d(mg.TYPE_F32, S, S, H_V, 1))


def test_an_optimized_graph_file_keeps_the_fused_write(tmp_path):
    """save_graph of the optimized graph, load_graph, compute: the state destination and the
    written_by mark survive the round trip (the loader rebuilds the node through its builder)."""
    layer = Layer(T=3, to=2)
    gf = layer.graph()
    run = mg.optimize(gf, CPU)
    path = str(tmp_path / "g.json")
    mg.save_graph(run.graph, path)
    loaded = mg.load_graph(path)
    gdn = next(n for n in loaded.nodes if n.op == "GATED_DELTA_NET")
    assert state_dst(gdn) is not None
    assert written_by(next(n for n in loaded.nodes if n.op == "CPY")) == "GATED_DELTA_NET"
    mg.compute(loaded, CPU, fuse=False)
    mg.compute(gf, CPU)
    cache = next(t for t in loaded.leafs if t.name == "cache")
    np.testing.assert_array_equal(cache.numpy(), layer.cache.numpy())


# -- CUDA (a real GPU, or numba-cuda's simulator) --------------------------------------------------
cuda_only = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@cuda_only
@pytest.mark.filterwarnings("ignore:Grid size:Warning")
@pytest.mark.parametrize("kda,to", [(0, 1), (1, 2)])
def test_cuda_decode_writes_the_state(be, kda, to):
    """The decode kernels (the Numba one in the simulator, the CUDA C++ one on a GPU) take the
    state destination: the same bytes as the unfused CUDA graph, in place or into another slot."""
    run, ((y0, c0), (y1, c1)) = run_both(lambda: Layer(T=1, N=2, kda=kda, to=to), be)
    assert len(log_of(run, "fused")) == 1
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(c1, c0)
    _, ((_, cpu), _) = run_both(lambda: Layer(T=1, N=2, kda=kda, to=to))
    np.testing.assert_allclose(c1, cpu, atol=2e-6)


@cuda_only
@pytest.mark.filterwarnings("ignore:Grid size:Warning")
def test_cuda_prefill_without_a_writing_kernel_keeps_the_copy(be):
    """T=3 takes the Numba recurrence, which has no state destination: supports_op refuses the
    fused node, so the pass leaves the copy (a near miss naming why)."""
    layer = Layer(T=3)
    run = mg.optimize(layer.graph(), be)
    assert not log_of(run, "fused")
    assert any("writes a state destination" in m for m in log_of(run, "near_miss"))
    assert state_dst(next(n for n in run.nodes if n.op == "GATED_DELTA_NET")) is None


@cuda_only
@pytest.mark.filterwarnings("ignore:Grid size:Warning")
def test_scheduler_fuses_only_where_the_cache_lives(be):
    """CUDA first, the CPU after: a cache in host memory stays the CPU's, so the GATED_DELTA_NET
    that runs on CUDA keeps its copy (near miss); a cache resident on CUDA is written there by the
    op (the scheduler places the op with the memory it writes)."""
    cpu = mg.backend_cpu_init(1)
    sched = mg.backend_sched_new([be, cpu])
    host = Layer(T=1, N=2)
    gf = host.graph()
    run = mg.optimize(gf, sched)
    assert not log_of(run, "fused") and any("lives on CPU" in m for m in log_of(run, "near_miss"))
    sched.graph_compute(gf)
    want = host.cache.numpy().copy()
    resident = Layer(T=1, N=2, cache_on=be)
    gr = resident.graph()
    run = mg.optimize(gr, sched)
    assert len(log_of(run, "fused")) == 1
    sched.graph_compute(gr)
    np.testing.assert_allclose(mg.backend_tensor_get(resident.cache), want, atol=2e-6)
    gdn = next(n for n in run.nodes if n.op == "GATED_DELTA_NET")
    assert sched.get_tensor_backend(gdn) is be


@cuda_only
@pytest.mark.gpu
@pytest.mark.skipif(SIM, reason="the tensor-core chunked form runs on a real GPU only")
@pytest.mark.parametrize("kda,to", [(0, 1), (1, 2)])
def test_cuda_tensor_core_prefill_writes_the_state(be, kda, to):
    """T=80 takes the CUDA C++ chunked form on an sm_80+ GPU: its state pass writes the state
    destination (in place or into another slot), the same bytes as the unfused graph."""
    from minigraph.backends.cuda import gdn_fast
    if not gdn_fast.tensor_cores():
        pytest.skip("no tensor-core GATED_DELTA_NET kernels on this GPU")
    run, ((y0, c0), (y1, c1)) = run_both(lambda: Layer(T=80, N=2, kda=kda, to=to), be)
    assert len(log_of(run, "fused")) == 1
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(c1, c0)
