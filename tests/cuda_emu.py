"""Runs backends/cuda/attention_mma.cu on the CPU: a test aid for machines without a GPU.

The .cu file's PTX section (between its `-- PTX intrinsics` markers) is swapped for C++ that
does what each instruction does, with every thread of a block an OS thread:
  cp.async       queued per thread, landing only at cp.async.wait_group (so a tile read before
                 its wait, or a stage overwritten while in use, gives wrong numbers); 16, 8 and 4
                 bytes, src-size bytes read and the rest zero-filled
  ldmatrix       x2/x4, plain and .trans: each lane's row address, the fragment layout of the PTX ISA
  mma.sync       m16n8k16 row.col f16 -> f32 from the lanes' A/B/C fragments
  shfl.xor, barriers, f16 conversions (_Float16, round to nearest even), ex2, prmt, f16x2 sub/mul
                 (in f32, exact for f16 operands, then one rounding)
The rest of the kernel source compiles unchanged with g++ -std=c++20. Slow (hundreds of threads a
block), so only small shapes; no timing meaning.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

SOURCE = Path(__file__).resolve().parents[1] / "backends" / "cuda" / "attention_mma.cu"

PRELUDE = r"""
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
using std::min;
using std::max;
struct dim3 { unsigned x = 0, y = 0, z = 0; };
struct alignas(16) float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
thread_local dim3 threadIdx;
dim3 blockIdx, blockDim;
static unsigned char* g_smem;
static std::barrier<>* g_bar;
struct Warp { std::barrier<>* bar; unsigned a[32][8]; float f[32][8]; };
static Warp* g_warps;
static inline void __syncthreads() { g_bar->arrive_and_wait(); }
static inline Warp& W() { return g_warps[threadIdx.x / 32]; }
static inline int LN() { return threadIdx.x & 31; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
#define __expf(x) std::exp(x)
static inline float __shfl_xor_sync(unsigned, float v, int m) {
    Warp& w = W(); int l = LN();
    w.f[l][0] = v; w.bar->arrive_and_wait();
    float r = w.f[l ^ m][0]; w.bar->arrive_and_wait();
    return r;
}
struct Copy { unsigned dst; const void* src; int n; int size; };
thread_local std::vector<Copy> t_open;
thread_local std::vector<std::vector<Copy>> t_groups;
"""

INTRINSICS = r"""
static inline u32 smem_addr(const void* p) { return (u32)((const unsigned char*)p - g_smem); }
static inline void cp16(u32 dst, const void* src, bool ok) { t_open.push_back({dst, src, ok ? 16 : 0, 16}); }
static inline void cp16n(u32 dst, const void* src, int n) { t_open.push_back({dst, src, n, 16}); }
static inline void cpw(u32 dst, const void* src, bool ok) { t_open.push_back({dst, src, ok ? CW : 0, CW}); }
static inline void cp_commit() { t_groups.push_back(t_open); t_open.clear(); }
template <int N> static inline void cp_wait() {
    while ((int)t_groups.size() > N) {
        for (auto& c : t_groups.front()) {
            std::memcpy(g_smem + c.dst, c.src, c.n);
            std::memset(g_smem + c.dst + c.n, 0, c.size - c.n);
        }
        t_groups.erase(t_groups.begin());
    }
}
static inline u32 ld32(u32 a) { u32 r; std::memcpy(&r, g_smem + a, 4); return r; }
static inline u32 ld16(u32 a) { u16 r; std::memcpy(&r, g_smem + a, 2); return r; }
static inline void ldm(int n, bool trans, u32 a, u32* r) {
    Warp& w = W(); int l = LN();
    w.a[l][0] = a; w.bar->arrive_and_wait();
    for (int j = 0; j < n; ++j) {
        if (!trans) r[j] = ld32(w.a[8 * j + l / 4][0] + 4 * (l % 4));
        else r[j] = ld16(w.a[8 * j + 2 * (l % 4)][0] + 2 * (l / 4)) | (ld16(w.a[8 * j + 2 * (l % 4) + 1][0] + 2 * (l / 4)) << 16);
    }
    w.bar->arrive_and_wait();
}
static inline void ldm_x4(u32 a, u32& r0, u32& r1, u32& r2, u32& r3) { u32 r[4]; ldm(4, false, a, r); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3]; }
static inline void ldm_x2(u32 a, u32& r0, u32& r1) { u32 r[2]; ldm(2, false, a, r); r0 = r[0]; r1 = r[1]; }
static inline void ldm_x4t(u32 a, u32& r0, u32& r1, u32& r2, u32& r3) { u32 r[4]; ldm(4, true, a, r); r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3]; }
static inline void ldm_x2t(u32 a, u32& r0, u32& r1) { u32 r[2]; ldm(2, true, a, r); r0 = r[0]; r1 = r[1]; }
static inline float hf(u32 word, int hi) { u16 b = hi ? (u16)(word >> 16) : (u16)word; _Float16 h; std::memcpy(&h, &b, 2); return (float)h; }
static inline void mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    Warp& w = W(); int l = LN();
    u32* s = w.a[l]; s[0] = a0; s[1] = a1; s[2] = a2; s[3] = a3; s[4] = b0; s[5] = b1;
    w.bar->arrive_and_wait();
    const int g = l / 4, t4 = l % 4;
    float d[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * t4 + (e % 2);
        float acc = c[e];
        for (int kk = 0; kk < 16; ++kk) {
            const float av = hf(w.a[(row % 8) * 4 + (kk % 8) / 2][(row >= 8) + 2 * (kk >= 8)], kk % 2);
            const float bv = hf(w.a[col * 4 + (kk % 8) / 2][4 + (kk >= 8)], kk % 2);
            acc += av * bv;
        }
        d[e] = acc;
    }
    w.bar->arrive_and_wait();
    for (int e = 0; e < 4; ++e) c[e] = d[e];
}
static inline u32 pack_h2(float lo, float hi) {
    _Float16 a = (_Float16)lo, b = (_Float16)hi; u16 x, y; std::memcpy(&x, &a, 2); std::memcpy(&y, &b, 2);
    return (u32)x | ((u32)y << 16);
}
static inline float h2f(u16 h) { _Float16 v; std::memcpy(&v, &h, 2); return (float)v; }
static inline float ex2(float x) { return std::exp2(x); }
static inline u32 prmt(u32 a, u32 b, u32 sel) {
    unsigned char bytes[8], out[4];
    std::memcpy(bytes, &a, 4); std::memcpy(bytes + 4, &b, 4);
    for (int j = 0; j < 4; ++j) out[j] = bytes[(sel >> (4 * j)) & 7];
    u32 r; std::memcpy(&r, out, 4); return r;
}
static inline u32 hop2(u32 a, u32 b, bool mul) {   // f16x2 sub / mul, each half rounded once
    float r[2];
    for (int j = 0; j < 2; ++j) { float x = hf(a, j), y = hf(b, j); r[j] = mul ? x * y : x - y; }
    return pack_h2(r[0], r[1]);
}
static inline u32 hsub2(u32 a, u32 b) { return hop2(a, b, false); }
static inline u32 hmul2(u32 a, u32 b) { return hop2(a, b, true); }
"""

DRIVER = r"""
template <class F>
static void run_grid(dim3 grid, int threads, int smem, F body) {
    std::vector<unsigned char> mem(smem + 16);
    for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
    for (unsigned x = 0; x < grid.x; ++x) {
        std::fill(mem.begin(), mem.end(), 0xA5);   // stale bytes, not zeros
        g_smem = mem.data();
        blockIdx = {x, y, z};
        blockDim = {(unsigned)threads, 1, 1};
        std::barrier<> bar(threads);
        g_bar = &bar;
        std::vector<Warp> warps(threads / 32);
        for (auto& w : warps) { w.bar = new std::barrier<>(32); }
        g_warps = warps.data();
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t) ts.emplace_back([t, &body] { threadIdx = {(unsigned)t, 0, 0}; t_open.clear(); t_groups.clear(); body(); });
        for (auto& t : ts) t.join();
        for (auto& w : warps) delete w.bar;
    }
}

