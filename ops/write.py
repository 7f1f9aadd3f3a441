"""Writes into a region of a tensor: ACC (region += b) and SET (region = b), with _inplace forms.

The region has b's ne, element stride = a's element size and byte strides nb1, nb2, nb3, starting
at byte `offset` of a's memory; a must be contiguous, so the region means the same in place or
in the copy. Regions are checked at build time: inside a, and not overlapping themselves.
"""
from __future__ import annotations

from typing import Sequence


from minigraph.core import dtypes
from minigraph.core.errors import expect
from minigraph.core.tensor import Tensor, is_contiguous, nelements

from minigraph.ops.common import check_float, check_int, check_region, check_tensor, strided_region
from minigraph.core.registry import OPS, OpDef, builder, register

REGION = ("nb1", "nb2", "nb3", "offset")


def _region_ref(accumulate: bool):
    def ref(node, a, b, nb1, nb2, nb3, offset):
        flat = a.reshape(-1).copy()
        region = strided_region(flat, node.type, b.shape[::-1], (dtypes.type_size(node.type), nb1, nb2, nb3), offset)
        if accumulate:
            region[...] = region + b
        else:
            region[...] = b
        return flat.reshape(a.shape)
    return ref


def _rebuild_region(name: str):
    return lambda ctx, spec, a, b: _region_op(ctx, OPS[name], a, b, *(spec.params.get(k) for k in REGION),
                                              spec.inplace, name.lower())


ACC = register(OpDef("ACC", "write", _region_ref(True), params=REGION, inplace_ok=True, byte_params=REGION,
                     flops=lambda n: float(nelements(n.src[1])), rebuild=_rebuild_region("ACC")))
SET = register(OpDef("SET", "write", _region_ref(False), params=REGION, inplace_ok=True, byte_params=REGION,
                     flops=lambda n: 0.0, rebuild=_rebuild_region("SET")))


def _self_overlapping(ne: Sequence[int], nb: Sequence[int], ts: int) -> bool:
    span = ts
    dims = sorted(((s, n) for n, s in zip(ne, nb) if n > 1))
    for s, n in dims:
        if s < span:
            return True
        span = s * (n - 1) + span
    return False


def _region_op(ctx, op: OpDef, a: Tensor, b: Tensor, nb1, nb2, nb3, offset, inplace: bool, name: str) -> Tensor:
    check_float(name, a, b)
    vals = [check_int(name, k, v) for k, v in zip(REGION, (nb1, nb2, nb3, offset))]
    expect(is_contiguous(a), name, "destination must be contiguous", a, b)
    ts = dtypes.type_size(a.type)
    nb = [ts, *vals[:3]]
    check_region(name, a, b.ne, nb, vals[3], a, b)
    expect(not _self_overlapping(b.ne, nb, ts), name, f"region ne={list(b.ne)} nb={nb} overlaps itself", a, b)
    params = dict(zip(REGION, vals))
    if inplace:
        return ctx.new_node(op, a.type, a.ne, [a, b], params=params, nb=a.nb, view_src=a)
    return ctx.new_node(op, a.type, a.ne, [a, b], params=params)


@builder("acc")
def acc(ctx, a: Tensor, b: Tensor, nb1: int, nb2: int, nb3: int, offset: int) -> Tensor:
    """A copy of a with b added into a strided region of it (ggml_acc).

    The region is view(a, b.ne, nb1, nb2, nb3, offset); it must lie inside a and not overlap itself.

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    nb1, nb2, nb3: the region's byte strides in a (its element stride is a's element size).
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    return _region_op(ctx, ACC, a, b, nb1, nb2, nb3, offset, False, "acc")


@builder("acc_inplace")
def acc_inplace(ctx, a: Tensor, b: Tensor, nb1: int, nb2: int, nb3: int, offset: int) -> Tensor:
    """Add b into a strided region of a, in place (ggml_acc_inplace).

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    nb1, nb2, nb3: the region's byte strides in a (its element stride is a's element size).
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: a view of a (a's ne, type and nb): the op writes a's memory.
    """
    return _region_op(ctx, ACC, a, b, nb1, nb2, nb3, offset, True, "acc_inplace")


@builder("set")
def set_(ctx, a: Tensor, b: Tensor, nb1: int, nb2: int, nb3: int, offset: int) -> Tensor:
    """A copy of a with a strided region overwritten by b (ggml_set).

    The region is view(a, b.ne, nb1, nb2, nb3, offset); it must lie inside a and not overlap itself.

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    nb1, nb2, nb3: the region's byte strides in a (its element stride is a's element size).
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    return _region_op(ctx, SET, a, b, nb1, nb2, nb3, offset, False, "set")


@builder("set_inplace")
def set_inplace(ctx, a: Tensor, b: Tensor, nb1: int, nb2: int, nb3: int, offset: int) -> Tensor:
    """Overwrite a strided region of a with b, in place (ggml_set_inplace).

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    nb1, nb2, nb3: the region's byte strides in a (its element stride is a's element size).
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: a view of a (a's ne, type and nb): the op writes a's memory.
    """
    return _region_op(ctx, SET, a, b, nb1, nb2, nb3, offset, True, "set_inplace")


@builder("set_1d")
def set_1d(ctx, a: Tensor, b: Tensor, offset: int) -> Tensor:
    """A copy of a with b written at a byte offset, using a's strides (ggml_set_1d).

    The region uses a's own strides nb1, nb2, nb3 (so a 1-d b is a run of consecutive elements).

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    check_tensor("set_1d", a)
    return _region_op(ctx, SET, a, b, a.nb[1], a.nb[2], a.nb[3], offset, False, "set_1d")


@builder("set_1d_inplace")
def set_1d_inplace(ctx, a: Tensor, b: Tensor, offset: int) -> Tensor:
    """Write b into a at a byte offset, in place, using a's strides (ggml_set_1d_inplace).

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: a view of a (a's ne, type and nb): the op writes a's memory.
    """
    check_tensor("set_1d_inplace", a)
    return _region_op(ctx, SET, a, b, a.nb[1], a.nb[2], a.nb[3], offset, True, "set_1d_inplace")


@builder("set_2d")
def set_2d(ctx, a: Tensor, b: Tensor, nb1: int, offset: int) -> Tensor:
    """A copy of a with b written into rows nb1 bytes apart (ggml_set_2d).

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    nb1:    the region's row stride in bytes (its nb2, nb3 are a's).
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: [ne0, ne1, ne2, ne3], a's type, contiguous.
    """
    check_tensor("set_2d", a)
    return _region_op(ctx, SET, a, b, nb1, a.nb[2], a.nb[3], offset, False, "set_2d")


@builder("set_2d_inplace")
def set_2d_inplace(ctx, a: Tensor, b: Tensor, nb1: int, offset: int) -> Tensor:
    """Write b into rows of a nb1 bytes apart, in place (ggml_set_2d_inplace).

    a:      the destination, [ne0, ne1, ne2, ne3] f32/f16/bf16, contiguous.
    b:      [nr0, nr1, nr2, nr3] f32/f16/bf16, any strides: the values; its ne is the region's shape.
    nb1:    the region's row stride in bytes (its nb2, nb3 are a's).
    offset: byte offset of the region's first element in a (a multiple of the element size).
    result: a view of a (a's ne, type and nb): the op writes a's memory.
    """
    check_tensor("set_2d_inplace", a)
    return _region_op(ctx, SET, a, b, nb1, a.nb[2], a.nb[3], offset, True, "set_2d_inplace")
