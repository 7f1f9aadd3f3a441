// MUL_MAT with a block-quantized src0 and an f32 src1 quantized to src0's vec_dot type (Q8_0 /
// Q8_1 / Q8_K, ggml's reference quantizers byte for byte): ggml's CPU semantics, the integer dot
// product of a 32-element unit with dp4a (four int8 products an instruction), scaled per block.
//
// One warp a src0 row m (R2 / R4: 2 or 4 consecutive rows, each src1 unit loaded once for them);
// its lanes walk the row's units (u = lane, lane + 32, ...), each unit's weights loaded once for
// all the src1 columns of the launch; a butterfly of shuffles sums the lanes. mmvq_T_1kS: S warps
// share the row slot and split its units (the 32-unit steps or a K-quant's tiles in turn), their
// sums added in shared memory in warp order. The 32-block types load a unit's block straight
// from global memory. The K-quants read the row in tiles of TILE_UNITS units: 16-byte
// lane-strided loads (each warp load instruction 512 contiguous bytes; the next tile in flight
// while the warp decodes this one from shared memory), so bytes that several units of a
// super-block share are read once (H200, q4_K 4096 x 14336 node: 17.4 us against 20.2 with
// per-unit loads in the same run; the same tiles for q8_0 / q4_0 measured 16% / 7% slower than
// their per-unit loads). Two forms:
//   mmvq_T_NC  src1 already quantized (quantize_q8, a launch before); NC src1 columns a warp.
//              Block WARPS row slots; grid (rows / (WARPS * R), columns / NC, ne2 * ne3).
//   mmvq_T_1kS the same for one column with WARPS / S row slots a block.
//   mmvq_T_f   one src1 column, quantized by the block itself into shared memory (one launch, not
//              two): each warp first issues the loads of its first unit, then the block quantizes
//              src1, then syncs. Every block quantizes all of src1 again (K floats from L2) and
//              waits for it at a barrier: measured slower than the two launches on an H200 even
//              at 4096 x 4096 (quant_mmvq.FUSE, off by default, says when it runs).
//              Block WARPS_FUSED rows; grid (rows / WARPS_FUSED, 1, ne2 * ne3).
// Same integer sums added in the same order: the two forms give the same floats.
// PDL (bit T of the define): mmvq_T_NC is a programmatic dependent launch after quantize_q8
// (quant_mmvq.py), so its blocks may run while src1 is still being quantized: grid_wait() comes
// before the first read of src1's quants, after the first weight loads (Q4_0's first unit, a
// K-quant's first tile) or, PDL_HEAD, at the start (Q8_0: holding its unit across the wait
// measured slower). The order of the sums is unchanged: the same floats as the plain launch.
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
// as two 16-bit loads (Q8_0, W32: as aligned 32-bit loads joined by funnel shifts, on the read-only
// path); the others as 32-bit loads (quant_mmvq.py checks the row alignment).
// 64 units of a K-quant are a multiple of 16 bytes, so a 16-byte aligned row's full tiles are
// too; other rows, and a row's last partial tile, are copied into the tile with 16-bit loads.
// Reordered rows (T_Q4_0R, T_Q4_KR below; quant_reorder.py makes them with reorder_q4_0 /
// reorder_q4_k): each unit's quants one 16-byte load (Q4_0R: two units in flight a lane, U2).
// PDLQ (bit T of the define): quantize_q8 is a programmatic dependent launch too, after whatever
// kernel is ahead of it: it waits for that kernel at its start (src1 may be its output, and the
// dot kernel it then releases reads src0 before its own wait), and T's dot kernel releases the
// grid after it at its start, so the next node's quantize_q8 is resident before this one ends.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };
// Rows reordered by reorder_q4_0 / reorder_q4_k (codes of this file's own, no ggml types), so that
// a lane's unit is one 16-byte load of quants and a warp's load 512 contiguous bytes:
//   T_Q4_0R  the 16 bytes of qs of each of the row's nu blocks, then their nu f16 d (18 nu bytes
//            rounded up to 16 a row). ggml's 18-byte blocks: nine 16-bit loads a unit, each
//            spanning 576 bytes a warp.
//   T_Q4_KR  each unit's 32 quants as Q4_0 packs them (byte j: element j low, j + 16 high: 16
//            bytes), then each unit's 6-bit scale and min as two bytes, then each super-block's
//            f16 d and dmin (18.5 nu bytes rounded up to 16 a row). ggml's: a group's quants are
//            half the nibbles of 32 bytes that its neighbour group shares (hence the tiles).
enum { T_Q4_KR = 28, T_Q4_0R = 29 };
enum { V_Q8_0 = 8, V_Q8_1 = 9, V_Q8_K = 15 };

#ifndef WARPS
#define WARPS 4
#endif
#ifndef WARPS_FUSED
#define WARPS_FUSED 8
#endif
#ifndef TILE_UNITS
#define TILE_UNITS 64      // units of a K-quant row in a warp's tile
#endif
#ifndef PDL
#define PDL 0              // bit T set: mmvq_T_NC is a programmatic dependent launch after quantize_q8
#endif
#ifndef PDLQ
#define PDLQ 0             // bit T set: quantize_q8 is a programmatic dependent launch after the kernel ahead of it
                           // (it waits for that kernel first), and T's mmvq_T_NC releases the grid after it at its start
