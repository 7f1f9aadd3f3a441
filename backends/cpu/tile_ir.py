"""Register-tiled product micro-kernels in LLVM IR, for the CPU kernels' small float32 tiles:
FLASH_ATTN_EXT's scores and output update, GATED_DELTA_NET's chunk products (drivers: tiles.py).

Written as Numba loops an accumulating product kept its outputs in memory: LLVM cannot prove
that the output and the operands do not overlap, so every pass over the reduction loaded and
stored the outputs again. Here the accumulators are vector registers for the whole reduction,
the shape of a GEMM micro-kernel:
- `dots{r}x{c}(a, i0, b, j0, n8, s, bf16)`: s[i0 + i, j0 + j] = a[i0 + i, :8 n8] . b[j0 + j, :8 n8]
  for i < r, j < c; r x c accumulators of 8 lanes, summed across lanes at the end, together
  (`_fold`: a transposed reduction; one core of the Zen 5, scores 64 x 128 x 576: f16 K
  194-196 -> 194-205 GFLOP/s, f32 K 163 -> 175-206; MLA prefill, kernel alone, 14.39-14.47 ->
  14.22-14.27 ms in three alternating runs, decode within its noise).
- `pv_rows{r}(p, r0, vb, voff, nj, o, d0, bf16, beta)`: o[r0 + i, d0:d0 + 16] = beta * o[..] + sum
  over j < nj of p[r0 + i, j] * vb[j, voff + d0:voff + d0 + 16] for i < r (beta 0: o is only
  written); per reduction step two 8-float loads of vb, one broadcast of p per output row and 2r
  fused multiply-adds.
- `dots{r}x{c}w`, `pv_rows{r}w` (wide): the same with 16-lane vectors, for AVX-512's 16-float
  FMAs (`WIDE` says whether the host has them): `dots..w` takes the same n8 (an odd last 8 is
  added into the low lanes); `pv_rows{r}w` updates 32 columns o[.., d0:d0 + 32]. On a host without
  AVX-512 LLVM splits their vectors in two: the same results, no faster (the tests run both).

a, s and o are float32 tiles (2-D, C-contiguous); p is any 2-D float32 array (a transposed view
too: both its strides are used). b and vb are 2-D with rows at any byte stride and contiguous
columns: float32, or K/V rows read where they are stored as float16 or bfloat16 bits (uint16;
`bf16` says which), converted 8 lanes at a time in registers. float16 is read this way only
where the CPU converts halves itself (F16C, ARMv8: quant_ir.NATIVE_HALF); the callers check
that, the column stride and every index (the micro-kernels read what they are told to).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from minigraph.backends.cpu.quant_ir import (F32, I8, I16, I32, I64, host_features, shuffle, splat, splat_const,
                                             vec)

LANES = 8                                  # floats a vector (a pv call updates 2 vectors = 16 columns)
V8 = vec(F32, LANES)


# AVX-512F on the machine Numba compiles for. Zen 5, 2 threads, MLA decode n_kv=4096
# (FLASH_ATTN_EXT): 8 lanes 178 GFLOP/s, 16 lanes 289-320 (BENCHMARKS.md)
_TRIPLE, _FEATURES = host_features()
WIDE = _TRIPLE.startswith("x86_64") and "avx512f" in _FEATURES


def _row_ptr(b, arr, row, col, itemsize):
    """i8* to element [row, col] of a 2-D array whose rows sit at any byte stride."""
    stride = cgutils.unpack_tuple(b, arr.strides, 2)[0]
    base = b.bitcast(arr.data, I8.as_pointer())
    return b.gep(base, [b.add(b.mul(row, stride), b.mul(col, ir.Constant(I64, itemsize)))])


def _load(b, p, k, elem, n=LANES):
    """The k-th n values at i8* p as <n x float> (no alignment assumed); elem: "f32", "f16" or
    "bf16" (the bits become the top half of an f32)."""
    vf = vec(F32, n)
    if elem == "f32":
        return b.load(b.bitcast(b.gep(p, [ir.Constant(I64, 4 * n * k)]), vf.as_pointer()), align=4)
    bits = b.load(b.bitcast(b.gep(p, [ir.Constant(I64, 2 * n * k)]), vec(I16, n).as_pointer()), align=2)
    if elem == "f16":
        return b.fpext(b.bitcast(bits, vec(ir.HalfType(), n)), vf)
    wide = b.shl(b.zext(bits, vec(I32, n)), splat_const(I32, n, 16))
    return b.bitcast(wide, vf)


def _widen(b, v, n):
    """<8 x float> v as the low lanes of <n x float>, zeros above (v itself when it has n)."""
    if v.type.count == n:
        return v
    return shuffle(b, v, ir.Constant(V8, [0.0] * LANES), list(range(n)))


def _operand(ty):
    """(element kind, itemsize) of the b / vb operand's Numba array type (uint16: f16 or bf16
    bits, told apart at run time), or None."""
    if not (isinstance(ty, types.Array) and ty.ndim == 2):
        return None
    if ty.dtype == types.float32:
        return "f32", 4
    if ty.dtype == types.uint16:
        return "f16", 2
    return None


def _f32_2d(ty) -> bool:
    return isinstance(ty, types.Array) and ty.ndim == 2 and ty.dtype == types.float32


def _tile(ty) -> bool:
    return _f32_2d(ty) and ty.layout == "C"


def _per_elem(b, kind, bf16, emit):
    """emit(elem) once per element kind: a uint16 operand branches once on `bf16`, outside the
    loops, between its float16 and bfloat16 loops."""
    if kind == "f32":
        emit("f32")
        return
    with b.if_else(b.icmp_signed("!=", bf16, ir.Constant(bf16.type, 0))) as (then, otherwise):
        with then:
            emit("bf16")
        with otherwise:
            emit("f16")


def _arrays(context, b, sig, args, *idx):
    """The Numba array structs (data, shape, strides) of the arguments at positions idx."""
    return [context.make_array(sig.args[i])(context, b, args[i]) for i in idx]


def _fma(b, n=LANES):
    vf = vec(F32, n)
    return b.module.declare_intrinsic(f"llvm.fmuladd.v{n}f32", fnty=ir.FunctionType(vf, [vf] * 3))


def _fold(b, vs):
    """Sums of the lanes of every vector in vs (all of n lanes, len(vs) a power of two <= n) as
    one vector of len(vs) lanes, lane k the sum of vs[k], in one fixed order: a transposed
    reduction. Pairs of vectors become one, the first halves of each's lane blocks then the
    second halves added (blocks halve as vectors merge); a last vector folds onto itself until
    each block is one lane. 16 accumulators of 16 lanes: 15 adds and 30 shuffles where one
    horizontal sum each took 16 x (4 adds and 8 shuffles or extracts)."""
    def halves(width, blk):
        """Lane indices of the first and of the second halves of a vector's blocks of blk lanes."""
        h = blk // 2
        lo = [t * blk + i for t in range(width // blk) for i in range(h)]
        return lo, [i + h for i in lo]

    n = vs[0].type.count
    blk = n                                    # lanes a vector's block (one accumulator's partials) spans
    while len(vs) > 1:
        lo, hi = halves(n, blk)
        vs = [b.fadd(shuffle(b, x, y, lo + [n + i for i in lo]), shuffle(b, x, y, hi + [n + i for i in hi]))
              for x, y in zip(vs[0::2], vs[1::2])]
        blk //= 2
    v, width = vs[0], n
    while blk > 1:                             # one vector left: fold its blocks onto themselves
        lo, hi = halves(width, blk)
        v = b.fadd(shuffle(b, v, v, lo), shuffle(b, v, v, hi))
        width //= 2
        blk //= 2
    return v


def _lane_sums(b, accs):
    """The lane sums of the accumulators accs (one vector each), as scalars in their order:
    groups of a power of two (at most the lane count) reduced together by _fold."""
    n = accs[0].type.count
    out = []
    i = 0
    while i < len(accs):
        g = 1
        while g * 2 <= min(n, len(accs) - i):
            g *= 2
        v = _fold(b, accs[i:i + g])
        out += [b.extract_element(v, ir.Constant(I32, k)) for k in range(g)]
        i += g
    return out


def _make_dots(rows: int, cols: int, n: int = LANES):
    """n lanes a vector (8 or 16); the reduction is n8 steps of 8 floats either way."""
    def codegen(context, builder, sig, args):
        b = builder
        _, i0, _, j0, n8, _, bf16 = args
        kind, isz = _operand(sig.args[2])
        aa, ba, sa = _arrays(context, b, sig, args, 0, 2, 5)
        fma = _fma(b, n)
        zero = ir.Constant(I64, 0)
        arow = [_row_ptr(b, aa, b.add(i0, ir.Constant(I64, i)), zero, 4) for i in range(rows)]
        brow = [_row_ptr(b, ba, b.add(j0, ir.Constant(I64, j)), zero, isz) for j in range(cols)]
        acc = [[cgutils.alloca_once_value(b, ir.Constant(vec(F32, n), [0.0] * n)) for _ in range(cols)]
               for _ in range(rows)]
        steps = b.udiv(n8, ir.Constant(I64, n // LANES))

        def step(at, width, elem):
            """acc += the 8 or n values from element `at` on (an 8 widened to n)."""
            x = [_widen(b, _load(b, b.gep(p, [b.mul(at, ir.Constant(I64, 4))]), 0, "f32", width), n) for p in arow]
            y = [_widen(b, _load(b, b.gep(p, [b.mul(at, ir.Constant(I64, isz))]), 0, elem, width), n) for p in brow]
            for i in range(rows):
                for j in range(cols):
                    b.store(b.call(fma, [x[i], y[j], b.load(acc[i][j])]), acc[i][j])

        def loop(elem):
            with cgutils.for_range(b, steps) as it:
                step(b.mul(it.index, ir.Constant(I64, n)), n, elem)
            if n > LANES:   # n8 odd: its last 8
                with b.if_then(b.icmp_unsigned("!=", b.and_(n8, ir.Constant(I64, 1)), zero)):
                    step(b.mul(steps, ir.Constant(I64, n)), LANES, elem)

        _per_elem(b, kind, bf16, loop)
        sums = _lane_sums(b, [b.load(acc[i][j]) for i in range(rows) for j in range(cols)])
        for i in range(rows):
            srow = _row_ptr(b, sa, b.add(i0, ir.Constant(I64, i)), j0, 4)
            for j in range(cols):
                out = b.bitcast(b.gep(srow, [ir.Constant(I64, 4 * j)]), F32.as_pointer())
                b.store(sums[i * cols + j], out, align=4)
        return context.get_dummy_value()

    def typer(typingctx, a, i0, bm, j0, n8, s, bf16):
        if not (_tile(a) and _tile(s) and _operand(bm)):
            return None
        return types.void(a, types.int64, bm, types.int64, types.int64, s, types.int64), codegen

    typer.__name__ = f"dots{rows}x{cols}" + ("w" if n > LANES else "")
    return intrinsic(typer)


def _make_pv(rows: int, n: int = LANES):
    """Two vectors of n lanes a row: 2n columns."""
    def codegen(context, builder, sig, args):
        b = builder
        _, r0, _, voff, nj, _, d0, bf16, beta = args
        kind, isz = _operand(sig.args[2])
        pa, va, oa = _arrays(context, b, sig, args, 0, 2, 5)
        fma = _fma(b, n)
        zero = ir.Constant(I64, 0)
        orow = [_row_ptr(b, oa, b.add(r0, ir.Constant(I64, i)), d0, 4) for i in range(rows)]
        prow = [_row_ptr(b, pa, b.add(r0, ir.Constant(I64, i)), zero, 4) for i in range(rows)]
        pstep = cgutils.unpack_tuple(b, pa.strides, 2)[1]     # p's column stride, in bytes
        vcol = _row_ptr(b, va, zero, b.add(voff, d0), isz)
        vstride = cgutils.unpack_tuple(b, va.strides, 2)[0]
        keep = b.fcmp_ordered("!=", beta, ir.Constant(F32, 0.0))
        zeros = ir.Constant(vec(F32, n), [0.0] * n)
        acc = [[None, None] for _ in range(rows)]
        for i in range(rows):
            for k in range(2):
                acc[i][k] = cgutils.alloca_once_value(b, zeros)
        with b.if_then(keep):   # beta 0: o is not read (it may hold anything)
            scale = splat(b, beta, n)
            for i in range(rows):
                for k in range(2):
                    b.store(b.fmul(_load(b, orow[i], k, "f32", n), scale), acc[i][k])

        def loop(elem):
            with cgutils.for_range(b, nj) as it:
                j = it.index
                pv = b.gep(vcol, [b.mul(j, vstride)])
                v = [_load(b, pv, k, elem, n) for k in range(2)]
                for i in range(rows):
                    pij = b.load(b.bitcast(b.gep(prow[i], [b.mul(j, pstep)]), F32.as_pointer()), align=4)
                    x = splat(b, pij, n)
                    for k in range(2):
                        b.store(b.call(fma, [x, v[k], b.load(acc[i][k])]), acc[i][k])

        _per_elem(b, kind, bf16, loop)
        for i in range(rows):
            for k in range(2):
                dst = b.bitcast(b.gep(orow[i], [ir.Constant(I64, 4 * n * k)]), vec(F32, n).as_pointer())
                b.store(b.load(acc[i][k]), dst, align=4)
        return context.get_dummy_value()

    def typer(typingctx, p, r0, vb, voff, nj, o, d0, bf16, beta):
        if not (_f32_2d(p) and _tile(o) and _operand(vb)):
            return None
        return (types.void(p, types.int64, vb, types.int64, types.int64, o, types.int64, types.int64, types.float32),
                codegen)

    typer.__name__ = f"pv_rows{rows}" + ("w" if n > LANES else "")
    return intrinsic(typer)


dots4x3 = _make_dots(4, 3)
dots4x1 = _make_dots(4, 1)
dots1x3 = _make_dots(1, 3)
dots1x1 = _make_dots(1, 1)
pv_rows1 = _make_pv(1)
pv_rows2 = _make_pv(2)
pv_rows4 = _make_pv(4)
pv_rows6 = _make_pv(6)

# the 16-lane kernels (module docstring); 32 vector registers take 8-row tiles (Zen 5, one core:
# scores 16 x 128 x 576 f16 8 x 3: 192 GFLOP/s, 4 x 3: 172; output 16 x 128 x 512, 8 rows: 218, 6: 188)
dots8x3w = _make_dots(8, 3, 16)
dots8x1w = _make_dots(8, 1, 16)
dots4x3w = _make_dots(4, 3, 16)
dots4x1w = _make_dots(4, 1, 16)
dots1x3w = _make_dots(1, 3, 16)
dots1x1w = _make_dots(1, 1, 16)
pv_rows1w = _make_pv(1, 16)
pv_rows2w = _make_pv(2, 16)
pv_rows4w = _make_pv(4, 16)
pv_rows6w = _make_pv(6, 16)
pv_rows8w = _make_pv(8, 16)
