// GATED_DELTA_NET chunked form, kernel 1 of 2 (prep): one block of PREP_THREADS per (chunk, value
// head, seq), chunks of L = 64 tokens, the products on tensor cores in 3xTF32 (gdn_tc.cuh).
//
//   gc = inclusive cumsum of g in the chunk, in float64: e^(gc_r - gc_s) is taken of differences of
//        sums that reach -1000s with strong gates (fp32 would lose the small ones' digits)
//                                                            -> Gw [hs][Tp][2]: e^gc_r, e^(gl - gc_r)
//   A  = strictly lower beta_r e^(gc_r - gc_s) k_r.k_s      (KK^T on tensor cores)
//   P  = lower (s <= r) e^(gc_r - gc_s) q_r.k_s / sqrt(S)   -> Pw [hs][c][r][s], 16x16 blocks on and
//        below the diagonal only (zeros above the diagonal inside the diagonal blocks)
//   Tm = (I + A)^-1 in fp32 FMA (16x16 diagonal blocks by substitution, then block rows)
//   U  = Tm diag(beta) V                                    -> Uw [hs][Tp][S]
//   W  = Tm diag(beta e^gc) K                               -> Ww [hs][c][r][S]
// q, k: [seq_qk][T][H_k][S]; v: [seq][T][H_v][S]; g, beta: [seq][T][H_v] (GDA); hs = seq*H_v + h.
// Rows t >= T of the tail chunk read as zeros (k = q = v = 0, g = beta = 0).
//
// GDN_KDA (g [seq][T][H_v][S], a gate per key i; gc_r[i] its cumsum): the gates no longer factor
// out of the products, so
//   A, P off the diagonal blocks (row block bi > column block bj): with n = 16 bi, every pair has
//        s <= n <= r and e^(gc_r - gc_s) = e^(gc_r - gc_n) e^(gc_n - gc_s), both <= 1: Gram products
//        of gated rows R = k_r e^(gc_r - gc_n) (and q_r ...) with gated columns k_s e^(gc_n - gc_s);
//   A, P on the diagonal blocks: summed pair by pair with e^(gc_r - gc_s) from float64 differences;
//   W  = Tm diag(beta) (K e^gc);   Kg = K e^(gl - gc) -> KGw, Qg = Q e^gc -> QGw  [hs][Tp][S] (what
//        what the state pass reads instead of K and Q);  e^gl per key -> Gw [hs][c][S].
// Every exponent is a sum of gates of one sign taken in float64, so none cancels.

#define PREP_THREADS 256
#define L 64
#define SMAX 128
#define KSP 132   // K rows (A row-major and B n-major loads conflict-free: stride = 4 mod 32)
#define QSP 132   // Q rows in X during the Gram products
#define VSP 136   // V rows in X afterwards (B k-major loads: stride = 8 mod 32)
#define ASP 68    // A, then Tm
#define P_KS 0
#define P_XS (P_KS + L * KSP)
#define P_AS (P_XS + L * VSP)
#define P_G (P_AS + L * ASP)
#define P_B (P_G + L)
#define P_BE (P_B + L)
#define P_XM (P_BE + L)
#define P_GD (P_XM + 3 * 256)       // gc in float64 (8-byte aligned: every offset is a multiple of 4)
#ifndef GDN_KDA
#define GDN_KDA 0
#endif
#if GDN_KDA
#define GTSP 132  // the chunk's gates, one row a token
#define P_GT (P_GD + 2 * L)
#define P_R (P_GT + L * GTSP)        // gated K rows of a row block (16 x KSP)
#define P_RQ (P_R + 16 * KSP)        // gated Q rows
#define P_C (P_RQ + 16 * KSP)        // gated K columns (up to 48 x KSP); float64 block cumsums later
#define PREP_SMEM_FLOATS (P_C + 48 * KSP)
#else
#define PREP_SMEM_FLOATS (P_GD + 2 * L)
#endif


