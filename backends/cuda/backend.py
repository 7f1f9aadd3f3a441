"""The Numba CUDA backend: plans a graph once (memory, launches, CUDA graph), then replays it.

Where tensors live (docs/backend-interface.md):
  * `CudaBuffer` (minigraph.core.buffer's interface, device memory of this backend): from
    alloc_buffer (the scheduler's compute buffers and copies, mg.backend_tensor_alloc) or wrapping
    a caller's device array (set_tensor_device / ctx.from_dlpack: zero-copy,
    `__cuda_array_interface__` or DLPack).
  * a HostBuffer: a graph input. The backend keeps one device MIRROR per host array
    (same size, same offsets), uploaded when its bytes differ from the last upload (a host
    snapshot is kept for the comparison), and downloaded back when a node writes into it.
  * no buffer (a node computed standalone, `mg.compute(t, backend)`): the plan lays such nodes
    out in one device arena with minigraph.memory.alloc.plan_memory and binds them, like the CPU
    backend does, to a host arena of the same layout; the output ranges are downloaded after
    compute, so `t.numpy()` works.

A plan precomputes every launch (kernel configured with grid/block/stream, the argument tuple:
per-node meta row, flat buffers, params). The first compute launches them one by one (which
also compiles the kernels); the next one captures them into a CUDA graph (driver stream
capture) and later computes replay it with one cuGraphLaunch. The plan is rebuilt (and the
graph re-captured) when the graph, its shapes or where its inputs live change.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Optional

import numpy as np
from numba import cuda

from minigraph.core import dtypes, flags
from minigraph.core.buffer import (DLPACK_CUDA, Buffer, HostBuffer, aligned_zeros, extent_bytes,
                                   register_dlpack_importer, storage_view, tensor_start)
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.plan_cache import PlanCache
from minigraph.core.registry import OPS, kernels_for, quant_kernels_for, runs_kernel
from minigraph.core.tensor import FLAG_OUTPUT, Tensor, contiguous_strides, is_contiguous, nelements
from minigraph.device.backend import Backend
from minigraph.memory.binding import bind_storage, binding_epoch, graph_lock
from minigraph.memory.scaffold import prepare

from minigraph.backends.cuda.common import META_W, SIM, SLOT_W
from minigraph.backends.cuda.driver import check, stream_handle
from minigraph.backends.cuda.peer import copy_peer, peer_access

DOWNLOAD_ALL_BYTES = 1 << 20   # arenas up to this size come back in one copy, else range by range
_DTYPES = {dtypes.TYPE_F32: np.float32, dtypes.TYPE_I32: np.int32}   # what zero-copy interop takes
# what a kernel slot sees of each type: a flat array of this dtype, meta in its elements (bf16 as
# its raw 16 bits; kernels convert). Only kernels whose supports_op accepts a type ever get it.
SLOT_DTYPES = {dtypes.TYPE_F32: np.float32, dtypes.TYPE_I32: np.int32, dtypes.TYPE_F16: np.float16,
               dtypes.TYPE_BF16: np.uint16, dtypes.TYPE_I64: np.int64}
# a block-quantized tensor is its raw bytes: meta offsets and nb in bytes, ne in elements
SLOT_DTYPES.update({t: np.uint8 for t in dtypes.QUANT_TYPES})


def graphs_enabled() -> bool:
    return flags.cuda_graphs()


class Derived:
    """Device data a kernel derived from bytes [lo, hi) of a CudaBuffer (a reordered copy of
    weights): `dev` its device array, `stale` while those bytes have been written since it was
    made (every write this backend makes is noted: tensor_set, device copies, plans' writes, mirror
    uploads), `volatile` once they were handed out as a device view (writes then go unseen: it is
    made again at every run)."""

    def __init__(self, lo: int, hi: int, dev: Any) -> None:
        self.lo, self.hi, self.dev = lo, hi, dev
        self.stale, self.volatile = True, False


class CudaBuffer(Buffer):
    """Device memory of one CudaBackend: `dev` is a flat uint8 device array."""

    is_host = False

    def __init__(self, backend: "CudaBackend", dev: Any, owner: Any = None) -> None:
        self.backend = backend
        self.dev = dev
        self.nbytes = int(dev.size)
        self.owner = owner        # the caller's array, kept alive, for wrapped memory
        self._flat: dict[Any, Any] = {}
        self.derived: dict[Any, Derived] = {}     # key -> data derived from this buffer's bytes
        self.exposed: list[tuple[int, int]] = []  # byte ranges handed out as device views

    def derive(self, key: Any, lo: int, hi: int, nbytes: int) -> Derived:
        """The Derived of `key` over bytes [lo, hi), made (stale, nbytes of device memory) on first
        use; it lives as long as this buffer."""
        d = self.derived.get(key)
        if d is None:
            with self.backend.activate():
                d = self.derived[key] = Derived(lo, hi, cuda.device_array(max(16, nbytes), np.uint8))
            d.volatile = self.owner is not None or any(a < hi and lo < b for a, b in self.exposed)
        return d

    def note_write(self, lo: int, hi: int) -> None:
        """Bytes [lo, hi) are (being) written: what was derived from them is stale."""
        for d in self.derived.values():
            if d.lo < hi and lo < d.hi:
                d.stale = True

    def _note_exposed(self, lo: int, hi: int) -> None:
        self.exposed.append((lo, hi))
        for d in self.derived.values():
            if d.lo < hi and lo < d.hi:
                d.volatile = True

    @classmethod
    def alloc(cls, backend: "CudaBackend", nbytes: int) -> "CudaBuffer":
        with backend.activate():
            return cls(backend, cuda.device_array(max(64, -(-int(nbytes) // 64) * 64), np.uint8))

    def flat(self, dtype: Any) -> Any:
        """The whole buffer as a flat device array of `dtype` (what kernels index)."""
        v = self._flat.get(dtype)
        if v is None:
            n = self.nbytes // np.dtype(dtype).itemsize
            v = self._flat[dtype] = self.dev[: n * np.dtype(dtype).itemsize].view(dtype)
        return v

    # -- the buffer interface ----------------------------------------------------------------
    def set(self, t: Tensor, data: Any) -> None:
        offs, stream = tensor_start(t), self.backend.stream
        raw = np.ascontiguousarray(np.asarray(data)).view(np.uint8).reshape(-1)
        n = nelements(t) // dtypes.blck_size(t.type) * dtypes.type_size(t.type)   # quantized: whole blocks
        if raw.size != n:
            raise MinigraphError(f"tensor_set: {describe(t)} takes {n} bytes, got {raw.size}")
        self.note_write(offs, offs + extent_bytes(t.type, t.ne, t.nb))
        with self.backend.activate():
            if is_contiguous(t):
                self.dev[offs:offs + n].copy_to_device(raw, stream=stream)
                return
            ext = extent_bytes(t.type, t.ne, t.nb)  # read-modify-write the extent on the host
            host = self.dev[offs:offs + ext].copy_to_host(stream=stream)
            stream.synchronize()
            view = storage_view(host, 0, t.type, t.ne, t.nb)   # quantized: (ne3, ne2, ne1, row bytes)
            view[...] = raw.view(dtypes.storage_dtype(t.type)).reshape(view.shape)
            self.dev[offs:offs + ext].copy_to_device(host, stream=stream)

    def get(self, t: Tensor) -> np.ndarray:
        offs, stream = tensor_start(t), self.backend.stream
        ext = extent_bytes(t.type, t.ne, t.nb)
        if ext == 0:
            return np.zeros(0, np.uint8)
        with self.backend.activate():
            host = self.dev[offs:offs + ext].copy_to_host(stream=stream)
            stream.synchronize()
        return np.ascontiguousarray(storage_view(host, 0, t.type, t.ne, t.nb)).view(np.uint8).reshape(-1)

    def view(self, t: Tensor) -> Any:
        """t's device memory as a numba device array (no copy), shaped like t.numpy():
        shape reversed(ne[:n_dims]), strides reversed(nb[:n_dims])."""
        offs = tensor_start(t)
        ext = extent_bytes(t.type, t.ne, t.nb)
        dt = np.dtype(dtypes.storage_dtype(t.type))
        nd = t.n_dims
        shape, strides = tuple(reversed(t.ne[:nd])), tuple(reversed(t.nb[:nd]))
        self._note_exposed(offs, offs + ext)     # the caller may write through it
        base = self.dev[offs:offs + max(ext, dt.itemsize)]
        if SIM:
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
            host = getattr(base, "_ary", base)
            return FakeCUDAArray(np.lib.stride_tricks.as_strided(host.view(dt), shape, strides))
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        return DeviceNDArray(shape, strides, dt, stream=0, gpu_data=base.gpu_data)

    def data_ptr(self) -> int:
        """The buffer's device address, for a DLPack export (the consumer may write anywhere in it)."""
        self._note_exposed(0, self.nbytes)
        return self.device_address()

    def device_address(self) -> int:
        """The buffer's device address for this backend's own kernels and copies (not an export)."""
        if SIM:
            return int(getattr(self.dev, "_ary", self.dev).ctypes.data)
        return int(self.dev.device_ctypes_pointer.value)

    def dlpack_device(self) -> tuple[int, int]:
        return (DLPACK_CUDA, self.backend.device)

    def __repr__(self) -> str:
        return f"CudaBuffer({self.backend.name}, {self.nbytes} bytes)"


