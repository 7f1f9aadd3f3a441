"""GATED_DELTA_NET kernels in CUDA C++ on a real GPU: the chunked form on tensor cores in 3xTF32
(gdn_tc_prep.cu: per chunk the gates, A, P, the WY solve, U and W; gdn_tc_state.cu: the sequential
pass over the chunks, which also writes the output; GDA and KDA) and the decode stream
(gdn_tc_decode.cu), shared primitives in gdn_tc.cuh. Float64 gate cumsums keep them within 6.2e-7
of float64 (H200, gates down to -60, T up to 16384); speed (H200, S=128, H_v=32): prefill T=4096
640 us (prep / state and output 232 / 426 us), fla's tf32 chunk kernel 787 us in the same run
(1.23x); T=16384 2.46 ms against fla's 3.06 (1.25x). The state pass keeps each warp's slice of the
state in accumulator registers (transposed, so a C fragment serves as the next product's A) and
takes Q_c M beside W_c M from the same split fragments, so the state at each chunk's start is never
written out (134 MB at T=4096; the output kernel that read it back took 226 us, and writing it
~50 us of the state pass). The kernels are bound by instruction issue and latency (3xTF32:
fragment splits and fp32 sums around each mma), hence the integer-op split and ACC 3. Decode
B=256 279-282 us (NVRTC build; 285-292 linked into a Numba kernel).
KDA (per-key gates, H_k=16, H_v=32): its prep gates K and Q rows in place (per key and 16-row block,
float64 offsets) and takes all ten lower 16x16 blocks of A and P as tensor-core products, the
diagonal ones through e^-tot per key where a key decays by at most e^-60 inside the block (the rest
pair by pair: gdn_tc_prep.cu); H200, T=4096: prep 380-398 us (789 before: the diagonal blocks pair
by pair, the gating serial), the whole 780-800 us against fla's chunk_kda 948-1245 us in the same
runs (1.21x-1.56x: fla's time moved between machine starts); T=16384 3.11-3.13 ms (prep 1.52 ms,
state 1.66-1.71) against 3.66-3.77 (1.18-1.20x). Worst off float64 over the correctness cases
6.2e-7 (KDA 5.9e-7).

numba-cuda compiles each .cu with NVRTC and links it into a thin Numba kernel that reads the
meta row (backend convention, common.py) and calls the C function with pointers and dims
(`cuda.declare_device(..., abi="c")`). The chunked kernels want more than 48 KB of dynamic shared
memory, so each is compiled eagerly for the backend's argument types and its limit raised
(`SmemKernel`). The decode is compiled by NVRTC itself instead, as a __global__ that reads the
meta row the same way and is launched through the driver (DEC_NVRTC: 1-3% faster on an H200).
The simulator (and CI) never come here: gdn_fast.py keeps the plain Numba kernels for it, and
`available()` says whether this path is on.

Layout as in gdn_fast.py (ggml ne; numpy shapes reversed): q, k [S, H_k, T, n_seqs_qk]; v
[S, H_v, T, n_seqs]; g [1 or S, H_v, T, n_seqs]; beta [1, H_v, T, n_seqs]; state [S, S, H_v,
n_seqs] (row j of a head is S[:, j]); dst [S*H_v, T*n_seqs + K*S*n_seqs].
Workspace of the chunked form (hs = H_v * n_seqs, nc = ceil(T / 64), Tp = 64 nc): U [hs][Tp][S],
W [hs][nc][64][S], P [hs][nc][64][64], gates [hs][Tp][2] (e^gc, e^(gl - gc); KDA: [hs][nc][S], e^gl
per key), one unused slot of 4 floats (it held the state at each chunk's start for the former
output kernel), KDA only: Kg = K e^(gl - gc) and Qg = Q e^gc [hs][Tp][S] (GDA: 4 floats each,
unused).
"""
from __future__ import annotations

import ctypes
import os
from typing import Any, Optional

