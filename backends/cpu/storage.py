"""f16 / bf16 / block-quantized storage read (and f16 / bf16 written) inside CPU kernels, so no
tensor needs an f32 copy.

Numba has no float16 type on the CPU: a kernel slot registered in `storage_slots` receives a
16-bit tensor as a uint16 array of its raw bits (f32 as float32) plus the slot's ggml type code
(minigraph.core.dtypes), and converts values as it loads them. f16 goes through LLVM's half type
(on x86 with F16C one vcvtph2ps per 8 values once the loop vectorises); bf16 is its top 16 bits
shifted into place. Writing rounds to nearest even, as ggml (and numpy's astype(float16)) do.

`load_row` converts a row of any stride into a contiguous f32 row; rows whose elements are
adjacent (nb0 == element size, every KV-cache view) take a vectorised loop over a contiguous
alias of the row, whatever the tensor's other strides. A block-quantized slot (a KV cache in
Q8_0, Q4_0, Q4_1, Q5_0 or Q5_1: KV_QUANT_TYPES) comes as its rows' raw bytes, a uint8 array
(ne3, ne2, ne1, row bytes); `load_row` then dequantizes the row as ggml's dequantize_row_* does
(one f32 multiply by the block's f16 scale, then its f16 min): the same floats as ggml's to_float.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic, overload

from minigraph.core import dtypes

F16 = dtypes.TYPE_F16
BF16 = dtypes.TYPE_BF16
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = dtypes.TYPE_Q4_0, dtypes.TYPE_Q4_1, dtypes.TYPE_Q5_0, dtypes.TYPE_Q5_1, dtypes.TYPE_Q8_0
KV_QUANT_TYPES = (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)   # the quantized types load_row reads (llama.cpp's cache types)
_OPTS = dict(cache=True, nogil=True, inline="always")


@intrinsic
def f16_to_f32(typingctx, bits):
    """The f32 value of f16 bits (a uint16)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def bf16_to_f32(typingctx, bits):
    """The f32 value of bf16 bits (a uint16): the bits become the top half of an f32."""
    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16(typingctx, x):
    """f16 bits (a uint16) of an f32 value, rounded to nearest even."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def f32_bits(typingctx, x):
    """The bits of an f32 value as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The f32 value whose bits are an int32 (vectorises: 2^n as (n + 127) << 23)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def store_fence(typingctx):
    """A full fence: orders this thread's non-temporal stores before whatever follows
    (x86 mfence; they are weakly ordered, and other threads read dst after the kernel)."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


VEC16 = ir.VectorType(ir.FloatType(), 16)    # one 64-byte line of f32


def vec16_ptr(context, builder, signature, args, k: int, i: int = 1):
    """Codegen helper: a <16 x float>* to element args[i] of the 1-D contiguous f32 array args[k]."""
    data = context.make_array(signature.args[k])(context, builder, args[k]).data
    return builder.bitcast(builder.gep(data, [args[i]]), VEC16.as_pointer())


def store_nt16(builder, value, ptr) -> None:
    """Codegen helper: `value` (16 floats) to a 64-byte aligned `ptr` as one non-temporal store."""
    st = builder.store(value, ptr, align=64)
    st.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))


@intrinsic
def nt_copy16(typingctx, d, i, s):
    """d[i:i+16] = s[i:i+16] (1-D contiguous f32) as one non-temporal 64-byte store (d + i 64-byte
    aligned; the load may be unaligned). Explicit, as gdn_rows._nt_update16: LLVM leaves a loop of
    scalar non-temporal stores scalar."""
    sig = types.void(d, i, s)

    def codegen(context, builder, signature, args):
        src = builder.load(vec16_ptr(context, builder, signature, args, 2), align=4)
        store_nt16(builder, src, vec16_ptr(context, builder, signature, args, 0))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def data_ptr(typingctx, arr):
    """Pointer to an array's first element (for carray and BLAS)."""
    def codegen(context, builder, signature, args):
        return context.make_array(signature.args[0])(context, builder, args[0]).data
    return types.CPointer(arr.dtype)(arr), codegen


@njit(**_OPTS)
def f32_to_bf16(x):
    """bf16 bits of an f32 value: round to nearest even, NaN stays a quiet NaN (ggml's rule)."""
    u = f32_bits(np.float32(x))
    if x != x:
        return np.uint16((u >> 16) | 64)
    return np.uint16((u + (0x7FFF + ((u >> 16) & 1))) >> 16)


def to_f32(x, type_):
    """One stored value as f32: x is a float32 (type_ F32) or the uint16 bits of an F16/BF16."""


@overload(to_f32, inline="always")
def _to_f32(x, type_):
    if x == types.uint16:
        return lambda x, type_: bf16_to_f32(x) if type_ == BF16 else f16_to_f32(x)
    return lambda x, type_: np.float32(x)


