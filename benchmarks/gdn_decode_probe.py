"""Why GATED_DELTA_NET decode (B=256, S=128, H_v=32) stays ~10% under a device copy: plain copies of
the same 537 MB state through different access structures, side by side with torch's copy.

  rows8    the decode kernel's structure (gdn_tc_decode.cu): a warp an item of 16 state rows,
           eight lanes a row, 16 float4 loads (ld.global.cs) then 16 stores (st.global.cs);
           rows8-l2 the loads with the L2::256B fetch-size hint, rows8-nc as ld.global.nc with
           L1::no_allocate and L2::256B
  contig   a warp an item of 8 KB too, each load / store instruction 512 contiguous bytes
  contig-wb  the same with plain ld.global / st.global
  stride   grid-stride float4 copy (4 a thread in flight), 8 blocks of 256 an SM
  bulk     Hopper's bulk copies (cp.async.bulk on an mbarrier): 32 KB global -> shared -> global a
           block of one warp (bulk1: 8 KB); bulkrw: the block reads and rewrites each float4 in
           shared memory between the two copies; bulkld: bulk load, then st.cs from registers
and rows8 / torch with the destination moved by a few offsets (placement of dst against src).
GPU time by CUDA events, median (min-max) of gdn_cuda.TRIALS trials of 20 launches.
H200, 2026-12-01, one run: rows8 271.9 us, contig 275.7, contig-wb 269.2, stride 281.5, torch 258.8;
moving dst by 4 KB .. 4 MB changes neither (rows8 269-274, torch 257-259). No copy written here
gets within 4% of torch's, so decode's 280 us goal (92% of torch's copy) sits at the edge of what
this access structure (16-byte loads and stores from registers) reaches.
H200, 2026-12-02, one run: rows8 269.5, contig 275.7, contig-wb 270.9, stride 282.7, bulk 271.9,
bulk1 273.1, bulkrw 268.3, bulkld 269.4, torch 256.9 us: the copy engine's bulk copies land where
register copies do (session 8's bulk decode kernel, not merged, measured the same).
H200, 2026-12-04, one run: rows8 270.5, rows8-l2 278.9, rows8-nc 280.7, contig 269.7, contig-wb
266.1, bulk 266.6, torch 257.2 us: the L2::256B fetch-size hint (with or without the read-only
path) makes the same copy 3-4% slower, so the decode keeps plain ld.global.cs.
Run on the device: python benchmarks/gdn_decode_probe.py
"""
from __future__ import annotations

import os
import sys

import numpy as np
from numba import cuda, types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gdn_cuda import cuda_time  # noqa: E402  (the same event timing as benchmarks/gdn_cuda.py)

