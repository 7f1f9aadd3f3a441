"""Elementwise ops: binary (ADD, SUB, MUL, DIV: src1 repeats into src0), SCALE, and unary ops.

Each unary op carries its numpy reference here; the CPU backend attaches a Numba scalar
function per op (backends/cpu/elementwise.py) to one shared unary kernel.
"""
from __future__ import annotations

import math

import numpy as np

from minigraph.core.errors import expect
from minigraph.core.tensor import Tensor, can_repeat

from minigraph.ops.common import check_float, check_number, check_tensor, tile_to
from minigraph.core.registry import OpDef, builder, register


def _binary_ref(fn):
    return lambda node, a, b: fn(a, tile_to(b, a.shape))


# graph files: each op is rebuilt through its builder (the _inplace one when the record writes
# into its source's memory); see OpDef.rebuild
def _rebuild_binary(name: str):
    return lambda ctx, spec, a, b: getattr(ctx, name + ("_inplace" if spec.inplace else ""))(a, b)


def _rebuild_unary(name: str):
    return lambda ctx, spec, a: getattr(ctx, name + ("_inplace" if spec.inplace else ""))(a)


ADD = register(OpDef("ADD", "elementwise", _binary_ref(np.add), inplace_ok=True, rebuild=_rebuild_binary("add")))
SUB = register(OpDef("SUB", "elementwise", _binary_ref(np.subtract), inplace_ok=True, rebuild=_rebuild_binary("sub")))
MUL = register(OpDef("MUL", "elementwise", _binary_ref(np.multiply), inplace_ok=True, rebuild=_rebuild_binary("mul")))
DIV = register(OpDef("DIV", "elementwise", _binary_ref(np.divide), inplace_ok=True, rebuild=_rebuild_binary("div")))
SCALE = register(OpDef("SCALE", "elementwise", lambda node, a, s, b: a * s + b, params=("s", "b"), float_params=("s", "b"),
                       inplace_ok=True, rebuild=lambda ctx, spec, a: _scale(
                           ctx, a, spec.params.get("s"), spec.params.get("b"), spec.inplace, "scale")))


def _gelu(x):
    # ggml's tanh approximation
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * x * (1.0 + 0.044715 * x * x)))


def _softplus(x):
    # ggml: x above 20 passes through (log1p(exp(x)) == x in f32 there)
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


UNARY_REFS = {
    "NEG": np.negative, "ABS": np.abs, "SQR": np.square, "SQRT": np.sqrt, "EXP": np.exp,
    "LOG": np.log, "SIGMOID": lambda x: 1.0 / (1.0 + np.exp(-x)), "SILU": lambda x: x / (1.0 + np.exp(-x)),
    "GELU": _gelu, "TANH": np.tanh, "RELU": lambda x: np.maximum(x, 0.0), "SOFTPLUS": _softplus,
}
UNARY = {name: register(OpDef(name, "elementwise", (lambda f: lambda node, a: f(a))(f), inplace_ok=True,
                              rebuild=_rebuild_unary(name.lower())))
         for name, f in UNARY_REFS.items()}


def _binary(ctx, op: OpDef, a: Tensor, b: Tensor, inplace: bool, name: str) -> Tensor:
    check_float(name, a, b)
    expect(can_repeat(b, a), name, "src1 must repeat into src0 (each of src0's dims a multiple of src1's)", a, b)
    if inplace:
        return ctx.new_node(op, a.type, a.ne, [a, b], nb=a.nb, view_src=a)
    return ctx.new_node(op, a.type, a.ne, [a, b])


def _make_binary(op: OpDef, name: str) -> None:
    builder(name)(lambda ctx, a, b: _binary(ctx, op, a, b, False, name))
    builder(name + "_inplace")(lambda ctx, a, b: _binary(ctx, op, a, b, True, name + "_inplace"))


for _op, _name in ((ADD, "add"), (SUB, "sub"), (MUL, "mul"), (DIV, "div")):
    _make_binary(_op, _name)


def _scale(ctx, a: Tensor, s: float, b: float, inplace: bool, name: str) -> Tensor:
    check_float(name, a)
    params = {"s": check_number(name, "s", s), "b": check_number(name, "b", b)}
    if inplace:
        return ctx.new_node(SCALE, a.type, a.ne, [a], params=params, nb=a.nb, view_src=a)
    return ctx.new_node(SCALE, a.type, a.ne, [a], params=params)


@builder("scale")
def scale(ctx, a: Tensor, s: float) -> Tensor:
    return _scale(ctx, a, s, 0.0, False, "scale")


@builder("scale_inplace")
def scale_inplace(ctx, a: Tensor, s: float) -> Tensor:
    return _scale(ctx, a, s, 0.0, True, "scale_inplace")


@builder("scale_bias")
def scale_bias(ctx, a: Tensor, s: float, b: float) -> Tensor:
    return _scale(ctx, a, s, b, False, "scale_bias")


def _unary(ctx, op: OpDef, a: Tensor, inplace: bool, name: str) -> Tensor:
    check_tensor(name, a)
    check_float(name, a)
    if inplace:
        return ctx.new_node(op, a.type, a.ne, [a], nb=a.nb, view_src=a)
    return ctx.new_node(op, a.type, a.ne, [a])


for _name, _op in UNARY.items():
    _lname = _name.lower()
    builder(_lname)((lambda op, n: lambda ctx, a: _unary(ctx, op, a, False, n))(_op, _lname))
    builder(_lname + "_inplace")((lambda op, n: lambda ctx, a: _unary(ctx, op, a, True, n))(_op, _lname + "_inplace"))
