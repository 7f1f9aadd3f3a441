"""Q4_0 and Q4_K weights reordered for the CUDA dot kernel: a device copy of a MUL_MAT's src0 rows
in which each 32-element unit's quants are 16 contiguous, 16-byte aligned bytes (ggml-sycl's
"reorder" idea; ggml's own bytes are left as they are). A row of nu units:
  Q4_0  [qs of block 0 .. nu - 1 (16 bytes each) | d of block 0 .. nu - 1 (2 bytes each)],
        18 nu bytes rounded up to 16
  Q4_K  [unit 0 .. nu - 1: its 32 nibbles packed as Q4_0 packs a block's (16 bytes each) |
        unit 0 .. nu - 1: its 6-bit scale and min (2 bytes) | super-block 0 .. nu / 8 - 1: its
        f16 d and dmin (4 bytes)], 18.5 nu bytes rounded up to 16

Why: ggml's Q4_0 block is 18 bytes, so a lane's block is only 2-byte aligned and its 16 bytes of
quants take eight 16-bit loads, each warp-wide load spanning 576 bytes (ncu at 4096 x 14336: L1/TEX
80% busy against DRAM 42%, 7.5 of each 32-byte sector used a load); a Q4_K group's quants are
half the nibbles of 32 bytes it shares with its neighbour (read through shared-memory tiles).
Reordered, a lane's quants are one 16-byte load and a warp's load 512 contiguous bytes; Q4_K's
scales are decoded once into a byte each (with its 16-byte heads kept whole, the kernel's
per-unit decode made it slower than the tiles: 7.13 / 17.82 / 17.39 against 6.91 / 17.15 /
15.80 us). H200 node (quant_cuda.py, 2026-12-04), ggml's bytes -> reordered: Q4_0 6.33 / 13.26 /
14.43 -> 5.76 / 12.40 / 12.65 us at 4096 x 4096 / 4096 x 14336 / 14336 x 4096 (34 / 57 / 52 ->
37 / 61 / 60% of the read bandwidth), Q4_K 6.93 / 17.36 / 15.93 -> 7.12 / 14.92 / 16.01; Q4_K
with the Q4_KR kernel's own rows and split (two each) and PDLQ, one run (2026-12-04): 6.95 /
17.16 / 15.84 -> 5.79 / 13.37 / 12.89 (31 / 44 / 48 -> 37 / 56 / 59%).

The copy costs the weights' bytes again in device memory (Q4_K's 2.8% more); it is kept with the
buffer that holds the weights (CudaBuffer.derive) and made again only when those bytes were
written since (every write this backend makes marks it stale; see backend.Derived). It is not
used (the dot kernel reads ggml's bytes) where it could not stay true: for bytes the same graph
writes, for memory the caller wrapped (set_tensor_device) or was handed as a device view.
`MINIGRAPH_CUDA_REORDER=0` turns it off (and `REORDER = False`, a benchmark's knob). The Q4_0R
kernel takes Q4_0's grid and adds in its order, so results equal those over ggml's bytes bit for
bit; Q4_KR takes two rows a warp and two warps a row slot where Q4_K's tiled kernel keeps one
(each the faster over its bytes), so they differ in the order of the float sums (`same_order`
gives the tiled kernel Q4_KR's settings, and the same floats).
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional

from minigraph.core import dtypes as D, flags
from minigraph.core.errors import MinigraphError

from minigraph.backends.cuda import quant_mmvq
from minigraph.backends.cuda.driver import check, device_ptr, stream_handle

REORDER = True
THREADS = 256              # reorder_q4_0's / reorder_q4_k's block (quant_mmvq.cu)
# ggml type -> (the dot kernel's code over the copy, the reorder kernel)
KINDS = {D.TYPE_Q4_0: (quant_mmvq.Q4_0R, "reorder_q4_0"), D.TYPE_Q4_K: (quant_mmvq.Q4_KR, "reorder_q4_k")}


class RArgs(ctypes.Structure):
    """quant_mmvq.cu's `struct RArgs` (reorder_q4_0's and reorder_q4_k's parameter), field for field."""

    _fields_ = [("src", ctypes.c_void_p), ("dst", ctypes.c_void_p), ("nu", ctypes.c_int), ("n1", ctypes.c_int),
                ("n2", ctypes.c_int), ("n3", ctypes.c_int), ("s1", ctypes.c_int64), ("s2", ctypes.c_int64),
                ("s3", ctypes.c_int64), ("drow", ctypes.c_int64)]


def same_order(type_: int) -> dict:
    """quant_mmvq.CONFIG overrides under which the dot kernel over ggml's bytes of `type_` (Q4_0,
    Q4_K) takes the rows a warp and warps a row slot of its kernel over the copy, and so adds in
    the same order: the same floats. (Q4_0's are the same already; Q4_K's tiled kernel keeps one
    row a warp by default, faster over ggml's bytes, and Q4_KR takes its tiles in turn when split.)"""
    code = KINDS[type_][0]
    c = quant_mmvq.CONFIG
    return {k: c[k] & ~(1 << type_) | (c[k] >> code & 1) << type_ for k in quant_mmvq.ONE_ROW}


