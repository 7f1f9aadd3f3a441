"""FLASH_ATTN_EXT for f16, Q8_0 or Q4_0 K/V on a real GPU: the CUDA C++ kernels of attention_mma.cu, compiled at
run time by NVRTC (cuda.bindings, which numba-cuda already needs) and launched on the backend's
stream through the driver, so they sit in the plan's CUDA graph like every Numba launch.

Why C++ and not Numba here: the kernel must keep many K/V bytes in flight (cp.async into several
shared-memory stages), use 32-bit index arithmetic and bound its registers (__launch_bounds__);
Numba's 64-bit indexing took the Numba tensor-core kernel (attention_tc.py) to 253 registers and
one outstanding tile a warp. Plan, workspace and partials are attention.py's (same layout:
unnormalised output, running max, running sum per (row, chunk)); the combine is C++ too.

What it takes (`refusal(node)` says what not): f16 K and V, K/V rows contiguous and 16-byte
aligned (offsets and strides), DK % 16 == 0, DV % 32 == 0, V with K's head count, compute
capability >= 8.0, NVRTC present. Anything else runs the Numba kernels.

A quantized cache (K and V both Q8_0 or both Q4_0: llama.cpp's -ctk/-ctv q8_0, q4_0) runs the same
kernel built with KVT = the ggml type: raw block rows come in with cp.async (`raw_copy`: the whole
tile as 16-byte pieces when its rows are packed back to back and 16-byte aligned, else each row in
4/8/16-byte pieces, which needs the row bytes, start and strides to be multiples of 4) and are
decoded in shared memory into the f16 tile the mma's read; q is rounded to Q8_0 values as ggml's
CPU does. Other quantized types, or rows that fit neither copy, run fa_split. When V is a view of K
at an element offset that is a multiple of 8 (MLA: 0) the V tile is read from the K tile already
in shared memory: V costs no memory traffic.

Shape choice (`config`): 4 warps; 32 kv rows a tile for heads > 256 (MLA's 576), 64 below; the
most stages that still fit two blocks an SM; chunks so that the grid is one full wave (every SM
busy with as many blocks as fit); an f16 MLA cache with V a view of K splits S over DK across the
warps (SPLITK: q and P stay in registers, two barriers a tile). `OVERRIDE` (a dict of config
fields) lets benchmarks try others.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from numba import cuda

from minigraph.core import dtypes
from minigraph.core.buffer import tensor_start
from minigraph.core.errors import MinigraphError

from minigraph.backends.cuda.common import SIM
from minigraph.backends.cuda.driver import Module, RawKernel, check, device_arch, device_ptr as _ptr, nvrtc_cubin

SOURCE = Path(__file__).with_name("attention_mma.cu")
ROWS = 16                  # rows a block (the mma's M)
MAX_PARTS = 256            # chunks a row's combine merges (attention_mma.cu's MAX_PARTS)
MIN_CHUNK = 256            # kv rows a chunk has at least
COMBINE_THREADS = 128
SMEM_PER_SM = 228 * 1024   # sm_80 164 KB, sm_90 228 KB: the occupancy query has the last word
MAX_GRID_YZ = 65535
OVERRIDE: dict = {}        # benchmark knob: {"BN": 64, "STAGES": 2, "WARPS": 8, "WAVES": 2}


@dataclass(frozen=True)
class Config:
    DK: int
    DV: int
    BN: int
    STAGES: int
    WARPS: int
    SHARE: int
    MIN_BLOCKS: int
    WAVES: int = 1
    KVT: int = 0          # K/V type (ggml's enum): 0 f16, 8 Q8_0, 2 Q4_0
    CW: int = 16          # quantized: bytes a cp.async of a raw row
    PACKED: int = 0       # quantized: a tile's raw rows are one contiguous 16-byte aligned run
    SPLITK: int = 0       # S split over DK across the warps, q and P in registers (attention_mma.cu)


DEFINES = ("DK", "DV", "BN", "STAGES", "WARPS", "SHARE", "MIN_BLOCKS", "KVT", "CW", "PACKED", "SPLITK")
QUANT_BLOCK_BYTES = {int(dtypes.TYPE_Q8_0): 34, int(dtypes.TYPE_Q4_0): 18}   # the types the kernel decodes


def smem_bytes(c: Config) -> int:
    """Dynamic shared memory of one block (attention_mma.cu's SM_* layout)."""
    q = max(ROWS * (c.DK + 8) * 2, c.SPLITK * c.WARPS * c.BN * 64)    # SPLITK: partial S tiles reuse it
    tiles = 1 if c.KVT else c.STAGES          # a quantized cache decodes its raw stages into one f16 tile
    kt = tiles * c.BN * (c.DK + 8) * 2
    vt = 0 if c.SHARE else tiles * c.BN * (c.DV + 8) * 2
    raw = 0
    if c.KVT:
        bb = QUANT_BLOCK_BYTES[c.KVT]
        raw = c.STAGES * c.BN * (c.DK // 32 * bb + (0 if c.SHARE else c.DV // 32 * bb))
    return q + kt + vt + raw + ROWS * (c.BN + 8) * 2 + 2 * c.WARPS * ROWS * 4


def raw_copy(t) -> Optional[tuple[int, int]]:
    """(packed, CW) for the raw rows of quantized K/V `t`, or None when no cp.async copy fits:
    packed when rows sit back to back (nb1 = row bytes) from a 16-byte aligned start and head /
    stream strides; CW the widest of 16, 8, 4 bytes dividing the row bytes, start and strides
    (strides of dimensions of size 1 do not count)."""
    rb = t.ne[0] // 32 * QUANT_BLOCK_BYTES[int(t.type)]
    start = tensor_start(t)
    used = [x for x, n in zip(t.nb[2:], t.ne[2:]) if n > 1]      # a dimension of 1 never steps
    packed = int(t.nb[1] == rb and start % 16 == 0 and all(x % 16 == 0 for x in used))
    for cw in (16, 8, 4):
        if rb % cw == 0 and start % cw == 0 and t.nb[1] % cw == 0 and all(x % cw == 0 for x in used):
            return packed, cw
    return None


def share_offset(node) -> int:
    """V's element offset inside the K tile when V can be read from it (a multiple of 8), else -1."""
    off = int(node.op_params["v_in_k"])
    return off if off >= 0 and off % 8 == 0 else -1


def config(node) -> Config:
    k, v = node.src[1], node.src[2]
    dk, dv = k.ne[0], v.ne[0]
    share = int(share_offset(node) >= 0)
    c = Config(dk, dv, 32 if dk > 256 else 64, 2, 4, share, 1)
    if dtypes.is_quantized(k.type) and int(k.type) in QUANT_BLOCK_BYTES:
        copies = [raw_copy(t) for t in ((k,) if share else (k, v))]
        if all(copies):
            c = replace(c, KVT=int(k.type), PACKED=min(x[0] for x in copies), CW=min(x[1] for x in copies))
    if c.KVT:
        # measured on an H200 (benchmarks/attention_cuda.py --quant, one run): MLA decode 232 us with
        # 64 rows x 8 warps x 3 stages (one block an SM) against 249 us with the f16 choice (32 x 4 x 2,
        # two blocks); GQA decode 85 us with 2 stages against 92 us with 4
        c = replace(c, BN=64, WARPS=8, STAGES=3) if dk > 256 else replace(c, STAGES=2)
    else:
        for stages in (4, 3, 2):
            if _fits_two(replace(c, STAGES=stages)):
                c = replace(c, STAGES=stages)
                break
    if not c.KVT and dk > 256 and share:
        # H200, MLA decode n_kv=32768 ne3=8 (benchmarks/attention_cuda.py --sweep, one run): V a view
        # of K 110 us split over DK against 116 us without; V a copy 219 us split against 208 us
        c = replace(c, SPLITK=1)
    c = replace(c, **{f: x for f, x in OVERRIDE.items() if f != "MIN_BLOCKS"})
    if c.DV % (8 * c.WARPS) or c.BN % 16 or c.BN % ((1 if c.SPLITK else 8) * c.WARPS):
        c = replace(c, WARPS=4, BN=-(-c.BN // 32) * 32)       # an override the shapes do not allow
    if c.SPLITK and (c.DK // 16) % c.WARPS:
        c = replace(c, SPLITK=0, BN=-(-c.BN // 32) * 32)      # DK's k-steps do not split evenly
    # the register cap follows from the blocks that fit (2 blocks of 4 warps: 255 a thread)
    return replace(c, MIN_BLOCKS=OVERRIDE.get("MIN_BLOCKS", 2 if _fits_two(c) else 1))


def _fits_two(c: Config) -> bool:
    return 2 * (smem_bytes(c) + 1024) <= SMEM_PER_SM


# -- compiling and loading --------------------------------------------------------------------

_MODULES: dict = {}        # (Config, arch, device) -> (driver.Module, chunk fn, combine fn, occupancy) or the error


def nvrtc_compile(c: Config, arch: str, extra: tuple = ()) -> tuple[bytes, str]:
    """(cubin, compile log) of attention_mma.cu for config c and an sm_XY arch; `extra` NVRTC
    options (tests pass --ptxas-options=-v to read registers and spills)."""
    return nvrtc_cubin(SOURCE, arch, [(f, getattr(c, f)) for f in DEFINES], extra, f"FLASH_ATTN_EXT ({c})")


def _check(result: Any, what: str) -> Any:
    return check(result, f"FLASH_ATTN_EXT: {what}")


def kernels(c: Config) -> tuple:
    """(chunk fn, combine fn, blocks an SM) of config c, compiled and loaded once per process and
    GPU (a module belongs to the context it was loaded in: the current device's, which the
    backend's activate() sets)."""
    key = (c, device_arch(), cuda.get_current_device().id)
    got = _MODULES.get(key)
    if isinstance(got, str):
        raise MinigraphError(got)
    if got is None:
        from cuda.bindings import driver as drv

        try:
            mod = Module(nvrtc_compile(c, key[1])[0], "FLASH_ATTN_EXT")
            fc, fm = mod.function("fa_mma_chunk"), mod.function("fa_mma_combine")
            smem = smem_bytes(c)
            _check(drv.cuFuncSetAttribute(fc, drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                          smem), "shared memory attribute")
            occ = _check(drv.cuOccupancyMaxActiveBlocksPerMultiprocessor(fc, 32 * c.WARPS, smem), "occupancy")
            if occ < 1:
                raise MinigraphError(f"FLASH_ATTN_EXT: {c} does not fit an SM ({smem} bytes of shared memory)")
        except Exception as e:  # noqa: BLE001 - remembered: the node then runs the Numba kernels
            _MODULES[key] = f"{type(e).__name__}: {e}"
            raise MinigraphError(_MODULES[key]) from e
        got = _MODULES[key] = (mod, fc, fm, int(occ))
    return got[1], got[2], got[3]


# -- admission ------------------------------------------------------------------------------

def _rows_ok(t, what: str) -> Optional[str]:
    if t.nb[0] != 2 or tensor_start(t) % 16 or any(x % 16 for x in t.nb[1:]):
        return f"{what} rows must be contiguous and 16-byte aligned (start {tensor_start(t)}, nb {list(t.nb)})"
    if t.ne[1] * (t.nb[1] // 2) >= 2 ** 31:
        return f"{what} spans >= 2^31 elements a head (32-bit indexing)"
    return None


def _types_and_rows(node) -> Optional[str]:
    """Why K/V's types or row layout keep the node off this kernel, or None."""
    k, v = node.src[1], node.src[2]
    share = share_offset(node) >= 0
    if k.type == dtypes.TYPE_F16 and v.type == dtypes.TYPE_F16:
        return _rows_ok(k, "K") or (None if share else _rows_ok(v, "V"))
    if k.type != v.type or int(k.type) not in QUANT_BLOCK_BYTES:
        return "K and V must both be f16, both q8_0 or both q4_0"
    for t, what in ((k, "K"),) if share else ((k, "K"), (v, "V")):
        if raw_copy(t) is None:
            return (f"{what} raw rows need their bytes, start and strides to be multiples of 4 "
                    f"(start {tensor_start(t)}, nb {list(t.nb)})")
        if t.ne[1] * t.nb[1] >= 2 ** 31:
            return f"{what} spans >= 2^31 bytes a head (32-bit indexing)"
    return None


def refusal(node) -> Optional[str]:
    """None when attention_mma.cu runs this node, else why not."""
    q, k, v = node.src[0], node.src[1], node.src[2]
    if SIM:
        return "the simulator runs no CUDA C++"
    why = _types_and_rows(node)
    if why:
        return why
    if k.ne[0] % 16 or v.ne[0] % 32:
        return f"DK % 16 == 0 and DV % 32 == 0 needed (DK={k.ne[0]}, DV={v.ne[0]})"
    if v.ne[2] != k.ne[2]:
        return "V needs K's head count"
    n_rg = -(-(q.ne[2] // k.ne[2]) * q.ne[1] // ROWS)
    if n_rg * k.ne[2] > MAX_GRID_YZ or q.ne[3] > MAX_GRID_YZ:
        return "grid too large"
    if cuda.get_current_device().compute_capability < (8, 0):
        return "compute capability >= 8.0 needed (cp.async, mma.sync m16n8k16)"
    c = config(node)
    if smem_bytes(c) > 227 * 1024:
        return f"{c} needs {smem_bytes(c)} bytes of shared memory a block"
    try:
        kernels(c)
    except MinigraphError as e:
        return str(e)
    return None


def plan(node) -> tuple[Config, int, int]:
    """(config, chunk, n_chunks): kv chunks of whole tiles so the grid fills every SM's slots."""
    q, k = node.src[0], node.src[1]
    c = config(node)
    occ = kernels(c)[2]
    n_kv = k.ne[1]
    base = -(-(q.ne[2] // k.ne[2]) * q.ne[1] // ROWS) * k.ne[2] * q.ne[3]
    slots = cuda.get_current_device().MULTIPROCESSOR_COUNT * occ * c.WAVES
    # never more blocks than slots: a few blocks left for a second wave double the time
    n_chunks = max(1, min(slots // base, MAX_PARTS, -(-n_kv // MIN_CHUNK)))
    chunk = -(-(-(-n_kv // n_chunks)) // c.BN) * c.BN
    return c, chunk, -(-n_kv // chunk)


# -- launching ------------------------------------------------------------------------------

def _pack_chunk(meta, dst, q, k, v, mask, sinks, scale, max_bias, softcap, prec, v_in_k, has_mask, has_sinks,
                m0, m1, n_log2, mask_f32, v_off, chunk, n_parts, part) -> list:
    for name, a in (("k", k), ("v", v)):
        if _ptr(a) % 16:
            raise MinigraphError(f"FLASH_ATTN_EXT: the {name} buffer is not 16-byte aligned on the device")
    P = ctypes.c_void_p
    return [P(_ptr(meta)), P(_ptr(q)), P(_ptr(k)), P(_ptr(v)), P(_ptr(mask)), P(_ptr(part)),
            ctypes.c_float(scale), ctypes.c_float(max_bias), ctypes.c_float(softcap), ctypes.c_float(m0),
            ctypes.c_float(m1), ctypes.c_int(n_log2), ctypes.c_int(has_mask), ctypes.c_int(mask_f32),
            ctypes.c_int(v_off), ctypes.c_int(chunk), ctypes.c_int(n_parts)]


def _pack_combine(meta, dst, q, k, v, mask, sinks, scale, max_bias, softcap, prec, v_in_k, has_mask, has_sinks,
                  m0, m1, n_log2, mask_f32, v_off, chunk, n_parts, part) -> list:
    P = ctypes.c_void_p
    return [P(_ptr(meta)), P(_ptr(dst)), P(_ptr(sinks)), P(_ptr(part)), ctypes.c_int(has_sinks),
            ctypes.c_int(n_parts)]


def launches(node, m0: float, m1: float, n_log2: int) -> list:
    """The node's two launches, chunks then combine, as (kernel, grid, block, scalars) for
    attention.Launch; the scalars carry the workspace of partials."""
    import numpy as np

    q, k, v = node.src[0], node.src[1], node.src[2]
    c, chunk, n_chunks = plan(node)
    fc, fm, _ = kernels(c)
    n_head, n_q, n3, dv = q.ne[2], q.ne[1], q.ne[3], v.ne[0]
    n_rg = -(-(n_head // k.ne[2]) * n_q // ROWS)
    part = cuda.device_array(max(1, n_head * n_q * n3 * n_chunks * (dv + 2)), np.float32)
    mask = node.src[3]
    mask_f32 = int(mask is not None and mask.type == dtypes.TYPE_F32)
    scalars = (m0, m1, n_log2, mask_f32, max(0, share_offset(node)), chunk, n_chunks, part)
    what = "FLASH_ATTN_EXT"
    return [(RawKernel(fc, smem_bytes(c), _pack_chunk, what), (n_chunks, n_rg * k.ne[2], n3), (32 * c.WARPS,), scalars),
            (RawKernel(fm, 0, _pack_combine, what), (n_head * n_q * n3, -(-dv // COMBINE_THREADS)), (COMBINE_THREADS,),
             scalars)]
