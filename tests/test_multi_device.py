"""The scheduler over several devices without a GPU: two (or three) fake devices DEV0, DEV1 (CPU
backends with memory of their own, minigraph.testing.fake_devices) stand in for CUDA0, CUDA1, so
every copy between them really happens and is counted. Layer split by tensor_split (llama.cpp's
-sm layer), placement by where weights live, row-split MUL_MAT (-sm row), copies and their paths,
a two-layer delta-net model split over two devices against the one-device run, and the refusals."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.schedule.layers import OUTPUT_LAYER, layer_devices, layer_of_name
from minigraph.device.split_buffer import row_ranges
from minigraph.testing.fake_devices import FakeDevice, fake_devices
from minigraph.testing.toy_models import delta_net_stack


@pytest.fixture(scope="module")
def cpu():
    return mg.backend_cpu_init(1)


def rand(ctx, name, *shape, seed=0):
    rng = np.random.default_rng(sum(map(ord, name)) + seed)
    return ctx.from_numpy(rng.standard_normal(shape).astype(np.float32)).set_name(name)


def placed(sched, t):
    return sched.get_tensor_backend(t).name, sched.get_tensor_cause(t)[0]


# -- the rules, as llama.cpp and ggml write them ------------------------------------------------

@pytest.mark.parametrize("fractions,n_slots,want", [
    # llama.cpp: layer il of n_slots goes to upper_bound(inclusive cumulative splits, il / n_slots)
    ([0.5, 0.5], 3, [0, 0, 1]),        # 2 layers + output: 0, 1/3 < 0.5; 2/3 >= 0.5
    ([0.5, 0.5], 2, [0, 1]),           # 2 layers, no output layer: 1/2 is not < 0.5
    ([1, 3], 3, [0, 1, 1]),            # splits [0.25, 1]
    ([0.5, 0.5], 5, [0, 0, 0, 1, 1]),  # 0, .2, .4 | .6, .8
    ([1, 0], 3, [0, 0, 0]),            # a zero share gets nothing
    ([0, 1], 3, [1, 1, 1]),
    ([1, 1, 2], 4, [0, 1, 2, 2]),      # splits [.25, .5, 1]
])
def test_layer_devices_follow_llama_cpp(fractions, n_slots, want):
    assert layer_devices(fractions, n_slots) == want


@pytest.mark.parametrize("nrows,fractions,want", [
    # ggml-cuda get_row_split: row_low = nrows * cumulative start (truncated), the last to nrows
    (10, [0.5, 0.5], [(0, 5), (5, 10)]),
    (7, [1, 2], [(0, 2), (2, 7)]),             # 7 * 1/3 = 2.33
    (10, [1, 1, 1], [(0, 3), (3, 6), (6, 10)]),
    (10, [1, 0], [(0, 10), (10, 10)]),
    (4, [0, 1], [(0, 0), (0, 4)]),
])
def test_row_ranges_follow_ggml(nrows, fractions, want):
    assert row_ranges(nrows, fractions) == want


def test_layer_names():
    assert layer_of_name("blk.12.attn_q.weight") == 12
    assert layer_of_name("DEV1#blk.3.ssm_state") == 3
    assert layer_of_name("output.weight") == layer_of_name("result_output") == OUTPUT_LAYER
    assert layer_of_name("output_norm.weight") == OUTPUT_LAYER
    for name in ("", "x", "myblk.3.w", "outputs", "blk.x.w", "l_out-3"):
        assert layer_of_name(name) is None, name


# -- row split (-sm row) --------------------------------------------------------------------------

def _mul_mat_graph(K, N, M, B=1, name="w"):
    ctx = mg.Context()
    w = rand(ctx, name, N, K)                     # ne [K, N]: N rows
    x = rand(ctx, "x", B, M, K) if B > 1 else rand(ctx, "x", M, K)
    h = ctx.mul_mat(w, x).set_name("h")          # ne [N, M(, B)]
    out = ctx.scale(h, 2.0).set_name("out")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, h)
    mg.build_forward_expand(gf, out)
    return ctx, gf, w, x, h, out


@pytest.mark.parametrize("fractions,B", [([0.5, 0.5], 1), ([0.3, 0.7], 2), ([1, 1, 1], 1)])
def test_row_split_mul_mat_equals_unsplit(cpu, fractions, B):
    ctx, gf, w, x, h, out = _mul_mat_graph(K=8, N=10, M=3, B=B)
    w_host = w.numpy().copy()
    mg.backend_sched_new([FakeDevice(0), cpu]).graph_compute(gf)   # the unsplit run, on one device
    unsplit_h, unsplit_out = h.numpy().copy(), out.numpy().copy()
    np.testing.assert_allclose(unsplit_h, x.numpy() @ w_host.T, rtol=1e-5, atol=1e-5)
    devs = fake_devices(len(fractions))
    buft = mg.split_buffer_type(devs, fractions)
    mg.backend_tensor_alloc(buft, w)
    ranges = row_ranges(10, fractions)
    for (lo, hi), (i, plo, phi, part) in zip([r for r in ranges if r[1] > r[0]], mg.tensor_buffer(w).parts):
        assert (plo, phi) == (lo, hi) and mg.tensor_buffer(part).backend is devs[i]
        np.testing.assert_array_equal(part.numpy(), w_host[lo:hi])      # each device holds its rows
    np.testing.assert_array_equal(w.numpy(), w_host)                      # read whole: gathered
    sched = mg.backend_sched_new([*devs, cpu])
    sched.graph_compute(gf)
    np.testing.assert_allclose(h.numpy(), unsplit_h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), unsplit_out, rtol=1e-6, atol=1e-6)
    assert placed(sched, h) == ("DEV0", "row split")
    rep = sched.report()
    (rs,) = rep["row_splits"]
    assert [(p["backend"], tuple(p["rows"])) for p in rs["parts"]] == \
        [(d.name, r) for d, r in zip(devs, ranges)] and rs["gather"] == "DEV0"
    # x goes to every device once; each other device's part rows come back to DEV0
    M = 3 * B
    want_pairs = {f"CPU->{d.name}": 8 * M * 4 for d in devs}
    want_pairs.update({f"{d.name}->DEV0": (hi - lo) * M * 4 for d, (lo, hi) in zip(devs[1:], ranges[1:])})
    assert rep["copies_by_pair"] == want_pairs
    assert rep["bytes_between_devices"] == sum((hi - lo) * M * 4 for lo, hi in ranges[1:])
    stats = sched.get_copy_stats()
    assert stats["bytes_between_devices"] == rep["bytes_between_devices"]
    assert sum(d.peer_bytes for d in devs) == rep["bytes_between_devices"]   # really copied, peer path
    # new weights reach every part; the next compute sees them
    w.set_data(w_host * -1.0)
    sched.graph_compute(gf)
    np.testing.assert_allclose(h.numpy(), -unsplit_h, rtol=1e-6, atol=1e-6)


def test_row_split_gather_on_another_main_and_a_zero_share(cpu):
    ctx, gf, w, x, h, out = _mul_mat_graph(K=4, N=6, M=2)
    want = x.numpy() @ w.numpy().T
    d0, d1 = fake_devices(2)
    mg.backend_tensor_alloc(mg.split_buffer_type([d0, d1], [0.5, 0.5], main=1), w)
    sched = mg.backend_sched_new([d0, d1, cpu])
    sched.graph_compute(gf)
    assert placed(sched, h) == ("DEV1", "row split") and sched.report()["row_splits"][0]["gather"] == "DEV1"
    assert placed(sched, out)[0] == "DEV1"   # the consumer follows the gathered result (expand)
    np.testing.assert_allclose(h.numpy(), want, rtol=1e-6, atol=1e-6)
    # all rows on DEV1: one part, no gather, nothing copied between devices
    ctx, gf, w, x, h, out = _mul_mat_graph(K=4, N=6, M=2, name="w2")
    mg.backend_tensor_alloc(mg.split_buffer_type([d0, d1], [0, 1]), w)
    sched = mg.backend_sched_new([d0, d1, cpu])
    sched.graph_compute(gf)
    assert placed(sched, h) == ("DEV1", "row split")
    assert sched.report()["bytes_between_devices"] == 0
    np.testing.assert_allclose(h.numpy(), x.numpy() @ w.numpy().T, rtol=1e-6, atol=1e-6)


def test_row_split_refusals(cpu):
    d0, d1 = fake_devices(2)
    buft = mg.split_buffer_type([d0, d1], [0.5, 0.5])
    ctx = mg.Context()
    w3 = rand(ctx, "w3", 2, 4, 8)
    with pytest.raises(mg.MinigraphError, match="must be 2-D"):
        mg.backend_tensor_alloc(buft, w3)
    w = rand(ctx, "w", 6, 8)
    with pytest.raises(mg.MinigraphError, match="must be a leaf"):
        mg.backend_tensor_alloc(buft, ctx.exp(w))
    mg.backend_tensor_alloc(buft, w)
    with pytest.raises(mg.MinigraphError, match="read and written whole"):
        ctx.view_2d(w, 8, 2, w.nb[1], 0).numpy()
    # only MUL_MAT with the whole weight as src0 reads it
    for make in (lambda: ctx.exp(w), lambda: ctx.mul_mat(ctx.view_2d(w, 8, 3, w.nb[1], 0), rand(ctx, "x", 2, 8)),
                 lambda: ctx.mul_mat(rand(ctx, "a", 6, 8), w)):
        gf = ctx.new_graph()
        mg.build_forward_expand(gf, make())
        with pytest.raises(mg.MinigraphError, match="only MUL_MAT with the whole weight as src0"):
            mg.backend_sched_new([d0, d1, cpu]).graph_compute(gf)
    # a part on a device the scheduler does not have
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, ctx.mul_mat(w, rand(ctx, "x", 2, 8)))
    with pytest.raises(mg.MinigraphError, match="DEV1.*not one of the scheduler's backends"):
        mg.backend_sched_new([d0, cpu]).graph_compute(gf)
    # a part on a device that refuses MUL_MAT
    r1 = FakeDevice(1, refuse={"MUL_MAT"})
    ctx2 = mg.Context()
    w2 = rand(ctx2, "w", 6, 8)
    mg.backend_tensor_alloc(mg.split_buffer_type([d0, r1], [0.5, 0.5]), w2)
    gf = ctx2.new_graph()
    mg.build_forward_expand(gf, ctx2.mul_mat(w2, rand(ctx2, "x", 2, 8)))
    with pytest.raises(mg.MinigraphError, match="DEV1 cannot run its part.*DEV1 refuses MUL_MAT"):
        mg.backend_sched_new([d0, r1, cpu]).graph_compute(gf)


# -- tensor_split and where weights live (-sm layer) -----------------------------------------------

def _node_devices(sched, model, layer):
    """Backend names of the MUL_MATs reading blk.<layer> weights (output layer: layer None)."""
    prefix = "output." if layer is None else f"blk.{layer}."
    mms = [n for n in model.graph.nodes if n.op == "MUL_MAT" and n.src[0].name.startswith(prefix)]
    assert mms
    return {sched.get_tensor_backend(n).name for n in mms}


@pytest.fixture(scope="module")
def model_and_ref(cpu):
    """The two-layer model run on one device (DEV0 alone), checked against the float64 reference."""
    m = delta_net_stack(n_layer=2)
    mg.backend_sched_new([FakeDevice(0), cpu]).graph_compute(m.graph)
    ref = mg.reference_compute(m.graph)
    np.testing.assert_allclose(m.logits.numpy(), ref[m.logits], rtol=1e-4, atol=1e-4)
    return m, m.logits.numpy().copy(), [s.numpy().copy() for s in m.states]


def _check_same(m, ref, ref_states):
    np.testing.assert_allclose(m.logits.numpy(), ref, rtol=1e-5, atol=1e-5)
    for s, want in zip(m.states, ref_states):
        np.testing.assert_allclose(s.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fractions,want", [([0.5, 0.5], ["DEV0", "DEV0", "DEV1"]),
                                            ([1, 3], ["DEV0", "DEV1", "DEV1"])])
def test_layer_split_two_delta_net_layers(cpu, model_and_ref, fractions, want):
    m, ref, ref_states = model_and_ref
    d0, d1 = fake_devices(2)
    sched = mg.backend_sched_new([d0, d1, cpu], tensor_split=fractions)
    sched.graph_compute(m.graph)
    _check_same(m, ref, ref_states)
    rep = sched.report()
    assert rep["layers"] == {0: want[0], 1: want[1], "output": want[2]}
    assert [_node_devices(sched, m, 0), _node_devices(sched, m, 1), _node_devices(sched, m, None)] == \
        [{w} for w in want]
    causes = {p["cause"] for p in rep["placements"] if not p["leaf"]}
    assert {"layer split", "expand"} <= causes and "supported" not in causes
    # consecutive layers on consecutive devices: one split per device, activations cross once
    assert [s["backend"] for s in rep["splits"]] == ["DEV0", "DEV1"]
    crossing = rep["copies_by_pair"]["DEV0->DEV1"]
    assert crossing == rep["bytes_between_devices"] > 0
    n_cross = sum(c["from"] == "DEV0" and c["to"] == "DEV1" for s in rep["splits"] for c in s["copies"])
    assert sched.get_copy_stats()["by_pair"]["DEV0->DEV1"] == {"copies": n_cross, "bytes": crossing,
                                                               "paths": {"peer": crossing}}
    assert d1.peer_bytes == crossing


def test_weights_where_they_live(cpu, model_and_ref):
    """alloc_layer_weights moves each layer's weights (and state) to its device; then a scheduler
    without tensor_split places by the weights alone and copies only the activations."""
    m = delta_net_stack(n_layer=2)
    _, ref, ref_states = model_and_ref
    d0, d1 = fake_devices(2, peer=False)
    loader = mg.backend_sched_new([d0, d1, cpu], tensor_split=[1, 3])
    moved = loader.alloc_layer_weights(m.graph)
    assert set(moved) == {"DEV0", "DEV1"}
    assert mg.tensor_buffer(m.weights["blk.1.attn_q.weight"]).backend is d1
    assert mg.tensor_buffer(m.weights["blk.0.ssm_state"]).backend is d0
    assert mg.tensor_buffer(m.weights["inp_embd"]) is None          # the input layer stays on the host
    sched = mg.backend_sched_new([d0, d1, cpu])
    sched.graph_compute(m.graph)
    _check_same(m, ref, ref_states)
    assert placed(sched, m.logits) == ("DEV1", "weights/buffer")
    assert _node_devices(sched, m, 0) == {"DEV0"} and _node_devices(sched, m, 1) == {"DEV1"}
    rep = sched.report()
    # only the embeddings come from the host (T=5 x D=16 floats); weights are not copied again
    assert rep["copies_by_pair"]["CPU->DEV0"] == 5 * 16 * 4 and "CPU->DEV1" not in rep["copies_by_pair"]
    # no peer path: the activations cross through host memory, and DEV1 counts those bytes
    before = d1.bytes_in
    sched.graph_compute(m.graph)
    crossing = rep["copies_by_pair"]["DEV0->DEV1"]
    assert sched.get_copy_stats()["by_pair"]["DEV0->DEV1"]["paths"] == {"host": 2 * crossing}
    assert d1.bytes_in - before == crossing and d1.peer_bytes == 0


def test_user_assignment_and_refusals(cpu):
    ctx = mg.Context()
    a = rand(ctx, "a", 3, 4)
    e = ctx.exp(a).set_name("e")
    y = ctx.sum_rows(e).set_name("y")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    d0, d1 = fake_devices(2)
    sched = mg.backend_sched_new([d0, d1, cpu])
    sched.set_tensor_backend(e, d1)
    sched.graph_compute(gf)
    assert placed(sched, e) == ("DEV1", "user") and placed(sched, y) == ("DEV1", "expand")
    np.testing.assert_allclose(y.numpy(), np.exp(a.numpy()).sum(axis=1, keepdims=True), rtol=1e-5)
    with pytest.raises(mg.MinigraphError, match="is a leaf"):
        sched.set_tensor_backend(a, d1)
    with pytest.raises(mg.MinigraphError, match="view or an in-place"):
        sched.set_tensor_backend(ctx.transpose(e), d1)
    with pytest.raises(mg.MinigraphError, match="not one of this scheduler's backends"):
        sched.set_tensor_backend(e, FakeDevice(7))
    r1 = FakeDevice(1, refuse={"EXP"})
    s2 = mg.backend_sched_new([d0, r1, cpu])
    s2.set_tensor_backend(e, r1)
    with pytest.raises(mg.MinigraphError, match="DEV1, which refuses it: DEV1 refuses EXP"):
        s2.graph_compute(gf)


@pytest.mark.parametrize("tensor_split,match", [
    ([0.5, 0.5, 0.5], "3 fractions for 2 devices"),
    ([1.0], "1 fractions for 2 devices"),
    ([0.5, -0.5], r"tensor_split\[1\] \(DEV1\) is negative"),
    ([0, 0], "sums to 0"),
    ([float("nan"), 1], "finite number"),
    ("0.5,0.5", "list of numbers"),
    ([True, 1], "finite number"),
])
def test_tensor_split_refusals(cpu, tensor_split, match):
    d0, d1 = fake_devices(2)
    with pytest.raises(mg.MinigraphError, match=match):
        mg.backend_sched_new([d0, d1, cpu], tensor_split=tensor_split)
    with pytest.raises(mg.MinigraphError, match=match.replace("2 devices", "2 devices")):
        mg.split_buffer_type([d0, d1], tensor_split)


def test_weight_on_a_device_not_in_the_scheduler(cpu):
    ctx = mg.Context()
    w = rand(ctx, "blk.0.w", 4, 4)
    d0, d1, d2 = fake_devices(3)
    mg.backend_tensor_alloc(d2, w)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, ctx.mul_mat(w, rand(ctx, "x", 2, 4)))
    with pytest.raises(mg.MinigraphError, match="DEV2.*not one of the scheduler's backends"):
        mg.backend_sched_new([d0, d1, cpu], tensor_split=[1, 1]).graph_compute(gf)
    with pytest.raises(mg.MinigraphError, match="no tensor_split"):
        mg.backend_sched_new([d0, d1, cpu]).alloc_layer_weights(gf)
    with pytest.raises(mg.MinigraphError, match="n_layer must be an int >= 1"):
        mg.backend_sched_new([d0, d1, cpu], tensor_split=[1, 1], n_layer=0)


def test_debug_log_names_layers_row_splits_and_device_bytes(cpu, monkeypatch, capsys):
    ctx, gf, w, x, h, out = _mul_mat_graph(K=4, N=6, M=2)
    w.set_name("blk.1.ffn_up.weight")
    d0, d1 = fake_devices(2)
    mg.backend_tensor_alloc(mg.split_buffer_type([d0, d1], [0.5, 0.5]), w)
    monkeypatch.setenv("MINIGRAPH_SCHED_DEBUG", "1")
    mg.backend_sched_new([d0, d1, cpu], tensor_split=[1, 1]).graph_compute(gf)
    log = capsys.readouterr().out
    for line in ("between devices: 24 bytes per run", "'DEV1->DEV0': 24",
                 "layer split [1.0, 1.0]: 0->DEV0, 1->DEV1",
                 "row split h: DEV0 rows 0..3, DEV1 rows 3..6; gathered on DEV0",
                 "[DEV0] row split: DEV0 rows 0..3, DEV1 rows 3..6; gathered on DEV0"):
        assert line in log, (line, log)
