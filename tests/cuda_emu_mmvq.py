"""Runs backends/cuda/quant_mmvq.cu on the CPU: a test aid for machines without a GPU.

The .cu file's device-intrinsics section (between its `-- device intrinsics` markers: the f16
conversions in inline PTX, the 16-byte read-only load, the 16/32-bit word loads, griddepcontrol's
wait and release, no-ops here) is swapped for C++ that does the same and counts misaligned
addresses; the CUDA built-ins it uses (dp4a,
shfl.xor, __syncwarp, __syncthreads, __fmul_rn, __float2int_rn) are plain C++ below, with every
thread of a block an OS thread. The rest of the kernel source compiles unchanged with g++.
Shared memory starts filled with stale bytes (0xA5), so a tile or src1's quants read before they
are written give wrong numbers. Slow: small shapes only; no timing meaning.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from cuda_emu import available, build  # noqa: F401  (available: the test's skip reason)

SOURCE = Path(__file__).resolve().parents[1] / "backends" / "cuda" / "quant_mmvq.cu"

PRELUDE = r"""
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
using std::min;
using std::max;
struct dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local dim3 threadIdx;
dim3 blockIdx, blockDim;
struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
struct uint2 { unsigned x, y; };
static inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
static unsigned char* g_smem;
static std::barrier<>* g_bar;
static std::atomic<long> g_misaligned{0};
struct Warp { std::barrier<>* bar; unsigned long long v[32]; };
static Warp* g_warps;
static inline void __syncthreads() { g_bar->arrive_and_wait(); }
static inline void __syncwarp() { g_warps[threadIdx.x / 32].bar->arrive_and_wait(); }
template <class V> static inline V __shfl_xor_sync(unsigned, V v, int m) {
    Warp& w = g_warps[threadIdx.x / 32];
    const int l = threadIdx.x & 31;
    std::memcpy(&w.v[l], &v, sizeof(V));
    w.bar->arrive_and_wait();
    V r;
    std::memcpy(&r, &w.v[l ^ m], sizeof(V));
    w.bar->arrive_and_wait();
    return r;
}
static inline int __dp4a(int a, int b, int c) {       // signed bytes, as __dp4a(int, int, int)
    for (int k = 0; k < 4; ++k) c += (int)(signed char)(a >> (8 * k)) * (int)(signed char)(b >> (8 * k));
    return c;
}
static inline float __fmul_rn(float a, float b) { return a * b; }     // built with -ffp-contract=off
static inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
"""

INTRINSICS = r"""
static inline void check_align(const void* p, int n) { if ((uintptr_t)p % n) g_misaligned++; }
static inline float f16(const u8* p) { check_align(p, 2); _Float16 h; std::memcpy(&h, p, 2); return (float)h; }
static inline float round_f16(float x) { return (float)(_Float16)x; }
static inline uint4 ld16_global(const u8* p) { check_align(p, 16); uint4 r; std::memcpy(&r, p, 16); return r; }
static inline int4 ld16_int4(const int4* p) { check_align(p, 16); return *p; }
static inline float ld_f32_nc(const float* p) { check_align(p, 4); return *p; }
static inline float f16_nc(const u8* p) { return f16(p); }
static inline float f16_bits(u32 h) { unsigned short b = (unsigned short)h; _Float16 x; std::memcpy(&x, &b, 2); return (float)x; }
static inline u32 ld2(const u8* p) { check_align(p, 2); u32 r; std::memcpy(&r, p, 4); return r; }
static inline u32 ld4(const u8* p) { check_align(p, 4); u32 r; std::memcpy(&r, p, 4); return r; }
template <bool nc> static inline u32 ldw(const u8* p) { return ld4(p); }
template <bool nc> static inline u32 ldh(const u8* p) { check_align(p, 2); unsigned short r; std::memcpy(&r, p, 2); return r; }
static inline u32 funnel(u32 lo, u32 hi, int bits) { return (u32)((((u64)hi << 32) | lo) >> (bits & 31)); }
static inline void grid_wait() {}      // one launch at a time here: the grid ahead has ended
static inline void grid_release() {}
"""

DRIVER = r"""
template <class F>
static void run_grid(dim3 grid, int threads, int smem, F body) {
    std::vector<uint4> mem(smem / 16 + 2);
    for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(mem.data(), 0xA5, mem.size() * 16);     // stale bytes, not zeros
        g_smem = (unsigned char*)mem.data();
        blockIdx = {x, y, z};
        blockDim = {(unsigned)threads, 1, 1};
        std::barrier<> bar(threads);
        g_bar = &bar;
        std::vector<Warp> warps(threads / 32);
        for (auto& w : warps) w.bar = new std::barrier<>(32);
        g_warps = warps.data();
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t) ts.emplace_back([t, &body] { threadIdx = {(unsigned)t, 0, 0}; body(); });
        for (auto& t : ts) t.join();
        for (auto& w : warps) delete w.bar;
    }
}

extern "C" long emu_misaligned() { return g_misaligned.load(); }

