"""ggml's tensor model as minigraph exposes it: types, ne/nb, the little predicates, names,
numpy in/out, views (view_src/view_offs), reshape/permute/transpose and graph building.

Every expected value below is worked out by hand from ggml.c's definitions (ggml_nbytes,
ggml_is_contiguous_n, ggml_is_transposed, ggml_is_permuted, ggml_permute, ggml_transpose,
ggml_view_impl, ggml_visit_parents), not by calling the code under test a second time.
"""
import numpy as np
import pytest

import minigraph as mg

CPU = mg.backend_cpu_init(2)


def compute(*outs):
    """Build one graph with every tensor of `outs`, run it on the CPU backend, return the graph."""
    ctx = outs[0].ctx
    gf = ctx.new_graph()
    for t in outs:
        mg.build_forward_expand(gf, t)
    CPU.graph_compute(gf)
    return gf


# -- types --------------------------------------------------------------------------------------

def test_type_enum_values_are_ggmls():
    assert (mg.TYPE_F32, mg.TYPE_F16, mg.TYPE_I32, mg.TYPE_BF16) == (0, 1, 26, 30)
    assert [mg.type_size(t) for t in (mg.TYPE_F32, mg.TYPE_F16, mg.TYPE_I32, mg.TYPE_BF16)] == [4, 2, 4, 2]
    assert (mg.TRI_TYPE_UPPER_DIAG, mg.TRI_TYPE_UPPER, mg.TRI_TYPE_LOWER_DIAG, mg.TRI_TYPE_LOWER) == (0, 1, 2, 3)


def test_unknown_type_is_refused():
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError, match="type"):
        ctx.new_tensor_1d(4, 4)  # ggml's removed Q4_2 slot: not a minigraph type


# -- new tensors: ne, nb, n_dims, nelements, nbytes, row_size -------------------------------------

@pytest.mark.parametrize("type_, ts", [(mg.TYPE_F32, 4), (mg.TYPE_F16, 2), (mg.TYPE_I32, 4), (mg.TYPE_BF16, 2)])
def test_new_tensor_4d_strides(type_, ts):
    ctx = mg.Context()
    t = ctx.new_tensor_4d(type_, 3, 4, 5, 6)
    assert t.ne == (3, 4, 5, 6)
    assert t.nb == (ts, 3 * ts, 12 * ts, 60 * ts)
    assert t.type == type_
    assert t.op is None and t.src == [] and t.view_src is None and t.view_offs == 0
    assert mg.nelements(t) == t.nelements() == 360
    assert mg.nbytes(t) == t.nbytes() == 360 * ts
    assert mg.nrows(t) == 120
    assert mg.element_size(t) == ts


def test_new_tensor_1d_2d_3d_pad_with_ones():
    ctx = mg.Context()
    assert ctx.new_tensor_1d(mg.TYPE_F32, 7).ne == (7, 1, 1, 1)
    assert ctx.new_tensor_1d(mg.TYPE_F32, 7).nb == (4, 28, 28, 28)
    assert ctx.new_tensor_2d(mg.TYPE_F16, 7, 3).nb == (2, 14, 42, 42)
    assert ctx.new_tensor_3d(mg.TYPE_I32, 7, 3, 2).nb == (4, 28, 84, 168)


@pytest.mark.parametrize("ne, n_dims", [
    ((3, 1, 1, 1), 1), ((1, 1, 1, 1), 1), ((3, 4, 1, 1), 2), ((1, 4, 1, 1), 2),
    ((1, 1, 5, 1), 3), ((3, 4, 5, 1), 3), ((3, 1, 1, 2), 4), ((3, 4, 5, 6), 4)])
def test_n_dims(ne, n_dims):
    t = mg.Context().new_tensor_4d(mg.TYPE_F32, *ne)
    assert t.n_dims == n_dims == mg.n_dims(t)


def test_empty_tensor_nbytes_is_zero():
    ctx = mg.Context()
    t = ctx.new_tensor_2d(mg.TYPE_F32, 0, 5)
    assert mg.nbytes(t) == 0 and mg.nelements(t) == 0 and mg.is_empty(t)
    assert not mg.is_empty(ctx.new_tensor_2d(mg.TYPE_F32, 1, 5))