import numpy as np
from numba import cuda

from minigraph.core import flags
from minigraph.backends.cuda.common import SIM, SLOT_W, Launch
from minigraph.backends.cuda.driver import Module, RawKernel, device_arch, device_ptr, nvrtc_cubin_text

CHUNK = 64                 # tokens per chunk (fixed by the kernels' tiles)
MAX_S = 128
THREADS = 256              # prep blocks (GDA)
KDA_THREADS = 512          # KDA prep blocks (146 KB of shared memory: one block an SM, so 16 warps rather
                           # than 8; H200: T=4096 380 us against 390 at 256, T=16384 1524 against 1577)
STATE_NJ = 2               # state pass: 16-column j-tiles a block (ceil(S / 16 NJ) blocks a head)
STATE_KS = 4               # state pass: warps a j-tile, splitting the key index (2, 4 or 8; H200,
                           # T=4096, before the output moved in: cvt.rna splits, ACC 2: 1 / 2 / 4:
                           # 2057 / 640 / 446 us, one warp a scheduler starves on instruction fetch;
                           # integer splits, ACC 1: 2: 480, 4: 315 us; ACC 3: 4: 319, 8: 331 us)
ACC = 3                    # 3xTF32 accumulation mode (gdn_tc.cuh's GDN_ACC; H200, T=4096: the state
                           # pass with the output 426 us at 3 against 490 at 1 (255 registers), the
                           # former output kernel 205-214 against 223-227; worst over
                           # benchmarks/gdn_cuda.py's correctness cases 6.2e-7 off float64 (T=1000,
                           # gates >= -20: 7.4e-7 against 4.2e-7 at 1). Earlier, cvt.rna splits,
                           # three kernels: 2: 1208 us, 1: 1089 us, 0: 1003 us but 1.2e-6 off)
SPLIT = 1                  # fp32 -> tf32 hi + lo split (gdn_tc.cuh's GDN_SPLIT: 1 integer ops, 0 cvt.rna;
                           # H200, T=4096, ACC 1, three kernels: prep / state / out 222 / 315 / 225 us
                           # against 258 / 417 / 263; cvt.rna 3.8e-7 off float64 on the T=1000 case.
                           # 2, hi left to the unit's truncation: one instruction less a split but
                           # ~1e-6 off in the emulator, a bias every product shares: not timed)
SPECIAL_S = (128,)         # S compiled in as a constant (Qwen3-Next, Kimi Linear); others at run time
DEC_ROWS = 4               # decode: passes of 4 state rows an item (DP in the .cu; H200, B=256,
                           # uncapped: 321 / 301 / 288 us at 1 / 2 / 4)
DEC_REGS = 128             # decode: register cap (0: none; rows 4 at 128: no spills, 16 warps an SM:
                           # 286 us at B=256, 3.75 TB/s of the copy's 4.16)
DEC_WARPS = 4              # decode: warps a block
DEC_NVRTC = True           # decode: compiled by NVRTC as a __global__ of its own (_DEC_KERNEL), not linked
                           # into a Numba kernel: H200, B=256 GDA, the same floats, 278.8-282.4 us over four
                           # probe runs against 284.5-291.9 for the linked form in the same runs (reading
                           # the meta row measured free: the compile is the difference). Off, or where
                           # NVRTC fails: the linked form
DEC_MIN_BLOCKS = 3         # the NVRTC decode's __launch_bounds__ blocks an SM: 146 registers, no spills
                           # (4: 128 and 8 bytes of spills, 280.7-281.7 us; 5: 96 and spills, 331 us)
PREP_REGS = 128            # GDA: 2 blocks of 256 threads an SM; KDA: 1 of 512
_HERE = os.path.dirname(os.path.abspath(__file__))

