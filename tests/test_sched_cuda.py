"""The scheduler over real CUDA backends (the simulator in CI): [CUDA, CPU] places what the GPU
runs on it and falls back to the CPU for what it refuses (f16 here: the CUDA kernels are f32),
a state that lives in device memory keeps the writes into it, and two CUDA backends share one
graph with copies between them (devices 0 and 1 when there are two GPUs, else two backends on
device 0, one of them refusing chosen ops). Several devices: backend_cuda_init refuses an index
that does not exist, a row-split weight over two CUDA backends and the two-layer delta-net model
split over them (tensor_split) equal the one-GPU run (docs/multi_device.md)."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.testing.restricted import restricted_cuda
from test_cuda_backend import SKIP, be  # noqa: F401 - `be`: that module's CUDA backend fixture

pytestmark = [pytest.mark.skipif(SKIP is not None, reason=SKIP or ""),
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]

F32, F16 = mg.TYPE_F32, mg.TYPE_F16


@pytest.fixture(scope="module")
def cpu():
    return mg.backend_cpu_init(1)


def rand(ctx, name, *shape, seed=0):
    rng = np.random.default_rng(abs(hash(name)) % 1000 + seed)
    return ctx.from_numpy(rng.standard_normal(shape).astype(np.float32)).set_name(name)


def check_ref(gf, t, tol=1e-4):
    np.testing.assert_allclose(t.numpy(), mg.reference_compute(gf)[t], rtol=tol, atol=tol)


def test_gpu_first_cpu_for_what_it_refuses(be, cpu):
    """h = silu(W16 @ rms_norm(x)) + b: the f16 matmul falls back, the rest stays on the GPU."""
    ctx = mg.Context()
    x, b = rand(ctx, "x", 3, 8), rand(ctx, "b", 3, 6)
    w16 = ctx.new_tensor_2d(F16, 8, 6).set_name("w16")
    w16.set_data(np.random.default_rng(1).standard_normal((6, 8)).astype(np.float16))
    xn = ctx.rms_norm(x, 1e-6).set_name("xn")
    mm = ctx.mul_mat(w16, xn).set_name("mm")
    h = ctx.add(ctx.silu(mm).set_name("act"), b).set_name("h")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, h)
    sched = mg.backend_sched_new([be, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(xn) is be and sched.get_tensor_cause(xn)[0] == "supported"
    assert sched.get_tensor_backend(mm) is cpu
    tag, detail = sched.get_tensor_cause(mm)
    assert tag == "fallback" and "f32 only" in detail, (tag, detail)
    assert sched.get_tensor_backend(h) is be
    rep = sched.report()
    assert [s["backend"] for s in rep["splits"]] == ["CUDA0", "CPU", "CUDA0"]
    assert rep["buffer_size"]["CUDA0"] > 0 and sched.get_buffer_size(be) == rep["buffer_size"]["CUDA0"]
    check_ref(gf, h, tol=2e-3)  # f16 weights: the reference rounds differently
    sched.graph_compute(gf)     # a second run reuses the plan and gives the same values
    check_ref(gf, h, tol=2e-3)


def test_state_in_device_memory_keeps_the_write(cpu):
    """A recurrent state allocated on the GPU: the CPU computes the update (the GPU backend
    refuses TANH), the write into the state stays with its buffer and runs on the GPU."""
    g = restricted_cuda({"TANH"}, name="CUDA0")
    ctx = mg.Context()
    state = ctx.new_tensor_2d(F32, 6, 4).set_name("ssm_state")
    mg.backend_tensor_alloc(g, state)
    mg.backend_tensor_set(state, np.full((4, 6), 7.0, np.float32))
    x = rand(ctx, "x", 4, 6)
    new = ctx.tanh(x).set_name("new")
    out = ctx.set_inplace(state, new, state.nb[1], state.nb[2], state.nb[3], 0).set_name("state_set")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    sched = mg.backend_sched_new([g, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(out) is g and sched.get_tensor_cause(out)[0] == "pre-allocated dst"
    assert sched.get_tensor_backend(new) is cpu and sched.get_tensor_cause(new)[0] == "fallback"
    assert mg.tensor_buffer(state).backend is g
    np.testing.assert_allclose(mg.backend_tensor_get(state), np.tanh(x.numpy()), rtol=1e-6)


def test_state_in_device_memory_that_cannot_run_the_write(cpu):
    g = restricted_cuda({"SET"}, name="CUDA0")
    ctx = mg.Context()
    state = ctx.new_tensor_2d(F32, 6, 4).set_name("ssm_state")
    mg.backend_tensor_alloc(g, state)
    out = ctx.set_inplace(state, ctx.tanh(rand(ctx, "x", 4, 6)), state.nb[1], state.nb[2], state.nb[3], 0)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    with pytest.raises(mg.MinigraphError) as e:
        mg.backend_sched_new([g, cpu]).graph_compute(gf)
    for part in ("pre-allocated tensor", "ssm_state", "CUDA0", "SET", "cannot run the operation", "fix:"):
        assert part in str(e.value), (part, str(e.value))


def _second_gpu():
    from numba import cuda

    return 1 if len(cuda.gpus) > 1 else 0


def test_two_cuda_backends_in_one_scheduler(cpu, monkeypatch):
    """[CUDA0 refusing EXP, a second CUDA backend, CPU]: EXP runs on the second GPU backend
    (it supports it; the CPU is only the fallback), so the graph splits across the two with
    device-to-device copies through the scheduler, and the values match the reference."""
    first = restricted_cuda({"EXP"}, device=0, name="CUDA0")
    dev = _second_gpu()
    second = mg.backend_cuda_init(dev)
    if dev == 0:
        second.name = "CUDA0b"
    ctx = mg.Context()
    a, b = rand(ctx, "a", 5, 7), rand(ctx, "b", 5, 7)
    x = ctx.mul(a, b).set_name("x")
    y = ctx.exp(x).set_name("y")
    z = ctx.cont(ctx.transpose(ctx.add(y, a).set_name("z"))).set_name("zt")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, z)
    d2d = []
    real_copy = type(second).copy_tensor
    monkeypatch.setattr(type(second), "copy_tensor", lambda self, s, d: d2d.append(real_copy(self, s, d)) or d2d[-1])
    sched = mg.backend_sched_new([first, second, cpu])
    sched.graph_compute(gf)
    # x to the second backend, y back: device to device ("device" on one GPU, "peer" across two
    # when the driver offers peer access, else both through the host), never the other way
    from minigraph.backends.cuda.peer import peer_access
    want = "device" if dev == 0 else ("peer" if peer_access(0, 1) and peer_access(1, 0) else None)
    assert [r for r in d2d if r] == ([want] * 2 if want else []), d2d
    assert sched.get_tensor_backend(x) is first and sched.get_tensor_backend(y) is second
    assert sched.get_tensor_cause(y)[0] == "fallback"
    assert sched.get_tensor_backend(z) is first
    rep = sched.report()
    assert [s["backend"] for s in rep["splits"]] == ["CUDA0", second.name, "CUDA0"]
    assert [[c["tensor"] for c in s["copies"]] for s in rep["splits"]] == [["a", "b"], ["x"], ["y", "a"]]
    check_ref(gf, z, tol=1e-5)


def _two_cuda():
    """CUDA0 and CUDA1 on two GPUs; on one GPU (or the simulator) two backends on device 0."""
    dev = _second_gpu()
    a, b = mg.backend_cuda_init(0), mg.backend_cuda_init(dev)
    if dev == 0:
        b.name = "CUDA0b"
    return a, b


def test_cuda_init_refuses_a_missing_device():
    from numba import cuda

    n = len(cuda.gpus)
    with pytest.raises(mg.MinigraphError, match=f"no CUDA device {n}: this machine has {n} CUDA device"):
        mg.backend_cuda_init(n)
    be0 = mg.backend_cuda_init(0)
    assert be0.device_id == 0 and be0.name == "CUDA0"
    if n > 1:
        be1 = mg.backend_cuda_init(1)
        assert be1.device_id == 1 and be1.name == "CUDA1"
        assert mg.tensor_buffer(mg.backend_tensor_alloc(be1, mg.Context().new_tensor_1d(F32, 4))).backend is be1


def test_row_split_over_two_cuda_backends(cpu):
    """A weight's rows on two CUDA backends (two GPUs when present): the parts run where their
    rows live, the gather on CUDA0, and the result equals the unsplit mul_mat."""
    g0, g1 = _two_cuda()
    ctx = mg.Context()
    w, x = rand(ctx, "w", 6, 8), rand(ctx, "x", 3, 8)
    want = x.numpy() @ w.numpy().T
    mg.backend_tensor_alloc(mg.split_buffer_type([g0, g1], [0.5, 0.5]), w)
    h = ctx.mul_mat(w, x).set_name("h")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, h)
    sched = mg.backend_sched_new([g0, g1, cpu])
    sched.graph_compute(gf)
    np.testing.assert_allclose(h.numpy(), want, rtol=1e-5, atol=1e-5)
    assert sched.get_tensor_backend(h) is g0 and sched.get_tensor_cause(h)[0] == "row split"
    rep = sched.report()
    assert [p["backend"] for p in rep["row_splits"][0]["parts"]] == [g0.name, g1.name]
    assert rep["copies_by_pair"][f"{g1.name}->CUDA0"] == 3 * 3 * 4   # 3 result rows x 3 columns
    assert sched.get_copy_stats()["bytes_between_devices"] == 3 * 3 * 4


def test_two_delta_net_layers_over_two_cuda_backends(cpu):
    """The two-layer model with layer 0 on CUDA0 and layer 1 + output on the second backend
    (tensor_split [1, 3], weights moved to their layer's device) equals the one-GPU run.
    Two GPUs when present; the simulator runs it on two backends of device 0 with tiny shapes."""
    from minigraph.core import flags
    from minigraph.testing.toy_models import delta_net_stack

    dims = dict(n_embd=8, n_head=1, head_dim=4, n_tokens=2, n_vocab=4) if flags.cuda_simulator() else {}
    m = delta_net_stack(n_layer=2, **dims)
    g0, g1 = _two_cuda()
    mg.backend_sched_new([g0, cpu]).graph_compute(m.graph)
    ref, ref_states = m.logits.numpy().copy(), [s.numpy().copy() for s in m.states]
    check_ref(m.graph, m.logits)
    sched = mg.backend_sched_new([g0, g1, cpu], tensor_split=[1, 3])
    moved = sched.alloc_layer_weights(m.graph)
    assert set(moved) == {g0.name, g1.name}
    sched.graph_compute(m.graph)
    np.testing.assert_allclose(m.logits.numpy(), ref, rtol=1e-5, atol=1e-5)
    for s, want in zip(m.states, ref_states):
        np.testing.assert_allclose(s.numpy(), want, rtol=1e-5, atol=1e-5)
    rep = sched.report()
    assert rep["layers"] == {0: "CUDA0", 1: g1.name, "output": g1.name}
    assert [x["backend"] for x in rep["splits"]] == ["CUDA0", g1.name]
    crossing = rep["copies_by_pair"][f"CUDA0->{g1.name}"]
    assert crossing == rep["bytes_between_devices"] > 0
    paths = sched.get_copy_stats()["by_pair"][f"CUDA0->{g1.name}"]["paths"]
    assert sum(paths.values()) == crossing and set(paths) <= {"device", "peer", "host"}
