// FLASH_ATTN_EXT chunk and combine kernels in CUDA C++ for f16, Q8_0 or Q4_0 K/V (sm_80+),
// compiled at run time by NVRTC (attention_mma.py). Same split-KV plan, partials and combine as
// attention.py.
//
// Compile-time shape (-D): DK, DV (head sizes, % 16 / % 32), BN (kv rows a tile), STAGES (tiles
// in shared memory), WARPS, SHARE (1: V is K's columns [v_off, v_off + DV), read from the K tile),
// KVT (K/V type, ggml's enum: 0 f16, 8 Q8_0, 2 Q4_0), and for a quantized cache CW (bytes a
// cp.async of a raw row: 4, 8 or 16) and PACKED (1: a tile's rows are one contiguous run of
// bytes, copied in 16-byte pieces across row ends).
//
// A quantized cache: cp.async brings a tile's raw block bytes (a Q8_0 row of 576 values is 18
// blocks x 34 bytes, not a multiple of 16) into STAGES raw stages; once a stage landed, the block
// decodes it into the one f16 K (and V) tile the mma's read: d * q exactly in f32, rounded once
// to f16. q is rounded to Q8_0 values first (quantize_row_q8_0's arithmetic, as ggml's CPU does
// for a quantized K), then scaled and rounded to f16 like the f16 path's q.
//
// One block = (kv chunk, 16 rows of one K head, ne3). Rows are the (query row, head) pairs of a
// GQA/MQA group: row r is query row r / G of head ik2 * G + r % G (MLA: the 16 heads of the one
// latent head). Per tile of BN kv rows:
//   load     K (and V when it is not a view of K) rows go global -> shared with cp.async, STAGES
//            tiles deep, so 1..STAGES-1 tiles are in flight while one is computed.
//   S = QK^T each warp owns BN / WARPS kv columns over the full DK: A = q (f16, pre-scaled, in
//            shared memory), B = the K tile, both through ldmatrix; mma.sync m16n8k16, f32 sums.
//   softmax  softcap, slope * mask, row max across warps (shared memory), P = exp(S - m) as f16
//            into shared memory; each warp keeps the row sums of its own columns.
//   O += PV  each warp owns DV / WARPS output columns: A = P, B = the V tile (ldmatrix.trans).
// SPLITK (attention_mma.py: f16 MLA, DK 576 with V a view of K) splits S over DK instead: warp w
// owns k-steps [w KPW, (w+1) KPW) of every kv column, its q fragments held in registers for the
// whole chunk (no q reads from shared memory a tile); the warps' partial S go through shared
// memory and every warp sums all of them in the same order, so each holds the full scores: row
// maxima by quad shuffles, P kept in registers as the A fragments of O += PV (an mma's C layout
// is the next one's A layout). Two barriers a tile instead of three; P skips shared memory.
// Index arithmetic is 32-bit inside a head (the planner checks the extents), 64-bit only for the
// per-block base pointers.
//
// Tensor slots in `meta` (int64, common.py): s*9 + 0 element offset, 1..4 ne, 5..8 element strides.
// Slots: 0 dst f32, 1 q f32, 2 k f16, 3 v f16, 4 mask f16/f32, 5 sinks f32.

#ifndef DK
#define DK 128
#endif
#ifndef DV
#define DV 128
#endif
#ifndef BN
#define BN 64
#endif
#ifndef STAGES
#define STAGES 3
#endif
#ifndef WARPS
#define WARPS 4
#endif
#ifndef SHARE
#define SHARE 0
#endif
#ifndef MIN_BLOCKS
#define MIN_BLOCKS 1
#endif
#ifndef KVT
#define KVT 0
#endif
#ifndef CW
#define CW 16
#endif
#ifndef PACKED
#define PACKED 0
#endif
#ifndef SPLITK
#define SPLITK 0
#endif

typedef unsigned int u32;
typedef unsigned short u16;
typedef long long i64;

#define NT (WARPS * 32)
#define ROWS 16
#define QS (DK + 8)              // row strides (halfs) of the shared tiles: 16 bytes of padding
#define KS (DK + 8)              // make 8 consecutive rows hit distinct banks for ldmatrix
#define VS (DV + 8)
#define PS (BN + 8)
#define NT_S (BN / 8 / WARPS)    // S n-tiles (8 kv columns) a warp owns
#define NT_O (DV / 8 / WARPS)    // O n-tiles (8 output columns) a warp owns
#define SLOT 9

static_assert(DK % 16 == 0 && DV % (8 * WARPS) == 0, "head sizes");
static_assert(BN % ((SPLITK ? 1 : 8) * WARPS) == 0 && BN % 16 == 0, "tile");
static_assert(STAGES >= 2 && ROWS % WARPS == 0, "stages, warps");
#if SPLITK
#define KPW (DK / 16 / WARPS)    // S k-steps a warp owns
#define NT_F (BN / 8)            // S n-tiles of the whole tile, in every warp
static_assert((DK / 16) % WARPS == 0, "SPLITK: DK's k-steps split evenly over the warps");
#endif