class _Mirror:
    """Device copy of one host buffer, with the snapshot of what was uploaded."""

    def __init__(self, backend: "CudaBackend", host: HostBuffer) -> None:
        self.host_ref = weakref.ref(host)
        self.buf = CudaBuffer.alloc(backend, host.nbytes)
        self.snapshot: Optional[np.ndarray] = None

    def upload_if_changed(self, stream: Any) -> None:
        host = self.host_ref()
        if host is None:
            return
        if self.snapshot is not None and np.array_equal(host.data, self.snapshot):
            return
        self.buf.note_write(0, host.nbytes)
        self.buf.dev[: host.nbytes].copy_to_device(host.data, stream=stream)
        self.snapshot = host.data.copy()

    def download(self, stream: Any) -> None:
        host = self.host_ref()
        if host is not None:
            self.buf.dev[: host.nbytes].copy_to_host(host.data, stream=stream)
            self.snapshot = None  # refreshed after the stream is synchronised


_BY_DEVICE: "weakref.WeakValueDictionary[int, CudaBackend]" = weakref.WeakValueDictionary()


def _import_dlpack(ctx: Any, obj: Any, device_id: int) -> Tensor:
    """ctx.from_dlpack for CUDA memory: a leaf over it on the first backend made for that GPU."""
    be = _BY_DEVICE.get(device_id)
    if be is None:
        raise MinigraphError(f"from_dlpack: the memory is on CUDA device {device_id}, which has no backend yet: "
                             f"create it first with mg.backend_cuda_init({device_id})")
    return be.tensor_from_device_array(ctx, obj)


