"""The scheduler (ggml_backend_sched) on two CPU backends: "CPU-R", a CPU backend that refuses
chosen ops and stands in for a device, ahead of the plain CPU fallback. Splits, copies, fallbacks,
residence and the offload policy run in CI without a GPU."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.testing.restricted import RestrictedCpu

F32 = mg.TYPE_F32


@pytest.fixture
def cpu():
    return mg.backend_cpu_init(1)


def rand(ctx, name, *shape, seed=0):
    rng = np.random.default_rng(abs(hash(name)) % 1000 + seed)
    return ctx.from_numpy(rng.standard_normal(shape).astype(np.float32)).set_name(name)


def chain(refuse=()):
    """x = a*b; y = exp(x); z = y + a; w = cont(permute(z)) on [CPU-R(refuse), CPU]."""
    ctx = mg.Context()
    a, b = rand(ctx, "a", 3, 4), rand(ctx, "b", 3, 4)
    x = ctx.mul(a, b).set_name("x")
    y = ctx.exp(x).set_name("y")
    z = ctx.add(y, a).set_name("z")
    p = ctx.permute(z, 1, 0, 2, 3).set_name("p")
    w = ctx.cont(p).set_name("w")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, w)
    return ctx, gf, dict(a=a, b=b, x=x, y=y, z=z, p=p, w=w)


def check_ref(gf, t, tol=1e-5):
    np.testing.assert_allclose(t.numpy(), mg.reference_compute(gf)[t], rtol=tol, atol=tol)


def test_placement_by_priority(cpu):
    _, gf, t = chain()
    r = RestrictedCpu()
    sched = mg.backend_sched_new([r, cpu])
    sched.graph_compute(gf)
    for k in "xyzw":
        assert sched.get_tensor_backend(t[k]) is r
        assert sched.get_tensor_cause(t[k])[0] == "supported"
    assert sched.get_tensor_backend(t["a"]) is cpu and sched.get_tensor_cause(t["a"])[0] == "input"
    assert sched.get_n_splits() == 1
    assert sched.get_n_copies_made() == 2  # the two host inputs, once each
    assert mg.tensor_buffer(t["w"]).backend is r
    check_ref(gf, t["w"])


def test_fallback_splits_copies_and_views(cpu):
    _, gf, t = chain(refuse={"EXP"})
    r = RestrictedCpu({"EXP"})
    sched = mg.backend_sched_new([r, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(t["y"]) is cpu
    tag, detail = sched.get_tensor_cause(t["y"])
    assert tag == "fallback" and "CPU-R refuses EXP" in detail
    assert sched.get_tensor_backend(t["p"]) is r and sched.get_tensor_cause(t["p"])[0] == "view src"
    rep = sched.report()
    assert rep["n_splits"] == 3 and sched.get_n_splits() == 3
    assert [s["backend"] for s in rep["splits"]] == ["CPU-R", "CPU", "CPU-R"]
    # split 0 copies a, b in; split 1 copies x back; split 2 copies y and (again, once per split) a
    assert [[c["tensor"] for c in s["copies"]] for s in rep["splits"]] == [["a", "b"], ["x"], ["y", "a"]]
    assert rep["bytes_copied"] == 5 * 48
    check_ref(gf, t["w"])


def test_fallback_picks_fewest_copies(cpu):
    """With three backends, an op refused by the first goes where its sources already are."""
    ctx = mg.Context()
    a = rand(ctx, "a", 4, 8)
    y = ctx.exp(ctx.sqr(a).set_name("sq")).set_name("y")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    r1, r2 = RestrictedCpu({"EXP", "SQR"}), RestrictedCpu({"SQR"})
    r1.name, r2.name = "R1", "R2"
    sched = mg.backend_sched_new([r1, r2, cpu])
    sched.graph_compute(gf)
    # SQR: only the CPU runs it; EXP: R2 and CPU support it, the CPU already holds sq
    assert sched.get_tensor_backend(y) is cpu and sched.get_tensor_cause(y)[0] == "fallback"
    assert sched.get_n_splits() == 1 and sched.get_n_copies_made() == 0
    check_ref(gf, y)


def test_results_match_single_cpu_and_reference(cpu):
    ctx = mg.Context()
    w1, x = rand(ctx, "w1", 16, 8), rand(ctx, "x", 5, 8)
    h = ctx.mul_mat(w1, x).set_name("h")             # ne [16, 5]
    h = ctx.rms_norm(h, 1e-6).set_name("hn")
    h = ctx.silu(h).set_name("act")
    s = ctx.soft_max(ctx.scale(h, 0.5)).set_name("sm")
    t = ctx.transpose(s).set_name("sT")                # non-contiguous view
    o = ctx.sum_rows(ctx.cont(t)).set_name("o")
    out = ctx.add(o, ctx.sum_rows(ctx.cont(ctx.transpose(ctx.sqr(h))))).set_name("out")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    cpu.graph_compute(gf)
    single = out.numpy().copy()
    sched = mg.backend_sched_new([RestrictedCpu({"RMS_NORM", "SOFT_MAX", "SQR"}), cpu])
    sched.graph_compute(gf)
    assert sched.get_n_splits() >= 4
    np.testing.assert_allclose(out.numpy(), single, rtol=1e-5, atol=1e-6)
    check_ref(gf, out)
    sched.graph_compute(gf)  # a second run gives the same values
    np.testing.assert_allclose(out.numpy(), single, rtol=1e-5, atol=1e-6)
    cpu.graph_compute(gf)    # and the single-backend run still works after the scheduler re-bound memory
    np.testing.assert_allclose(out.numpy(), single, rtol=1e-5, atol=1e-6)


def test_rerun_replans_nothing(cpu):
    _, gf, t = chain(refuse={"EXP"})
    sched = mg.backend_sched_new([RestrictedCpu({"EXP"}), cpu])
    sched.graph_compute(gf)
    plan = sched._plans.peek(gf)
    cpu_plans = [cpu._plans.peek(s.graph) for s in plan.splits]
    t["a"].set_data(np.ones((3, 4), np.float32))
    sched.graph_compute(gf)
    assert sched._plans.peek(gf) is plan
    assert [cpu._plans.peek(s.graph) for s in plan.splits] == cpu_plans
    check_ref(gf, t["w"])


def test_noncontiguous_view_copied_with_its_elements(cpu):
    """A permuted view made on the CPU and read on CPU-R travels as its 12 elements, packed."""
    ctx = mg.Context()
    a = rand(ctx, "a", 2, 3, 4)                        # ne [4, 3, 2]
    e = ctx.exp(a).set_name("e")                       # CPU (CPU-R refuses EXP)
    v = ctx.view_3d(e, 2, 3, 2, e.nb[1], e.nb[2], 4).set_name("v")  # elements 1..2 of each row
    p = ctx.permute(v, 2, 0, 1, 3).set_name("perm")    # ne [3, 2, 2], non-contiguous
    out = ctx.scale(p, 2.0).set_name("out")            # CPU-R
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    sched = mg.backend_sched_new([RestrictedCpu({"EXP"}), cpu])
    sched.graph_compute(gf)
    assert not mg.is_contiguous(p)
    assert sched.get_tensor_backend(p) is cpu  # the view follows its source
    (cp,) = sched.report()["splits"][1]["copies"]
    assert cp["tensor"] == "perm" and cp["nbytes"] == mg.nelements(p) * 4 == 48
    assert cp["nbytes"] < mg.nbytes(p)
    check_ref(gf, out)


def test_resident_weights_pull_their_consumers(cpu):
    ctx = mg.Context()
    wr, wc, x = rand(ctx, "w_r", 6, 8), rand(ctx, "w_c", 6, 8), rand(ctx, "x", 2, 8)
    r = RestrictedCpu()
    mg.backend_tensor_alloc(r, wr)
    mg.backend_tensor_alloc(cpu, wc)
    assert mg.tensor_buffer(wr).backend is r and mg.tensor_buffer(wc).backend is cpu
    assert mg.tensor_buffer(x) is None
    hr, hc = ctx.mul_mat(wr, x).set_name("hr"), ctx.mul_mat(wc, x).set_name("hc")
    both = ctx.mul_mat(wc, ctx.view_2d(wr, 8, 3, wr.nb[1], 0)).set_name("both")  # a CPU weight, a view of a CPU-R one
    gf = ctx.new_graph()
    for t in (hr, hc, both):
        mg.build_forward_expand(gf, t)
    sched = mg.backend_sched_new([r, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(wr) is r and sched.get_tensor_cause(wr)[0] == "weights/buffer"
    assert sched.get_tensor_backend(hr) is r and sched.get_tensor_cause(hr)[0] == "weights/buffer"
    assert sched.get_tensor_backend(hc) is cpu and sched.get_tensor_cause(hc)[0] == "weights/buffer"
    assert sched.get_tensor_backend(both) is r and sched.get_tensor_cause(both)[0] == "upgrade"
    for t in (hr, hc, both):
        check_ref(gf, t)


def test_upgrade_when_weights_live_on_two_backends(cpu):
    ctx = mg.Context()
    wc, wr = rand(ctx, "w_c", 6, 8), rand(ctx, "w_r", 6, 8)
    r = RestrictedCpu()
    mg.backend_tensor_alloc(cpu, wc)
    mg.backend_tensor_alloc(r, wr)
    s = ctx.add(wc, wr).set_name("s")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, s)
    sched = mg.backend_sched_new([r, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(s) is r and sched.get_tensor_cause(s)[0] == "upgrade"
    check_ref(gf, s)


def _state_graph(ctx, state, how):
    x = rand(ctx, "x", 4, 6)
    new = ctx.tanh(x).set_name("new")
    if how == "cpy":
        out = ctx.cpy(new, state).set_name("state_cpy")
    else:
        out = ctx.set_inplace(state, new, state.nb[1], state.nb[2], state.nb[3], 0).set_name("state_set")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    return x, new, out, gf


@pytest.mark.parametrize("how", ["cpy", "set_inplace"])
def test_write_into_resident_state_stays_with_its_buffer(cpu, how):
    ctx = mg.Context()
    state = ctx.new_tensor_2d(F32, 6, 4).set_name("state")
    r = RestrictedCpu({"TANH"})
    mg.backend_alloc_ctx_tensors(ctx, r)
    mg.backend_tensor_set(state, np.full((4, 6), 7.0, np.float32))
    x, new, out, gf = _state_graph(ctx, state, how)
    assert mg.tensor_buffer(x) is None  # x was created after the ctx was allocated
    sched = mg.backend_sched_new([r, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(out) is r and sched.get_tensor_cause(out)[0] == "pre-allocated dst"
    assert sched.get_tensor_backend(new) is cpu and sched.get_tensor_cause(new)[0] == "fallback"
    np.testing.assert_allclose(mg.backend_tensor_get(state), np.tanh(x.numpy()), rtol=1e-6)
    assert mg.tensor_buffer(state).backend is r


@pytest.mark.parametrize("how,op", [("cpy", "CPY"), ("set_inplace", "SET")])
def test_preallocated_dst_in_a_buffer_that_cannot_run_the_op(cpu, how, op):
    ctx = mg.Context()
    state = ctx.new_tensor_2d(F32, 6, 4).set_name("ssm_state")
    r = RestrictedCpu({op})
    mg.backend_tensor_alloc(r, state)
    _, _, _, gf = _state_graph(ctx, state, how)
    sched = mg.backend_sched_new([r, cpu])
    with pytest.raises(mg.MinigraphError) as e:
        sched.graph_compute(gf)
    msg = str(e.value)
    for part in ("pre-allocated tensor", "ssm_state", "CPU-R", op, "cannot run the operation", "fix:",
                 "mg.backend_tensor_alloc", "CPU"):
        assert part in msg, (part, msg)


def test_no_limit_on_inputs_per_split(cpu):
    ctx = mg.Context()
    xs = [rand(ctx, f"in{k}", 2, 3) for k in range(40)]
    acc = xs[0]
    for x in xs[1:]:
        acc = ctx.add(acc, x)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, acc)
    sched = mg.backend_sched_new([RestrictedCpu(), cpu])
    sched.graph_compute(gf)
    assert sched.get_n_splits() == 1 and sched.get_n_copies_made() == 40
    check_ref(gf, acc)


def test_debug_log(cpu, monkeypatch, capsys):
    _, gf, t = chain(refuse={"EXP"})
    monkeypatch.setenv("MINIGRAPH_SCHED_DEBUG", "1")
    sched = mg.backend_sched_new([RestrictedCpu({"EXP"}), cpu])
    sched.graph_compute(gf)
    log = capsys.readouterr().out
    assert "3 splits, 5 copies (240 bytes)" in log
    for line in ("[  CPU] input", "[CPU-R] supported", "[  CPU] fallback: CPU-R refuses: CPU-R refuses EXP",
                 "[CPU-R] view src", "## SPLIT #1: CPU # 1 nodes, 1 inputs: [x (CPU-R->CPU, 48 B)]",
                 "copy: x ne=[4, 3, 1, 1]"):
        assert line in log, (line, log)
    monkeypatch.setenv("MINIGRAPH_SCHED_DEBUG", "0")
    sched.graph_compute(gf)
    assert capsys.readouterr().out == ""


def test_reserve_and_buffer_sizes(cpu):
    _, gf, t = chain(refuse={"EXP"})
    r = RestrictedCpu({"EXP"})
    sched = mg.backend_sched_new([r, cpu])
    with pytest.raises(mg.MinigraphError, match="no graph planned"):
        sched.get_buffer_size(r)
    assert sched.reserve(gf)
    assert np.all(t["w"].numpy() == 0)  # planned and bound, not computed
    # CPU-R: copies of a, b, y, a (4 x 64 aligned) + x, z, w (the planner reuses nothing: x is copied out)
    size_r, size_c = sched.get_buffer_size(r), sched.get_buffer_size(cpu)
    assert size_r == sched.report()["buffer_size"]["CPU-R"] and size_r >= 4 * 64 + 2 * 64
    assert size_c == 2 * 64  # y, and the copy of x
    with pytest.raises(mg.MinigraphError, match="not one of this scheduler's backends"):
        sched.get_buffer_size(RestrictedCpu())
    sched.graph_compute(gf)
    check_ref(gf, t["w"])


def _offload_graph(cpu, batch):
    ctx = mg.Context()
    w, x = rand(ctx, "w", 4, 8), rand(ctx, "x", batch, 8)
    mg.backend_tensor_alloc(cpu, w)  # host-resident weights
    h = ctx.mul_mat(w, x).set_name("h")  # ne [4, batch]: batch is ne[1]
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, h)
    return gf, h


@pytest.mark.parametrize("batch,kwargs,env,where,cause", [
    (4, {}, {}, "CPU", "weights/buffer"),                      # below ggml's 32
    (32, {}, {}, "CPU-R", "offload"),
    (4, {"offload_min_batch": 4}, {}, "CPU-R", "offload"),
    (4, {}, {"MINIGRAPH_OFFLOAD_MIN_BATCH": "2"}, "CPU-R", "offload"),
    (32, {"op_offload": False}, {}, "CPU", "weights/buffer"),
    (32, {}, {"MINIGRAPH_NO_OFFLOAD": "1"}, "CPU", "weights/buffer"),
])
def test_offload_min_batch(cpu, monkeypatch, batch, kwargs, env, where, cause):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    gf, h = _offload_graph(cpu, batch)
    sched = mg.backend_sched_new([RestrictedCpu(), cpu], **kwargs)
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(h).name == where
    assert sched.get_tensor_cause(h)[0] == cause
    check_ref(gf, h)


def test_errors(cpu):
    with pytest.raises(mg.MinigraphError, match="non-empty list"):
        mg.backend_sched_new([])
    with pytest.raises(mg.MinigraphError, match="twice"):
        mg.backend_sched_new([cpu, cpu])
    ctx = mg.Context()
    a = rand(ctx, "a", 2, 2)
    other = RestrictedCpu()
    mg.backend_tensor_alloc(other, a)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, ctx.exp(a))
    with pytest.raises(mg.MinigraphError, match="not one of the scheduler's backends"):
        mg.backend_sched_new([RestrictedCpu(), cpu]).graph_compute(gf)
    ctx2 = mg.Context()
    b = rand(ctx2, "b", 2, 2)
    gf2 = ctx2.new_graph()
    mg.build_forward_expand(gf2, ctx2.exp(b))
    with pytest.raises(mg.MinigraphError, match="no backend of the scheduler supports"):
        mg.backend_sched_new([RestrictedCpu({"EXP"})]).graph_compute(gf2)