#if KVT == 8
#define QBB 34                   // bytes a block: f16 d, 32 int8
#elif KVT == 2
#define QBB 18                   // f16 d, 16 bytes of nibbles
#elif KVT != 0
#error "KVT: 0 (f16), 2 (Q4_0) or 8 (Q8_0)"
#endif
#if KVT
#define RBK (DK / 32 * QBB)      // raw bytes of a K row, a V row
#define RBV (DV / 32 * QBB)
#define RAWK (BN * RBK)          // raw bytes of a tile (a multiple of 16: BN % 16 == 0, QBB even)
#define RAWV (SHARE ? 0 : BN * RBV)
#define FTILES 1                 // f16 tiles: the one the raw stage decodes into
typedef unsigned char KT;        // K/V element pointers step in bytes (meta in bytes)
static_assert(DK % 32 == 0 && DV % 32 == 0 && RBK % CW == 0 && (SHARE || RBV % CW == 0), "blocks");
#else
#define RAWK 0
#define RAWV 0
#define FTILES STAGES
typedef u16 KT;
#endif

// shared memory layout (bytes); attention_mma.py's smem_bytes() mirrors it
// SPLITK: the warps' partial S tiles (f32 C fragments) reuse the q region once q is in registers
#define SM_QB (ROWS * QS * 2 > SPLITK * WARPS * BN * 64 ? ROWS * QS * 2 : SPLITK * WARPS * BN * 64)
#define SM_Q 0
#define SM_K (SM_Q + SM_QB)
#define SM_V (SM_K + FTILES * BN * KS * 2)
#define SM_R (SM_V + (SHARE ? 0 : FTILES * BN * VS * 2))
#define SM_P (SM_R + STAGES * (RAWK + RAWV))
#define SM_MAX (SM_P + ROWS * PS * 2)
#define SM_L (SM_MAX + WARPS * ROWS * 4)
#define SM_TOTAL (SM_L + WARPS * ROWS * 4)

// -- PTX intrinsics (tests/cuda_emu replaces this section to run the kernels on the CPU) --
__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void cp16(u32 dst, const void* src, bool ok) {
    // 16 bytes global -> shared, bypassing L1; ok == false fills zeros (rows past the chunk)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(ok ? 16 : 0));
}

__device__ __forceinline__ void cp16n(u32 dst, const void* src, int n) {
    // 16 bytes global -> shared of which the first n (0..16) are read, the rest zero-filled
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(n));
}

__device__ __forceinline__ void cpw(u32 dst, const void* src, bool ok) {
    // CW (4, 8 or 16) bytes global -> shared through L1 (the raw rows of a quantized cache)
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" :: "r"(dst), "l"(src), "n"(CW), "r"(ok ? CW : 0));
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N)); }

__device__ __forceinline__ void ldm_x4(u32 a, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}

__device__ __forceinline__ void ldm_x2(u32 a, u32& r0, u32& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(a));
}

__device__ __forceinline__ void ldm_x4t(u32 a, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}

__device__ __forceinline__ void ldm_x2t(u32 a, u32& r0, u32& r1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(a));
}

