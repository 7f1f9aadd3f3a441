// GATED_DELTA_NET chunked form, kernel 2 of 2 (state pass and output): one block per (16 STATE_NJ
// value columns, value head, seq), sequential over the chunks, 3xTF32 tensor cores (gdn_tc.cuh). With M
// the state slice (key index i = rows, value column j) at the start of chunk c:
//   D   = U - W_c M                            (U from Uw [hs][Tp][j], made by prep)
//   O   = diag(e^gc / sqrt(S)) Q_c M + P D     -> dst's attention rows of the chunk (P from prep:
//                                                 lower triangular in 16x16 blocks)
//   M  <- e^gl M + K_c^T (e^(gl - gc) D)       (gl = gc of the chunk's last row; Gw [hs][Tp][2] holds
//                                               e^gc_r and e^(gl - gc_r), made by prep in float64)
// Everything is computed transposed, M^T (j x i), D^T and O^T (j x r), so that one warp keeps its
// slice of M^T in accumulator registers for the whole pass: a 16x8 C fragment holds columns 2t, 2t+1
// of its tile where an A fragment wants t, t+4, and since a product sums over k, reading B's k rows
// in the same order (2t, 2t+1) makes C usable as A with no data movement. So
//   phase 1  X^T = M^T W_c^T and Y^T = M^T Q_c^T   A = M^T (registers, split once for both),
//                                                    B = W_c, Q_c rows (float2 from shared memory)
//   phase 2  M^T = e^gl M^T + (D^T diag f) K_c       A = D^T diag f, B = K_c rows (shared memory)
//   output   O^T = e Y^T + D^T P^T                   A = D^T, B = P rows (shared memory)
// Computing Q_c M here, beside W_c M with the same A fragments, spares the pass writing the state at
// every chunk's start (134 MB at T=4096) for a separate output kernel to read back, and D with it.
// Warps: STATE_KS (2, 4 or 8) warps a 16-column j-tile split the key index (warp ks holds M^T[:,
// 128 ks / STATE_KS ...]), so phase 1 gives each partial X^T and Y^T over its keys; through shared
// memory the owner of each 8-row r-tile (own_tile: the same output work for every warp) sums them
// in warp order: D^T = U^T - X^T, handed to all (unscaled for the output, scaled by f for phase 2),
// then Y^T, and the owner finishes its r-tiles of O^T. STATE_NJ j-tiles a block share W_c, Q_c, K_c
// and P_c; K_c and P_c are double-buffered (chunk c+1's land while chunk c computes), W_c and Q_c
// single (c+1's are issued once every warp is past phase 1, a second __syncthreads a chunk).
// The final M goes to dst's snapshot slot 0, transposed like the input state ([seq][h][j][i]).
// GDN_KDA: k is Kg = K e^(gl - gc) and q is Qg = Q e^gc, both of prep ([hs][Tp][S]; no row factor
// on D, 1 / sqrt(S) alone on Y) and the decay of M is a vector over its keys (Gw [hs][c][S]: e^gl
// per key).

#ifndef GDN_KDA
#define GDN_KDA 0
#endif
#ifndef STATE_NJ
#define STATE_NJ 2      // 16-column j-tiles a block
#endif
#ifndef STATE_KS
#define STATE_KS 2      // warps a j-tile (1, 2, 4 or 8): the key index split
#endif
#if STATE_KS < 2
#error "STATE_KS: 2, 4 or 8 warps a j-tile"
#endif
#define BV (16 * STATE_NJ)
#define STATE_THREADS (32 * STATE_NJ * STATE_KS)
#define L 64
#define SMAX 128
#define NI (SMAX / 8 / STATE_KS)   // 8-key n-tiles of M^T a warp
#define OWN (8 / STATE_KS)         // r-tiles of D^T and O^T a warp finishes
#define WSP 136   // W_c, Q_c rows: float2 B loads, conflict-free half-warps (stride = 8 mod 32)
#define KSP2 132  // K_c rows: rows 2t and 2t+1 of a k-step, 32 distinct banks (stride = 4 mod 32)
#define PSP 72    // P_c rows: float2 B loads like W_c
#define S_W 0
#define S_Q (S_W + L * WSP)
#define S_K (S_Q + L * WSP)
#define S_P (S_K + 2 * L * KSP2)
#define S_X (S_P + 2 * L * PSP)    // phase 1 partials: [STATE_NJ][STATE_KS][8 r-tiles][32 lanes][4]
#define S_D (S_X + STATE_NJ * STATE_KS * 8 * 128)   // D^T, then D^T diag(f): [STATE_NJ][2][8][32][4]
#define STATE_SMEM_FLOATS (S_D + STATE_NJ * 2 * 8 * 128)

