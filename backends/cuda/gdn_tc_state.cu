// GATED_DELTA_NET chunked form, kernel 2 of 3 (state pass): one block per (16 STATE_NJ value columns,
// value head, seq), sequential over the chunks, 3xTF32 tensor cores (gdn_tc.cuh). With M the state slice
// (key index i = rows, value column j) at the start of chunk c:
//   H_c = M                                    -> Hw [hs][c][j][i]   (transposed: the output pass
//                                                                     reads it as an n-major B)
//   D   = U - W_c M                            -> over U in Uw [hs][Tp][j]
//   M  <- e^gl M + K_c^T (e^(gl - gc) D)       (gl = gc of the chunk's last row; Gw [hs][Tp][2] holds
//                                               e^gc_r and e^(gl - gc_r), made by prep in float64)
// Everything is computed transposed, M^T (j x i) and D^T (j x r), so that one warp keeps its slice
// of M^T in accumulator registers for the whole pass: a 16x8 C fragment holds columns 2t, 2t+1 of
// its tile where an A fragment wants t, t+4, and since a product sums over k, reading B's k rows in
// the same order (2t, 2t+1) makes C usable as A with no data movement. So
//   phase 1  D^T = U^T - M^T W_c^T     A = M^T (registers), B = W_c rows (float2 from shared memory)
//   phase 2  M^T = e^gl M^T + (D^T diag f) K_c   A = D^T (registers), B = K_c rows (shared memory)
// Warps: STATE_KS warps a 16-column j-tile split the key index (warp ks holds M^T[:, 128 ks /
// STATE_KS ...]), so phase 1 gives each a partial D^T over its keys; through shared memory the
// owner of each 8-row r-tile (warp tile % KS) sums the partials in warp order, subtracts them from
// U^T, stores D and hands D^T diag(f) back to all (two barriers of the KS warps, bar.sync id jt+1);
// phase 2 then updates each warp's own keys. STATE_NJ j-tiles a block share W_c and K_c, streamed
// by cp.async into the second of two buffers while chunk c computes (the one __syncthreads a chunk).
// The final M goes to dst's snapshot slot 0, transposed like the input state ([seq][h][j][i]).
// GDN_KDA: k is Kg = K e^(gl - gc) of prep ([hs][Tp][S], no row factor on D) and the decay of M is a
// vector over its keys (Gw [hs][c][S]: e^gl per key).

#ifndef GDN_KDA
#define GDN_KDA 0
#endif
#ifndef STATE_NJ
#define STATE_NJ 2      // 16-column j-tiles a block
#endif
#ifndef STATE_KS
#define STATE_KS 2      // warps a j-tile (1, 2, 4 or 8): the key index split
#endif
#define BV (16 * STATE_NJ)
#define STATE_THREADS (32 * STATE_NJ * STATE_KS)
#define L 64
#define SMAX 128
#define NI (SMAX / 8 / STATE_KS)   // 8-key n-tiles of M^T a warp
#define WSP 136   // W_c rows: float2 B loads, conflict-free half-warps (stride = 8 mod 32)
#define KSP2 132  // K_c rows: rows 2t and 2t+1 of a k-step, 32 distinct banks (stride = 4 mod 32)
#define S_W 0
#define S_K (S_W + 2 * L * WSP)
#define OWN (8 / STATE_KS)         // r-tiles of D^T a warp finishes
#define S_X (S_K + 2 * L * KSP2)   // phase 1 partials: [STATE_NJ][STATE_KS][8 r-tiles][32 lanes][4]
#define S_D (S_X + STATE_NJ * STATE_KS * 8 * 128)   // D^T diag(f): [STATE_NJ][8 r-tiles][32 lanes][4]
#define STATE_SMEM_FLOATS (STATE_KS > 1 ? S_D + STATE_NJ * 8 * 128 : S_X)