register_dlpack_importer(DLPACK_CUDA, _import_dlpack)


_DEVICES_USED: set = set()   # GPU indices that have had a backend in this process


def device_count() -> int:
    """How many CUDA devices numba sees (1 on the simulator)."""
    return len(cuda.gpus)


class CudaBackend(Backend):
    """ggml_backend_cuda_init's counterpart on Numba CUDA (f32 kernels, one stream, CUDA graphs).

    One backend per device (several on one device are fine): its own stream, buffers, mirrors
    and plans. Every driver call it makes runs inside `activate()` (its device's primary context
    pushed), so two backends on two GPUs never touch each other's context."""

    def __init__(self, device: int = 0, use_graphs: bool = True, download_outputs: bool = True) -> None:
        self.device = int(device)
        n = device_count()
        if not 0 <= self.device < n:
            raise MinigraphError(f"backend_cuda_init({self.device}): there is no CUDA device {self.device}: "
                                 f"this machine has {n} CUDA device{'s' if n != 1 else ''} "
                                 f"(indices 0..{n - 1}){' (the simulator has one)' if SIM else ''}")
        self.name = f"CUDA{self.device}"
        _DEVICES_USED.add(self.device)
        if not SIM:
            cuda.select_device(self.device)
        self.use_graphs = bool(use_graphs) and graphs_enabled() and not SIM
        self.download_outputs = download_outputs
        self.kernels = kernels_for("cuda")
        self.quant_kernels = quant_kernels_for("cuda")   # nodes touching block-quantized tensors
        with self.activate():
            self.stream = cuda.stream()
        self._plans = PlanCache()
        self._mirrors: dict[int, _Mirror] = {}
        self._dummy = CudaBuffer.alloc(self, 64)
        _BY_DEVICE[self.device] = self  # from_dlpack wraps CUDA memory for the newest backend of its GPU

    @property
    def device_id(self) -> int:
        """The CUDA device index (ggml's device of ggml_backend_cuda_init(i))."""
        return self.device

    def activate(self) -> Any:
        """A context manager making this backend's GPU current (numba's `with cuda.gpus[i]`).
        While only one GPU has backends, its context is already current (select_device at
        init): nothing to push, so the one-GPU path pays nothing."""
        if SIM or len(_DEVICES_USED) == 1:
            return contextlib.nullcontext()
        return cuda.gpus[self.device]

    def __repr__(self) -> str:
        return f"CudaBackend(device={self.device}, use_graphs={self.use_graphs}{', simulator' if SIM else ''})"

    # -- what runs here ----------------------------------------------------------------------
    def offload_op(self, node: Tensor) -> bool:
        return bool(self.supports_op(node))

    # -- memory (backend interface) ------------------------------------------------------------
    def alloc_buffer(self, nbytes: int) -> CudaBuffer:
        return CudaBuffer.alloc(self, nbytes)

    def synchronize(self) -> None:
        with self.activate():
            self.stream.synchronize()

    def copy_tensor(self, src: Tensor, dst: Tensor) -> Any:
        """The scheduler's copy hook: src (in any CUDA backend's memory) into dst (in this
        backend's memory) without the host, when both are contiguous of one type: "device" on one
        GPU, "peer" from another GPU when peer access is enabled (peer.py). False: the scheduler
        copies through host memory instead (strided views, a host src, GPUs without peer access)."""
        sb, db = src.root._buf, dst.root._buf
        if not (isinstance(sb, CudaBuffer) and isinstance(db, CudaBuffer) and db.backend is self):
            return False
        if src.type != dst.type or not (is_contiguous(src) and is_contiguous(dst)):
            return False
        same = sb.backend.device == self.device
        if not same and not peer_access(sb.backend.device, self.device):
            return False
        n = nelements(src) * dtypes.type_size(src.type)
        so, do = tensor_start(src), tensor_start(dst)
        if n:
            db.note_write(do, do + n)
            sb.backend.synchronize()
            with self.activate():
                if same:
                    db.dev[do:do + n].copy_to_device(sb.dev[so:so + n], stream=self.stream)
                else:
                    copy_peer(db.device_address() + do, self.device, sb.device_address() + so, sb.backend.device, n,
                              self.stream)
        return "device" if same else "peer"

    # -- zero-copy interop ---------------------------------------------------------------------
    def set_tensor_device(self, t: Tensor, arr: Any) -> Tensor:
        """Make leaf t read the caller's device array in place (no copy).

        arr: any object with `__cuda_array_interface__` or `__dlpack__` (numba, CuPy, PyTorch,
        JAX), C-contiguous, of t's element type and element count. The array must stay alive
        and unmodified while a compute that reads it runs (this backend's stream is not
        synchronised with the producer's: synchronise it first)."""
        if t.op is not None or t.view_src is not None:
            raise MinigraphError(f"set_tensor_device: {describe(t)} must be a leaf (no op, not a view)")
        if t.type not in _DTYPES or tuple(t.nb) != contiguous_strides(t.type, t.ne):
            raise MinigraphError(f"set_tensor_device: {describe(t)} must be a contiguous f32/i32 tensor")
        dev = _as_device_array(arr)
        want = np.dtype(_DTYPES[t.type])
        if dev.dtype != want or int(dev.size) != nelements(t) or not dev.is_c_contiguous():
            raise MinigraphError(f"set_tensor_device: {describe(t)} needs a C-contiguous {want} array of "
                                 f"{nelements(t)} elements, got {dev.dtype} shape {tuple(dev.shape)}")
        flat = dev.reshape(dev.size) if dev.ndim != 1 else dev
        bind_storage([(t, CudaBuffer(self, flat.view(np.uint8), owner=arr), 0)])
        return t

    def tensor_from_device_array(self, ctx: Any, arr: Any) -> Tensor:
        """A new leaf of ctx over a device array (numpy shape (d, c, b, a) -> ne [a, b, c, d])."""
        dev = _as_device_array(arr)
        types = {np.dtype(np.float32): dtypes.TYPE_F32, np.dtype(np.int32): dtypes.TYPE_I32}
        if dev.dtype not in types or not 1 <= dev.ndim <= 4:
            raise MinigraphError(f"tensor_from_device_array: need a 1-4 dim f32/i32 array, got {dev.dtype} "
                                 f"shape {tuple(dev.shape)}")
        t = ctx.new_tensor(types[dev.dtype], dev.ndim, list(reversed(dev.shape)))
        return self.set_tensor_device(t, arr)

    def tensor_device_array(self, t: Tensor) -> Any:
        """t's device memory as a numba device array (no copy), shaped like t.numpy(). Valid for
        tensors this backend holds or computed (after graph_compute); t.__cuda_array_interface__
        and torch.from_dlpack(t) give the same memory to CuPy or PyTorch."""
        buf, _ = self._device_location(t)
        return buf.view(t)  # a host tensor's mirror has the host buffer's offsets

    def _device_location(self, t: Tensor) -> tuple[CudaBuffer, int]:
        """(device buffer, byte offset of t's first element) of a tensor this backend holds."""
        buf, offs = t.root._buf, tensor_start(t)
        if isinstance(buf, CudaBuffer):
            if buf.backend is not self:
                raise MinigraphError(f"{describe(t)} lives on {buf.backend.name}, not {self.name}")
            return buf, offs
        if isinstance(buf, HostBuffer):
            m = self._mirrors.get(id(buf))
            if m is not None and m.host_ref() is buf:
                return m.buf, offs
        raise MinigraphError(f"{describe(t)} has no memory on {self.name} (compute a graph with it first)")

    def mirror(self, host: HostBuffer) -> _Mirror:
        """The device mirror of a host buffer (made on first use, dropped with the host buffer)."""
        m = self._mirrors.get(id(host))
        if m is None or m.host_ref() is not host:
            m = self._mirrors[id(host)] = _Mirror(self, host)
            weakref.finalize(host, self._mirrors.pop, id(host), None)
        return m

    # -- compute ---------------------------------------------------------------------------------
    def plan(self, graph: Graph) -> "CudaPlan":
        if not isinstance(graph, Graph):
            raise MinigraphError(f"{self.name}.graph_compute: expected a Graph, got {type(graph).__name__}")
        with self.activate():
            return self._plans.get(graph, lambda: CudaPlan(self, graph), valid=CudaPlan.inputs_in_place)

    def reserve(self, graph: Graph) -> int:
        return self.plan(graph).memory.size

    def graph_compute(self, graph: Graph) -> None:
        with graph_lock(graph), self.activate():
            self.plan(graph).run()