#define PSTEP (STATE_THREADS / 16)   // P_c rows a pass of the block's threads (16 pieces of 16 bytes a row)
// P_c's 16x16 blocks on and below the diagonal (the only ones prep writes, and the only ones read),
// offsets fixed a thread as in stage_rows: rows tid / 16 + PSTEP i, columns 4 (tid % 16) .. + 3, in
// block column (tid % 16) / 4
GDN_INL void stage_p(float* dst, const float* src, int tid) {
    const int r0 = tid >> 4, c4 = (tid & 15) * 4;
#pragma unroll
    for (int i = 0; i < L / PSTEP; ++i) {
        const int r = r0 + PSTEP * i;
        if ((c4 >> 4) <= (r >> 4)) cp_async16(dst + r * PSP + c4, src + r * L + c4, 16);
    }
}

// the KS partials of r-tile n summed in warp order (Xs: [KS][8 r-tiles][32 lanes][4])
GDN_INL float4 sum_partials(const float* Xs, int n, int lane) {
    float4 s4 = *(const float4*)(Xs + (n * 32 + lane) * 4);
#pragma unroll
    for (int w = 1; w < STATE_KS; ++w) {
        const float4 o = *(const float4*)(Xs + ((w * 8 + n) * 32 + lane) * 4);
        s4.x += o.x;
        s4.y += o.y;
        s4.z += o.z;
        s4.w += o.w;
    }
    return s4;
}

// the qq-th r-tile warp ks owns: ks and 2 KS - 1 - ks of every 2 KS tiles, so that the output's
// triangular work (r-tile n takes s-tiles 0..n) is the same for every warp (KS = 8: tile ks)
GDN_INL int own_tile(int ks, int qq) { return (qq & 1) ? STATE_KS * (qq + 1) - 1 - ks : STATE_KS * qq + ks; }

GDN_INL void put_partials(float* Xs, float (*x)[GDN_CW], int ks, int lane) {
#pragma unroll
    for (int n = 0; n < 8; ++n)
        *(float4*)(Xs + ((ks * 8 + n) * 32 + lane) * 4) = make_float4(x[n][0], x[n][1], x[n][2], x[n][3]);
}

