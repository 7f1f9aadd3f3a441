"""The output update of FLASH_ATTN_EXT's CPU kernel (o += P V on one tile) as LLVM IR.

Written as Numba loops the update kept each output value in memory: LLVM cannot prove that o,
P and V do not overlap, so every pass over the kv rows loaded and stored the outputs again
(50-60 GFLOP/s a core on the dev box, where the scores product, which accumulates in registers,
reaches 75-88). Here a block of `rows` output rows x 16 columns lives in 2 * rows vector
registers across the whole kv loop: per kv row two 8-float loads of V, one broadcast of P per
row and 2 * rows fused multiply-adds, the shape of a GEMM micro-kernel.

`pv_rows{n}(p, r0, vb, voff, nj, o, d0)`: o[r0 + i, d0:d0 + 16] += sum over j < nj of
p[r0 + i, j] * vb[j, voff + d0:voff + d0 + 16] for i < n. p, vb and o are 2-D float32 arrays
C-contiguous (the kernel's tiles); the caller
keeps every index in bounds (d0 + 16 <= o's columns, voff + d0 + 16 <= vb's columns).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from minigraph.backends.cpu.quant_ir import F32, I8, I64, hsum, splat, vec

LANES = 8
COLS = 16                                  # output columns a call updates: two vectors
V8 = vec(F32, LANES)


def _row_ptr(b, arr, row, col):
    """i8* to element [row, col] of a 2-D float32 array (rows at any byte stride)."""
    stride = cgutils.unpack_tuple(b, arr.strides, 2)[0]
    base = b.bitcast(arr.data, I8.as_pointer())
    return b.gep(base, [b.add(b.mul(row, stride), b.mul(col, ir.Constant(I64, 4)))])


def _vec_at(b, p, k):
    """The k-th 8-float vector at i8* p (no alignment assumed)."""
    return b.bitcast(b.gep(p, [ir.Constant(I64, 32 * k)]), V8.as_pointer())


def _make_pv(rows: int):
    def codegen(context, builder, sig, args):
        b = builder
        p, r0, vb, voff, nj, o, d0 = args
        tp, _, tv, _, _, to, _ = sig.args
        pa = context.make_array(tp)(context, b, p)
        va = context.make_array(tv)(context, b, vb)
        oa = context.make_array(to)(context, b, o)
        fma = b.module.declare_intrinsic("llvm.fmuladd.v8f32", fnty=ir.FunctionType(V8, [V8] * 3))
        zero = ir.Constant(I64, 0)
        orow = [_row_ptr(b, oa, b.add(r0, ir.Constant(I64, i)), d0) for i in range(rows)]
        prow = [_row_ptr(b, pa, b.add(r0, ir.Constant(I64, i)), zero) for i in range(rows)]
        vcol = _row_ptr(b, va, zero, b.add(voff, d0))
        vstride = cgutils.unpack_tuple(b, va.strides, 2)[0]
        acc = [[cgutils.alloca_once_value(b, b.load(_vec_at(b, orow[i], k), align=4)) for k in range(2)]
               for i in range(rows)]
        with cgutils.for_range(b, nj) as loop:
            j = loop.index
            pv = b.gep(vcol, [b.mul(j, vstride)])
            v = [b.load(_vec_at(b, pv, k), align=4) for k in range(2)]
            for i in range(rows):
                pij = b.load(b.bitcast(b.gep(prow[i], [b.mul(j, ir.Constant(I64, 4))]), F32.as_pointer()), align=4)
                s = splat(b, pij, LANES)
                for k in range(2):
                    b.store(b.call(fma, [s, v[k], b.load(acc[i][k])]), acc[i][k])
        for i in range(rows):
            for k in range(2):
                b.store(b.load(acc[i][k]), _vec_at(b, orow[i], k), align=4)
        return context.get_dummy_value()

    def typer(typingctx, p, r0, vb, voff, nj, o, d0):
        for a in (p, vb, o):
            if not (isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float32 and a.layout == "C"):
                return None
        return types.void(p, types.int64, vb, types.int64, types.int64, o, types.int64), codegen

    typer.__name__ = f"pv_rows{rows}"
    return intrinsic(typer)


pv_rows1 = _make_pv(1)
pv_rows2 = _make_pv(2)
pv_rows4 = _make_pv(4)
pv_rows6 = _make_pv(6)


def _make_dots(rows: int, cols: int):
    def codegen(context, builder, sig, args):
        b = builder
        a, i0, bm, j0, n8, s = args
        ta, _, tb, _, _, ts = sig.args
        aa = context.make_array(ta)(context, b, a)
        ba = context.make_array(tb)(context, b, bm)
        sa = context.make_array(ts)(context, b, s)
        fma = b.module.declare_intrinsic("llvm.fmuladd.v8f32", fnty=ir.FunctionType(V8, [V8] * 3))
        zero = ir.Constant(I64, 0)
        arow = [_row_ptr(b, aa, b.add(i0, ir.Constant(I64, i)), zero) for i in range(rows)]
        brow = [_row_ptr(b, ba, b.add(j0, ir.Constant(I64, j)), zero) for j in range(cols)]
        acc = [[cgutils.alloca_once_value(b, ir.Constant(V8, [0.0] * LANES)) for _ in range(cols)] for _ in range(rows)]
        with cgutils.for_range(b, n8) as loop:
            off = b.mul(loop.index, ir.Constant(I64, 32))
            x = [b.load(b.bitcast(b.gep(p, [off]), V8.as_pointer()), align=4) for p in arow]
            y = [b.load(b.bitcast(b.gep(p, [off]), V8.as_pointer()), align=4) for p in brow]
            for i in range(rows):
                for j in range(cols):
                    b.store(b.call(fma, [x[i], y[j], b.load(acc[i][j])]), acc[i][j])
        for i in range(rows):
            srow = _row_ptr(b, sa, b.add(i0, ir.Constant(I64, i)), j0)
            for j in range(cols):
                out = b.bitcast(b.gep(srow, [ir.Constant(I64, 4 * j)]), F32.as_pointer())
                b.store(hsum(b, b.load(acc[i][j])), out, align=4)
        return context.get_dummy_value()

    def typer(typingctx, a, i0, bm, j0, n8, s):
        for x in (a, bm, s):
            if not (isinstance(x, types.Array) and x.ndim == 2 and x.dtype == types.float32 and x.layout == "C"):
                return None
        return types.void(a, types.int64, bm, types.int64, types.int64, s), codegen

    typer.__name__ = f"dots{rows}x{cols}"
    return intrinsic(typer)


dots4x3 = _make_dots(4, 3)
dots4x1 = _make_dots(4, 1)
dots1x3 = _make_dots(1, 3)
dots1x1 = _make_dots(1, 1)