def _sim_launcher(la: Any, stream: Any) -> Any:
    """The simulator's kernel[grid, block] configures the kernel object itself (the last of a plan's
    launches of one kernel would set the grid of all of them), so there it is configured per call."""
    return lambda *args: la.kernel[la.grid, la.block, stream](*args)


def _as_device_array(arr: Any) -> Any:
    """A numba device array over a CAI or DLPack object (no copy)."""
    if SIM:  # the simulator has no interop: its own fake device arrays only
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        if isinstance(arr, FakeCUDAArray):
            return arr
        raise MinigraphError(f"CUDA simulator: expected a numba (fake) device array, got {type(arr).__name__}")
    if cuda.is_cuda_array(arr):
        return cuda.as_cuda_array(arr)
    if hasattr(arr, "__dlpack__"):
        from cuda.core.utils import StridedMemoryView  # numba-cuda's dependency

        v = StridedMemoryView.from_dlpack(arr, stream_ptr=-1)
        itemsize = np.dtype(v.dtype).itemsize
        cai = {"shape": tuple(v.shape), "typestr": np.dtype(v.dtype).str, "data": (int(v.ptr), v.readonly),
               "strides": None if v.strides is None else tuple(s * itemsize for s in v.strides), "version": 3}
        return cuda.from_cuda_array_interface(cai, owner=arr)
    raise MinigraphError(f"expected a device array (__cuda_array_interface__ or __dlpack__), got {type(arr).__name__}")


