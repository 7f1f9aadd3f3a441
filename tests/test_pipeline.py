"""The re-founded core: zero-copy data in and out, one planning scaffold on every backend, computes
of one graph from several threads, plans kept outside the Graph."""
import gc
import os
import threading

import numpy as np
import pytest

import minigraph as mg
from minigraph.core.cases import cases_for
from minigraph.testing.restricted import RestrictedCpu
from minigraph.tools.conformance import check_case

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _cuda_or_skip():
    try:
        return mg.backend_cuda_init(0)
    except mg.MinigraphError as e:
        pytest.skip(f"no CUDA backend here: {e}")


def _backends():
    yield "cpu", mg.backend_cpu_init()
    yield "sched[cpu-r, cpu]", mg.backend_sched_new([RestrictedCpu({"TRI"}), mg.backend_cpu_init()])


# -- one planning scaffold: the tri(fill(new_tensor)) case on every backend --------------------

FILL_CASE = next(c for c in cases_for("TRI") if "fill_of_new_tensor" in c.vars)


@pytest.mark.parametrize("name,be", list(_backends()), ids=lambda x: x if isinstance(x, str) else "")
def test_fill_of_a_leaf_without_data_runs_on_host_backends(name, be):
    assert check_case(FILL_CASE, be) is None


@pytest.mark.filterwarnings("ignore:Grid size:Warning")
@pytest.mark.parametrize("with_sched", [False, True])
def test_fill_of_a_leaf_without_data_runs_on_cuda(with_sched):
    cuda = _cuda_or_skip()
    be = mg.backend_sched_new([cuda, mg.backend_cpu_init()]) if with_sched else cuda
    assert check_case(FILL_CASE, be) is None


# -- zero-copy in and out ----------------------------------------------------------------------

def _scaled(ctx, t):
    out = ctx.scale(t, 2.0)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    return gf, out


def test_wrapped_numpy_array_is_read_at_each_compute():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ctx = mg.Context()
    x = ctx.from_numpy(a, copy=False)
    assert np.shares_memory(x.numpy(copy=False), a)
    gf, out = _scaled(ctx, x)
    mg.compute(gf)
    np.testing.assert_array_equal(out.numpy(), 2 * a)
    a[1, 2] = 100.0  # the caller's array is the tensor's memory
    mg.compute(gf)
    assert out.numpy()[1, 2] == 200.0


def test_copy_true_stays_the_default():
    a = np.ones((2, 3), np.float32)
    ctx = mg.Context()
    x = ctx.from_numpy(a)
    a[:] = 7
    assert x.numpy()[0, 0] == 1.0 and not np.shares_memory(x.numpy(copy=False), a)


def test_numpy_copy_false_views_share_memory_and_follow_strides():
    ctx = mg.Context()
    x = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    gf, out = _scaled(ctx, x)
    mg.compute(gf)
    v1, v2 = out.numpy(copy=False), out.numpy(copy=False)
    assert np.shares_memory(v1, v2) and v1.base is not None
    t = ctx.transpose(out)  # a permuted view: strided, not copied
    vt = t.numpy(copy=False)
    assert vt.shape == (4, 3) and vt.strides == (4, 16) and np.shares_memory(vt, v1)
    np.testing.assert_array_equal(vt, v1.T)
    v1[0, 0] = -5.0  # writes through
    assert out.numpy()[0, 0] == -5.0


def test_dlpack_export_shares_memory_and_is_freed():
    from minigraph.core import dlpack

    ctx = mg.Context()
    x = ctx.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    gf, out = _scaled(ctx, x)
    mg.compute(gf)
    live = len(dlpack._LIVE)
    d = np.from_dlpack(out)
    assert out.__dlpack_device__() == (1, 0)
    assert np.shares_memory(d, out.numpy(copy=False)) and d.dtype == np.float32
    np.testing.assert_array_equal(d, 2 * np.arange(6, dtype=np.float32).reshape(2, 3))
    dt = np.from_dlpack(ctx.transpose(out))  # strides travel in elements
    np.testing.assert_array_equal(dt, d.T)
    del d, dt
    gc.collect()
    assert len(dlpack._LIVE) == live  # the consumer's deleter released the capsules
    cap = out.__dlpack__()  # an unconsumed capsule frees its tensor when dropped
    assert len(dlpack._LIVE) == live + 1
    del cap
    gc.collect()
    assert len(dlpack._LIVE) == live


def test_from_dlpack_wraps_host_memory():
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    ctx = mg.Context()
    x = ctx.from_dlpack(a)
    assert x.ne == (4, 2, 1, 1) and np.shares_memory(x.numpy(copy=False), a)
    y = ctx.from_dlpack(x)  # a minigraph tensor is a producer too
    assert np.shares_memory(y.numpy(copy=False), a)


def test_zero_copy_refusals():
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError, match="C-contiguous"):
        ctx.from_numpy(np.ones((4, 4), np.float32)[:, ::2], copy=False)
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(mg.MinigraphError, match="read-only"):
        ctx.from_numpy(ro, copy=False)
    with pytest.raises(mg.MinigraphError, match="storage"):
        ctx.from_numpy(np.ones(4), mg.TYPE_F16, copy=False)
    with pytest.raises(mg.MinigraphError, match="not a DLPack producer"):
        ctx.from_dlpack([1.0, 2.0])
    with pytest.raises(mg.MinigraphError, match="no data"):
        ctx.new_tensor_1d(mg.TYPE_F32, 4).numpy(copy=False)
    b = ctx.new_tensor_1d(mg.TYPE_BF16, 4)
    b.set_data(np.ones(4, np.float32))
    with pytest.raises(mg.MinigraphError, match="bf16"):
        b.numpy(copy=False)
    assert not hasattr(ctx.from_numpy(np.ones(2, np.float32)), "__cuda_array_interface__")


