"""CUDA kernels of the fused family: FUSED_ELEMENTWISE, one generated numba-cuda kernel per program.

For each program (minigraph/ops/fused.py) the generator writes the source of two kernels over the
output's elements (one thread each, cuda.grid + bounds guard, as backends/cuda/elementwise.py):
  * generic: (i0..i3) from the flat index over dst's ne; every source read through its own
    strides (views, permutes, odd offsets), a repeated source indexed modulo its ne only in the
    dims that repeat (ops/fused.py broadcast_dims, part of the program's code);
  * flat: every tensor contiguous and every repeated source one block that tiles the output's
    flat order (elementwise.py's contiguous fast path, a sliced launch: each tensor its own 1-D
    array, no meta row): element i is index i, a repeated source's is i % its size.
`launches(node)` picks one at plan time and returns a Launch of the node's own kernel (keyed by
op_params["code"]), so no dispatcher is needed: the backend asks the registered CudaKernel for
the launches of each node. Signatures: `fused_<code>(meta, dst, a0..a5, s0, b0, s1, b1, ...)` and
`fused_<code>_flat(dst, a0..a5, s0, b0, ...)`: SCALE's (s, b) are scalar arguments, in program order.

Same results as the unfused kernels, bit for bit:
  * the scalar math is the very `binary_fn` / `unary_fn` device functions the unfused CUDA
    kernels call (backends/scalar_math.py compiled once, in elementwise.py), and SCALE is the
    same expression with the same runtime (s, b);
  * every intermediate passes through `rounded` before the next op reads it. The compiler
    contracts a multiply and a following add into one FMA by default (numba-cuda passes no
    -fma=0; ptxas fuses `mul.f32` + `add.f32` even across a register move), so a MUL (or SQR,
    NEG of a product, SILU, GELU) feeding an ADD/SUB would skip the f32 rounding that the unfused
    graph's store does: on an H100 a quarter of the elements of mul->add differed. On the GPU
    `rounded` is `x + -0.0` with an explicit rounding mode (libdevice fadd_rn, PTX add.rn.f32),
    which is never fused; on the simulator (Python floats are f64) it is the f32 rounding of a store.
    Inside one op the contraction is the unfused kernel's own (SCALE's a*s+b is an FMA in both).

Sources are built with exec, not written to a cache folder as the CPU generator does: no CUDA
kernel of this backend is disk-cached (each compiles at its first launch in a process), numba-cuda's
cache would also need the generated file to depend on scalar_math's source the way the CPU side's
`kernels_fingerprint` arranges, and the simulator cannot cache at all. A generated kernel costs one
NVVM compile per program and process, like every other kernel here.
"""
from __future__ import annotations

import linecache
import threading
from typing import Any, Optional

import numpy as np
from numba import cuda

from minigraph.ops.fused import MAX_INPUTS, broadcast_dims
from minigraph.core.registry import register_kernel
from minigraph.core.tensor import is_contiguous

from minigraph.backends.scalar_math import BINARY_CODES, UNARY_CODES
from minigraph.backends.cuda.common import SIM, CudaKernel, at, f32_only, flat_launch, ne, nelem, size, unflat
from minigraph.backends.cuda.elementwise import binary_fn, tiles_flat, unary_fn

NEG_ZERO = np.float32(-0.0)   # x + -0.0 == x for every x, +0.0 and -0.0 included

_lock = threading.Lock()
_kernels: dict[int, tuple[Any, Any]] = {}   # code -> (generic kernel, flat kernel)

if SIM:
    @cuda.jit(device=True)
    def rounded(x):
        """x rounded to f32, as the unfused graph's store between two ops would."""
        return np.float32(x)
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def rounded(x):
        """x itself, through an add with an explicit rounding mode (PTX add.rn.f32), which the
        compiler never fuses into an FMA with the product before it or the add after it."""
        return libdevice.fadd_rn(x, NEG_ZERO)


def _scalar(op: str, args: list[str], n_scale: int) -> str:
    if op in BINARY_CODES:
        return f"binary_fn({args[0]}, {args[1]}, {BINARY_CODES[op]})"
    if op == "SCALE":  # elementwise.py's scale: the same expression on the same runtime f64 params
        return f"{args[0]} * np.float32(s{n_scale}) + np.float32(b{n_scale})"
    return f"unary_fn({args[0]}, {UNARY_CODES[op]})"