GDN_INL void ldA_c(FragA& f, const float* c) {   // a C fragment as an A fragment (k order 2t, 2t+1)
    split(c[0], f.h[0], f.l[0]);
    split(c[2], f.h[1], f.l[1]);
    split(c[1], f.h[2], f.l[2]);
    split(c[3], f.h[3], f.l[3]);
}

extern "C" __device__ int gdn_tc_state(const float* k, const float* state, float* dst_state, float* Uw,
                                        const float* Ww, const float* Gw, float* Hw, long long S_,
                                        long long Hv_, long long T_, long long Hk_, long long rep_) {
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
    const int sq = seq / rep, hk = h % Hk, hs = seq * Hv + h;
    (void)sq;
    (void)hk;
#if GDN_KDA
    const long long qk_row = S;
    const float* kb = k + (long long)hs * Tp * S;
    const float* gb = Gw + (long long)hs * nc * S;
#else
    const long long qk_row = (long long)Hk * S;
    const float* kb = k + ((long long)sq * T * Hk + hk) * S;
    const float* gb = Gw + 2 * (long long)hs * Tp;
#endif
    const float* wb = Ww + (long long)hs * nc * L * S;
    const long long SS = (long long)S * S;
    const int ksteps = (S + 7) / 8;
#if STATE_KS > 1
    float* Xs = sm + S_X + jt * STATE_KS * 8 * 128;
    float* Ds = sm + S_D + jt * 8 * 128;
#endif

    stage_rows(sm + S_W, WSP, wb, S, L, SMAX, L, S, tid, STATE_THREADS);
    stage_rows(sm + S_K, KSP2, kb, qk_row, L, SMAX, T < L ? T : L, S, tid, STATE_THREADS);
    cp_async_commit();
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
        // U^T and the row factors of the r-tiles this warp owns (n = ks + KS q): loaded now, used
        // after phase 1; (ja, r), (ja, r + 1), (jc, r), (jc, r + 1) with r = 8 n + 2t
        float u[OWN][4], f[OWN][2];
        float* ub = Uw + ((long long)hs * Tp + t0) * S;
#pragma unroll
        for (int q = 0; q < OWN; ++q) {
            const int r = 8 * (ks + STATE_KS * q) + 2 * t4;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int j = e < 2 ? ja : jc;
                u[q][e] = j < S ? ub[(long long)(r + (e & 1)) * S + j] : 0.f;
            }
#if GDN_KDA
            f[q][0] = f[q][1] = 1.f;
#else
            const float4 gg = *(const float4*)(gb + 2 * (t0 + r));
            f[q][0] = gg.y;
            f[q][1] = gg.w;
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
        // H_c^T = M^T
        float* hb = Hw + ((long long)hs * nc + c) * SS;
#pragma unroll
        for (int n = 0; n < NI; ++n) {
            const int i = 8 * (n0 + n) + 2 * t4;
            if (i < S && ja < S) *(float2*)(hb + (long long)ja * S + i) = make_float2(m[n][0], m[n][1]);
            if (i < S && jc < S) *(float2*)(hb + (long long)jc * S + i) = make_float2(m[n][2], m[n][3]);
        }
        CP_ASYNC_WAIT(0);
        __syncthreads();   // W_c, K_c landed; everyone is past chunk c-1 (its buffers, Xs, Ds are free)
        if (c + 1 < nc) {
            const int nr = T - t0 - L < L ? T - t0 - L : L;
            stage_rows(sm + S_W + (cur ^ 1) * L * WSP, WSP, wb + (long long)(c + 1) * L * S, S, L, SMAX, L, S, tid,
                       STATE_THREADS);
            stage_rows(sm + S_K + (cur ^ 1) * L * KSP2, KSP2, kb + (long long)(t0 + L) * qk_row, qk_row, L, SMAX, nr,
                       S, tid, STATE_THREADS);
            cp_async_commit();
        }
        const float* Wc = sm + S_W + cur * L * WSP;
        const float* Kc = sm + S_K + cur * L * KSP2;
        // phase 1: x = M^T W_c^T over this warp's keys
        float x[8][GDN_CW];
#pragma unroll
        for (int n = 0; n < 8; ++n) acc_zero(x[n]);
#pragma unroll
        for (int n = 0; n < NI; ++n) {
            if (n0 + n < ksteps) {
                FragA fa;
                ldA_c(fa, m[n]);
                const float* wp = Wc + g4 * WSP + 8 * (n0 + n) + 2 * t4;
#pragma unroll
                for (int rt = 0; rt < 8; ++rt) {
                    const float2 w2 = *(const float2*)(wp + 8 * rt * WSP);
                    FragB fb;
                    split(w2.x, fb.h[0], fb.l[0]);
                    split(w2.y, fb.h[1], fb.l[1]);
                    mma3(x[rt], fa, fb);
                }
            }
        }
#pragma unroll
        for (int n = 0; n < 8; ++n) acc_fold(x[n]);
        // D^T = U^T - (the KS partials summed in warp order), each r-tile by its owner warp, which
        // stores D over U and hands D^T diag(f) (phase 2's A) to the others
#if STATE_KS > 1
#pragma unroll
        for (int n = 0; n < 8; ++n)
            *(float4*)(Xs + ((ks * 8 + n) * 32 + lane) * 4) = make_float4(x[n][0], x[n][1], x[n][2], x[n][3]);
        bar_named(1 + jt, 32 * STATE_KS);
#endif
#pragma unroll
        for (int q = 0; q < OWN; ++q) {
            const int n = ks + STATE_KS * q, r = 8 * n + 2 * t4;
#if STATE_KS > 1
            float4 s4 = *(const float4*)(Xs + (n * 32 + lane) * 4);
#pragma unroll
            for (int w = 1; w < STATE_KS; ++w) {
                const float4 o = *(const float4*)(Xs + ((w * 8 + n) * 32 + lane) * 4);
                s4.x += o.x;
                s4.y += o.y;
                s4.z += o.z;
                s4.w += o.w;
            }
            const float d0 = u[q][0] - s4.x, d1 = u[q][1] - s4.y, d2 = u[q][2] - s4.z, d3 = u[q][3] - s4.w;
#else
            const float d0 = u[q][0] - x[n][0], d1 = u[q][1] - x[n][1], d2 = u[q][2] - x[n][2], d3 = u[q][3] - x[n][3];
#endif
            if (ja < S) {
                ub[(long long)r * S + ja] = d0;
                ub[(long long)(r + 1) * S + ja] = d1;
            }
            if (jc < S) {
                ub[(long long)r * S + jc] = d2;
                ub[(long long)(r + 1) * S + jc] = d3;
            }
#if STATE_KS > 1
            *(float4*)(Ds + (n * 32 + lane) * 4) = make_float4(d0 * f[q][0], d1 * f[q][1], d2 * f[q][0], d3 * f[q][1]);
#else
            x[n][0] = d0 * f[q][0];
            x[n][1] = d1 * f[q][1];
            x[n][2] = d2 * f[q][0];
            x[n][3] = d3 * f[q][1];
#endif
        }
#if STATE_KS > 1
        bar_named(1 + jt, 32 * STATE_KS);
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            const float4 d4 = *(const float4*)(Ds + (n * 32 + lane) * 4);
            x[n][0] = d4.x;
            x[n][1] = d4.y;
            x[n][2] = d4.z;
            x[n][3] = d4.w;
        }
#endif
        // phase 2: M^T <- e^gl M^T + D^T diag(f) K_c over this warp's keys (ACC 3: the chunk's
        // product in an accumulator pair of its own, added to the decayed M^T after the loop, so
        // the tensor cores' truncating sums never run over the whole pass)
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
            FragA fa;
            ldA_c(fa, x[rt]);
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