#if GDN_KDA
// A (strictly lower, into As) and P (lower, into P: the chunk's [r][s] in global memory) for KDA
// gates; K, Q raw in Ks, Xs; the chunk's gates in Gt. Leaves a barrier behind.
GDN_INL void kda_gram(const float* Ks, const float* Xs, const float* Gt, float* As, const float* bs, float* R,
                      float* RQ, float* C, float* P, float scale, int ksteps, int tid, int warp, int g4, int t4) {
    const int lane = tid & 31;
    // off the diagonal: row block bi against the columns before it, reference row n = 16 bi
    for (int bi = 1; bi < L / 16; ++bi) {
        const int n = 16 * bi;
        if (tid < SMAX) {
            const int i = tid;
            double b = 0.0;                        // e^(gc_n - gc_s) = e^(g_{s+1} + .. + g_n)
            for (int s = n - 1; s >= 0; --s) {
                b += Gt[(s + 1) * GTSP + i];
                C[s * KSP + i] = Ks[s * KSP + i] * expf((float)b);
            }
            double a = 0.0;                        // e^(gc_r - gc_n) = e^(g_{n+1} + .. + g_r)
            for (int rr = 0; rr < 16; ++rr) {
                if (rr) a += Gt[(n + rr) * GTSP + i];
                const float e = expf((float)a);
                R[rr * KSP + i] = Ks[(n + rr) * KSP + i] * e;
                RQ[rr * KSP + i] = Xs[(n + rr) * QSP + i] * e;
            }
        }
        __syncthreads();
        for (int j = warp; j < 4 * bi; j += PREP_THREADS / 32) {   // 2 bi n-tiles of K K^T, then Q K^T
            const int prod = j >= 2 * bi, nt = prod ? j - 2 * bi : j;
            const float* Ab = prod ? RQ : R;
            float acc[GDN_CW];
            acc_zero(acc);
#pragma unroll 4
            for (int kk = 0; kk < ksteps; ++kk) {
                FragA fa;
                FragB fb;
                ldA_row(fa, Ab + 8 * kk, KSP, g4, t4);
                ldB_nk(fb, C + 8 * nt * KSP + 8 * kk, KSP, g4, t4);
                mma3(acc, fa, fb);
            }
            acc_fold(acc);
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = n + g4 + 8 * hf, s = 8 * nt + 2 * t4;
                if (!prod) {
                    As[r * ASP + s] = bs[r] * acc[2 * hf];
                    As[r * ASP + s + 1] = bs[r] * acc[2 * hf + 1];
                } else {
                    *(float2*)(P + r * L + s) = make_float2(acc[2 * hf] * scale, acc[2 * hf + 1] * scale);
                }
            }
        }
        __syncthreads();
    }
    // the diagonal blocks, pair by pair: four lanes a pair, every fourth key each
    double* D = (double*)C;                        // [16][DSTR]: gc_r - gc of the block's first row
    const int DSTR = SMAX + 2;                     // rows 4 banks apart
    for (int b = 0; b < L / 16; ++b) {
        const int r0 = 16 * b;
        if (tid < SMAX) {
            double a = 0.0;
            for (int rr = 0; rr < 16; ++rr) {
                if (rr) a += Gt[(r0 + rr) * GTSP + tid];
                D[rr * DSTR + tid] = a;
            }
        }
        for (int e = tid; e < 256; e += PREP_THREADS) {     // zeros above the diagonal
            const int rr = e >> 4, ss = e & 15;
            if (ss > rr) {
                As[(r0 + rr) * ASP + r0 + ss] = 0.f;
                P[(r0 + rr) * L + r0 + ss] = 0.f;
            }
        }
        __syncthreads();
        for (int it = tid; it < 136 * 4; it += PREP_THREADS) {   // warp-uniform: 136 * 4 = 2 * 256 + 32
            const int pr = it >> 2, qt = it & 3;
            int rr = 0, rest = pr;
            while (rest > rr) { rest -= rr + 1; ++rr; }
            const int ss = rest, r = r0 + rr, sc = r0 + ss;
            float ak = 0.f, aq = 0.f;
            for (int i = qt; i < SMAX; i += 4) {    // the pair's four lanes read neighbouring keys
                const float x = expf((float)(D[rr * DSTR + i] - D[ss * DSTR + i]));
                const float ks = Ks[sc * KSP + i] * x;
                ak += Ks[r * KSP + i] * ks;
                aq += Xs[r * QSP + i] * ks;
            }
            ak += shfl_xor(ak, 1);
            aq += shfl_xor(aq, 1);
            ak += shfl_xor(ak, 2);
            aq += shfl_xor(aq, 2);
            if (qt == 0) {
                As[r * ASP + sc] = ss < rr ? bs[r] * ak : 0.f;
                P[r * L + sc] = aq * scale;
            }
        }
        __syncthreads();
    }
    (void)lane;
}
#endif

