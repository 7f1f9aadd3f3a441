// GATED_DELTA_NET chunked form, kernel 3 of 3 (output): one block of OUT_THREADS per (chunk, OB
// value columns, value head, seq), 3xTF32 tensor cores (gdn_tc.cuh):
//   O = diag(e^gc / sqrt(S)) Q_c H_c + P D      (P lower triangular in 16x16 blocks; e^gc from
//                                                Gw [hs][Tp][2], made by prep; H_c^T from the state
//                                                pass, Hw [hs][c][j][i])
// into dst's attention part [seq][T][H_v][S]; rows t >= T are not written.
// grid.x = chunk * NJ + column block (NJ = ceil(S / OB)).
// GDN_KDA: q is Qg = Q e^gc of prep ([hs][Tp][S]) and the row factor is 1 / sqrt(S) alone.

#ifndef GDN_KDA
#define GDN_KDA 0
#endif
#define OUT_THREADS 256
#define L 64
#define SMAX 128
#define OB 64
#define OQSP 132  // Q rows (A row-major)
#define OHSP 132  // H_c^T rows j (OB of them), S keys (B n-major: stride = 4 mod 32)
#define OPSP 68   // P rows (A row-major)
#define ODSP 72   // D rows
#define O_Q 0
#define O_H (O_Q + L * OQSP)
#define O_P (O_H + OB * OHSP)
#define O_D (O_P + L * OPSP)
#define OUT_SMEM_FLOATS (O_D + L * ODSP)

extern "C" __device__ int gdn_tc_out(const float* q, float* dst_out, const float* Dw, const float* Pw,
                                      const float* Gw, const float* Hw, long long S_, long long Hv_,
                                      long long T_, long long Hk_, long long rep_) {
    need_smem(OUT_SMEM_FLOATS * 4);
    float* sm = GDN_SMEM;
    float* Qs = sm + O_Q;
    float* Hs = sm + O_H;
    float* Ps = sm + O_P;
    float* Dm = sm + O_D;
    const int S = GDN_DIM_S(S_), Hv = (int)Hv_, T = (int)T_, Hk = (int)Hk_, rep = (int)rep_;
    const int NJ = (S + OB - 1) / OB;
    const int c = blockIdx.x / NJ, j0 = (blockIdx.x % NJ) * OB, h = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g4 = lane >> 2, t4 = lane & 3;
    const int nc = (T + L - 1) / L, Tp = nc * L, t0 = c * L;
    const int sq = seq / rep, hk = h % Hk, hs = seq * Hv + h;
    (void)sq;
    (void)hk;
    const int vr = T - t0 < L ? T - t0 : L;
    const long long SS = (long long)S * S;
    const float scale = 1.0f / sqrtf((float)S);

#if GDN_KDA
    stage_rows(Qs, OQSP, q + ((long long)hs * Tp + t0) * S, S, L, SMAX, vr, S, tid, OUT_THREADS);
#else
    stage_rows(Qs, OQSP, q + ((long long)(sq * T + t0) * Hk + hk) * S, (long long)Hk * S, L, SMAX, vr, S, tid,
               OUT_THREADS);
#endif
    stage_rows(Hs, OHSP, Hw + ((long long)hs * nc + c) * SS + (long long)j0 * S, S, OB, SMAX, S - j0, S, tid,
               OUT_THREADS);
    cp_async_commit();
    {   // P: only the blocks on and below the diagonal exist (and are read)
        const float* pb = Pw + ((long long)hs * nc + c) * L * L;
        for (int e = tid; e < L * (L / 4); e += OUT_THREADS) {
            const int r = e / (L / 4), c4 = (e % (L / 4)) * 4;
            if (c4 < 16 * (r / 16 + 1)) cp_async16(Ps + r * OPSP + c4, pb + r * L + c4, 16);
        }
    }
    stage_rows(Dm, ODSP, Dw + ((long long)hs * Tp + t0) * S + j0, S, L, OB, L, S - j0, tid, OUT_THREADS);
    cp_async_commit();

    // warp tiles of 32 rows x 32 columns (each split A fragment serves 4 mma3, each B fragment 2);
    // the 8 warps are 4 tiles x 2 groups, each group takes half of both products' k-steps and
    // group 1's sums reach group 0 through shared memory at the end
    const int grp = warp >> 2, mh = (warp >> 1) & 1, nh = warp & 1;
    const int ksteps = (S + 7) / 8, kq = ksteps / 2;
    const int np = 4 * mh + 4, pq = np / 2;          // P D: k-steps of the row tile (triangle)
    const int qa = grp ? kq : 0, qb = grp ? ksteps : kq, pa = grp ? pq : 0, pb = grp ? np : pq;
    float e[2][2];
#pragma unroll
    for (int R = 0; R < 2; ++R)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
#if GDN_KDA
            e[R][hf] = scale;
#else
            e[R][hf] = Gw[2 * ((long long)hs * Tp + t0 + 32 * mh + 16 * R + g4 + 8 * hf)] * scale;
#endif
        }