#endif
#ifndef PDL_HEAD
#define PDL_HEAD 0         // bit T set: that kernel waits for src1 at its start, not after its first loads
#endif
#ifndef W32
#define W32 0              // bit T set (Q8_0 only): a unit's quants read as aligned 32-bit words (see load_w32)
#endif
#ifndef NCLD
#define NCLD 0             // bit T set: that type's load_w32 loads take the read-only path (ld.global.nc)
#endif
#ifndef R2
#define R2 0               // bit T set: a warp of mmvq_T_NC takes 2 consecutive rows (K-quants: a tile each)
#endif
#ifndef R4
#define R4 0               // bit T set: 4 rows a warp (over R2)
#endif
#ifndef U2
#define U2 0               // bit T set: a lane issues the loads of 2 units before using either (no tiles)
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 0       // > 0: mmvq_T_NC blocks an SM for __launch_bounds__ (caps registers)
#endif
#if MIN_BLOCKS > 0
#define BOUNDS(n) __launch_bounds__(n, MIN_BLOCKS)
#else
#define BOUNDS(n) __launch_bounds__(n)
#endif

// -- device intrinsics (tests/cuda_emu_mmvq.py swaps this section for plain C++) --
static __device__ __forceinline__ float f16(const u8* p) {     // the float16 at p (2-byte aligned)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*(const u16*)p));
    return f;
}
static __device__ __forceinline__ float round_f16(float x) {   // GGML_FP32_TO_FP16 and back
    unsigned short h;
    float f;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
static __device__ __forceinline__ uint4 ld16_global(const u8* p) {   // read-only path, 16-byte aligned
    return __ldg((const uint4*)p);
}
static __device__ __forceinline__ int4 ld16_int4(const int4* p) { return __ldg(p); }   // read-only path
static __device__ __forceinline__ float ld_f32_nc(const float* p) { return __ldg(p); }
static __device__ __forceinline__ float f16_bits(u32 h) {      // the float16 in h's low 16 bits
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
    return f;
}
static __device__ __forceinline__ float f16_nc(const u8* p) {  // f16() on the read-only path
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(__ldg((const unsigned short*)p)));
    return f;
}
static __device__ __forceinline__ u32 ld2(const u8* p) {      // 4 bytes at a 2-byte aligned address
    const u16* h = (const u16*)p;
    return (u32)h[0] | ((u32)h[1] << 16);
}
static __device__ __forceinline__ u32 ld4(const u8* p) { return *(const u32*)p; }
// load_w32's loads: the u32 at a 4-aligned p, the u16 at a 2-aligned p (nc: the read-only path)
template <bool nc> static __device__ __forceinline__ u32 ldw(const u8* p) {
    return nc ? __ldg((const unsigned int*)p) : *(const u32*)p;
}
template <bool nc> static __device__ __forceinline__ u32 ldh(const u8* p) {
    return nc ? __ldg((const unsigned short*)p) : *(const u16*)p;
}
// the 32 bits of hi:lo from bit `bits` (0 .. 31) up
static __device__ __forceinline__ u32 funnel(u32 lo, u32 hi, int bits) { return __funnelshift_r(lo, hi, bits); }
// programmatic dependent launch (sm_90): a grid launched with the programmatic-serialization
// attribute may start before the grid ahead of it in the stream ends; grid_wait() returns once
// that grid has finished and its writes are visible (at once when there is none); grid_release()
// lets the grid after this one start early. Both compile to nothing before sm_90.
static __device__ __forceinline__ void grid_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __device__ __forceinline__ void grid_release() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// -- end of device intrinsics --

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

// W32: the N words of quants at a 2-aligned p (a block's qs after its f16 d) from N aligned
// 32-bit loads and one 16-bit load joined by funnel shifts: N + 1 load instructions a lane, not
// 2N, each touching as many lines (lanes 34 bytes apart); the bytes read stay inside
// p - 2 .. p + 4N - 1, the block's own. H200, Q8_0 (N = 8) with nc, node: 9.15 / 22.41 / 23.97 us
// -> 8.46 / 20.66 / 20.94 at 4096 x 4096 / 4096 x 14336 / 14336 x 4096 (without nc 8.64 / 20.76 /
// 21.33); Q4_0 (N = 4): 6.36 / 15.83 / 15.32 -> 6.54 / 15.56 / 15.69 (with nc 6.61 / 15.59 / 16.26),
// not kept: its 40 registers become 48 (12 blocks an SM -> 10)
template <int N, bool nc> static __device__ __forceinline__ void load_w32(const u8* p, u32* q) {
    const int sh = 8 * (int)((u64)p & 2);
    const u8* a = p - ((u64)p & 2);
    u32 w[N + 1];
#pragma unroll
    for (int k = 0; k < N; ++k) w[k] = ldw<nc>(a + 4 * k);
    w[N] = ldh<nc>(p + 4 * N - 2);
#pragma unroll
    for (int k = 0; k < N; ++k) q[k] = funnel(w[k], w[k + 1], sh);
}

