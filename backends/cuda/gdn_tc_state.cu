// GATED_DELTA_NET chunked form, kernel 2 of 3 (state pass): one block of STATE_THREADS per (BV value
// columns, value head, seq), sequential over the chunks, 3xTF32 tensor cores (gdn_tc.cuh). With M the
// state slice S[:, j0:j0+BV] (key index i = rows) at the start of chunk c:
//   H_c = M                                    -> Hw [hs][c][i][j]   (the output pass reads it)
//   D   = U - W_c M                            -> over U in Uw [hs][Tp][j]
//   M  <- e^gl M + K_c^T (e^(gl - gc) D)       (gl = gc of the chunk's last row; Gw [hs][Tp][2] holds
//                                               e^gc_r and e^(gl - gc_r), made by prep in float64)
// W_c and K_c of chunk c+1 stream into the second of two shared buffers while chunk c computes.
// M lives in the accumulators of phase 2 (warp w: rows 16(w%8).., a group of columns) and is copied
// to shared memory (the B operand of phase 1) once a chunk. The final M goes to dst's snapshot
// slot 0, stored transposed like the input state ([seq][h][j][i]). U and the gates of chunk c+1 are
// loaded into registers during chunk c. BV (32 or 64) and STATE_WARPS (8 or 16) come from the
// includer (more warps: more latency hidden, more fragment splits repeated).
// GDN_KDA: k is Kg = K e^(gl - gc) of prep ([hs][Tp][S], no row factor on D) and the decay of M is a
// vector over its rows (Gw [hs][c][S]: e^gl per key).

#ifndef GDN_KDA
#define GDN_KDA 0
#endif
#ifndef STATE_WARPS
#define STATE_WARPS 8   // 8 or 16
#endif
#define STATE_THREADS (32 * STATE_WARPS)
#define L 64
#define SMAX 128
#define WSP 132   // W_c rows (A row-major)
#define KSP2 136  // K_c rows (A read column-major: stride = 8 mod 32)
#define MSP (BV + 8)
#define DSP (BV + 8)
#define S_W 0
#define S_K (S_W + 2 * L * WSP)
#define S_M (S_K + 2 * L * KSP2)
#define S_D (S_M + SMAX * MSP)
#define STATE_SMEM_FLOATS (S_D + L * DSP)
#define NT1 (BV * 4 / (8 * STATE_WARPS))   // phase 1: n-tiles a warp (4 row tiles x column groups)
#define NT2 (BV * 8 / (8 * STATE_WARPS))   // phase 2: n-tiles a warp (8 row tiles x column groups)

extern "C" __device__ int gdn_tc_state(const float* k, const float* state, float* dst_state, float* Uw,
                                        const float* Ww, const float* Gw, float* Hw, long long S_,
                                        long long Hv_, long long T_, long long Hk_, long long rep_) {
    need_smem(STATE_SMEM_FLOATS * 4);
    float* sm = GDN_SMEM;
    float* Ms = sm + S_M;
    float* Ds = sm + S_D;
    const int S = GDN_DIM_S(S_), Hv = (int)Hv_, T = (int)T_, Hk = (int)Hk_, rep = (int)rep_;
    const int j0 = blockIdx.x * BV, h = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g4 = lane >> 2, t4 = lane & 3;
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
    const int mt1 = warp & 3, nb1 = (warp >> 2) * NT1;   // phase 1: rows 16*mt1.., n-tiles nb1..
    const int mt2 = warp & 7, nb2 = (warp >> 3) * NT2;   // phase 2 (M): rows 16*mt2.., n-tiles nb2..
    const bool live2 = 16 * mt2 < S;

    stage_rows(sm + S_W, WSP, wb, S, L, SMAX, L, S, tid, STATE_THREADS);
    stage_rows(sm + S_K, KSP2, kb, qk_row, L, SMAX, T < L ? T : L, S, tid, STATE_THREADS);
    cp_async_commit();
    float macc[NT2][4];
#pragma unroll
    for (int n = 0; n < NT2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = 16 * mt2 + g4 + 8 * (e >> 1), j = j0 + 8 * (nb2 + n) + 2 * t4 + (e & 1);
            macc[n][e] = i < S && j < S ? state[hs * SS + (long long)j * S + i] : 0.f;
        }
    float un[NT1][4], decn, decn1, f0n, f1n;
    auto load_u_gates = [&](int cn) {
        const float* unb = Uw + ((long long)hs * Tp + cn * L) * S + j0;
#pragma unroll
        for (int n = 0; n < NT1; ++n)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = 16 * mt1 + g4 + 8 * hf, jl = 8 * (nb1 + n) + 2 * t4;
                float2 u2 = make_float2(0.f, 0.f);
                if (j0 + jl < S) u2 = *(const float2*)(unb + (long long)r * S + jl);
                un[n][2 * hf] = u2.x;
                un[n][2 * hf + 1] = u2.y;
            }
#if GDN_KDA
        const int i0 = 16 * mt2 + g4;
        decn = i0 < S ? gb[(long long)cn * S + i0] : 0.f;
        decn1 = i0 + 8 < S ? gb[(long long)cn * S + i0 + 8] : 0.f;
        f0n = f1n = 1.f;
#else
        decn = decn1 = gb[2 * (cn * L + L - 1)];
        f0n = gb[2 * (cn * L + 16 * mt1 + g4) + 1];
        f1n = gb[2 * (cn * L + 16 * mt1 + g4 + 8) + 1];
#endif
    };
    load_u_gates(0);
    for (int c = 0; c < nc; ++c) {
        const int t0 = c * L, cur = c & 1;
        // H_c = M, and M into shared memory for phase 1
#pragma unroll
        for (int n = 0; n < NT2; ++n)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int i = 16 * mt2 + g4 + 8 * hf, jl = 8 * (nb2 + n) + 2 * t4;
                float2 m2;
                m2.x = macc[n][2 * hf];
                m2.y = macc[n][2 * hf + 1];
                *(float2*)(Ms + i * MSP + jl) = m2;
                if (i < S && j0 + jl < S) *(float2*)(Hw + ((long long)hs * nc + c) * SS + (long long)i * S + j0 + jl) = m2;
            }
        CP_ASYNC_WAIT(0);
        __syncthreads();   // Ms, W_c, K_c ready; the other buffers are free
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
        // phase 1: D = U - W_c M for rows 16*mt1.., columns nb1 tiles (U and the gates of this
        // chunk were loaded a chunk ahead; now those of the next one)
        float* ub = Uw + ((long long)hs * Tp + t0) * S + j0;
        float u[NT1][4], x[NT1][4];