# shared memory of each kernel in floats (the .cu files' *_SMEM_FLOATS)
_L, _SMAX = CHUNK, MAX_S
PREP_SMEM = 4 * (_L * 132 + _L * 136 + _L * 68 + 3 * _L + 2 * _L)
# KDA: the gates (then K gamma), float64 block sums, per-key scales, the bad keys' diagonal terms, their lists
PREP_SMEM_KDA = PREP_SMEM + 4 * (_L * 132 + 16 * _SMAX + 19 * _SMAX + 2048 + 4 * _SMAX + 8)
NWS = 7                    # workspace arrays of the chunked launches
MAX_SMEM = 227 * 1024      # dynamic shared memory a block may opt into on sm_90, the most any layout
                           # may take (available() asks the device itself: sm_80 offers 163 KB)


def state_smem(nj: int, ks: int) -> int:
    """gdn_tc_state.cu's STATE_SMEM_FLOATS in bytes: W_c, Q_c, K_c twice, P_c twice, the partials,
    D^T twice (plain and scaled)."""
    return 4 * (2 * _L * 136 + 2 * _L * 132 + 2 * _L * 72 + (ks + 2) * nj * 8 * 128)


def available() -> bool:
    """True on a real GPU of compute capability >= 8.0 (cp.async, tf32 mma) whose blocks may
    take the kernels' shared memory (the state pass wants ~223 KB: Hopper's 227, not A100's 163)
    unless MINIGRAPH_CUDA_TENSOR_CORES=0."""
    if SIM or not flags.cuda_tensor_cores():
        return False
    try:
        if not cuda.is_available():
            return False
        dev = cuda.get_current_device()
        need = max(state_smem(STATE_NJ, STATE_KS), PREP_SMEM_KDA)
        return dev.compute_capability >= (8, 0) and dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN >= need
    except Exception:  # noqa: BLE001 - no driver, no device: the Numba kernels run
        return False


def source(kernel: str, defines: Optional[dict] = None) -> str:
    """The NVRTC source of one kernel file: its #defines, gdn_tc.cuh, then the file."""
    head = "".join(f"#define {k} {v}\n" for k, v in (defines or {}).items())
    with open(os.path.join(_HERE, "gdn_tc.cuh")) as f:
        common = f.read()
    with open(os.path.join(_HERE, kernel)) as f:
        body = f.read()
    return head + common + "\n" + body


class SmemKernel:
    """A Numba kernel launched with `nbytes` of dynamic shared memory: kernel[grid, block, stream]
    (*args) like a dispatcher. Compiled eagerly for one signature, so the limit (beyond the
    default 48 KB) is raised once on that one compiled function."""

    def __init__(self, dispatcher: Any, nbytes: int) -> None:
        self.dispatcher = dispatcher
        self.nbytes = nbytes
        from numba.cuda.cudadrv.driver import binding, driver

        for kern in dispatcher.overloads.values():
            cufunc = kern._codelibrary.get_cufunc()
            attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            driver.cuKernelSetAttribute(attr, nbytes, cufunc.handle, cufunc.device.id)

    def __getitem__(self, cfg: tuple) -> Any:
        grid, block = cfg[0], cfg[1]
        stream = cfg[2] if len(cfg) > 2 else 0
        return self.dispatcher[grid, block, stream, self.nbytes]

    @property
    def regs(self) -> int:
        return next(iter(self.dispatcher.overloads.values()))._codelibrary.get_cufunc().attrs.regs


if not SIM:
    from numba import types
    from numba.cuda.extending import intrinsic

    _FP = types.CPointer(types.float32)
    _I = types.int64

    @intrinsic
    def fptr(typingctx, a, i):
        """&a[i] as a float* (no bounds check, no wrap-around)."""
        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, value=args[0])
            return builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        return _FP(a, i), codegen

    _ARR = "float32[::1]"

    def _sig(ws: bool, sd: bool) -> str:
        """meta, dst and the six sources (and the state destination), K, hd (the q/k head divisor:
        value head h reads (h / hd) % H_k), then the workspace."""
        arrays = ", ".join([_ARR] * (8 if sd else 7))
        return f"void(int64[::1], {arrays}, int64, int64{''.join(', ' + _ARR for _ in range(NWS if ws else 0))})"