// ggml's get_scale_min_k4: group g's 6-bit scale and min from a Q4_K / Q5_K block's scales[12] at
// s. A macro, not a function: as a function ptxas gave the K-quant tile kernels other registers
// (64 -> 55), a change to a measured kernel that this sharing should not make
#define SCALE_MIN_K4(s, g, sc, mn)                                    \
    if ((g) < 4) {                                                    \
        sc = (s)[g] & 63;                                             \
        mn = (s)[(g) + 4] & 63;                                       \
    } else {                                                          \
        sc = ((s)[(g) + 4] & 15) | (((s)[(g) - 4] >> 6) << 4);        \
        mn = ((s)[(g) + 4] >> 4) | (((s)[g] >> 6) << 4);              \
    }

// unit u of a row of nu units (nu: only the reordered rows' scale offsets need it)
template <int T> static __device__ __forceinline__ void load_unit(const u8* row, int u, Unit& w, int nu = 0) {
    if (T == T_Q4_0R) {   // q[0..3] the packed words as loaded (unit_dot_y splits the nibbles)
        const uint4 v = ld16_global(row + 16 * (i64)u);
        w.q[0] = v.x; w.q[1] = v.y; w.q[2] = v.z; w.q[3] = v.w;
        w.d = f16_nc(row + 16 * (i64)nu + 2 * u);
        w.m = 0.f;
    } else if (T == T_Q4_KR) {   // as T_Q4_0R's words; the unit's scale and min, its super-block's d, dmin
        const uint4 v = ld16_global(row + 16 * (i64)u);
        w.q[0] = v.x; w.q[1] = v.y; w.q[2] = v.z; w.q[3] = v.w;
        const u32 sm = ldh<true>(row + 16 * (i64)nu + 2 * u);
        const u32 dd = ldw<true>(row + 18 * (i64)nu + 4 * (u >> 3));
        w.sc0 = (int)(sm & 0xFF);
        w.sc1 = (int)(sm >> 8);
        w.d = f16_bits(dd & 0xFFFF);
        w.m = f16_bits(dd >> 16);
    } else if (T == T_Q8_0 && ((W32 >> T) & 1)) {
        const u8* b = row + 34 * (i64)u;
        load_w32<8, (NCLD >> T) & 1>(b + 2, (u32*)w.q);
        w.d = f16(b);
        w.m = 0.f;
    } else if (T == T_Q4_0 || T == T_Q4_1) {
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
        SCALE_MIN_K4(s, g, sc, mn);
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

// unit w times src1's unit y (its 32 int8 quants as eight words): the share of the dot.
// dy: the src1 block scale; sy: Q8_1's s (Q4_1/Q5_1) or the group's two Q8_K bsums added.
template <int T> static __device__ __forceinline__ float unit_dot_y(const Unit& w, const int* y, float dy, float sy) {
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        // the reordered rows keep their four packed words until here: 4 registers a unit in flight, not 8
        constexpr bool packed = T == T_Q4_0R || T == T_Q4_KR;
        const int lo = packed ? w.q[k] & 0x0F0F0F0F : w.q[k];
        const int hi = packed ? (w.q[k] >> 4) & 0x0F0F0F0F : w.q[k + 4];
        s0 = __dp4a(lo, y[k], s0);
        s1 = __dp4a(hi, y[k + 4], s1);
    }
    if (T == T_Q4_0 || T == T_Q4_0R || T == T_Q5_0 || T == T_Q6_K) {   // offset quants: q - 8, q - 16, q - 32
        int t0 = 0, t1 = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            t0 = __dp4a(0x01010101, y[k], t0);
            t1 = __dp4a(0x01010101, y[k + 4], t1);
        }
        const int off = T == T_Q4_0 || T == T_Q4_0R ? 8 : (T == T_Q5_0 ? 16 : 32);
        if (T == T_Q6_K) return (float)(w.sc0 * (s0 - off * t0) + w.sc1 * (s1 - off * t1)) * (w.d * dy);
        return (float)(s0 + s1 - off * (t0 + t1)) * (w.d * dy);
    }
    if (T == T_Q8_0) return (float)(s0 + s1) * (w.d * dy);
    if (T == T_Q4_1 || T == T_Q5_1) return (float)(s0 + s1) * (w.d * dy) + w.m * sy;
    // Q4_K / Q5_K: d * sc * (q . y) - dmin * mn * (the group's src1 sum)
    return (float)(w.sc0 * (s0 + s1)) * (w.d * dy) - (float)w.sc1 * sy * (w.m * dy);
}

// src1's unit at yq (16-byte aligned) as eight words (nc: on the read-only path)
template <bool nc = false> static __device__ __forceinline__ void load_y(const int4* yq, int* y) {
    const int4 y0 = nc ? ld16_int4(yq) : yq[0], y1 = nc ? ld16_int4(yq + 1) : yq[1];
    y[0] = y0.x; y[1] = y0.y; y[2] = y0.z; y[3] = y0.w;
    y[4] = y1.x; y[5] = y1.y; y[6] = y1.z; y[7] = y1.w;
}
template <int T> static __device__ __forceinline__ float unit_dot(const Unit& w, const int4* yq, float dy, float sy) {
    int y[8];
    load_y(yq, y);
    return unit_dot_y<T>(w, y, dy, sy);
}

// -- tiles: a warp's TILE_UNITS units of its row, read into shared memory ---------------------

