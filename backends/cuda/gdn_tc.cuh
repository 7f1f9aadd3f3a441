// Device primitives of the tensor-core GATED_DELTA_NET kernels (gdn_tc_*.cu), for NVRTC (numba-cuda
// links the kernels' sources as C ABI device functions: backends/cuda/gdn_tc.py) or, with
// GDN_EMULATE defined, for a host compiler over tests/gdn_emu/emu.h (one std::thread a CUDA thread).
//
// 3xTF32: x = hi + lo with hi = tf32(x) and lo = tf32(x - hi); a*b ~ hi_a hi_b + hi_a lo_b + lo_a hi_b
// (the lo*lo term is 2^-22 relative), so an fp32 product on tf32 tensor cores keeps ~fp32 accuracy.
// mma.m16n8k8 fragments (g = lane / 4, t = lane % 4), as the PTX ISA defines them:
//   A 16x8:  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//   B 8x8:   b0 (k=t, n=g)  b1 (k=t+4, n=g)
//   C 16x8:  c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
// GDN_ACC: 0 accumulates the three products of a k-step straight into C; 1 sums them into a zeroed
// partial first and adds that in fp32 (the tensor cores' accumulation truncates: H200, T=1000:
// 1.2e-6 vs 3.3e-7 off float64); 2 makes the three products three
// independent mma from zero and adds them in fp32, so no mma waits on another, at 12 fp32 adds
// an mma3 where 1 has 4; 3 (the default, and gdn_tc.py's ACC: the kernels are issue-bound) keeps two
// accumulators a tile, C for hi*hi and a second for the two correction terms, each fed by the mma
// itself across the k loop: no fp32 add inside the loop, one add (acc_fold) at its end; the tile
// then takes GDN_CW = 8 floats instead of 4, and C's truncating sums run over one k loop (H200:
// 6.2e-7 off float64 at worst against 4.1e-7 with 1).
// GDN_S, when defined, fixes S at compile time (the loops over the key index unroll).

#ifndef GDN_ACC
#define GDN_ACC 3
#endif
#ifdef GDN_S
#define GDN_DIM_S(s_) GDN_S
#else
#define GDN_DIM_S(s_) ((int)(s_))
#endif

#ifdef GDN_EMULATE
#include "emu.h"
#else
typedef unsigned int u32;
#define GDN_INL __device__ __forceinline__
extern __shared__ __align__(16) float gdn_smem[];
#define GDN_SMEM gdn_smem

GDN_INL u32 tf32_rna(float x) {
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

GDN_INL void mma_tf32(float* c, const u32* a, const u32* b) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d = a * b (C = 0: one zero register read four times)
GDN_INL void mma_tf32_z(float* d, const u32* a, const u32* b) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(0.f));
}

// 16 bytes global -> shared, asynchronously; bytes == 0 writes zeros and reads nothing (the compiler
// makes it cp.async's ignore-src predicate)
GDN_INL void cp_async16(float* sdst, const float* gsrc, int bytes) {
    u32 s = (u32)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gsrc), "r"(bytes) : "memory");
}
GDN_INL void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
#define CP_ASYNC_WAIT(n) asm volatile("cp.async.wait_group " #n ";" ::: "memory")

GDN_INL float shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
GDN_INL u32 warp_ballot(bool p) { return __ballot_sync(0xffffffffu, p); }
GDN_INL int bit_count(u32 x) { return __popc(x); }

// barrier `id` (1..15; 0 is __syncthreads') over `n` threads, whole warps
GDN_INL void bar_named(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }

// a launch with less dynamic shared memory than the kernel's layout stops here, not out of bounds
GDN_INL void need_smem(u32 bytes) {
    u32 have;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(have));
    if (have < bytes) __trap();
}