SRC = r"""
__device__ __forceinline__ float4 ldcs(const float* p) {
    float4 r;
    asm volatile("ld.global.cs.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ void stcs(float* p, float4 v) {
    asm volatile("st.global.cs.v4.f32 [%0], {%1,%2,%3,%4};" ::"l"(p), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
}
// LD: 0 ld.global.cs, 1 ld.global.cs.L2::256B (L2 fetches 256-byte blocks from DRAM),
// 2 ld.global.nc.L1::no_allocate.L2::256B
template <int LD> __device__ __forceinline__ float4 ldq(const float* p) {
    float4 r;
    if (LD == 1)
        asm volatile("ld.global.cs.L2::256B.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w) : "l"(p));
    else if (LD == 2)
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.f32 {%0,%1,%2,%3}, [%4];"
                     : "=f"(r.x), "=f"(r.y), "=f"(r.z), "=f"(r.w) : "l"(p));
    else
        r = ldcs(p);
    return r;
}
template <int LD> __device__ __forceinline__ int rows8(const float* src, float* dst, long long n) {
    const int lane = threadIdx.x & 31, l8 = lane & 7, rq = lane >> 3;
    const long long it = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const long long base = it * 2048;                       // 16 rows of 128 floats
    if (base >= n) return 0;
    float4 x[4][4];
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int m = 0; m < 4; ++m) x[p][m] = ldq<LD>(src + base + (4 * p + rq) * 128 + 32 * m + 4 * l8);
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int m = 0; m < 4; ++m) stcs(dst + base + (4 * p + rq) * 128 + 32 * m + 4 * l8, x[p][m]);
    return 0;
}
extern "C" __device__ int probe_rows8(const float* src, float* dst, long long n) { return rows8<0>(src, dst, n); }
extern "C" __device__ int probe_rows8_l2(const float* src, float* dst, long long n) { return rows8<1>(src, dst, n); }
extern "C" __device__ int probe_rows8_nc(const float* src, float* dst, long long n) { return rows8<2>(src, dst, n); }
template <bool CS>   // CS: ld/st.global.cs, else plain ld.global / st.global
__device__ __forceinline__ int contig(const float* src, float* dst, long long n) {
    const int lane = threadIdx.x & 31;
    const long long it = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const long long base = it * 2048;
    if (base >= n) return 0;
    float4 x[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const float* p = src + base + 128 * i + 4 * lane;
        x[i] = CS ? ldcs(p) : *(const float4*)p;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        float* p = dst + base + 128 * i + 4 * lane;
        if (CS) stcs(p, x[i]); else *(float4*)p = x[i];
    }
    return 0;
}
extern "C" __device__ int probe_contig(const float* src, float* dst, long long n) { return contig<true>(src, dst, n); }
extern "C" __device__ int probe_contig_wb(const float* src, float* dst, long long n) {
    return contig<false>(src, dst, n);
}
extern "C" __device__ int probe_stride(const float* src, float* dst, long long n) {
    const long long n4 = n / 4, step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += 4 * step) {
        float4 x[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) if (i + u * step < n4) x[u] = ((const float4*)src)[i + u * step];
#pragma unroll
        for (int u = 0; u < 4; ++u) if (i + u * step < n4) ((float4*)dst)[i + u * step] = x[u];
    }
    return 0;
}
// Bulk copies (TMA, cp.async.bulk): a block of BT threads moves ITEMS items of 8 KB global ->
// shared (one instruction, an mbarrier counting the bytes), then shared -> global.
//   bulk      lane 0 issues both copies; the threads do nothing else
//   bulkrw    the block reads each float4 from shared memory and writes it back (the decode's
//             arithmetic would sit there), then the bulk store
//   bulkld    bulk load, then each thread streams its float4s from shared memory to global (st.cs)
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
template <int MODE, int ITEMS>
__device__ __forceinline__ int bulk(const float* src, float* dst, long long n) {
    __shared__ alignas(128) float buf[ITEMS * 2048];
    __shared__ alignas(8) unsigned long long bar;
    const long long base = (long long)blockIdx.x * ITEMS * 2048;
    if (base >= n) return 0;
    const unsigned bytes = ITEMS * 8192, b = smem_u32(&bar), s = smem_u32(buf);
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(b));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(bytes) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     ::"r"(s), "l"(src + base), "r"(bytes), "r"(b) : "memory");
    }
    __syncthreads();
    asm volatile("{\n .reg .pred p;\n W%=: mbarrier.try_wait.parity.shared::cta.b64 p, [%0], 0;\n @!p bra W%=;\n}"
                 ::"r"(b) : "memory");
    if (MODE == 2) {
        for (int i = threadIdx.x; i < ITEMS * 512; i += blockDim.x)
            stcs(dst + base + 4 * i, *(const float4*)(buf + 4 * i));
        return 0;
    }
    if (MODE == 1) {
        for (int i = threadIdx.x; i < ITEMS * 512; i += blockDim.x) {
            float4 v = *(const float4*)(buf + 4 * i);
            v.x *= 1.0f; v.y *= 1.0f; v.z *= 1.0f; v.w *= 1.0f;
            *(float4*)(buf + 4 * i) = v;
        }
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst + base), "r"(s), "r"(bytes)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
    }
    return 0;
}
extern "C" __device__ int probe_bulk(const float* src, float* dst, long long n) { return bulk<0, 4>(src, dst, n); }
extern "C" __device__ int probe_bulk1(const float* src, float* dst, long long n) { return bulk<0, 1>(src, dst, n); }
extern "C" __device__ int probe_bulkrw(const float* src, float* dst, long long n) { return bulk<1, 4>(src, dst, n); }
extern "C" __device__ int probe_bulkld(const float* src, float* dst, long long n) { return bulk<2, 4>(src, dst, n); }
"""
_FP = types.CPointer(types.float32)


def _kernel(name):
    fn = cuda.declare_device(name, types.int32(_FP, _FP, types.int64), link=[cuda.CUSource(SRC)], abi="c")
    from minigraph.backends.cuda.gdn_tc import fptr

    @cuda.jit("void(float32[::1], float32[::1], int64, int64)")
    def k(src, dst, off, n):
        fn(fptr(src, 0), fptr(dst, off), n)
    return k


def _time(fn):
    med, lo, hi = cuda_time(fn, 20)
    return f"{med * 1e6:6.1f} us ({lo * 1e6:.1f}-{hi * 1e6:.1f})"


def main():
    import torch
    n = 256 * 32 * 128 * 128                     # the decode state's floats
    pad = 1 << 20
    src = cuda.device_array(n, np.float32)
    dst = cuda.device_array(n + pad, np.float32)
    ts, td = torch.as_tensor(src, device="cuda"), torch.as_tensor(dst, device="cuda")
    ts.normal_()
    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
    names = ("rows8", "rows8-l2", "rows8-nc", "contig", "contig-wb", "stride", "bulk", "bulk1", "bulkrw", "bulkld")
    ks = {name: _kernel(f"probe_{name.replace('-', '_')}") for name in names}
    items = n // 2048
    grids = {"rows8": (items // 4, 128), "rows8-l2": (items // 4, 128), "rows8-nc": (items // 4, 128), "contig": (items // 4, 128), "contig-wb": (items // 4, 128),
             "stride": (8 * sms, 256), "bulk": (items // 4, 32), "bulk1": (items, 32),
             "bulkrw": (items // 4, 128), "bulkld": (items // 4, 128)}
    print(f"## copy of {2 * n * 4 / 1e9:.2f} GB (read + written), {cuda.get_current_device().name}")
    for name, k in ks.items():
        g, b = grids[name]
        t = _time(lambda k=k, g=g, b=b: k[g, b](src, dst, 0, n))
        ok = bool(torch.equal(td[:n], ts))
        td.zero_()
        print(f"  {name:10s} {t}{'' if ok else '  WRONG'}", flush=True)
    print(f"  {'torch':10s} {_time(lambda: td[:n].copy_(ts))}")
    for off in (1024, 16384, 262144, pad - 2048):   # dst moved by `off` floats
        g, b = grids["rows8"]
        print(f"  dst +{off * 4 // 1024} KB: rows8 {_time(lambda: ks['rows8'][g, b](src, dst, off, n))}, "
              f"torch {_time(lambda: td[off:off + n].copy_(ts))}", flush=True)


if __name__ == "__main__":
    main()