__device__ __forceinline__ void mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;\n" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 r;
    asm("sub.rn.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// -- end of PTX intrinsics --

#define LOG2E 1.4426950408889634f
#define NEG_INF (-__int_as_float(0x7f800000))

// exp(s - m): 0 for s = -inf (also when m = -inf)
__device__ __forceinline__ float pexp(float s, float m) { return s == NEG_INF ? 0.0f : ex2((s - m) * LOG2E); }

// the online softmax's factor for a running max m -> n (1 while the row has seen nothing); m = n
__device__ __forceinline__ float max_shift(float& m, float n) {
    const float f = n == NEG_INF ? 1.0f : ex2((m - n) * LOG2E);
    m = n;
    return f;
}

// the warp's output accumulators (rows g and g + 8 of each n-tile) times their rows' factors
__device__ __forceinline__ void rescale_o(float (&o)[NT_O][4], float fa, float fb) {
#pragma unroll
    for (int i = 0; i < NT_O; ++i) {
        o[i][0] *= fa;
        o[i][1] *= fa;
        o[i][2] *= fb;
        o[i][3] *= fb;
    }
}

// V's tile of stage ft in shared memory and its row stride vs (halves): K's own tile (sk) when V
// is a view of K
__device__ __forceinline__ u32 v_tile(u32 sk, u32 s_base, int ft, int& vs) {
#if SHARE
    vs = KS;
    return sk;
#else
    vs = VS;
    return s_base + SM_V + ft * (BN * VS * 2);
#endif
}

// O += P V for k-step kk of the tile (16 kv rows): P's A fragment a0..a3, V rows from sv (row
// stride vs), the warp's output columns at v_lane
__device__ __forceinline__ void pv_step(float (&o)[NT_O][4], u32 a0, u32 a1, u32 a2, u32 a3, u32 sv, u32 v_lane,
                                        int vs, int kk) {
#if NT_O % 2 == 0
#pragma unroll
    for (int np = 0; np < NT_O / 2; ++np) {
        u32 b0, b1, b2, b3;
        ldm_x4t(sv + v_lane + (kk * 16 * vs + np * 16) * 2, b0, b1, b2, b3);
        mma(o[2 * np], a0, a1, a2, a3, b0, b1);
        mma(o[2 * np + 1], a0, a1, a2, a3, b2, b3);
    }
#else
#pragma unroll
    for (int nt = 0; nt < NT_O; ++nt) {
        u32 b0, b1;
        ldm_x2t(sv + v_lane + (kk * 16 * vs + nt * 8) * 2, b0, b1);
        mma(o[nt], a0, a1, a2, a3, b0, b1);
    }
#endif
}

__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

__device__ __forceinline__ float slope_of(int h, float max_bias, float m0, float m1, int n_log2) {
    if (max_bias <= 0.0f) return 1.0f;
    return h < n_log2 ? powf(m0, (float)(h + 1)) : powf(m1, (float)(2 * (h - n_log2) + 1));
}

#if KVT
// f16 rounding of x (a Q8_0 block scale is kept as f16)
__device__ __forceinline__ float f16r(float x) { return h2f((u16)(pack_h2(x, 0.0f) & 0xffffu)); }

// elements i, i + 1 (i even, < 32) of the block at blk as an f16 pair, d * q rounded once to f16.
// No int -> float conversions (a quarter-rate instruction): each quant byte becomes the low byte
// of the f16 1024 + byte (prmt), 1024 + offset is subtracted exactly, and one f16x2 multiply by
// (d, d) rounds the exact product d * q, which gives the same f16 as rounding it from f32.
__device__ __forceinline__ u32 deq_pair(const unsigned char* blk, int i) {
    const u32 d = *(const u16*)blk;
    const u32 d2 = d | (d << 16);
#if KVT == 8
    const u32 two = *(const u16*)(blk + 2 + i);
    const u32 h = prmt(two ^ 0x8080u, 0x64646464u, 0x4140u);      // halves 1024 + (q + 128)
    return hmul2(hsub2(h, 0x64806480u), d2);                        // - 1152: q, exact
#else
    const u32 two = *(const u16*)(blk + 2 + (i & 15));             // i < 16: low nibbles, else high
    const u32 h = prmt((two >> (i >= 16 ? 4 : 0)) & 0x0f0fu, 0x64646464u, 0x4140u);   // 1024 + q
    return hmul2(hsub2(h, 0x64086408u), d2);                        // - 1032: q - 8, exact
#endif
}

// a raw tile (BN rows of RB bytes) decoded into an f16 tile of row stride S halfs, D values a row
template <int D, int RB, int S>
__device__ __forceinline__ void decode_tile(const unsigned char* raw, u32* tile, int tid) {
#pragma unroll 4
    for (int idx = tid; idx < BN * D / 2; idx += NT) {
        const int rr = idx / (D / 2), c = idx % (D / 2);
        tile[rr * (S / 2) + c] = deq_pair(raw + rr * RB + (c / 16) * QBB, 2 * (c % 16));
    }
}

// raw rows jt .. jt + BN - 1 (row stride ld bytes) into shared memory at dst, RB bytes a row;
// rows at or past j_hi are zero-filled (d = 0: their values are 0, their scores masked)
template <int RB>
__device__ __forceinline__ void load_raw(u32 dst, const unsigned char* base, int ld, int jt, int j_lo, int j_hi,
                                         int tid) {
#if PACKED
    // ld == RB and the tile starts 16-byte aligned: one contiguous run of BN * RB bytes
    const int valid = (min(j_hi, jt + BN) - jt) * RB;
    const unsigned char* src = base + jt * RB;
#pragma unroll
    for (int p = tid; p < BN * RB / 16; p += NT) {
        const int n = min(16, max(0, valid - 16 * p));
        cp16n(dst + 16 * p, n ? src + 16 * p : src, n);
    }
#else
    const int w = tid >> 5, lane = tid & 31;
#pragma unroll
    for (int i = 0; i < BN / WARPS; ++i) {
        const int rr = i * WARPS + w;
        const bool ok = jt + rr < j_hi;
        const unsigned char* src = base + (ok ? jt + rr : j_lo) * ld;
#pragma unroll
        for (int cc = lane; cc < RB / CW; cc += 32) cpw(dst + rr * RB + cc * CW, src + cc * CW, ok);
    }
#endif
}
#endif

__device__ __forceinline__ float mask_at(const void* mask, int mask_f32, i64 i) {
    return mask_f32 ? ((const float*)mask)[i] : h2f(((const u16*)mask)[i]);
}

extern "C" __global__ void __launch_bounds__(NT, MIN_BLOCKS)
fa_mma_chunk(const i64* __restrict__ meta, const float* __restrict__ q, const void* __restrict__ k_,
             const void* __restrict__ v_, const void* __restrict__ mask, float* __restrict__ part,
             float scale, float max_bias, float softcap, float m0, float m1, int n_log2,
             int has_mask, int mask_f32, int v_off, int chunk, int n_parts)
{
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;

    const int dv = (int)meta[1];
    const int n_head = (int)meta[2], n_q = (int)meta[3], n3 = (int)meta[4];
    const int n_kv = (int)meta[2 * SLOT + 2];
    const int G = n_head / (int)meta[2 * SLOT + 3];
    const int n_rows = G * n_q;
    const int n_rg = (n_rows + ROWS - 1) / ROWS;
    const int ik2 = blockIdx.y / n_rg;
    const int r0 = (blockIdx.y % n_rg) * ROWS;
    const int i3 = blockIdx.z;

    const KT* k = (const KT*)k_;
    const KT* kb = k + meta[2 * SLOT] + ik2 * meta[2 * SLOT + 7] + (i3 / (n3 / (int)meta[2 * SLOT + 4])) * meta[2 * SLOT + 8];
    const int k1 = (int)meta[2 * SLOT + 6];
#if !SHARE
    const KT* v = (const KT*)v_;
    const KT* vb = v + meta[3 * SLOT] + ik2 * meta[3 * SLOT + 7] + (i3 / (n3 / (int)meta[3 * SLOT + 4])) * meta[3 * SLOT + 8];
    const int v1 = (int)meta[3 * SLOT + 6];
#endif

    const int j_lo = blockIdx.x * chunk;
    const int j_hi = min(n_kv, j_lo + chunk);
    const int n_tiles = (j_hi - j_lo + BN - 1) / BN;

    const u32 s_base = smem_addr(smem);

    // one tile's rows into stage st, a warp a row (coalesced 16-byte pieces); rows past the
    // chunk are zero-filled (their scores are masked, and 0 * garbage could be NaN)
    auto load_tile = [&](int t, int st) {
        const int jt = j_lo + t * BN;
#if KVT
        const u32 raw = s_base + SM_R + st * (RAWK + RAWV);
        load_raw<RBK>(raw, kb, k1, jt, j_lo, j_hi, tid);
#if !SHARE
        load_raw<RBV>(raw + RAWK, vb, v1, jt, j_lo, j_hi, tid);
#endif
#else
        const u32 sk = s_base + SM_K + st * (BN * KS * 2);
#pragma unroll
        for (int i = 0; i < BN / WARPS; ++i) {
            const int rr = i * WARPS + w;
            const bool ok = jt + rr < j_hi;
            const u16* src = kb + (ok ? jt + rr : j_lo) * k1;
#pragma unroll
            for (int cc = lane; cc < DK / 8; cc += 32) cp16(sk + (rr * KS + cc * 8) * 2, src + cc * 8, ok);
        }
#if !SHARE
        const u32 sv = s_base + SM_V + st * (BN * VS * 2);
#pragma unroll
        for (int i = 0; i < BN / WARPS; ++i) {
            const int rr = i * WARPS + w;
            const bool ok = jt + rr < j_hi;
            const u16* src = vb + (ok ? jt + rr : j_lo) * v1;
#pragma unroll
            for (int cc = lane; cc < DV / 8; cc += 32) cp16(sv + (rr * VS + cc * 8) * 2, src + cc * 8, ok);
        }
#endif
#endif
    };

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < n_tiles) load_tile(s, s);
        cp_commit();
    }

    // q rows, scaled, as f16 pairs (rows past the block's rows: zeros); a warp a row, every load
    // of the unrolled loops issued before the first store (a block's fixed cost: latency, not bytes)
    const float sc = softcap != 0.0f ? scale / softcap : scale;
    {
        const i64 qo0 = meta[SLOT], q1 = meta[SLOT + 6], q2 = meta[SLOT + 7], q3 = meta[SLOT + 8];
        const int q0 = (int)meta[SLOT + 5];
        u32* sq = (u32*)(smem + SM_Q);
#pragma unroll
        for (int i = 0; i < ROWS / WARPS; ++i) {
            const int rr = i * WARPS + w, r = r0 + rr;
            const bool live = r < n_rows;
            const float* qp = q + (live ? qo0 + (r / G) * q1 + (ik2 * G + r % G) * q2 + i3 * q3 : 0);
#if KVT
            // q's Q8_0 values: a block of 32 is 16 lanes' pairs; its |max| a 16-lane shuffle max
#pragma unroll
            for (int c0 = 0; c0 < DK / 2; c0 += 32) {
                const int c = c0 + lane;
                const bool on = live && c < DK / 2;
                float x0 = on ? qp[2 * c * q0] : 0.0f;
                float x1 = on ? qp[(2 * c + 1) * q0] : 0.0f;
                float am = fmaxf(fabsf(x0), fabsf(x1));
#pragma unroll
                for (int off = 1; off < 16; off <<= 1) am = fmaxf(am, __shfl_xor_sync(0xffffffffu, am, off));
                const float d = am / 127.0f;
                const float id = d != 0.0f ? 1.0f / d : 0.0f;
                const float dr = f16r(d);
                x0 = roundf(x0 * id) * dr * sc;
                x1 = roundf(x1 * id) * dr * sc;
                if (c < DK / 2) sq[rr * (QS / 2) + c] = pack_h2(x0, x1);
            }
#else
#pragma unroll
            for (int c = lane; c < DK / 2; c += 32) {
                float x0 = 0.0f, x1 = 0.0f;
                if (live) {
                    x0 = qp[2 * c * q0] * sc;
                    x1 = qp[(2 * c + 1) * q0] * sc;
                }
                sq[rr * (QS / 2) + c] = pack_h2(x0, x1);
            }
#endif
        }
    }

    // the lane's two rows of the tile: g and g + 8 (clamped to a real row for the mask offsets)
    const int ra = min(r0 + g, n_rows - 1), rb = min(r0 + g + 8, n_rows - 1);
    const int ha = ik2 * G + ra % G, hb = ik2 * G + rb % G;
    const void* mka = mask;
    const void* mkb = mask;
    int mk0 = 0;
    float sl_a = 1.0f, sl_b = 1.0f;
    if (has_mask) {
        const i64 mo = meta[4 * SLOT], m1s = meta[4 * SLOT + 6], m2s = meta[4 * SLOT + 7], m3s = meta[4 * SLOT + 8];
        const int mne2 = (int)meta[4 * SLOT + 3], mne3 = (int)meta[4 * SLOT + 4];
        const int esz = mask_f32 ? 4 : 2;
        mk0 = (int)meta[4 * SLOT + 5];
        mka = (const char*)mask + esz * (mo + (ra / G) * m1s + (ha % mne2) * m2s + (i3 % mne3) * m3s);
        mkb = (const char*)mask + esz * (mo + (rb / G) * m1s + (hb % mne2) * m2s + (i3 % mne3) * m3s);
        sl_a = slope_of(ha, max_bias, m0, m1, n_log2);
        sl_b = slope_of(hb, max_bias, m0, m1, n_log2);
    }

    float o[NT_O][4];
