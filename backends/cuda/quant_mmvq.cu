// MUL_MAT with a block-quantized src0 and src1 already quantized to src0's vec_dot type
// (Q8_0 / Q8_1 / Q8_K, by quant_matmul.py's quantize_src1): ggml's CPU semantics, integer dot
// products a 32-element unit with dp4a (four int8 products an instruction), scaled per block.
//
// One warp a src0 row m; its lanes walk the row's units (u = lane, lane + 32, ...), each unit's
// weights loaded once for NC src1 columns; a butterfly of shuffles sums the lanes. Block: WARPS
// warps (rows m0 .. m0 + WARPS - 1); grid (rows / WARPS, columns / NC, ne2 * ne3).
//
// Units: a row of K elements is K / 32 units; unit u covers elements 32u .. 32u + 31 (a 32-block
// of Q4_0 ... Q8_0, or group u % 8 of super-block u / 8 for Q4_K, Q5_K, Q6_K). A unit becomes
// eight 32-bit words of four byte quants each (q[k]: elements 4k .. 4k + 3; the nibble types
// unsigned 0..63, Q8_0 signed) and its scales; src1's unit is eight words of int8 quants.
//
// Byte layout (ggml-common.h): Q4_0 {d, qs[16]} 18 B, Q4_1 {d, m, qs[16]} 20 B, Q5_0 {d, qh[4],
// qs[16]} 22 B, Q5_1 {d, m, qh[4], qs[16]} 24 B, Q8_0 {d, qs[32]} 34 B, Q4_K {d, dmin,
// scales[12], qs[128]} 144 B, Q5_K {d, dmin, scales[12], qh[32], qs[128]} 176 B, Q6_K {ql[128],
// qh[64], scales[16], d} 210 B. 18/22/34/210-byte blocks are 2-byte aligned: their words are read
// as two 16-bit loads; the others as 32-bit loads (quant_mmvq.py checks the row alignment).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };

#ifndef WARPS
#define WARPS 4
#endif

static __device__ __forceinline__ u32 ld2(const u8* p) {      // 4 bytes at a 2-byte aligned address
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}
static __device__ __forceinline__ u32 ld4(const u8* p) { return *(const u32*)p; }
static __device__ __forceinline__ float f16(const u8* p) {     // the float16 at p (2-byte aligned)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*(const u16*)p));
    return f;
}

struct Unit {
    int q[8];      // byte quants of elements 4k .. 4k + 3
    float d;       // block scale (times the group's integer scale where it is one number)
    float m;       // Q4_1 / Q5_1: the block min; K-quants: dmin * the group's min
    int sc0, sc1;  // Q6_K: the two 16-element scales; Q4_K/Q5_K: sc0 the group's scale
};

// the fifth bits of four consecutive quants (bits 0..3 of h) at bit 4 of each byte
static __device__ __forceinline__ int spread4(u32 h) {
    return ((h << 4) & 0x00000010) | ((h << 11) & 0x00001000) | ((h << 18) & 0x00100000) | ((h << 25) & 0x10000000);
}

