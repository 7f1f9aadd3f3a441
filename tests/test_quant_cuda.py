"""Block-quantized tensors on the CUDA backend (backends/cuda/quant_*.py) against the CPU backend
and the reference quantizer: MUL_MAT with a quantized src0 (every type the CPU takes), GET_ROWS
and CPY dequantizing (the CPU's floats bit for bit), CPY and SET_ROWS quantizing into Q8_0/Q4_0
(the reference quantizer's bytes), bad indices raised after the compute, and what CUDA refuses
running on the CPU through the scheduler.

Runs on the simulator in CI (small shapes: every simulated thread is a Python thread); the
decode-sized cases are marked gpu. MUL_MAT tolerance: the integer block sums are exact on both
backends, only the float32 scaling and accumulation order differ, so |cuda - cpu| <= 1e-5 *
max |cpu| (measured ~1e-7 relative).
"""
import numpy as np
import pytest

import minigraph as mg
from minigraph.core import dtypes as D
from minigraph.core import quants
from test_cuda_backend import SIM, SKIP, be  # noqa: F401 - `be`: that module's CUDA backend fixture

pytestmark = [pytest.mark.skipif(SKIP is not None, reason=SKIP or ""),
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]

TYPES = [D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q5_0, D.TYPE_Q5_1, D.TYPE_Q8_0, D.TYPE_Q4_K, D.TYPE_Q5_K, D.TYPE_Q6_K]
# the simulator (CI) takes a representative subset: a 32-block type of each vec_dot type's family
# and the K-quants' two layouts; a real GPU takes every type (each its own C++ kernel there)
SIM_TYPES = [D.TYPE_Q8_0, D.TYPE_Q4_0, D.TYPE_Q4_K, D.TYPE_Q6_K]
MM_TOL = 1e-5


@pytest.fixture(scope="module")
def cpu():
    return mg.backend_cpu_init(1)


def _compute(backend, *outs):
    gf = mg.Graph()
    for o in outs:
        gf.build_forward_expand(o)
    backend.graph_compute(gf)
    return gf