#define KERNEL(name, A)                                                   \
    if (!std::strcmp(fn, #name)) {                                        \
        A p;                                                              \
        std::memcpy(&p, args, sizeof(A));                                 \
        run_grid({gx, gy, gz}, threads, smem, [&] { name(p); });          \
        return 0;                                                         \
    }
extern "C" int emu_launch(const char* fn, unsigned gx, unsigned gy, unsigned gz, int threads, int smem,
                          const void* args) {
    KERNELS
    return -1;
}
"""

_LIBS: dict = {}


def emulated_source(kernels: list[str]) -> str:
    src = SOURCE.read_text()
    head, rest = src.split("// -- device intrinsics", 1)
    _, tail = rest.split("// -- end of device intrinsics --", 1)
    tail = tail.replace("extern __shared__ __align__(16) u8 smem[];", "u8* smem = g_smem;")
    structs = {"quantize_q8": "QArgs", "reorder_q4_0": "RArgs", "reorder_q4_k": "RArgs"}
    calls = " ".join(f"KERNEL({k}, {structs.get(k, 'Args')})" for k in kernels)
    return PRELUDE + head + INTRINSICS + tail + DRIVER.replace("KERNELS", calls)


def _instance(name: str) -> str:
    _, t, nc = name.split("_")
    if "k" in nc:                        # mmvq_T_1k2: warps split a row's units
        return "MMVQ_K({}, {}, {})".format(t, *nc.split("k"))
    return f"MMVQ_F({t})" if nc == "f" else f"MMVQ({t}, {nc})"


def library(kernels: list[str], defines: dict) -> ctypes.CDLL:
    """The emulator of the named kernels (quantize_q8 is always there) for one config (-D values),
    cached by source and config."""
    dots = sorted(k for k in kernels if k not in ("quantize_q8", "reorder_q4_0", "reorder_q4_k"))
    text = emulated_source(["quantize_q8", "reorder_q4_0", "reorder_q4_k", *dots])
    defines = {**defines, "MMVQ_INSTANCES": " ".join(_instance(k) for k in dots)}
    key = (text, tuple(sorted(defines.items())))
    if key in _LIBS:
        return _LIBS[key]
    # -ffp-contract=off: g++ must not fuse the multiplies the kernel keeps apart (__fmul_rn)
    lib = ctypes.CDLL(str(build(text, defines, "mmvq", ("-ffp-contract=off",))))
    lib.emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_int,
                               ctypes.c_int, ctypes.c_void_p]
    lib.emu_misaligned.restype = ctypes.c_long
    _LIBS[key] = lib
    return lib


def _host_ptr(t) -> int:
    from minigraph.core.buffer import tensor_start

    return t.root._buf.data.ctypes.data + tensor_start(t)


def reorder_rows(node) -> np.ndarray:
    """src0 of `node` (Q4_0 / Q4_K, host data) through the emulated reorder_q4_0 / reorder_q4_k:
    the copy quant_reorder.Reordered makes on a GPU, as (rows, row bytes) uint8."""
    from minigraph.backends.cuda import quant_reorder as qr

    a = node.src[0]
    r = qr.Reordered(node)
    out = np.full((r.rows, r.drow), 0xA5, np.uint8)       # stale bytes where the kernel writes none
    p = qr.RArgs(src=_host_ptr(a), dst=out.ctypes.data, nu=r.nu, n1=a.ne[1], n2=a.ne[2], n3=a.ne[3], s1=a.nb[1],
                 s2=a.nb[2], s3=a.nb[3], drow=r.drow)
    lib = library([], {})
    rc = lib.emu_launch(r.kernel.encode(), -(-r.nu * r.rows // qr.THREADS), 1, 1, qr.THREADS, 0, ctypes.addressof(p))
    assert rc == 0
    return out


def run_mul_mat(node, fuse: bool = True, kernels: tuple = (), reordered: bool = False) -> tuple[np.ndarray, tuple, int]:
    """MUL_MAT `node` (quantized src0, f32 src1: leaves with host data) through the emulated
    kernels that quant_mmvq.launches would run (its grids, shared memory and fields), from a
    library of those and `kernels` (one build for many calls); `reordered` (Q4_0, Q4_K): the dot
    kernel over src0's reordered copy, as a GPU plan binds it. Returns (dst as numpy in ne order
    reversed, the workspace (yq, yd, ys), misaligned accesses seen)."""
    from minigraph.backends.cuda import quant_mmvq as qm
    from minigraph.backends.cuda import quant_reorder as qr
    from minigraph.core import dtypes as D

    a, b = node.src
    M, N, n2, n3 = node.ne
    K = a.ne[0]
    kq = D.VEC_DOT_TYPE[a.type] == D.TYPE_Q8_K
    rows = N * n2 * n3
    yq = np.zeros(rows * K, np.int8)
    yd = np.zeros(rows * (K // 256 if kq else K // 32), np.float32)
    ys = np.zeros(rows * (K // 16 if kq else K // 32), np.float32)
    dst = np.full(M * N * n2 * n3, np.nan, np.float32)
    old = qm.FUSE
    qm.FUSE = fuse and not reordered
    try:
        plan = qm.grids(node, qr.KINDS[a.type][0] if reordered else None)
    finally:
        qm.FUSE = old
    lib = library(sorted(set(plan) | set(kernels)), dict(qm.CONFIG))
    x, fields = _host_ptr(a), qm.dot_fields(node)
    if reordered:
        copy = reorder_rows(node)
        r = qr.Reordered(node)
        x = copy.ctypes.data
        fields.update(zip(("xb1", "xb2", "xb3"), r.strides()))
    before = lib.emu_misaligned()
    for name, (grid, threads, smem) in plan.items():
        if name == "quantize_q8":
            p = qm.QArgs(b=_host_ptr(b), yq=yq.ctypes.data, yd=yd.ctypes.data, ys=ys.ctypes.data,
                         **qm.quant_fields(node))
        else:
            p = qm.Args(x=x, yq=yq.ctypes.data, yd=yd.ctypes.data, ys=ys.ctypes.data,
                        dst=dst.ctypes.data, b=_host_ptr(b), **fields)
        rc = lib.emu_launch(name.encode(), *grid, threads, smem, ctypes.addressof(p))
        assert rc == 0, f"emulator has no kernel {name}"
    return dst.reshape(n3, n2, N, M), (yq, yd, ys), lib.emu_misaligned() - before