def test_row_size():
    assert mg.row_size(mg.TYPE_F32, 10) == 40
    assert mg.row_size(mg.TYPE_F16, 10) == 20
    assert mg.row_size(mg.TYPE_BF16, 10) == 20
    assert mg.row_size(mg.TYPE_I32, 3) == 12


def test_scalar_vector_matrix():
    ctx = mg.Context()
    assert mg.is_scalar(ctx.new_tensor_1d(mg.TYPE_F32, 1))
    v = ctx.new_tensor_1d(mg.TYPE_F32, 5)
    assert mg.is_vector(v) and mg.is_matrix(v) and not mg.is_scalar(v)
    m = ctx.new_tensor_2d(mg.TYPE_F32, 5, 2)
    assert mg.is_matrix(m) and not mg.is_vector(m)
    assert not mg.is_matrix(ctx.new_tensor_3d(mg.TYPE_F32, 5, 2, 2))


# -- nbytes of views and the contiguity predicates -------------------------------------------------
# Each row: a builder of the tensor, then its expected ne, nb, ggml_nbytes, and the predicates
# (is_contiguous, is_contiguous_1, is_contiguous_2, is_contiguous_rows, is_transposed, is_permuted).

def _base(ctx):
    return ctx.new_tensor_4d(mg.TYPE_F32, 3, 4, 5, 6)  # nb (4, 12, 48, 240)


def _root_8x6(ctx):
    return ctx.new_tensor_2d(mg.TYPE_F32, 8, 6)  # nb (4, 32, 192, 192), 192 bytes


LAYOUT_CASES = {
    "contiguous": (lambda c: _base(c), (3, 4, 5, 6), (4, 12, 48, 240), 1440,
                   (True, True, True, True, False, False)),
    # ggml_transpose swaps ne0/ne1 and nb0/nb1
    "transpose": (lambda c: c.transpose(_base(c)), (4, 3, 5, 6), (12, 4, 48, 240), 1440,
                  (False, False, False, False, True, True)),
    # ggml_permute(a, 2, 0, 1, 3): ne[2]=a.ne0, ne[0]=a.ne1, ne[1]=a.ne2
    "permute_2013": (lambda c: c.permute(_base(c), 2, 0, 1, 3), (4, 5, 3, 6), (12, 48, 4, 240), 1440,
                     (False, False, False, False, False, True)),
    # dim 0 kept, dims 1 and 2 swapped: rows stay contiguous, nothing above them is
    "permute_0213": (lambda c: c.permute(_base(c), 0, 2, 1, 3), (3, 5, 4, 6), (4, 48, 12, 240), 1440,
                     (False, False, False, True, False, True)),
    # permute(1, 2, 3, 0) then check ggml's placement rule ne[axis_i] = a.ne[i]
    "permute_1230": (lambda c: c.permute(_base(c), 1, 2, 3, 0), (6, 3, 4, 5), (240, 4, 12, 48), 1440,
                     (False, False, False, False, True, True)),
    # a [4, 3] window (rows of 8) at element 2: 4 + 2*32 bytes
    "strided_rows": (lambda c: c.view_2d(_root_8x6(c), 4, 3, 32, 8), (4, 3, 1, 1), (4, 32, 96, 96), 4 + 3 * 4 + 2 * 32,
                     (False, True, True, True, False, False)),
    # whole rows, every other row
    "every_other_row": (lambda c: c.view_2d(_root_8x6(c), 8, 3, 64, 0), (8, 3, 1, 1), (4, 64, 192, 192), 4 + 7 * 4 + 2 * 64,
                        (False, True, True, True, False, False)),
    # a gap only between the dim-2 blocks: contiguous up to dim 1, broken at dim 2
    "gap_in_dim2": (lambda c: c.view_3d(_base(c), 3, 4, 2, 12, 96, 0), (3, 4, 2, 1), (4, 12, 96, 192), 4 + 2 * 4 + 3 * 12 + 96,
                    (False, False, True, True, False, False)),
    # a transposed [5, 1]: ggml calls it contiguous (dims of size 1 are skipped) and transposed
    "transposed_vector": (lambda c: c.transpose(c.new_tensor_2d(mg.TYPE_F32, 5, 1)), (1, 5, 1, 1), (20, 4, 20, 20), 20,
                          (True, True, True, True, True, True)),
    # a row repeated with nb1 = 0 (a broadcast view): contiguous by ggml's rule, but "transposed"
    "zero_stride_rows": (lambda c: c.view_2d(_root_8x6(c), 8, 1, 0, 0), (8, 1, 1, 1), (4, 0, 0, 0), 32,
                         (True, True, True, True, True, True)),
    # reshape of a contiguous tensor: fresh contiguous strides
    "reshape": (lambda c: c.reshape_3d(_base(c), 12, 10, 3), (12, 10, 3, 1), (4, 48, 480, 1440), 1440,
                (True, True, True, True, False, False)),
    # a 1-D view at an odd element offset is contiguous
    "view_1d_offset": (lambda c: c.view_1d(_base(c), 7, 4 * 13), (7, 1, 1, 1), (4, 28, 28, 28), 28,
                       (True, True, True, True, False, False)),
}


