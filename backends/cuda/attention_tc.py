"""Tensor-core FLASH_ATTN_EXT for f16 K/V on a real GPU (sm_80+): mma.sync m16n8k16 from Numba.

The same split-KV plan, workspace and combine as attention.py (fa_split's partials: unnormalised
output, running max, running sum per (row, chunk)); only the per-chunk kernel differs. It runs
where it pays and is exact enough: K and V f16 (ggml's own CUDA kernels round Q to f16 for them
too; accumulation stays f32), DK % 64 == 0, DV % 32 == 0, K rows contiguous and 4-byte aligned.
The simulator has no tensor cores, so there (and in CI) the plain kernels run every case;
tests marked gpu compare this kernel with the reference on the device.

One block of TC_WARPS warps per (kv chunk, group of 16 rows of one K head, ne3). Rows are the
(query row, head) pairs of a GQA/MQA group (MLA: the 16 heads), the M = 16 of the mma. Per tile
of 16 kv rows:
  S = Q K^T   each warp takes a quarter of DK (k-steps of 16): A = q (f16 pairs, pre-scaled, in
              shared memory), B = two 32-bit words straight from each K row; the four partial
              16x16 tiles are summed through shared memory (double-buffered: one barrier a tile).
  softmax     every warp redoes the (cheap) online softmax of the full tile in registers; the
              probabilities become the A fragment of the next mma directly (FA2's register reuse).
  O += P V    each warp owns a quarter of DV: B = V[kv][dv] pairs gathered as 16-bit loads; when
              V is a view of K at offset 0 these are the K rows the block just read (L1 hits).
"""
from __future__ import annotations

import math

from numba import cuda, float32, int32

from minigraph.backends.cuda.common import SIM, SLOT_W, at, ne

TC_WARPS = 4
TILE = 16
WARP = 32

