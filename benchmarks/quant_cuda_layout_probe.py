"""Does Q4_K's byte layout bound its CUDA mat-vec? A probe kernel that reads each lane's 16 bytes of
quants straight from global memory (no shared-memory tile), timed on ggml's layout and on a
reordered one, side by side with the device's read bandwidth.

  ggml      super-blocks as stored: {d, dmin, scales[12]} 16 bytes, then qs[128] (144 bytes)
  reorder   each row's super-blocks split into its 16-byte heads, then all its qs (the same row
            bytes, permuted inside the row: what ggml-sycl's "reorder" does for its mat-vec), so
            every warp load of quants is 512 contiguous bytes

One warp R rows (R = 1, 2, 4: the src1 loads shared by the R rows); lane l takes the 16-byte
quant words l, l + 32, ... of the row: word c is half c % 2 of the 32 bytes that hold groups
2j and 2j + 1 (j = c % 8 / 2) of super-block c / 8, dotted with src1's Q8_K quants by dp4a and
scaled as ggml's vec_dot_q4_K_q8_K does. Random block bytes (quant_cuda.random_blocks); each form
is checked against minigraph's float64 dequantization. GPU time of one mat-vec: a CUDA graph of
20 launches over distinct weight copies (together > 4x the L2), median (min-max) of 7 replays.

H200, 2026-12-03, one run (read bandwidth 4.40 TB/s), us for R = 1 / 2 / 4:
  K=4096 M=4096    ggml 7.99 / 7.85 / 11.62    reorder 8.02 / 7.74 / 12.92
  K=4096 M=14336   ggml 18.38 / 20.47 / 22.92  reorder 19.27 / 24.57 / 34.87
  K=14336 M=4096   ggml 22.51 / 21.82 / 34.13  reorder 22.17 / 21.98 / 38.15
against minigraph's dot kernel (shared-memory tiles) in the same device call: 6.34 / 16.81 / 17.68
us. The reordered bytes gain nothing over ggml's at any shape: Q4_K's mat-vec is not bound by its
layout. (A first form of the reorder kernel compiled by cupy's NVRTC with __launch_bounds__(128)
ran 6.41 / 15.20 / 18.13 us at R = 1, 2, 1: 51% of the read bandwidth at best; the compile moved
it more than the layout does.)
Run on the device: python benchmarks/quant_cuda_layout_probe.py
"""
from __future__ import annotations

import os
import sys

import numpy as np
from numba import cuda, types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_cuda import random_blocks, read_bandwidth  # noqa: E402  (quant_cuda.py's blocks and torch sum)

from minigraph.backends.cuda.backend import _CudaGraph  # noqa: E402
from minigraph.core import dtypes, quants  # noqa: E402

SRC = r"""
#include <cuda_fp16.h>
// byte k (0..11) of the scales, held in the head's words 1..3
__device__ __forceinline__ int sbyte(const uint4& hd, int k) {
    const unsigned int w = (k >> 2) == 0 ? hd.y : ((k >> 2) == 1 ? hd.z : hd.w);
    return (int)((w >> (8 * (k & 3))) & 0xFF);
}
template <int R, bool REORDER>
__device__ __forceinline__ int body(const float* w_, const float* yq_, const float* yd, const float* bs_,
                                    float* dst, int M, int nsb) {
    const unsigned char* w = (const unsigned char*)w_;
    const signed char* yq = (const signed char*)yq_;
    const short* bs = (const short*)bs_;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    if (row0 >= M) return 0;
    const long long rb = (long long)nsb * 144;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
#pragma unroll 4
    for (int c = lane; c < nsb * 8; c += 32) {
        const int sb = c >> 3, j = (c & 7) >> 1, h = c & 1;
        const int4 ylo = __ldg((const int4*)(yq + sb * 256 + 64 * j + 16 * h));
        const int4 yhi = __ldg((const int4*)(yq + sb * 256 + 64 * j + 32 + 16 * h));
        const float dy = __ldg(yd + sb);
        const int blo = __ldg(bs + sb * 16 + 4 * j + h), bhi = __ldg(bs + sb * 16 + 4 * j + 2 + h);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const unsigned char* rp = w + (long long)min(row0 + r, M - 1) * rb;
            const uint4 q = __ldg((const uint4*)(REORDER ? rp + nsb * 16 + c * 16 : rp + sb * 144 + 16 + (c & 7) * 16));
            const uint4 hd = __ldg((const uint4*)(REORDER ? rp + sb * 16 : rp + sb * 144));
            const float d = __half2float(__ushort_as_half((unsigned short)(hd.x & 0xFFFF)));
            const float dm = __half2float(__ushort_as_half((unsigned short)(hd.x >> 16)));
            int sc[2], mn[2];
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                const int g = 2 * j + t;
                if (g < 4) {
                    sc[t] = sbyte(hd, g) & 63;
                    mn[t] = sbyte(hd, g + 4) & 63;
                } else {
                    sc[t] = (sbyte(hd, g + 4) & 15) | ((sbyte(hd, g - 4) >> 6) << 4);
                    mn[t] = (sbyte(hd, g + 4) >> 4) | ((sbyte(hd, g) >> 6) << 4);
                }
            }
            int slo = 0, shi = 0;
            slo = __dp4a((int)(q.x & 0x0F0F0F0Fu), ylo.x, slo); shi = __dp4a((int)((q.x >> 4) & 0x0F0F0F0Fu), yhi.x, shi);
            slo = __dp4a((int)(q.y & 0x0F0F0F0Fu), ylo.y, slo); shi = __dp4a((int)((q.y >> 4) & 0x0F0F0F0Fu), yhi.y, shi);
            slo = __dp4a((int)(q.z & 0x0F0F0F0Fu), ylo.z, slo); shi = __dp4a((int)((q.z >> 4) & 0x0F0F0F0Fu), yhi.z, shi);
            slo = __dp4a((int)(q.w & 0x0F0F0F0Fu), ylo.w, slo); shi = __dp4a((int)((q.w >> 4) & 0x0F0F0F0Fu), yhi.w, shi);
            acc[r] += dy * (d * (float)(sc[0] * slo + sc[1] * shi) - dm * (float)(mn[0] * blo + mn[1] * bhi));
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float v = acc[r];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0 && row0 + r < M) dst[row0 + r] = v;
    }
    return 0;
}
#define FORM(name, R, REORDER) \
    extern "C" __device__ int name(const float* w, const float* yq, const float* yd, const float* bs, float* dst, \
                                   int M, int nsb) { return body<R, REORDER>(w, yq, yd, bs, dst, M, nsb); }
FORM(probe_ggml_1, 1, false) FORM(probe_ggml_2, 2, false) FORM(probe_ggml_4, 4, false)
FORM(probe_reorder_1, 1, true) FORM(probe_reorder_2, 2, true) FORM(probe_reorder_4, 4, true)
"""
_FP = types.CPointer(types.float32)
WARPS = 4


