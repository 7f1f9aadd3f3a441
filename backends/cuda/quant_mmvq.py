"""The dot-product launch of a quantized MUL_MAT on a real GPU: quant_mmvq.cu (CUDA C++, dp4a),
compiled at run time by NVRTC (cuda.bindings, which numba-cuda already needs) and launched on the
backend's stream through the driver, so it sits in the plan's CUDA graph like a Numba launch.

Why C++: the kernel is bound by the weights' bytes, and its inner step is four int8 products an
instruction (dp4a) on words put together from 16- or 32-bit loads of the blocks (the K-quants:
of 16-byte tiles of the row in shared memory); plain Numba has neither dp4a, 16-byte loads nor
32-bit index arithmetic. The Numba kernel (quant_matmul.dot_rows) stays the
path of the simulator and of GPUs where this one is refused.

What it takes (`refusal(node)` says what not): a GPU of compute capability >= 6.1 with NVRTC;
src0 rows and batches at byte offsets that are multiples of 4 (Q4_1, Q5_1, Q4_K, Q5_K, read in
32-bit words) or 2 (Q4_0, Q5_0, Q8_0, Q6_K); dst and src1 strides in whole f32 elements.
Columns: src1 is quantized by quantize_q8 first and mmvq_T_NC takes up to NC_MAX = 8 columns a
warp (each unit's weights loaded once for them); more columns take more blocks along grid y, each
reading the weights again (a matrix-matrix kernel would do better for prompt-sized batches; not
built). With FUSE (off by default) one src1 column over small weights is one launch, mmvq_T_f,
that quantizes src1 in each block's shared memory while the first weight loads are in flight: it
gives the same floats, and measured slower on an H200 at 4096 x 4096 (q8_0 11.4 us against 10.3,
q4_0 8.5 against 7.9; q4_K 9.6 against 9.8): every block re-reads src1 and waits for its
quantization at a barrier, which costs more than the launch it saves.

Programmatic dependent launch (CONFIG PDL, sm_90): the dot kernel of Q4_0, Q8_0 and Q4_K is
launched with cuLaunchKernelEx's programmatic-serialization attribute (in the plan's CUDA graph
a programmatic edge), quantize_q8 releases it at its start (griddepcontrol.launch_dependents), and
its blocks wait for src1's quants with griddepcontrol.wait: Q4_0 / Q4_K after issuing their
first weight loads, Q8_0 at the start (PDL_HEAD). The dot kernel's launch and the first loads
overlap the quantization. H200, whole node: Q4_0 4096 x 4096 7.96 -> 6.41 us, Q4_K 8.51 -> 6.79,
Q8_0 10.3 -> 9.6 (2026-12-02; the other types untried, plain launches). PDLQ (CONFIG) makes
quantize_q8 of Q4_0 / Q4_K nodes such a launch too, after whatever kernel is ahead of it.
Measured and dropped: a lane's eight consecutive units read as 16-byte words and cut in
registers (mmvq_T_cR, branch qmmv9's first commit): 40-80% slower in all nine decode cases, each
warp load instruction then touching 32 lines for the weights and again for src1's 256-byte
strided units.

Rows and warps (CONFIG R2 / R4, K2 / K4, per type): at M = 4096 one warp a row gives an H200 31
warps an SM, each walking its row's units one after another, and every warp loads src1's units
again. Q4_0 and Q4_K's kernel over its reordered copy (Q4_KR) take two rows a warp and two warps
a row slot, Q8_0 four warps a row slot, Q4_K's tiled kernel over ggml's bytes one of each
(measured: see CONFIG).

Reordered rows (quant_reorder.py, Q4_0 and Q4_K): the plan gives the dot launch a device copy of
src0 in which each unit's quants are 16 contiguous bytes, read by the Q4_0R / Q4_KR kernels (one
16-byte load a unit; Q4_0R two units in flight a lane: U2). Q4_0R takes the grid and order of
sums of Q4_0's own kernel, so the floats are the same. Q4_KR takes two rows a warp and two warps
a row slot (CONFIG), which Q4_K's tiled kernel measured slower with: that one keeps one row a
warp, and the two differ in the order of the float sums only (quant_reorder.same_order gives
the tiled kernel Q4_KR's settings: then the floats are the same). H200 node, ggml's bytes ->
reordered, one run (2026-12-04): Q4_0 6.33 / 13.26 / 14.43 -> 5.76 / 12.40 / 12.65 us (4096 x
4096 / 4096 x 14336 / 14336 x 4096); Q4_K (with the rows and split above, 2026-12-04) 6.95 /
17.16 / 15.84 -> 5.79 / 13.37 / 12.89.

Measured and dropped (2026-12-04, H200 node, Q4_KR, against 7.20 / 14.98 / 15.86 us of the lane
kernel then): whole reordered rows streamed into shared memory by cp.async.bulk (a block an SM,
each warp a ring of 2 to 8 row buffers on mbarriers, the lane kernel's order of sums): 8.87 to
10.94 / 19.86 to 28.30 / 15.58 to 23.24 us over 4, 8, 12 and 16 warps a block. With the dot
products left out it streamed the rows in 6.22 / 12.61 / 12.36 us, no faster than the Q4_0R
lane kernel's 5.76 / 12.40 / 12.65 with them: the copy engine gains nothing over 16-byte loads
here, and a block's few warps could not hide the dot products' latency.

Q8_0's unit (CONFIG W32, NCLD) is read as aligned 32-bit words on the read-only path, joined by
funnel shifts: 10 load instructions a lane for its 34 bytes instead of 17 (ncu, q4_0's lane-a-unit
kernel at 4096 x 14336: L1/TEX throughput 80% against DRAM 42%, 7.5 of each 32-byte sector used a
load). H200 node: 9.15 -> 8.46 / 22.41 -> 20.66 / 23.97 -> 20.94 us (2026-12-02). Measured and
dropped (branch qmmv10): the threads of a row sharing each block (ggml's mapping, consecutive
threads on consecutive 8- or 16-byte slices, unit sums joined by shuffles): slower in all nine
cases (q4_0 4096 x 14336 20.0 against 15.7 us; L1/TEX 41%, but 64% more instructions, DRAM 30%).
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from numba import cuda

from minigraph.core import dtypes as D
from minigraph.core.buffer import tensor_start
from minigraph.core.errors import MinigraphError

from minigraph.backends.cuda.common import SIM, Launch
from minigraph.backends.cuda.driver import Module, check, device_arch, device_ptr as _ptr, nvrtc_cubin, stream_handle

SOURCE = Path(__file__).with_name("quant_mmvq.cu")
# compile-time constants of quant_mmvq.cu (a benchmark may change them; each set is its own module):
# WARPS rows a block of mmvq_T_NC, WARPS_FUSED of mmvq_T_f, MIN_BLOCKS > 0 caps registers,
# TILE_UNITS 32-element units of a K-quant row a warp's tile
# PDL: bit T (a ggml type) set, mmvq_T_NC is a programmatic dependent launch after quantize_q8
# (sm_90: its blocks start while src1 is quantized, issue their first weight loads, then wait for
# it; see `pdl_on`); PDL_HEAD: bit T set, that kernel waits at its start instead (Q8_0: holding its
# first unit across the wait measured slower than no PDL, waiting first faster; Q4_0 / Q4_K the
# other way round). The other types measured neither way: plain launches.
# W32: bit T set (Q8_0 only), a unit's 32 quants are read as 8 aligned 32-bit loads and one 16-bit
# load joined by funnel shifts instead of 16 16-bit loads; NCLD: bit T set, those loads take the
# read-only path (ld.global.nc). H200, Q8_0 node 9.15 / 22.41 / 23.97 -> 8.46 / 20.66 / 20.94 us
# (4096 x 4096 / 4096 x 14336 / 14336 x 4096); Q4_0 the same way measured mixed (+3 / -2 / +2%).
# R2 / R4: bit T set, a warp of mmvq_T_NC takes 2 / 4 consecutive rows (each src1 unit loaded
# once for them; a K-quant warp keeps a tile a row). K2 / K4 (Python only, `splitk_of`): bit T
# set, 2 / 4 warps share each row slot of mmvq_T_1 and split its units. H200, whole node, one run
# (2026-12-02; main, then the settings kept): Q4_0 with R2 and K2 6.56 / 15.82 / 15.68 -> 6.21 /
# 14.29 / 14.53 us (R2 alone 7.09 / 14.48 / 18.18, K2 alone 7.19 / 16.32 / 17.34); Q8_0 with K4
# 8.41 / 20.06 / 20.34 -> 8.02 / 19.61 / 19.75 (K2 8.25 / 18.79 / 20.54). Q4_K over ggml's bytes
# (the tiles) measured best with one row a warp (R2 7.20 / 16.82 / 18.30, K2 8.05 / 20.39 / 19.78,
# K2 with R2 8.55 / 16.89 / 20.08 against 6.97 / 17.24 / 15.82), but the kernel that runs is Q4_KR
# over the reordered copy, with a grid of its own, and that one gains from R2 and K2 (below).
# U2: bit T set, a lane issues the loads of two units before using either (Q4_0R).
# Q4_0R / Q4_KR: quant_mmvq.cu's codes for Q4_0 / Q4_K rows reordered so that a unit's quants are
# 16 contiguous bytes (quant_reorder.py), with bits of their own (Q4_0R: Q4_0's rows, split and
# PDL: the same grid and floats; Q4_KR: two rows a warp and two warps a row slot, Q4_K one).
Q4_KR, Q4_0R = 28, 29
# PDLQ: bit T set, quantize_q8 is itself a programmatic dependent launch after the kernel ahead
# of it (it waits for that kernel at its start, then releases the dot kernel) and T's dot kernel
# releases the grid after it at its start: the next node's quantize_q8 is launched and resident
# while this dot kernel runs. H200 node, one run (2026-12-04): Q4_0 5.83 / 12.21 / 13.13 -> 5.33 /
# 11.95 / 12.09 us; Q8_0 7.86 / 19.40 / 19.89 -> 8.18 / 20.32 / 20.19 (not kept: Q8_0 waits at
# its start, PDL_HEAD); Q4_K with R2, K2 and no U2 6.04 / 13.57 / 12.74 -> 5.95 / 13.49 / 12.37.
# Q4_K / Q4_KR, H200 node, one run each (2026-12-04), settings -> us at 4096 x 4096 / 4096 x 14336
# / 14336 x 4096: one row a warp, U2 (the settings before) 7.22 / 15.09 / 16.07; R2 with U2
# 6.58 / 15.56 / 15.71; R2 alone 6.73 / 13.38 / 15.27; R2 and K2 6.04 / 13.57 / 12.74 (R2, K2 with
# U2 7.24 / 13.95 / 17.04; R2 and K4 6.69 / 14.96 / 14.08; R4 10.84 / 14.53 / 30.96, R4 with U2
# 7.00 / 14.75 / 17.38; R2 with WARPS 8 9.47 / 17.78 / 24.26): two rows a warp share each src1
# unit's loads, two warps a row slot double the warps in flight at M = 4096, and a lane's one unit
# of each of two rows is in flight instead of two units of one row.
CONFIG = {"WARPS": 4, "WARPS_FUSED": 8, "MIN_BLOCKS": 0, "TILE_UNITS": 64,
          "PDL": (1 << D.TYPE_Q4_0) | (1 << D.TYPE_Q8_0) | (1 << D.TYPE_Q4_K) | (1 << Q4_0R) | (1 << Q4_KR),
          "PDL_HEAD": 1 << D.TYPE_Q8_0, "W32": 1 << D.TYPE_Q8_0, "NCLD": 1 << D.TYPE_Q8_0,
          "R2": (1 << D.TYPE_Q4_0) | (1 << Q4_0R) | (1 << Q4_KR), "R4": 0,
          "K2": (1 << D.TYPE_Q4_0) | (1 << Q4_0R) | (1 << Q4_KR),
          "K4": 1 << D.TYPE_Q8_0, "U2": 1 << Q4_0R,
          "PDLQ": (1 << D.TYPE_Q4_0) | (1 << Q4_0R) | (1 << D.TYPE_Q4_K) | (1 << Q4_KR)}
# the settings of one warp a row slot and one row a warp (the fused kernel's order of sums)
ONE_ROW = {"R2": 0, "R4": 0, "K2": 0, "K4": 0}
FUSE = False               # one src1 column over small weights: one launch (measured slower; a knob)
# the one launch quantizes src1 again in every block (4 K bytes of L2 reads a block of rows): it
# can only win where the launch gap dominates, never where the weights' bandwidth does (see `fused`)
FUSED_MAX_BYTES = 24 << 20
FUSED_SMEM_MAX = 48 * 1024 # dynamic shared memory a block may take without an opt-in attribute
WORD_ALIGNED = (D.TYPE_Q4_1, D.TYPE_Q5_1, D.TYPE_Q4_K, D.TYPE_Q5_K)   # 32-bit loads; the rest 16-bit
TILED = {D.TYPE_Q4_K: 144, D.TYPE_Q5_K: 176, D.TYPE_Q6_K: 210}         # read in tiles: bytes a super-block
NC_MAX = 8
MAX_GRID_YZ = 65535
_PDL_REFUSED: list = []    # the driver's answer once it refused a programmatic launch (then plain ones)
_MODULES: dict = {}        # (arch, device, config) -> driver.Module or the error text


class Args(ctypes.Structure):
    """quant_mmvq.cu's `struct Args` (the kernel's one parameter), field for field."""

    _fields_ = [("x", ctypes.c_void_p), ("yq", ctypes.c_void_p), ("yd", ctypes.c_void_p), ("ys", ctypes.c_void_p),
                ("dst", ctypes.c_void_p), ("b", ctypes.c_void_p), ("M", ctypes.c_int), ("N", ctypes.c_int),
                ("K", ctypes.c_int),
                ("n2", ctypes.c_int), ("r2", ctypes.c_int), ("r3", ctypes.c_int), ("xb1", ctypes.c_int64),
                ("xb2", ctypes.c_int64), ("xb3", ctypes.c_int64), ("d0", ctypes.c_int64), ("d1", ctypes.c_int64),
                ("d2", ctypes.c_int64), ("d3", ctypes.c_int64), ("b0", ctypes.c_int64), ("b2", ctypes.c_int64),
                ("b3", ctypes.c_int64)]


def _check(result: Any, what: str) -> Any:
    return check(result, f"MUL_MAT (quantized): {what}")


def nvrtc_compile(arch: str, extra: tuple = ()) -> tuple[bytes, str]:
    """(cubin, compile log) of quant_mmvq.cu for an sm_XY arch."""
    return nvrtc_cubin(SOURCE, arch, CONFIG.items(), extra, "MUL_MAT (quantized)")


def function(type_: int, nc: int) -> Any:
    """The dot-product function mmvq_<type>_<nc> (nc src1 columns a warp)."""
    return function_named(f"mmvq_{type_}_{nc}")


def function_named(name: str) -> Any:
    """A driver function of quant_mmvq.cu, from the module compiled once per process and GPU."""
    key = (device_arch(), cuda.get_current_device().id, tuple(sorted(CONFIG.items())))
    got = _MODULES.get(key)
    if isinstance(got, str):
        raise MinigraphError(got)
    if got is None:
        try:
            got = _MODULES[key] = Module(nvrtc_compile(key[0])[0], "MUL_MAT (quantized)")
        except Exception as e:  # noqa: BLE001 - remembered: such nodes then run the Numba kernel
            _MODULES[key] = f"{type(e).__name__}: {e}"
            raise MinigraphError(_MODULES[key]) from e
    return got.function(name)


def refusal(node) -> Optional[str]:
    """None when quant_mmvq.cu runs this node's dot products, else why not."""
    if SIM:
        return "the simulator runs no CUDA C++"
    a, b = node.src
    align = 4 if a.type in WORD_ALIGNED else 2
    if tensor_start(a) % align or any(x % align for x in a.nb[1:]):
        return f"src0 rows must start at multiples of {align} bytes (start {tensor_start(a)}, nb {list(a.nb)})"
    if tensor_start(node) % 4 or any(x % 4 for x in node.nb):
        return "dst strides must be whole f32 elements"
    if tensor_start(b) % 4 or any(x % 4 for x in b.nb):
        return "src1 strides must be whole f32 elements"
    if -(-node.ne[1] // NC_MAX) > MAX_GRID_YZ or node.ne[2] * node.ne[3] > MAX_GRID_YZ:
        return "grid too large"
    if cuda.get_current_device().compute_capability < (6, 1):
        return "compute capability >= 6.1 needed (dp4a)"
    try:
        function(a.type, 1)
    except MinigraphError as e:
        return str(e)
    return None


def tile_smem(type_: int) -> int:
    """Shared memory of a mmvq_T_NC block: a tile a warp and row for the K-quants, none for the rest."""
    return CONFIG["WARPS"] * rows_of(type_) * CONFIG["TILE_UNITS"] // 8 * TILED[type_] if type_ in TILED else 0


def fused_smem(node) -> int:
    """Shared memory of mmvq_T_f for this node: src1's K quants, its block scales and sums."""
    a = node.src[0]
    K = a.ne[0]
    n_d, n_s = (K // 256, K // 16) if D.VEC_DOT_TYPE[a.type] == D.TYPE_Q8_K else (K // 32, K // 32)
    return K + 4 * (n_d + n_s)


def fused(node) -> bool:
    """Whether the node is one mmvq_T_f launch: one src1 column, weights of at most
    FUSED_MAX_BYTES (over them the repeated quantization costs more than the launch it saves),
    src1's quants in shared memory."""
    a = node.src[0]
    weights = node.ne[0] * a.ne[2] * a.ne[3] * (a.ne[0] // D.blck_size(a.type)) * D.type_size(a.type)
    return FUSE and node.ne[1] == 1 and weights <= FUSED_MAX_BYTES and fused_smem(node) <= FUSED_SMEM_MAX


class QArgs(ctypes.Structure):
    """quant_mmvq.cu's `struct QArgs` (quantize_q8's parameter)."""

    _fields_ = [("b", ctypes.c_void_p), ("yq", ctypes.c_void_p), ("yd", ctypes.c_void_p), ("ys", ctypes.c_void_p),
                ("K", ctypes.c_int), ("N", ctypes.c_int), ("n2", ctypes.c_int), ("n3", ctypes.c_int),
                ("b0", ctypes.c_int64), ("b1", ctypes.c_int64), ("b2", ctypes.c_int64), ("b3", ctypes.c_int64),
                ("vdt", ctypes.c_int)]


def _pdl_config(grid: tuple, block: tuple, smem: int, stream: Any) -> Any:
    """A cuLaunchKernelEx config that lets the launch start before the kernel ahead of it in the
    stream ends (programmatic stream serialization: the kernel's griddepcontrol.wait then waits
    for that kernel; a stream capture makes it a programmatic edge of the CUDA graph)."""
    from cuda.bindings import driver as drv

    cfg = drv.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = grid
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = block
    cfg.sharedMemBytes, cfg.hStream = smem, stream
    attr = drv.CUlaunchAttribute()
    attr.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    cfg.attrs, cfg.numAttrs = [attr], 1
    return cfg


def _bit_on_sm90(key: str, type_: int) -> bool:
    """type_'s bit in CONFIG[key], on an sm_90+ GPU (griddepcontrol; compiled out below)."""
    return bool(CONFIG[key] >> type_ & 1) and cuda.get_current_device().compute_capability >= (9, 0)


def pdlq_on(type_: int) -> bool:
    """Whether a src0 of this type has quantize_q8 as a programmatic dependent launch after the
    kernel ahead of it (and its dot kernel releasing the next one at its start): CONFIG PDLQ."""
    return _bit_on_sm90("PDLQ", type_)


def pdl_on(type_: int) -> bool:
    """Whether a src0 of this type gets its dot kernel as a programmatic dependent launch after
    quantize_q8: CONFIG PDL."""
    return _bit_on_sm90("PDL", type_)


class _Alt(NamedTuple):
    """The launch a _Launcher makes instead where `ready()` holds when it is configured: the dot
    kernel over a reordered copy of src0, with its own grid (rows and split a warp)."""

    fn: Any
    pdl: bool
    smem: int
    ready: Callable[[], bool]
    name: str
    grid: tuple
    threads: int


class _Launcher:
    """kernel[grid, block, stream](meta, dst, src0, src1, yq, yd, ys): one cuLaunchKernel of a
    quant_mmvq.cu function with `smem` bytes of dynamic shared memory, its one struct parameter
    made by `pack` from the buffers' arrays; `alt` (an _Alt) instead where it is ready when the
    launch is configured (the plan binds the reordered copy first)."""

    def __init__(self, fn: Any, pack: Any, name: str, smem: int = 0, pdl: bool = False,
                 alt: Optional[_Alt] = None) -> None:
        self.fn, self.pack, self.name, self.smem, self.pdl, self.alt = fn, pack, name, smem, pdl, alt

    def __getitem__(self, cfg: tuple) -> Any:
        grid, block, stream = cfg
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))

        fn, pdl, smem, name = self.fn, self.pdl, self.smem, self.name
        if self.alt is not None and self.alt.ready():
            a = self.alt
            fn, pdl, smem, name, grid, block = a.fn, a.pdl, a.smem, a.name, a.grid, (a.threads, 1, 1)

        def launch(*args: Any) -> None:
            from cuda.bindings import driver as drv

            p = self.pack(*args)
            params = (ctypes.c_void_p * 1)(ctypes.addressof(p))
            h = stream_handle(stream)
            if pdl and not _PDL_REFUSED:
                res = drv.cuLaunchKernelEx(_pdl_config(grid, block, smem, h), fn,
                                           ctypes.addressof(params), 0)
                err = res[0] if isinstance(res, tuple) else res
                if err == drv.CUresult.CUDA_SUCCESS:
                    return
                # a driver that refuses the attribute: the plain launch (grid_wait is then a no-op)
                _PDL_REFUSED.append(err)
            _check(drv.cuLaunchKernel(fn, *grid, *block, smem, h, ctypes.addressof(params), 0), "launch")

        # what was configured (benchmarks pick launches by name; tests read the rest)
        launch.kernel_name, launch.grid, launch.block, launch.smem = name, grid, block, smem
        return launch


def dot_fields(node) -> dict:
    """The pointer-free fields of the dot kernels' Args for this node."""
    a, b = node.src
    M, N, n2, n3 = node.ne
    return dict(M=M, N=N, K=a.ne[0], n2=n2, r2=n2 // a.ne[2], r3=n3 // a.ne[3], xb1=a.nb[1], xb2=a.nb[2],
                xb3=a.nb[3], d0=node.nb[0] // 4, d1=node.nb[1] // 4, d2=node.nb[2] // 4, d3=node.nb[3] // 4,
                b0=b.nb[0] // 4, b2=b.nb[2] // 4, b3=b.nb[3] // 4)


def quant_fields(node) -> dict:
    """The pointer-free fields of quantize_q8's QArgs for this node."""
    b = node.src[1]
    return dict(K=b.ne[0], N=b.ne[1], n2=b.ne[2], n3=b.ne[3], b0=b.nb[0] // 4, b1=b.nb[1] // 4, b2=b.nb[2] // 4,
                b3=b.nb[3] // 4, vdt=D.VEC_DOT_TYPE[node.src[0].type])


def rows_of(type_: int) -> int:
    """src0 rows a warp of mmvq_T_NC (R2 / R4 bits; a K-quant's warp then has a tile a row)."""
    return 4 if CONFIG["R4"] >> type_ & 1 else 2 if CONFIG["R2"] >> type_ & 1 else 1


def splitk_of(node, type_: Optional[int] = None) -> int:
    """Warps that share a row slot of mmvq_T_1 and split its units: 4 or 2 where the kernel's type
    (src0's unless given) has its bit in CONFIG K4 / K2 (one src1 column, rows of 64 units or
    more), else 1."""
    a = node.src[0]
    t = a.type if type_ is None else type_
    if nc_of(node) != 1 or a.ne[0] // 32 < 64:
        return 1
    return 4 if CONFIG["K4"] >> t & 1 else 2 if CONFIG["K2"] >> t & 1 else 1


def nc_of(node) -> int:
    """src1 columns a warp of mmvq_T_NC."""
    return next(c for c in (1, 2, 4, NC_MAX) if c >= min(node.ne[1], NC_MAX))


def grids(node, type_: Optional[int] = None) -> dict:
    """name -> (grid, threads, dynamic shared bytes) of the node's launches, in launch order;
    type_: the dot kernel's type code when not src0's (Q4_0R / Q4_KR over a reordered copy)."""
    a = node.src[0]
    t = a.type if type_ is None else type_
    M, N, n2, n3 = node.ne
    if fused(node):
        wf = CONFIG["WARPS_FUSED"]
        return {f"mmvq_{t}_f": ((-(-M // wf), 1, n2 * n3), 32 * wf, fused_smem(node))}
    w, nc, sk = CONFIG["WARPS"], nc_of(node), splitk_of(node, t)
    per_warp = 1 if D.VEC_DOT_TYPE[a.type] == D.TYPE_Q8_K else 8     # super-blocks / 32-blocks a warp
    span = 256 if per_warp == 1 else 32
    n_warps = -(-(a.ne[0] // span * N * n2 * n3) // per_warp)
    return {"quantize_q8": ((-(-n_warps // w), 1, 1), 32 * w, 0),
            dot_name(node, t): ((-(-M // (w // sk * rows_of(t))), -(-N // nc), n2 * n3), 32 * w,
                                tile_smem(t) + (4 * w * rows_of(t) if sk > 1 else 0))}


def dot_name(node, type_: Optional[int] = None) -> str:
    """mmvq_<type>_<nc>, or mmvq_<type>_1k<S> where S warps split each row slot's units."""
    t = node.src[0].type if type_ is None else type_
    sk = splitk_of(node, t)
    return f"mmvq_{t}_{nc_of(node)}" + (f"k{sk}" if sk > 1 else "")


def launches(node, work: tuple, reordered: Any = None) -> list:
    """The node's launches: src1 quantized into `work` (quantize_q8), then the dot products (a
    programmatic dependent launch where `pdl_on`); or one mmvq_T_f launch (see `fused`).
    reordered: a quant_reorder.Reordered of src0 (the plan binds it to src0's memory); while it is
    active the dot kernel is the Q4_0R / Q4_KR one over its copy, with its own grid (else it is
    ignored)."""
    a, b = node.src
    fixed = dot_fields(node)
    qfixed = quant_fields(node)
    a_off, d_off, b_off = tensor_start(a), tensor_start(node), tensor_start(b)
    align = 4 if a.type in WORD_ALIGNED else 2
    if reordered is not None and fused(node):
        reordered = None          # one launch, over ggml's bytes

    def pack_dot(meta, dst, x, y, yq, yd, ys):
        if reordered is not None and reordered.active:
            x_ptr, strides = reordered.pointer(), reordered.strides()
        else:
            x_ptr, strides = _ptr(x) + a_off, (fixed["xb1"], fixed["xb2"], fixed["xb3"])
        p = Args(x=x_ptr, yq=_ptr(yq), yd=_ptr(yd), ys=_ptr(ys), dst=_ptr(dst) + d_off, b=_ptr(y) + b_off,
                 **{**fixed, "xb1": strides[0], "xb2": strides[1], "xb3": strides[2]})
        if p.x % align or p.dst % 4 or p.b % 4:
            raise MinigraphError("MUL_MAT (quantized): a device buffer is not aligned for quant_mmvq.cu")
        return p

    def pack_quant(meta, dst, x, y, yq, yd, ys):
        return QArgs(b=_ptr(y) + b_off, yq=_ptr(yq), yd=_ptr(yd), ys=_ptr(ys), **qfixed)

    out = []
    names = grids(node)
    for name, (grid, threads, smem) in names.items():
        pack = pack_quant if name == "quantize_q8" else pack_dot
        if name == "quantize_q8":
            pdl = pdlq_on(a.type)
        else:
            pdl = "quantize_q8" in names and pdl_on(a.type)
        alt = None
        if name != "quantize_q8" and reordered is not None:
            code = reordered.code
            alt_name = dot_name(node, code)
            alt_grid, alt_threads, alt_smem = grids(node, code)[alt_name]
            alt = _Alt(function_named(alt_name), pdl_on(code), alt_smem, lambda: reordered.active, alt_name,
                       alt_grid, alt_threads)
        out.append(Launch(_Launcher(function_named(name), pack, name, smem, pdl, alt), grid, (threads,), work,
                          with_params=False, prepare=reordered if alt is not None else None))
    return out
