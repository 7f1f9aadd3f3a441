"""Device helpers of the fast GATED_DELTA_NET kernels (gdn_fast.py, gdn_chunked.py): float4 loads
and stores (inline PTX on the GPU, with optional .cs streaming hints), warp sums, a 4x4 register
tile update, the op's dims from the meta row. On the simulator the same names are plain Python."""
from __future__ import annotations

from numba import cuda, float32

from minigraph.backends.cuda.common import SIM, ne

WARP = 32
MAX_S = 128                      # state rows a lane group covers: 32 lanes x one float4

# -- vector loads / stores without numba's negative-index wrap-around ---------------------------
# ldN(a, i) -> (a[i], .., a[i+N-1]) in one access, stN(a, i, x0, ..): i*4 bytes N*4-byte aligned.
if SIM:
    @cuda.jit(device=True)
    def ld1(a, i):
        return a[i]

    @cuda.jit(device=True)
    def ld2(a, i):
        return a[i], a[i + 1]

    @cuda.jit(device=True)
    def ld4(a, i):
        return a[i], a[i + 1], a[i + 2], a[i + 3]

    @cuda.jit(device=True)
    def st2(a, i, x0, x1):
        a[i] = x0
        a[i + 1] = x1

    @cuda.jit(device=True)
    def st4(a, i, x0, x1, x2, x3):
        a[i] = x0
        a[i + 1] = x1
        a[i + 2] = x2
        a[i + 3] = x3

    ld4cs, st4cs = ld4, st4

    @cuda.jit(device=True)
    def warp_sums(scr, red, n):
        """red[:n] summed over the warp, every lane gets the sums (the simulator has no warp
        shuffles: through shared memory, scr holding n floats per thread)."""
        tid = cuda.threadIdx.x
        w0 = tid - tid % WARP
        cuda.syncthreads()
        for m in range(n):
            scr[tid * n + m] = red[m]
        cuda.syncthreads()
        for m in range(n):
            x = float32(0.0)
            for lane in range(WARP):
                x += scr[(w0 + lane) * n + m]
            red[m] = x
else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    _F32 = ir.FloatType()
    _I32 = ir.IntType(32)

    def _ptr(context, builder, aty, a, ity, i):
        ary = context.make_array(aty)(context, builder, value=a)
        return builder.gep(ary.data, [context.cast(builder, i, ity, types.intp)])

    def _make_ld(n, hint=None):
        ret = types.float32 if n == 1 else types.UniTuple(types.float32, n)
        vty = _F32 if n == 1 else ir.VectorType(_F32, n)

        @intrinsic
        def _ld(typingctx, a, i):
            def codegen(context, builder, sig, args):
                p = _ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
                if hint:                          # ld.global.<hint>.v4.f32
                    regs = ", ".join(f"${m}" for m in range(n))
                    asm = ir.InlineAsm(ir.FunctionType(ir.LiteralStructType([_F32] * n), [p.type]),
                                       f"ld.global.{hint}.v{n}.f32 {{{regs}}}, [${n}];",
                                       ",".join(["=f"] * n) + ",l", side_effect=True)
                    st = builder.call(asm, [p])
                    vals = [builder.extract_value(st, m) for m in range(n)]
                else:
                    vec = builder.load(builder.bitcast(p, vty.as_pointer(p.type.addrspace)), align=4 * n)
                    if n == 1:
                        return vec
                    vals = [builder.extract_element(vec, ir.Constant(_I32, m)) for m in range(n)]
                return context.make_tuple(builder, ret, vals)
            return ret(a, i), codegen
        return _ld

    def _st_codegen(n, hint):
        vty = ir.VectorType(_F32, n)

        def codegen(context, builder, sig, args):
            p = _ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            vals = [context.cast(builder, x, t, types.float32) for x, t in zip(args[2:], sig.args[2:])]
            if hint:                              # st.global.<hint>.v4.f32
                regs = ", ".join(f"${m + 1}" for m in range(n))
                asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [p.type] + [_F32] * n),
                                   f"st.global.{hint}.v{n}.f32 [$0], {{{regs}}};",
                                   "l," + ",".join(["f"] * n) + ",~{memory}", side_effect=True)
                builder.call(asm, [p, *vals])
            else:
                vec = ir.Constant(vty, ir.Undefined)
                for m, x in enumerate(vals):
                    vec = builder.insert_element(vec, x, ir.Constant(_I32, m))
                builder.store(vec, builder.bitcast(p, vty.as_pointer(p.type.addrspace)), align=4 * n)
        return codegen

    def _make_st2(hint=None):
        @intrinsic
        def _st(typingctx, a, i, x0, x1):
            return types.void(a, i, x0, x1), _st_codegen(2, hint)
        return _st

    def _make_st4(hint=None):
        @intrinsic
        def _st(typingctx, a, i, x0, x1, x2, x3):
            return types.void(a, i, x0, x1, x2, x3), _st_codegen(4, hint)
        return _st

    ld1, ld2, ld4 = _make_ld(1), _make_ld(2), _make_ld(4)
    st2, st4 = _make_st2(), _make_st4()
    ld4cs, st4cs = _make_ld(4, "cs"), _make_st4("cs")    # global memory, evict-first

    @cuda.jit(device=True)
    def warp_sums(scr, red, n):
        """red[:n] summed over the warp by xor butterflies: every lane gets the sums."""
        for off in (16, 8, 4, 2, 1):
            for m in range(n):
                red[m] += cuda.shfl_xor_sync(0xFFFFFFFF, red[m], off)


@cuda.jit(device=True)
def fma_outer(acc, o, w, a0, a1, a2, a3, b0, b1, b2, b3):
    """acc[o + a*w + b] += a_a * b_b for a, b < 4 (a register tile; w its row width)."""
    acc[o] += a0 * b0
    acc[o + 1] += a0 * b1
    acc[o + 2] += a0 * b2
    acc[o + 3] += a0 * b3
    acc[o + w] += a1 * b0
    acc[o + w + 1] += a1 * b1
    acc[o + w + 2] += a1 * b2
    acc[o + w + 3] += a1 * b3
    acc[o + 2 * w] += a2 * b0
    acc[o + 2 * w + 1] += a2 * b1
    acc[o + 2 * w + 2] += a2 * b2
    acc[o + 2 * w + 3] += a2 * b3
    acc[o + 3 * w] += a3 * b0
    acc[o + 3 * w + 1] += a3 * b1
    acc[o + 3 * w + 2] += a3 * b2
    acc[o + 3 * w + 3] += a3 * b3


@cuda.jit(device=True)
def dims(meta):
    """(S, H_v, T, n_seqs, H_k, q/k seq divisor) from v's and q's ne."""
    return ne(meta, 3, 0), ne(meta, 3, 1), ne(meta, 3, 2), ne(meta, 3, 3), ne(meta, 1, 1), \
        ne(meta, 3, 3) // ne(meta, 1, 3)