#pragma unroll
    for (int i = 0; i < NT_O; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m_a = NEG_INF, m_b = NEG_INF, l_a = 0.0f, l_b = 0.0f;

    // ldmatrix lane addresses (bytes, relative to a tile's start)
    const u32 a_off = ((lane & 15) * QS + 8 * (lane >> 4)) * 2;                    // A 16x16 from q
    const u32 p_off = ((lane & 15) * PS + 8 * (lane >> 4)) * 2;                    // A 16x16 from P
    const int kcol0 = w * NT_S * 8;                                                // warp's kv columns
#if NT_S % 2 == 0
    const u32 b_off = ((kcol0 + (lane & 7) + 8 * (lane >> 4)) * KS + 8 * ((lane >> 3) & 1)) * 2;
#else
    const u32 b_off = ((kcol0 + (lane & 7)) * KS + 8 * ((lane >> 3) & 1)) * 2;
#endif
    const int ocol0 = w * NT_O * 8;                                                // warp's output columns
#if SHARE
    const u32 v_lane = (((lane & 7) + 8 * ((lane >> 3) & 1)) * KS + v_off + ocol0 + 8 * (lane >> 4)) * 2;
#else
    const u32 v_lane = (((lane & 7) + 8 * ((lane >> 3) & 1)) * VS + ocol0 + 8 * (lane >> 4)) * 2;
#endif
    float* s_max = (float*)(smem + SM_MAX);
    u32* sp = (u32*)(smem + SM_P);
#if SPLITK
    // the warp's q fragments, for the whole chunk; the barrier makes every warp's q rows visible,
    // and the loop's first barrier comes after every warp's reads (the region then holds partials)
    __syncthreads();
    u32 qa[KPW][4];
#pragma unroll
    for (int kk = 0; kk < KPW; ++kk)
        ldm_x4(s_base + SM_Q + a_off + (w * KPW + kk) * 32, qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3]);
    const u32 bf_off = (((lane & 7) + 8 * (lane >> 4)) * KS + 8 * ((lane >> 3) & 1)) * 2;
    float4* sx = (float4*)(smem + SM_Q);