def _body(program: tuple, reads: list[str], store: str) -> list[str]:
    """The kernel body after the bounds guard: read the sources, run the program, store."""
    lines = list(reads)
    n_scale = 0
    last = len(program) - 1
    for k, (op, operands, _) in enumerate(program):
        args = [f"x{i}" if kind == "in" else f"t{i}" for kind, i in operands]
        expr = _scalar(op, args, n_scale)
        n_scale += op == "SCALE"
        lines.append(f"        t{k} = {expr if k == last else f'rounded({expr})'}")
    lines.append(f"        {store} = t{last}")
    return lines


def kernel_source(code: int, program: tuple, bcast: tuple) -> str:
    """The generated module of one program: kernels fused_<code> (generic) and fused_<code>_flat."""
    srcs = ", ".join(f"a{i}" for i in range(MAX_INPUTS))
    scalars = "".join(f", s{k}, b{k}" for k in range(sum(op == "SCALE" for op, _, _ in program)))
    sig = f"dst, {srcs}{scalars}"
    generic = []
    for i, b in enumerate(bcast):
        idx = ", ".join(f"i{d} % ne(meta, {i + 1}, {d})" if b[d] else f"i{d}" for d in range(4))
        generic.append(f"        x{i} = a{i}[at(meta, {i + 1}, {idx})]")
    flat = [f"        x{i} = a{i}[{f'i % a{i}.size' if any(b) else 'i'}]" for i, b in enumerate(bcast)]
    lines = ["# generated by minigraph.backends.cuda.fused: do not edit", f"# program: {program!r}",
             f"# repeated dims per input: {bcast!r}", "",
             f"def fused_{code:x}(meta, {sig}):", "    i = cuda.grid(1)", "    if i < size(meta, 0):",
             "        i0, i1, i2, i3 = unflat(meta, 0, i)"]
    lines += _body(program, generic, "dst[at(meta, 0, i0, i1, i2, i3)]")
    lines += ["", "", f"def fused_{code:x}_flat({sig}):", "    i = cuda.grid(1)", "    if i < dst.size:"]
    lines += _body(program, flat, "dst[i]")
    return "\n".join(lines) + "\n"


def _build(code: int, program: tuple, bcast: tuple) -> tuple[Any, Any]:
    """Compile-ready kernels of one program (numba-cuda compiles each at its first launch)."""
    with _lock:
        if code not in _kernels:
            src = kernel_source(code, program, bcast)
            filename = f"<minigraph fused cuda {code:x}>"
            linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)  # for tracebacks
            scope = dict(cuda=cuda, np=np, at=at, ne=ne, size=size, unflat=unflat, rounded=rounded,
                         binary_fn=binary_fn, unary_fn=unary_fn)
            exec(compile(src, filename, "exec"), scope)  # noqa: S102 - our own generated source
            _kernels[code] = (cuda.jit(scope[f"fused_{code:x}"]), cuda.jit(scope[f"fused_{code:x}_flat"]))
        return _kernels[code]


def _is_flat(node: Any, srcs: list) -> bool:
    """Every tensor contiguous, every repeated source a block that tiles dst's flat order."""
    return (all(is_contiguous(t) for t in [node, *srcs])
            and all(tiles_flat(s, node) for s in srcs))


def _launches(node: Any) -> list:
    srcs = [s for s in node.src if s is not None]
    program = node.op_params["program"]
    generic, flat = _build(int(node.op_params["code"]), program, broadcast_dims(srcs, node.ne))
    scalars = tuple(c for op, _, consts in program if op == "SCALE" for c in consts)
    fast = _is_flat(node, srcs)
    return [flat_launch(flat if fast else generic, nelem(node.ne), scalars, with_params=False, sliced=fast)]


def _supports(node: Any) -> Optional[str]:
    reason = f32_only(node)
    if reason is not None:
        return reason
    if len(node.src) != MAX_INPUTS:
        return f"FUSED_ELEMENTWISE: expects {MAX_INPUTS} source slots, got {len(node.src)}"
    program = node.op_params.get("program")
    if program is None or node.op_params.get("code") is None:
        return "FUSED_ELEMENTWISE: node has no program"
    for op, _, _ in program:
        if op not in BINARY_CODES and op not in UNARY_CODES and op != "SCALE":
            return f"FUSED_ELEMENTWISE: no CUDA scalar code for {op}"
    return None


register_kernel("FUSED_ELEMENTWISE", "cuda", CudaKernel(_launches, "fused_elementwise"), supports=_supports)
