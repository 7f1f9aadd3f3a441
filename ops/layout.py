"""Layout ops: views (VIEW, RESHAPE, PERMUTE, TRANSPOSE) and copies (CONT, CPY, DUP, PAD,
REPEAT, CONCAT, GET_ROWS).

Views compute nothing: they are tensors over their source's memory (view_src, view_offs) and
every view is checked at build time so that it cannot reach past its source.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from minigraph.core import dtypes, quants
from minigraph.core.errors import expect, fail
from minigraph.core.tensor import Tensor, can_repeat, contiguous_strides, is_contiguous, nelements

from minigraph.ops.common import F32, check_int, check_tensor, tile_to
from minigraph.core.registry import WRITTEN_BY, OpDef, builder, register

NONE_BYTES = lambda node: 0.0  # noqa: E731  (views do no arithmetic)

def _rebuild_view(ctx, spec, a):
    """view_tensor when the record keeps a's geometry (its nb0 may then differ from the element
    size), else view_4d with the record's ne, nb1..3 and offset: both check the view's bounds."""
    check_tensor("view", a)
    if (spec.ne, spec.nb, spec.offset_in(a)) == (a.ne, a.nb, 0):
        return ctx.view_tensor(a)
    return ctx.view_4d(a, *spec.ne, *spec.nb[1:], spec.offset_in(a))


VIEW = register(OpDef("VIEW", "layout", None, is_view=True, flops=NONE_BYTES, rebuild=_rebuild_view))
RESHAPE = register(OpDef("RESHAPE", "layout", None, is_view=True, flops=NONE_BYTES,
                         rebuild=lambda ctx, spec, a: ctx.reshape_4d(a, *spec.ne)))
PERMUTE = register(OpDef("PERMUTE", "layout", None, params=("axis0", "axis1", "axis2", "axis3"),
                         is_view=True, flops=NONE_BYTES,
                         rebuild=lambda ctx, spec, a: ctx.permute(a, *(spec.params.get(f"axis{i}") for i in range(4)))))
TRANSPOSE = register(OpDef("TRANSPOSE", "layout", None, is_view=True, flops=NONE_BYTES,
                           rebuild=lambda ctx, spec, a: ctx.transpose(a)))


def _logical_copy(node, a, *rest):
    """Copy a's elements in logical row-major order into the node's shape (CONT, DUP, CPY);
    an i32 destination truncates like a C cast; a quantized one holds its rows quantized (ggml's
    reference quantizer) and dequantized again."""
    out = a.reshape(tuple(reversed(node.ne)))
    if dtypes.is_quantized(node.type):
        return quants.roundtrip(out, node.type)
    return np.trunc(out) if node.type == dtypes.TYPE_I32 else out


CONT = register(OpDef("CONT", "layout", _logical_copy, flops=NONE_BYTES,
                      doc="contiguous copy of any view, optionally with a new shape",
                      rebuild=lambda ctx, spec, a: ctx.cont_4d(a, *spec.ne)))
DUP = register(OpDef("DUP", "layout", _logical_copy, flops=NONE_BYTES, rebuild=lambda ctx, spec, a: ctx.dup(a)))
def _rebuild_cpy(ctx, spec, a, b):
    t = ctx.cpy(a, b)
    if spec.params.get(WRITTEN_BY):
        from minigraph.ops.gated_delta_net import mark_state_written   # the one op that writes for a CPY
        mark_state_written(t)
    return t


CPY = register(OpDef("CPY", "layout", _logical_copy, flops=NONE_BYTES, shape_only=(1,),
                     doc="copy src0 into src1's memory (converting type); the node is a view of src1",
                     rebuild=_rebuild_cpy))


def _ref_pad(node, a, p0, p1, p2, p3):
    return np.pad(a, [(0, p3), (0, p2), (0, p1), (0, p0)])


PAD = register(OpDef("PAD", "layout", _ref_pad, params=("p0", "p1", "p2", "p3"), flops=NONE_BYTES,
                     rebuild=lambda ctx, spec, a: ctx.pad(a, *(spec.params.get(f"p{i}") for i in range(4)))))
REPEAT = register(OpDef("REPEAT", "layout", lambda node, a: tile_to(a, tuple(reversed(node.ne))), flops=NONE_BYTES,
                        rebuild=lambda ctx, spec, a: ctx.repeat_4d(a, *spec.ne)))


def _ref_concat(node, a, b, dim):
    return np.concatenate([a, b], axis=3 - dim)


CONCAT = register(OpDef("CONCAT", "layout", _ref_concat, params=("dim",), flops=NONE_BYTES,
                        rebuild=lambda ctx, spec, a, b: ctx.concat(a, b, spec.params.get("dim"))))


def _ref_get_rows(node, a, idx):
    # a [ne00, ne01, ne02, ne03], idx [ne10, ne11, ne12] -> [ne00, ne10, ne11, ne12]
    bad = np.argwhere((idx < 0) | (idx >= a.shape[2]))
    if bad.size:  # numpy would raise IndexError, or wrap a negative index silently
        i3, i2, i1, i0 = (int(x) for x in bad[0])
        raise fail("GET_ROWS", f"row index {int(idx[i3, i2, i1, i0])} at indices[{i0}, {i1}, {i2}] is outside "
                   f"0..{a.shape[2] - 1} (the table's ne1 = {a.shape[2]} rows); node '{node.name}'", node.src)
    out = np.empty(tuple(reversed(node.ne)), np.float64)
    for i12 in range(idx.shape[1]):
        for i11 in range(idx.shape[2]):
            rows = idx[0, i12, i11, :].astype(np.int64)
            out[i12, i11] = a[i12 % a.shape[0], i11 % a.shape[1], rows, :]
    return out


def _sample_get_rows(node, i: int, rng: np.random.Generator):
    return rng.integers(0, max(node.src[0].ne[1], 1), size=tuple(reversed(node.src[1].ne))) if i == 1 else None


GET_ROWS = register(OpDef("GET_ROWS", "layout", _ref_get_rows, flops=NONE_BYTES, sample=_sample_get_rows,
                          rebuild=lambda ctx, spec, a, b: ctx.get_rows(a, b)))


# -- views ------------------------------------------------------------------------------------

def _view(ctx, a: Tensor, ne: Sequence[int], nb1: int, nb2: int, nb3: int, offset: int, name: str) -> Tensor:
    check_tensor(name, a)
    ne = [check_int(name, f"ne{i}", n) for i, n in enumerate(ne)]
    ts = dtypes.type_size(a.type)
    nbs = [ts, check_int(name, "nb1", nb1), check_int(name, "nb2", nb2), check_int(name, "nb3", nb3)]
    offset = check_int(name, "offset", offset)
    expect(all(n >= 0 for n in ne), name, f"negative size in ne={ne}", a)
    if dtypes.is_quantized(a.type):
        blck = dtypes.blck_size(a.type)
        expect(ne[0] % blck == 0 and offset >= 0 and offset % ts == 0 and all(s >= 0 and s % ts == 0 for s in nbs),
               name, f"a view of {dtypes.type_name(a.type)} data must not split its blocks ({blck} elements, {ts} "
               f"bytes): ne0 = {ne[0]}, offset {offset} and strides {nbs[1:]} must be whole blocks", a)
    expect(offset >= 0 and offset % ts == 0 and all(s >= 0 and s % ts == 0 for s in nbs), name,
           f"offset {offset} and strides {nbs} must be non-negative multiples of the element size {ts}", a)
    return ctx.new_node(VIEW, a.type, ne, [a], nb=nbs, view_src=a,
                        view_offs=offset)


@builder("view_1d")
def view_1d(ctx, a: Tensor, ne0: int, offset: int) -> Tensor:
    """A 1-d view of ne0 consecutive elements of a, starting `offset` bytes in (ggml_view_1d).

    Like every view it computes nothing; it is checked here so it cannot reach past a's memory.

    a:      [ne00, ne01, ne02, ne03], any type, any strides.
    ne0:    number of elements.
    offset: start, in bytes from the start of a's memory (a multiple of the element size).
    result: [ne0, 1, 1, 1], a's type, a view of a (view_src = a).
    """
    type_ = getattr(a, "type", F32)
    ne0 = check_int("view_1d", "ne0", ne0)
    # a row's bytes (ggml_row_size); a quantized ne0 that splits a block is refused by _view
    row = dtypes.type_size(type_) * (ne0 // dtypes.blck_size(type_))
    return _view(ctx, a, [ne0, 1, 1, 1], row, row, row, offset, "view_1d")


@builder("view_2d")
def view_2d(ctx, a: Tensor, ne0: int, ne1: int, nb1: int, offset: int) -> Tensor:
    """A 2-d view of a: ne1 rows of ne0 elements, rows nb1 bytes apart (ggml_view_2d).

    Like every view it computes nothing; it is checked here so it cannot reach past a's memory.

    a:        [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1: the view's sizes.
    nb1:      row stride in bytes (e.g. a.nb[1] for a's own rows).
    offset:   start, in bytes from the start of a's memory.
    result:   [ne0, ne1, 1, 1], a's type, nb = [element size, nb1, nb1 * ne1, nb1 * ne1], a view of a.
    """
    nb1, ne1 = check_int("view_2d", "nb1", nb1), check_int("view_2d", "ne1", ne1)
    return _view(ctx, a, [ne0, ne1, 1, 1], nb1, nb1 * ne1, nb1 * ne1, offset, "view_2d")


@builder("view_3d")
def view_3d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int, nb1: int, nb2: int, offset: int) -> Tensor:
    """A 3-d view of a with byte strides nb1 (rows) and nb2 (planes) (ggml_view_3d).

    Like every view it computes nothing; it is checked here so it cannot reach past a's memory.

    a:             [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1, ne2: the view's sizes.
    nb1, nb2:      row and plane strides in bytes.
    offset:        start, in bytes from the start of a's memory.
    result:        [ne0, ne1, ne2, 1], a's type, nb = [element size, nb1, nb2, nb2 * ne2], a view of a.
    """
    nb2, ne2 = check_int("view_3d", "nb2", nb2), check_int("view_3d", "ne2", ne2)
    return _view(ctx, a, [ne0, ne1, ne2, 1], nb1, nb2, nb2 * ne2, offset, "view_3d")


@builder("view_4d")
def view_4d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int, ne3: int, nb1: int, nb2: int, nb3: int,
            offset: int) -> Tensor:
    """A 4-d view of a with byte strides nb1, nb2, nb3 (ggml_view_4d).

    Like every view it computes nothing; it is checked here so it cannot reach past a's memory.

    a:                  [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1, ne2, ne3: the view's sizes.
    nb1, nb2, nb3:      strides in bytes of dims 1, 2, 3 (dim 0 is contiguous: nb0 = element size).
    offset:             start, in bytes from the start of a's memory.
    result:             [ne0, ne1, ne2, ne3], a's type, nb = [element size, nb1, nb2, nb3], a view of a.
    """
    return _view(ctx, a, [ne0, ne1, ne2, ne3], nb1, nb2, nb3, offset, "view_4d")


@builder("view_tensor")
def view_tensor(ctx, a: Tensor) -> Tensor:
    """A view of all of a, same ne and nb (ggml_view_tensor).

    a:      [ne0, ne1, ne2, ne3], any type, any strides.
    result: [ne0, ne1, ne2, ne3] with a's type and nb, a view of a.
    """
    check_tensor("view_tensor", a)
    return ctx.new_node(VIEW, a.type, a.ne, [a], nb=a.nb, view_src=a)


def _reshape(ctx, a: Tensor, ne: Sequence[int], name: str) -> Tensor:
    check_tensor(name, a)
    ne = [check_int(name, f"ne{i}", n) for i, n in enumerate(ne)] + [1] * (4 - len(ne))
    expect(is_contiguous(a), name, "needs a contiguous tensor (ggml_cont it first)", a)
    expect(all(n >= 0 for n in ne), name, f"negative size in ne={ne}", a)
    expect(int(np.prod(ne)) == nelements(a), name,
           f"ne={ne} has {int(np.prod(ne))} elements, the tensor has {nelements(a)}", a)
    return ctx.new_node(RESHAPE, a.type, ne, [a], nb=contiguous_strides(a.type, ne), view_src=a)


@builder("reshape")
def reshape(ctx, a: Tensor, b: Tensor) -> Tensor:
    """a's elements with b's shape; b's values are not read (ggml_reshape).

    a:      [ne00, ne01, ne02, ne03], any type, contiguous (ggml_cont a strided view first).
    b:      [ne0, ne1, ne2, ne3] with as many elements as a, any type: gives the shape only.
    result: [ne0, ne1, ne2, ne3] (b's ne), a's type, contiguous strides, a view of a.
    """
    check_tensor("reshape", b)
    return _reshape(ctx, a, b.ne, "reshape")


@builder("reshape_1d")
def reshape_1d(ctx, a: Tensor, ne0: int) -> Tensor:
    """a's elements as a 1-d tensor [ne0, 1, 1, 1] (ggml_reshape_1d).

    a:      [ne00, ne01, ne02, ne03], any type, contiguous (ggml_cont a strided view first).
    ne0:    the new sizes; their product must equal a's element count.
    result: [ne0, 1, 1, 1], a's type, contiguous strides, a view of a.
    """
    return _reshape(ctx, a, [ne0], "reshape_1d")


@builder("reshape_2d")
def reshape_2d(ctx, a: Tensor, ne0: int, ne1: int) -> Tensor:
    """a's elements as a 2-d tensor [ne0, ne1, 1, 1] (ggml_reshape_2d).

    a:        [ne00, ne01, ne02, ne03], any type, contiguous (ggml_cont a strided view first).
    ne0, ne1: the new sizes; their product must equal a's element count.
    result:   [ne0, ne1, 1, 1], a's type, contiguous strides, a view of a.
    """
    return _reshape(ctx, a, [ne0, ne1], "reshape_2d")


@builder("reshape_3d")
def reshape_3d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int) -> Tensor:
    """a's elements as a 3-d tensor [ne0, ne1, ne2, 1] (ggml_reshape_3d).

    a:             [ne00, ne01, ne02, ne03], any type, contiguous (ggml_cont a strided view first).
    ne0, ne1, ne2: the new sizes; their product must equal a's element count.
    result:        [ne0, ne1, ne2, 1], a's type, contiguous strides, a view of a.
    """
    return _reshape(ctx, a, [ne0, ne1, ne2], "reshape_3d")


@builder("reshape_4d")
def reshape_4d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int, ne3: int) -> Tensor:
    """a's elements as a 4-d tensor [ne0, ne1, ne2, ne3] (ggml_reshape_4d).

    a:                  [ne00, ne01, ne02, ne03], any type, contiguous (ggml_cont a strided view first).
    ne0, ne1, ne2, ne3: the new sizes; their product must equal a's element count.
    result:             [ne0, ne1, ne2, ne3], a's type, contiguous strides, a view of a.
    """
    return _reshape(ctx, a, [ne0, ne1, ne2, ne3], "reshape_4d")


@builder("permute")
def permute(ctx, a: Tensor, axis0: int, axis1: int, axis2: int, axis3: int) -> Tensor:
    """Reorder a's dims without copying: a's dim i becomes the result's dim axis_i (ggml_permute).

    So result.ne[axis0] = a.ne[0] and result.nb[axis0] = a.nb[0], and so on; permute(a, 1, 0, 2, 3)
    is transpose(a). Follow it with ctx.cont for a contiguous copy.

    a:                          [ne0, ne1, ne2, ne3], any type, any strides.
    axis0, axis1, axis2, axis3: where a's dims 0, 1, 2, 3 go: a permutation of 0..3.
    result:                     a view of a with the permuted ne and nb, a's type.
    """
    check_tensor("permute", a)
    axes = [check_int("permute", f"axis{i}", x) for i, x in enumerate((axis0, axis1, axis2, axis3))]
    expect(sorted(axes) == [0, 1, 2, 3], "permute", f"axes {axes} must be a permutation of 0..3", a)
    expect(axes[0] == 0 or not dtypes.is_quantized(a.type), "permute", f"{dtypes.type_name(a.type)} blocks run "
           "along ne0: a permute that moves dim 0 would split them (dequantize with ggml_cpy to f32 first)", a)
    ne, nb = [0] * 4, [0] * 4
    for i, ax in enumerate(axes):
        ne[ax], nb[ax] = a.ne[i], a.nb[i]
    return ctx.new_node(PERMUTE, a.type, ne, [a], params=dict(zip(PERMUTE.params, axes)), nb=nb,
                        view_src=a)


@builder("transpose")
def transpose(ctx, a: Tensor) -> Tensor:
    """Swap dims 0 and 1 without copying (ggml_transpose): permute(a, 1, 0, 2, 3).

    a:      [ne0, ne1, ne2, ne3], any type.
    result: [ne1, ne0, ne2, ne3] with a's nb0 and nb1 swapped, a view of a.
    """
    check_tensor("transpose", a)
    expect(not dtypes.is_quantized(a.type), "transpose", f"{dtypes.type_name(a.type)} blocks run along ne0: a "
           "transpose would split them (dequantize with ggml_cpy to f32 first)", a)
    ne = [a.ne[1], a.ne[0], a.ne[2], a.ne[3]]
    nb = [a.nb[1], a.nb[0], a.nb[2], a.nb[3]]
    return ctx.new_node(TRANSPOSE, a.type, ne, [a], nb=nb, view_src=a)


# -- copies -----------------------------------------------------------------------------------

def _cont(ctx, a: Tensor, ne: Sequence[int], name: str) -> Tensor:
    check_tensor(name, a)
    ne = [check_int(name, f"ne{i}", n) for i, n in enumerate(ne)] + [1] * (4 - len(ne))
    expect(all(n >= 0 for n in ne), name, f"negative size in ne={ne}", a)
    expect(int(np.prod(ne)) == nelements(a), name,
           f"ne={ne} has {int(np.prod(ne))} elements, the tensor has {nelements(a)}", a)
    return ctx.new_node(CONT, a.type, ne, [a])


@builder("cont")
def cont(ctx, a: Tensor) -> Tensor:
    """A contiguous copy of a, whatever its strides (ggml_cont).

    a:      [ne0, ne1, ne2, ne3], any type, any strides (typically a permute or transpose).
    result: [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    check_tensor("cont", a)
    return _cont(ctx, a, a.ne, "cont")


@builder("cont_1d")
def cont_1d(ctx, a: Tensor, ne0: int) -> Tensor:
    """A contiguous copy of a, in logical element order, shaped [ne0, 1, 1, 1] (ggml_cont_1d).

    a:      [ne00, ne01, ne02, ne03], any type, any strides.
    ne0:    the new sizes; their product must equal a's element count.
    result: [ne0, 1, 1, 1], a's type, contiguous.
    """
    return _cont(ctx, a, [ne0], "cont_1d")


@builder("cont_2d")
def cont_2d(ctx, a: Tensor, ne0: int, ne1: int) -> Tensor:
    """A contiguous copy of a, in logical element order, shaped [ne0, ne1, 1, 1] (ggml_cont_2d).

    a:        [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1: the new sizes; their product must equal a's element count.
    result:   [ne0, ne1, 1, 1], a's type, contiguous.
    """
    return _cont(ctx, a, [ne0, ne1], "cont_2d")


@builder("cont_3d")
def cont_3d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int) -> Tensor:
    """A contiguous copy of a, in logical element order, shaped [ne0, ne1, ne2, 1] (ggml_cont_3d).

    a:             [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1, ne2: the new sizes; their product must equal a's element count.
    result:        [ne0, ne1, ne2, 1], a's type, contiguous.
    """
    return _cont(ctx, a, [ne0, ne1, ne2], "cont_3d")


@builder("cont_4d")
def cont_4d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int, ne3: int) -> Tensor:
    """A contiguous copy of a, in logical element order, shaped [ne0, ne1, ne2, ne3] (ggml_cont_4d).

    a:                  [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1, ne2, ne3: the new sizes; their product must equal a's element count.
    result:             [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    return _cont(ctx, a, [ne0, ne1, ne2, ne3], "cont_4d")


@builder("dup")
def dup(ctx, a: Tensor) -> Tensor:
    """A copy of a (ggml_dup).

    a:      [ne0, ne1, ne2, ne3], any type, any strides.
    result: [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    check_tensor("dup", a)
    return ctx.new_node(DUP, a.type, a.ne, [a])


@builder("cpy")
def cpy(ctx, a: Tensor, b: Tensor) -> Tensor:
    """Copy a's elements into b's memory, converting to b's type (ggml_cpy).

    Elements go in logical order, so the shapes may differ as long as the counts match; this is
    how ggml writes a KV cache (cpy into a view of it) and changes type (f32 -> f16; to i32
    truncates toward zero like a C cast). b's values are not read. Quantized: f32 -> Q4_0 ... Q8_K
    quantizes b's rows with ggml's reference quantizer (the bytes ggml_quantize_chunk writes);
    Q4_0 ... Q8_K -> f32/f16 dequantizes.

    a:      [ne00, ne01, ne02, ne03], any type, any strides.
    b:      [ne10, ne11, ne12, ne13] with a's element count, any type, any strides: the destination.
    result: a view of b (b's ne, type and nb); computing it writes b's memory.
    """
    check_tensor("cpy", a, b)
    expect(nelements(a) == nelements(b), "cpy", "source and destination need the same number of elements", a, b)
    if dtypes.is_quantized(a.type) or dtypes.is_quantized(b.type):
        expect((a.type == F32 and dtypes.is_quantized(b.type) and b.type != dtypes.TYPE_Q8_1)
               or (dtypes.is_quantized(a.type) and b.type in (F32, dtypes.TYPE_F16)), "cpy",
               f"quantized copies go f32 -> quantized (ggml's from_float) or quantized -> f32/f16 (to_float), "
               f"not {dtypes.type_name(a.type)} -> {dtypes.type_name(b.type)}", a, b)
    return ctx.new_node(CPY, b.type, b.ne, [a, b], nb=b.nb, view_src=b)


@builder("pad")
def pad(ctx, a: Tensor, p0: int, p1: int, p2: int, p3: int) -> Tensor:
    """Append zeros at the end of each dim (ggml_pad).

    a:                  [ne0, ne1, ne2, ne3], any type, any strides.
    p0, p1, p2, p3:     how many zeros to append to dims 0..3 (>= 0).
    result:             [ne0 + p0, ne1 + p1, ne2 + p2, ne3 + p3], a's type, contiguous.
    """
    check_tensor("pad", a)
    ps = [check_int("pad", f"p{i}", p) for i, p in enumerate((p0, p1, p2, p3))]
    expect(all(p >= 0 for p in ps), "pad", f"padding {ps} must be non-negative", a)
    ne = [n + p for n, p in zip(a.ne, ps)]
    return ctx.new_node(PAD, a.type, ne, [a], params=dict(zip(PAD.params, ps)))


@builder("repeat")
def repeat(ctx, a: Tensor, b: Tensor) -> Tensor:
    """Tile a to b's shape; b's values are not read (ggml_repeat).

    a:      [ne0, ne1, ne2, ne3], any type, any strides.
    b:      [ne10, ne11, ne12, ne13], each a whole multiple of a's size in that dim: gives the shape only.
    result: [ne10, ne11, ne12, ne13], a's type, contiguous; result[i] = a[i mod a.ne] in every dim.
    """
    check_tensor("repeat", a, b)
    expect(can_repeat(a, b), "repeat", "every dim of the target must be a multiple of the source's", a, b)
    return ctx.new_node(REPEAT, a.type, b.ne, [a])


@builder("repeat_4d")
def repeat_4d(ctx, a: Tensor, ne0: int, ne1: int, ne2: int, ne3: int) -> Tensor:
    """Tile a to the shape [ne0, ne1, ne2, ne3] (ggml_repeat_4d).

    a:                  [ne00, ne01, ne02, ne03], any type, any strides.
    ne0, ne1, ne2, ne3: the target sizes, each a whole multiple of a's size in that dim.
    result:             [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    check_tensor("repeat_4d", a)
    ne = [check_int("repeat_4d", f"ne{i}", n) for i, n in enumerate((ne0, ne1, ne2, ne3))]
    expect(all(n >= 0 for n in ne), "repeat_4d", f"negative size in ne={ne}", a)
    ok = all(n % m == 0 for m, n in zip(a.ne, ne)) if all(m > 0 for m in a.ne) else all(n == 0 for n in ne)
    expect(ok, "repeat_4d", f"target ne={ne} must be a multiple of the source's in every dim", a)
    return ctx.new_node(REPEAT, a.type, ne, [a])


@builder("concat")
def concat(ctx, a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Join a and b along one dim, a first (ggml_concat).

    a:      [ne0, ne1, ne2, ne3], any type, any strides.
    b:      [ne0, ne1, ne2, ne3] except in dim (any size there), a's type, any strides.
    dim:    the dim to join along, 0..3.
    result: a's ne with ne[dim] = a.ne[dim] + b.ne[dim], a's type, contiguous.
    """
    check_tensor("concat", a, b)
    dim = check_int("concat", "dim", dim)
    expect(0 <= dim < 4, "concat", f"dim {dim} must be in 0..3", a, b)
    expect(a.type == b.type, "concat", "both tensors need the same type", a, b)
    expect(all(a.ne[i] == b.ne[i] for i in range(4) if i != dim), "concat",
           f"all dims but {dim} must match", a, b)
    ne = list(a.ne)
    ne[dim] += b.ne[dim]
    return ctx.new_node(CONCAT, a.type, ne, [a, b], params={"dim": dim})


@builder("get_rows")
def get_rows(ctx, a: Tensor, b: Tensor) -> Tensor:
    """Gather rows of a by index (ggml_get_rows): the embedding lookup.

    result[:, j, i2, i3] = a[:, b[j, i2, i3], i2 % a.ne2, i3 % a.ne3] (ne order). Extension: ggml
    asks b.ne1 == a.ne2 and b.ne2 == a.ne3; here a also repeats over them.

    a:      [n, rows, ne2, ne3] f32/f16/bf16, i32, or quantized (Q4_0 ... Q6_K: rows are dequantized).
    b:      [m, ne12, ne13, 1] i32 row indices in 0..rows-1, with ne12 % ne2 == 0, ne13 % ne3 == 0.
    result: [n, m, ne12, ne13], f32 (i32 when a is i32), contiguous.
    """
    check_tensor("get_rows", a, b)
    expect(b.type == dtypes.TYPE_I32, "get_rows", "indices must be i32", a, b)
    expect(b.ne[3] == 1 and a.ne[2] > 0 and a.ne[3] > 0 and b.ne[1] % a.ne[2] == 0 and b.ne[2] % a.ne[3] == 0,
           "get_rows", "indices must be [m, ne2, ne3] with ne2/ne3 multiples of the table's", a, b)
    out_type = dtypes.TYPE_I32 if a.type == dtypes.TYPE_I32 else F32
    return ctx.new_node(GET_ROWS, out_type, [a.ne[0], b.ne[0], b.ne[1], b.ne[2]], [a, b])