extern "C" void emu_chunk(unsigned gx, unsigned gy, unsigned gz, int smem, const i64* meta, const float* q,
                          const void* k, const void* v, const void* mask, float* part, float scale, float max_bias,
                          float softcap, float m0, float m1, int n_log2, int has_mask, int mask_f32, int v_off,
                          int chunk, int n_parts) {
    run_grid({gx, gy, gz}, NT, smem, [=] { fa_mma_chunk(meta, q, k, v, mask, part, scale, max_bias, softcap, m0, m1,
                                                         n_log2, has_mask, mask_f32, v_off, chunk, n_parts); });
}

extern "C" void emu_combine(unsigned gx, unsigned gy, const i64* meta, float* dst, const float* sinks,
                            const float* part, int has_sinks, int n_parts) {
    run_grid({gx, gy, 1}, COMBINE_THREADS, 0, [=] { fa_mma_combine(meta, dst, sinks, part, has_sinks, n_parts); });
}
"""

_LIBS: dict = {}


def available() -> Optional[str]:
    """None when g++ can build the emulator, else why not."""
    if shutil.which("g++") is None:
        return "no g++"
    return None


def emulated_source() -> str:
    src = SOURCE.read_text()
    head, rest = src.split("// -- PTX intrinsics", 1)
    _, tail = rest.split("// -- end of PTX intrinsics --", 1)
    tail = tail.replace("extern __shared__ __align__(16) unsigned char smem[];", "unsigned char* smem = g_smem;")
    return PRELUDE + head + INTRINSICS + tail + DRIVER


def build(text: str, defines: dict, name: str, flags: tuple = ()) -> Path:
    """The shared library g++ builds from emulator source `text` with -D `defines` (and extra
    `flags`), cached in the temp folder by source, config and flags; written atomically, so
    concurrent test workers never load half a file."""
    key = hashlib.sha1((text + repr(sorted(defines.items())) + repr(flags)).encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"minigraph_{name}_emu_{key}.so"
    if not out.exists():
        cpp = out.with_suffix(f".{os.getpid()}.cpp")
        cpp.write_text(text)
        defs = [f"-D{k}={v}" for k, v in defines.items()]
        tmp = out.with_suffix(f".{os.getpid()}.so")
        subprocess.run(["g++", "-std=c++20", "-O1", *flags, "-shared", "-fPIC", "-pthread", *defs,
                        "-o", str(tmp), str(cpp)], check=True, capture_output=True, text=True)
        os.replace(tmp, out)
    return out


def library(defines: dict) -> ctypes.CDLL:
    """The emulator built for one kernel config (-D values), cached by source and config."""
    text = emulated_source()
    key = (text, tuple(sorted(defines.items())))
    if key in _LIBS:
        return _LIBS[key]
    lib = ctypes.CDLL(str(build(text, defines, "fa")))
    P, F, I, U = ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_uint
    lib.emu_chunk.argtypes = [U, U, U, I, P, P, P, P, P, P, F, F, F, F, F, I, I, I, I, I, I]
    lib.emu_combine.argtypes = [U, U, P, P, P, P, I, I]
    _LIBS[key] = lib
    return lib


def run_flash_attn(node, n_chunks: int, override: Optional[dict] = None):
    """FLASH_ATTN_EXT `node` (leaves with host data) through the emulated kernels, with the config
    attention_mma.config picks (fields replaced by `override`) and about n_chunks kv chunks.
    Returns dst as numpy (ne3, n_q, n_head, DV)."""
    import math
    from dataclasses import replace

    import numpy as np

    from minigraph.backends.cuda import attention_mma as fm
    from minigraph.core import dtypes
    from minigraph.core.buffer import tensor_start

    q, k, v, mask, sinks = node.src
    c = replace(fm.config(node), **(override or {}))
    DV, n_head, n_q, n3 = node.ne
    dst = np.zeros((n3, n_q, n_head, DV), np.float32)
    meta = np.zeros(7 * 9, np.int64)
    ptrs = [dst.ctypes.data]
    meta[1:5] = node.ne
    meta[5:9] = [1, DV, DV * n_head, DV * n_head * n_q]
    for s, t in enumerate([q, k, v, mask, sinks], start=1):
        if t is None:
            ptrs.append(dst.ctypes.data)
            continue
        es = 1 if dtypes.is_quantized(t.type) else dtypes.type_size(t.type)   # quantized: meta in bytes
        meta[s * 9] = tensor_start(t) // es
        meta[s * 9 + 1:s * 9 + 5] = t.ne
        meta[s * 9 + 5:s * 9 + 9] = [x // es for x in t.nb]
        ptrs.append(t.root._buf.data.ctypes.data)
    n_kv = k.ne[1]
    chunk = -(-(-(-n_kv // n_chunks)) // c.BN) * c.BN
    n_chunks = -(-n_kv // chunk)
    max_bias = float(node.op_params["max_bias"])
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    part = np.full(n_head * n_q * n3 * n_chunks * (DV + 2), np.nan, np.float32)
    n_rg = -(-(n_head // k.ne[2]) * n_q // fm.ROWS)
    lib = library({f: getattr(c, f) for f in fm.DEFINES})
    p = node.op_params
    lib.emu_chunk(n_chunks, n_rg * k.ne[2], n3, fm.smem_bytes(c), meta.ctypes.data, ptrs[1], ptrs[2], ptrs[3], ptrs[4],
                  part.ctypes.data, float(p["scale"]), max_bias, float(p["logit_softcap"]), m0, m1, n_log2,
                  int(mask is not None), int(mask is not None and mask.type == dtypes.TYPE_F32),
                  max(0, fm.share_offset(node)), chunk, n_chunks)
    lib.emu_combine(n_head * n_q * n3, -(-DV // fm.COMBINE_THREADS), meta.ctypes.data, ptrs[0], ptrs[5], part.ctypes.data,
                    int(sinks is not None), n_chunks)
    return dst


def nvrtc_available() -> bool:
    """Whether NVRTC (cuda.bindings with libnvrtc) is here: the .cu files' sm_90 compile checks."""
    try:
        from cuda.bindings import nvrtc

        return nvrtc.nvrtcVersion()[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # noqa: BLE001 - no cuda.bindings or no libnvrtc
        return False
