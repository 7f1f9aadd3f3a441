"""Every kind of bad input is refused with mg.MinigraphError whose message names the op (and the
tensor, by name and ne, where one is involved), and the process carries on: after each refusal a
valid graph still builds and computes on the CPU backend.
"""
import re

import numpy as np
import pytest

import minigraph as mg

CPU = mg.backend_cpu_init(2)
F32, F16, I32 = mg.TYPE_F32, mg.TYPE_F16, mg.TYPE_I32


def t(ctx, ne, name, type_=F32, fill=0.5):
    """A named leaf of shape ne (ggml order) with data."""
    ne = list(ne) + [1] * (4 - len(ne))
    x = ctx.new_tensor_4d(type_, *ne).set_name(name)
    return x.set_data(np.full(tuple(reversed(ne)), fill, np.float32))


def src48(ctx):
    """The usual victim: f32 'src' ne [4, 3], 48 bytes."""
    return t(ctx, [4, 3], "src")


def gdn_inputs(ctx, S=4, Hk=1, Hv=2, T=3, N=1, **over):
    shapes = dict(q=[S, Hk, T, N], k=[S, Hk, T, N], v=[S, Hv, T, N], g=[1, Hv, T, N], beta=[1, Hv, T, N],
                  state=[S, S, Hv, N])
    types = {}
    for k, v in over.items():
        if isinstance(v, tuple):  # (shape, type)
            shapes[k], types[k] = list(v[0]), v[1]
        else:
            shapes[k] = list(v)
    return [t(ctx, shapes[k], k, types.get(k, F32)) for k in ("q", "k", "v", "g", "beta", "state")]