// streaming (evict-first) 16-byte global loads and stores: decode touches the state once
GDN_INL float4 ld_cs4(const float* p) {
    float4 r;
    asm volatile("ld.global.cs.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w) : "l"(p));
    return r;
}
GDN_INL void st_cs4(float* p, float4 v) {
    asm volatile("st.global.cs.v4.f32 [%0], {%1,%2,%3,%4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}
#endif

// ------------------------------------------------------------------------------ fragments
struct FragA { u32 h[4], l[4]; };
struct FragB { u32 h[2], l[2]; };

#ifndef GDN_SPLIT
#define GDN_SPLIT 1
#endif
// GDN_SPLIT 1 (default): hi rounded to nearest (ties away) by integer ops, lo passed raw: the unit
// reads a tf32 operand's top 19 bits, so lo is truncated, an error below 2^-21 |x| that takes
// either sign with lo (three instructions; cvt.rna.tf32 is several). 0: both through cvt.rna.
// 2: hi is x itself (the unit truncates it), lo = x - trunc(x) (two instructions, no register for
// hi); lo then has x's sign and up to 2^-10 |x|, so its truncation and the dropped lo*lo term
// (each up to 2^-20 relative) shrink every product a little, always the same way.
GDN_INL void split(float x, u32& h, u32& l) {
#if GDN_SPLIT == 2
    h = __float_as_uint(x);
    l = __float_as_uint(x - __uint_as_float(h & 0xffffe000u));
#elif GDN_SPLIT
    h = (__float_as_uint(x) + 0x1000u) & 0xffffe000u;
    l = __float_as_uint(x - __uint_as_float(h));
#else
    h = tf32_rna(x);
    l = tf32_rna(x - __uint_as_float(h));
#endif
}

// A element (m, k) at p[m*ld + k] ("row") or p[k*ld + m] ("col"); p points at (m0, k0)
GDN_INL void ldA_row(FragA& f, const float* p, int ld, int g, int t) {
    split(p[g * ld + t], f.h[0], f.l[0]);
    split(p[(g + 8) * ld + t], f.h[1], f.l[1]);
    split(p[g * ld + t + 4], f.h[2], f.l[2]);
    split(p[(g + 8) * ld + t + 4], f.h[3], f.l[3]);
}
GDN_INL void ldA_col(FragA& f, const float* p, int ld, int g, int t) {
    split(p[t * ld + g], f.h[0], f.l[0]);
    split(p[t * ld + g + 8], f.h[1], f.l[1]);
    split(p[(t + 4) * ld + g], f.h[2], f.l[2]);
    split(p[(t + 4) * ld + g + 8], f.h[3], f.l[3]);
}
// A row layout with the k columns scaled (A diag(s)): s0 = s[k0 + t], s1 = s[k0 + t + 4]
GDN_INL void ldA_row_scaled(FragA& f, const float* p, int ld, int g, int t, float s0, float s1) {
    split(p[g * ld + t] * s0, f.h[0], f.l[0]);
    split(p[(g + 8) * ld + t] * s0, f.h[1], f.l[1]);
    split(p[g * ld + t + 4] * s1, f.h[2], f.l[2]);
    split(p[(g + 8) * ld + t + 4] * s1, f.h[3], f.l[3]);
}
// a 16x8 C fragment as the A fragment of a product over its columns, taken in the k order 2t, 2t + 1
// (c0 (g, 2t) as a0, c2 (g + 8, 2t) as a1, c1 (g, 2t + 1) as a2, c3 as a3): no data movement, so
// long as the B operand's k rows are read in the same order
GDN_INL void ldA_c(FragA& f, const float* c) {
    split(c[0], f.h[0], f.l[0]);
    split(c[2], f.h[1], f.l[1]);
    split(c[1], f.h[2], f.l[2]);
    split(c[3], f.h[3], f.l[3]);
}
// B's k rows in ldA_c's order: elements (2t, n) and (2t + 1, n) as the float2 at p (an n-major
// row, 8-byte aligned)
GDN_INL void ldB_c(FragB& f, const float* p) {
    const float2 v = *(const float2*)p;
    split(v.x, f.h[0], f.l[0]);
    split(v.y, f.h[1], f.l[1]);
}
// B element (k, n) at p[k*ld + n] ("kn") or p[n*ld + k] ("nk"); p points at (k0, n0)
GDN_INL void ldB_kn(FragB& f, const float* p, int ld, int g, int t) {
    split(p[t * ld + g], f.h[0], f.l[0]);
    split(p[(t + 4) * ld + g], f.h[1], f.l[1]);
}
GDN_INL void ldB_nk(FragB& f, const float* p, int ld, int g, int t) {
    split(p[g * ld + t], f.h[0], f.l[0]);
    split(p[g * ld + t + 4], f.h[1], f.l[1]);
}
// B "nk" with the k rows scaled (diag(s) B): s0 = s[k0 + t], s1 = s[k0 + t + 4]
GDN_INL void ldB_nk_scaled(FragB& f, const float* p, int ld, int g, int t, float s0, float s1) {
    split(p[g * ld + t] * s0, f.h[0], f.l[0]);
    split(p[g * ld + t + 4] * s1, f.h[1], f.l[1]);
}

// Float-float sums (a value h + l, |l| small against |h|) where a float64 sum would convert each
// term: on sm_90 a conversion to or from float64 issues at 16 a clock an SM, a float add at 128
// (H200, KDA prep: the gating's float64 offsets took 15% of the kernel, most of it conversions).
// s + e = a + b exactly (TwoSum: six float adds; no contraction applies, there is no product)
GDN_INL void two_sum(float a, float b, float& s, float& e) {
    s = a + b;
    const float bb = s - a;
    e = (a - (s - bb)) + (b - bb);
}
// (h, l) += x
GDN_INL void ff_add(float& h, float& l, float x) {
    float e;
    two_sum(h, x, h, e);
    l += e;
}
// e^(h + l) to about expf's own error: h + l renormalised (|l| <= ulp(h) / 2), then e^h (1 + l)
GDN_INL float exp_ff(float h, float l) {
    const float s = h + l, lo = l - (s - h), e = expf(s);
    return fmaf(e, lo, e);
}
// e^x of a float64 x to about expf's own error whatever |x|: x = h + l in floats, exp_ff
// (expf((float)x) is off by |x| 2^-24 relative: 4e-6 at |x| = 60)
GDN_INL float exp_acc(double x) {
    const float h = (float)x;
    return exp_ff(h, (float)(x - (double)h));
}

#if GDN_ACC == 3
#define GDN_CW 8
#else
#define GDN_CW 4
#endif

// c += a * b in 3xTF32 (c: GDN_CW floats; its value is c[0..3] after acc_fold)
GDN_INL void mma3(float* c, const FragA& a, const FragB& b) {
#if GDN_ACC == 3
    mma_tf32(c + 4, a.l, b.h);
    mma_tf32(c + 4, a.h, b.l);
    mma_tf32(c, a.h, b.h);
#elif GDN_ACC == 0
    mma_tf32(c, a.l, b.h);
    mma_tf32(c, a.h, b.l);
    mma_tf32(c, a.h, b.h);
#elif GDN_ACC == 1
    float p[4] = {0.f, 0.f, 0.f, 0.f};
    mma_tf32(p, a.l, b.h);
    mma_tf32(p, a.h, b.l);
    mma_tf32(p, a.h, b.h);
    c[0] += p[0];
    c[1] += p[1];
    c[2] += p[2];
    c[3] += p[3];
#else
    float p1[4], p2[4], p3[4];
    mma_tf32_z(p1, a.l, b.h);
    mma_tf32_z(p2, a.h, b.l);
    mma_tf32_z(p3, a.h, b.h);
#pragma unroll
    for (int e = 0; e < 4; ++e) c[e] += (p1[e] + p2[e]) + p3[e];
#endif
}

// GDN_CW zeros
GDN_INL void acc_zero(float* c) {
#pragma unroll
    for (int e = 0; e < GDN_CW; ++e) c[e] = 0.f;
}

// mma3's value into c[0..3] (ACC 3: the corrections added once, after the k loop)
GDN_INL void acc_fold(float* c) {
#if GDN_ACC == 3
#pragma unroll
    for (int e = 0; e < 4; ++e) c[e] += c[4 + e];
#else
    (void)c;
#endif
}

// lower-triangle pair number p (0, 1, 2, ... over (0,0), (1,0), (1,1), (2,0), ...) as row r >= column s
GDN_INL void tri_pair(int p, int& r, int& s) {
    r = 0;
    while (p > r) { p -= r + 1; ++r; }
    s = p;
}

// a 16x8 C fragment's four floats into row-major out (ld floats a row): rows r0 + g and r0 + g + 8,
// columns j and j + 1 (j = 8n + 2t), unless j is past the last column n_cols
GDN_INL void store_c(float* out, long long ld, const float* c, int r0, int j, int n_cols, int g) {
    if (j >= n_cols) return;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
        *(float2*)(out + (long long)(r0 + g + 8 * hf) * ld + j) = make_float2(c[2 * hf], c[2 * hf + 1]);
}

// c (4 floats) += a * b in 3xTF32 through a zeroed partial (ACC 1) whatever GDN_ACC is: for tiles
// too many for a second accumulator each
GDN_INL void mma3_p(float* c, const FragA& a, const FragB& b) {
    float p[4] = {0.f, 0.f, 0.f, 0.f};
    mma_tf32(p, a.l, b.h);
    mma_tf32(p, a.h, b.l);
    mma_tf32(p, a.h, b.h);
#pragma unroll
    for (int e = 0; e < 4; ++e) c[e] += p[e];
}

// rows [0, rows) of a [rows][width] global block (row r at src + r*stride, width floats, a multiple
// of 4) into shared rows of ld floats, asynchronously; rows >= valid_rows and columns >= valid_w
// are zero-filled. nthreads threads, thread tid. When nthreads is a multiple of width / 4 and
// divides the block's 16-byte pieces (every call here: the sizes are constants), each thread keeps
// one column: its copies are rows tid / (width / 4) + i nthreads / (width / 4), with offsets fixed a
// thread (the generic loop's division and 64-bit address arithmetic were ~20 instructions a copy,
// a fifth of the state pass's instructions).
GDN_INL void stage_rows(float* dst, int ld, const float* src, long long stride, int rows, int width,
                        int valid_rows, int valid_w, int tid, int nthreads) {
    const int w4 = width / 4;
    if (nthreads % w4 == 0 && (rows * w4) % nthreads == 0) {
        const int r0 = (int)((unsigned)tid / (unsigned)w4), c = (int)((unsigned)tid % (unsigned)w4) * 4;
        const int step = nthreads / w4;
        const bool col_ok = c < valid_w;
        const float* p = src + r0 * stride + c;   // past a zero-filled row it points anywhere: not read
#pragma unroll
        for (int i = 0; i < rows * w4 / nthreads; ++i) {
            const int r = r0 + step * i;
            cp_async16(dst + r * ld + c, p, col_ok && r < valid_rows ? 16 : 0);
            p += step * stride;
        }
        return;
    }
    for (int e = tid; e < rows * w4; e += nthreads) {
        int r = e / w4;
        int c = (e - r * w4) * 4;
        bool ok = r < valid_rows && c < valid_w;
        cp_async16(dst + r * ld + c, ok ? src + r * stride + c : src, ok ? 16 : 0);
    }
}