#endif

#if !SPLITK
    // one k-step (16 of DK) of S = Q K^T into acc, for the warp's NT_S n-tiles
    auto s_step = [&](u32 sk, int ks, float (&acc)[NT_S][4]) {
        u32 a0, a1, a2, a3;
        ldm_x4(s_base + SM_Q + a_off + ks * 32, a0, a1, a2, a3);
#if NT_S % 2 == 0
#pragma unroll
        for (int np = 0; np < NT_S / 2; ++np) {
            u32 b0, b1, b2, b3;
            ldm_x4(sk + b_off + np * 16 * KS * 2 + ks * 32, b0, b1, b2, b3);
            mma(acc[2 * np], a0, a1, a2, a3, b0, b1);
            mma(acc[2 * np + 1], a0, a1, a2, a3, b2, b3);
        }
#else
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt) {
            u32 b0, b1;
            ldm_x2(sk + b_off + nt * 8 * KS * 2 + ks * 32, b0, b1);
            mma(acc[nt], a0, a1, a2, a3, b0, b1);
        }
#endif
    };
#endif

    for (int t = 0; t < n_tiles; ++t) {
        cp_wait<STAGES - 2>();
        __syncthreads();                       // tile t landed for every thread; tile t-1 fully used
        if (t + STAGES - 1 < n_tiles) load_tile(t + STAGES - 1, (t + STAGES - 1) % STAGES);
        cp_commit();
        const int st = t % STAGES;
        const int jt = j_lo + t * BN;
#if KVT
        // the landed raw stage decoded into the f16 tile(s); the barrier above freed them
        decode_tile<DK, RBK, KS>(smem + SM_R + st * (RAWK + RAWV), (u32*)(smem + SM_K), tid);
#if !SHARE
        decode_tile<DV, RBV, VS>(smem + SM_R + st * (RAWK + RAWV) + RAWK, (u32*)(smem + SM_V), tid);
#endif
        __syncthreads();
        const int ft = 0;
#else
        const int ft = st;
#endif

#if SPLITK
        // mask values of every column of the tile, loaded before the mma's that hide their latency
        float mv[NT_F][4];
#pragma unroll
        for (int nt = 0; nt < NT_F; ++nt) {
            const int j = jt + nt * 8 + 2 * t4;
            mv[nt][0] = mv[nt][1] = mv[nt][2] = mv[nt][3] = 0.0f;
            if (has_mask) {
                const int j0 = min(j, j_hi - 1), j1 = min(j + 1, j_hi - 1);
                mv[nt][0] = mask_at(mka, mask_f32, (i64)j0 * mk0);
                mv[nt][1] = mask_at(mka, mask_f32, (i64)j1 * mk0);
                mv[nt][2] = mask_at(mkb, mask_f32, (i64)j0 * mk0);
                mv[nt][3] = mask_at(mkb, mask_f32, (i64)j1 * mk0);
            }
        }

        // the warp's share of S = Q K^T: its KPW k-steps, every kv column (NT_F chains)
        float s[NT_F][4];
#pragma unroll
        for (int nt = 0; nt < NT_F; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        const u32 sk = s_base + SM_K + ft * (BN * KS * 2);
#pragma unroll
        for (int kk = 0; kk < KPW; ++kk) {
#pragma unroll
            for (int np = 0; np < NT_F / 2; ++np) {
                u32 b0, b1, b2, b3;
                ldm_x4(sk + bf_off + np * 16 * KS * 2 + (w * KPW + kk) * 32, b0, b1, b2, b3);
                mma(s[2 * np], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b0, b1);
                mma(s[2 * np + 1], qa[kk][0], qa[kk][1], qa[kk][2], qa[kk][3], b2, b3);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT_F; ++nt) sx[(w * NT_F + nt) * 32 + lane] = make_float4(s[nt][0], s[nt][1], s[nt][2], s[nt][3]);
        __syncthreads();

        // the full scores (partials summed in warp order: the same bits in every warp), softcap,
        // + slope * mask, -inf past the chunk; the row maxima over the quad's lanes
        float wa = NEG_INF, wb = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT_F; ++nt) {
            float4 x = sx[nt * 32 + lane];
#pragma unroll
            for (int ww = 1; ww < WARPS; ++ww) {
                const float4 y = sx[(ww * NT_F + nt) * 32 + lane];
                x.x += y.x;
                x.y += y.y;
                x.z += y.z;
                x.w += y.w;
            }
            s[nt][0] = x.x;
            s[nt][1] = x.y;
            s[nt][2] = x.z;
            s[nt][3] = x.w;
            const int j = jt + nt * 8 + 2 * t4;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float val = s[nt][e];
                if (softcap != 0.0f) val = softcap * tanhf(val);
                val += ((e < 2) ? sl_a : sl_b) * mv[nt][e];
                if (j + (e & 1) >= j_hi) val = NEG_INF;
                s[nt][e] = val;
            }
            wa = fmaxf(wa, fmaxf(s[nt][0], s[nt][1]));
            wb = fmaxf(wb, fmaxf(s[nt][2], s[nt][3]));
        }
        const float na = fmaxf(m_a, quad_max(wa)), nb = fmaxf(m_b, quad_max(wb));
        const float fa = max_shift(m_a, na), fb = max_shift(m_b, nb);
        // P as f16 A fragments: n-tiles 2kk and 2kk + 1 are k-step kk's columns 0-7 and 8-15
        u32 pf[NT_F / 2][4];
        float pa = 0.0f, pb = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT_F; ++nt) {
            const float p0 = pexp(s[nt][0], na), p1 = pexp(s[nt][1], na);
            const float p2 = pexp(s[nt][2], nb), p3 = pexp(s[nt][3], nb);
            pa += p0 + p1;
            pb += p2 + p3;
            pf[nt / 2][2 * (nt & 1)] = pack_h2(p0, p1);
            pf[nt / 2][2 * (nt & 1) + 1] = pack_h2(p2, p3);
        }
        l_a = l_a * fa + pa;          // the lane's share of the row: its quad sums it at the end
        l_b = l_b * fb + pb;
        rescale_o(o, fa, fb);

        // O += P V over the warp's output columns
        int vs;
        const u32 sv = v_tile(sk, s_base, ft, vs);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) pv_step(o, pf[kk][0], pf[kk][1], pf[kk][2], pf[kk][3], sv, v_lane, vs, kk);
