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
// out of the products. Per 16-row block b (rows n = 16b .. e = n + 15) and key, in float64 from the
// gates: o_r = gc_r - gc_n and tot = o_e; the rows are gated in place into
//   K rho (rho_r = e^o_r <= 1, in K's buffer), Q rho (in Q's), K gamma (gamma_r = e^(tot - o_r) <= 1,
//   in the gates' buffer),
// and then A and P are the 10 lower 16x16 blocks (I, J) of Gram products on tensor cores, K rho (or
// Q rho) of block I against K gamma of block J with one scale a key on the B side:
//   J < I: lambda_IJ = e^(gc_{16I} - gc_{16J+15}) <= 1 (all three exponents of one sign: no
//          cancellation, and a factor that underflows stands for a term below it);
//   J = I: e^-tot, so rho_r gamma_s e^-tot = e^(o_r - o_s); exponents of both signs, hence every
//          factor through exp_acc (float64 exponent, error ~expf's whatever its size), and only for
//          keys with tot >= -KDA_RANGE (the factors stay normal floats, their tf32 lo parts too);
//          the other keys ("bad": a strong decay inside the block) get e^-tot = 0 and their terms
//          pair by pair beforehand (exponents as float64 differences), added in the epilogue.
//   W  = Tm diag(beta) (K e^gc);   Kg = K e^(gl - gc) -> KGw, Qg = Q e^gc -> QGw  [hs][Tp][S]
//        (what the state pass reads instead of K and Q), from the gated rows and a per-key scale of
//        the block (e^gc_n, e^(gl - gc_e));  e^gl per key -> Gw [hs][c][S].
// Every phase but the inverse's block rows (six warps) runs on all threads (PREP_THREADS 512: the
// shared memory, ~146 KB, leaves one block an SM). H200, S=128, H_v=32, T=4096: 332 us (T=16384:
// 1311 us), where the block rows in fp32 FMA and the gating's offsets in float64 took 373 (1444);
// before that the diagonal blocks pair by pair for every key (~70k expf of float64 differences a
// chunk) and the off-diagonal gating in serial loops on half the threads took 783-973 us.

#ifndef GDN_KDA
#define GDN_KDA 0
#endif
#ifndef PREP_THREADS
#define PREP_THREADS (GDN_KDA ? 512 : 256)   // 256 or 512 (KDA: one block an SM for its shared memory)
#endif
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
#define P_GD (P_BE + L)             // gc in float64 (8-byte aligned: every offset is a multiple of 4)
#if GDN_KDA
#define GTSP 132  // the chunk's gates, one row a token; K gamma after the gating
#ifndef KDA_RANGE
#define KDA_RANGE 60.0   // a key's diagonal-block decay e^-tot factors when tot >= -KDA_RANGE
#endif
#define P_GT (P_GD + 2 * L)
#define P_TOT (P_GT + L * GTSP)      // float64 [4][SMAX]: tot of each block and key
#define P_SB (P_TOT + 8 * SMAX)      // float64 [4][SMAX]: the sum of each block's 16 gates
#define P_SC (P_SB + 8 * SMAX)       // [19][SMAX] per-key scales: e^gc_n [4], e^(gl - gc_e) [4],
#define SC_E1 0                      //   e^-tot (0 for a bad key) [4], lambda_IJ [6] (I(I-1)/2 + J),
#define SC_E2 (4 * SMAX)             //   e^gl [1]
#define SC_IL (8 * SMAX)
#define SC_LAM (12 * SMAX)
#define SC_GL (18 * SMAX)
#define P_CORR (P_SC + 19 * SMAX)    // [4][2][16][16]: the bad keys' diagonal terms of A (unscaled), P
#define P_BAD (P_CORR + 2048)        // int [4][SMAX]: bad keys of each block, then [4] their counts
#define PREP_SMEM_FLOATS (P_BAD + 4 * SMAX + 8)
#else
#define PREP_SMEM_FLOATS (P_GD + 2 * L)
#endif