static __host__ __device__ constexpr int blk_bytes(int T) {
    return T == T_Q4_0 ? 18 : T == T_Q4_1 ? 20 : T == T_Q5_0 ? 22 : T == T_Q5_1 ? 24 : T == T_Q8_0 ? 34
         : T == T_Q4_K ? 144 : T == T_Q5_K ? 176 : 210;
}
// K-quant semantics (super-blocks of 8 units, Q8_K src1); tiled: read through shared-memory tiles
static __host__ __device__ constexpr bool is_kq(int T) {
    return T == T_Q4_K || T == T_Q5_K || T == T_Q6_K || T == T_Q4_KR;
}
static __host__ __device__ constexpr bool tiled(int T) { return is_kq(T) && T != T_Q4_KR; }
static __host__ __device__ constexpr int blk_units(int T) { return is_kq(T) ? 8 : 1; }
static __host__ __device__ constexpr int tile_bytes(int T) { return TILE_UNITS / blk_units(T) * blk_bytes(T); }
static __host__ __device__ constexpr int tile_words(int T) { return tile_bytes(T) / 16; }
static __host__ __device__ constexpr int lane_words(int T) { return (tile_words(T) + 31) / 32; }
static_assert(TILE_UNITS % 64 == 0, "64 units of every type are whole 16-byte words");

template <int T> static __device__ __forceinline__ void tile_load(const u8* src, uint4* r, int lane) {
#pragma unroll
    for (int i = 0; i < lane_words(T); ++i) {
        const int w = lane + 32 * i;
        if (w < tile_words(T)) r[i] = ld16_global(src + 16 * w);
    }
}
template <int T> static __device__ __forceinline__ void tile_store(u8* tile, const uint4* r, int lane) {
#pragma unroll
    for (int i = 0; i < lane_words(T); ++i) {
        const int w = lane + 32 * i;
        if (w < tile_words(T)) *(uint4*)(tile + 16 * w) = r[i];
    }
}
static __device__ __forceinline__ void tile_copy2(const u8* src, u8* tile, int bytes, int lane) {
    for (int h = lane; h < bytes / 2; h += 32) ((u16*)tile)[h] = ((const u16*)src)[h];
}

// unit u's weights of R rows, w[0 .. R - 1], times the columns 0 .. ncols - 1 of src1 quantized
// (column c: quants yq + c * sq, block scales yd + c * sd, sums ys + c * ss), added into
// acc[r * NC + c]: each src1 unit is read once for the R rows
template <int T, int NC, int R = 1>
static __device__ __forceinline__ void accumulate(const Unit* w, int u, const signed char* yq, const float* yd,
                                                  const float* ys, i64 sq, i64 sd, i64 ss, int ncols, float* acc) {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        if (c < ncols) {
            int y[8];
            constexpr bool nc = T == T_Q4_0R || T == T_Q4_KR;
            load_y<nc>((const int4*)(yq + c * sq + 32 * (i64)u), y);
            float dy, sy = 0.f;
            if (is_kq(T)) {
                dy = nc ? ld_f32_nc(yd + c * sd + (u >> 3)) : yd[c * sd + (u >> 3)];
                if (T != T_Q6_K)
                    sy = nc ? ld_f32_nc(ys + c * ss + 2 * u) + ld_f32_nc(ys + c * ss + 2 * u + 1)
                            : ys[c * ss + 2 * u] + ys[c * ss + 2 * u + 1];
            } else {
                dy = nc ? ld_f32_nc(yd + c * sd + u) : yd[c * sd + u];
                if (T == T_Q4_1 || T == T_Q5_1) sy = ys[c * ss + u];
            }
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r * NC + c] += unit_dot_y<T>(w[r], y, dy, sy);
        }
    }
}

// the nu units of the warp's R rows (row + roff[i]), tiles ks, ks + S, ...; r[i] holds row i's
// tile ks already when the rows are wide and it is a full tile. tile: R tiles of the warp.
template <int T, int NC, int R, int S>
static __device__ __forceinline__ void row_tiles(const u8* row, const i64* roff, int nu, bool wide, u8* tile,
                                                 uint4 (*r)[lane_words(T)], const signed char* yq, const float* yd,
                                                 const float* ys, i64 sq, i64 sd, i64 ss, int ncols, float* acc,
                                                 int ks, int lane) {
    const int nt = (nu + TILE_UNITS - 1) / TILE_UNITS;
    for (int t = ks; t < nt; t += S) {
        const int tu = min(TILE_UNITS, nu - t * TILE_UNITS);
#pragma unroll
        for (int i = 0; i < R; ++i) {
            u8* ti = tile + i * tile_bytes(T);
            if (wide && tu == TILE_UNITS) tile_store<T>(ti, r[i], lane);
            else tile_copy2(row + roff[i] + (i64)t * tile_bytes(T), ti, tu / blk_units(T) * blk_bytes(T), lane);
        }
        __syncwarp();
        if (wide && nu - (t + S) * TILE_UNITS >= TILE_UNITS) {
#pragma unroll
            for (int i = 0; i < R; ++i) tile_load<T>(row + roff[i] + (i64)(t + S) * tile_bytes(T), r[i], lane);
        }
#pragma unroll
        for (int j0 = 0; j0 < TILE_UNITS; j0 += 32) {
            const int j = j0 + lane;
            if (j < tu) {
                Unit w[R];
#pragma unroll
                for (int i = 0; i < R; ++i) load_unit<T>(tile + i * tile_bytes(T), j, w[i]);
                accumulate<T, NC, R>(w, t * TILE_UNITS + j, yq, yd, ys, sq, sd, ss, ncols, acc);
            }
        }
        __syncwarp();
    }
}

