"""FUSED_ELEMENTWISE: a chain of elementwise ops over one shape, computed in one pass.

Made by the elementwise fusion pass (minigraph/passes/elementwise.py), or by hand with
`ctx.fused_elementwise(program, srcs)`. The program is SSA over the op registry's elementwise ops:
a tuple of instructions, each `(op, operands, consts)`, where op is a unary op (EXP, SOFTPLUS,
SIGMOID, ...), a binary op (ADD, SUB, MUL, DIV: src1 repeats into src0, as ggml) or SCALE (consts
(s, b)); an operand is ("in", i) (source i) or ("t", k) (the result of instruction k). The last
instruction is the output. Output ne is the shape the program computes on; a source read as a
binary op's src1 may be smaller and repeats into it.

src: the inputs, padded with None to MAX_INPUTS so every backend kernel has one signature.
op_params: "code" (the program's key, what kernels dispatch on), "program", "fused_from".
The reference evaluates the program with the original ops' float64 references.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

from minigraph.core.cases import CASES, Case, make_input
from minigraph.core.errors import expect
from minigraph.core.tensor import Tensor, can_repeat

from minigraph.ops.common import F32, check_float
from minigraph.ops.elementwise import UNARY_REFS
from minigraph.core.registry import OPS, OpDef, builder, register

MAX_INPUTS = 6
BINARY_OPS = ("ADD", "SUB", "MUL", "DIV")
ELEMENTWISE_OPS = BINARY_OPS + ("SCALE",) + tuple(UNARY_REFS)


def program_shape(program: Sequence[tuple], srcs: Sequence[Tensor]) -> tuple:
    """ne of every instruction's result (src0 decides, as in the unfused ops)."""
    shapes: list[tuple] = []
    for op, operands, _ in program:
        kind, i = operands[0]
        shapes.append(srcs[i].ne if kind == "in" else shapes[i])
    return tuple(shapes)


def program_code(program: Sequence[tuple], bcast: Sequence[tuple]) -> int:
    """A stable 40-bit key of (program, which input dims repeat): one generated kernel per key."""
    return int(hashlib.sha1(repr((tuple(program), tuple(bcast))).encode()).hexdigest()[:10], 16)


def broadcast_dims(srcs: Sequence[Tensor], ne: Sequence[int]) -> tuple:
    """Per input, per dim: 1 where the input repeats (its ne differs from the output's)."""
    return tuple(tuple(int(s.ne[d] != ne[d]) for d in range(4)) for s in srcs)


def _ref(node, *srcs, code):
    vals: list = []
    for op, operands, consts in node.op_params["program"]:
        args = [srcs[i] if kind == "in" else vals[i] for kind, i in operands]
        vals.append(OPS[op].reference(node, *args, *consts))
    return vals[-1]


def _sample(node, i: int, rng):
    """Inputs in [0.5, 2) when a step needs a positive or non-zero operand (LOG, SQRT, DIV), so
    a chain exported from a model stays mostly inside its domain; else the default."""
    if any(op in ("LOG", "SQRT", "DIV") for op, _, _ in node.op_params["program"]):
        return rng.uniform(0.5, 2.0, size=tuple(reversed(node.src[i].ne)))
    return None


FUSED_ELEMENTWISE = register(OpDef(
    "FUSED_ELEMENTWISE", "fused", _ref, params=("code",), sample=_sample,
    flops=lambda n: float(len(n.op_params["program"])) * n.ne[0] * n.ne[1] * n.ne[2] * n.ne[3],
    doc="a chain of elementwise ops over one shape in one kernel (fused_from: the ops it replaced)",
    rebuild=lambda ctx, spec, *srcs: ctx.fused_elementwise(spec.params.get("program"), _real_inputs(srcs),
                                                           spec.params.get("fused_from"))))


def _real_inputs(srcs: Sequence[Any]) -> list:
    """The inputs before the None padding (a None between inputs stays, so the builder refuses it)."""
    srcs = list(srcs)
    while srcs and srcs[-1] is None:
        srcs.pop()
    return srcs