extern "C" __device__ int gdn_tc_prep(const float* q, const float* k, const float* v, const float* g,
                                       const float* beta, float* Uw, float* Ww, float* Pw, float* Gw,
                                       float* KGw, float* QGw, long long S_, long long Hv_, long long T_, long long Hk_,
                                       long long rep_) {
    need_smem(PREP_SMEM_FLOATS * 4);
    float* sm = GDN_SMEM;
    float* Ks = sm + P_KS;
    float* Xs = sm + P_XS;
    float* As = sm + P_AS;
    float* gs = sm + P_G;
    double* gcd = (double*)(sm + P_GD);
    float* bs = sm + P_B;
    float* bes = sm + P_BE;
    float* Xm = sm + P_XM;
    const int S = GDN_DIM_S(S_), Hv = (int)Hv_, T = (int)T_, Hk = (int)Hk_, rep = (int)rep_;
    const int c = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g4 = lane >> 2, t4 = lane & 3;
    const int nc = (T + L - 1) / L, Tp = nc * L, t0 = c * L;
    const int sq = seq / rep, hk = h % Hk, hs = seq * Hv + h;
    const int vr = T - t0 < L ? T - t0 : L;
    const long long qk_row = (long long)Hk * S;
    const float* kc = k + ((long long)(sq * T + t0) * Hk + hk) * S;
    const float* qc = q + ((long long)(sq * T + t0) * Hk + hk) * S;
    const float* vc = v + ((long long)(seq * T + t0) * Hv + h) * S;
    const float scale = 1.0f / sqrtf((float)S);

    stage_rows(Ks, KSP, kc, qk_row, L, SMAX, vr, S, tid, PREP_THREADS);
    stage_rows(Xs, QSP, qc, qk_row, L, SMAX, vr, S, tid, PREP_THREADS);
#if GDN_KDA
    float* Gt = sm + P_GT;
    stage_rows(Gt, GTSP, g + ((long long)(seq * T + t0) * Hv + h) * S, (long long)Hv * S, L, SMAX, vr, S, tid,
               PREP_THREADS);
#endif
    cp_async_commit();
    if (tid < L) {
        bool ok = tid < vr;
        long long e = (long long)(seq * T + t0 + tid) * Hv + h;
        gs[tid] = ok && !GDN_KDA ? g[e] : 0.f;
        bs[tid] = ok ? beta[e] : 0.f;
    }
    __syncthreads();
    if (tid < L && !GDN_KDA) {
        double a = 0.0, al = 0.0;
        for (int s = 0; s < L; ++s) {
            const double x = gs[s];
            al += x;
            if (s <= tid) a += x;
        }
        gcd[tid] = a;
        const float e = expf((float)a);
        bes[tid] = bs[tid] * e;
        float2 ge;
        ge.x = e;
        ge.y = expf((float)(al - a));
        *(float2*)(Gw + 2 * ((long long)hs * Tp + t0 + tid)) = ge;
    }
    CP_ASYNC_WAIT(0);
    __syncthreads();

    const int ksteps = (S + 7) / 8;
    const long long pbase = ((long long)hs * nc + c) * L * L;
#if GDN_KDA
    kda_gram(Ks, Xs, Gt, As, bs, sm + P_R, sm + P_RQ, sm + P_C, Pw + pbase, scale, ksteps, tid, warp, g4, t4);
    // K e^gc (for W) over K, Kg and Qg out, e^gl per key: one column a thread, float64 sums
    if (tid < SMAX) {
        const int i = tid;
        double al = 0.0, a = 0.0;
        for (int r = 0; r < L; ++r) al += Gt[r * GTSP + i];
        float* kg = KGw + ((long long)hs * Tp + t0) * S;
        float* qg = QGw + ((long long)hs * Tp + t0) * S;
        for (int r = 0; r < L; ++r) {
            a += Gt[r * GTSP + i];
            const float kv = Ks[r * KSP + i], qv = Xs[r * QSP + i], e = expf((float)a);
            if (i < S) {
                kg[(long long)r * S + i] = kv * expf((float)(al - a));
                qg[(long long)r * S + i] = qv * e;
            }
            Ks[r * KSP + i] = kv * e;
        }
        if (i < S) Gw[((long long)hs * nc + c) * S + i] = expf((float)al);
    }
#else
    // 1. Gram products on the 10 lower 16x16 blocks: jobs 0..9 K K^T, 10..19 Q K^T
    for (int j = warp; j < 20; j += PREP_THREADS / 32) {
        const int prod = j >= 10;
        int b = prod ? j - 10 : j, bi = 0;
        while (b > bi) { b -= bi + 1; ++bi; }
        const int bj = b;
        const float* Ab = (prod ? Xs : Ks) + 16 * bi * KSP;
        float acc[2][GDN_CW];
        acc_zero(acc[0]);
        acc_zero(acc[1]);
#pragma unroll 4
        for (int kk = 0; kk < ksteps; ++kk) {
            FragA fa;
            ldA_row(fa, Ab + 8 * kk, KSP, g4, t4);
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                FragB fb;
                ldB_nk(fb, Ks + (16 * bj + 8 * n) * KSP + 8 * kk, KSP, g4, t4);
                mma3(acc[n], fa, fb);
            }
        }
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            acc_fold(acc[n]);
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = 16 * bi + g4 + 8 * hf;
                const int s = 16 * bj + 8 * n + 2 * t4;
                const float x0 = acc[n][2 * hf], x1 = acc[n][2 * hf + 1];
                if (!prod) {
                    As[r * ASP + s] = s < r ? bs[r] * expf((float)(gcd[r] - gcd[s])) * x0 : 0.f;
                    As[r * ASP + s + 1] = s + 1 < r ? bs[r] * expf((float)(gcd[r] - gcd[s + 1])) * x1 : 0.f;
                } else {
                    float2 p;
                    p.x = s <= r ? expf((float)(gcd[r] - gcd[s])) * x0 * scale : 0.f;
                    p.y = s + 1 <= r ? expf((float)(gcd[r] - gcd[s + 1])) * x1 * scale : 0.f;
                    *(float2*)(Pw + pbase + r * L + s) = p;
                }
            }
        }
    }
