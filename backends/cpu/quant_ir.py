"""LLVM IR building blocks for the quantized dot products (backends/cpu/quant_dot.py).

Numba widens int8/int16/int32 arithmetic to int64, so integer dot products written in Python
do not vectorise. These helpers emit the vector code directly, with llvmlite's IR builder, into
the function of the Numba intrinsic that calls them (so it is inlined, compiled and cached with
the kernel).

Every helper has one meaning on every machine. `dot4(x, y)` takes two <32 x i8> vectors and
returns <8 x i32> whose lane j is the exact integer x[4j]y[4j] + ... + x[4j+3]y[4j+3]. On x86
with AVX2 it is ggml's sequence (vpsignb / vpmaddubsw / vpmaddwd); elsewhere it is portable IR
(sign-extend to i16, multiply, add pairs) that LLVM lowers for the target (NEON on ARM). No
intermediate can overflow or saturate as long as y lies in [-127, 127], which holds for every
src1 row (quantized by ggml's Q8_0 / Q8_1 / Q8_K reference quantizers): so both forms give the
same integers, and the float code around them is one and the same IR. Where the CPU has VNNI
(Zen 4 / 5, Ice Lake and later) dot4 is one vpdpbusd instead of vpmaddubsw + vpmaddwd: exact
too, the same integers again.
"""
from __future__ import annotations

from typing import Sequence

import llvmlite.binding as llvm
import numba
from llvmlite import ir

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()


def host_features() -> tuple[str, set[str]]:
    """(process triple, CPU features) of the machine Numba compiles for: the host's, or no
    features when NUMBA_CPU_NAME names another CPU (then only portable IR is emitted)."""
    if numba.config.CPU_NAME not in (None, "", "host"):
        return "", set()
    return llvm.get_process_triple(), {k for k, v in llvm.get_host_cpu_features().items() if v}


def _target() -> tuple[bool, bool, bool]:
    """(AVX2, native half -> float, VNNI: vpdpbusd on 256-bit vectors, AVX-VNNI or AVX512-VNNI
    with VL, four u8 x s8 products summed into each i32 lane in one instruction)."""
    triple, feats = host_features()
    x86 = triple.startswith(("x86_64", "i686", "i386"))
    avx2 = x86 and "avx2" in feats
    return (avx2, (x86 and "f16c" in feats) or triple.startswith(("aarch64", "arm64")),
            avx2 and ("avxvnni" in feats or {"avx512vnni", "avx512vl"} <= feats))


AVX2, NATIVE_HALF, VNNI = _target()


