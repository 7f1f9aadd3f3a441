"""The chunked (WY / UT-transform) form of GATED_DELTA_NET for long GDA prompts, fla's algorithm in
three numba-cuda kernels (planned by gdn_fast.py; layout and meta convention as there):

  prep   (chunk, head, seq), parallel: gc = cumsum g, A = strictly lower beta_r e^(gc_r-gc_s)
         k_r.k_s, Tm = (I + A)^-1 (16x16 diagonal blocks, then block rows), U = Tm beta V,
         W = Tm beta e^gc K, P = masked e^(gc_r-gc_s) q_r.k_s / sqrt(S).
  state  (BV value columns, head, seq), sequential over chunks, M in registers: save M as H_c,
         D = U - W M (written over U), M <- e^gl M + (e^(gl-gc) K)^T D.
  out    (chunk, head, seq), parallel: O = e^gc Q H_c / sqrt(S) + P D.

Every exponent is a masked difference (r >= s) or a cumulative gate, so nothing overflows for
g <= 0; the tail chunk is padded with k = q = v = 0, beta = 0, g = 0. A chunk is 16, 32 or 64 tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from numba import cuda, float32

from minigraph.backends.cuda.common import SIM, SLOT_W
from minigraph.backends.cuda.gdn_device import MAX_S, WARP, dims, fma_outer, ld1, ld4, st4

IB = 32                          # reduction slice staged in shared memory
JS = 32                          # value columns per U/W slice of the prep kernel
BV = 16                          # value columns per block of the state pass
STATE_THREADS = 128              # (MAX_S/4) x (BV/4) update tiles of 4x4
ALIGN = None if SIM else 16      # shared arrays read with float4 loads
PREP_MAX_REGS = 80               # prep: 3 blocks an SM (H100: 430 us vs 457 us uncapped, T=4096)

# ----------------------------------------------------------------------------- chunked: prep

def make_prep(L: int, max_registers: int = 0) -> Any:
    NT = L * L // 16             # one 4x4 tile of the L x L Gram products per thread
    TL = L // 4
    LP = L + 4                   # padded shared row of L floats (rows stay 16-byte aligned)
    NB = L // 16
    XN = max(1, NB - 1) * 256
    JSP = JS + 4
    BUF = max(2 * IB * LP, 2 * L * JSP)
    ASZ = L * LP
    GP = L * IB // (4 * NT)      # float4 of one staged slice per thread and matrix (IB == JS)
    GP4 = 4 * GP

    @cuda.jit(**({} if SIM or not max_registers else {"max_registers": max_registers}))
    def prep(meta, dst, q, k, v, g, beta, state, K, hd, Uw, Ww, Pw, Gw, Hw):
        gs = cuda.shared.array(L, float32)
        bs = cuda.shared.array(L, float32)
        A = cuda.shared.array(ASZ, float32, alignment=ALIGN)
        X = cuda.shared.array(XN, float32)
        buf = cuda.shared.array(BUF, float32, alignment=ALIGN)
        ak = cuda.local.array(16, float32)
        aq = cuda.local.array(16, float32)
        x = cuda.local.array(16, float32)
        aU = cuda.local.array(8, float32)
        aW = cuda.local.array(8, float32)
        pk = cuda.local.array(GP4, float32)
        pq = cuda.local.array(GP4, float32)
        S, Hv, T, N, Hk, rep = dims(meta)
        c = cuda.blockIdx.x
        h = cuda.blockIdx.y
        seq = cuda.blockIdx.z
        sq = seq // rep
        hk = (h // hd) % Hk
        hs = seq * Hv + h
        nc = (T + L - 1) // L
        Tp = nc * L
        t0 = c * L
        tid = cuda.threadIdx.x
        oq, ok, ov = meta[SLOT_W], meta[2 * SLOT_W], meta[3 * SLOT_W]
        og, ob = meta[4 * SLOT_W], meta[5 * SLOT_W]
        scale = float32(1.0) / math.sqrt(float32(S))
        # 0. gates and betas; gc = inclusive cumsum of g within the chunk
        if tid < L:
            gv = float32(0.0)
            bv = float32(0.0)
            if t0 + tid < T:
                gv = g[og + (seq * T + t0 + tid) * Hv + h]
                bv = beta[ob + (seq * T + t0 + tid) * Hv + h]
            gs[tid] = gv
            bs[tid] = bv
        cuda.syncthreads()
        acc = float32(0.0)
        if tid < L:
            for s in range(tid + 1):
                acc += gs[s]
        cuda.syncthreads()
        if tid < L:
            gs[tid] = acc
            Gw[hs * Tp + t0 + tid] = acc
        # 1. Gram products K K^T and Q K^T, tile rows 4rt.., columns 4st..; k, q staged transposed
        rt = tid // TL
        st = tid % TL
        for m in range(16):
            ak[m] = float32(0.0)
            aq[m] = float32(0.0)
        # slice i0 - IB is computed while slice i0's loads are in flight (registers pk, pq)
        for i0 in range(0, S + IB, IB):
            if i0 > 0:
                for n in range(GP):
                    e = n * NT + tid
                    r = e // (IB // 4)
                    ii = (e % (IB // 4)) * 4
                    for m in range(4):
                        buf[(ii + m) * LP + r] = pk[4 * n + m]
                        buf[(IB + ii + m) * LP + r] = pq[4 * n + m]
                cuda.syncthreads()
            if i0 < S:
                for n in range(GP):
                    e = n * NT + tid
                    r = e // (IB // 4)
                    ii = (e % (IB // 4)) * 4
                    x0 = x1 = x2 = x3 = y0 = y1 = y2 = y3 = float32(0.0)
                    if t0 + r < T and i0 + ii < S:
                        base = ((sq * T + t0 + r) * Hk + hk) * S + i0 + ii
                        x0, x1, x2, x3 = ld4(k, ok + base)
                        y0, y1, y2, y3 = ld4(q, oq + base)
                    pk[4 * n] = x0
                    pk[4 * n + 1] = x1
                    pk[4 * n + 2] = x2
                    pk[4 * n + 3] = x3
                    pq[4 * n] = y0
                    pq[4 * n + 1] = y1
                    pq[4 * n + 2] = y2
                    pq[4 * n + 3] = y3
            if i0 > 0:
                pr = 4 * rt
                ps = 4 * st
                while pr < IB * LP:
                    k0, k1, k2, k3 = ld4(buf, pr)
                    q0, q1, q2, q3 = ld4(buf, pr + IB * LP)
                    s0, s1, s2, s3 = ld4(buf, ps)
                    fma_outer(ak, 0, 4, k0, k1, k2, k3, s0, s1, s2, s3)
                    fma_outer(aq, 0, 4, q0, q1, q2, q3, s0, s1, s2, s3)
                    pr += LP
                    ps += LP
                cuda.syncthreads()
        # A (strictly lower) into shared; P (masked, scaled) to global, stored transposed [s][r]
        pbase = (hs * nc + c) * L * L
        for b in range(4):
            s = 4 * st + b
            gcs = gs[s]
            p0 = p1 = p2 = p3 = float32(0.0)
            for a in range(4):
                r = 4 * rt + a
                d = math.exp(gs[r] - gcs) if s <= r else float32(0.0)
                A[r * LP + s] = bs[r] * d * ak[4 * a + b] if s < r else float32(0.0)
                pv = d * aq[4 * a + b] * scale
                if a == 0:
                    p0 = pv
                elif a == 1:
                    p1 = pv
                elif a == 2:
                    p2 = pv
                else:
                    p3 = pv
            st4(Pw, pbase + s * L + 4 * rt, p0, p1, p2, p3)
        cuda.syncthreads()
        # 2a. invert the 16x16 diagonal blocks of I + A: thread = one column of one block
        bb = (tid // 16) * 16
        cc = tid % 16
        if tid < L:
            for rr in range(16):
                acc = float32(1.0) if rr == cc else float32(0.0)
                for s in range(16):
                    if s < rr:
                        acc -= ld1(A, (bb + rr) * LP + bb + s) * x[s]
                x[rr] = acc
        cuda.syncthreads()
        if tid < L:
            for rr in range(16):
                A[(bb + rr) * LP + bb + cc] = x[rr]
        cuda.syncthreads()
        # 2b. block rows: T_ij = -T_ii sum_{m=j}^{i-1} A_im T_mj (all of row i's X first)
        for ib in range(1, NB):
            for e in range(tid, ib * 256, NT):
                jb = e // 256
                rr = (e % 256) // 16
                cl = e % 16
                acc = float32(0.0)
                for m in range(jb, ib):
                    for s in range(16):
                        acc += A[(ib * 16 + rr) * LP + m * 16 + s] * A[(m * 16 + s) * LP + jb * 16 + cl]
                X[e] = acc
            cuda.syncthreads()
            for e in range(tid, ib * 256, NT):
                jb = e // 256
                rr = (e % 256) // 16
                cl = e % 16
                acc = float32(0.0)
                for s in range(16):
                    acc += A[(ib * 16 + rr) * LP + ib * 16 + s] * X[jb * 256 + s * 16 + cl]
                A[(ib * 16 + rr) * LP + jb * 16 + cl] = -acc
            cuda.syncthreads()
        # 3. U = Tm (beta V), W = Tm (beta e^gc K), JS value columns at a time; tiles 2 rows x 4
        wbase = (hs * nc + c) * S * L
        for j1 in range(0, S + JS, JS):              # as above: slice j1 loads, slice j1 - JS computes
            j0 = j1 - JS
            if j1 > 0:
                for n in range(GP):
                    e = n * NT + tid
                    sr = e // (JS // 4)
                    jj = (e % (JS // 4)) * 4
                    fv = bs[sr]
                    fk = fv * math.exp(gs[sr])
                    st4(buf, sr * JSP + jj, pk[4 * n] * fv, pk[4 * n + 1] * fv, pk[4 * n + 2] * fv, pk[4 * n + 3] * fv)
                    st4(buf, (L + sr) * JSP + jj, pq[4 * n] * fk, pq[4 * n + 1] * fk, pq[4 * n + 2] * fk,
                        pq[4 * n + 3] * fk)
                cuda.syncthreads()
            if j1 < S:
                for n in range(GP):
                    e = n * NT + tid
                    sr = e // (JS // 4)
                    jj = (e % (JS // 4)) * 4
                    v0 = v1 = v2 = v3 = k0 = k1 = k2 = k3 = float32(0.0)
                    if t0 + sr < T and j1 + jj < S:
                        v0, v1, v2, v3 = ld4(v, ov + ((seq * T + t0 + sr) * Hv + h) * S + j1 + jj)
                        k0, k1, k2, k3 = ld4(k, ok + ((sq * T + t0 + sr) * Hk + hk) * S + j1 + jj)
                    pk[4 * n] = v0
                    pk[4 * n + 1] = v1
                    pk[4 * n + 2] = v2
                    pk[4 * n + 3] = v3
                    pq[4 * n] = k0
                    pq[4 * n + 1] = k1
                    pq[4 * n + 2] = k2
                    pq[4 * n + 3] = k3
            if j1 == 0:
                continue
            for tile in range(tid, (L // 2) * (JS // 4), NT):
                r0 = 2 * (tile // (JS // 4))
                jt = 4 * (tile % (JS // 4))
                for m in range(8):
                    aU[m] = float32(0.0)
                    aW[m] = float32(0.0)
                pa = r0 * LP                     # Tm is lower triangular: s <= r0 + 1
                pv = jt
                while pa <= r0 * LP + r0 + 1:
                    ta = ld1(A, pa)
                    tb = ld1(A, pa + LP)
                    v0, v1, v2, v3 = ld4(buf, pv)
                    k0, k1, k2, k3 = ld4(buf, pv + L * JSP)
                    pa += 1
                    pv += JSP
                    aU[0] += ta * v0
                    aU[1] += ta * v1
                    aU[2] += ta * v2
                    aU[3] += ta * v3
                    aU[4] += tb * v0
                    aU[5] += tb * v1
                    aU[6] += tb * v2
                    aU[7] += tb * v3
                    aW[0] += ta * k0
                    aW[1] += ta * k1
                    aW[2] += ta * k2
                    aW[3] += ta * k3
                    aW[4] += tb * k0
                    aW[5] += tb * k1
                    aW[6] += tb * k2
                    aW[7] += tb * k3
                j = j0 + jt
                if j < S:
                    ub = (hs * Tp + t0 + r0) * S + j
                    st4(Uw, ub, aU[0], aU[1], aU[2], aU[3])
                    st4(Uw, ub + S, aU[4], aU[5], aU[6], aU[7])
                    for b in range(4):           # W stored transposed per chunk: [i][r]
                        Ww[wbase + (j + b) * L + r0] = aW[b]
                        Ww[wbase + (j + b) * L + r0 + 1] = aW[4 + b]
            cuda.syncthreads()

    return prep, NT


# ----------------------------------------------------------------------------- chunked: state

def make_state(L: int) -> Any:
    NT = STATE_THREADS
    LP = L + 4
    SP = MAX_S + 4
    STG = max(MAX_S * LP, L * SP)          # W_c transposed [i][r], or K_c [s][i]
    QW = L // 4                            # float4 per row of W^T; NT // QW rows a pass
    NPF = MAX_S * L // (4 * NT)            # float4 of a staged chunk per thread (both layouts)
    DT = (L // 4) * (BV // 4)              # D tiles of 4 rows x 4 columns, each in 2 halves of i
    MSZ = MAX_S * BV
    DSZ = L * BV
    PF4 = 4 * NPF

    @cuda.jit
    def state_pass(meta, dst, q, k, v, g, beta, state, K, hd, Uw, Ww, Pw, Gw, Hw):
        stg = cuda.shared.array(STG, float32, alignment=ALIGN)
        Ms = cuda.shared.array(MSZ, float32, alignment=ALIGN)
        Ds = cuda.shared.array(DSZ, float32, alignment=ALIGN)
        pf = cuda.local.array(PF4, float32)
        mr = cuda.local.array(16, float32)
        aD = cuda.local.array(16, float32)
        uu = cuda.local.array(16, float32)
        S, Hv, T, N, Hk, rep = dims(meta)
        j0 = cuda.blockIdx.x * BV
        h = cuda.blockIdx.y
        seq = cuda.blockIdx.z
        sq = seq // rep
        hk = (h // hd) % Hk
        hs = seq * Hv + h
        nc = (T + L - 1) // L
        Tp = nc * L
        tid = cuda.threadIdx.x
        od, ok, osb = meta[0], meta[2 * SLOT_W], meta[6 * SLOT_W]
        it = tid // (BV // 4)                  # update tile: M rows 4it.., columns jc..jc+3
        jl = 4 * (tid % (BV // 4))
        jc = j0 + jl
        mok = 4 * it < S and jc < S
        dh = tid // DT                         # D tile: half dh of i, rows 4rt.., columns j0 + jp..
        rt = (tid % DT) // (BV // 4)
        jp = 4 * (tid % (BV // 4))
        dok = dh < 2
        d0ok = dh == 0                          # the half that finishes the tile
        djok = j0 + jp < S
        wrow = tid // QW                       # W^T staging: rows wrow + n*(NT/QW), float4 wq
        wq = 4 * (tid % QW)
        kcol = 4 * (tid % WARP)                # K staging: rows kr + 4n... of the chunk, float4 kcol
        krow = tid // WARP
        kok = kcol < S
        kstride = Hk * S                       # between tokens of one q/k head
        sbase = osb + (seq * Hv + h) * S * S
        for b in range(4):
            m0 = m1 = m2 = m3 = float32(0.0)
            if mok:
                m0, m1, m2, m3 = ld4(state, sbase + (jc + b) * S + 4 * it)
            mr[b] = m0
            mr[4 + b] = m1
            mr[8 + b] = m2
            mr[12 + b] = m3
        for a in range(4):
            st4(Ms, (4 * it + a) * BV + jl, mr[4 * a], mr[4 * a + 1], mr[4 * a + 2], mr[4 * a + 3])
        wb = hs * nc * S * L
        for n in range(NPF):
            i = wrow + n * (NT // QW)
            if i < S:
                x0, x1, x2, x3 = ld4(Ww, wb + i * L + wq)
                st4(stg, i * LP + wq, x0, x1, x2, x3)
        cuda.syncthreads()
        for c in range(nc):
            t0 = c * L
            # 1. prefetch K_c, U and the gates; save M as H_c
            kb = ok + ((sq * T + t0) * Hk + hk) * S + kcol
            for n in range(NPF):
                s = krow + n * (NT // WARP)
                x0 = x1 = x2 = x3 = float32(0.0)
                if kok and t0 + s < T:
                    x0, x1, x2, x3 = ld4(k, kb + s * kstride)
                pf[4 * n] = x0
                pf[4 * n + 1] = x1
                pf[4 * n + 2] = x2
                pf[4 * n + 3] = x3
            ub = (hs * Tp + t0 + 4 * rt) * S + j0 + jp
            g0 = g1 = g2 = g3 = float32(0.0)
            if d0ok:
                g0, g1, g2, g3 = ld4(Gw, hs * Tp + t0 + 4 * rt)
                for a in range(4):
                    u0 = u1 = u2 = u3 = float32(0.0)
                    if djok:
                        u0, u1, u2, u3 = ld4(Uw, ub + a * S)
                    uu[4 * a] = u0
                    uu[4 * a + 1] = u1
                    uu[4 * a + 2] = u2
                    uu[4 * a + 3] = u3
            gl = ld1(Gw, hs * Tp + t0 + L - 1)
            if mok:
                hb = (hs * nc + c) * S * S + jc
                for a in range(4):
                    st4(Hw, hb + (4 * it + a) * S, mr[4 * a], mr[4 * a + 1], mr[4 * a + 2], mr[4 * a + 3])
            # 2. D = U - W M, written over U; D' = e^(gl - gc) D into shared
            if dok:
                for m in range(16):
                    aD[m] = float32(0.0)
                ih = (S // 8) * 4 * dh                 # halves of i split at a multiple of 4
                pw = ih * LP + 4 * rt
                pm = ih * BV + jp
                pe = (S * dh + ((S // 8) * 4) * (1 - dh)) * LP
                while pw < pe:
                    w0, w1, w2, w3 = ld4(stg, pw)
                    m0, m1, m2, m3 = ld4(Ms, pm)
                    fma_outer(aD, 0, 4, w0, w1, w2, w3, m0, m1, m2, m3)
                    pw += LP
                    pm += BV
                if not d0ok:                             # the second half's partial tile
                    for a in range(4):
                        st4(Ds, (4 * rt + a) * BV + jp, aD[4 * a], aD[4 * a + 1], aD[4 * a + 2], aD[4 * a + 3])
            cuda.syncthreads()
            if d0ok:
                for a in range(4):
                    p0, p1, p2, p3 = ld4(Ds, (4 * rt + a) * BV + jp)
                    d0 = uu[4 * a] - aD[4 * a] - p0
                    d1 = uu[4 * a + 1] - aD[4 * a + 1] - p1
                    d2 = uu[4 * a + 2] - aD[4 * a + 2] - p2
                    d3 = uu[4 * a + 3] - aD[4 * a + 3] - p3
                    if djok:
                        st4(Uw, ub + a * S, d0, d1, d2, d3)
                    ga = g0 if a == 0 else (g1 if a == 1 else (g2 if a == 2 else g3))
                    dec = math.exp(gl - ga)
                    st4(Ds, (4 * rt + a) * BV + jp, d0 * dec, d1 * dec, d2 * dec, d3 * dec)
            cuda.syncthreads()
            # 3. K_c into the staging buffer; prefetch W_{c+1}
            for n in range(NPF):
                st4(stg, (krow + n * (NT // WARP)) * SP + kcol, pf[4 * n], pf[4 * n + 1], pf[4 * n + 2],
                    pf[4 * n + 3])
            if c + 1 < nc:
                wb = (hs * nc + c + 1) * S * L
                for n in range(NPF):
                    i = wrow + n * (NT // QW)
                    x0 = x1 = x2 = x3 = float32(0.0)
                    if i < S:
                        x0, x1, x2, x3 = ld4(Ww, wb + i * L + wq)
                    pf[4 * n] = x0
                    pf[4 * n + 1] = x1
                    pf[4 * n + 2] = x2
                    pf[4 * n + 3] = x3
            cuda.syncthreads()
            # 4. M <- e^gl M + K_c^T D'
            egl = math.exp(gl)
            for m in range(16):
                mr[m] *= egl
            if 4 * it < S:
                pk = 4 * it
                pd = jl
                while pk < L * SP:
                    k0, k1, k2, k3 = ld4(stg, pk)
                    d0, d1, d2, d3 = ld4(Ds, pd)
                    fma_outer(mr, 0, 4, k0, k1, k2, k3, d0, d1, d2, d3)
                    pk += SP
                    pd += BV
            for a in range(4):
                st4(Ms, (4 * it + a) * BV + jl, mr[4 * a], mr[4 * a + 1], mr[4 * a + 2], mr[4 * a + 3])
            cuda.syncthreads()
            # 5. W_{c+1} into the staging buffer
            if c + 1 < nc:
                for n in range(NPF):
                    i = wrow + n * (NT // QW)
                    if i < S:
                        st4(stg, i * LP + wq, pf[4 * n], pf[4 * n + 1], pf[4 * n + 2], pf[4 * n + 3])
            cuda.syncthreads()
        if mok:                                 # final state: snapshot slot 0 (transposed rows j)
            base = od + S * Hv * T * N + sbase - osb + 4 * it
            for b in range(4):
                st4(dst, base + (jc + b) * S, mr[b], mr[4 + b], mr[8 + b], mr[12 + b])

    return state_pass, NT


# ----------------------------------------------------------------------------- chunked: output

def make_out(L: int) -> Any:
    NT = 4 * L                   # (L/4) row tiles x 16 column tiles of 4 rows x 8 columns
    LP = L + 4
    SP = MAX_S + 4
    HALF = MAX_S // 2
    Q4 = MAX_S // 4
    RAS = IB * LP
    CBS = IB * SP

    @cuda.jit(device=True)
    def _mma_slice(acc, ra, cb, rt, jt):
        """acc (4 rows x 8 columns) += ra[:, rt..rt+3]^T cb[:, jt..jt+3 | HALF+jt..] over IB rows."""
        pa = rt
        pb = jt
        while pa < RAS:
            a0, a1, a2, a3 = ld4(ra, pa)
            b0, b1, b2, b3 = ld4(cb, pb)
            c0, c1, c2, c3 = ld4(cb, pb + HALF)
            fma_outer(acc, 0, 8, a0, a1, a2, a3, b0, b1, b2, b3)
            fma_outer(acc, 4, 8, a0, a1, a2, a3, c0, c1, c2, c3)
            pa += LP
            pb += SP

    @cuda.jit(**({} if SIM else {"max_registers": 128}))   # 2 blocks an SM, no spills
    def out(meta, dst, q, k, v, g, beta, state, K, hd, Uw, Ww, Pw, Gw, Hw):
        ra = cuda.shared.array(RAS, float32, alignment=ALIGN)   # Q^T or P^T slice [x][r]
        cb = cuda.shared.array(CBS, float32, alignment=ALIGN)   # H_c or D slice [x][j]
        acc = cuda.local.array(32, float32)
        S, Hv, T, N, Hk, rep = dims(meta)
        c = cuda.blockIdx.x
        h = cuda.blockIdx.y
        seq = cuda.blockIdx.z
        sq = seq // rep
        hk = (h // hd) % Hk
        hs = seq * Hv + h
        nc = (T + L - 1) // L
        Tp = nc * L
        t0 = c * L
        tid = cuda.threadIdx.x
        od, oq = meta[0], meta[SLOT_W]
        scale = float32(1.0) / math.sqrt(float32(S))
        rt = 4 * (tid // 16)
        jt = 4 * (tid % 16)
        for m in range(32):
            acc[m] = float32(0.0)
        if S < MAX_S:                    # columns no slice fills: zero once, not garbage
            for e in range(tid, CBS, NT):
                cb[e] = float32(0.0)
            cuda.syncthreads()
        # O1 = Q H_c
        hb = (hs * nc + c) * S * S
        for i0 in range(0, S, IB):
            for e in range(tid, L * IB // 4, NT):
                r = e // (IB // 4)
                ii = (e % (IB // 4)) * 4
                x0 = x1 = x2 = x3 = float32(0.0)
                if t0 + r < T and i0 + ii < S:
                    x0, x1, x2, x3 = ld4(q, oq + ((sq * T + t0 + r) * Hk + hk) * S + i0 + ii)
                ra[ii * LP + r] = x0
                ra[(ii + 1) * LP + r] = x1
                ra[(ii + 2) * LP + r] = x2
                ra[(ii + 3) * LP + r] = x3
            for e in range(tid, IB * Q4, NT):
                ii = e // Q4
                jj = (e % Q4) * 4
                if jj < S:
                    x0 = x1 = x2 = x3 = float32(0.0)
                    if i0 + ii < S:
                        x0, x1, x2, x3 = ld4(Hw, hb + (i0 + ii) * S + jj)
                    st4(cb, ii * SP + jj, x0, x1, x2, x3)
            cuda.syncthreads()
            _mma_slice(acc, ra, cb, rt, jt)
            cuda.syncthreads()
        for a in range(4):
            f = scale * math.exp(Gw[hs * Tp + t0 + rt + a])
            for b in range(8):
                acc[8 * a + b] *= f
        # O += P D (P stored transposed [s][r])
        pb = (hs * nc + c) * L * L
        for s0 in range(0, L, IB):
            for e in range(tid, IB * L // 4, NT):
                ss = e // (L // 4)
                rr = (e % (L // 4)) * 4
                x0 = x1 = x2 = x3 = float32(0.0)
                if s0 + ss < L:
                    x0, x1, x2, x3 = ld4(Pw, pb + (s0 + ss) * L + rr)
                st4(ra, ss * LP + rr, x0, x1, x2, x3)
            for e in range(tid, IB * Q4, NT):
                ss = e // Q4
                jj = (e % Q4) * 4
                if jj < S:
                    x0 = x1 = x2 = x3 = float32(0.0)
                    if s0 + ss < L:
                        x0, x1, x2, x3 = ld4(Uw, (hs * Tp + t0 + s0 + ss) * S + jj)
                    st4(cb, ss * SP + jj, x0, x1, x2, x3)
            cuda.syncthreads()
            if rt + 3 >= s0:                     # P is lower triangular: rows < s0 see zeros
                _mma_slice(acc, ra, cb, rt, jt)
            cuda.syncthreads()
        for a in range(4):
            t = t0 + rt + a
            if t < T:
                ob = od + ((seq * T + t) * Hv + h) * S
                if jt < S:
                    st4(dst, ob + jt, acc[8 * a], acc[8 * a + 1], acc[8 * a + 2], acc[8 * a + 3])
                if HALF + jt < S:
                    st4(dst, ob + HALF + jt, acc[8 * a + 4], acc[8 * a + 5], acc[8 * a + 6], acc[8 * a + 7])

    return out, NT


@dataclass(frozen=True)
class ChunkKernels:
    """The three kernels of the chunked form for one chunk size, with their block sizes."""

    L: int
    prep: Any
    prep_threads: int
    state: Any
    state_threads: int
    out: Any
    out_threads: int


_CHUNKED: dict = {}


def chunk_kernels(L: int) -> ChunkKernels:
    """The kernels for chunks of L tokens (compiled once per L)."""
    if L not in (16, 32, 64):
        raise ValueError(f"GATED_DELTA_NET (cuda): chunk size {L} not in 16, 32, 64")
    if L not in _CHUNKED:
        _CHUNKED[L] = ChunkKernels(L, *make_prep(L, PREP_MAX_REGS), *make_state(L), *make_out(L))
    return _CHUNKED[L]