#endif
    __syncthreads();
    // V into X (Q is dead): lands while Tm is solved
    stage_rows(Xs, VSP, vc, (long long)Hv * S, L, SMAX, vr, S, tid, PREP_THREADS);
    cp_async_commit();

    // 2a. the 16x16 diagonal blocks of I + A inverted by forward substitution, a column a thread
    //     (all of a block's columns read its rows: everyone reads before anyone writes)
    const int bb = 16 * ((tid >> 4) & 3), cc = tid & 15;
    float x[16];
    if (tid < L) {
#pragma unroll
        for (int rr = 0; rr < 16; ++rr) {
            float a = rr == cc ? 1.f : 0.f;
#pragma unroll
            for (int s = 0; s < rr; ++s) a -= As[(bb + rr) * ASP + bb + s] * x[s];
            x[rr] = a;
        }
    }
    __syncthreads();
    if (tid < L) {
#pragma unroll
        for (int rr = 0; rr < 16; ++rr) As[(bb + rr) * ASP + bb + cc] = x[rr];
    }
    __syncthreads();
    // 2b. block rows: T_ib,jb = -T_ib,ib sum_{m=jb}^{ib-1} A_ib,m T_m,jb
    for (int ib = 1; ib < L / 16; ++ib) {
        for (int e = tid; e < ib * 256; e += PREP_THREADS) {
            const int jb = e >> 8, rr = (e >> 4) & 15, cl = e & 15;
            float a = 0.f;
            for (int m = jb; m < ib; ++m) {
#pragma unroll
                for (int s = 0; s < 16; ++s)
                    a += As[(16 * ib + rr) * ASP + 16 * m + s] * As[(16 * m + s) * ASP + 16 * jb + cl];
            }
            Xm[e] = a;
        }
        __syncthreads();
        for (int e = tid; e < ib * 256; e += PREP_THREADS) {
            const int jb = e >> 8, rr = (e >> 4) & 15, cl = e & 15;
            float a = 0.f;
#pragma unroll
            for (int s = 0; s < 16; ++s) a += As[(16 * ib + rr) * ASP + 16 * ib + s] * Xm[jb * 256 + s * 16 + cl];
            As[(16 * ib + rr) * ASP + 16 * jb + cl] = -a;
        }
        __syncthreads();
    }
    CP_ASYNC_WAIT(0);
    __syncthreads();

    // 3. U = Tm diag(beta) V (warps 0-3), W = Tm diag(beta e^gc) K (warps 4-7): 32 columns a warp,
    //    all four 16-row tiles; Tm is lower triangular, so row tile R stops at k = 16R + 16
    const int prod = warp >> 2;
    const float* Bm = prod ? Ks : Xs;
    const int ldb = prod ? KSP : VSP;
    const float* sc = prod && !GDN_KDA ? bes : bs;   // KDA: K holds K e^gc already
    const int n0 = 32 * (warp & 3);
    float acc[4][4][4];