#else
        // mask values of the lane's scores, loaded before the mma's that hide their latency
        float mv[NT_S][4];
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt) {
            const int j = jt + kcol0 + nt * 8 + 2 * t4;
            mv[nt][0] = mv[nt][1] = mv[nt][2] = mv[nt][3] = 0.0f;
            if (has_mask) {
                const int j0 = min(j, j_hi - 1), j1 = min(j + 1, j_hi - 1);
                mv[nt][0] = mask_at(mka, mask_f32, (i64)j0 * mk0);
                mv[nt][1] = mask_at(mka, mask_f32, (i64)j1 * mk0);
                mv[nt][2] = mask_at(mkb, mask_f32, (i64)j0 * mk0);
                mv[nt][3] = mask_at(mkb, mask_f32, (i64)j1 * mk0);
            }
        }

        // S = Q K^T over the warp's kv columns; two accumulator chains (even / odd k-steps)
        float s[NT_S][4], s2[NT_S][4];
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt)
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = s2[nt][0] = s2[nt][1] = s2[nt][2] = s2[nt][3] = 0.0f;
        const u32 sk = s_base + SM_K + ft * (BN * KS * 2);
#pragma unroll
        for (int ks = 0; ks < DK / 16; ks += 2) {
            s_step(sk, ks, s);
            if (ks + 1 < DK / 16) s_step(sk, ks + 1, s2);
        }

        // scores: softcap, + slope * mask, -inf past the chunk; the warp's row maxima
        float wa = NEG_INF, wb = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt) {
            const int j = jt + kcol0 + nt * 8 + 2 * t4;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[nt][e] + s2[nt][e];
                if (softcap != 0.0f) x = softcap * tanhf(x);
                x += ((e < 2) ? sl_a : sl_b) * mv[nt][e];
                if (j + (e & 1) >= j_hi) x = NEG_INF;
                s[nt][e] = x;
            }
            wa = fmaxf(wa, fmaxf(s[nt][0], s[nt][1]));
            wb = fmaxf(wb, fmaxf(s[nt][2], s[nt][3]));
        }
        wa = quad_max(wa);
        wb = quad_max(wb);
        if (t4 == 0) {
            s_max[w * ROWS + g] = wa;
            s_max[w * ROWS + g + 8] = wb;
        }
        __syncthreads();
        float na = m_a, nb = m_b;