class CudaPlan:
    """Everything decided once per graph: where each tensor is, the launches, the CUDA graph."""

    def __init__(self, backend: CudaBackend, graph: Graph) -> None:
        self.backend = backend
        self.memory = prepare(backend, graph)
        self.host_arena = HostBuffer(aligned_zeros(max(self.memory.size, 64), f"{backend.name} host twin"))
        self.arena = backend.mirror(self.host_arena).buf
        # nodes with no storage of their own get the arena (bound to its host twin)
        self.bound = [r for r in self.memory.roots if not isinstance(r._buf, CudaBuffer)]
        self.epoch = bind_storage([(r, self.host_arena, self.memory.offsets[id(r)]) for r in self.bound])
        self.inputs = {}      # id(host array) -> _Mirror: graph inputs to upload when changed
        self.written = {}     # mirrors of host inputs that nodes write into (downloaded after)
        self.external = {}    # id(root) -> (root, buffer) of the other tensors: the plan holds while they stay
        self.launches = []    # (configured kernel, args)
        self.writes = []      # (buffer, first byte, end byte) of what the nodes write outside the arena
        self.prepares = []    # Launch.prepare objects bound here: refreshed before each run
        metas = []
        to_bind = []          # (prepare, buffer, offset) of launches that derive data from a tensor
        for n in graph.nodes:
            if not runs_kernel(n):
                continue
            meta = np.zeros(META_W, np.int64)
            writes = {0, *(s + 1 for s in OPS[n.op].written_srcs)}
            bufs, extents, located = [], [], []
            kern = self._kernel_of(n)
            for s, t in enumerate([n, *n.src]):
                if t is None:
                    bufs.append(backend._dummy.flat(np.float32))
                    extents.append((0, None))
                    located.append(None)
                    continue
                buf, offs = self._locate(t, written=(s in writes))
                located.append((buf, offs))
                if s in writes and buf is not self.arena:
                    self.writes.append((buf, offs, offs + extent_bytes(t.type, t.ne, t.nb)))
                dt = SLOT_DTYPES[t.type]
                es = np.dtype(dt).itemsize
                if offs % es or any(x % es for x in t.nb):
                    raise MinigraphError(f"{n.op}: {describe(t)} starts at byte {offs} or has strides {list(t.nb)} "
                                         f"that are not multiples of its element size {es}")
                meta[s * SLOT_W] = offs // es
                meta[s * SLOT_W + 1:s * SLOT_W + 5] = t.ne
                meta[s * SLOT_W + 5:s * SLOT_W + 9] = [x // es for x in t.nb]
                bufs.append(buf.flat(dt))
                count = extent_bytes(t.type, t.ne, t.nb) if dtypes.is_quantized(t.type) else nelements(t)
                extents.append((offs // es, offs // es + count))
            params = OPS[n.op].param_values(n)
            for la in kern.fn.launches(n):
                args = [b[lo:hi] for b, (lo, hi) in zip(bufs, extents)] if la.sliced else bufs
                metas.append((meta, la, args, params, n, kern))
                if la.prepare is not None and located[la.prepare.slot] is not None:
                    to_bind.append((la.prepare, *located[la.prepare.slot]))
        # after every node is located: a derived copy of bytes that this graph writes itself (the
        # arena holds only what it computes) would be stale inside the run, so such a launch
        # keeps reading the tensor as it is
        for prep, buf, offs in to_bind:
            lo, hi = prep.span(offs)
            prep.bind(buf, offs, buf is self.arena or any(b is buf and a < hi and lo < e for b, a, e in self.writes))
            if prep.active:
                self.prepares.append(prep)
        rows = [m[0] for m in metas] or [np.zeros(META_W, np.int64)]
        self.meta = cuda.to_device(np.array(rows, np.int64).reshape(-1, META_W))
        # error words: launches that report bad data (an index out of range) write them; read after a run
        n_err = [m[1].n_err for m in metas]
        self.err = cuda.to_device(np.zeros(max(1, sum(n_err)), np.int64))
        self.err_checks = []   # (first word, word count, node, explain)
        at_word = 0
        for i, (_, la, bufs, params, n, kern) in enumerate(metas):
            cfg = _sim_launcher(la, backend.stream) if SIM else la.kernel[la.grid, la.block, backend.stream]
            extra = ()
            if la.n_err:
                extra = (self.err[at_word:at_word + la.n_err],)
                self.err_checks.append((at_word, la.n_err, n, kern.fn.explain))
                at_word += la.n_err
            args = ((() if la.sliced else (self.meta[i],)) + (*bufs, *(params if la.with_params else ()), *la.scalars,
                                                              *extra))
            self.launches.append((cfg, args, n))
        self.outputs = self._output_ranges(graph)
        self.n_runs = 0
        self.graph_exec: Optional[_CudaGraph] = None
        self.graph_error: Optional[str] = None

    # -- planning helpers --------------------------------------------------------------------
    def _kernel_of(self, n: Tensor) -> Any:
        """The node's Kernel: its op's quantized path when a block-quantized tensor is among dst
        and srcs (backends/cuda/quant_*.py), else the op's plain kernel."""
        if any(t is not None and dtypes.is_quantized(t.type) for t in (n, *n.src)):
            return self.backend.quant_kernels[n.op]
        return self.backend.kernels[n.op]

    def _locate(self, t: Tensor, written: bool) -> tuple[CudaBuffer, int]:
        root = t.root
        offs, buf = tensor_start(t), root._buf
        if isinstance(buf, CudaBuffer):
            if buf.backend is not self.backend:
                raise MinigraphError(f"{describe(t)} lives on {buf.backend.name}, not {self.backend.name}")
            self.external[id(root)] = (root, buf)
            return buf, offs
        if buf is self.host_arena:
            return self.arena, offs
        if not isinstance(buf, HostBuffer):
            raise MinigraphError(f"{describe(t)}: unknown buffer {type(buf).__name__} (not host, not {self.backend.name})")
        m = self.backend.mirror(buf)
        self.inputs[id(buf)] = m
        self.external[id(root)] = (root, buf)
        if written:
            self.written[id(buf)] = m
        return m.buf, offs

    def _output_ranges(self, graph: Graph) -> list[tuple[int, int]]:
        """Byte ranges of the arena the host reads after compute: each output's (and flagged
        node's) own bytes, the whole of a sink (a root no node reads). Only the output's extent: a
        view of a packed result (GATED_DELTA_NET's output beside its 537 MB state at B=256) brought
        the whole result back every compute."""
        if not self.backend.download_outputs or not self.bound:
            return []
        read = {id(s.root) for n in graph.nodes for s in n.src if s is not None}
        bound = {id(r) for r in self.bound}
        outs = list(graph.outputs) + [n for n in graph.nodes if n.flags & FLAG_OUTPUT]
        spans = [(self.memory.offsets[id(t.root)] + (t.view_offs if t.view_src is not None else 0),
                  extent_bytes(t.type, t.ne, t.nb)) for t in outs if id(t.root) in bound]
        spans += [(self.memory.offsets[id(r)], extent_bytes(r.type, r.ne, r.nb)) for r in self.bound if id(r) not in read]
        if sum(sz for _, sz in spans) > 0 and self.host_arena.nbytes <= DOWNLOAD_ALL_BYTES:
            return [(0, self.host_arena.nbytes)]
        merged: list[list[int]] = []
        for lo, sz in sorted(s for s in spans if s[1] > 0):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], lo + sz)
            else:
                merged.append([lo, lo + sz])
        return [(lo, hi - lo) for lo, hi in merged]

    def inputs_in_place(self) -> bool:
        """Whether every tensor outside the arena still lives in the buffer it was planned with."""
        return all(r._buf is b for r, b in self.external.values())

    # -- running -------------------------------------------------------------------------------
    def run(self) -> None:
        be = self.backend
        stream = be.stream
        if self.bound and self.epoch != binding_epoch():  # another plan re-pointed these roots meanwhile
            self.epoch = bind_storage([(r, self.host_arena, self.memory.offsets[id(r)]) for r in self.bound])
        for m in self.inputs.values():
            m.upload_if_changed(stream)
        for prep in self.prepares:     # on the stream ahead of the launches that read it
            prep.refresh(stream)
        if be.use_graphs and self.n_runs >= 1 and self.graph_error is None:
            if self.graph_exec is None:
                try:
                    self.graph_exec = _CudaGraph.capture(stream, self.launches)
                except Exception as e:  # noqa: BLE001 - fall back to plain launches, say why
                    self.graph_error = f"{type(e).__name__}: {e}"
            if self.graph_exec is not None:
                self.graph_exec.launch(stream)
            else:
                self._launch_all()
        else:
            self._launch_all()
        self.n_runs += 1
        for buf, lo, hi in self.writes:
            buf.note_write(lo, hi)
        for off, size in self.outputs:
            self.arena.dev[off:off + size].copy_to_host(self.host_arena.data[off:off + size], stream=stream)
        for m in self.written.values():
            m.download(stream)
        if self.outputs or self.written or self.err_checks:
            stream.synchronize()
            for m in self.written.values():
                host = m.host_ref()
                m.snapshot = None if host is None else host.data.copy()
        if self.err_checks:
            self._raise_reported_errors()

    def _raise_reported_errors(self) -> None:
        """A kernel cannot raise: the ones that check their data (GET_ROWS, SET_ROWS indices) write
        error words; nonzero words after the run become the CPU backend's MinigraphError."""
        words = self.err.copy_to_host()
        for first, count, n, explain in self.err_checks:
            w = words[first:first + count]
            if w[0]:
                self.err.copy_to_device(np.zeros_like(words))   # the next run starts clean
                why = explain(n, w) if explain else "the kernel reported bad input"
                raise MinigraphError(f"{n.op}: kernel failed on {describe(n)}: {why}")

    def _launch_all(self) -> None:
        for cfg, args, n in self.launches:
            try:
                cfg(*args)
            except Exception as e:  # noqa: BLE001 - name the node whose launch failed
                raise MinigraphError(f"{n.op}: CUDA launch failed on {describe(n)}: {type(e).__name__}: {e}") from e


class _CudaGraph:
    """A captured CUDA graph of a plan's launches (driver API through cuda.bindings)."""

    def __init__(self, graph: Any, exec_: Any, n: int) -> None:
        self.graph, self.exec, self.n = graph, exec_, n

    @staticmethod
    def capture(stream: Any, launches: list) -> "_CudaGraph":
        from cuda.bindings import driver as drv

        h = stream_handle(stream)
        _check(drv.cuStreamBeginCapture(h, drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "begin capture")
        try:
            for cfg, args, _ in launches:
                cfg(*args)
        except BaseException:
            drv.cuStreamEndCapture(h)
            raise
        graph = _check(drv.cuStreamEndCapture(h), "end capture")
        exec_ = _check(drv.cuGraphInstantiate(graph, 0), "instantiate")
        return _CudaGraph(graph, exec_, len(launches))

    def launch(self, stream: Any) -> None:
        from cuda.bindings import driver as drv

        _check(drv.cuGraphLaunch(self.exec, stream_handle(stream)), "graph launch")

    def __del__(self) -> None:
        try:
            from cuda.bindings import driver as drv

            drv.cuGraphExecDestroy(self.exec)
            drv.cuGraphDestroy(self.graph)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _check(result: Any, what: str) -> Any:
    return check(result, f"CUDA graph {what}")