def _edge_rows(n_rows, k, seed):
    """Rows with what the quantizers branch on: a zero block, a flat block, tiny values (half
    subnormal scales), large positive values, exact integers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, k)).astype(np.float32)
    x[0, :32] = 0
    x[1 % n_rows, -32:] = 0.25
    if n_rows > 2:
        x[2] *= 1e-5
    if n_rows > 3:
        x[3] = np.abs(x[3]) * 50
    if n_rows > 4:
        x[4] = rng.integers(-3, 4, k)
    return x


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    assert np.isfinite(got).all()
    assert float(np.abs(got - want).max()) <= MM_TOL * scale, (float(np.abs(got - want).max()), scale)


@pytest.mark.parametrize("type_", SIM_TYPES if SIM else TYPES, ids=D.type_name)
def test_mul_mat_and_get_rows_match_cpu(be, cpu, type_):
    """Odd row count, broadcast over ne2 (src0 one plane, src1 two), src1 a transposed view
    (non-contiguous), two src1 columns; GET_ROWS from the same weights in the same graph."""
    k = 256 if D.blck_size(type_) == 256 else 64
    rng = np.random.default_rng(type_)
    w = _edge_rows(3, k, type_)
    x = rng.standard_normal((2, 2, k)).astype(np.float32)
    outs = {}
    for name, backend in (("cuda", be), ("cpu", cpu)):
        ctx = mg.Context()
        wq = ctx.from_numpy(w, type_)
        xt = ctx.transpose(ctx.from_numpy(np.ascontiguousarray(np.swapaxes(x, -1, -2))))   # [k, 2, 2], nb0 != 4
        assert not mg.is_contiguous(xt)
        mm = ctx.mul_mat(wq, xt)
        rows = ctx.get_rows(wq, ctx.from_numpy(np.array([2, 0, 2], np.int32)))
        _compute(backend, mm, rows)
        outs[name] = (mm.numpy(), rows.numpy())
    _close(outs["cuda"][0], outs["cpu"][0])
    np.testing.assert_array_equal(outs["cuda"][1], outs["cpu"][1])
    np.testing.assert_array_equal(outs["cuda"][1], quants.dequantize(quants.quantize(w, type_), type_)[[2, 0, 2]])


@pytest.mark.parametrize("type_", [D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q4_K], ids=D.type_name)
def test_src1_is_quantized_as_ggml(be, type_):
    """The MUL_MAT workspace holds src1 quantized by ggml's reference quantizer for the vec_dot
    type (Q8_0, Q8_1, Q8_K): the same quants, float16-rounded scales (half subnormals in the
    tiny row), sums."""
    vdt = D.VEC_DOT_TYPE[type_]
    x = _edge_rows(4, 256, 9)
    ctx = mg.Context()
    w = ctx.from_numpy(_edge_rows(1, 256, 8), type_)
    mm = ctx.mul_mat(w, ctx.from_numpy(x))
    gf = _compute(be, mm)
    (_, args, _), = [la for la in be.plan(gf).launches if la[2] is mm][:1]
    yq, yd, ys = (arr.copy_to_host() for arr in args[4:7])
    ref = quants.quantize(x, vdt).reshape(-1).view(D.BLOCK_DTYPES[vdt])
    np.testing.assert_array_equal(yq.reshape(ref["qs"].shape), ref["qs"])
    np.testing.assert_array_equal(yd, ref["d"].astype(np.float32))
    if vdt == D.TYPE_Q8_1:
        np.testing.assert_array_equal(ys, ref["s"].astype(np.float32))
    if vdt == D.TYPE_Q8_K:
        np.testing.assert_array_equal(ys, ref["bsums"].reshape(-1).astype(np.float32))


def test_mul_mat_batches_and_row_views(be, cpu):
    """ne3 broadcast (src0 [k, 5, 1, 1] against src1 [k, 2, 2, 2]) and src0 rows taken from a
    bigger tensor at a byte offset (a view with nb1 of the big tensor: rows not 16-byte aligned)."""
    type_ = D.TYPE_Q8_0
    rng = np.random.default_rng(7)
    big = rng.standard_normal((7, 64)).astype(np.float32)
    x = rng.standard_normal((2, 2, 2, 64)).astype(np.float32)
    res = []
    for backend in (be, cpu):
        ctx = mg.Context()
        bq = ctx.from_numpy(big, type_)
        w = ctx.view_2d(bq, 64, 5, bq.nb[1], bq.nb[1])        # rows 1..5
        mm = ctx.mul_mat(w, ctx.from_numpy(x))
        _compute(backend, mm)
        res.append(mm.numpy())
    assert res[0].shape == (2, 2, 2, 5)
    _close(res[0], res[1])


@pytest.mark.parametrize("type_", [D.TYPE_Q8_0, D.TYPE_Q4_0], ids=D.type_name)
def test_cpy_and_set_rows_write_reference_bytes(be, type_):
    """CPY f32 (a permuted view) -> quantized, and SET_ROWS into a quantized cache: the bytes of
    ggml's reference quantizer; a repeated index keeps the last row, other rows stay untouched."""
    x = _edge_rows(5, 64, 3)
    ctx = mg.Context()
    src = ctx.transpose(ctx.from_numpy(np.ascontiguousarray(x.T)))             # [64, 5], non-contiguous
    dst = ctx.cpy(src, ctx.new_tensor_2d(type_, 64, 5))
    before = quants.quantize(_edge_rows(6, 64, 4), type_)
    cache = ctx.from_numpy(before.copy(), type_)
    rows = _edge_rows(3, 64, 5)[::-1].copy()
    upd = ctx.set_rows(cache, ctx.from_numpy(rows), ctx.from_numpy(np.array([4, 1, 4], np.int64)))
    back = ctx.cpy(dst, ctx.new_tensor_2d(mg.TYPE_F16, 64, 5))                  # and dequantized again, to f16
    _compute(be, dst, upd, back)
    np.testing.assert_array_equal(dst.numpy(copy=False), quants.quantize(x, type_))
    raw = upd.numpy(copy=False)
    np.testing.assert_array_equal(raw[4], quants.quantize(rows[2], type_))       # the last write wins
    np.testing.assert_array_equal(raw[1], quants.quantize(rows[1], type_))
    np.testing.assert_array_equal(raw[[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    np.testing.assert_array_equal(back.numpy(), quants.dequantize(quants.quantize(x, type_), type_).astype(np.float16))


def test_bad_indices_are_reported_after_compute(be):
    ctx = mg.Context()
    table = ctx.from_numpy(_edge_rows(3, 32, 1), D.TYPE_Q4_0)
    rows = ctx.get_rows(table, ctx.from_numpy(np.array([1, 3], np.int32)))
    with pytest.raises(mg.MinigraphError, match=r"GET_ROWS.*row index 3 .*outside 0..2"):
        _compute(be, rows)
    ctx = mg.Context()
    before = quants.quantize(_edge_rows(4, 32, 2), D.TYPE_Q8_0)
    cache = ctx.from_numpy(before.copy(), D.TYPE_Q8_0)
    upd = ctx.set_rows(cache, ctx.from_numpy(_edge_rows(2, 32, 3)), ctx.from_numpy(np.array([0, -1], np.int32)))
    with pytest.raises(mg.MinigraphError, match=r"SET_ROWS.*row index -1 .*nothing was written"):
        _compute(be, upd)
    np.testing.assert_array_equal(cache.numpy(copy=False), before)


def test_refused_nodes_say_why_and_run_on_the_cpu(be, cpu):
    """CUDA quantizes into Q8_0/Q4_0 only: a CPY into Q4_K is refused with the reason and the
    scheduler runs it on the CPU; the MUL_MAT reading it stays on the GPU."""
    ctx = mg.Context()
    x = _edge_rows(2, 256, 6)
    q = ctx.cpy(ctx.from_numpy(x), ctx.new_tensor_2d(D.TYPE_Q4_K, 256, 2))
    ok, why = be.supports_op(q)
    assert not ok and "q4_K" in why and "CPU" in why
    cache = ctx.new_tensor_2d(D.TYPE_Q5_0, 32, 2)
    ok, why = be.supports_op(ctx.set_rows(cache, ctx.new_tensor_2d(mg.TYPE_F32, 32, 1), ctx.new_tensor_1d(mg.TYPE_I32, 1)))
    assert not ok and "q5_0" in why
    y = ctx.from_numpy(np.random.default_rng(2).standard_normal((1, 256)).astype(np.float32))
    mm = ctx.mul_mat(q, y)
    assert be.supports_op(mm)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, mm)
    sched = mg.backend_sched_new([be, cpu])
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(q) is cpu      # (its cause: the dst it writes is host memory)
    assert sched.get_tensor_backend(mm) is be
    w = quants.quantize(x, D.TYPE_Q4_K)
    ctx2 = mg.Context()
    want = ctx2.mul_mat(ctx2.from_numpy(w, D.TYPE_Q4_K), ctx2.from_numpy(y.numpy()))
    _compute(cpu, want)
    _close(mm.numpy(), want.numpy())


# -- real shapes on a GPU ---------------------------------------------------------------------

gpu = pytest.mark.skipif(SIM, reason="decode-sized shapes: real GPU only")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("type_", TYPES, ids=D.type_name)
@pytest.mark.parametrize("n", [1, 3, 13])
def test_decode_shapes_match_cpu(be, cpu, type_, n):
    """4096 x 512 weights (ne0 = 256 * 16) against 1, 3 (one mmvq launch) and 13 (two) columns."""
    rng = np.random.default_rng(n)
    w = rng.standard_normal((512, 4096)).astype(np.float32)
    x = rng.standard_normal((n, 4096)).astype(np.float32)
    res = []
    for backend in (be, cpu):
        ctx = mg.Context()
        mm = ctx.mul_mat(ctx.from_numpy(w, type_), ctx.from_numpy(x))
        _compute(backend, mm)
        res.append(mm.numpy())
    _close(res[0], res[1])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("type_", [D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q4_K, D.TYPE_Q6_K], ids=D.type_name)
def test_fused_decode_equals_two_launches(be, cpu, type_):
    """One src1 column (a strided view, two ne2 batches broadcast over one src0 plane): the fused
    kernel (src1 quantized in shared memory) gives the two-launch kernels' floats bit for bit
    (with one warp a row, as the fused kernel has), and the CPU's within the tolerance; so does the
    two-launch form with the default rows and split a warp."""
    from minigraph.backends.cuda import quant_mmvq

    rng = np.random.default_rng(type_)
    w = rng.standard_normal((300, 4352)).astype(np.float32)
    x = rng.standard_normal((2, 4352, 3)).astype(np.float32)
    res = {}
    default, config = quant_mmvq.FUSE, dict(quant_mmvq.CONFIG)
    for name, backend, fuse in (("fused", be, True), ("two", be, False), ("default", be, False), ("cpu", cpu, True)):
        quant_mmvq.FUSE = fuse
        if name != "default":
            quant_mmvq.CONFIG.update(quant_mmvq.ONE_ROW)
        try:
            ctx = mg.Context()
            col = ctx.view_3d(ctx.from_numpy(x), 1, 4352, 2, 12, 12 * 4352, 4)   # [1, 4352, 2]: column 1
            xv = ctx.transpose(col)                                                # [4352, 1, 2], nb0 = 12
            mm = ctx.mul_mat(ctx.from_numpy(w, type_), xv)
            if backend is be:
                assert quant_mmvq.fused(mm) == fuse
            _compute(backend, mm)
            res[name] = mm.numpy()
        finally:
            quant_mmvq.FUSE = default
            quant_mmvq.CONFIG.update(config)
    np.testing.assert_array_equal(res["fused"], res["two"])
    _close(res["fused"], res["cpu"])
    _close(res["default"], res["cpu"])


@pytest.mark.gpu
@gpu
def test_programmatic_dot_launch_equals_plain_launch(be, cpu):
    """The dot kernel as a programmatic dependent launch after quantize_q8 (CONFIG PDL: for these
    types its blocks start while src1 is quantized and wait for it with griddepcontrol.wait), and
    quantize_q8 as one after the kernel ahead of it (PDLQ: src1 here that kernel's output) give the
    plain launches' floats bit for bit (one and three columns, the first compute and the CUDA
    graph's replay), and the CPU's within the tolerance."""
    from minigraph.backends.cuda import quant_mmvq

    rng = np.random.default_rng(5)
    types = [D.TYPE_Q4_0, D.TYPE_Q8_0, D.TYPE_Q4_K]
    w = rng.standard_normal((512, 4096)).astype(np.float32)
    x = rng.standard_normal((3, 4096)).astype(np.float32)
    default = dict(quant_mmvq.CONFIG)
    res = {}
    pdl_mask = sum(1 << t for t in (*types, quant_mmvq.Q4_0R, quant_mmvq.Q4_KR))   # and over reordered copies
    for name, backend, mask in (("pdl", be, pdl_mask), ("plain", be, 0), ("cpu", cpu, 0)):
        quant_mmvq.CONFIG["PDL"] = quant_mmvq.CONFIG["PDLQ"] = mask
        try:
            ctx = mg.Context()
            # src1 the output of the kernel ahead (a PDLQ quantize_q8 waits for it), each dot
            # kernel ahead of the next node's quantize_q8 (released early, that one waits too)
            xs = ctx.scale(ctx.from_numpy(x), 0.5)
            outs = [ctx.mul_mat(ctx.from_numpy(w, t), ctx.view_2d(xs, 4096, n, xs.nb[1], 0))
                    for t in types for n in (1, 3)]
            if backend is be:
                assert all(quant_mmvq.pdl_on(t) == quant_mmvq.pdlq_on(t) == bool(mask) for t in types)
            gf = _compute(backend, *outs)
            got = [[o.numpy().copy() for o in outs]]
            backend.graph_compute(gf)                # the second compute replays the captured graph
            got.append([o.numpy().copy() for o in outs])
            res[name] = got
        finally:
            quant_mmvq.CONFIG.clear()
            quant_mmvq.CONFIG.update(default)
    for first, again, plain, want in zip(*res["pdl"], res["plain"][0], res["cpu"][0]):
        np.testing.assert_array_equal(first, plain)
        np.testing.assert_array_equal(again, plain)
        _close(first, want)


def _reorders(gf, be):
    """The active quant_reorder.Reordered copies of a computed graph's plan on `be`."""
    return be.plan(gf).prepares


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("type_,k", [(D.TYPE_Q4_0, 4384), (D.TYPE_Q4_K, 4352)], ids=["q4_0", "q4_K"])
def test_reordered_copy_follows_writes(be, cpu, monkeypatch, type_, k):
    """Q4_0 / Q4_K weights are read from a reordered copy (quant_reorder) made once and made again
    only after their bytes were written: set_data on a host weight (the mirror's upload), set_data
    on a weight in device memory (tensor_set), a SET_ROWS graph writing rows of it (Q4_0, which
    CUDA's SET_ROWS writes). Each time the floats equal the dot kernel over ggml's bytes (REORDER
    off; with the same rows and split: quant_reorder.same_order) bit for bit, and the CPU's within
    the tolerance. Q4_0's K = 4384: 137 blocks a row."""
    from minigraph.backends.cuda import quant_mmvq, quant_reorder

    rng = np.random.default_rng(11)
    w1, w2 = rng.standard_normal((2, 300, k)).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    ctx = mg.Context()
    wh = ctx.from_numpy(w1, type_)                        # host memory, mirrored on the GPU
    wd = mg.backend_tensor_alloc(be, ctx.from_numpy(w1, type_))   # device memory
    xt = ctx.from_numpy(x)
    mms = [ctx.mul_mat(wh, xt), ctx.mul_mat(wd, xt)]
    gf = _compute(be, *mms)

    def check(made):
        got = [m.numpy().copy() for m in mms]
        assert [r.made for r in _reorders(gf, be)] == made
        monkeypatch.setattr(quant_reorder, "REORDER", False)
        config = dict(quant_mmvq.CONFIG)
        quant_mmvq.CONFIG.update(quant_reorder.same_order(type_))    # Q4_K's kernel with Q4_KR's rows and split
        try:
            ctx2 = mg.Context()
            plain = [ctx2.mul_mat(w, xt) for w in (wh, wd)]
            gp = _compute(be, *plain)
            assert _reorders(gp, be) == []
            for g, p in zip(got, plain):
                np.testing.assert_array_equal(g, p.numpy())
        finally:
            monkeypatch.setattr(quant_reorder, "REORDER", True)
            quant_mmvq.CONFIG.update(config)
        for g, w in zip(got, (wh, wd)):
            ctxc = mg.Context()
            ref = ctxc.mul_mat(ctxc.from_numpy(w.root._buf.get(w).reshape(300, -1), type_), ctxc.from_numpy(x))
            _compute(cpu, ref)
            _close(g, ref.numpy())

    assert all(r.active for r in _reorders(gf, be)) and len(_reorders(gf, be)) == 2
    check([1, 1])
    be.graph_compute(gf)                                   # replays the CUDA graph: nothing to remake
    be.graph_compute(gf)
    check([1, 1])
    wh.set_data(w2)
    be.graph_compute(gf)
    check([2, 1])
    wd.set_data(w2)
    be.graph_compute(gf)
    check([2, 2])
    if type_ != D.TYPE_Q4_0:
        return
    ctx3 = mg.Context()                                    # rows 7 and 250 of wd by another graph
    rows = ctx3.from_numpy(rng.standard_normal((2, k)).astype(np.float32))
    sr = ctx3.set_rows(wd, rows, ctx3.from_numpy(np.array([7, 250], np.int32)))
    _compute(be, sr)
    be.graph_compute(gf)
    check([2, 3])


@pytest.mark.gpu
@gpu
def test_q4_0_read_as_stored_where_a_copy_could_go_stale(be, cpu):
    """No reordered copy where it could not stay true: src0 written by the same graph (CPY into
    it, then MUL_MAT), a weight handed out as a device view before planning. A view handed out
    after planning makes the copy volatile: made again at every run. Results equal the CPU's."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((64, 4096)).astype(np.float32)
    x = rng.standard_normal((1, 4096)).astype(np.float32)
    ctx = mg.Context()
    dst = ctx.new_tensor_2d(D.TYPE_Q4_0, 4096, 64)
    mm = ctx.mul_mat(ctx.cpy(ctx.from_numpy(w), dst), ctx.from_numpy(x))
    gf = _compute(be, mm)
    assert _reorders(gf, be) == []
    ctxc = mg.Context()
    ref = ctxc.mul_mat(ctxc.from_numpy(w, D.TYPE_Q4_0), ctxc.from_numpy(x))
    _compute(cpu, ref)
    _close(mm.numpy(), ref.numpy())

    shown = mg.backend_tensor_alloc(be, ctx.from_numpy(w, D.TYPE_Q4_0))
    be.tensor_device_array(shown)
    g2 = _compute(be, ctx.mul_mat(shown, ctx.from_numpy(x)))
    assert _reorders(g2, be) == []

    later = mg.backend_tensor_alloc(be, ctx.from_numpy(w, D.TYPE_Q4_0))
    m3 = ctx.mul_mat(later, ctx.from_numpy(x))
    g3 = _compute(be, m3)
    (r,) = _reorders(g3, be)
    be.tensor_device_array(later)
    be.graph_compute(g3)
    be.graph_compute(g3)
    assert r.made == 3
    _close(m3.numpy(), ref.numpy())


def test_derived_copies_go_stale_on_writes_to_their_bytes(be):
    """CudaBuffer.derive's bookkeeping (what quant_reorder's copies rely on; runs on the simulator
    too): a copy over bytes [64, 192) is stale until made, again after tensor_set or a device copy
    into bytes it overlaps, not after writes beside it; a device view handed out over its bytes
    makes it volatile (made again at every run), one beside them does not."""
    from minigraph.backends.cuda.backend import CudaBuffer

    ctx = mg.Context()
    t = mg.backend_tensor_alloc(be, ctx.from_numpy(np.zeros(96, np.float32)))    # bytes [0, 384)
    buf = t.root._buf
    assert isinstance(buf, CudaBuffer)
    d = buf.derive("k", 64, 192, 32)
    assert buf.derive("k", 64, 192, 32) is d and d.stale and not d.volatile
    d.stale = False
    before = ctx.view_1d(t, 16, 0)                        # bytes [0, 64): beside it
    inside = ctx.view_1d(t, 8, 40 * 4)                    # bytes [160, 192)
    mg.backend_tensor_set(before, np.ones(16, np.float32))
    assert not d.stale
    mg.backend_tensor_set(inside, np.ones(8, np.float32))
    assert d.stale
    d.stale = False
    src = mg.backend_tensor_alloc(be, ctx.from_numpy(np.ones(8, np.float32)))
    assert be.copy_tensor(src, ctx.view_1d(t, 8, 48 * 4)) == "device"   # bytes [192, 224): beside it
    assert not d.stale
    assert be.copy_tensor(src, ctx.view_1d(t, 8, 20 * 4)) == "device"   # bytes [80, 112)
    assert d.stale
    be.tensor_device_array(ctx.view_1d(t, 8, 256))        # bytes [256, 288)
    assert not d.volatile
    be.tensor_device_array(inside)
    assert d.volatile and buf.derive("other", 160, 170, 16).volatile


def test_reorder_is_chosen_for_q4_0_and_q4_k_unless_turned_off(monkeypatch):
    """quant_reorder.Reordered.of: a copy for Q4_0 / Q4_K src0 (Q4_0R / Q4_KR kernels), none for
    the other types, for empty weights, or with MINIGRAPH_CUDA_REORDER=0."""
    from minigraph.backends.cuda import quant_mmvq, quant_reorder

    ctx = mg.Context()

    def mm(type_, rows=8):
        return ctx.mul_mat(ctx.new_tensor_2d(type_, 512, rows), ctx.new_tensor_2d(D.TYPE_F32, 512, 1))

    codes = {t: getattr(quant_reorder.Reordered.of(mm(t)), "code", None) for t in TYPES}
    assert codes == {t: {D.TYPE_Q4_0: quant_mmvq.Q4_0R, D.TYPE_Q4_K: quant_mmvq.Q4_KR}.get(t) for t in TYPES}
    assert quant_reorder.Reordered.of(mm(D.TYPE_Q4_0, rows=0)) is None
    monkeypatch.setenv("MINIGRAPH_CUDA_REORDER", "0")
    assert quant_reorder.Reordered.of(mm(D.TYPE_Q4_0)) is None
