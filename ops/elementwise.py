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
from minigraph.core.registry import OpDef, builder, register, uniform_sample


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
DIV = register(OpDef("DIV", "elementwise", _binary_ref(np.divide), inplace_ok=True, rebuild=_rebuild_binary("div"),
                     sample=uniform_sample(0.5, 2.0, (1,))))   # a divisor away from 0
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
UNARY_SAMPLES = {"SQRT": uniform_sample(0.1, 2.0), "LOG": uniform_sample(0.1, 2.0)}   # inside the domain
UNARY = {name: register(OpDef(name, "elementwise", (lambda f: lambda node, a: f(a))(f), inplace_ok=True,
                              rebuild=_rebuild_unary(name.lower()), sample=UNARY_SAMPLES.get(name)))
         for name, f in UNARY_REFS.items()}


FLOAT_IN = "[ne0, ne1, ne2, ne3] f32/f16/bf16, any strides."
SAME_OUT = "same ne and type as a, contiguous."
INPLACE_OUT = "a view of a (same ne, type and nb): the op writes a's memory."
BINARY_DOCS = {"ADD": ("Elementwise sum", "a + b"), "SUB": ("Elementwise difference", "a - b"),
               "MUL": ("Elementwise product", "a * b"), "DIV": ("Elementwise quotient", "a / b")}
UNARY_DOCS = {
    "NEG": "y = -x", "ABS": "y = |x|", "SQR": "y = x * x", "SQRT": "y = sqrt(x)", "EXP": "y = exp(x)",
    "LOG": "y = log(x), the natural logarithm", "SIGMOID": "y = 1 / (1 + exp(-x))",
    "SILU": "y = x * sigmoid(x)", "TANH": "y = tanh(x)", "RELU": "y = max(x, 0)",
    "GELU": "y = 0.5 * x * (1 + tanh(sqrt(2 / pi) * x * (1 + 0.044715 * x * x))), ggml's tanh approximation",
    "SOFTPLUS": "y = log(1 + exp(x)); x > 20 passes through unchanged, as in ggml",
}


def _binary(ctx, op: OpDef, a: Tensor, b: Tensor, inplace: bool, name: str) -> Tensor:
    check_float(name, a, b)
    expect(can_repeat(b, a), name, "src1 must repeat into src0 (each of src0's dims a multiple of src1's)", a, b)
    if inplace:
        return ctx.new_node(op, a.type, a.ne, [a, b], nb=a.nb, view_src=a)
    return ctx.new_node(op, a.type, a.ne, [a, b])


def _make_binary(op: OpDef, name: str, inplace: bool) -> None:
    def build(ctx, a: Tensor, b: Tensor) -> Tensor:
        return _binary(ctx, op, a, b, inplace, name)

    what, formula = BINARY_DOCS[op.name]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{what} {formula}, b repeated into a's shape (ggml_{name}).\n\n"
                     f"a:      {FLOAT_IN}\n"
                     f"b:      [ne0/r0, ne1/r1, ne2/r2, ne3/r3] f32/f16/bf16, any strides: each of a's dims\n"
                     f"        is a whole multiple of b's (ggml_can_repeat(b, a)); b is tiled over a.\n"
                     f"result: {INPLACE_OUT if inplace else SAME_OUT}")
    builder(name)(build)


for _op, _name in ((ADD, "add"), (SUB, "sub"), (MUL, "mul"), (DIV, "div")):
    _make_binary(_op, _name, False)
    _make_binary(_op, _name + "_inplace", True)


def _scale(ctx, a: Tensor, s: float, b: float, inplace: bool, name: str) -> Tensor:
    check_float(name, a)
    params = {"s": check_number(name, "s", s), "b": check_number(name, "b", b)}
    if inplace:
        return ctx.new_node(SCALE, a.type, a.ne, [a], params=params, nb=a.nb, view_src=a)
    return ctx.new_node(SCALE, a.type, a.ne, [a], params=params)


@builder("scale")
def scale(ctx, a: Tensor, s: float) -> Tensor:
    """Multiply every element by a constant: y = s * x (ggml_scale).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    s:      the factor (a Python number; the node stores it as a float).
    result: same ne and type as a, contiguous.
    """
    return _scale(ctx, a, s, 0.0, False, "scale")


@builder("scale_inplace")
def scale_inplace(ctx, a: Tensor, s: float) -> Tensor:
    """Multiply a by a constant in place: a = s * a (ggml_scale_inplace).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    s:      the factor.
    result: a view of a (same ne, type and nb): the op writes a's memory.
    """
    return _scale(ctx, a, s, 0.0, True, "scale_inplace")


@builder("scale_bias")
def scale_bias(ctx, a: Tensor, s: float, b: float) -> Tensor:
    """Scale and shift every element: y = s * x + b (ggml_scale_bias).

    a:      [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides.
    s:      the factor.
    b:      the constant added after scaling (a number, not a tensor).
    result: same ne and type as a, contiguous.
    """
    return _scale(ctx, a, s, b, False, "scale_bias")


def _unary(ctx, op: OpDef, a: Tensor, inplace: bool, name: str) -> Tensor:
    check_tensor(name, a)
    check_float(name, a)
    if inplace:
        return ctx.new_node(op, a.type, a.ne, [a], nb=a.nb, view_src=a)
    return ctx.new_node(op, a.type, a.ne, [a])


def _make_unary(op: OpDef, name: str, inplace: bool) -> None:
    def build(ctx, a: Tensor) -> Tensor:
        return _unary(ctx, op, a, inplace, name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"Elementwise {op.name.lower()}{' in place' if inplace else ''}: {UNARY_DOCS[op.name]} "
                     f"(ggml_{name}).\n\n"
                     f"a:      {FLOAT_IN}\n"
                     f"result: {INPLACE_OUT if inplace else SAME_OUT}")
    builder(name)(build)


for _name, _op in UNARY.items():
    _make_unary(_op, _name.lower(), False)
    _make_unary(_op, _name.lower() + "_inplace", True)