@pytest.mark.parametrize("name", list(LAYOUT_CASES))
def test_layout_predicates(name):
    build, ne, nb, nbytes, preds = LAYOUT_CASES[name]
    t = build(mg.Context())
    assert t.ne == ne
    assert t.nb == nb
    assert mg.nbytes(t) == nbytes
    got = (mg.is_contiguous(t), mg.is_contiguous_1(t), mg.is_contiguous_2(t), mg.is_contiguous_rows(t),
           mg.is_transposed(t), mg.is_permuted(t))
    assert got == preds


def test_same_shape_and_can_repeat():
    ctx = mg.Context()
    a = ctx.new_tensor_4d(mg.TYPE_F32, 3, 4, 5, 6)
    b = ctx.new_tensor_4d(mg.TYPE_F16, 3, 4, 5, 6)
    assert mg.are_same_shape(a, b)
    assert not mg.are_same_shape(a, ctx.transpose(b))
    assert not mg.are_same_stride(a, b)  # same shape, different element size
    row = ctx.new_tensor_4d(mg.TYPE_F32, 3, 1, 1, 1)
    assert mg.can_repeat(row, a) and not mg.can_repeat(a, row)
    assert mg.can_repeat(ctx.new_tensor_4d(mg.TYPE_F32, 1, 2, 5, 3), a)
    assert not mg.can_repeat(ctx.new_tensor_4d(mg.TYPE_F32, 2, 1, 1, 1), a)  # 3 % 2 != 0
    e0 = ctx.new_tensor_2d(mg.TYPE_F32, 0, 1)
    assert mg.can_repeat(e0, ctx.new_tensor_2d(mg.TYPE_F32, 0, 4))  # empty into empty
    assert not mg.can_repeat(e0, a)  # empty into non-empty: nothing to repeat


# -- names ----------------------------------------------------------------------------------------

def test_set_name_and_format_name():
    ctx = mg.Context()
    t = ctx.new_tensor_1d(mg.TYPE_F32, 4)
    assert t.name == ""
    assert t.set_name("attn_q") is t and t.name == "attn_q" and mg.get_name(t) == "attn_q"
    assert mg.set_name(t, "x" * 100) is t
    assert t.name == "x" * 63  # GGML_MAX_NAME 64 including the NUL
    assert t.format_name("blk.%d.%s", 3, "ssm_a") is t and t.name == "blk.3.ssm_a"
    mg.format_name(t, "%s-%03d", "y" * 70, 7)
    assert t.name == ("y" * 70 + "-007")[:63]
    assert len(t.name) == 63
    t.format_name("plain")
    assert t.name == "plain"


# -- from_numpy / numpy --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("dtype, type_", [(np.float32, mg.TYPE_F32), (np.float16, mg.TYPE_F16),
                                          (np.int32, mg.TYPE_I32)])
def test_from_numpy_shape_mapping_and_round_trip(shape, dtype, type_):
    ctx = mg.Context()
    arr = (np.arange(int(np.prod(shape))) - 11).reshape(shape).astype(dtype)
    t = ctx.from_numpy(arr)
    assert t.type == type_
    assert t.ne == tuple(reversed(shape)) + (1,) * (4 - len(shape))
    assert t.n_dims == len(shape)
    assert t.nb[0] == arr.itemsize
    out = t.numpy()
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, arr)
    # element (i0, i1, ...) of ggml is numpy's [..., i1, i0]
    if len(shape) == 4:
        assert out[1, 2, 3, 4] == arr[1, 2, 3, 4]