template <int T> static __device__ __forceinline__ void load_unit(const u8* row, int u, Unit& w) {
    if (T == T_Q4_0 || T == T_Q4_1) {
        const u8* b = row + (T == T_Q4_0 ? 18 : 20) * (i64)u;
        const u8* qs = b + (T == T_Q4_0 ? 2 : 4);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            u32 v = T == T_Q4_0 ? ld2(qs + 4 * k) : ld4(qs + 4 * k);
            w.q[k] = v & 0x0F0F0F0F;
            w.q[k + 4] = (v >> 4) & 0x0F0F0F0F;
        }
        w.d = f16(b);
        w.m = T == T_Q4_1 ? f16(b + 2) : 0.f;
    } else if (T == T_Q5_0 || T == T_Q5_1) {
        const u8* b = row + (T == T_Q5_0 ? 22 : 24) * (i64)u;
        const u8* qh_p = b + (T == T_Q5_0 ? 2 : 4);
        const u8* qs = qh_p + 4;
        u32 qh = T == T_Q5_0 ? ld2(qh_p) : ld4(qh_p);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            u32 v = T == T_Q5_0 ? ld2(qs + 4 * k) : ld4(qs + 4 * k);
            w.q[k] = (v & 0x0F0F0F0F) | spread4(qh >> (4 * k));
            w.q[k + 4] = ((v >> 4) & 0x0F0F0F0F) | spread4(qh >> (16 + 4 * k));
        }
        w.d = f16(b);
        w.m = T == T_Q5_1 ? f16(b + 2) : 0.f;
    } else if (T == T_Q8_0) {
        const u8* b = row + 34 * (i64)u;
#pragma unroll
        for (int k = 0; k < 8; ++k) w.q[k] = (int)ld2(b + 2 + 4 * k);
        w.d = f16(b);
        w.m = 0.f;
    } else if (T == T_Q4_K || T == T_Q5_K) {
        const int g = u & 7;
        const u8* b = row + (T == T_Q4_K ? 144 : 176) * (i64)(u >> 3);
        const u8* qs = b + (T == T_Q4_K ? 16 : 48) + 32 * (g >> 1);
        const int shift = 4 * (g & 1);
        const u8* s = b + 4;
        int sc, mn;
        if (g < 4) {
            sc = s[g] & 63;
            mn = s[g + 4] & 63;
        } else {
            sc = (s[g + 4] & 15) | ((s[g - 4] >> 6) << 4);
            mn = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            int v = (ld4(qs + 4 * k) >> shift) & 0x0F0F0F0F;
            if (T == T_Q5_K) v |= ((ld4(b + 16 + 4 * k) >> g) & 0x01010101) << 4;
            w.q[k] = v;
        }
        w.d = f16(b);
        w.m = f16(b + 2);
        w.sc0 = sc;
        w.sc1 = mn;
    } else {  // Q6_K
        const int g = u & 7, h = g >> 2, quarter = g & 3;
        const u8* b = row + 210 * (i64)(u >> 3);
        const u8* ql = b + 64 * h + 32 * (quarter & 1);
        const u8* qh = b + 128 + 32 * h;
        const int shift = 4 * (quarter >> 1), hs = 2 * quarter;
#pragma unroll
        for (int k = 0; k < 8; ++k)
            w.q[k] = ((ld2(ql + 4 * k) >> shift) & 0x0F0F0F0F) | (((ld2(qh + 4 * k) >> hs) & 0x03030303) << 4);
        const signed char* sc = (const signed char*)(b + 192 + 8 * h + 2 * quarter);
        w.sc0 = sc[0];
        w.sc1 = sc[1];
        w.d = f16(b + 208);
        w.m = 0.f;
    }
}

// unit w times src1's unit (yq: its 32 int8 quants, 16-byte aligned): the share of the dot.
// dy: the src1 block scale; sy: Q8_1's s (Q4_1/Q5_1) or the group's two Q8_K bsums added.
template <int T> static __device__ __forceinline__ float unit_dot(const Unit& w, const int4* yq, float dy, float sy) {
    const int4 y0 = yq[0], y1 = yq[1];
    const int y[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        s0 = __dp4a(w.q[k], y[k], s0);
        s1 = __dp4a(w.q[k + 4], y[k + 4], s1);
    }
    if (T == T_Q4_0 || T == T_Q5_0 || T == T_Q6_K) {   // offset quants: q - 8, q - 16, q - 32
        int t0 = 0, t1 = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            t0 = __dp4a(0x01010101, y[k], t0);
            t1 = __dp4a(0x01010101, y[k + 4], t1);
        }
        const int off = T == T_Q4_0 ? 8 : (T == T_Q5_0 ? 16 : 32);
        if (T == T_Q6_K) return (float)(w.sc0 * (s0 - off * t0) + w.sc1 * (s1 - off * t1)) * (w.d * dy);
        return (float)(s0 + s1 - off * (t0 + t1)) * (w.d * dy);
    }
    if (T == T_Q8_0) return (float)(s0 + s1) * (w.d * dy);
    if (T == T_Q4_1 || T == T_Q5_1) return (float)(s0 + s1) * (w.d * dy) + w.m * sy;
    // Q4_K / Q5_K: d * sc * (q . y) - dmin * mn * (the group's src1 sum)
    return (float)(w.sc0 * (s0 + s1)) * (w.d * dy) - (float)w.sc1 * sy * (w.m * dy);
}