def row_bytes(type_: int, nu: int) -> int:
    """Bytes a reordered row of nu units, rounded up to 16 (each row 16-byte aligned): Q4_0 18 nu,
    Q4_K 18.5 nu."""
    used = 18 * nu if type_ == D.TYPE_Q4_0 else 18 * nu + nu // 2
    return -(-used // 16) * 16


def reorder_host(raw: Any, type_: int, nu: int) -> Any:
    """The reordered rows of ggml Q4_0 / Q4_K rows (numpy uint8, (rows, 18 nu)): (rows,
    row_bytes(type_, nu)), the padding zero. What reorder_q4_0 / reorder_q4_k write (tests compare)."""
    import numpy as np

    from minigraph.core.quants import scale_min_k4

    raw = np.asarray(raw, np.uint8)
    out = np.zeros((raw.shape[0], row_bytes(type_, nu)), np.uint8)
    if type_ == D.TYPE_Q4_0:
        b = raw.reshape(-1, nu, 18)
        out[:, :16 * nu] = b[:, :, 2:].reshape(b.shape[0], -1)
        out[:, 16 * nu:18 * nu] = b[:, :, :2].reshape(b.shape[0], -1)
        return out
    b = raw.reshape(-1, nu // 8, 144)
    qs = b[:, :, 16:].reshape(-1, nu // 8, 4, 32)                       # 32 bytes: groups 2j, 2j + 1
    groups = np.stack([qs & 15, qs >> 4], axis=3).reshape(-1, nu, 32)    # unit u's 32 nibbles
    out[:, :16 * nu] = (groups[:, :, :16] | (groups[:, :, 16:] << 4)).reshape(raw.shape[0], -1)
    sc, mn = scale_min_k4(b[:, :, 4:16].reshape(-1, 12))
    out[:, 16 * nu:18 * nu] = np.stack([sc, mn], axis=2).astype(np.uint8).reshape(raw.shape[0], -1)
    out[:, 18 * nu:18 * nu + nu // 2] = b[:, :, :4].reshape(raw.shape[0], -1)
    return out


class Reordered:
    """A MUL_MAT's Q4_0 / Q4_K src0 as a reordered copy (a Launch.prepare of the dot launch): the
    plan binds it to src0's device memory once and refreshes it before each run; `active` once
    bound to a copy the dot kernel may read. `node`: the MUL_MAT it serves."""

    slot = 1                   # the launch's tensor it derives from: src0

    def __init__(self, node: Any) -> None:
        self.node = node
        a = node.src[0]
        self.code, self.kernel = KINDS[a.type]     # the dot kernel's type code over the copy
        self.what = f"MUL_MAT (quantized): reordered src0 '{a.name}'"
        self.ne, self.nb = tuple(a.ne), tuple(a.nb)
        self.nu = a.ne[0] // 32
        self.drow = row_bytes(a.type, self.nu)
        self.rows = a.ne[1] * a.ne[2] * a.ne[3]
        self.extent = sum((n - 1) * s for n, s in zip(a.ne[1:], a.nb[1:])) + 18 * self.nu   # ggml's bytes
        self.copy: Optional[Any] = None
        self.src_ptr = 0
        self.made = 0          # reorder launches so far (tests count them)

    @staticmethod
    def of(node: Any) -> Optional["Reordered"]:
        """A Reordered for the node's src0 where one helps (Q4_0 / Q4_K on a GPU that runs
        quant_mmvq.cu; REORDER and MINIGRAPH_CUDA_REORDER on), else None."""
        a = node.src[0]
        if not (REORDER and flags.cuda_reorder()) or a.type not in KINDS or a.ne[1] * a.ne[2] * a.ne[3] == 0:
            return None
        return Reordered(node)

    @property
    def active(self) -> bool:
        """Bound to a copy (bind found nothing that could make it go stale unseen)."""
        return self.copy is not None

    def span(self, offs: int) -> tuple[int, int]:
        """The bytes [lo, hi) of the buffer the source rows take when they start at `offs`."""
        return offs, offs + self.extent

    def bind(self, buf: Any, offs: int, written_here: bool) -> None:
        """Bind to src0's device buffer (at byte offs); inactive where the copy could go stale
        unseen or inside the run (see the module docstring)."""
        lo, hi = self.span(offs)
        if written_here or buf.owner is not None or any(a < hi and lo < b for a, b in buf.exposed):
            return
        key = (self.kernel, offs, self.ne, self.nb)
        self.copy = buf.derive(key, lo, hi, self.drow * self.rows)
        self.src_ptr = buf.device_address() + offs

    def refresh(self, stream: Any) -> None:
        """Reorder the rows again where the source bytes were written since (one launch of
        reorder_q4_0 / reorder_q4_k on `stream`, ahead of the plan's launches)."""
        c = self.copy
        if not (c.stale or c.volatile):
            return
        from cuda.bindings import driver as drv

        n1, n2, n3 = self.ne[1:]
        p = RArgs(src=self.src_ptr, dst=device_ptr(c.dev), nu=self.nu, n1=n1, n2=n2, n3=n3, s1=self.nb[1],
                  s2=self.nb[2], s3=self.nb[3], drow=self.drow)
        params = (ctypes.c_void_p * 1)(ctypes.addressof(p))
        grid = -(-self.nu * self.rows // THREADS)
        fn = quant_mmvq.function_named(self.kernel)
        check(drv.cuLaunchKernel(fn, grid, 1, 1, THREADS, 1, 1, 0, stream_handle(stream), ctypes.addressof(params), 0),
              f"{self.what}: launch")
        c.stale = False
        self.made += 1

    def pointer(self) -> int:
        if self.copy is None:
            raise MinigraphError(f"{self.what}: not bound")
        return device_ptr(self.copy.dev)

    def strides(self) -> tuple[int, int, int]:
        """nb1..nb3 (bytes) of the dense copy: rows (i3 * ne2 + i2) * ne1 + i1."""
        return self.drow, self.drow * self.ne[1], self.drow * self.ne[1] * self.ne[2]