def test_from_numpy_float64_becomes_f32_and_scalar_becomes_1_element():
    ctx = mg.Context()
    t = ctx.from_numpy(np.array([[1.5, 2.5]]))
    assert t.type == mg.TYPE_F32 and t.ne == (2, 1, 1, 1)
    assert t.numpy().dtype == np.float32 and t.numpy().shape == (2,)  # reversed(ne[:n_dims])
    s = ctx.from_numpy(np.float32(3.0))
    assert s.ne == (1, 1, 1, 1) and s.numpy().tolist() == [3.0]


def test_from_numpy_copies_its_input():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = mg.Context().from_numpy(arr)
    arr[0, 0] = 99
    assert t.numpy()[0, 0] == 0


def test_from_numpy_explicit_type():
    t = mg.Context().from_numpy(np.array([1.0, 2.0, 3.0], np.float32), mg.TYPE_F16)
    assert t.type == mg.TYPE_F16 and t.nb == (2, 6, 6, 6)
    assert t.numpy().dtype == np.float16


def test_numpy_of_non_contiguous_view_is_logical_order():
    ctx = mg.Context()
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)  # ne [4, 3]
    x = ctx.from_numpy(arr)
    np.testing.assert_array_equal(ctx.transpose(x).numpy(), arr.T)
    np.testing.assert_array_equal(ctx.permute(x, 1, 0, 2, 3).numpy(), arr.T)


# -- bf16 ------------------------------------------------------------------------------------------

# f32 inputs and their bf16 values under round-to-nearest-even (bf16 keeps 7 mantissa bits)
_E = 2.0 ** -8  # half a bf16 ulp at 1.0
BF16_CASES = [
    (1.0, 1.0),
    (1.0 + _E, 1.0),                                 # tie, 1.0 is even: down
    (1.0 + 3 * _E, 1.0 + 4 * _E),                    # tie, 1+2^-7 is odd: up to 1+2^-6
    (1.0 + _E + 2.0 ** -20, 1.0 + 2 * _E),           # above the tie: up
    (1.0 + _E - 2.0 ** -20, 1.0),                    # below the tie: down
    (-(1.0 + 3 * _E), -(1.0 + 4 * _E)),              # sign-magnitude: same rounding
    (float(np.finfo(np.float32).max), np.inf),       # f32 max rounds up past bf16 max: inf, as in ggml
    (-float(np.finfo(np.float32).max), -np.inf),
    (0.0, 0.0),
]


def test_bf16_round_to_nearest_even_through_an_op():
    ctx = mg.Context()
    src = ctx.from_numpy(np.array([v for v, _ in BF16_CASES], np.float32)).set_name("src")
    dst = ctx.new_tensor_1d(mg.TYPE_BF16, len(BF16_CASES)).set_name("dst_bf16")
    y = ctx.cpy(src, dst)  # f32 -> bf16, computed by the CPU backend
    n = len(BF16_CASES)
    assert y.type == mg.TYPE_BF16 and y.nb == (2, 2 * n, 2 * n, 2 * n) and y.view_src is dst
    back = ctx.cpy(y, ctx.new_tensor_1d(mg.TYPE_F32, len(BF16_CASES)))  # bf16 -> f32 exactly
    compute(back)
    want = np.array([w for _, w in BF16_CASES], np.float32)
    got_bf16 = y.numpy()
    assert got_bf16.dtype == np.float32  # bf16 reads back as float32
    np.testing.assert_array_equal(got_bf16, want)
    np.testing.assert_array_equal(back.numpy(), want)
    # every value really is a bf16: its low 16 bits are zero
    assert not np.any(got_bf16.view(np.uint32) & 0xFFFF)


def test_cpy_destination_needs_no_data():
    """ggml: cpy(a, dst) writes every element of dst; reading the result reads only what was written,
    so dst's prior contents are never needed (the CPU backend zero-fills such leafs)."""
    ctx = mg.Context()
    src = ctx.from_numpy(np.array([1.0, 2.0, 3.0], np.float32))
    dst = ctx.new_tensor_1d(mg.TYPE_F32, 3).set_name("dst_without_data")
    y = ctx.scale(ctx.cpy(src, dst), 2.0)
    compute(y)
    np.testing.assert_array_equal(y.numpy(), [2.0, 4.0, 6.0])