struct Args {
    const u8* x;            // src0's first byte
    const signed char* yq;  // src1 quantized: row r (dst order) at r * K
    const float* yd;        // block scales: Q8_0/Q8_1 K/32 a row, Q8_K K/256
    const float* ys;        // Q8_1 s (K/32 a row), Q8_K bsums (K/16 a row)
    float* dst;             // dst's first element
    int M, N, K, n2;        // dst ne0, ne1; K = src0 ne0; dst ne2
    int r2, r3;             // broadcast: dst batch (i2, i3) reads src0 batch (i2 / r2, i3 / r3)
    i64 xb1, xb2, xb3;      // src0 nb1..nb3 (bytes)
    i64 d0, d1, d2, d3;     // dst strides (elements)
};

// unit u's weights w times the src1 columns n0 .. n0 + NC - 1 (rows r0 ..), added into acc
template <int T, int NC>
static __device__ __forceinline__ void accumulate(const Args& p, const Unit& w, int u, i64 r0, int n0, float* acc) {
    const bool kq = T == T_Q4_K || T == T_Q5_K || T == T_Q6_K;
    const int nu = p.K >> 5;
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        if (n0 + c < p.N) {
            const i64 r = r0 + c;
            const int4* y = (const int4*)(p.yq + r * p.K + 32 * (i64)u);
            float dy, sy = 0.f;
            if (kq) {
                dy = p.yd[r * (nu >> 3) + (u >> 3)];
                if (T != T_Q6_K) sy = p.ys[r * (p.K >> 4) + 2 * u] + p.ys[r * (p.K >> 4) + 2 * u + 1];
            } else {
                dy = p.yd[r * nu + u];
                if (T == T_Q4_1 || T == T_Q5_1) sy = p.ys[r * nu + u];
            }
            acc[c] += unit_dot<T>(w, y, dy, sy);
        }
    }
}

template <int T, int NC> static __device__ __forceinline__ void mmvq(const Args& p) {
    const int lane = threadIdx.x & 31;
    const int m = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (m >= p.M) return;
    const int n0 = blockIdx.y * NC;
    const int i2 = blockIdx.z % p.n2, i3 = blockIdx.z / p.n2;
    const u8* row = p.x + m * p.xb1 + (i2 / p.r2) * p.xb2 + (i3 / p.r3) * p.xb3;
    const int nu = p.K >> 5;
    const i64 r0 = ((i64)i3 * p.n2 + i2) * p.N + n0;   // src1 row of column n0
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[c] = 0.f;
    // one unit a step (loading two before either is used measured 10-15% slower on an H200)
    for (int u = lane; u < nu; u += 32) {
        Unit w;
        load_unit<T>(row, u, w);
        accumulate<T, NC>(p, w, u, r0, n0, acc);
    }
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        float v = acc[c];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && n0 + c < p.N) p.dst[m * p.d0 + (n0 + c) * p.d1 + i2 * p.d2 + i3 * p.d3] = v;
    }
}

#define MMVQ(T, NC)                                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) mmvq_##T##_##NC(Args p) { mmvq<T, NC>(p); }
#define MMVQ_ALL(T) MMVQ(T, 1) MMVQ(T, 2) MMVQ(T, 4) MMVQ(T, 8)
MMVQ_ALL(2) MMVQ_ALL(3) MMVQ_ALL(6) MMVQ_ALL(7) MMVQ_ALL(8) MMVQ_ALL(12) MMVQ_ALL(13) MMVQ_ALL(14)