@builder("fused_elementwise")
def fused_elementwise(ctx, program: Sequence[tuple], srcs: Sequence[Tensor], fused_from: Any = None) -> Tensor:
    """One node that computes a chain of elementwise ops in one pass (no ggml twin).

    The elementwise fusion pass (mg.optimize) makes these; build one by hand to test a kernel.
    An instruction is (op, operands, consts): op is a unary op name (EXP, SOFTPLUS, ...), ADD,
    SUB, MUL, DIV (operand 1 repeats into operand 0, as in ggml) or SCALE (consts (s, b)); an
    operand is ("in", i) for srcs[i] or ("t", k) for instruction k's result. The last
    instruction is the output.

    program:    tuple of instructions, SSA order (an operand refers only to earlier results).
    srcs:       1..6 (MAX_INPUTS) tensors, each [ne0, ne1, ne2, ne3] f32/f16/bf16, any strides; a
                binary op's second operand may be smaller ([ne0/r0, ...]) and repeats.
    fused_from: labels of the replaced nodes for dumps (default: the program's op names).
    result:     [ne0, ne1, ne2, ne3], the shape the program computes on (each op's src0 decides, as
                unfused), f32, contiguous.
    """
    name = "fused_elementwise"
    srcs = list(srcs)
    check_float(name, *srcs)
    expect(1 <= len(srcs) <= MAX_INPUTS, name, f"takes 1..{MAX_INPUTS} sources, got {len(srcs)}", *srcs)
    program = tuple((str(op), tuple((str(k), int(i)) for k, i in operands), tuple(float(c) for c in consts))
                    for op, operands, consts in program)
    expect(len(program) > 0, name, "empty program", *srcs)
    for n, (op, operands, consts) in enumerate(program):
        arity = 2 if op in BINARY_OPS else 1
        ok = (op in ELEMENTWISE_OPS and len(operands) == arity and len(consts) == (2 if op == "SCALE" else 0)
              and all((k == "in" and 0 <= i < len(srcs)) or (k == "t" and 0 <= i < n) for k, i in operands))
        expect(ok, name, f"instruction {n} {op}{operands} is not an elementwise op on earlier values", *srcs)
    shapes = program_shape(program, srcs)
    ne = shapes[-1]
    for n, (op, operands, _) in enumerate(program):
        for k, i in operands:
            t_ne = srcs[i].ne if k == "in" else shapes[i]
            expect(t_ne == ne if operands[0] == (k, i) else all(a > 0 and b % a == 0 for a, b in zip(t_ne, ne)),
                   name, f"instruction {n} {op}: operand ne={list(t_ne)} does not fit the output ne={list(ne)}", *srcs)
    expect(all(can_repeat(s, Tensor(None, F32, ne)) for s in srcs), name, "every source must repeat into the output", *srcs)
    code = program_code(program, broadcast_dims(srcs, ne))
    params = {"code": code, "program": program, "fused_from": list(fused_from or [p[0] for p in program])}
    return ctx.new_node(FUSED_ELEMENTWISE, F32, ne, srcs + [None] * (MAX_INPUTS - len(srcs)), params=params)


# -- conformance cases (the Qwen3-Next gate chain: softplus(a + dt_bias) * A, and sigmoid(b)) ----------
GATE_PROGRAM = (("ADD", (("in", 0), ("in", 1)), ()), ("SOFTPLUS", (("t", 0),), ()),
                ("MUL", (("t", 1), ("in", 2)), ()), ("SCALE", (("t", 2),), (0.5, -0.25)),
                ("EXP", (("t", 3),), ()))
for _layout in ("cont", "perm", "offs"):
    CASES.append(Case("FUSED_ELEMENTWISE", f"gate_chain,ne=[10,5,4,3],layout={_layout}",
                      lambda c, r, L=_layout: c.fused_elementwise(GATE_PROGRAM, [
                          make_input(c, r, [10, 5, 4, 3], L, -3.0, 3.0), make_input(c, r, [10, 1, 1, 1]),
                          make_input(c, r, [1, 5, 4, 1], "cont", -1.0, -0.1)])))
CASES.append(Case("FUSED_ELEMENTWISE", "sigmoid_sub_div,ne=[33,7,2,1]",
                  lambda c, r: c.fused_elementwise(
                      (("SIGMOID", (("in", 0),), ()), ("SUB", (("t", 0), ("in", 1)), ()), ("DIV", (("t", 1), ("in", 1)), ())),
                      [make_input(c, r, [33, 7, 2, 1]), make_input(c, r, [33, 1, 1, 1], "cont", 0.5, 2.0)])))
