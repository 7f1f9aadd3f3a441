// A host emulation of the CUDA features the tensor-core GATED_DELTA_NET kernels use
// (backends/cuda/gdn_tc.cuh with GDN_EMULATE): every CUDA thread of a block is a std::thread, blocks
// run one after another; __syncthreads and the warp collectives (mma.sync m16n8k8 tf32, xor
// shuffles, ballots) meet at std::barriers. cp.async copies are deferred to the wait that covers them, so a
// read of shared memory before its wait sees the poison (NaN) the block's shared memory starts with.
// Built with -fsanitize=address, out-of-bounds global or shared accesses abort the run.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

typedef unsigned int u32;
#define __device__
#define __forceinline__ inline
#define GDN_INL inline

struct dim3e { unsigned x = 1, y = 1, z = 1; };
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float __uint_as_float(u32 u) { float f; std::memcpy(&f, &u, 4); return f; }
inline u32 __float_as_uint(float f) { u32 u; std::memcpy(&u, &f, 4); return u; }

inline thread_local dim3e threadIdx, blockIdx;
inline dim3e gridDim, blockDim;
inline float* emu_smem = nullptr;
#define GDN_SMEM emu_smem

struct EmuWarp {
    std::barrier<> bar{32};
    u32 a[32][4], b[32][2];
    float c[32][4], f[32];
};
struct EmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<EmuWarp>> warps;
};
inline EmuBlock emu_block;

inline void __syncthreads() { emu_block.bar->arrive_and_wait(); }
// a named barrier over part of the block: here the whole block (the kernels call it uniformly)
inline void bar_named(int, int) { emu_block.bar->arrive_and_wait(); }

// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero
inline u32 tf32_rna(float x) {
    u32 u = __float_as_uint(x);
#ifdef EMU_EXACT   // fp32 operands (lo = 0): isolates the 3xTF32 error from the algorithm's
    return u;
#endif
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}
#ifdef EMU_EXACT
inline double tf32_val(u32 u) { return (double)__uint_as_float(u); }
#else
inline double tf32_val(u32 u) { return (double)__uint_as_float(u & 0xffffe000u); }  // the unit ignores low bits
#endif  // the unit ignores low bits

inline void mma_tf32(float* c, const u32* a, const u32* b) {
    const int tid = threadIdx.x, l = tid & 31;
    EmuWarp& w = *emu_block.warps[tid >> 5];
    for (int i = 0; i < 4; ++i) { w.a[l][i] = a[i]; w.c[l][i] = c[i]; }
    for (int i = 0; i < 2; ++i) w.b[l][i] = b[i];
    w.bar.arrive_and_wait();
    double A[16][8], B[8][8];
    for (int ln = 0; ln < 32; ++ln) {
        int g = ln >> 2, t = ln & 3;
        A[g][t] = tf32_val(w.a[ln][0]);
        A[g + 8][t] = tf32_val(w.a[ln][1]);
        A[g][t + 4] = tf32_val(w.a[ln][2]);
        A[g + 8][t + 4] = tf32_val(w.a[ln][3]);
        B[t][g] = tf32_val(w.b[ln][0]);
        B[t + 4][g] = tf32_val(w.b[ln][1]);
    }
    const int g = l >> 2, t = l & 3;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        double s = 0;
        for (int kk = 0; kk < 8; ++kk) s += A[row][kk] * B[kk][col];
        d[e] = (float)((double)w.c[l][e] + s);
    }
    w.bar.arrive_and_wait();
    for (int e = 0; e < 4; ++e) c[e] = d[e];
}

inline void mma_tf32_z(float* d, const u32* a, const u32* b) {
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    mma_tf32(c, a, b);
    for (int e = 0; e < 4; ++e) d[e] = c[e];
}

inline float shfl_xor(float v, int m) {
    const int tid = threadIdx.x, l = tid & 31;
    EmuWarp& w = *emu_block.warps[tid >> 5];
    w.f[l] = v;
    w.bar.arrive_and_wait();
    float r = w.f[l ^ m];
    w.bar.arrive_and_wait();
    return r;
}

inline u32 warp_ballot(bool p) {
    const int tid = threadIdx.x, l = tid & 31;
    EmuWarp& w = *emu_block.warps[tid >> 5];
    w.f[l] = p ? 1.f : 0.f;
    w.bar.arrive_and_wait();
    u32 m = 0;
    for (int i = 0; i < 32; ++i) m |= (w.f[i] != 0.f ? 1u : 0u) << i;
    w.bar.arrive_and_wait();
    return m;
}
inline int bit_count(u32 x) { return __builtin_popcount(x); }

struct EmuCopy { float* dst; const float* src; int bytes; int group; };
inline thread_local std::vector<EmuCopy> emu_pending;
inline thread_local int emu_group = 0;
inline void cp_async16(float* sdst, const float* gsrc, int bytes) {
    if (((uintptr_t)sdst & 15) || ((uintptr_t)gsrc & 15)) { fprintf(stderr, "cp.async misaligned\n"); abort(); }
    emu_pending.push_back({sdst, gsrc, bytes, emu_group});
}
inline void cp_async_commit() { ++emu_group; }
inline void emu_wait(int n) {   // complete all groups but the n most recent committed ones
    std::vector<EmuCopy> keep;
    for (auto& cp : emu_pending) {
        if (cp.group < emu_group - n) {
            if (cp.bytes) std::memcpy(cp.dst, cp.src, 16);
            else std::memset(cp.dst, 0, 16);
        } else keep.push_back(cp);
    }
    emu_pending.swap(keep);
}
#define CP_ASYNC_WAIT(n) emu_wait(n)

inline size_t emu_smem_bytes = 0;
inline void need_smem(u32 bytes) {
    if (emu_smem_bytes < bytes) { fprintf(stderr, "dynamic shared memory %zu < %u\n", emu_smem_bytes, bytes); abort(); }
}

inline float4 ld_cs4(const float* p) { return *(const float4*)p; }
inline void st_cs4(float* p, float4 v) { *(float4*)p = v; }

// run fn() as a grid of blocks of `threads` threads with `smem_bytes` of dynamic shared memory
inline void emu_launch(dim3e grid, int threads, size_t smem_bytes, const std::function<void()>& fn) {
    gridDim = grid;
    blockDim = dim3e{(unsigned)threads, 1, 1};
    emu_block.bar = std::make_unique<std::barrier<>>(threads);
    emu_block.warps.clear();
    for (int w = 0; w < (threads + 31) / 32; ++w) emu_block.warps.push_back(std::make_unique<EmuWarp>());
    // exactly smem_bytes (a multiple of 16), so the address sanitizer sees any overrun
    float* al = (float*)std::aligned_alloc(16, smem_bytes);
    emu_smem_bytes = smem_bytes;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
            threadIdx = dim3e{(unsigned)t, 0, 0};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        if (t == 0) {
                            for (size_t i = 0; i < smem_bytes / 4; ++i) al[i] = NAN;
                            emu_smem = al;
                        }
                        emu_block.bar->arrive_and_wait();
                        blockIdx = dim3e{x, y, z};
                        fn();
                        emu_wait(0);
                        emu_block.bar->arrive_and_wait();
                    }
        });
    }
    for (auto& th : ts) th.join();
    std::free(al);
}
