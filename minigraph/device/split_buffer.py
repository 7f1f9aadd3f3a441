"""A weight split by rows over several backends: ggml's CUDA split buffer (`-sm row`), for any backends.

`buft = mg.split_buffer_type([cuda0, cuda1], tensor_split=[0.5, 0.5])` then
`mg.backend_tensor_alloc(buft, w)` cuts a 2-D weight w [ne0, ne1] into contiguous row ranges
(rows are ne1: row r holds the ne0 elements at byte r*nb1), one per backend, each in that
backend's own memory. The ranges follow ggml's get_row_split: with cumulative fractions
c = [0, f0, f0+f1, ...] / sum (float32 arithmetic, as ggml), backend i holds rows
[int(nrows*c[i]), int(nrows*c[i+1])), the last one up to nrows (rounding 1 for F32/F16/BF16; a
backend whose share rounds to no rows holds none). The tensor is read and written whole
(t.numpy(), set_data, backend_tensor_set): its rows are gathered from / scattered to the parts.

Only a MUL_MAT with the weight as src0 can read it; the scheduler (minigraph.schedule.row_split)
computes one part per backend where its rows live and gathers the result rows on the main backend.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.buffer import Buffer
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.tensor import Tensor, contiguous_strides, nelements
from minigraph.device.buffers import alloc_buffer


def check_tensor_split(where: str, tensor_split: Any, names: Sequence[str]) -> list[float]:
    """Validated fractions, one per named device (llama.cpp's --tensor-split): finite, >= 0,
    with a positive sum. They need not sum to 1 (ggml normalises)."""
    if isinstance(tensor_split, (str, bytes)) or not hasattr(tensor_split, "__len__"):
        raise MinigraphError(f"{where}: tensor_split must be a list of numbers, one per device "
                             f"({', '.join(names)}), got {tensor_split!r}")
    vals = list(tensor_split)
    if len(vals) != len(names):
        raise MinigraphError(f"{where}: tensor_split has {len(vals)} fractions for {len(names)} devices "
                             f"({', '.join(names) or 'none'}); give one per device")
    out = []
    for k, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise MinigraphError(f"{where}: tensor_split[{k}] ({names[k]}) must be a finite number, got {v!r}")
        if v < 0:
            raise MinigraphError(f"{where}: tensor_split[{k}] ({names[k]}) is negative ({v}); fractions are >= 0")
        out.append(float(v))
    if sum(out) <= 0:
        raise MinigraphError(f"{where}: tensor_split {vals} sums to 0: at least one device needs a positive share")
    return out


def cumulative_split(fractions: Sequence[float]) -> np.ndarray:
    """ggml's split-buffer form: float32 [0, f0, f0+f1, ...] / sum (the start of each device's share)."""
    f = np.asarray(fractions, np.float32)
    starts = np.concatenate([[np.float32(0)], np.cumsum(f, dtype=np.float32)[:-1]]).astype(np.float32)
    return (starts / np.float32(f.sum(dtype=np.float32))).astype(np.float32)


def row_ranges(nrows: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """[row_low, row_high) per device (ggml-cuda's get_row_split, rounding 1)."""
    c = cumulative_split(fractions)
    n = len(c)
    out = []
    for i in range(n):
        lo = 0 if i == 0 else int(np.float32(nrows) * c[i])
        hi = nrows if i == n - 1 else int(np.float32(nrows) * c[i + 1])
        out.append((lo, max(lo, hi)))
    return out


class SplitBufferType:
    """ggml_backend_cuda_split_buffer_type(main_device, tensor_split) over any backends."""

    def __init__(self, backends: Sequence[Any], tensor_split: Sequence[float], main: int = 0) -> None:
        backends = list(backends) if isinstance(backends, (list, tuple)) else []
        if len(backends) < 1:
            raise MinigraphError("split_buffer_type: expected a non-empty list of backends")
        if len({id(b) for b in backends}) != len(backends):
            raise MinigraphError("split_buffer_type: a backend appears twice in the list")
        names = [getattr(b, "name", repr(b)) for b in backends]
        self.backends = backends
        self.tensor_split = check_tensor_split("split_buffer_type", tensor_split, names)
        if isinstance(main, bool) or not isinstance(main, int) or not 0 <= main < len(backends):
            raise MinigraphError(f"split_buffer_type: main must index the backends (0..{len(backends) - 1}), "
                                 f"got {main!r}")
        self.main = main
        self.name = f"Split[{','.join(names)}]"

    def __repr__(self) -> str:
        return f"SplitBufferType({self.name}, tensor_split={self.tensor_split}, main={self.backends[self.main].name})"

    def alloc_tensor(self, t: Tensor) -> Tensor:
        """Move t's rows into the backends' memory (its data, if any, is kept)."""
        if not isinstance(t, Tensor):
            raise MinigraphError(f"{self.name}: expected a Tensor, got {type(t).__name__}")
        if t.op is not None or t.view_src is not None:
            raise MinigraphError(f"{self.name}: {describe(t)} must be a leaf (a weight), not a node or a view")
        if t.ne[2] != 1 or t.ne[3] != 1:
            raise MinigraphError(f"{self.name}: {describe(t)} must be 2-D (ne2 = ne3 = 1): rows are split "
                                 "along ne1 only, as ggml's split buffer")
        if tuple(t.nb) != contiguous_strides(t.type, t.ne):
            raise MinigraphError(f"{self.name}: {describe(t)} must be contiguous")
        if isinstance(t._buf, SplitBuffer):
            return t
        old = t._buf.get(t) if t._buf is not None else None
        buf = SplitBuffer(self, t)
        t._buf, t._offs = buf, 0
        if old is not None:
            buf.set(t, old)
        return t


class SplitBuffer(Buffer):
    """One weight's rows over the backends: `parts` lists (backend index, row_low, row_high, part
    tensor) for the backends with rows; each part tensor [ne0, rows] lives in its backend's memory."""

    is_host = False

    def __init__(self, buft: SplitBufferType, t: Tensor) -> None:
        self.buft = buft
        self.backend = buft.backends[buft.main]   # where the gathered MUL_MAT result lives
        self.tensor = t
        self.row_bytes = dtypes.type_size(t.type) * t.ne[0]
        self.nbytes = self.row_bytes * t.ne[1]
        self.parts: list[tuple[int, int, int, Tensor]] = []
        for i, (lo, hi) in enumerate(row_ranges(t.ne[1], buft.tensor_split)):
            if hi == lo:
                continue
            part = Tensor(t.ctx, t.type, (t.ne[0], hi - lo, 1, 1))
            part.name = f"{t.name or 'weight'}[rows {lo}..{hi}]"
            be = buft.backends[i]
            part._buf, part._offs = alloc_buffer(be, (hi - lo) * self.row_bytes), 0
            self.parts.append((i, lo, hi, part))

    def _whole(self, t: Tensor, what: str) -> None:
        if t.root is not self.tensor or t.view_offs != 0 or t.ne != self.tensor.ne or t.nb != self.tensor.nb:
            raise MinigraphError(f"{self.buft.name}: {what} {describe(t)}: a row-split tensor is read and "
                                 f"written whole ({describe(self.tensor)}), never through a view")

    def get(self, t: Tensor) -> np.ndarray:
        self._whole(t, "read of")
        if not self.parts:
            return np.zeros(0, np.uint8)
        return np.concatenate([p._buf.get(p) for _, _, _, p in self.parts])

    def set(self, t: Tensor, data: Any) -> None:
        self._whole(t, "write of")
        raw = np.ascontiguousarray(np.asarray(data)).view(np.uint8).reshape(-1)
        if raw.size != nelements(t) * dtypes.type_size(t.type):
            raise MinigraphError(f"{self.buft.name}: {describe(t)} takes {self.nbytes} bytes, got {raw.size}")
        for _, lo, hi, p in self.parts:
            p._buf.set(p, raw[lo * self.row_bytes:hi * self.row_bytes])

    def __repr__(self) -> str:
        rows = ", ".join(f"{self.buft.backends[i].name}: rows {lo}..{hi}" for i, lo, hi, _ in self.parts)
        return f"SplitBuffer({self.tensor.name or '<unnamed>'}: {rows})"


def split_buffer_type(backends: Sequence[Any], tensor_split: Sequence[float], main: int = 0) -> SplitBufferType:
    """ggml_backend_cuda_split_buffer_type: a buffer type that splits 2-D weights by rows over
    `backends` by `tensor_split` (one fraction each); `main` (an index) is where the scheduler
    gathers a split MUL_MAT's result. Allocate with mg.backend_tensor_alloc(buft, w)."""
    return SplitBufferType(backends, tensor_split, main)