def test_bf16_set_data_rounds_the_same_way():
    vals = np.array([v for v, _ in BF16_CASES[:6]], np.float32)
    t = mg.Context().from_numpy(vals, mg.TYPE_BF16)
    np.testing.assert_array_equal(t.numpy(), np.array([w for _, w in BF16_CASES[:6]], np.float32))


# -- set_data through views ------------------------------------------------------------------------

def test_set_data_through_permuted_view_writes_the_right_memory():
    ctx = mg.Context()
    root = ctx.new_tensor_3d(mg.TYPE_F32, 4, 3, 2).set_name("root")  # numpy (2, 3, 4)
    p = ctx.permute(root, 2, 0, 1, 3)  # ne [3, 2, 4]: p(i0, i1, i2) = root(i2, i0, i1)
    assert p.ne == (3, 2, 4, 1)
    data = np.arange(24, dtype=np.float32).reshape(4, 2, 3)  # numpy shape of p: (ne2, ne1, ne0)
    p.set_data(data)
    r = root.numpy()  # (2, 3, 4): r[i2, i1, i0]
    for i0 in range(4):
        for i1 in range(3):
            for i2 in range(2):
                # root(i0, i1, i2) = p(i1, i2, i0) = data[i0, i2, i1]
                assert r[i2, i1, i0] == data[i0, i2, i1]
    np.testing.assert_array_equal(p.numpy(), data)