# (id, call(ctx), regex the message must match for the op, strings naming the tensor)
CASES = [
    # -- views past the end of their source -------------------------------------------------------
    ("view_1d_past_end", lambda c: c.view_1d(src48(c), 13, 0), r"VIEW|view_1d", ["'src'", "[4, 3, 1, 1]"]),
    ("view_1d_offset_past_end", lambda c: c.view_1d(src48(c), 2, 44), r"VIEW|view_1d", ["'src'", "[4, 3, 1, 1]"]),
    ("view_2d_past_end", lambda c: c.view_2d(src48(c), 4, 4, 16, 0), r"VIEW|view_2d", ["'src'", "[4, 3, 1, 1]"]),
    ("view_2d_stride_past_end", lambda c: c.view_2d(src48(c), 2, 3, 24, 0), r"VIEW|view_2d", ["'src'"]),
    ("view_3d_past_end", lambda c: c.view_3d(src48(c), 4, 1, 4, 16, 16, 0), r"VIEW|view_3d", ["'src'", "[4, 3, 1, 1]"]),
    ("view_4d_past_end", lambda c: c.view_4d(src48(c), 2, 2, 2, 2, 8, 16, 24, 4), r"VIEW|view_4d", ["'src'"]),
    ("view_4d_offset_past_end", lambda c: c.view_4d(src48(c), 1, 1, 1, 1, 4, 4, 4, 48), r"VIEW|view_4d", ["'src'"]),
    ("view_of_view_past_root",
     lambda c: c.view_1d(c.view_1d(src48(c), 6, 24), 7, 0), r"VIEW|view_1d", ["'src'", "[4, 3, 1, 1]"]),
    ("view_of_view_2d_past_root",
     lambda c: c.view_2d(c.view_1d(src48(c), 6, 24), 2, 2, 16, 16), r"VIEW|view_2d", ["'src'"]),
    ("reshape_of_offset_view_fine_then_view_past",
     lambda c: c.view_1d(c.reshape_2d(c.view_1d(src48(c), 8, 16), 4, 2), 3, 28), r"VIEW|view_1d", ["'src'"]),
    # -- negative sizes, misaligned offsets/strides -----------------------------------------------
    ("view_1d_negative_ne", lambda c: c.view_1d(src48(c), -1, 0), r"view_1d", ["'src'"]),
    ("view_2d_negative_ne", lambda c: c.view_2d(src48(c), 4, -2, 16, 0), r"view_2d", ["'src'"]),
    ("view_4d_negative_ne", lambda c: c.view_4d(src48(c), 1, 1, -1, 1, 4, 4, 4, 0), r"view_4d", ["'src'"]),
    ("new_tensor_negative_ne", lambda c: c.new_tensor_2d(F32, -1, 3), r"new_tensor", []),
    ("view_misaligned_offset", lambda c: c.view_1d(src48(c), 2, 2), r"view_1d", ["'src'"]),
    ("view_negative_offset", lambda c: c.view_1d(src48(c), 2, -4), r"view_1d", ["'src'"]),
    ("view_misaligned_stride", lambda c: c.view_2d(src48(c), 2, 2, 6, 0), r"view_2d", ["'src'"]),
    ("view_float_offset", lambda c: c.view_1d(src48(c), 2, 4.0), r"view_1d", []),
    # -- permute / reshape ------------------------------------------------------------------------
    ("permute_repeated_axis", lambda c: c.permute(src48(c), 0, 0, 1, 2), r"permute", ["'src'", "[4, 3, 1, 1]"]),
    ("permute_axis_out_of_range", lambda c: c.permute(src48(c), 0, 1, 2, 4), r"permute", ["'src'"]),
    ("permute_negative_axis", lambda c: c.permute(src48(c), -1, 1, 2, 3), r"permute", ["'src'"]),
    ("reshape_non_contiguous", lambda c: c.reshape_2d(c.transpose(src48(c)), 12, 1), r"reshape_2d", ["[3, 4, 1, 1]"]),
    ("reshape_strided_view", lambda c: c.reshape_1d(c.view_2d(src48(c), 2, 3, 16, 0), 6), r"reshape_1d", ["[2, 3, 1, 1]"]),
    ("reshape_wrong_count", lambda c: c.reshape_2d(src48(c), 5, 2), r"reshape_2d", ["'src'", "[4, 3, 1, 1]"]),
    ("reshape_4d_wrong_count", lambda c: c.reshape_4d(src48(c), 2, 2, 2, 2), r"reshape_4d", ["'src'"]),
    ("reshape_like_wrong_count", lambda c: c.reshape(src48(c), t(c, [5], "like")), r"reshape", ["'src'"]),
    ("cont_2d_wrong_count", lambda c: c.cont_2d(src48(c), 5, 2), r"cont_2d", ["'src'"]),
    # -- tri ----------------------------------------------------------------------------------------
    ("tri_type_4", lambda c: c.tri(t(c, [3, 3], "m"), 4), r"tri", ["'m'", "[3, 3, 1, 1]"]),
    ("tri_type_minus_1", lambda c: c.tri(t(c, [3, 3], "m"), -1), r"tri", ["'m'"]),
    # -- from_numpy / set_data ------------------------------------------------------------------------
    ("from_numpy_5d", lambda c: c.from_numpy(np.zeros((1, 2, 1, 2, 3), np.float32)), r"from_numpy", []),
    ("from_numpy_object", lambda c: c.from_numpy(np.array([1, "a", None], dtype=object)), r"from_numpy", []),
    ("from_numpy_strings", lambda c: c.from_numpy(np.array(["a", "b"])), r"from_numpy", []),
    ("from_numpy_complex", lambda c: c.from_numpy(np.zeros(3, np.complex64)), r"from_numpy", []),
    ("from_numpy_int16", lambda c: c.from_numpy(np.zeros(3, np.int16)), r"from_numpy", []),
    ("set_data_wrong_shape", lambda c: src48(c).set_data(np.zeros((4, 3), np.float32)), r"set_data", ["'src'", "[4, 3, 1, 1]"]),
    ("set_data_too_many_dims", lambda c: src48(c).set_data(np.zeros((1, 1, 1, 1, 3, 4), np.float32)), r"set_data", ["'src'"]),
    ("set_data_object", lambda c: src48(c).set_data(np.full((3, 4), None, dtype=object)), r"set_data", ["'src'"]),
    # -- elementwise ----------------------------------------------------------------------------------
    ("add_not_repeatable", lambda c: c.add(src48(c), t(c, [3, 3], "b")), r"add", ["'src'", "'b'", "[3, 3, 1, 1]"]),
    ("mul_src1_bigger", lambda c: c.mul(t(c, [4, 1], "a"), src48(c)), r"mul", ["'a'", "'src'"]),
    ("sub_inplace_not_repeatable", lambda c: c.sub_inplace(src48(c), t(c, [2, 2], "b")), r"sub_inplace", ["'b'"]),
    ("add_i32", lambda c: c.add(t(c, [4, 3], "ints", I32), src48(c)), r"add", ["'ints'"]),
    ("scale_with_string", lambda c: c.scale(src48(c), "2.0"), r"scale", []),
    ("scale_with_none", lambda c: c.scale(src48(c), None), r"scale", []),
    ("add_numpy_array", lambda c: c.add(np.zeros((3, 4), np.float32), src48(c)), r"add", ["ndarray"]),
    ("neg_numpy_array", lambda c: c.neg(np.zeros(3, np.float32)), r"neg", ["ndarray"]),
    ("cont_list", lambda c: c.cont([1.0, 2.0]), r"cont", ["list"]),
    ("view_1d_numpy", lambda c: c.view_1d(np.zeros(4, np.float32), 2, 0), r"view_1d", ["ndarray"]),
    ("mul_mat_none", lambda c: c.mul_mat(src48(c), None), r"mul_mat", ["NoneType"]),
    # -- mul_mat ----------------------------------------------------------------------------------------
    ("mul_mat_mismatched_k", lambda c: c.mul_mat(t(c, [4, 3], "w"), t(c, [5, 2], "x")), r"mul_mat", ["'w'", "'x'", "[5, 2, 1, 1]"]),
    ("mul_mat_src1_not_multiple",
     lambda c: c.mul_mat(t(c, [4, 3, 2, 1], "w"), t(c, [4, 5, 3, 1], "x")), r"mul_mat", ["'w'", "[4, 5, 3, 1]"]),
    ("mul_mat_src1_dim3_not_multiple",
     lambda c: c.mul_mat(t(c, [4, 3, 1, 2], "w"), t(c, [4, 5, 1, 3], "x")), r"mul_mat", ["'x'"]),
    ("mul_mat_transposed_src0",
     lambda c: c.mul_mat(c.transpose(t(c, [3, 4], "w").set_name("w")).set_name("wT"), t(c, [4, 2], "x")),
     r"mul_mat", ["'wT'", "[4, 3, 1, 1]"]),
    ("out_prod_mismatch", lambda c: c.out_prod(t(c, [4, 3], "a"), t(c, [2, 2], "b")), r"out_prod", ["'a'", "'b'"]),
    # -- concat / get_rows ------------------------------------------------------------------------------
    ("concat_mismatch", lambda c: c.concat(src48(c), t(c, [3, 2], "b"), 0), r"concat", ["'src'", "'b'"]),
    ("concat_dim_4", lambda c: c.concat(src48(c), src48(c), 4), r"concat", ["'src'"]),
    ("concat_type_mismatch", lambda c: c.concat(src48(c), t(c, [4, 3], "h", F16), 1), r"concat", ["'h'"]),
    ("get_rows_f32_indices", lambda c: c.get_rows(src48(c), t(c, [2], "idx")), r"get_rows", ["'src'", "'idx'"]),
    ("get_rows_bad_batch", lambda c: c.get_rows(t(c, [4, 3, 2], "tbl"), t(c, [2, 3], "idx", I32)), r"get_rows", ["'tbl'"]),
    # -- solve_tri -----------------------------------------------------------------------------------------
    ("solve_tri_non_square", lambda c: c.solve_tri(t(c, [3, 4], "A"), t(c, [2, 4], "B")), r"solve_tri", ["'A'", "[3, 4, 1, 1]"]),
    ("solve_tri_wrong_b_rows", lambda c: c.solve_tri(t(c, [3, 3], "A"), t(c, [2, 4], "B")), r"solve_tri", ["'B'", "[2, 4, 1, 1]"]),
    ("solve_tri_right_wrong_b_cols",
     lambda c: c.solve_tri(t(c, [3, 3], "A"), t(c, [2, 3], "B"), left=False), r"solve_tri", ["'B'"]),
    ("solve_tri_batch_mismatch", lambda c: c.solve_tri(t(c, [3, 3, 2], "A"), t(c, [2, 3, 3], "B")), r"solve_tri", ["'A'"]),
    ("solve_tri_left_2", lambda c: c.solve_tri(t(c, [3, 3], "A"), t(c, [2, 3], "B"), left=2), r"solve_tri", ["'A'"]),
    ("solve_tri_lower_string", lambda c: c.solve_tri(t(c, [3, 3], "A"), t(c, [2, 3], "B"), lower="yes"), r"solve_tri", []),
    ("solve_tri_uni_float", lambda c: c.solve_tri(t(c, [3, 3], "A"), t(c, [2, 3], "B"), uni=0.5), r"solve_tri", []),
    ("solve_tri_uni_none", lambda c: c.solve_tri(t(c, [3, 3], "A"), t(c, [2, 3], "B"), uni=None), r"solve_tri", []),
    # -- gated_delta_net ----------------------------------------------------------------------------------
    ("gdn_q_vs_k", lambda c: c.gated_delta_net(*gdn_inputs(c, k=[4, 2, 3, 1])), r"gated_delta_net", ["'k'", "[4, 2, 3, 1]"]),
    ("gdn_q_wrong_S", lambda c: c.gated_delta_net(*gdn_inputs(c, q=[5, 1, 3, 1], k=[5, 1, 3, 1])), r"gated_delta_net", ["'q'"]),
    ("gdn_q_wrong_T", lambda c: c.gated_delta_net(*gdn_inputs(c, q=[4, 1, 2, 1], k=[4, 1, 2, 1])), r"gated_delta_net", ["'q'"]),
    ("gdn_hv_not_multiple_of_hk",
     lambda c: c.gated_delta_net(*gdn_inputs(c, Hk=2, Hv=3)), r"gated_delta_net", ["'v'", "[4, 3, 3, 1]"]),
    ("gdn_seqs_not_multiple",
     lambda c: c.gated_delta_net(*gdn_inputs(c, N=3, q=[4, 1, 3, 2], k=[4, 1, 3, 2])), r"gated_delta_net", ["'q'"]),
    ("gdn_g_wrong_ne0", lambda c: c.gated_delta_net(*gdn_inputs(c, g=[2, 2, 3, 1])), r"gated_delta_net", ["'g'", "[2, 2, 3, 1]"]),
    ("gdn_g_wrong_heads", lambda c: c.gated_delta_net(*gdn_inputs(c, g=[1, 1, 3, 1])), r"gated_delta_net", ["'g'"]),
    ("gdn_beta_wrong", lambda c: c.gated_delta_net(*gdn_inputs(c, beta=[1, 2, 2, 1])), r"gated_delta_net", ["'beta'"]),
    ("gdn_beta_per_row", lambda c: c.gated_delta_net(*gdn_inputs(c, beta=[4, 2, 3, 1])), r"gated_delta_net", ["'beta'"]),
    ("gdn_state_wrong", lambda c: c.gated_delta_net(*gdn_inputs(c, state=[4, 3, 2, 1])), r"gated_delta_net", ["'state'", "[4, 3, 2, 1]"]),
    ("gdn_state_wrong_seqs", lambda c: c.gated_delta_net(*gdn_inputs(c, state=[4, 4, 2, 2])), r"gated_delta_net", ["'state'"]),
    ("gdn_K_0", lambda c: c.gated_delta_net(*gdn_inputs(c), K=0), r"gated_delta_net", ["'q'"]),
    ("gdn_K_float", lambda c: c.gated_delta_net(*gdn_inputs(c), K=1.0), r"gated_delta_net", []),
    ("gdn_f16_q", lambda c: c.gated_delta_net(*gdn_inputs(c, q=([4, 1, 3, 1], F16))), r"gated_delta_net", ["'q'", "f16"]),
    ("gdn_f16_state", lambda c: c.gated_delta_net(*gdn_inputs(c, state=([4, 4, 2, 1], F16))), r"gated_delta_net", ["'state'", "f16"]),
    ("gdn_numpy_state",
     lambda c: c.gated_delta_net(*gdn_inputs(c)[:5], np.zeros((1, 2, 4, 4), np.float32)), r"gated_delta_net", ["ndarray"]),
    ("gdn_state_slot_out_of_range",
     lambda c: c.gated_delta_net_state(c.gated_delta_net(*gdn_inputs(c), K=2), 2), r"gated_delta_net_state", []),
    # -- acc / set ----------------------------------------------------------------------------------------
    ("acc_past_end", lambda c: c.acc(src48(c), t(c, [2, 2], "b"), 16, 32, 32, 40), r"acc", ["'src'", "'b'"]),
    ("acc_inplace_past_end", lambda c: c.acc_inplace(src48(c), t(c, [2, 2], "b"), 16, 32, 32, 40), r"acc_inplace", ["'src'"]),
    ("set_past_end", lambda c: c.set(src48(c), t(c, [4, 4], "b"), 16, 64, 64, 0), r"set", ["'src'", "[4, 4, 1, 1]"]),
    ("set_1d_past_end", lambda c: c.set_1d(src48(c), t(c, [5], "b"), 32), r"set_1d", ["'src'"]),
    ("set_2d_past_end", lambda c: c.set_2d(src48(c), t(c, [2, 2], "b"), 32, 12), r"set_2d", ["'src'"]),
    ("set_negative_offset", lambda c: c.set(src48(c), t(c, [2], "b"), 8, 8, 8, -4), r"set", ["'src'"]),
    ("set_misaligned_offset", lambda c: c.set(src48(c), t(c, [2], "b"), 8, 8, 8, 2), r"set", ["'src'"]),
    ("acc_overlapping_rows", lambda c: c.acc(src48(c), t(c, [3, 2], "b"), 8, 16, 16, 0), r"acc", ["'b'", "overlap"]),
    ("set_inplace_overlapping", lambda c: c.set_inplace(src48(c), t(c, [2, 2, 2], "b"), 16, 4, 32, 0), r"set_inplace", ["overlap"]),
    ("acc_non_contiguous_dst", lambda c: c.acc(c.transpose(src48(c)), t(c, [1], "b"), 12, 12, 12, 0), r"acc", ["'b'"]),
    # -- reductions ------------------------------------------------------------------------------------
    ("cumsum_dim_4", lambda c: c.cumsum(src48(c), 4), r"cumsum", ["'src'", "[4, 3, 1, 1]"]),
    ("cumsum_dim_negative", lambda c: c.cumsum(src48(c), -1), r"cumsum", ["'src'"]),
    ("rms_norm_negative_eps", lambda c: c.rms_norm(src48(c), -1e-6), r"rms_norm", ["'src'"]),
    ("soft_max_ext_bad_mask",
     lambda c: c.soft_max_ext(src48(c), t(c, [3, 3], "mask"), 1.0, 0.0), r"soft_max_ext", ["'mask'"]),
    ("soft_max_add_sinks_not_a_softmax", lambda c: mg.soft_max_add_sinks(c.scale(src48(c), 2.0), t(c, [1], "sinks")),
     r"soft_max_add_sinks", ["SOFT_MAX", "'SCALE'"]),
    ("soft_max_add_sinks_wrong_count", lambda c: mg.soft_max_add_sinks(c.soft_max(src48(c)), t(c, [2], "sinks")),
     r"soft_max_add_sinks", ["'sinks'", "n_head = 1"]),
    ("soft_max_add_sinks_twice", lambda c: _sinks_twice(c), r"soft_max_add_sinks", ["already has sinks"]),
    # -- graphs -----------------------------------------------------------------------------------------
    ("build_forward_expand_numpy", lambda c: mg.build_forward_expand(c.new_graph(), np.zeros(3)), r"build_forward_expand", []),
]