extern "C" __device__ int gdn_tc_state(const float* k, const float* q, const float* state, float* dst_state,
                                        float* dst_out, const float* Uw, const float* Ww, const float* Pw,
                                        const float* Gw, long long S_, long long Hv_, long long T_, long long Hk_,
                                        long long rep_, long long hd_) {
    need_smem(STATE_SMEM_FLOATS * 4);
    float* sm = GDN_SMEM;
    const int S = GDN_DIM_S(S_), Hv = (int)Hv_, T = (int)T_, Hk = (int)Hk_, rep = (int)rep_;
    const int h = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g4 = lane >> 2, t4 = lane & 3;
    const int jt = warp / STATE_KS, ks = warp % STATE_KS;
    const int jb = blockIdx.x * BV + 16 * jt;      // this warp's 16 columns
    const int n0 = ks * NI;                        // and its keys: 8 n0 .. 8 (n0 + NI)
    const int ja = jb + g4, jc = jb + g4 + 8;      // the two columns (C rows) a lane holds
    const int nc = (T + L - 1) / L, Tp = nc * L;
    const int sq = seq / rep, hk = (h / (int)hd_) % Hk, hs = seq * Hv + h;
    const float scale = 1.0f / sqrtf((float)S);
#if GDN_KDA
    const long long qk_row = S;
    const float* kb = k + (long long)hs * Tp * S;
    const float* qb = q + (long long)hs * Tp * S;
    const float* gb = Gw + (long long)hs * nc * S;
    (void)sq;
    (void)hk;
#else
    const long long qk_row = (long long)Hk * S;
    const float* kb = k + ((long long)sq * T * Hk + hk) * S;
    const float* qb = q + ((long long)sq * T * Hk + hk) * S;
    const float* gb = Gw + 2 * (long long)hs * Tp;
#endif
    const float* wb = Ww + (long long)hs * nc * L * S;
    const float* pb = Pw + (long long)hs * nc * L * L;
    const long long SS = (long long)S * S;
    const int ksteps = (S + 7) / 8;
    float* Ws = sm + S_W;
    float* Qs = sm + S_Q;
    float* Xs = sm + S_X + jt * STATE_KS * 8 * 128;
    float* Du = sm + S_D + jt * 2 * 8 * 128;       // D^T
    float* Ds = Du + 8 * 128;                      // D^T diag(f)

    {
        const int nr = T < L ? T : L;
        stage_rows(Ws, WSP, wb, S, L, SMAX, L, S, tid, STATE_THREADS);
        stage_rows(Qs, WSP, qb, qk_row, L, SMAX, nr, S, tid, STATE_THREADS);
        stage_rows(sm + S_K, KSP2, kb, qk_row, L, SMAX, nr, S, tid, STATE_THREADS);
        stage_p(sm + S_P, pb, tid);
        cp_async_commit();
    }
    // M^T in C fragments: m[n] = rows (ja, jc), keys 8 (n0 + n) + 2t, +1 (zero past S)
    float m[NI][4];
#pragma unroll
    for (int n = 0; n < NI; ++n) {
        const int i = 8 * (n0 + n) + 2 * t4;
        float2 a = make_float2(0.f, 0.f), b = make_float2(0.f, 0.f);
        if (i < S && ja < S) a = *(const float2*)(state + hs * SS + (long long)ja * S + i);
        if (i < S && jc < S) b = *(const float2*)(state + hs * SS + (long long)jc * S + i);
        m[n][0] = a.x;
        m[n][1] = a.y;
        m[n][2] = b.x;
        m[n][3] = b.y;
    }
    for (int c = 0; c < nc; ++c) {
        const int t0 = c * L, cur = c & 1;
        const int vr = T - t0 < L ? T - t0 : L;
        const int nr = T - t0 - L < L ? T - t0 - L : L;   // valid rows of chunk c + 1
        // U^T and the gates of the r-tiles this warp owns (n = own_tile(ks, q)): loaded now, used after
        // phase 1; (ja, r), (ja, r + 1), (jc, r), (jc, r + 1) with r = 8 n + 2t
        float u[OWN][4], f[OWN][2], eg[OWN][2];
        const float* ub = Uw + ((long long)hs * Tp + t0) * S;
#pragma unroll
        for (int qq = 0; qq < OWN; ++qq) {
            const int r = 8 * own_tile(ks, qq) + 2 * t4;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = e < 2 ? ja : jc;
                u[qq][e] = j < S ? ub[(long long)(r + (e & 1)) * S + j] : 0.f;
            }
#if GDN_KDA
            f[qq][0] = f[qq][1] = 1.f;
            eg[qq][0] = eg[qq][1] = scale;
#else
            const float4 gg = *(const float4*)(gb + 2 * (t0 + r));
            f[qq][0] = gg.y;
            f[qq][1] = gg.w;
            eg[qq][0] = gg.x * scale;
            eg[qq][1] = gg.z * scale;
#endif
        }
#if GDN_KDA
        float dk[NI][2];
#pragma unroll
        for (int n = 0; n < NI; ++n) {
            const int i = 8 * (n0 + n) + 2 * t4;
            const float2 d2 = i < S ? *(const float2*)(gb + (long long)c * S + i) : make_float2(0.f, 0.f);
            dk[n][0] = d2.x;
            dk[n][1] = d2.y;
        }
#else
        const float dec = gb[2 * (t0 + L - 1)];
#endif
        CP_ASYNC_WAIT(0);
        __syncthreads();   // chunk c's W, Q, K, P landed; everyone is past chunk c-1 (K, P buffers
                           // cur ^ 1, Xs, Du, Ds are free)
        if (c + 1 < nc) {
            stage_rows(sm + S_K + (cur ^ 1) * L * KSP2, KSP2, kb + (long long)(t0 + L) * qk_row, qk_row, L, SMAX, nr,
                       S, tid, STATE_THREADS);
            stage_p(sm + S_P + (cur ^ 1) * L * PSP, pb + (long long)(c + 1) * L * L, tid);
            cp_async_commit();
        }
        const float* Kc = sm + S_K + cur * L * KSP2;
        const float* Pc = sm + S_P + cur * L * PSP;
        // phase 1: X^T = M^T W_c^T and Y^T = M^T Q_c^T over this warp's keys
        float x[8][GDN_CW], y[8][GDN_CW];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            acc_zero(x[n]);
            acc_zero(y[n]);
        }