def test_set_data_through_strided_view_leaves_the_rest():
    ctx = mg.Context()
    root = ctx.from_numpy(np.full((6, 8), -1.0, np.float32))  # ne [8, 6]
    v = ctx.view_2d(root, 3, 2, 2 * 32, 4 * (8 + 2))  # rows 1 and 3, columns 2..4
    v.set_data(np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    want = np.full((6, 8), -1.0, np.float32)
    want[1, 2:5] = [1, 2, 3]
    want[3, 2:5] = [4, 5, 6]
    np.testing.assert_array_equal(root.numpy(), want)


# -- views -----------------------------------------------------------------------------------------

def _flat_source(ctx, n=120):
    data = np.arange(n, dtype=np.float32) * 0.5 - 3.0
    return ctx.from_numpy(data).set_name("flat"), data


def test_view_1d_to_4d_read_the_right_elements():
    ctx = mg.Context()
    src, d = _flat_source(ctx)
    ts = 4
    v1 = ctx.view_1d(src, 5, 7 * ts)
    v2 = ctx.view_2d(src, 3, 4, 10 * ts, 9 * ts)  # rows of 10 elements, start at 9
    v3 = ctx.view_3d(src, 2, 3, 2, 5 * ts, 31 * ts, 1 * ts)
    v4 = ctx.view_4d(src, 2, 2, 3, 2, 3 * ts, 11 * ts, 40 * ts, 13 * ts)
    want1 = d[7:12]
    want2 = np.array([[d[9 + 10 * i1 + i0] for i0 in range(3)] for i1 in range(4)])
    want3 = np.array([[[d[1 + 31 * i2 + 5 * i1 + i0] for i0 in range(2)] for i1 in range(3)] for i2 in range(2)])
    want4 = np.array([[[[d[13 + 40 * i3 + 11 * i2 + 3 * i1 + i0] for i0 in range(2)] for i1 in range(2)]
                       for i2 in range(3)] for i3 in range(2)])
    assert v2.nb == (4, 40, 160, 160)  # ggml_view_2d: nb2 = nb3 = nb1 * ne1
    assert v3.nb == (4, 20, 124, 248)  # ggml_view_3d: nb3 = nb2 * ne2
    assert v4.nb == (4, 12, 44, 160)
    for v, want in ((v1, want1), (v2, want2), (v3, want3), (v4, want4)):
        assert v.op == "VIEW" and v.view_src is src and v.src == [src]
        np.testing.assert_array_equal(v.numpy(), want)  # straight from the source's memory
    outs = [ctx.cont(v) for v in (v1, v2, v3, v4)]
    compute(*outs)  # and through the CPU backend
    for o, want in zip(outs, (want1, want2, want3, want4)):
        np.testing.assert_array_equal(o.numpy(), want)


def test_view_of_view_keeps_root_and_absolute_offset():
    ctx = mg.Context()
    src, d = _flat_source(ctx)
    v1 = ctx.view_1d(src, 40, 4 * 10)
    v2 = ctx.view_2d(v1, 4, 3, 4 * 6, 4 * 5)
    v3 = ctx.view_1d(v2, 2, 4 * 1)
    assert v1.view_src is src and v1.view_offs == 40
    assert v2.view_src is src and v2.view_offs == 60 and v2.src == [v1]
    assert v3.view_src is src and v3.view_offs == 64 and v3.src == [v2]
    np.testing.assert_array_equal(v3.numpy(), d[16:18])
    r = ctx.reshape_2d(v1, 8, 5)
    assert r.op == "RESHAPE" and r.view_src is src and r.view_offs == 40 and r.nb == (4, 32, 160, 160)
    p = ctx.permute(r, 1, 0, 2, 3)
    assert p.view_src is src and p.view_offs == 40
    t = ctx.transpose(p)
    assert t.view_src is src and t.view_offs == 40 and t.ne == r.ne and t.nb == r.nb
    np.testing.assert_array_equal(t.numpy(), d[10:50].reshape(5, 8))
    out = ctx.cont(v3)
    gf = compute(out)
    np.testing.assert_array_equal(out.numpy(), d[16:18])
    np.testing.assert_array_equal(mg.reference_compute(gf)[out], d[16:18])


def test_in_place_op_is_a_view_of_its_destination_root():
    ctx = mg.Context()
    src, _ = _flat_source(ctx, 12)
    v = ctx.view_1d(src, 4, 8)
    y = ctx.scale_inplace(v, 2.0)
    assert y.view_src is src and y.view_offs == 8 and y.nb == v.nb


# -- reshape / permute / transpose ----------------------------------------------------------------

def test_reshape_shapes_and_strides():
    ctx = mg.Context()
    a = ctx.new_tensor_1d(mg.TYPE_F16, 24)
    r4 = ctx.reshape_4d(a, 2, 3, 4, 1)
    assert r4.ne == (2, 3, 4, 1) and r4.nb == (2, 4, 12, 48)
    r2 = ctx.reshape_2d(r4, 6, 4)
    assert r2.ne == (6, 4, 1, 1) and r2.nb == (2, 12, 48, 48)
    r3 = ctx.reshape_3d(a, 4, 3, 2)
    assert r3.nb == (2, 8, 24, 48)
    r1 = ctx.reshape_1d(r3, 24)
    assert r1.ne == (24, 1, 1, 1)
    like = ctx.new_tensor_2d(mg.TYPE_F32, 8, 3)
    r = ctx.reshape(a, like)
    assert r.ne == (8, 3, 1, 1) and r.type == mg.TYPE_F16 and r.nb == (2, 16, 48, 48)
    for t in (r4, r2, r3, r1, r):
        assert t.op == "RESHAPE" and t.view_src is a and t.view_offs == 0


def test_reshape_keeps_logical_row_major_order():
    ctx = mg.Context()
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a = ctx.from_numpy(arr)
    np.testing.assert_array_equal(ctx.reshape_2d(a, 6, 4).numpy(), arr.reshape(4, 6))


@pytest.mark.parametrize("axes", [(0, 1, 2, 3), (1, 0, 2, 3), (2, 0, 1, 3), (3, 2, 1, 0), (1, 2, 3, 0), (0, 3, 1, 2)])
def test_permute_matches_ggml_placement(axes):
    ctx = mg.Context()
    arr = np.arange(120, dtype=np.float32).reshape(5, 4, 3, 2)  # ne [2, 3, 4, 5]
    a = ctx.from_numpy(arr)
    p = ctx.permute(a, *axes)
    ne, nb = [0] * 4, [0] * 4
    for i, ax in enumerate(axes):  # ggml: ne[axis_i] = a->ne[i], nb[axis_i] = a->nb[i]
        ne[ax], nb[ax] = a.ne[i], a.nb[i]
    assert p.ne == tuple(ne) and p.nb == tuple(nb)
    assert p.op == "PERMUTE" and p.view_src is a
    assert p.op_params == {"axis0": axes[0], "axis1": axes[1], "axis2": axes[2], "axis3": axes[3]}
    # element p(j) = a(i) with j[axis_i] = i_i; in numpy axes (reversed): transpose
    np_axes = [3 - axes.index(3 - k) for k in range(4)]
    np.testing.assert_array_equal(p.numpy(), np.transpose(arr, np_axes))


def test_transpose_shape_strides_and_values():
    ctx = mg.Context()
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # ne [4, 3, 2]
    a = ctx.from_numpy(arr)
    t = ctx.transpose(a)
    assert t.ne == (3, 4, 2, 1) and t.nb == (16, 4, 48, 96)
    np.testing.assert_array_equal(t.numpy(), np.swapaxes(arr, 1, 2))
    tt = ctx.transpose(t)
    assert tt.ne == a.ne and tt.nb == a.nb and tt.view_src is a


# -- graphs ----------------------------------------------------------------------------------------

def test_graph_topological_order_leafs_nodes():
    ctx = mg.Context()
    a = ctx.from_numpy(np.ones((2, 3), np.float32)).set_name("a")
    b = ctx.from_numpy(np.ones((2, 3), np.float32)).set_name("b")
    m = ctx.mul(a, b).set_name("m")
    s = ctx.add(m, a).set_name("s")
    v = ctx.view_1d(s, 3, 0).set_name("v")
    y = ctx.scale(v, 2.0).set_name("y")
    z = ctx.add(y, ctx.view_1d(m, 3, 12).set_name("mv")).set_name("z")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, z)
    assert [t.name for t in gf.leafs] == ["a", "b"]
    # ggml_visit_parents: post-order, src0 before src1
    assert [t.name for t in gf.nodes] == ["m", "s", "v", "y", "mv", "z"]
    assert len(gf) == 6 == mg.graph_n_nodes(gf) == gf.n_nodes()
    assert mg.graph_node(gf, -1) is z and gf.node(0) is m
    assert all(t.op is not None for t in gf.nodes) and all(t.op is None for t in gf.leafs)
    # expanding again (same tensor, or one already in the graph) adds nothing
    mg.build_forward_expand(gf, z)
    gf.build_forward_expand(s)
    assert len(gf) == 6 and len(gf.leafs) == 2
    # every source comes before its consumer, and each tensor appears once
    pos = {id(t): i for i, t in enumerate(gf.leafs + gf.nodes)}
    assert len(pos) == 8
    for t in gf.nodes:
        for src in t.src:
            assert pos[id(src)] < pos[id(t)]
    # a second output extends the same graph
    w = ctx.neg(b).set_name("w")
    gf.build_forward_expand(w)
    assert [t.name for t in gf.nodes][-1] == "w" and len(gf) == 7