def _sinks_twice(c):
    sm = c.soft_max(src48(c))
    mg.soft_max_add_sinks(sm, t(c, [1], "sinks"))
    mg.soft_max_add_sinks(sm, t(c, [1], "sinks2"))


# Refusals that once slipped through (bad ints multiplied before their check, negative sizes).
BUGGY = [
    pytest.param(lambda c: c.cont_2d(src48(c), -4, -3), r"cont_2d", ["'src'"], id="cont_2d_negative_ne"),
    pytest.param(lambda c: c.cont_4d(src48(c), -2, -6, 1, 1), r"cont_4d", ["'src'"], id="cont_4d_negative_ne"),
    pytest.param(lambda c: c.repeat_4d(src48(c), -4, -3, 1, 1), r"repeat_4d", ["'src'"], id="repeat_4d_negative_ne"),
    pytest.param(lambda c: c.set_1d(np.ones(12, np.float32), src48(c), 0), r"set_1d", ["ndarray"],
                 id="set_1d_numpy_destination"),
    pytest.param(lambda c: c.set_2d_inplace(None, src48(c), 16, 0), r"set_2d_inplace", ["NoneType"],
                 id="set_2d_inplace_none_destination"),
    pytest.param(lambda c: c.view_1d(src48(c), None, 0), r"view_1d", ["ne0"], id="view_1d_none_ne"),
    pytest.param(lambda c: c.view_2d(src48(c), 2, 2, None, 0), r"view_2d", ["nb1"], id="view_2d_none_nb1"),
]