struct Args {
    const u8* x;            // src0's first byte
    const signed char* yq;  // src1 quantized: row r (dst order) at r * K
    const float* yd;        // block scales: Q8_0/Q8_1 K/32 a row, Q8_K K/256
    const float* ys;        // Q8_1 s (K/32 a row), Q8_K bsums (K/16 a row)
    float* dst;             // dst's first element
    const float* b;         // mmvq_T_f: src1's first element (its column 0 is quantized in the block)
    int M, N, K, n2;        // dst ne0, ne1; K = src0 ne0; dst ne2
    int r2, r3;             // broadcast: dst batch (i2, i3) reads src0 batch (i2 / r2, i3 / r3)
    i64 xb1, xb2, xb3;      // src0 nb1..nb3 (bytes)
    i64 d0, d1, d2, d3;     // dst strides (elements)
    i64 b0, b2, b3;         // mmvq_T_f: src1 strides nb0, nb2, nb3 (elements)
};

// v summed over the warp's lanes (a butterfly: every lane gets the total, in one order)
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int NC> static __device__ __forceinline__ void store_sums(const Args& p, float* acc, int m, int n0, int i2,
                                                                    int i3, int lane) {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        const float v = warp_sum(acc[c]);
        if (lane == 0 && n0 + c < p.N) p.dst[m * p.d0 + (n0 + c) * p.d1 + i2 * p.d2 + i3 * p.d3] = v;
    }
}

// rows a warp of mmvq_T_NC (R2 / R4 bits)
static __host__ __device__ constexpr int rows_of(int T) { return ((R4 >> T) & 1) ? 4 : ((R2 >> T) & 1) ? 2 : 1; }

// S warps of a block share a row slot and split its units (warp ks takes the units u with
// (u / 32) % S == ks, or a K-quant's tiles t with t % S == ks); their sums meet in shared memory
// after the tiles and are added in warp order by the slot's first warp. More warps in flight
// where M alone gives too few (M = 4096: 31 warps an SM of an H200); the floats differ from
// S = 1's by the order of the float sums.
template <int T, int NC, int S = 1> static __device__ __forceinline__ void mmvq(const Args& p) {
    constexpr int R = rows_of(T);
    static_assert(WARPS % S == 0, "S must divide WARPS");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ks = warp % S;
    const int m0 = (blockIdx.x * (WARPS / S) + warp / S) * R;    // the warp's first row
    // PDLQ: the next node's quantize_q8 may launch now (it waits for this grid before it reads or writes)
    if ((PDLQ >> T) & 1) grid_release();
    if (S == 1 && m0 >= p.M) return;
    const bool live = m0 < p.M;                                  // (S > 1: every warp reaches the barrier)
    const int n0 = blockIdx.y * NC;
    const int i2 = blockIdx.z % p.n2, i3 = blockIdx.z / p.n2;
    const u8* row = p.x + min(m0, p.M - 1) * p.xb1 + (i2 / p.r2) * p.xb2 + (i3 / p.r3) * p.xb3;
    // row r of the warp's R: rows past the last read the last one again (their sums are dropped)
    i64 roff[R];
#pragma unroll
    for (int r = 0; r < R; ++r) roff[r] = (i64)max(0, min(r, p.M - 1 - m0)) * p.xb1;
    const int nu = p.K >> 5;
    const i64 nd = is_kq(T) ? p.K >> 8 : nu, ns = is_kq(T) ? p.K >> 4 : nu;
    const i64 r0 = ((i64)i3 * p.n2 + i2) * p.N + n0;   // src1 row of column n0
    const signed char* yq = p.yq + r0 * p.K;
    const float *yd = p.yd + r0 * nd, *ys = p.ys + r0 * ns;
    const int ncols = min(NC, p.N - n0);
    // PDL: this grid may start while quantize_q8 still writes src1's quants; grid_wait() before
    // the first read of them (after the first weight loads are issued, unless PDL_HEAD)
    constexpr bool pdl = (PDL >> T) & 1, head = (PDL_HEAD >> T) & 1;
    if (pdl && head) grid_wait();
    float acc[R * NC];
#pragma unroll
    for (int c = 0; c < R * NC; ++c) acc[c] = 0.f;
    extern __shared__ __align__(16) u8 smem[];
    if constexpr (tiled(T)) {
        // K-quants through shared-memory tiles: a unit's own loads would read its super-block's
        // shared bytes again (qs for two units, Q5_K's qh for eight, Q6_K's ql / qh for two / four)
        const bool wide = ((u64)row & 15) == 0 && (R == 1 || (p.xb1 & 15) == 0);
        uint4 r[R][lane_words(T)];
        if (live && wide && nu >= (ks + 1) * TILE_UNITS) {
#pragma unroll
            for (int i = 0; i < R; ++i) tile_load<T>(row + roff[i] + (i64)ks * tile_bytes(T), r[i], lane);
        }
        if (pdl && !head) grid_wait();
        if (live)
            row_tiles<T, NC, R, S>(row, roff, nu, wide, smem + warp * R * tile_bytes(T), r, yq, yd, ys, p.K, nd, ns,
                                   ncols, acc, ks, lane);
    } else {
        // U units (of each of the R rows) a step, their loads issued before any is used, added
        // in unit order (the same floats for any U). U = 2 only where U2 says: on ggml's
        // 18-byte Q4_0 blocks two in flight measured 10-15% slower on an H200 than one; on the
        // reordered Q4_0 rows (T_Q4_0R) faster (see quant_reorder.py)
        // (not with 8 columns: each unit's loads serve eight dots there, and Q4_KR's would spill)
        constexpr int U = ((U2 >> T) & 1) && NC < 8 ? 2 : 1;
        // the lane's k-th unit: warp ks of S takes CH 32-unit steps in turn. T_Q4_KR: CH = a
        // tile's, the split of Q4_K's tiled kernel (with the same rows and split it adds in the
        // same order); H200 node, Q4_KR with R2 and K2: 5.79 / 13.37 / 12.89 us against 6.18 /
        // 14.22 / 13.42 with single 32-unit steps (4096 x 4096 / 4096 x 14336 / 14336 x 4096)
        constexpr int CH = T == T_Q4_KR ? TILE_UNITS / 32 : 1;
        auto unit_of = [&](int k) { return lane + 32 * ((k / CH) * S * CH + ks * CH + k % CH); };
        auto step = [&](int k, bool wait) {
            Unit w[U][R];
#pragma unroll
            for (int j = 0; j < U; ++j)
                if (unit_of(k + j) < nu) {
#pragma unroll
                    for (int r = 0; r < R; ++r) load_unit<T>(row + roff[r], unit_of(k + j), w[j][r], nu);
                }
            if (wait) grid_wait();
#pragma unroll
            for (int j = 0; j < U; ++j)
                if (unit_of(k + j) < nu)
                    accumulate<T, NC, R>(w[j], unit_of(k + j), yq, yd, ys, p.K, nd, ns, ncols, acc);
        };
        int k = 0;
        // PDL: the first units in flight while quantize_q8 finishes (the wait kept out of the loop:
        // inside it, its memory clobber kept the loop's loads from being hoisted)
        if constexpr (pdl && !head) {
            if (live && unit_of(0) < nu) step(0, true);
            k += U;
        }
        for (; live && unit_of(k) < nu; k += U) step(k, false);
    }
    if constexpr (S > 1) {
        // the warp's sums, then the slot's S partials added in warp order (after the tiles)
        float* part = (float*)(smem + (tiled(T) ? WARPS * R * tile_bytes(T) : 0));
#pragma unroll
        for (int c = 0; c < R * NC; ++c) {
            const float v = warp_sum(acc[c]);
            if (lane == 0) part[warp * R * NC + c] = v;
        }
        __syncthreads();
        if (ks != 0 || lane != 0 || !live) return;
#pragma unroll
        for (int c = 0; c < R * NC; ++c) {
            float v = part[warp * R * NC + c];
#pragma unroll
            for (int k = 1; k < S; ++k) v += part[(warp + k) * R * NC + c];
            const int m = m0 + c / NC, n = n0 + c % NC;
            if (m < p.M && n < p.N) p.dst[m * p.d0 + n * p.d1 + i2 * p.d2 + i3 * p.d3] = v;
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; ++r)
            if (m0 + r < p.M) store_sums<NC>(p, acc + r * NC, m0 + r, n0, i2, i3, lane);
    }
}