def _kernel(name):
    fn = cuda.declare_device(name, types.int32(_FP, _FP, _FP, _FP, _FP, types.int32, types.int32),
                             link=[cuda.CUSource(SRC)], abi="c")
    from minigraph.backends.cuda.gdn_tc import fptr

    @cuda.jit("void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], int32, int32)")
    def k(w, yq, yd, bs, dst, m, nsb):
        fn(fptr(w, 0), fptr(yq, 0), fptr(yd, 0), fptr(bs, 0), fptr(dst, 0), m, nsb)
    return k


def reorder(rows: np.ndarray, nsb: int) -> np.ndarray:
    """ggml's Q4_K rows (M, nsb * 144) as [heads | qs] rows."""
    sb = rows.reshape(len(rows), nsb, 144)
    return np.concatenate([sb[:, :, :16].reshape(len(rows), -1), sb[:, :, 16:].reshape(len(rows), -1)], axis=1)


def reference(rows: np.ndarray, yq: np.ndarray, yd: np.ndarray) -> np.ndarray:
    """float64 dot of ggml-layout Q4_K rows with one Q8_K row (quants yq, block scales yd): the
    rows as minigraph's reference dequantizes them."""
    w = quants.dequantize(rows, dtypes.TYPE_Q4_K).astype(np.float64).reshape(len(rows), -1)
    return w @ (yq.reshape(len(yd), 256).astype(np.float64) * yd[:, None]).reshape(-1)


def _f32(a: np.ndarray):
    return cuda.to_device(np.ascontiguousarray(a).reshape(-1).view(np.float32))


def case(k: int, m: int, kernels: dict, rng, bw: float) -> None:
    nsb = k // 256
    rows = random_blocks(dtypes.TYPE_Q4_K, m, k, rng)
    yq = rng.integers(-127, 128, k, dtype=np.int8)
    yd = rng.uniform(0.01, 0.02, nsb).astype(np.float32)
    bs = yq.reshape(-1, 16).astype(np.int64).sum(-1).astype(np.int16)    # Q8_K's bsums
    ref = reference(rows, yq, yd)
    copies = max(2, -(-200_000_000 // rows.nbytes))
    src1 = (_f32(yq), _f32(yd), _f32(bs))
    out = cuda.device_array(m, np.float32)
    stream = cuda.stream()
    for layout in ("ggml", "reorder"):
        host = rows if layout == "ggml" else reorder(rows, nsb)
        ws = [_f32(host) for _ in range(copies)]
        for r in (1, 2, 4):
            kern = kernels[f"probe_{layout}_{r}"]
            grid = -(-m // (WARPS * r))
            kern[grid, 32 * WARPS, stream](ws[0], *src1, out, m, nsb)
            stream.synchronize()
            err = float(np.abs(out.copy_to_host() - ref).max() / np.abs(ref).max())
            graph = _CudaGraph.capture(stream, [(kern[grid, 32 * WARPS, stream], (ws[i % copies], *src1, out, m, nsb),
                                                 None) for i in range(20)])
            graph.launch(stream)
            stream.synchronize()
            ts = []
            for _ in range(7):
                a, b = cuda.event(), cuda.event()
                a.record(stream)
                graph.launch(stream)
                b.record(stream)
                b.synchronize()
                ts.append(cuda.event_elapsed_time(a, b) / 20 * 1e3)
            ts.sort()
            t = ts[len(ts) // 2]
            rate = rows.nbytes / t / 1e6
            print(f"  K={k:5d} M={m:5d} {layout:7s} R={r}: {t:6.2f} us ({ts[0]:.2f}-{ts[-1]:.2f}) {rate:.2f} TB/s"
                  f"{f' = {100 * rate / bw:.0f}% of read' if bw else ''}  max rel err {err:.1e}"
                  f"{'' if err < 1e-5 else '  WRONG'}", flush=True)


def main() -> None:
    bws = read_bandwidth(3)
    bw = max(bws) / 1e12 if bws else 0.0
    print(f"Q4_K mat-vec layout probe, {cuda.get_current_device().name}; read bandwidth {bw:.2f} TB/s")
    kernels = {f"probe_{lay}_{r}": _kernel(f"probe_{lay}_{r}") for lay in ("ggml", "reorder") for r in (1, 2, 4)}
    rng = np.random.default_rng(0)
    for k, m in ((4096, 4096), (4096, 14336), (14336, 4096)):
        case(k, m, kernels, rng, bw)


if __name__ == "__main__":
    main()