def load_value(x, type_):
    """One stored element as a kernel computes with it: F16 / BF16 bits as f32, anything else
    (f32, i32) as it is."""


@overload(load_value, inline="always")
def _load_value(x, type_):
    if x == types.uint16:
        return lambda x, type_: to_f32(x, type_)
    return lambda x, type_: x


def from_f32(x, type_, dst):
    """An f32 value as an element of array `dst` holding type_ values (its uint16 bits for F16/BF16)."""


@overload(from_f32, inline="always")
def _from_f32(x, type_, dst):
    if dst.dtype == types.uint16:
        return lambda x, type_, dst: f32_to_bf16(np.float32(x)) if type_ == BF16 else f32_to_f16(np.float32(x))
    return lambda x, type_, dst: x


@njit(**_OPTS)
def _half_at(c, o):
    """The little-endian f16 at byte o of c (a block's d or m) as f32."""
    return f16_to_f32(np.uint16(c[o]) | (np.uint16(c[o + 1]) << np.uint16(8)))


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_row(src, out, type_):
    """out[:n] = the n values of a quantized row (src: its bytes, stride 1), ggml's
    dequantize_row_q8_0 / q4_0 / q4_1 / q5_0 / q5_1 step for step. Not inlined: each type's
    loop vectorises on its own."""
    c = carray(data_ptr(src), src.shape[0])
    for b in range(out.shape[0] // 32):
        o = out[32 * b: 32 * b + 32]
        if type_ == Q8_0:
            x = 34 * b
            d = _half_at(c, x)
            for j in range(32):
                o[j] = np.float32(np.int8(c[x + 2 + j])) * d
        elif type_ == Q4_0 or type_ == Q4_1:
            x = b * (18 if type_ == Q4_0 else 20)
            d = _half_at(c, x)
            qs = x + (2 if type_ == Q4_0 else 4)
            if type_ == Q4_0:   # (q - 8) * d as ggml: the subtraction before the multiply
                for j in range(16):
                    o[j] = (np.float32(c[qs + j] & 15) - np.float32(8.0)) * d
                    o[16 + j] = (np.float32(c[qs + j] >> 4) - np.float32(8.0)) * d
            else:
                m = _half_at(c, x + 2)
                for j in range(16):
                    o[j] = np.float32(c[qs + j] & 15) * d + m
                    o[16 + j] = np.float32(c[qs + j] >> 4) * d + m
        else:   # Q5_0 / Q5_1: the fifth bit of quant j is bit j of the little-endian qh
            one = type_ == Q5_1
            x = b * (24 if one else 22)
            d = _half_at(c, x)
            m = _half_at(c, x + 2) if one else np.float32(0.0)
            qh = x + (4 if one else 2)
            qs = qh + 4
            for j in range(16):
                h0 = np.float32((c[qh + (j >> 3)] >> (j & 7)) & 1) * np.float32(16.0)
                h1 = np.float32((c[qh + 2 + (j >> 3)] >> (j & 7)) & 1) * np.float32(16.0)
                if one:
                    o[j] = (np.float32(c[qs + j] & 15) + h0) * d + m
                    o[16 + j] = (np.float32(c[qs + j] >> 4) + h1) * d + m
                else:
                    o[j] = (np.float32(c[qs + j] & 15) + h0 - np.float32(16.0)) * d
                    o[16 + j] = (np.float32(c[qs + j] >> 4) + h1 - np.float32(16.0)) * d


def load_row(src, out, type_):
    """out[:n] = src[:n] as f32 (n = len(out)); src a 1-D float32 or uint16 array of any stride,
    or a quantized row's bytes (uint8, KV_QUANT_TYPES)."""


@overload(load_row, inline="always")
def _load_row(src, out, type_):
    if src.dtype == types.uint8:
        def impl_q(src, out, type_):
            if out.shape[0] > 0:
                dequantize_row(src, out, type_)
        return impl_q
    if src.dtype == types.uint16:
        def impl(src, out, type_):
            n = out.shape[0]
            if n == 0:
                return
            if src.strides[0] == 2:
                c = carray(data_ptr(src), n)
                if type_ == BF16:
                    for d in range(n):
                        out[d] = bf16_to_f32(c[d])
                else:
                    for d in range(n):
                        out[d] = f16_to_f32(c[d])
            elif type_ == BF16:
                for d in range(n):
                    out[d] = bf16_to_f32(src[d])
            else:
                for d in range(n):
                    out[d] = f16_to_f32(src[d])
        return impl

    def impl_f32(src, out, type_):
        n = out.shape[0]
        if n == 0:
            return
        if src.strides[0] == 4:
            c = carray(data_ptr(src), n)
            for d in range(n):
                out[d] = c[d]
        else:
            for d in range(n):
                out[d] = src[d]
    return impl_f32