#if GDN_KDA
    (void)Gw;
#endif
    bool colok[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) colok[n] = j0 + 32 * nh + 8 * n < S;
    float acc[2][4][GDN_CW];
#pragma unroll
    for (int R = 0; R < 2; ++R)
#pragma unroll
        for (int n = 0; n < 4; ++n) acc_zero(acc[R][n]);
    CP_ASYNC_WAIT(1);
    __syncthreads();
#pragma unroll 2
    for (int kk = qa; kk < qb; ++kk) {
        FragA fa[2];
#pragma unroll
        for (int R = 0; R < 2; ++R) ldA_row(fa[R], Qs + (32 * mh + 16 * R) * OQSP + 8 * kk, OQSP, g4, t4);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            if (colok[n]) {
                FragB fb;
                ldB_nk(fb, Hs + (32 * nh + 8 * n) * OHSP + 8 * kk, OHSP, g4, t4);
#pragma unroll
                for (int R = 0; R < 2; ++R) mma3(acc[R][n], fa[R], fb);
            }
        }
    }
#pragma unroll
    for (int R = 0; R < 2; ++R)
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            acc_fold(acc[R][n]);
            acc[R][n][0] *= e[R][0];
            acc[R][n][1] *= e[R][0];
            acc[R][n][2] *= e[R][1];
            acc[R][n][3] *= e[R][1];
#if GDN_ACC == 3
            acc[R][n][4] = acc[R][n][5] = acc[R][n][6] = acc[R][n][7] = 0.f;
#endif
        }
    CP_ASYNC_WAIT(0);
    __syncthreads();
    for (int kk = pa; kk < pb; ++kk) {
        // row tile R's rows 32 mh + 16 R + 0..15 see P's columns below 32 mh + 16 R + 16
        const bool ok1 = kk < np - 2;
        FragA fa[2];
        ldA_row(fa[1], Ps + (32 * mh + 16) * OPSP + 8 * kk, OPSP, g4, t4);
        if (ok1) ldA_row(fa[0], Ps + 32 * mh * OPSP + 8 * kk, OPSP, g4, t4);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            if (colok[n]) {
                FragB fb;
                ldB_kn(fb, Dm + 8 * kk * ODSP + 32 * nh + 8 * n, ODSP, g4, t4);
                if (ok1) mma3(acc[0][n], fa[0], fb);
                mma3(acc[1][n], fa[1], fb);
            }
        }
    }
#pragma unroll
    for (int R = 0; R < 2; ++R)
#pragma unroll
        for (int n = 0; n < 4; ++n) acc_fold(acc[R][n]);
    __syncthreads();   // Q and H are dead: group 1's sums go where Q was
    float4* red = (float4*)Qs + (warp & 3) * 8 * 32 + lane;
    if (grp) {
#pragma unroll
        for (int R = 0; R < 2; ++R)
#pragma unroll
            for (int n = 0; n < 4; ++n)
                red[(4 * R + n) * 32] = make_float4(acc[R][n][0], acc[R][n][1], acc[R][n][2], acc[R][n][3]);
    }
    __syncthreads();
    if (grp) return 0;
#pragma unroll
    for (int R = 0; R < 2; ++R)
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            const float4 o4 = red[(4 * R + n) * 32];
            const float o[4] = {acc[R][n][0] + o4.x, acc[R][n][1] + o4.y, acc[R][n][2] + o4.z, acc[R][n][3] + o4.w};
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = 32 * mh + 16 * R + g4 + 8 * hf, j = j0 + 32 * nh + 8 * n + 2 * t4;
                if (r < vr && j < S) *(float2*)(dst_out + ((long long)(seq * T + t0 + r) * Hv + h) * S + j) =
                    make_float2(o[2 * hf], o[2 * hf + 1]);
            }
        }
    return 0;
}
