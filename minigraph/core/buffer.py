"""Where a tensor's bytes live: ggml_backend_buffer's role, as an interface every layer can use.

A storage root holds (buffer, byte offset); a view reaches its first element at
`tensor_start(t)` = root offset + view_offs (the one place that sum is written). A buffer answers
`get` / `set` (a tensor's elements as packed bytes in logical order, whatever its nb) and `view`
(a strided array over the tensor's memory: numpy for host memory, a device array for a GPU), so
the scheduler and the tools move data without knowing which backend owns it.

`HostBuffer` is host memory: the context's own (backend None, what set_data allocates), a
backend's host buffer (the CPU backend's compute buffer; backend set), or a caller's numpy
array wrapped without a copy (`owner` keeps it alive). Device buffers live with their backend
(minigraph.backends.cuda.backend.CudaBuffer) and implement the same methods.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError

ALIGNMENT = 64          # every buffer minigraph allocates starts on a 64-byte boundary
MAX_ALLOC = 1 << 40     # refuse single allocations above 1 TiB before numpy tries
DLPACK_CPU = 1          # DLPack device types (kDLCPU, kDLCUDA)
DLPACK_CUDA = 2


def extent_bytes(type_: int, ne: Sequence[int], nb: Sequence[int]) -> int:
    """ggml_nbytes: the bytes from the first element to the end of the last one."""
    if any(n <= 0 for n in ne):
        return 0
    # a quantized row is ne0 / blck_size blocks of nb0 bytes (ggml_nbytes' blck_size branch)
    first = ne[0] // dtypes.blck_size(type_) * nb[0] if dtypes.is_quantized(type_) else dtypes.type_size(type_) + (ne[0] - 1) * nb[0]
    return first + sum((n - 1) * s for n, s in zip(ne[1:], nb[1:]))


def tensor_start(t: Any) -> int:
    """Byte offset of t's first element inside its root's buffer."""
    return t.root._offs + t.view_offs


def aligned_zeros(nbytes: int, what: str = "buffer") -> np.ndarray:
    """A zeroed uint8 array of at least `nbytes` (>= 1) bytes whose data starts 64-byte aligned."""
    n = -(-max(int(nbytes), 1) // ALIGNMENT) * ALIGNMENT
    if n > MAX_ALLOC:
        raise MinigraphError(f"{what}: refusing to allocate {n} bytes ({n / 2**30:.1f} GiB; limit {MAX_ALLOC} bytes)")
    try:
        raw = np.zeros(n + ALIGNMENT, np.uint8)
    except MemoryError:
        raise MinigraphError(f"{what}: out of host memory allocating {n} bytes ({n / 2**30:.1f} GiB)") from None
    return raw[-raw.ctypes.data % ALIGNMENT:][:n]


def storage_view(data: np.ndarray, offs: int, type_: int, ne: Sequence[int], nb: Sequence[int]) -> np.ndarray:
    """A 4-D numpy view (shape (ne3, ne2, ne1, ne0)) of uint8 host memory, byte strides nb.

    Quantized types: the rows' raw bytes, shape (ne3, ne2, ne1, row bytes), strides (nb3, nb2, nb1, 1)."""
    dt = dtypes.storage_dtype(type_)
    if dtypes.is_quantized(type_):
        if nb[0] != dtypes.type_size(type_):
            raise MinigraphError(f"{dtypes.type_name(type_)} tensor ne={list(ne)} nb={list(nb)}: quantized data "
                                 "needs its blocks contiguous along ne0 (nb0 = block bytes)")
        ne = (ne[0] // dtypes.blck_size(type_) * nb[0], *ne[1:])
        nb = (1, *nb[1:])
    shape = tuple(reversed(ne))
    if extent_bytes(type_, ne, nb) == 0:
        return np.zeros(shape, dt)
    # np.ndarray checks that the whole extent lies inside `data`: no view can reach past it
    return np.ndarray(shape, dtype=dt, buffer=data, offset=offs, strides=tuple(reversed(nb)))


class Buffer:
    """What minigraph asks of any memory (ggml_backend_buffer_i: get/set tensor, base, size)."""

    backend: Any = None       # the backend that owns it (None: the context's host memory)
    is_host: bool = True      # host memory: kernels on the CPU and numpy can address it directly
    nbytes: int = 0

    def get(self, t: Any) -> np.ndarray:
        """t's elements in logical order as packed uint8 bytes (never the raw strided extent)."""
        raise MinigraphError(f"{type(self).__name__} cannot read tensors")

    def set(self, t: Any, data: np.ndarray) -> None:
        """Write packed bytes (t's elements in logical order) through t's strides."""
        raise MinigraphError(f"{type(self).__name__} cannot write tensors")

    def view(self, t: Any) -> Any:
        """A strided array over t's memory, no copy (numpy for host memory, a device array otherwise)."""
        raise MinigraphError(f"{type(self).__name__} has no array view")

    def data_ptr(self) -> int:
        """Address of the buffer's first byte (DLPack)."""
        raise MinigraphError(f"{type(self).__name__} has no data pointer")

    def dlpack_device(self) -> tuple[int, int]:
        """(DLPack device type, device id) of this memory: (kDLCPU, 0) for host memory."""
        return (DLPACK_CPU, 0)


class HostBuffer(Buffer):
    """Host memory: a flat uint8 numpy array `data`, owned by `backend` (None: the context)."""

    is_host = True

    def __init__(self, data: np.ndarray, backend: Any = None, owner: Any = None) -> None:
        self.data = data
        self.backend = backend
        self.owner = owner          # a wrapped caller array, kept alive with the buffer
        self.nbytes = int(data.size)

    @classmethod
    def alloc(cls, nbytes: int, backend: Any = None, what: str = "buffer") -> "HostBuffer":
        """A new zeroed, aligned host buffer of `nbytes` (`what` names it in a refusal)."""
        return cls(aligned_zeros(nbytes, what), backend)

    def view(self, t: Any) -> np.ndarray:
        return storage_view(self.data, tensor_start(t), t.type, t.ne, t.nb)

    def get(self, t: Any) -> np.ndarray:
        return np.ascontiguousarray(self.view(t)).reshape(-1).view(np.uint8)

    def set(self, t: Any, data: np.ndarray) -> None:
        v = self.view(t)
        v[...] = np.asarray(data).view(v.dtype).reshape(v.shape)

    def data_ptr(self) -> int:
        return int(self.data.ctypes.data)

    def __repr__(self) -> str:
        owner = getattr(self.backend, "name", None) or ("caller array" if self.owner is not None else "context")
        return f"HostBuffer({self.nbytes} bytes, {owner})"


def wrap_host_array(arr: np.ndarray, op: str = "from_numpy", writable_import: bool = False) -> HostBuffer:
    """A HostBuffer over a caller's C-contiguous, aligned, writeable array (no copy).

    writable_import: the array came through DLPack, whose legacy capsules numpy marks read-only
    although the producer's memory (a torch tensor, a minigraph result) is writable: alias it."""
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        raise MinigraphError(f"{op}(copy=False): the array must be C-contiguous and aligned "
                             f"(shape {arr.shape}, strides {arr.strides}); pass copy=True or np.ascontiguousarray(a)")
    if arr.flags.writeable:
        return HostBuffer(arr.reshape(-1).view(np.uint8), owner=arr)
    if not writable_import:
        raise MinigraphError(f"{op}(copy=False): the array is read-only; a graph may write its inputs (pass copy=True)")
    raw = (ctypes.c_uint8 * arr.nbytes).from_address(arr.ctypes.data) if arr.nbytes else (ctypes.c_uint8 * 1)()
    return HostBuffer(np.ctypeslib.as_array(raw)[: arr.nbytes], owner=arr)


# -- DLPack importers: how a device's memory becomes a tensor (registered by the backends) ----

DLPACK_IMPORTERS: dict[int, Any] = {}


def register_dlpack_importer(device_type: int, fn: Any) -> None:
    """fn(ctx, obj, device_id) -> Tensor wraps a DLPack producer living on `device_type`."""
    DLPACK_IMPORTERS[device_type] = fn


def buffer_of(t: Any) -> Optional[Buffer]:
    return t.root._buf
