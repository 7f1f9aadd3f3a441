"""What every CUDA kernel file shares: the tensor convention, index helpers, launch shapes.

Tensor convention. A kernel gets every tensor as a FLAT 1-D device array of its element type
(float32, int32, int64; float16 for F16, uint16 raw bits for BF16: backend.SLOT_DTYPES) plus one row of a per-node int64 `meta` array that says, per
slot (0 = dst, 1.. = srcs), where the tensor starts and how it is laid out, in ELEMENTS:

    meta[s*SLOT_W + 0]        element offset of the tensor inside its flat buffer
    meta[s*SLOT_W + 1 .. 4]   ne0, ne1, ne2, ne3
    meta[s*SLOT_W + 5 .. 8]   nb0, nb1, nb2, nb3 (ggml's byte strides / element size)

Element (i0, i1, i2, i3) of slot s is `buf[at(meta, s, i0, i1, i2, i3)]`, so any strides work
(views, permutes, transposes) and kernels never assume a layout unless supports_op says so.
Kernel signature: `kernel(meta, dst, src0, src1, ..., scalar params...)`; params are the op's
(`OpDef.param_values`) then the registration's extras. A launch marked `sliced` (every tensor
contiguous) gets no meta row: each tensor comes as its own 1-D array of exactly its elements,
`kernel(dst, src0, ..., params...)`, so sizes are kernel parameters (`dst.size`) and the kernel
does no dependent load of layout data from global memory before its first real load; in a
replayed CUDA graph of small nodes that latency is a good part of a node's time. Buffers may be the plan's arena (viewed as
f32 / i32), a leaf's own device buffer, or a caller's device array (zero-copy interop).

A kernel cannot raise: one that validates data (an index out of range) gets `n_err` int64 error
words last (`Launch.n_err`), writes them on bad input, and the plan raises after the run with
`CudaKernel.explain(node, words)`, as the CPU backend raises during its compute.

Each op registers a `CudaKernel`: its `launches(node)` returns the launches (kernel, grid, block,
extra scalars) the node needs, decided once at plan time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from numba import cuda

from minigraph.core import dtypes, flags

SIM = flags.cuda_simulator()

MAX_SLOTS = 8          # dst + up to 7 sources (GATED_DELTA_NET with a state destination)
SLOT_W = 9             # offset, ne[4], nb[4]
META_W = MAX_SLOTS * SLOT_W
# Threads per block of the flat (one thread per element) kernels. The simulator runs every
# thread of a block as a Python thread, so it gets small blocks.
BLOCK = 32 if SIM else 256


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a node: kernel[grid, block](meta, dst, srcs..., *params, *scalars)."""

    kernel: Any
    grid: tuple
    block: tuple
    scalars: tuple = ()
    with_params: bool = True   # pass the op's params before `scalars`
    sliced: bool = False       # no meta row: each tensor is its own 1-D array (contiguous only)
    n_err: int = 0             # > 0: an int64 device array of that many error words comes last;
                               # word 0 != 0 after the run fails the compute (CudaKernel.explain says why)
    prepare: Any = None        # data derived from one of the launch's tensors, kept by the plan
                               # (quant_reorder.Reordered): .slot (0 dst, 1.. srcs), .bind(buffer, offset,
                               # written_here) once at planning, .refresh(stream) before each run


@dataclass(frozen=True)
class CudaKernel:
    """What an op registers for the cuda backend: how to launch it, and the needed slot dtypes."""

    launches: Callable[[Any], list[Launch]]
    name: str
    explain: Optional[Callable[[Any, Any], str]] = None   # (node, error words) -> message


def flat_launch(kernel: Any, n: int, scalars: Sequence = (), block: int = BLOCK,
                with_params: bool = True, sliced: bool = False) -> Launch:
    """One thread per item (n items), BLOCK threads a block."""
    return Launch(kernel, (max(1, -(-n // block)),), (block,), tuple(scalars), with_params, sliced)


def nelem(ne: Sequence[int]) -> int:
    return int(math.prod(ne))


def nrows(ne: Sequence[int]) -> int:
    return int(ne[1] * ne[2] * ne[3])


def f32_only(node: Any, index_slots: Sequence[int] = ()) -> Optional[str]:
    """None when every tensor is f32 (i32 in `index_slots`), else the refusal reason."""
    for s, t in enumerate([node, *node.src]):
        if t is None:
            continue
        want = dtypes.TYPE_I32 if s in index_slots else dtypes.TYPE_F32
        if t.type != want:
            role = "dst" if s == 0 else f"src[{s - 1}]"
            return (f"{node.op}: CUDA kernels take {dtypes.type_name(want)} for {role}, got "
                    f"{dtypes.type_name(t.type)} (f32 only)")
    return None


def f32_or_i32(node: Any) -> Optional[str]:
    """Layout copies are dtype-generic (the kernel specialises on the buffer type): f32 or i32."""
    for t in [node, *node.src]:
        if t is not None and t.type not in (dtypes.TYPE_F32, dtypes.TYPE_I32):
            return f"{node.op}: CUDA layout kernels take f32/i32 tensors, got {dtypes.type_name(t.type)}"
    return None


# -- device helpers ---------------------------------------------------------------------------

@cuda.jit(device=True)
def at(meta, s, i0, i1, i2, i3):
    """Flat index of element (i0, i1, i2, i3) of slot s."""
    b = s * SLOT_W
    return meta[b] + i0 * meta[b + 5] + i1 * meta[b + 6] + i2 * meta[b + 7] + i3 * meta[b + 8]


@cuda.jit(device=True)
def ne(meta, s, d):
    return meta[s * SLOT_W + 1 + d]


@cuda.jit(device=True)
def size(meta, s):
    b = s * SLOT_W
    return meta[b + 1] * meta[b + 2] * meta[b + 3] * meta[b + 4]


@cuda.jit(device=True)
def unflat(meta, s, i):
    """(i0, i1, i2, i3) of the i-th element of slot s in logical row-major order (i0 fastest)."""
    b = s * SLOT_W
    n0 = meta[b + 1]
    n1 = meta[b + 2]
    n2 = meta[b + 3]
    i0 = i % n0
    r = i // n0
    i1 = r % n1
    r = r // n1
    return i0, i1, r % n2, r // n2


@cuda.jit(device=True)
def block_sum(sh, v):
    """Sum of v over the block's threads (1-D block, blockDim a power of two <= sh.size).

    Every thread gets the total; sh is a shared array the caller owns (reusable after return).
    """
    tid = cuda.threadIdx.x
    sh[tid] = v
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            sh[tid] += sh[tid + step]
        cuda.syncthreads()
        step //= 2
    total = sh[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def block_max(sh, v):
    """Max of v over the block's threads (same rules as block_sum)."""
    tid = cuda.threadIdx.x
    sh[tid] = v
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            sh[tid] = max(sh[tid], sh[tid + step])
        cuda.syncthreads()
        step //= 2
    total = sh[0]
    cuda.syncthreads()
    return total
