"""Is the CUDA Q4_0 mat-vec bound by ggml's 18-byte blocks? A probe kernel on each row reordered
into [all qs | all d] (the row's bytes permuted inside the row, ggml-sycl's "reorder"), timed side
by side with minigraph's dot kernel on ggml's bytes and with the device's read bandwidth.

  ggml      {d f16, qs[16]} 18-byte blocks: a lane's block is 2-byte aligned, read as nine 16-bit
            loads whose warp-wide spans cover 576 bytes each (ncu: L1/TEX 80% busy, DRAM 42%)
  reorder   row = qs of blocks 0 .. K/32 - 1 (16 bytes each) then their d (2 bytes each): a lane's
            quants are one 16-byte load, every warp load of quants 512 contiguous bytes

Probe kernel soa<R, S, U, W>: W warps a block, R consecutive rows a warp (src1 loaded once for
them), S warps sharing a row slot and splitting its units (sums added in shared memory), U units
of a lane's loads issued before any is used. Lane l takes units l, l + 32 S, ...; src1 is Q8_0
as minigraph's quantize_q8 writes it (quants K bytes, block scales f32). Every form is checked
against the float64 product of the dequantized blocks. GPU time: a CUDA graph of C launches over
C distinct weight copies (together > 4x the L2), median (min-max) of the runs, us a mat-vec.

H200, 2026-12-04, one run (read bandwidth 4.44 TB/s), us, minigraph's dot kernel on ggml's bytes
then the best probe forms:
  K=4096 M=4096     5.12    R1 S1 U2 W4 4.02, R1 S1 U2 W8 4.04, R2 S2 U2 W4 4.40
  K=4096 M=14336   13.33    R2 S2 U2 W4 9.56, R2 S1 U2 W4 9.60, R2 S2 U2 W8 9.74
  K=14336 M=4096   13.30    R1 S1 U2 W4 9.87, R1 S1 U2 W8 9.89, R2 S2 U2 W8 9.90
(U1 forms 4.74 and slower): the layout bounds it, which led to backends/cuda/quant_reorder.py.
Run on the device: python benchmarks/quant_cuda_q4_0_layout_probe.py [--runs 5]
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import sys

import numpy as np
from numba import cuda

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_cuda import L2_BYTES, SHAPES, _events_time, bench_minigraph, random_blocks, read_bandwidth  # noqa: E402

from minigraph.backends.cuda.backend import CudaBackend, _CudaGraph  # noqa: E402
from minigraph.backends.cuda.driver import Module, check, device_arch, device_ptr, nvrtc_cubin_text, stream_handle  # noqa: E402
from minigraph.core import dtypes as D, quants  # noqa: E402

SRC = r"""
typedef unsigned char u8;
typedef long long i64;
static __device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// the share of one reordered Q4_0 unit (16 bytes of nibbles q, scale d) with src1's unit (ya: its
// elements 0..15, yb: 16..31, scale dy); t: the sum of src1's 32 quants (for the -8 offset)
static __device__ __forceinline__ float unit(const uint4& q, float d, const int4& ya, const int4& yb, int t, float dy) {
    int s = 0;
    s = __dp4a((int)(q.x & 0x0F0F0F0F), ya.x, s);
    s = __dp4a((int)(q.y & 0x0F0F0F0F), ya.y, s);
    s = __dp4a((int)(q.z & 0x0F0F0F0F), ya.z, s);
    s = __dp4a((int)(q.w & 0x0F0F0F0F), ya.w, s);
    s = __dp4a((int)((q.x >> 4) & 0x0F0F0F0F), yb.x, s);
    s = __dp4a((int)((q.y >> 4) & 0x0F0F0F0F), yb.y, s);
    s = __dp4a((int)((q.z >> 4) & 0x0F0F0F0F), yb.z, s);
    s = __dp4a((int)((q.w >> 4) & 0x0F0F0F0F), yb.w, s);
    return (float)(s - 8 * t) * (d * dy);
}
static __device__ __forceinline__ int ysum(const int4& ya, const int4& yb) {
    int t = 0;
    t = __dp4a(0x01010101, ya.x, t); t = __dp4a(0x01010101, ya.y, t);
    t = __dp4a(0x01010101, ya.z, t); t = __dp4a(0x01010101, ya.w, t);
    t = __dp4a(0x01010101, yb.x, t); t = __dp4a(0x01010101, yb.y, t);
    t = __dp4a(0x01010101, yb.z, t); t = __dp4a(0x01010101, yb.w, t);
    return t;
}
template <int R, int S, int U, int W>
static __device__ __forceinline__ void soa(const u8* x, const signed char* yq, const float* yd, float* dst,
                                           int M, int K, i64 rb) {
    __shared__ float part[W * R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, ks = warp % S;
    const int m0 = (blockIdx.x * (W / S) + warp / S) * R;
    const bool live = m0 < M;
    const int nu = K >> 5;
    const u8* rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = x + (i64)min(m0 + r, M - 1) * rb;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int u0 = lane + 32 * ks; live && u0 < nu; u0 += 32 * S * U) {
        uint4 q[U][R];
        unsigned short dh[U][R];
        int4 ya[U], yb[U];
        float dy[U];
#pragma unroll
        for (int j = 0; j < U; ++j) {
            const int u = u0 + 32 * S * j;
            if (u < nu) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    q[j][r] = __ldg((const uint4*)(rows[r] + 16 * (i64)u));
                    dh[j][r] = __ldg((const unsigned short*)(rows[r] + (K >> 1) + 2 * u));
                }
                ya[j] = __ldg((const int4*)(yq + 32 * (i64)u));
                yb[j] = __ldg((const int4*)(yq + 32 * (i64)u + 16));
                dy[j] = __ldg(yd + u);
            }
        }