// -- src1 quantized to the vec_dot type (ggml's reference quantizers, byte for byte) ----------
// The multiplies that are rounded go through __fmul_rn so they are never fused with what follows.
// Both are called by every lane of a warp (the shuffles take the whole warp).

// Q8_0 / Q8_1: four lanes a 32-block (lane 4b + j: elements 8j .. 8j + 7 of the warp's block b);
// `ok` false on lanes past the last block (they read and write nothing)
static __device__ __forceinline__ void q8_32(const float* x, i64 b0, bool ok, bool q81, signed char* q, float* yd,
                                             float* ys, int lane) {
    const int part = lane & 3;
    float v[8];
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        v[j] = ok ? x[(8 * part + j) * b0] : 0.f;
        amax = fmaxf(amax, fabsf(v[j]));
    }
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    int s = 0;
    u32 w0 = 0, w1 = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int qi = (int)roundf(__fmul_rn(v[j], id));
        s += qi;
        if (j < 4) w0 |= (u32)(qi & 0xFF) << (8 * j);
        else w1 |= (u32)(qi & 0xFF) << (8 * (j - 4));
    }
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    if (ok) {
        *(uint2*)(q + 8 * part) = make_uint2(w0, w1);
        if (part == 0) {
            *yd = round_f16(d);
            if (q81) *ys = round_f16(__fmul_rn((float)s, d));
        }
    }
}