if not SIM:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    _I16, _I32, _F32 = ir.IntType(16), ir.IntType(32), ir.FloatType()

    def _ptr(context, builder, aty, a, ity, i):
        ary = context.make_array(aty)(context, builder, value=a)
        return builder.gep(ary.data, [context.cast(builder, i, ity, types.intp)])

    @intrinsic
    def ld_b32(typingctx, a, i):
        """The 32-bit word holding elements i, i+1 of a 16-bit array (i even: 4-byte aligned)."""
        def codegen(context, builder, sig, args):
            p = _ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            return builder.load(builder.bitcast(p, _I32.as_pointer(p.type.addrspace)), align=4)
        return types.uint32(a, i), codegen

    @intrinsic
    def ld_u16(typingctx, a, i):
        """The raw 16 bits of element i of a 16-bit array, zero-extended."""
        def codegen(context, builder, sig, args):
            p = _ptr(context, builder, sig.args[0], args[0], sig.args[1], args[1])
            h = builder.load(builder.bitcast(p, _I16.as_pointer(p.type.addrspace)), align=2)
            return builder.zext(h, _I32)
        return types.uint32(a, i), codegen

    @intrinsic
    def pack_f16x2(typingctx, lo, hi):
        """Two f32 rounded to f16 (nearest even) in one word: lo in bits 0-15, hi in 16-31."""
        def codegen(context, builder, sig, args):
            lo_ = context.cast(builder, args[0], sig.args[0], types.float32)
            hi_ = context.cast(builder, args[1], sig.args[1], types.float32)
            asm = ir.InlineAsm(ir.FunctionType(_I32, [_F32, _F32]), "cvt.rn.f16x2.f32 $0, $1, $2;", "=r,f,f")
            return builder.call(asm, [hi_, lo_])
        return types.uint32(lo, hi), codegen

    @intrinsic
    def mma16816(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """D = A (16x16 f16, row) B (16x8 f16, col) + C (16x8 f32): one warp's mma.sync."""
        ret = types.UniTuple(types.float32, 4)

        def codegen(context, builder, sig, args):
            ins = [context.cast(builder, x, t, types.uint32) for x, t in zip(args[:6], sig.args[:6])]
            ins += [context.cast(builder, x, t, types.float32) for x, t in zip(args[6:], sig.args[6:])]
            asm = ir.InlineAsm(ir.FunctionType(ir.LiteralStructType([_F32] * 4), [_I32] * 6 + [_F32] * 4),
                               "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                               "{$0,$1,$2,$3}, {$4,$5,$6,$7}, {$8,$9}, {$10,$11,$12,$13};",
                               "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f")
            st = builder.call(asm, ins)
            return context.make_tuple(builder, ret, [builder.extract_value(st, m) for m in range(4)])
        return ret(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3), codegen


@cuda.jit(device=True)
def _quad_max(x):
    x = max(x, cuda.shfl_xor_sync(0xFFFFFFFF, x, 1))
    return max(x, cuda.shfl_xor_sync(0xFFFFFFFF, x, 2))


@cuda.jit(device=True)
def _quad_sum(x):
    x += cuda.shfl_xor_sync(0xFFFFFFFF, x, 1)
    return x + cuda.shfl_xor_sync(0xFFFFFFFF, x, 2)


@cuda.jit(device=True)
def _mask_at(has_mask, live, mask, mo, m1s, jv, j_hi):
    """The mask value of one score of the tile (loaded early; 0 without a mask or past the chunk)."""
    if has_mask and live and jv < j_hi:
        return float32(mask[mo + jv * m1s])
    return float32(0.0)


@cuda.jit(device=True)
def _score(s, softcap, jv, j_hi, mv, slope):
    """One score of the tile: softcap, + slope * mask, -inf past the chunk."""
    if softcap != 0.0:
        s = softcap * math.tanh(s)
    if jv >= j_hi:
        return -math.inf
    return s + slope * mv


@cuda.jit(device=True)
def _pexp(s, m):
    return float32(0.0) if s == -math.inf else math.exp(s - m)


_TC: dict = {}


def tc_kernel(DK: int, DV: int):
    """The tensor-core chunk kernel for head sizes DK (% 64 == 0) and DV (% 32 == 0)."""
    key = (DK, DV)
    if key in _TC:
        return _TC[key]
    KS_W = DK // 16 // TC_WARPS          # k-steps of S a warp takes
    NT_W = DV // 8 // TC_WARPS           # n-tiles of O a warp owns
    HP = DK // 2                         # q f16 pairs a row
    QS = HP + 4                          # padded row stride: 8 rows x 4 lanes hit 32 banks
    SS = TC_WARPS * TILE * TILE
    SQN, SSN = TILE * QS, 2 * SS         # shared array sizes (compile-time constants)
    KF, VF = 4 * KS_W, 2 * NT_W          # K / V fragment words a lane holds per tile
    ON = NT_W * 4

    # small heads: cap the registers (ptxas: 182 -> 128, 20 bytes spilled) for 4 blocks an SM
    opts = {"max_registers": 128} if DK + DV <= 256 else {}

    @cuda.jit(**opts)
    def fa_tc(meta, dst, q, k, v, mask, sinks, scale, max_bias, softcap, prec, v_in_k, has_mask, has_sinks,
              m0, m1, n_log2, kbf, vbf, chunk, n_parts, part):
        sq = cuda.shared.array(SQN, int32)     # f16 pairs (bits)
        ss = cuda.shared.array(SSN, float32)
        o = cuda.local.array(ON, float32)
        tid = cuda.threadIdx.x
        lane = tid % WARP
        w = tid // WARP
        g = lane >> 2
        t4 = lane & 3
        dv = ne(meta, 0, 0)
        n_head = ne(meta, 0, 1)
        n_q = ne(meta, 0, 2)
        n3 = ne(meta, 0, 3)
        n_kv = ne(meta, 2, 1)
        G = n_head // ne(meta, 2, 2)
        n_rows = G * n_q
        n_rg = (n_rows + TILE - 1) // TILE
        ik2 = cuda.blockIdx.y // n_rg
        r0 = (cuda.blockIdx.y % n_rg) * TILE
        i3 = cuda.blockIdx.z
        kb = meta[2 * SLOT_W] + ik2 * meta[2 * SLOT_W + 7] + (i3 // (n3 // ne(meta, 2, 3))) * meta[2 * SLOT_W + 8]
        k1 = meta[2 * SLOT_W + 6]
        vb = meta[3 * SLOT_W] + ik2 * meta[3 * SLOT_W + 7] + (i3 // (n3 // ne(meta, 3, 3))) * meta[3 * SLOT_W + 8]
        v0 = meta[3 * SLOT_W + 5]
        v1 = meta[3 * SLOT_W + 6]
        share = v_in_k == 0
        if share:
            vb = kb
            v0 = 1
            v1 = k1
        sc = scale / softcap if softcap != 0.0 else scale
        for idx in range(tid, TILE * HP, TC_WARPS * WARP):   # q rows as scaled f16 pairs
            rr = idx // HP
            c = idx % HP
            r = r0 + rr
            x0 = float32(0.0)
            x1 = float32(0.0)
            if r < n_rows:
                qo = at(meta, 1, 2 * c, r // G, ik2 * G + r % G, i3)
                x0 = q[qo] * sc
                x1 = q[qo + meta[SLOT_W + 5]] * sc
            sq[rr * QS + c] = pack_f16x2(x0, x1)
        # the lane's two rows: g and g + 8 of the tile
        ra = r0 + g
        rb = r0 + g + 8
        live_a = ra < n_rows
        live_b = rb < n_rows
        ha = ik2 * G + ra % G
        hb = ik2 * G + rb % G
        m1s = meta[4 * SLOT_W + 5]        # the mask's kv stride (elements)
        mo_a = 0
        mo_b = 0
        sl_a = float32(1.0)
        sl_b = float32(1.0)
        if has_mask:
            if live_a:
                mo_a = at(meta, 4, 0, ra // G, ha % ne(meta, 4, 2), i3 % ne(meta, 4, 3))
            if live_b:
                mo_b = at(meta, 4, 0, rb // G, hb % ne(meta, 4, 2), i3 % ne(meta, 4, 3))
            if max_bias > 0.0:
                sl_a = float32(m0 ** (ha + 1) if ha < n_log2 else m1 ** (2 * (ha - n_log2) + 1))
                sl_b = float32(m0 ** (hb + 1) if hb < n_log2 else m1 ** (2 * (hb - n_log2) + 1))
        for i in range(ON):
            o[i] = float32(0.0)
        m_a = float32(-math.inf)
        m_b = float32(-math.inf)
        l_a = float32(0.0)
        l_b = float32(0.0)
        cuda.syncthreads()
        j_lo = cuda.blockIdx.x * chunk
        j_hi = min(n_kv, j_lo + chunk)
        kk0 = w * KS_W
        src = k if share else v
        # K fragments of the current tile (kf) and the next (kn), V fragments of the current (vf):
        # every global load of a tile is issued before the mma's that wait on the previous one
        kf = cuda.local.array(KF, int32)
        kn = cuda.local.array(KF, int32)
        vf = cuda.local.array(VF, int32)
        ka = kb + min(j_lo + g, j_hi - 1) * k1
        kc = kb + min(j_lo + 8 + g, j_hi - 1) * k1
        for ks in range(KS_W):
            d = (kk0 + ks) * 16 + 2 * t4
            kf[ks * 4] = ld_b32(k, ka + d)
            kf[ks * 4 + 1] = ld_b32(k, ka + d + 8)
            kf[ks * 4 + 2] = ld_b32(k, kc + d)
            kf[ks * 4 + 3] = ld_b32(k, kc + d + 8)
        for it in range((j_hi - j_lo + TILE - 1) // TILE):
            jt = j_lo + it * TILE
            j0 = jt + 2 * t4
            va = vb + min(j0, j_hi - 1) * v1
            vc = vb + min(j0 + 1, j_hi - 1) * v1
            vd = vb + min(j0 + 8, j_hi - 1) * v1
            ve = vb + min(j0 + 9, j_hi - 1) * v1
            for nt in range(NT_W):
                col = ((w * NT_W + nt) * 8 + g) * v0
                vf[nt * 2] = ld_u16(src, va + col) | (ld_u16(src, vc + col) << 16)
                vf[nt * 2 + 1] = ld_u16(src, vd + col) | (ld_u16(src, ve + col) << 16)
            mk0 = _mask_at(has_mask, live_a, mask, mo_a, m1s, j0, j_hi)
            mk1 = _mask_at(has_mask, live_a, mask, mo_a, m1s, j0 + 1, j_hi)
            mk2 = _mask_at(has_mask, live_b, mask, mo_b, m1s, j0, j_hi)
            mk3 = _mask_at(has_mask, live_b, mask, mo_b, m1s, j0 + 1, j_hi)
            mk4 = _mask_at(has_mask, live_a, mask, mo_a, m1s, j0 + 8, j_hi)
            mk5 = _mask_at(has_mask, live_a, mask, mo_a, m1s, j0 + 9, j_hi)
            mk6 = _mask_at(has_mask, live_b, mask, mo_b, m1s, j0 + 8, j_hi)
            mk7 = _mask_at(has_mask, live_b, mask, mo_b, m1s, j0 + 9, j_hi)
            ka = kb + min(jt + TILE + g, j_hi - 1) * k1
            kc = kb + min(jt + TILE + 8 + g, j_hi - 1) * k1
            for ks in range(KS_W):
                d = (kk0 + ks) * 16 + 2 * t4
                kn[ks * 4] = ld_b32(k, ka + d)
                kn[ks * 4 + 1] = ld_b32(k, ka + d + 8)
                kn[ks * 4 + 2] = ld_b32(k, kc + d)
                kn[ks * 4 + 3] = ld_b32(k, kc + d + 8)
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = float32(0.0)
            for ks in range(KS_W):
                c = (kk0 + ks) * 8 + t4
                a0 = sq[g * QS + c]
                a1 = sq[(g + 8) * QS + c]
                a2 = sq[g * QS + c + 4]
                a3 = sq[(g + 8) * QS + c + 4]
                s0, s1, s2, s3 = mma16816(a0, a1, a2, a3, kf[ks * 4], kf[ks * 4 + 1], s0, s1, s2, s3)
                s4, s5, s6, s7 = mma16816(a0, a1, a2, a3, kf[ks * 4 + 2], kf[ks * 4 + 3], s4, s5, s6, s7)
            for i in range(KF):
                kf[i] = kn[i]
            buf = (it & 1) * SS
            pw = buf + w * TILE * TILE
            ss[pw + g * TILE + 2 * t4] = s0
            ss[pw + g * TILE + 2 * t4 + 1] = s1
            ss[pw + (g + 8) * TILE + 2 * t4] = s2
            ss[pw + (g + 8) * TILE + 2 * t4 + 1] = s3
            ss[pw + g * TILE + 8 + 2 * t4] = s4
            ss[pw + g * TILE + 9 + 2 * t4] = s5
            ss[pw + (g + 8) * TILE + 8 + 2 * t4] = s6
            ss[pw + (g + 8) * TILE + 9 + 2 * t4] = s7
            cuda.syncthreads()
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = float32(0.0)
            for ww in range(TC_WARPS):
                pw = buf + ww * TILE * TILE
                s0 += ss[pw + g * TILE + 2 * t4]
                s1 += ss[pw + g * TILE + 2 * t4 + 1]
                s2 += ss[pw + (g + 8) * TILE + 2 * t4]
                s3 += ss[pw + (g + 8) * TILE + 2 * t4 + 1]
                s4 += ss[pw + g * TILE + 8 + 2 * t4]
                s5 += ss[pw + g * TILE + 9 + 2 * t4]
                s6 += ss[pw + (g + 8) * TILE + 8 + 2 * t4]
                s7 += ss[pw + (g + 8) * TILE + 9 + 2 * t4]
            s0 = _score(s0, softcap, j0, j_hi, mk0, sl_a)
            s1 = _score(s1, softcap, j0 + 1, j_hi, mk1, sl_a)
            s2 = _score(s2, softcap, j0, j_hi, mk2, sl_b)
            s3 = _score(s3, softcap, j0 + 1, j_hi, mk3, sl_b)
            s4 = _score(s4, softcap, j0 + 8, j_hi, mk4, sl_a)
            s5 = _score(s5, softcap, j0 + 9, j_hi, mk5, sl_a)
            s6 = _score(s6, softcap, j0 + 8, j_hi, mk6, sl_b)
            s7 = _score(s7, softcap, j0 + 9, j_hi, mk7, sl_b)
            na = max(m_a, _quad_max(max(max(s0, s1), max(s4, s5))))
            nb = max(m_b, _quad_max(max(max(s2, s3), max(s6, s7))))
            fa = float32(1.0) if na == -math.inf else math.exp(m_a - na)
            fb = float32(1.0) if nb == -math.inf else math.exp(m_b - nb)
            p0, p1, p4, p5 = _pexp(s0, na), _pexp(s1, na), _pexp(s4, na), _pexp(s5, na)
            p2, p3, p6, p7 = _pexp(s2, nb), _pexp(s3, nb), _pexp(s6, nb), _pexp(s7, nb)
            l_a = l_a * fa + (p0 + p1 + p4 + p5)     # the lane's share; quad-summed at the end
            l_b = l_b * fb + (p2 + p3 + p6 + p7)
            m_a = na
            m_b = nb
            if fa != 1.0 or fb != 1.0:
                for nt in range(NT_W):
                    o[nt * 4] *= fa
                    o[nt * 4 + 1] *= fa
                    o[nt * 4 + 2] *= fb
                    o[nt * 4 + 3] *= fb
            pa0 = pack_f16x2(p0, p1)
            pa1 = pack_f16x2(p2, p3)
            pa2 = pack_f16x2(p4, p5)
            pa3 = pack_f16x2(p6, p7)
            for nt in range(NT_W):
                o[nt * 4], o[nt * 4 + 1], o[nt * 4 + 2], o[nt * 4 + 3] = mma16816(
                    pa0, pa1, pa2, pa3, vf[nt * 2], vf[nt * 2 + 1], o[nt * 4], o[nt * 4 + 1], o[nt * 4 + 2], o[nt * 4 + 3])
        l_a = _quad_sum(l_a)
        l_b = _quad_sum(l_b)
        pid = cuda.blockIdx.x
        for half in range(2):
            r = ra if half == 0 else rb
            if r < n_rows:
                base = (((i3 * n_head + ik2 * G + r % G) * n_q + r // G) * n_parts + pid) * (dv + 2)
                for nt in range(NT_W):
                    col = (w * NT_W + nt) * 8 + 2 * t4
                    part[base + col] = o[nt * 4 + 2 * half]
                    part[base + col + 1] = o[nt * 4 + 2 * half + 1]
                if w == 0 and t4 == 0:
                    part[base + dv] = m_a if half == 0 else m_b
                    part[base + dv + 1] = l_a if half == 0 else l_b

    _TC[key] = fa_tc
    return fa_tc