#if GDN_KDA
// The KDA gating and Gram products: K, Q raw in Ks, Xs, the chunk's gates in Gt; A (strictly lower,
// beta applied) into As, P (lower) into the chunk's P [r][s] in global memory; leaves K e^gc in Ks
// and writes Kg, Qg and e^gl. Starts at a barrier with the gates landed (K's and Q's copies may
// still be in flight: their wait is before pass 3); the caller's barrier ends it.
GDN_INL void kda_gram(float* Ks, float* Xs, float* Gt, float* As, const float* bs, float* sm, float* P,
                      float* kg, float* qg, float* gl, int S, float scale, int ksteps, int tid, int warp,
                      int g4, int t4) {
    double* tot = (double*)(sm + P_TOT);
    double* sb = (double*)(sm + P_SB);
    float* sc = sm + P_SC;
    float* corr = sm + P_CORR;
    int* badk = (int*)(sm + P_BAD);
    int* nbad = badk + 4 * SMAX;
    const int lane = tid & 31, i = tid & (SMAX - 1), q = tid >> 7;   // q: a quarter of 512 threads
    // 1. per key and block (one or two blocks a thread): tot and the sum of the block's gates
    for (int b = q; b < 4; b += PREP_THREADS / SMAX) {
        float ah = 0.f, al = 0.f;   // float-float (gdn_tc.cuh's ff_add): float64's digits, no conversions
#pragma unroll
        for (int rr = 1; rr < 16; ++rr) ff_add(ah, al, Gt[(16 * b + rr) * GTSP + i]);
        const double a = (double)ah + (double)al;
        tot[b * SMAX + i] = a;
        sb[b * SMAX + i] = a + Gt[16 * b * GTSP + i];
    }
    __syncthreads();
    // 2. the per-key scales (gc_n = the sums of the blocks before + g_n); warps 0-3: block `warp`'s
    //    bad keys, in key order
    {
        double s4[4];
#pragma unroll
        for (int b = 0; b < 4; ++b) s4[b] = sb[b * SMAX + i];
        if (q == 0) {
            double before = 0.0, all = s4[0] + s4[1] + s4[2] + s4[3];
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                sc[SC_E1 + b * SMAX + i] = expf((float)(before + Gt[16 * b * GTSP + i]));
                before += s4[b];
                sc[SC_E2 + b * SMAX + i] = expf((float)(all - before));
            }
            sc[SC_GL + i] = expf((float)all);
        }
        if (q == 1) {
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const double t = tot[b * SMAX + i];
                sc[SC_IL + b * SMAX + i] = t >= -KDA_RANGE ? exp_acc(-t) : 0.f;
            }
        }
        if (q == (PREP_THREADS > 256 ? 2 : 1)) {
#pragma unroll
            for (int I = 1; I < 4; ++I) {
                double a = Gt[16 * I * GTSP + i];
                for (int J = I - 1; J >= 0; --J) {      // gates 16J+16 .. 16I
                    sc[SC_LAM + (I * (I - 1) / 2 + J) * SMAX + i] = expf((float)a);
                    a += s4[J];
                }
            }
        }
        if (warp < 4) {
            int cnt = 0;
            for (int m = 0; m < SMAX / 32; ++m) {
                const int key = 32 * m + lane;
                const bool bad = tot[warp * SMAX + key] < -KDA_RANGE;
                const u32 mask = warp_ballot(bad);
                if (bad) badk[warp * SMAX + cnt + bit_count(mask & ((1u << lane) - 1u))] = key;
                cnt += bit_count(mask);
            }
            if (lane == 0) nbad[warp] = cnt;
        }
    }
    CP_ASYNC_WAIT(0);   // K and Q, from here on
    __syncthreads();
    // 3. the bad keys' diagonal-block terms, pair by pair (four lanes a pair, every fourth bad key
    //    each) with e^(o_r - o_s) from float64 offsets D (in As's space: A is written later)
    double* D = (double*)As;                       // [16][DSTR]: o of the block's bad keys
    const int DSTR = SMAX + 2;
    for (int b = 0; b < 4; ++b) {
        const int nb = nbad[b], r0 = 16 * b;
        if (nb == 0) continue;                     // block-uniform
        if (tid < nb) {
            const int key = badk[b * SMAX + tid];
            double a = 0.0;
            for (int rr = 0; rr < 16; ++rr) {
                if (rr) a += Gt[(r0 + rr) * GTSP + key];
                D[rr * DSTR + tid] = a;
            }
        }
        __syncthreads();
        for (int it = tid; it < 136 * 4; it += PREP_THREADS) {   // warp-uniform: 136 * 4 = 2 * 256 + 32
            const int qt = it & 3;
            int rr, ss;
            tri_pair(it >> 2, rr, ss);
            const int r = r0 + rr, s = r0 + ss;
            float ak = 0.f, aq = 0.f;
            for (int j = qt; j < nb; j += 4) {
                const int key = badk[b * SMAX + j];
                const float x = expf((float)(D[rr * DSTR + j] - D[ss * DSTR + j]));
                const float ks = Ks[s * KSP + key] * x;
                ak += Ks[r * KSP + key] * ks;
                aq += Xs[r * QSP + key] * ks;
            }
            ak += shfl_xor(ak, 1);
            aq += shfl_xor(aq, 1);
            ak += shfl_xor(ak, 2);
            aq += shfl_xor(aq, 2);
            if (qt == 0) {
                corr[b * 512 + rr * 16 + ss] = ak;
                corr[b * 512 + 256 + rr * 16 + ss] = aq;
            }
        }
        __syncthreads();
    }
    // 4. the gated rows, in place: K rho, Q rho, K gamma (over the gates, each read before written)
    //    (o and t - o as float-float values, no float64 in the loop)
    for (int b = q; b < 4; b += PREP_THREADS / SMAX) {
        const double t = tot[b * SMAX + i];
        const float th = (float)t, tl = (float)(t - (double)th);
        float oh = 0.f, ol = 0.f;
#pragma unroll 4
        for (int rr = 0; rr < 16; ++rr) {
            const int r = 16 * b + rr;
            if (rr) ff_add(oh, ol, Gt[r * GTSP + i]);
            float dh, dl;
            two_sum(th, -oh, dh, dl);
            const float rho = exp_ff(oh, ol), gam = exp_ff(dh, dl + (tl - ol)), kv = Ks[r * KSP + i];
            Ks[r * KSP + i] = kv * rho;
            Xs[r * QSP + i] *= rho;
            Gt[r * GTSP + i] = kv * gam;
        }
    }
    __syncthreads();
    // 5. the 10 lower blocks (I, J): jobs 0..9 K K^T, 10..19 Q K^T, two 8-column tiles each
    for (int j = warp; j < 20; j += PREP_THREADS / 32) {
        const int prod = j >= 10;
        int I, J;
        tri_pair(prod ? j - 10 : j, I, J);
        const int diag = I == J;
        const float* Ab = (prod ? Xs : Ks) + 16 * I * KSP;
        const float* sv = sc + (diag ? SC_IL + I * SMAX : SC_LAM + (I * (I - 1) / 2 + J) * SMAX);
        float acc[2][GDN_CW];
        acc_zero(acc[0]);
        acc_zero(acc[1]);
#pragma unroll 4
        for (int kk = 0; kk < ksteps; ++kk) {
            FragA fa;
            ldA_row(fa, Ab + 8 * kk, KSP, g4, t4);
            const float s0 = sv[8 * kk + t4], s1 = sv[8 * kk + t4 + 4];
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                FragB fb;
                ldB_nk_scaled(fb, Gt + (16 * J + 8 * n) * GTSP + 8 * kk, GTSP, g4, t4, s0, s1);
                mma3(acc[n], fa, fb);
            }
        }
        const bool cr = diag && nbad[I] > 0;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            acc_fold(acc[n]);
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int rr = g4 + 8 * hf, ss = 8 * n + 2 * t4;
                const int r = 16 * I + rr, s = 16 * J + ss;
                float x0 = acc[n][2 * hf], x1 = acc[n][2 * hf + 1];
                if (cr) {
                    const float* cp = corr + I * 512 + 256 * prod + rr * 16 + ss;
                    if (ss <= rr) x0 += cp[0];
                    if (ss + 1 <= rr) x1 += cp[1];
                }
                if (!prod) {
                    As[r * ASP + s] = s < r ? bs[r] * x0 : 0.f;
                    As[r * ASP + s + 1] = s + 1 < r ? bs[r] * x1 : 0.f;
                } else {
                    *(float2*)(P + r * L + s) = make_float2(s <= r ? x0 * scale : 0.f, s + 1 <= r ? x1 * scale : 0.f);
                }
            }
        }
    }
    __syncthreads();
    // 6. K e^gc over K rho (for W), Kg = K gamma e^(gl - gc_e), Qg = Q rho e^gc_n out, e^gl out
    //    (four keys a thread and pass: S is a multiple of 4, every row 16-byte aligned)
    for (int e = tid; e < L * SMAX / 4; e += PREP_THREADS) {
        const int r = e >> 5, k = 4 * (e & 31), b = r >> 4;
        const float4 e1 = *(const float4*)(sc + SC_E1 + b * SMAX + k);
        float4* kr = (float4*)(Ks + r * KSP + k);
        const float4 kv = *kr;
        *kr = make_float4(kv.x * e1.x, kv.y * e1.y, kv.z * e1.z, kv.w * e1.w);
        if (k < S) {
            const float4 xq = *(const float4*)(Xs + r * QSP + k), gt = *(const float4*)(Gt + r * GTSP + k);
            const float4 e2 = *(const float4*)(sc + SC_E2 + b * SMAX + k);
            *(float4*)(qg + r * S + k) = make_float4(xq.x * e1.x, xq.y * e1.y, xq.z * e1.z, xq.w * e1.w);
            *(float4*)(kg + r * S + k) = make_float4(gt.x * e2.x, gt.y * e2.y, gt.z * e2.z, gt.w * e2.w);
        }
    }
    if (tid < S) gl[tid] = sc[SC_GL + tid];
}
#endif