def vec(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


def splat_const(t: ir.Type, n: int, value: int | float) -> ir.Constant:
    return ir.Constant(vec(t, n), [value] * n)


def splat(b: ir.IRBuilder, v: ir.Value, n: int) -> ir.Value:
    """A vector of n copies of scalar v."""
    one = b.insert_element(ir.Constant(vec(v.type, 1), ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(one, one, ir.Constant(vec(I32, n), [0] * n))


def shuffle(b: ir.IRBuilder, x: ir.Value, y: ir.Value, idx: Sequence[int]) -> ir.Value:
    return b.shuffle_vector(x, y, ir.Constant(vec(I32, len(idx)), list(idx)))


def _intrinsic(b: ir.IRBuilder, name: str, ret: ir.Type, args: Sequence[ir.Value]) -> ir.Value:
    mod = b.module
    fn = mod.globals.get(name)
    if fn is None:
        fn = ir.Function(mod, ir.FunctionType(ret, [a.type for a in args]), name=name)
    return b.call(fn, list(args))


# -- memory ------------------------------------------------------------------------------------

def at(b: ir.IRBuilder, base: ir.Value, byte_off: ir.Value | int) -> ir.Value:
    """The i8* `byte_off` bytes after i8* base."""
    off = ir.Constant(I64, byte_off) if isinstance(byte_off, int) else byte_off
    return b.gep(base, [off])


def load(b: ir.IRBuilder, p: ir.Value, t: ir.Type) -> ir.Value:
    """A value of type t at i8* p (no alignment assumed: blocks sit at any byte)."""
    return b.load(b.bitcast(p, t.as_pointer()), align=1)


def half(b: ir.IRBuilder, p: ir.Value, table: ir.Value) -> ir.Value:
    """The float16 at i8* p as float: converted by the CPU where it can (F16C, ARMv8), else looked
    up in `table` (float*, the 65536 half values), since LLVM would otherwise call a runtime
    helper that Numba's JIT may not provide. Both give the exact value."""
    bits = load(b, p, I16)
    if NATIVE_HALF:
        return b.fpext(b.bitcast(bits, ir.HalfType()), F32)
    return b.load(b.gep(table, [b.zext(bits, I64)]))


# -- integer lanes -----------------------------------------------------------------------------

def nibbles32(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """The 16 bytes v (<16 x i8>) as 32 nibbles: v & 15, then v >> 4. Both halves of one vector
    hold v (from memory: one vbroadcasti128), shifted by 0 and 4 as 32-bit lanes (AVX2's
    vpsrlvd; the bits crossing into a byte are masked off): three instructions, none on the
    shuffle port, where the two halves built apart and joined took four."""
    both = b.bitcast(shuffle(b, v, v, list(range(16)) * 2), vec(I32, 8))
    shifted = b.lshr(both, ir.Constant(vec(I32, 8), [0] * 4 + [4] * 4))
    return b.and_(b.bitcast(shifted, vec(I8, 32)), splat_const(I8, 32, 15))


def nibbles(b: ir.IRBuilder, v: ir.Value, shift: int) -> ir.Value:
    """(v >> shift) & 15 per byte."""
    n = v.type.count
    if shift:
        v = b.lshr(v, splat_const(I8, n, shift))
    return b.and_(v, splat_const(I8, n, 15))


def pairs(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Lane i of the result: v[2i] + v[2i + 1]."""
    n = v.type.count
    return b.add(shuffle(b, v, v, range(0, n, 2)), shuffle(b, v, v, range(1, n, 2)))


def _as_unsigned(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> tuple[ir.Value, ir.Value]:
    """ggml's trick for signed x: (|x| as unsigned bytes, y with x's sign), the same products."""
    ax = _intrinsic(b, "llvm.abs.v32i8", vec(I8, 32), [x, ir.Constant(I1, 0)])
    return ax, _intrinsic(b, "llvm.x86.avx2.psign.b", vec(I8, 32), [y, x])


def _products16(b: ir.IRBuilder, x: ir.Value, y: ir.Value, x_signed: bool) -> ir.Value:
    """<16 x i16>: lane i = x[2i]y[2i] + x[2i+1]y[2i+1] (|x| <= 128, |y| <= 127: no overflow)."""
    if AVX2:
        if x_signed:
            x, y = _as_unsigned(b, x, y)
        return _intrinsic(b, "llvm.x86.avx2.pmadd.ub.sw", vec(I16, 16), [x, y])
    xw = (b.sext if x_signed else b.zext)(x, vec(I16, 32))
    return pairs(b, b.mul(xw, b.sext(y, vec(I16, 32))))


def dot4(b: ir.IRBuilder, x: ir.Value, y: ir.Value, x_signed: bool, acc: ir.Value | None = None) -> ir.Value:
    """<32 x i8> x (signed or unsigned bytes), y -> <8 x i32>, lane j = sum of x[4j+k] y[4j+k]
    (+ acc[j], an <8 x i32>: on VNNI vpdpbusd's own accumulator, one instruction fewer than a
    zeroed one and an add)."""
    v8 = vec(I32, 8)
    if VNNI:   # one vpdpbusd (u8 x s8, four products a lane) for vpmaddubsw + vpmaddwd
        if x_signed:
            x, y = _as_unsigned(b, x, y)
        return _intrinsic(b, "llvm.x86.avx512.vpdpbusd.256", v8,
                          [acc if acc is not None else ir.Constant(v8, [0] * 8), b.bitcast(x, v8), b.bitcast(y, v8)])
    p = _products16(b, x, y, x_signed)
    if AVX2:
        lanes = _intrinsic(b, "llvm.x86.avx2.pmadd.wd", v8, [p, splat_const(I16, 16, 1)])
    else:
        lanes = pairs(b, b.sext(p, vec(I32, 16)))
    return lanes if acc is None else b.add(lanes, acc)


def dot4_scaled(b: ir.IRBuilder, x: ir.Value, y: ir.Value, x_signed: bool, scales: ir.Value) -> ir.Value:
    """As dot4, each lane times its scale: scales is <16 x i16> holding lane j's scale at 2j and
    2j + 1 (ggml's vpmaddwd with the scales)."""
    p = _products16(b, x, y, x_signed)
    if AVX2:
        return _intrinsic(b, "llvm.x86.avx2.pmadd.wd", vec(I32, 8), [p, scales])
    return pairs(b, b.mul(b.sext(p, vec(I32, 16)), b.sext(scales, vec(I32, 16))))


def lane_splat16(b: ir.IRBuilder, v: ir.Value, lo: int, hi: int) -> ir.Value:
    """<16 x i16>: lanes 0..7 all v[lo], lanes 8..15 all v[8 + hi] (lo, hi < 8: a lane of each
    128-bit half). On AVX2 one vpshufb inside each half; a general 16-lane shuffle became
    vpermt2b plus a register copy on AVX-512 (Ice Lake, Q4_K dot in L1, one process: 29.9 ->
    24.0 cycles a super-block with the eight group scales taken this way). Elsewhere the plain
    shuffle."""
    if not AVX2:
        return shuffle(b, v, v, [lo] * 8 + [8 + hi] * 8)
    mask = ir.Constant(vec(I8, 32), [2 * lo, 2 * lo + 1] * 8 + [2 * hi, 2 * hi + 1] * 8)
    return b.bitcast(_intrinsic(b, "llvm.x86.avx2.pshuf.b", vec(I8, 32), [b.bitcast(v, vec(I8, 32)), mask]),
                     vec(I16, 16))


def madd16(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """<8 x i16> x, y -> <4 x i32>, lane j = x[2j]y[2j] + x[2j+1]y[2j+1] (vpmaddwd)."""
    if AVX2:
        return _intrinsic(b, "llvm.x86.sse2.pmadd.wd", vec(I32, 4), [x, y])
    return pairs(b, b.mul(b.sext(x, vec(I32, 8)), b.sext(y, vec(I32, 8))))


# -- float lanes -------------------------------------------------------------------------------

def add_scaled_lanes(b: ir.IRBuilder, acc: ir.Value, lanes: ir.Value, scale: ir.Value) -> ir.Value:
    """acc + <8 x float>(lanes) * scale: one block's contribution to the 8 float accumulators, as
    one fused multiply-add where the CPU has it (llvm.fmuladd; ggml's AVX2 dots use
    _mm256_fmadd_ps here too)."""
    v8f = vec(F32, 8)
    fma = b.module.declare_intrinsic("llvm.fmuladd.v8f32", fnty=ir.FunctionType(v8f, [v8f] * 3))
    return b.call(fma, [b.sitofp(lanes, v8f), splat(b, scale, 8), acc])


def hsum(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """The float lanes (8, 4, 2 or 1) summed in one fixed order (halves, then halves again)."""
    n = v.type.count if isinstance(v.type, ir.VectorType) else 1
    if n == 1:
        return v
    while n > 2:
        n //= 2
        v = b.fadd(shuffle(b, v, v, range(n)), shuffle(b, v, v, range(n, 2 * n)))
    return b.fadd(b.extract_element(v, ir.Constant(I32, 0)), b.extract_element(v, ir.Constant(I32, 1)))