// Q8_K: one warp a 256-element super-block, eight elements a lane; bs: its 16 sums
static __device__ __forceinline__ void q8_256(const float* x, i64 b0, signed char* q, float* yd, float* bs, int lane) {
    float v[8];
    float amax = 0.f;
    int at = 0;                    // the first element of the largest magnitude (ggml keeps the first)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        v[j] = x[(8 * lane + j) * b0];
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
    if (amax == 0.f) {
        *(uint2*)(q + 8 * lane) = make_uint2(0, 0);
        if (lane < 16) bs[lane] = 0.f;
        if (lane == 0) *yd = 0.f;
        return;
    }
    const float iscale = -127.f / mx;
    int s = 0;
    u32 w0 = 0, w1 = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int qi = min(127, __float2int_rn(__fmul_rn(iscale, v[j])));
        s += qi;
        if (j < 4) w0 |= (u32)(qi & 0xFF) << (8 * j);
        else w1 |= (u32)(qi & 0xFF) << (8 * (j - 4));
    }
    *(uint2*)(q + 8 * lane) = make_uint2(w0, w1);
    s += __shfl_xor_sync(0xffffffffu, s, 1);       // lanes 2j, 2j + 1: elements 16j .. 16j + 15
    if ((lane & 1) == 0) bs[lane / 2] = (float)s;
    if (lane == 0) *yd = 1.f / iscale;
}

struct QArgs {
    const float* b;         // src1's first element
    signed char* yq;
    float* yd;
    float* ys;
    int K, N, n2, n3;       // src1 ne0..ne3
    i64 b0, b1, b2, b3;     // src1 strides (elements)
    int vdt;                // 8 Q8_0, 9 Q8_1, 15 Q8_K
};

// src1 row r (dst order: r = (i3 * ne2 + i2) * ne1 + n) into the workspace: a warp eight 32-blocks
// (Q8_0 / Q8_1) or one super-block (Q8_K); grid: enough warps of WARPS-warp blocks
extern "C" __global__ void __launch_bounds__(32 * WARPS) quantize_q8(QArgs p) {
    // PDLQ: launched before the kernel ahead of it ended: wait for it (whose writes src1 may be)
    // before this grid reads, writes or lets the dot kernel start (that reads src0 before its own
    // wait, so src0's writers must have ended first)
    if (PDLQ) grid_wait();
    if (PDL) grid_release();        // the dot kernel may start now; it waits for these writes
    const int lane = threadIdx.x & 31;
    const i64 w = (i64)blockIdx.x * WARPS + (threadIdx.x >> 5);
    const int span = p.vdt == V_Q8_K ? 256 : 32;
    const int per_row = p.K / span;
    const i64 total = (i64)p.N * p.n2 * p.n3 * per_row;
    const i64 g = p.vdt == V_Q8_K ? w : 8 * w + (lane >> 2);     // this lane's block
    if ((p.vdt == V_Q8_K ? w : 8 * w) >= total) return;          // (whole warps)
    const bool ok = g < total;
    const i64 r = ok ? g / per_row : 0;
    const int blk = ok ? (int)(g % per_row) : 0;
    const int n = (int)(r % p.N), i2 = (int)((r / p.N) % p.n2), i3 = (int)(r / ((i64)p.N * p.n2));
    const float* x = p.b + n * p.b1 + i2 * p.b2 + i3 * p.b3 + (i64)span * blk * p.b0;
    signed char* q = p.yq + r * p.K + span * blk;
    const i64 sb = r * per_row + blk;
    if (p.vdt == V_Q8_K) q8_256(x, p.b0, q, p.yd + sb, p.ys + 16 * sb, lane);
    else q8_32(x, p.b0, ok, p.vdt == V_Q8_1, q, p.yd + sb, p.ys + sb, lane);
}

// -- one src1 column quantized in the block, then the dot products (one launch) ---------------
// Shared memory: src1's K quants, its block scales, its sums.

template <int T> static __device__ __forceinline__ void mmvq_fused(const Args& p) {
    extern __shared__ __align__(16) u8 smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int m = blockIdx.x * WARPS_FUSED + warp;
    const int i2 = blockIdx.z % p.n2, i3 = blockIdx.z / p.n2;
    const int nu = p.K >> 5;
    const int nd = is_kq(T) ? p.K >> 8 : nu;
    signed char* sq = (signed char*)smem;
    float* sd = (float*)(sq + p.K);
    float* ss = sd + nd;
    const bool live = m < p.M;                   // (a warp past the last row still quantizes)
    const u8* row = p.x + m * p.xb1 + (i2 / p.r2) * p.xb2 + (i3 / p.r3) * p.xb3;
    Unit w0;
    if (live && lane < nu) load_unit<T>(row, lane, w0, nu);          // in flight while src1 is quantized
    const float* x = p.b + i2 * p.b2 + i3 * p.b3;
    if (is_kq(T)) {
        for (int sb = warp; sb < nd; sb += WARPS_FUSED)
            q8_256(x + 256 * sb * p.b0, p.b0, sq + 256 * sb, sd + sb, ss + 16 * sb, lane);
    } else {
        for (int b8 = 8 * warp; b8 < nu; b8 += 8 * WARPS_FUSED) {
            const int blk = b8 + (lane >> 2);
            const bool ok = blk < nu;
            q8_32(x + 32 * (ok ? blk : 0) * p.b0, p.b0, ok, T == T_Q4_1 || T == T_Q5_1, sq + 32 * blk, sd + blk,
                  ss + blk, lane);
        }
    }
    __syncthreads();
    if (!live) return;
    float acc[1] = {0.f};
    if (lane < nu) accumulate<T, 1>(&w0, lane, sq, sd, ss, 0, 0, 0, 1, acc);
    for (int u = lane + 32; u < nu; u += 32) {     // the rest as mmvq<T, 1> does
        Unit w;
        load_unit<T>(row, u, w, nu);
        accumulate<T, 1>(&w, u, sq, sd, ss, 0, 0, 0, 1, acc);
    }
    store_sums<1>(p, acc, m, 0, i2, i3, lane);
}