extern "C" __device__ int gdn_tc_prep(const float* q, const float* k, const float* v, const float* g,
                                       const float* beta, float* Uw, float* Ww, float* Pw, float* Gw,
                                       float* KGw, float* QGw, long long S_, long long Hv_, long long T_, long long Hk_,
                                       long long rep_, long long hd_) {
    need_smem(PREP_SMEM_FLOATS * 4);
    float* sm = GDN_SMEM;
    float* Ks = sm + P_KS;
    float* Xs = sm + P_XS;
    float* As = sm + P_AS;
    float* gs = sm + P_G;
    double* gcd = (double*)(sm + P_GD);
    float* bs = sm + P_B;
    float* bes = sm + P_BE;
    const int S = GDN_DIM_S(S_), Hv = (int)Hv_, T = (int)T_, Hk = (int)Hk_, rep = (int)rep_;
    const int c = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g4 = lane >> 2, t4 = lane & 3;
    const int nc = (T + L - 1) / L, Tp = nc * L, t0 = c * L;
    const int sq = seq / rep, hk = (h / (int)hd_) % Hk, hs = seq * Hv + h;
    const int vr = T - t0 < L ? T - t0 : L;
    const long long qk_row = (long long)Hk * S;
    const float* kc = k + ((long long)(sq * T + t0) * Hk + hk) * S;
    const float* qc = q + ((long long)(sq * T + t0) * Hk + hk) * S;
    const float* vc = v + ((long long)(seq * T + t0) * Hv + h) * S;
    const float scale = 1.0f / sqrtf((float)S);

#if GDN_KDA
    float* Gt = sm + P_GT;   // the gates first, a group of their own: the gating's first passes need
    stage_rows(Gt, GTSP, g + ((long long)(seq * T + t0) * Hv + h) * S, (long long)Hv * S, L, SMAX, vr, S, tid,
               PREP_THREADS);   // only them, while K and Q land (kda_gram waits for those)
    cp_async_commit();
#endif
    stage_rows(Ks, KSP, kc, qk_row, L, SMAX, vr, S, tid, PREP_THREADS);
    stage_rows(Xs, QSP, qc, qk_row, L, SMAX, vr, S, tid, PREP_THREADS);
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
#if GDN_KDA
    CP_ASYNC_WAIT(1);
#else
    CP_ASYNC_WAIT(0);
#endif
    __syncthreads();

    const int ksteps = (S + 7) / 8;
    const long long pbase = ((long long)hs * nc + c) * L * L;
#if GDN_KDA
    const long long rows = ((long long)hs * Tp + t0) * S;
    kda_gram(Ks, Xs, Gt, As, bs, sm, Pw + pbase, KGw + rows, QGw + rows, Gw + ((long long)hs * nc + c) * S, S, scale,
             ksteps, tid, warp, g4, t4);
#else
    // 1. Gram products on the 10 lower 16x16 blocks: jobs 0..9 K K^T, 10..19 Q K^T
    for (int j = warp; j < 20; j += PREP_THREADS / 32) {
        const int prod = j >= 10;
        int bi, bj;
        tri_pair(prod ? j - 10 : j, bi, bj);
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
    // 2b. block rows, T_ib,jb = -T_ib,ib sum_{m=jb}^{ib-1} A_ib,m T_m,jb, on tensor cores and
    //     transposed: X^T = sum_m T_m,jb^T A_ib,m^T, then T_ib,jb^T = -X^T T_ib,ib^T with X^T's C
    //     fragments as the A operand (gdn_tc.cuh's ldA_c). Warp w < 6 owns the pair (ib, jb) =
    //     (1,0), (2,0), (2,1), (3,0), (3,1), (3,2); at stage m (block rows <= m final) every pair
    //     with jb <= m < ib adds its term m, and the pairs of row ib = m + 1 finish after a barrier
    //     (their T blocks go over the A blocks of that row, which the stage still reads). In fp32
    //     FMA from shared memory (two loads an FMA) this step was 13% of the KDA prep (H200).
    {
        int ib = 0, jb = 0;
        const bool job = warp < 6;
        if (job) {
            tri_pair(warp, ib, jb);
            ++ib;
        }
        float xa[2][GDN_CW];
        acc_zero(xa[0]);
        acc_zero(xa[1]);
        for (int m = 0; m < L / 16 - 1; ++m) {
            if (job && jb <= m && m < ib) {
#pragma unroll
                for (int kk = 0; kk < 2; ++kk) {
                    FragA fa;   // T_m,jb^T: element (cl, s) at As[(16m + s) ASP + 16jb + cl]
                    ldA_col(fa, As + (16 * m + 8 * kk) * ASP + 16 * jb, ASP, g4, t4);
#pragma unroll
                    for (int n = 0; n < 2; ++n) {
                        FragB fb;   // A_ib,m^T: element (s, rr) at As[(16ib + rr) ASP + 16m + s]
                        ldB_nk(fb, As + (16 * ib + 8 * n) * ASP + 16 * m + 8 * kk, ASP, g4, t4);
                        mma3(xa[n], fa, fb);
                    }
                }
            }
            __syncthreads();
            if (job && ib == m + 1) {
                float ya[2][GDN_CW];
                acc_zero(ya[0]);
                acc_zero(ya[1]);
#pragma unroll
                for (int hf = 0; hf < 2; ++hf) {   // k = rr: X^T's n-tile hf, in its k order 2t, 2t + 1
                    acc_fold(xa[hf]);
                    FragA fa;
                    ldA_c(fa, xa[hf]);
#pragma unroll
                    for (int n = 0; n < 2; ++n) {   // T_ib,ib^T (rr, rr') = T_ib,ib (rr', rr)
                        FragB fb;
                        ldB_c(fb, As + (16 * ib + 8 * n + g4) * ASP + 16 * ib + 8 * hf + 2 * t4);
                        mma3(ya[n], fa, fb);
                    }
                }
#pragma unroll
                for (int n = 0; n < 2; ++n) {   // (cl, rr') of T_ib,jb^T into T_ib,jb (rr', cl)
                    acc_fold(ya[n]);
                    float* o = As + (16 * ib + 8 * n + 2 * t4) * ASP + 16 * jb + g4;
                    o[0] = -ya[n][0];
                    o[ASP] = -ya[n][1];
                    o[8] = -ya[n][2];
                    o[ASP + 8] = -ya[n][3];
                }
            }
            __syncthreads();
        }
    }
    CP_ASYNC_WAIT(0);
    __syncthreads();

#if PREP_THREADS == 512
    // 3. U = Tm diag(beta) V (warps 0-3), W = Tm diag(beta e^gc) K (warps 4-7): 32 columns a warp;
    //    Tm is lower triangular, so row tile R stops at k = 16R + 16. 16 warps (KDA): warps 8-15
    //    repeat 0-7's columns, row tiles {0, 3} in 0-7 and {1, 2} in 8-15 (10 k-steps each); half
    //    the tiles a warp, so each keeps ACC 3's two accumulators
    const int prod = (warp >> 2) & 1;
    const float* Bm = prod ? Ks : Xs;
    const int ldb = prod ? KSP : VSP;
    const float* sc = prod && !GDN_KDA ? bes : bs;   // KDA: K holds K e^gc already
    const int n0 = 32 * (warp & 3);
    const int rs = warp >> 3, Rt[2] = {rs, 3 - rs}, nk = rs ? 6 : 8;
    float acc[2][4][GDN_CW];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < 4; ++n)
#pragma unroll
            for (int e = 0; e < GDN_CW; ++e) acc[m][n][e] = 0.f;
    if (n0 < S) {
#pragma unroll 2
        for (int kk = 0; kk < nk; ++kk) {
            FragB fb[4];
#pragma unroll
            for (int n = 0; n < 4; ++n) ldB_kn(fb[n], Bm + 8 * kk * ldb + n0 + 8 * n, ldb, g4, t4);
            const float s0 = sc[8 * kk + t4], s1 = sc[8 * kk + t4 + 4];
#pragma unroll
            for (int m = 0; m < 2; ++m) {
                const int R = Rt[m];
                if (kk < 2 * R + 2) {
                    FragA fa;
                    ldA_row_scaled(fa, As + 16 * R * ASP + 8 * kk, ASP, g4, t4, s0, s1);
#pragma unroll
                    for (int n = 0; n < 4; ++n) mma3(acc[m][n], fa, fb[n]);
                }
            }
        }
    }
    float* outp = prod ? Ww + ((long long)hs * nc + c) * L * S : Uw + ((long long)hs * Tp + t0) * S;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            acc_fold(acc[m][n]);
            store_c(outp, S, acc[m][n], 16 * Rt[m], n0 + 8 * n + 2 * t4, S, g4);
        }
#else
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
        for (int n = 0; n < 4; ++n) store_c(outp, S, acc[R][n], 16 * R, n0 + 8 * n + 2 * t4, S, g4);
#endif
    return 0;
}