_CACHE: dict = {}


def _declare(name: str, kernel: str, nptr: int, nint: int, defines: Optional[dict] = None) -> Any:
    # an int return (always 0): numba's C-ABI call of a void function declares a 64-bit return
    # value, a prototype nvlink rejects against the real void one
    return cuda.declare_device(name, types.int32(*([_FP] * nptr), *([_I] * nint)),
                               link=[cuda.CUSource(source(kernel, defines))], abi="c")


# Each wrapper comes in two forms: the node's six sources, or seven with the state destination
# (attach_state_dst, K == 1), which then takes the final state instead of dst's snapshot slot 0.
# The C functions get that slot's address either way (the prep kernel ignores it).

def _prep_py(fn: Any, kda: bool, sd: bool) -> Any:
    def run(meta, q, k, v, g, beta, Uw, Ww, Pw, Gw, KGw, QGw, hd):
        fn(fptr(q, meta[SLOT_W]), fptr(k, meta[2 * SLOT_W]), fptr(v, meta[3 * SLOT_W]),
           fptr(g, meta[4 * SLOT_W]), fptr(beta, meta[5 * SLOT_W]), fptr(Uw, 0), fptr(Ww, 0),
           fptr(Pw, 0), fptr(Gw, 0), fptr(KGw, 0), fptr(QGw, 0), meta[3 * SLOT_W + 1], meta[3 * SLOT_W + 2],
           meta[3 * SLOT_W + 3], meta[SLOT_W + 2], meta[3 * SLOT_W + 4] // meta[SLOT_W + 4], hd)
    run = cuda.jit(device=True)(run)
    if sd:
        def prep(meta, dst, q, k, v, g, beta, state, sdst, K, hd, Uw, Ww, Pw, Gw, Hw, KGw, QGw):
            run(meta, q, k, v, g, beta, Uw, Ww, Pw, Gw, KGw, QGw, hd)
    else:
        def prep(meta, dst, q, k, v, g, beta, state, K, hd, Uw, Ww, Pw, Gw, Hw, KGw, QGw):
            run(meta, q, k, v, g, beta, Uw, Ww, Pw, Gw, KGw, QGw, hd)
    return prep


def _state_py(fn: Any, kda: bool, sd: bool) -> Any:
    def run(meta, dst, q, k, state, out, so, hd, Uw, Ww, Pw, Gw, KGw, QGw):
        S, Hv, T, N = meta[3 * SLOT_W + 1], meta[3 * SLOT_W + 2], meta[3 * SLOT_W + 3], meta[3 * SLOT_W + 4]
        ks = fptr(KGw, 0) if kda else fptr(k, meta[2 * SLOT_W])     # KDA: prep's K e^(gl - gc)
        qs = fptr(QGw, 0) if kda else fptr(q, meta[SLOT_W])          # and Q e^gc
        fn(ks, qs, fptr(state, meta[6 * SLOT_W]), fptr(out, so), fptr(dst, meta[0]),
           fptr(Uw, 0), fptr(Ww, 0), fptr(Pw, 0), fptr(Gw, 0), S, Hv, T, meta[SLOT_W + 2], N // meta[SLOT_W + 4], hd)
    run = cuda.jit(device=True)(run)
    if sd:
        def state_pass(meta, dst, q, k, v, g, beta, state, sdst, K, hd, Uw, Ww, Pw, Gw, Hw, KGw, QGw):
            run(meta, dst, q, k, state, sdst, meta[7 * SLOT_W], hd, Uw, Ww, Pw, Gw, KGw, QGw)
    else:
        def state_pass(meta, dst, q, k, v, g, beta, state, K, hd, Uw, Ww, Pw, Gw, Hw, KGw, QGw):
            so = meta[0] + meta[3 * SLOT_W + 1] * meta[3 * SLOT_W + 2] * meta[3 * SLOT_W + 3] * meta[3 * SLOT_W + 4]
            run(meta, dst, q, k, state, dst, so, hd, Uw, Ww, Pw, Gw, KGw, QGw)
    return state_pass


def _decode_py(fn: Any, kda: bool, sd: bool) -> Any:
    def run(meta, dst, q, k, v, g, beta, state, out, so, K, hd):
        fn(fptr(q, meta[SLOT_W]), fptr(k, meta[2 * SLOT_W]), fptr(v, meta[3 * SLOT_W]),
           fptr(g, meta[4 * SLOT_W]), fptr(beta, meta[5 * SLOT_W]), fptr(state, meta[6 * SLOT_W]),
           fptr(dst, meta[0]), fptr(out, so), meta[3 * SLOT_W + 1], meta[3 * SLOT_W + 2], meta[3 * SLOT_W + 4],
           meta[SLOT_W + 2], meta[3 * SLOT_W + 4] // meta[SLOT_W + 4], K, hd)
    run = cuda.jit(device=True)(run)
    if sd:
        def decode(meta, dst, q, k, v, g, beta, state, sdst, K, hd):
            run(meta, dst, q, k, v, g, beta, state, sdst, meta[7 * SLOT_W], K, hd)
    else:
        def decode(meta, dst, q, k, v, g, beta, state, K, hd):
            so = meta[0] + meta[3 * SLOT_W + 1] * meta[3 * SLOT_W + 2] * meta[3 * SLOT_W + 4]   # T == 1
            run(meta, dst, q, k, v, g, beta, state, dst, so, K, hd)
    return decode


# name, .cu file, pointer and integer arguments of its C function, the Python wrapper
SPECS = {"prep": ("gdn_tc_prep", "gdn_tc_prep.cu", 11, 6, _prep_py),
         "state": ("gdn_tc_state", "gdn_tc_state.cu", 9, 6, _state_py),
         "decode": ("gdn_tc_decode", "gdn_tc_decode.cu", 8, 7, _decode_py)}


def wrapper(kind: str, defines: dict, sd: bool = False) -> tuple:
    """(python kernel, signature) of one kernel: the Numba side, before compilation (also what a
    local build check compiles to PTX with cuda.compile_ptx); sd: the form of a node with a state
    destination."""
    name, cu, nptr, nint, make = SPECS[kind]
    fn = _declare(name, cu, nptr, nint, defines)
    kda = bool(defines.get("GDN_KDA", 0) or defines.get("KDA", 0))
    return make(fn, kda, sd), _sig(kind != "decode", sd)


def _defs(S: Optional[int], **kw: int) -> dict:
    """#defines of one build: S fixed at compile time for the S the models use (SPECIAL_S)."""
    d = dict(kw, GDN_SPLIT=SPLIT)
    if S in SPECIAL_S:
        d["GDN_S"] = S
    return d


def prep_threads(kda: bool) -> int:
    """Threads of a prep block."""
    return KDA_THREADS if kda else THREADS


def prep_kernel(S: Optional[int] = None, kda: bool = False, acc: int = ACC, sd: bool = False) -> SmemKernel:
    """chunk c, head h, seq: gates, A, P, Tm = (I + A)^-1, U, W (gdn_tc_prep.cu), prep_threads(kda)
    threads a block."""
    key = ("prep", S in SPECIAL_S and S, kda, acc, SPLIT, prep_threads(kda), sd)
    if key not in _CACHE:
        py, sig = wrapper("prep", _defs(S, GDN_ACC=acc, GDN_KDA=int(kda), PREP_THREADS=prep_threads(kda)), sd)
        _CACHE[key] = SmemKernel(cuda.jit(sig, max_registers=PREP_REGS)(py), PREP_SMEM_KDA if kda else PREP_SMEM)
    return _CACHE[key]


def state_kernel(S: Optional[int] = None, kda: bool = False, nj: int = STATE_NJ, acc: int = ACC,
                 ks: int = STATE_KS, sd: bool = False) -> SmemKernel:
    """16 nj value columns, head h, seq: the sequential pass over the chunks and the output
    (gdn_tc_state.cu), ks warps a 16-column tile (32 nj ks threads)."""
    key = ("state", S in SPECIAL_S and S, kda, nj, acc, ks, SPLIT, sd)
    if ks not in (2, 4, 8) or state_smem(nj, ks) > MAX_SMEM:
        raise ValueError(f"GATED_DELTA_NET (cuda): no state pass of {nj} column tiles x {ks} warps (2, 4 or 8 "
                         f"warps a tile, at most {MAX_SMEM} bytes of shared memory: {state_smem(nj, ks)})")
    if key not in _CACHE:
        py, sig = wrapper("state", _defs(S, STATE_NJ=nj, GDN_ACC=acc, STATE_KS=ks, GDN_KDA=int(kda)), sd)
        # a block of 512 threads must fit the register file: 128 a thread at most
        cap = {"max_registers": 65536 // (32 * nj * ks) // 8 * 8} if 32 * nj * ks > 256 else {}
        _CACHE[key] = SmemKernel(cuda.jit(sig, **cap)(py), state_smem(nj, ks))
    return _CACHE[key]


def decode_kernel(kda: bool, S: Optional[int] = None, rows: int = DEC_ROWS, regs: int = DEC_REGS,
                  sd: bool = False, nvrtc: Optional[bool] = None) -> Any:
    """T == 1: items of 4*rows state rows, eight lanes a row (gdn_tc_decode.cu). nvrtc (default
    DEC_NVRTC): the NVRTC form, launched like the Numba one (`regs` then unused: its launch bounds
    set the registers), or the Numba kernel linking the same C function."""
    if (DEC_NVRTC if nvrtc is None else nvrtc):
        key = ("decode-nvrtc", cuda.get_current_device().id, kda, S in SPECIAL_S and S, rows, SPLIT)
        if key not in _CACHE:
            try:
                _CACHE[key] = _nvrtc_decode(_defs(S, DP=rows, KDA=int(kda)))
            except Exception as e:  # noqa: BLE001 - remembered: the linked form runs instead
                _CACHE[key] = f"{type(e).__name__}: {e}"
        if not isinstance(_CACHE[key], str):
            return _CACHE[key]
    key = ("decode", kda, S in SPECIAL_S and S, rows, regs, SPLIT, sd)
    if key not in _CACHE:
        py, sig = wrapper("decode", _defs(S, DP=rows, KDA=int(kda)), sd)
        _CACHE[key] = cuda.jit(sig, **({"max_registers": regs} if regs else {}))(py)
    return _CACHE[key]


# The decode as a kernel of its own: the meta row read as the Numba wrapper (_decode_py) reads it;
# sdst null: the new state goes to dst's snapshot slot 0, after the T == 1 outputs
_DEC_KERNEL = r"""
extern "C" __global__ void __launch_bounds__(32 * DEC_WARPS, DEC_MIN_BLOCKS)
gdn_decode_k(const long long* meta, float* dst, const float* q, const float* k, const float* v, const float* g,
             const float* beta, const float* state, float* sdst, long long K, long long hd) {
    const long long W = SLOT_W, S = meta[3 * W + 1], Hv = meta[3 * W + 2], N = meta[3 * W + 4];
    float* out = sdst ? sdst + meta[7 * W] : dst + meta[0] + S * Hv * N;
    gdn_tc_decode(q + meta[W], k + meta[2 * W], v + meta[3 * W], g + meta[4 * W], beta + meta[5 * W],
                  state + meta[6 * W], dst + meta[0], out, S, Hv, N, meta[W + 2], N / meta[W + 4], K, hd);
}
"""


def _pack_decode(meta: Any, dst: Any, q: Any, k: Any, v: Any, g: Any, beta: Any, state: Any, *rest: Any) -> list:
    """gdn_decode_k's parameters from the Numba decode's arguments: (sdst,) K, hd."""
    P = ctypes.c_void_p
    sdst = P(device_ptr(rest[0])) if len(rest) == 3 else P(0)
    return [*(P(device_ptr(a)) for a in (meta, dst, q, k, v, g, beta, state)), sdst,
            ctypes.c_longlong(int(rest[-2])), ctypes.c_longlong(int(rest[-1]))]


def _nvrtc_decode(defines: dict) -> RawKernel:
    """gdn_decode_k compiled by NVRTC for the current device and loaded into its context."""
    what = "GATED_DELTA_NET decode"
    defs = dict(defines, SLOT_W=SLOT_W, DEC_WARPS=DEC_WARPS, DEC_MIN_BLOCKS=DEC_MIN_BLOCKS)
    text = source("gdn_tc_decode.cu", defs) + _DEC_KERNEL
    mod = Module(nvrtc_cubin_text(text.encode(), "gdn_tc_decode.cu", device_arch(), (), (), what)[0], what)
    kern = RawKernel(mod.function("gdn_decode_k"), 0, _pack_decode, what)
    kern.module = mod   # loaded in this device's context, kept as long as the kernel
    return kern


def workspace(S: int, Hv: int, T: int, N: int, kda: bool = False) -> tuple:
    """Device scratch of the chunked form: U, W, P, gates, (unused), Kg, Qg (module docstring)."""
    nc = -(-T // CHUNK)
    hs = Hv * N
    gq = hs * nc * CHUNK * S if kda else 0
    sizes = (hs * nc * CHUNK * S, hs * nc * CHUNK * S, hs * nc * CHUNK * CHUNK,
             hs * nc * S if kda else 2 * hs * nc * CHUNK, 0, gq, gq)
    return tuple(cuda.device_array(max(n, 4), np.float32) for n in sizes)


def chunked_launches(S: int, Hv: int, T: int, N: int, kda: bool = False, ws: Optional[tuple] = None,
                     nj: int = STATE_NJ, acc: int = ACC, ks: int = STATE_KS, hd: int = 1,
                     sd: bool = False) -> list[Launch]:
    """The two launches of the chunked form (GDA or KDA, K == 1); workspace made here unless given.
    hd: value head h reads q/k head (h / hd) % H_k (1 tiled; H_v / H_k interleaved, the op's bcast 1).
    sd: the node has a state destination (its 7th source takes the final state)."""
    nc = -(-T // CHUNK)
    ws = ws if ws is not None else workspace(S, Hv, T, N, kda)
    return [Launch(prep_kernel(S, kda, acc, sd), (nc, Hv, N), (prep_threads(kda),), (hd, *ws)),
            Launch(state_kernel(S, kda, nj, acc, ks, sd), (-(-S // (16 * nj)), Hv, N), (32 * nj * ks,), (hd, *ws))]


def decode_launch(S: int, Hv: int, N: int, kda: bool, rows: int = DEC_ROWS, regs: int = DEC_REGS,
                  max_blocks: Optional[int] = None, hd: int = 1, sd: bool = False,
                  nvrtc: Optional[bool] = None) -> Launch:
    """One warp an item of 4*rows rows; `max_blocks` caps the grid (the warps then loop); hd and sd
    as in chunked_launches; nvrtc as in decode_kernel."""
    items = Hv * N * -(-S // (4 * rows))
    blocks = -(-items // DEC_WARPS)
    if max_blocks:
        blocks = min(blocks, max_blocks)
    return Launch(decode_kernel(kda, S, rows, regs, sd, nvrtc), (blocks,), (DEC_WARPS * 32,), (hd,))