def test_graph_to_networkx_edges():
    ctx = mg.Context()
    a = ctx.from_numpy(np.ones(4, np.float32)).set_name("a")
    b = ctx.from_numpy(np.ones(4, np.float32)).set_name("b")
    s = ctx.sub(a, b).set_name("s")
    d = ctx.div(s, a).set_name("d")
    gf = ctx.new_graph()
    gf.build_forward_expand(d)
    g = gf.to_networkx()
    assert g.number_of_nodes() == 4
    edges = {(g.nodes[u]["name"], g.nodes[v]["name"], k["slot"]) for u, v, k in g.edges(data=True)}
    assert edges == {("a", "s", 0), ("b", "s", 1), ("s", "d", 0), ("a", "d", 1)}
    assert g.nodes[id(a)]["leaf"] and g.nodes[id(d)]["op"] == "DIV"


def test_graph_compute_matches_reference():
    ctx = mg.Context()
    rng = np.random.default_rng(0)
    a = ctx.from_numpy(rng.standard_normal((3, 4)).astype(np.float32))
    b = ctx.from_numpy(rng.standard_normal((1, 4)).astype(np.float32))
    y = ctx.mul(ctx.add(a, b), ctx.transpose(ctx.cont(ctx.transpose(a))))
    gf = compute(y)
    np.testing.assert_allclose(y.numpy(), mg.reference_compute(gf)[y], rtol=1e-6)