#pragma unroll
        for (int ww = 0; ww < WARPS; ++ww) {
            na = fmaxf(na, s_max[ww * ROWS + g]);
            nb = fmaxf(nb, s_max[ww * ROWS + g + 8]);
        }
        const float fa = max_shift(m_a, na), fb = max_shift(m_b, nb);
        float pa = 0.0f, pb = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT_S; ++nt) {
            const float p0 = pexp(s[nt][0], na), p1 = pexp(s[nt][1], na);
            const float p2 = pexp(s[nt][2], nb), p3 = pexp(s[nt][3], nb);
            pa += p0 + p1;
            pb += p2 + p3;
            const int c = (kcol0 + nt * 8 + 2 * t4) / 2;
            sp[g * (PS / 2) + c] = pack_h2(p0, p1);
            sp[(g + 8) * (PS / 2) + c] = pack_h2(p2, p3);
        }
        l_a = l_a * fa + pa;          // the lane's share of its columns; summed at the end
        l_b = l_b * fb + pb;
        rescale_o(o, fa, fb);
        __syncthreads();

        // O += P V over the warp's output columns
        int vs;
        const u32 sv = v_tile(sk, s_base, ft, vs);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            u32 a0, a1, a2, a3;
            ldm_x4(s_base + SM_P + p_off + kk * 32, a0, a1, a2, a3);
            pv_step(o, a0, a1, a2, a3, sv, v_lane, vs, kk);
        }
#endif
    }
    cp_wait<0>();

    // row sums over all columns: quad, then (each warp having summed its own columns) across warps
#if SPLITK
    const float la = quad_sum(l_a), lb = quad_sum(l_b);
