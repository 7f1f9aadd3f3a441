"""Buffer operations named as ggml-backend's: allocate a tensor on a backend, read and write a
tensor wherever it lives. Everything goes through the buffer interface (minigraph.core.buffer);
a backend that owns device memory provides `alloc_buffer(nbytes)`, host backends get HostBuffers."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.buffer import Buffer, HostBuffer
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.tensor import Tensor, nelements


def tensor_buffer(t: Tensor) -> Optional[Buffer]:
    """The backend buffer holding t's memory (one with `.backend`), or None for the context's own
    host memory (or no memory yet)."""
    buf = t.root._buf
    return buf if buf is not None and buf.backend is not None else None


def residence_index(t: Tensor, backends: Sequence[Any]) -> Optional[int]:
    """Index in `backends` of the one whose memory holds t: its buffer's backend, or the last (the
    CPU, by the schedulers' convention) for host memory; None when that backend is not listed."""
    buf = tensor_buffer(t)
    if buf is None:
        return len(backends) - 1
    return next((i for i, b in enumerate(backends) if b is buf.backend), None)


def alloc_buffer(backend: Any, nbytes: int) -> Buffer:
    """A buffer of `nbytes` owned by `backend` (its own alloc_buffer, else host memory)."""
    fn = getattr(backend, "alloc_buffer", None)
    if fn is not None:
        return fn(nbytes)
    return HostBuffer.alloc(nbytes, backend, what=f"{getattr(backend, 'name', 'backend')} buffer")


def backend_tensor_alloc(backend: Any, t: Tensor) -> Tensor:
    """ggml_backend_tensor_alloc: give t's root memory on `backend` (data already there is kept).

    Resident tensors pull the ops that read them to their backend (weights, state). `backend`
    may also be a buffer type that places tensors itself (mg.split_buffer_type: rows over devices)."""
    alloc_tensor = getattr(backend, "alloc_tensor", None)
    if alloc_tensor is not None:
        return alloc_tensor(t)
    root = t.root
    old_buf = root._buf
    if old_buf is not None and old_buf.backend is backend:
        return t
    old = old_buf.get(root) if old_buf is not None else None
    root._buf, root._offs = alloc_buffer(backend, root.nbytes()), 0
    if old is not None:
        root._buf.set(root, old)
    return t


def backend_alloc_ctx_tensors(ctx: Any, backend: Any) -> None:
    """ggml_backend_alloc_ctx_tensors: every leaf of ctx without a backend buffer moves to `backend`."""
    for t in ctx.tensors:
        if t.op is None and t.view_src is None and tensor_buffer(t) is None:
            backend_tensor_alloc(backend, t)


def backend_tensor_set(t: Tensor, arr: Any) -> Tensor:
    """ggml_backend_tensor_set with numpy in: writes whatever buffer t lives in."""
    buf = t.root._buf
    if buf is None or buf.is_host:
        return t.set_data(arr)
    a = np.asarray(arr)
    if a.size != nelements(t):
        raise MinigraphError(f"backend_tensor_set: tensor {describe(t)} has {nelements(t)} elements, got {a.shape}")
    buf.set(t, np.ascontiguousarray(dtypes.from_float(a.reshape(-1), t.type)).view(np.uint8))
    return t


def backend_tensor_get(t: Tensor) -> np.ndarray:
    """ggml_backend_tensor_get with numpy out: shape reversed(ne[:n_dims]), from any buffer."""
    return t.numpy()