def _survives():
    """A fresh valid graph still builds and computes (CPU) and matches numpy."""
    ctx = mg.Context()
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = ctx.from_numpy(a)
    y = ctx.add(ctx.scale(x, 2.0), ctx.from_numpy(np.ones(4, np.float32)))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    CPU.graph_compute(gf)
    np.testing.assert_array_equal(y.numpy(), a * 2 + 1)


@pytest.mark.parametrize("call, op_re, names", [pytest.param(*c[1:], id=c[0]) for c in CASES] + BUGGY)
def test_refused(call, op_re, names):
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError) as info:
        call(ctx)
    msg = str(info.value)
    assert re.search(op_re, msg), f"message does not name the op ({op_re}): {msg}"
    for s in names:
        assert s in msg, f"message does not mention {s!r}: {msg}"
    _survives()


def test_refusals_are_value_errors():
    assert issubclass(mg.MinigraphError, ValueError)


def test_unknown_op_is_attribute_error():
    ctx = mg.Context()
    with pytest.raises(AttributeError, match="not_an_op"):
        ctx.not_an_op(src48(ctx))
    _survives()


def test_compute_without_input_data_names_the_tensor():
    ctx = mg.Context()
    a = ctx.new_tensor_2d(F32, 4, 3).set_name("weights_without_data")
    y = ctx.scale(a, 2.0)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    with pytest.raises(mg.MinigraphError, match="weights_without_data"):
        CPU.graph_compute(gf)
    with pytest.raises(mg.MinigraphError, match="weights_without_data"):
        mg.reference_compute(gf)
    _survives()
    # giving it data afterwards makes the same graph computable
    a.set_data(np.ones((3, 4), np.float32))
    CPU.graph_compute(gf)
    np.testing.assert_array_equal(y.numpy(), np.full((3, 4), 2.0, np.float32))