#pragma unroll
        for (int n = 0; n < NT1; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                u[n][e] = un[n][e];
                x[n][e] = 0.f;
            }
        const float dec = decn, dec1 = decn1, f0 = f0n, f1 = f1n;
        if (c + 1 < nc) load_u_gates(c + 1);
#pragma unroll 4
        for (int kk = 0; kk < ksteps; ++kk) {
            FragA fa;
            ldA_row(fa, Wc + 16 * mt1 * WSP + 8 * kk, WSP, g4, t4);
#pragma unroll
            for (int n = 0; n < NT1; ++n) {
                FragB fb;
                ldB_kn(fb, Ms + 8 * kk * MSP + 8 * (nb1 + n), MSP, g4, t4);
                mma3(x[n], fa, fb);
            }
        }
#pragma unroll
        for (int n = 0; n < NT1; ++n)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = 16 * mt1 + g4 + 8 * hf, jl = 8 * (nb1 + n) + 2 * t4;
                const float f = hf ? f1 : f0;
                float2 d2, e2;
                d2.x = u[n][2 * hf] - x[n][2 * hf];
                d2.y = u[n][2 * hf + 1] - x[n][2 * hf + 1];
                if (j0 + jl < S) *(float2*)(ub + (long long)r * S + jl) = d2;
                e2.x = f * d2.x;
                e2.y = f * d2.y;
                *(float2*)(Ds + r * DSP + jl) = e2;
            }
        __syncthreads();   // Ds complete; Ms no longer read
        // phase 2: M <- e^gl M + K_c^T Ds
#pragma unroll
        for (int n = 0; n < NT2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) macc[n][e] *= e < 2 ? dec : dec1;
        if (live2) {
#pragma unroll 2
            for (int kk = 0; kk < L / 8; ++kk) {
                FragA fa;
                ldA_col(fa, Kc + 8 * kk * KSP2 + 16 * mt2, KSP2, g4, t4);
#pragma unroll
                for (int n = 0; n < NT2; ++n) {
                    FragB fb;
                    ldB_kn(fb, Ds + 8 * kk * DSP + 8 * (nb2 + n), DSP, g4, t4);
                    mma3(macc[n], fa, fb);
                }
            }
        }
        // no barrier here: the next chunk's first barrier comes before Ds, Kc or this W/K buffer
        // are written again (Ms, written before it, is not read in phase 2)
    }
    // final state (snapshot slot 0), transposed back: element (i, j) at [j][i]
#pragma unroll
    for (int n = 0; n < NT2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int i = 16 * mt2 + g4 + 8 * (e >> 1), j = j0 + 8 * (nb2 + n) + 2 * t4 + (e & 1);
            if (i < S && j < S) dst_state[hs * SS + (long long)j * S + i] = macc[n][e];
        }
    return 0;
}