#pragma unroll
        for (int j = 0; j < U; ++j) {
            if (u0 + 32 * S * j < nu) {
                const int t = ysum(ya[j], yb[j]);
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r] += unit(q[j][r], h2f(dh[j][r]), ya[j], yb[j], t, dy[j]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = warp_sum(acc[r]);
    if (S == 1) {
        if (lane == 0 && live)
            for (int r = 0; r < R; ++r) if (m0 + r < M) dst[m0 + r] = acc[r];
        return;
    }
    if (lane == 0)
        for (int r = 0; r < R; ++r) part[warp * R + r] = acc[r];
    __syncthreads();
    if (ks == 0 && lane == 0 && live) {
        for (int r = 0; r < R; ++r) {
            float v = 0.f;
            for (int k = 0; k < S; ++k) v += part[(warp + k) * R + r];
            if (m0 + r < M) dst[m0 + r] = v;
        }
    }
}
"""

WRAP = """extern "C" __global__ void __launch_bounds__({t}) {name}(const u8* x, const signed char* yq, const float* yd,
    float* dst, int M, int K, long long rb) {{ soa<{R}, {S}, {U}, {W}>(x, yq, yd, dst, M, K, rb); }}
"""
FORMS = [(r, s, u, w) for r, s, u, w in itertools.product((1, 2, 4), (1, 2, 4), (1, 2), (4, 8)) if w % s == 0]


def form_name(f: tuple) -> str:
    return "soa_R%d_S%d_U%d_W%d" % f


def reorder(raw: np.ndarray) -> np.ndarray:
    """ggml's Q4_0 rows (m, nb * 18 bytes) -> [qs of every block | d of every block] a row."""
    m = raw.shape[0]
    b = raw.reshape(m, -1, 18)
    return np.ascontiguousarray(np.concatenate([b[:, :, 2:].reshape(m, -1), b[:, :, :2].reshape(m, -1)], axis=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--forms", default="", help="comma-separated form names (default: all)")
    args = ap.parse_args()
    forms = [f for f in FORMS if not args.forms or form_name(f) in args.forms.split(",")]
    src = SRC + "".join(WRAP.format(name=form_name(f), R=f[0], S=f[1], U=f[2], W=f[3], t=32 * f[3]) for f in forms)
    be = CudaBackend(0)
    cubin, log = nvrtc_cubin_text(src.encode(), "q4_0_probe.cu", device_arch(), (), ("-lineinfo",), "probe")
    mod = Module(cubin, "probe")
    bw = read_bandwidth(args.runs)
    peak = float(np.median(bw)) if bw else 4.08e12
    print(f"read bandwidth {peak / 1e12:.2f} TB/s")
    rng = np.random.default_rng(0)
    stream = be.stream
    from cuda.bindings import driver as drv

    for k, m in SHAPES:
        main_row = bench_minigraph(be, D.TYPE_Q4_0, k, m, args.runs, args.reps, rng)
        bytes_w = main_row["weight_MB"] * 1e6
        copies = max(2, -(-4 * L2_BYTES // int(bytes_w)))
        raws = [random_blocks(D.TYPE_Q4_0, m, k, rng) for _ in range(copies)]
        xs = [cuda.to_device(reorder(r)) for r in raws]
        yq_h = rng.integers(-127, 128, size=k, dtype=np.int8)
        yd_h = (rng.random(k // 32) * 0.02).astype(np.float32)
        yq, yd = cuda.to_device(yq_h), cuda.to_device(yd_h)
        dst = cuda.device_array(m, np.float32)
        w0 = quants.dequantize(raws[0], D.TYPE_Q4_0).astype(np.float64)
        want = w0 @ (yq_h.astype(np.float64) * np.repeat(yd_h.astype(np.float64), 32))
        print(f"\nK={k} M={m} ({bytes_w / 1e6:.1f} MB, {copies} copies): minigraph node "
              f"{np.median(main_row['node_us']):.2f} us ({100 * bytes_w / (np.median(main_row['node_us']) * 1e-6) / peak:.0f}%),"
              f" dot {np.median(main_row['dot_us']):.2f} us ({100 * bytes_w / (np.median(main_row['dot_us']) * 1e-6) / peak:.0f}%)")
        res = []
        for f in forms:
            r_, s_, _, w_ = f
            fn = mod.function(form_name(f))
            grid = (-(-m // (w_ // s_ * r_)), 1, 1)

            def launch(x, fn=fn, grid=grid, w_=w_):
                vals = [ctypes.c_void_p(device_ptr(x)), ctypes.c_void_p(device_ptr(yq)), ctypes.c_void_p(device_ptr(yd)),
                        ctypes.c_void_p(device_ptr(dst)), ctypes.c_int(m), ctypes.c_int(k), ctypes.c_int64(k // 32 * 18)]
                ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
                check(drv.cuLaunchKernel(fn, *grid, 32 * w_, 1, 1, 0, stream_handle(stream), ctypes.addressof(ptrs), 0),
                      "probe launch")

            launch(xs[0])
            got = dst.copy_to_host(stream=stream)
            stream.synchronize()
            err = float(np.abs(got - want).max() / np.abs(want).max())
            assert err < 1e-5, (form_name(f), err)
            g = _CudaGraph.capture(stream, [(lambda x=x: launch(x), (), None) for x in xs])
            g.launch(stream)
            ts = [_events_time(stream, lambda: g.launch(stream), args.reps) / (args.reps * copies) * 1e6
                  for _ in range(args.runs)]
            res.append((float(np.median(ts)), min(ts), max(ts), form_name(f)))
        for med, lo, hi, name in sorted(res)[:8]:
            print(f"  {name:18} {med:7.2f} ({lo:.2f}-{hi:.2f}) us  {100 * bytes_w / (med * 1e-6) / peak:4.0f}% of read bw")
    return 0


if __name__ == "__main__":
    sys.exit(main())