// -- Q4_0 / Q4_K rows into the reordered layouts T_Q4_0R / T_Q4_KR ------------------------------

struct RArgs {
    const u8* src;          // the Q4_0 / Q4_K tensor's first byte
    u8* dst;                // the reordered copy: row r = (i3 * n2 + i2) * n1 + i1 at r * drow
    int nu, n1, n2, n3;     // 32-element units a row; ne1..ne3
    i64 s1, s2, s3;         // the tensor's nb1..nb3 (bytes)
    i64 drow;               // bytes a reordered row (quant_reorder.row_bytes)
};

// one thread a block: its qs to dst row + 16 u (one 16-byte store), its d to dst row + 16 nu + 2 u
extern "C" __global__ void __launch_bounds__(256) reorder_q4_0(RArgs p) {
    const i64 t = (i64)blockIdx.x * 256 + threadIdx.x;
    if (t >= (i64)p.nu * p.n1 * p.n2 * p.n3) return;
    const int u = (int)(t % p.nu);
    const i64 r = t / p.nu;
    const int i1 = (int)(r % p.n1), i2 = (int)((r / p.n1) % p.n2), i3 = (int)(r / ((i64)p.n1 * p.n2));
    const u8* b = p.src + i1 * p.s1 + i2 * p.s2 + i3 * p.s3 + 18 * (i64)u;
    u8* row = p.dst + r * p.drow;
    const u16* h = (const u16*)b;
    uint4 v;
    v.x = (u32)h[1] | ((u32)h[2] << 16);
    v.y = (u32)h[3] | ((u32)h[4] << 16);
    v.z = (u32)h[5] | ((u32)h[6] << 16);
    v.w = (u32)h[7] | ((u32)h[8] << 16);
    *(uint4*)(row + 16 * (i64)u) = v;
    *(u16*)(row + 16 * (i64)p.nu + 2 * u) = h[0];
}

// one thread a unit u (group g = u % 8 of super-block u / 8): its 32 nibbles packed as Q4_0 packs
// a block's, at dst row + 16 u; its 6-bit scale and min (get_scale_min_k4) at dst row + 16 nu +
// 2 u; the thread of group 0 copies the super-block's d and dmin to dst row + 18 nu + 4 (u / 8).
// Source rows 4-byte aligned (32-bit loads); drow = 18.5 nu rounded up to 16.
extern "C" __global__ void __launch_bounds__(256) reorder_q4_k(RArgs p) {
    const i64 t = (i64)blockIdx.x * 256 + threadIdx.x;
    if (t >= (i64)p.nu * p.n1 * p.n2 * p.n3) return;
    const int u = (int)(t % p.nu), g = u & 7, shift = 4 * (g & 1);
    const i64 r = t / p.nu;
    const int i1 = (int)(r % p.n1), i2 = (int)((r / p.n1) % p.n2), i3 = (int)(r / ((i64)p.n1 * p.n2));
    const u8* b = p.src + i1 * p.s1 + i2 * p.s2 + i3 * p.s3 + 144 * (i64)(u >> 3);
    const u32* qs = (const u32*)(b + 16 + 32 * (g >> 1));
    u8* row = p.dst + r * p.drow;
    u32 o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = ((qs[k] >> shift) & 0x0F0F0F0F) | (((qs[k + 4] >> shift) & 0x0F0F0F0F) << 4);
    uint4 v;
    v.x = o[0]; v.y = o[1]; v.z = o[2]; v.w = o[3];
    *(uint4*)(row + 16 * (i64)u) = v;
    const u8* s = b + 4;
    int sc, mn;
    SCALE_MIN_K4(s, g, sc, mn);
    *(u16*)(row + 16 * (i64)p.nu + 2 * u) = (u16)(sc | (mn << 8));
    if (g == 0) *(u32*)(row + 18 * (i64)p.nu + 4 * (u >> 3)) = *(const u32*)b;
}

#define MMVQ(T, NC)                                                                                 \
    extern "C" __global__ void BOUNDS(32 * WARPS) mmvq_##T##_##NC(Args p) { mmvq<T, NC>(p); }
#define MMVQ_K(T, NC, S)                                                                            \
    extern "C" __global__ void BOUNDS(32 * WARPS) mmvq_##T##_##NC##k##S(Args p) { mmvq<T, NC, S>(p); }
#define MMVQ_F(T)                                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * WARPS_FUSED) mmvq_##T##_f(Args p) { mmvq_fused<T>(p); }
#define MMVQ_ALL(T) MMVQ(T, 1) MMVQ(T, 2) MMVQ(T, 4) MMVQ(T, 8) MMVQ_K(T, 1, 2) MMVQ_K(T, 1, 4) MMVQ_F(T)
#ifdef MMVQ_INSTANCES
MMVQ_INSTANCES
#else
MMVQ_ALL(2) MMVQ_ALL(3) MMVQ_ALL(6) MMVQ_ALL(7) MMVQ_ALL(8) MMVQ_ALL(12) MMVQ_ALL(13) MMVQ_ALL(14)
MMVQ_ALL(28) MMVQ_ALL(29)
#endif
