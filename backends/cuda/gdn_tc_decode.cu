// GATED_DELTA_NET decode (T == 1), GDA or KDA: a stream of the state, read once and written once.
// Eight lanes share a state row j (S[:, j], 512 contiguous bytes at S = 128): lane l8 holds the
// float4s at i = 32m + 4*l8 (m < 4), so each load instruction of a warp reads four whole rows'
// 128-byte segments. An item is 4*DP rows of one (seq, head): DP passes of 4 rows. A warp runs
// items it, it + total warps, ...; per row the two dot products (x.k, x.q) are summed over the eight
// lanes in three xor shuffles. DP and KDA are defined by the includer.
//   x = S[:, j] * e^g (g scalar, or per key i for KDA); delta = (v_j - x.k) beta
//   S'[:, j] = x + k delta  -> out_state: dst's snapshot slot 0 (slots 1..K-1 after it are zero:
//                              T == 1), or the node's state destination (K == 1; it may be `state`
//                              itself: a warp loads its item's rows before it stores them)
//   out_j = (x.q + delta k.q) / sqrt(S)

extern "C" __device__ int gdn_tc_decode(const float* q, const float* k, const float* v, const float* g,
                                         const float* beta, const float* state, float* dst,
                                         float* out_state, long long S_,
                                         long long Hv_, long long N_, long long Hk_, long long rep_,
                                         long long K_, long long hd_) {
    const int S = GDN_DIM_S(S_), Hv = (int)Hv_, N = (int)N_, Hk = (int)Hk_, rep = (int)rep_, K = (int)K_;
    const int hd = (int)hd_;   // value head h reads q/k head (h / hd) % Hk: hd 1 tiled, H_v / H_k interleaved
    const int lane = threadIdx.x & 31, l8 = lane & 7, rq = lane >> 3;
    const int rows_item = 4 * DP;
    const int per_head = (S + rows_item - 1) / rows_item;
    const long long n_items = (long long)N * Hv * per_head;
    const long long wpb = blockDim.x >> 5;
    const long long step = (long long)gridDim.x * wpb;
    const float scale = 1.0f / sqrtf((float)S);
    const long long SS = (long long)S * S;
    for (long long it = blockIdx.x * wpb + (threadIdx.x >> 5); it < n_items; it += step) {
        const int hs = (int)(it / per_head);
        const int jb = (int)(it - (long long)hs * per_head) * rows_item;
        const int seq = hs / Hv, h = hs - seq * Hv;
        const float* sb = state + hs * SS;
        float4 x[DP][4];
#pragma unroll
        for (int p = 0; p < DP; ++p) {
            const int j = jb + 4 * p + rq;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const int i = 32 * m + 4 * l8;
                x[p][m] = j < S && i < S ? ld_cs4(sb + (long long)j * S + i) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
        const float* qb = q + ((long long)(seq / rep) * Hk + (h / hd) % Hk) * S;
        const float* kb = k + ((long long)(seq / rep) * Hk + (h / hd) % Hk) * S;
        float4 kk[4], qq[4], ee[4];
        float kq = 0.f;
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const int i = 32 * m + 4 * l8;
            const bool ok = i < S;
            kk[m] = ok ? *(const float4*)(kb + i) : make_float4(0.f, 0.f, 0.f, 0.f);
            qq[m] = ok ? *(const float4*)(qb + i) : make_float4(0.f, 0.f, 0.f, 0.f);
            if (KDA) {
                float4 gg = ok ? *(const float4*)(g + (long long)hs * S + i) : make_float4(0.f, 0.f, 0.f, 0.f);
                ee[m] = make_float4(expf(gg.x), expf(gg.y), expf(gg.z), expf(gg.w));
            }
            kq += kk[m].x * qq[m].x + kk[m].y * qq[m].y + kk[m].z * qq[m].z + kk[m].w * qq[m].w;
        }
        if (!KDA) {
            const float eg = expf(g[hs]);
#pragma unroll
            for (int m = 0; m < 4; ++m) ee[m] = make_float4(eg, eg, eg, eg);
        }
        kq += shfl_xor(kq, 1);
        kq += shfl_xor(kq, 2);
        kq += shfl_xor(kq, 4);
        const float bt = beta[hs];
        float vj[DP];
#pragma unroll
        for (int p = 0; p < DP; ++p) {
            const int j = jb + 4 * p + rq;
            vj[p] = j < S ? v[(long long)hs * S + j] : 0.f;
        }
#pragma unroll
        for (int p = 0; p < DP; ++p) {
            float sk = 0.f, sq2 = 0.f;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                float4& a = x[p][m];
                a.x *= ee[m].x;
                a.y *= ee[m].y;
                a.z *= ee[m].z;
                a.w *= ee[m].w;
                sk += a.x * kk[m].x + a.y * kk[m].y + a.z * kk[m].z + a.w * kk[m].w;
                sq2 += a.x * qq[m].x + a.y * qq[m].y + a.z * qq[m].z + a.w * qq[m].w;
            }
            sk += shfl_xor(sk, 1);
            sq2 += shfl_xor(sq2, 1);
            sk += shfl_xor(sk, 2);
            sq2 += shfl_xor(sq2, 2);
            sk += shfl_xor(sk, 4);
            sq2 += shfl_xor(sq2, 4);
            const int j = jb + 4 * p + rq;
            const float delta = (vj[p] - sk) * bt;
            if (j < S) {
                if (l8 == 0) dst[(long long)hs * S + j] = (sq2 + delta * kq) * scale;
                float* ob = out_state + hs * SS + (long long)j * S;
#pragma unroll
                for (int m = 0; m < 4; ++m) {
                    const int i = 32 * m + 4 * l8;
                    if (i < S) {
                        const float4 a = x[p][m];
                        st_cs4(ob + i, make_float4(a.x + kk[m].x * delta, a.y + kk[m].y * delta,
                                                   a.z + kk[m].z * delta, a.w + kk[m].w * delta));
                    }
                }
                for (int slot = 1; slot < K; ++slot) {
                    float* zb = ob + (long long)slot * SS * Hv * N;
#pragma unroll
                    for (int m = 0; m < 4; ++m) {
                        const int i = 32 * m + 4 * l8;
                        if (i < S) *(float4*)(zb + i) = make_float4(0.f, 0.f, 0.f, 0.f);
                    }
                }
            }
        }
    }
    return 0;
}