def test_numpy_of_tensor_without_data_names_it():
    ctx = mg.Context()
    a = ctx.new_tensor_1d(F32, 3).set_name("empty_leaf")
    with pytest.raises(mg.MinigraphError, match="empty_leaf"):
        a.numpy()
    y = ctx.neg(a).set_name("never_computed")
    with pytest.raises(mg.MinigraphError, match="never_computed"):
        y.numpy()
    _survives()


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_get_rows_out_of_range_index_at_compute_time(bad):
    ctx = mg.Context()
    table = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4)).set_name("table")
    idx = ctx.from_numpy(np.array([0, bad, 1], np.int32)).set_name("idx")
    rows = ctx.get_rows(table, idx).set_name("rows")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, rows)
    with pytest.raises(mg.MinigraphError, match="GET_ROWS") as info:
        CPU.graph_compute(gf)
    assert "rows" in str(info.value)
    _survives()
    # the same graph computes once the indices are fixed
    idx.set_data(np.array([0, 2, 1], np.int32))
    CPU.graph_compute(gf)
    np.testing.assert_array_equal(rows.numpy(), np.arange(12, dtype=np.float32).reshape(3, 4)[[0, 2, 1]])


def test_get_rows_out_of_range_inside_a_larger_graph():
    """The failing node is in the middle of a compiled program: the error still names it."""
    ctx = mg.Context()
    table = ctx.from_numpy(np.ones((3, 4), np.float32)).set_name("table")
    idx = ctx.from_numpy(np.array([5], np.int32)).set_name("idx")
    y = ctx.scale(ctx.get_rows(ctx.neg(table), idx), 3.0)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    with pytest.raises(mg.MinigraphError, match="GET_ROWS"):
        CPU.graph_compute(gf)
    _survives()


def test_refused_builder_leaves_context_usable():
    """A refusal in the middle of building does not poison the context or the graph."""
    ctx = mg.Context()
    a = src48(ctx)
    with pytest.raises(mg.MinigraphError):
        ctx.view_1d(a, 100, 0)
    with pytest.raises(mg.MinigraphError):
        ctx.mul_mat(a, t(ctx, [5, 2], "x"))
    y = ctx.sum(ctx.mul(a, a))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    CPU.graph_compute(gf)
    assert y.numpy()[0] == pytest.approx(12 * 0.25)