@pytest.mark.filterwarnings("ignore:Grid size:Warning")
def test_device_tensor_round_trip_without_host_copy():
    cuda_be = _cuda_or_skip()
    from numba import cuda

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ctx = mg.Context()
    t = cuda_be.tensor_from_device_array(ctx, cuda.to_device(x))
    gf, out = _scaled(ctx, t)
    mg.compute(gf, cuda_be)
    assert mg.tensor_buffer(t).backend is cuda_be and not mg.tensor_buffer(t).is_host
    np.testing.assert_array_equal(np.asarray(cuda_be.tensor_device_array(out).copy_to_host()), 2 * x)
    with pytest.raises(mg.MinigraphError, match="not host"):
        t.numpy(copy=False)


@pytest.mark.skipif(SIM, reason="torch CUDA tensors need a real GPU")
@pytest.mark.filterwarnings("ignore:Grid size:Warning")
def test_torch_cuda_tensor_in_and_out_without_host_copy():
    torch = pytest.importorskip("torch", reason="torch is the DLPack peer of this test (present on the GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    cuda_be = _cuda_or_skip()
    src = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    ctx = mg.Context()
    t = ctx.from_dlpack(src)
    assert t.buffer.data_ptr() + t.data_offs == src.data_ptr()
    gf, out = _scaled(ctx, t)
    torch.cuda.synchronize()
    mg.backend_sched_new([cuda_be, mg.backend_cpu_init()]).graph_compute(gf)
    res = torch.from_dlpack(out)  # the scheduler's CUDA compute buffer, shared
    assert res.is_cuda and res.data_ptr() == out.buffer.data_ptr() + out.data_offs
    torch.testing.assert_close(res, src * 2)
    assert out.__cuda_array_interface__["shape"] == (3, 4) and out.__dlpack_device__() == (2, 0)


# -- threads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("through", ["compute", "sched", "cpu"])
def test_one_graph_computed_from_four_threads(through):
    rng = np.random.default_rng(0)
    ctx = mg.Context()
    xs = ctx.from_numpy(rng.standard_normal((64, 256)).astype(np.float32))
    w = ctx.from_numpy(rng.standard_normal((256, 256)).astype(np.float32))
    y = ctx.soft_max(ctx.mul_mat(w, ctx.silu(xs)))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    want = mg.reference_compute(gf)[y]
    cpu = mg.backend_cpu_init()
    sched = mg.backend_sched_new([cpu])
    run = {"compute": lambda: mg.compute(gf, cpu), "sched": lambda: sched.graph_compute(gf),
           "cpu": lambda: cpu.graph_compute(gf)}[through]
    lock, bad, errors = threading.Lock(), [], []

    def worker():
        try:
            for _ in range(20):
                run()
                with lock:  # read under the same lock as computes of this graph
                    got = y.numpy()
                if not np.allclose(got, want, rtol=1e-4, atol=1e-6):
                    bad.append(1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    from minigraph.memory.binding import graph_lock
    lock = graph_lock(gf)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not bad


# -- plans live outside the Graph --------------------------------------------------------------

def test_plans_are_not_graph_attributes_and_follow_the_version():
    ctx = mg.Context()
    x = ctx.from_numpy(np.ones((2, 3), np.float32))
    gf, out = _scaled(ctx, x)
    before = set(vars(gf))
    cpu = mg.backend_cpu_init()
    sched = mg.backend_sched_new([cpu])
    sched.graph_compute(gf)
    mg.compute(gf, cpu)
    assert set(vars(gf)) == before
    p = cpu._plans.peek(gf)
    mg.compute(gf, cpu)
    assert cpu._plans.peek(gf) is p
    mg.build_forward_expand(gf, ctx.exp(out))  # a new version: a new plan
    mg.compute(gf, cpu)
    assert cpu._plans.peek(gf) is not p


def test_optimize_returns_an_explicit_result():
    ctx = mg.Context()
    x = ctx.from_numpy(np.ones((2, 3), np.float32))
    y = ctx.mul(ctx.silu(x), x).set_name("ffn")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    run = mg.optimize(gf, "cpu")
    assert isinstance(run, mg.Optimized) and run.graph is not gf
    assert [n.op for n in run.graph.nodes] == ["FUSED_ELEMENTWISE"]
    assert [u for u, _ in run.results] == [y] and run.log.entries is not None
    assert mg.optimize(gf, "cpu", fuse=False).graph is gf
    with pytest.raises(mg.MinigraphError, match="unknown backend 'metal'"):
        mg.optimize(gf, "metal")
    with pytest.raises(mg.MinigraphError, match="expected a backend name"):
        mg.compute(gf, backend=None)
    with pytest.raises(mg.MinigraphError, match="expected a Graph"):
        mg.backend_cpu_init().graph_compute(y)
    with pytest.raises(mg.MinigraphError, match="n_threads"):
        mg.backend_cpu_init(n_threads=-1)