#pragma unroll
    for (int R = 0; R < 4; ++R)
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[R][n][e] = 0.f;
    if (n0 < S) {
#pragma unroll 2
        for (int kk = 0; kk < L / 8; ++kk) {
            FragB fb[4];
#pragma unroll
            for (int n = 0; n < 4; ++n) ldB_kn(fb[n], Bm + 8 * kk * ldb + n0 + 8 * n, ldb, g4, t4);
            const float s0 = sc[8 * kk + t4], s1 = sc[8 * kk + t4 + 4];
#pragma unroll
            for (int R = 0; R < 4; ++R) {
                if (kk < 2 * R + 2) {
                    FragA fa;
                    ldA_row_scaled(fa, As + 16 * R * ASP + 8 * kk, ASP, g4, t4, s0, s1);
#pragma unroll
                    for (int n = 0; n < 4; ++n) mma3_p(acc[R][n], fa, fb[n]);   // 64 tiles: no room for ACC 3
                }
            }
        }
    }
    float* outp = prod ? Ww + ((long long)hs * nc + c) * L * S : Uw + ((long long)hs * Tp + t0) * S;
#pragma unroll
    for (int R = 0; R < 4; ++R)
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = 16 * R + g4 + 8 * hf;
                const int j = n0 + 8 * n + 2 * t4;
                if (j < S) {
                    float2 o;
                    o.x = acc[R][n][2 * hf];
                    o.y = acc[R][n][2 * hf + 1];
                    *(float2*)(outp + (long long)r * S + j) = o;
                }
            }
    return 0;
}