#pragma unroll
        for (int n = 0; n < NI; ++n) {
            if (n0 + n < ksteps) {
                FragA fa;
                ldA_c(fa, m[n]);
                const int off = g4 * WSP + 8 * (n0 + n) + 2 * t4;
#pragma unroll
                for (int rt = 0; rt < 8; ++rt) {
                    FragB fb, fq;
                    ldB_c(fb, Ws + off + 8 * rt * WSP);
                    ldB_c(fq, Qs + off + 8 * rt * WSP);
                    mma3(x[rt], fa, fb);
                    mma3(y[rt], fa, fq);
                }
            }
        }
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            acc_fold(x[n]);
            acc_fold(y[n]);
        }
        // D^T = U^T - (the X^T partials summed in warp order), each r-tile by its owner warp, which
        // hands D^T (for the output) and D^T diag(f) (phase 2's A) to the others
        put_partials(Xs, x, ks, lane);
        bar_named(1 + jt, 32 * STATE_KS);
#pragma unroll
        for (int qq = 0; qq < OWN; ++qq) {
            const int n = own_tile(ks, qq);
            const float4 s4 = sum_partials(Xs, n, lane);
            const float d0 = u[qq][0] - s4.x, d1 = u[qq][1] - s4.y, d2 = u[qq][2] - s4.z, d3 = u[qq][3] - s4.w;
            *(float4*)(Du + (n * 32 + lane) * 4) = make_float4(d0, d1, d2, d3);
            *(float4*)(Ds + (n * 32 + lane) * 4) =
                make_float4(d0 * f[qq][0], d1 * f[qq][1], d2 * f[qq][0], d3 * f[qq][1]);
        }
        __syncthreads();   // every warp is past phase 1 (W_c, Q_c are free) and past its X^T sums
        if (c + 1 < nc) {
            stage_rows(Ws, WSP, wb + (long long)(c + 1) * L * S, S, L, SMAX, L, S, tid, STATE_THREADS);
            stage_rows(Qs, WSP, qb + (long long)(t0 + L) * qk_row, qk_row, L, SMAX, nr, S, tid, STATE_THREADS);
            cp_async_commit();
        }
        // the Y^T partials through Xs again
        put_partials(Xs, y, ks, lane);
        bar_named(1 + jt, 32 * STATE_KS);
        // phase 2 and the output's D^T P^T in one loop over D^T's r-tiles rt (independent products:
        // the output's short triangular chains of mma run beside phase 2's, not after them; H200,
        // this kernel alone, bitwise the same results: GDA T=4096 397 -> 392 us, T=16384 1563 ->
        // 1519, KDA 392 -> 376, 1588 -> 1523)
        //   phase 2: M^T <- e^gl M^T + D^T diag(f) K_c over this warp's keys (ACC 3: the chunk's
        //            product in an accumulator pair of its own, added to the decayed M^T after the
        //            loop, so the tensor cores' truncating sums never run over the whole pass)
        //   output:  O^T = e Y^T + D^T P^T for the owned r-tiles; P is zero right of the diagonal,
        //            so r-tile n takes s-tiles 0..n
        float o[OWN][GDN_CW];