#else
    float* s_l = (float*)(smem + SM_L);
    l_a = quad_sum(l_a);
    l_b = quad_sum(l_b);
    if (t4 == 0) {
        s_l[w * ROWS + g] = l_a;
        s_l[w * ROWS + g + 8] = l_b;
    }
    __syncthreads();
    float la = 0.0f, lb = 0.0f;
#pragma unroll
    for (int ww = 0; ww < WARPS; ++ww) {
        la += s_l[ww * ROWS + g];
        lb += s_l[ww * ROWS + g + 8];
    }
#endif
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = r0 + g + 8 * half;
        if (r >= n_rows) continue;
        const int h = ik2 * G + r % G;
        float* pp = part + ((((i64)i3 * n_head + h) * n_q + r / G) * n_parts + blockIdx.x) * (dv + 2);
#pragma unroll
        for (int nt = 0; nt < NT_O; ++nt) {
            const int col = ocol0 + nt * 8 + 2 * t4;
            pp[col] = o[nt][2 * half];
            pp[col + 1] = o[nt][2 * half + 1];
        }
        if (w == 0 && t4 == 0) {
            pp[dv] = half ? m_b : m_a;
            pp[dv + 1] = half ? lb : la;
        }
    }
}

#define COMBINE_THREADS 128
#define MAX_PARTS 256

// dst row (h, iq, i3) = sum_t exp(m_t - M) o_t / (sum_t exp(m_t - M) l_t + exp(sink - M)); one
// block a (row, COMBINE_THREADS columns), a thread a column: its parts' loads all independent
// (the row's weights recomputed by each of its blocks: n_parts (m, l) pairs, loaded at once)
extern "C" __global__ void __launch_bounds__(COMBINE_THREADS)
fa_mma_combine(const i64* __restrict__ meta, float* __restrict__ dst, const float* __restrict__ sinks,
               const float* __restrict__ part, int has_sinks, int n_parts)
{
    __shared__ float wts[MAX_PARTS];
    __shared__ float red[COMBINE_THREADS / 32];
    __shared__ float inv;
    const int tid = threadIdx.x;
    const int dv = (int)meta[1], n_head = (int)meta[2], n_q = (int)meta[3];
    const int row = blockIdx.x;
    const int h = row % n_head, iq = (row / n_head) % n_q, i3 = row / (n_head * n_q);
    const float* pp = part + (((i64)i3 * n_head + h) * n_q + iq) * n_parts * (dv + 2);

    float mt[MAX_PARTS / COMBINE_THREADS], lt[MAX_PARTS / COMBINE_THREADS];
    float top = NEG_INF;
#pragma unroll
    for (int i = 0; i < MAX_PARTS / COMBINE_THREADS; ++i) {
        const int t = tid + i * COMBINE_THREADS;
        mt[i] = t < n_parts ? pp[t * (dv + 2) + dv] : NEG_INF;
        lt[i] = t < n_parts ? pp[t * (dv + 2) + dv + 1] : 0.0f;
        top = fmaxf(top, mt[i]);
    }
    for (int off = 16; off > 0; off >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, off));
    if ((tid & 31) == 0) red[tid >> 5] = top;
    __syncthreads();
    top = NEG_INF;
    for (int i = 0; i < COMBINE_THREADS / 32; ++i) top = fmaxf(top, red[i]);
    const float sk = has_sinks ? sinks[meta[5 * SLOT] + h * meta[5 * SLOT + 5]] : NEG_INF;
    top = fmaxf(top, sk);
    __syncthreads();
    float den = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_PARTS / COMBINE_THREADS; ++i) {
        const int t = tid + i * COMBINE_THREADS;
        const float wt = mt[i] == NEG_INF ? 0.0f : __expf(mt[i] - top);
        if (t < n_parts) wts[t] = wt;
        den += wt * lt[i];
    }
    for (int off = 16; off > 0; off >>= 1) den += __shfl_xor_sync(0xffffffffu, den, off);
    if ((tid & 31) == 0) red[tid >> 5] = den;
    __syncthreads();
    if (tid == 0) {
        float d = 0.0f;
        for (int i = 0; i < COMBINE_THREADS / 32; ++i) d += red[i];
        if (sk != NEG_INF) d += __expf(sk - top);
        inv = d > 0.0f ? 1.0f / d : 0.0f;
    }
    __syncthreads();
    const int d = blockIdx.y * COMBINE_THREADS + tid;
    if (d >= dv) return;
    float* dp = dst + meta[0] + h * meta[6] + iq * meta[7] + i3 * meta[8];
    float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int t = 0;
#pragma unroll 4
    for (; t + 8 <= n_parts; t += 8) {
#pragma unroll
        for (int u = 0; u < 8; ++u) a[u] += wts[t + u] * pp[(t + u) * (dv + 2) + d];
    }
    for (; t < n_parts; ++t) a[0] += wts[t] * pp[t * (dv + 2) + d];
    dp[d * meta[5]] = (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) * inv;
}