// -- src1 quantized to the vec_dot type (ggml's reference quantizers, byte for byte) ----------
// One warp a block: Q8_0 / Q8_1 (32 elements, one a lane) or Q8_K (256, eight a lane). The
// multiplies that are rounded go through __fmul_rn so they are never fused with what follows.

struct QArgs {
    const float* b;         // src1's first element
    signed char* yq;
    float* yd;
    float* ys;
    int K, N, n2, n3;       // src1 ne0..ne3
    i64 b0, b1, b2, b3;     // src1 strides (elements)
    int vdt;                // 8 Q8_0, 9 Q8_1, 15 Q8_K
};

static __device__ __forceinline__ float round_f16(float x) {   // GGML_FP32_TO_FP16 and back
    unsigned short h;
    float f;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

extern "C" __global__ void __launch_bounds__(32 * WARPS) quantize_q8(QArgs p) {
    const int lane = threadIdx.x & 31;
    const i64 w = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int span = p.vdt == 15 ? 256 : 32;
    const int per_row = p.K / span;
    const i64 rows = (i64)p.N * p.n2 * p.n3;
    if (w >= rows * per_row) return;
    const i64 r = w / per_row;
    const int blk = (int)(w % per_row);
    const int n = (int)(r % p.N), i2 = (int)((r / p.N) % p.n2), i3 = (int)(r / ((i64)p.N * p.n2));
    const float* x = p.b + n * p.b1 + i2 * p.b2 + i3 * p.b3;
    const int k0 = span * blk;
    signed char* q = p.yq + r * p.K + k0;
    if (p.vdt != 15) {
        const float v = x[(k0 + lane) * p.b0];
        float amax = fabsf(v);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = amax / 127.f;
        const float id = d != 0.f ? 1.f / d : 0.f;
        const int qi = (int)roundf(__fmul_rn(v, id));
        q[lane] = (signed char)qi;
        int s = qi;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) {
            p.yd[r * per_row + blk] = round_f16(d);
            if (p.vdt == 9) p.ys[r * per_row + blk] = round_f16(__fmul_rn((float)s, d));
        }
        return;
    }
    float v[8];
    float amax = 0.f;
    int at = 0;                    // the first element of the largest magnitude (ggml keeps the first)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        v[j] = x[(k0 + 8 * lane + j) * p.b0];
        if (fabsf(v[j]) > amax) { amax = fabsf(v[j]); at = 8 * lane + j; }
    }
    float mx = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) if (8 * lane + j == at) mx = v[j];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float a2 = __shfl_xor_sync(0xffffffffu, amax, o);
        const int at2 = __shfl_xor_sync(0xffffffffu, at, o);
        const float mx2 = __shfl_xor_sync(0xffffffffu, mx, o);
        if (a2 > amax || (a2 == amax && at2 < at)) { amax = a2; at = at2; mx = mx2; }
    }
    const i64 sb = r * per_row + blk;
    if (amax == 0.f) {
#pragma unroll
        for (int j = 0; j < 8; ++j) q[8 * lane + j] = 0;
        if (lane < 16) p.ys[sb * 16 + lane] = 0.f;
        if (lane == 0) p.yd[sb] = 0.f;
        return;
    }
    const float iscale = -127.f / mx;
    int s = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int qi = min(127, __float2int_rn(__fmul_rn(iscale, v[j])));
        q[8 * lane + j] = (signed char)qi;
        s += qi;
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);       // lanes 2j, 2j + 1: elements 16j .. 16j + 15
    if ((lane & 1) == 0) p.ys[sb * 16 + lane / 2] = (float)s;
    if (lane == 0) p.yd[sb] = 1.f / iscale;
}