#pragma unroll
        for (int qq = 0; qq < OWN; ++qq) acc_zero(o[qq]);
#if GDN_ACC == 3
        float pm[NI][GDN_CW];
#pragma unroll
        for (int n = 0; n < NI; ++n) acc_zero(pm[n]);
#else
        float (*pm)[4] = m;
#pragma unroll
        for (int n = 0; n < NI; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
#if GDN_KDA
                m[n][e] *= dk[n][e & 1];
#else
                m[n][e] *= dec;
#endif
            }
#endif
#pragma unroll
        for (int rt = 0; rt < 8; ++rt) {
            {
                const float4 d4 = *(const float4*)(Ds + (rt * 32 + lane) * 4);
                const float dd[4] = {d4.x, d4.y, d4.z, d4.w};
                FragA fa;
                ldA_c(fa, dd);
                const float* kp = Kc + (8 * rt + 2 * t4) * KSP2 + 8 * n0 + g4;
#pragma unroll
                for (int n = 0; n < NI; ++n) {
                    if (n0 + n < ksteps) {
                        FragB fb;
                        split(kp[8 * n], fb.h[0], fb.l[0]);
                        split(kp[KSP2 + 8 * n], fb.h[1], fb.l[1]);
                        mma3(pm[n], fa, fb);
                    }
                }
            }
            if (rt <= own_tile(ks, OWN - 1)) {
                const float4 d4 = *(const float4*)(Du + (rt * 32 + lane) * 4);
                const float dd[4] = {d4.x, d4.y, d4.z, d4.w};
                FragA fa;
                ldA_c(fa, dd);
#pragma unroll
                for (int qq = 0; qq < OWN; ++qq) {
                    const int n = own_tile(ks, qq);
                    if (rt <= n) {
                        FragB fb;
                        ldB_c(fb, Pc + (8 * n + g4) * PSP + 8 * rt + 2 * t4);
                        mma3(o[qq], fa, fb);
                    }
                }
            }
        }
#pragma unroll
        for (int qq = 0; qq < OWN; ++qq) {
            const int n = own_tile(ks, qq), r = 8 * n + 2 * t4;
            acc_fold(o[qq]);
            const float4 y4 = sum_partials(Xs, n, lane);
            const float o0 = o[qq][0] + eg[qq][0] * y4.x, o1 = o[qq][1] + eg[qq][1] * y4.y;
            const float o2 = o[qq][2] + eg[qq][0] * y4.z, o3 = o[qq][3] + eg[qq][1] * y4.w;
            float* ob = dst_out + ((long long)(seq * T + t0 + r) * Hv + h) * S;
            const long long rs = (long long)Hv * S;   // dst's row stride
            if (r < vr) {
                if (ja < S) ob[ja] = o0;
                if (jc < S) ob[jc] = o2;
            }
            if (r + 1 < vr) {
                if (ja < S) ob[rs + ja] = o1;
                if (jc < S) ob[rs + jc] = o3;
            }
        }
#if GDN_ACC == 3
#pragma unroll
        for (int n = 0; n < NI; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
#if GDN_KDA
                m[n][e] = m[n][e] * dk[n][e & 1] + (pm[n][e] + pm[n][4 + e]);
#else
                m[n][e] = m[n][e] * dec + (pm[n][e] + pm[n][4 + e]);
#endif
            }
#endif
    }
    // final state (snapshot slot 0): M^T is the stored layout ([j][i])
#pragma unroll
    for (int n = 0; n < NI; ++n) {
        const int i = 8 * (n0 + n) + 2 * t4;
        if (i < S && ja < S) *(float2*)(dst_state + hs * SS + (long long)ja * S + i) = make_float2(m[n][0], m[n][1]);
        if (i < S && jc < S) *(float2*)(dst_state + hs * SS + (long long)jc * S + i) = make_float2(m[n][2], m[n][3]);
    }
    return 0;
}
