"""The CPU backend: plans a graph once (memory, kernel builds, compiled program), then runs it.

Nodes whose tensors are all f32 (or i32/i64 where the kernel takes indices) run inside the
compiled program loop; so do f16/bf16 tensors in a kernel's storage slots (it reads their raw
16 bits itself, see backends/cpu/storage.py). Other f16/bf16 data runs one node at a time from
Python, converted to f32 on load and back on store, with the very same kernels.
Nodes with a block-quantized tensor run their op's quantized path (backends/cpu/quant.py) with
that tensor as raw row bytes: inside the program where the op registers a program form
(MUL_MAT: the quantized tensor in a storage slot of raw bytes), else from Python.
"""
from __future__ import annotations

from typing import Optional

import numba
import numpy as np
from numba.np.ufunc import parallel as _numba_parallel

from minigraph.core import dtypes, flags
from minigraph.core.buffer import HostBuffer, aligned_zeros, storage_view, tensor_start
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.plan_cache import PlanCache
from minigraph.core.registry import OPS, Kernel, kernels_for, quant_kernels_for, quant_programs_for, runs_kernel
from minigraph.core.tensor import Tensor, is_contiguous, nelements, row_size
from minigraph.device.backend import Backend
from minigraph.memory.binding import bind_storage, binding_epoch, graph_lock
from minigraph.memory.scaffold import prepare

from minigraph.backends.cpu import program
from minigraph.backends.cpu.threads import LoadMonitor, usable_cores

_DUMMY = HostBuffer(np.zeros(64, np.uint8))  # stands in for an absent optional source (e.g. no soft_max mask)
# program slot letters (program.SLOT_BUFFERS) of the types any kernel slot takes as they are,
# and of the types a storage slot takes (f16/bf16 as raw 16-bit words)
_FAST_TYPES = {dtypes.TYPE_F32: "f", dtypes.TYPE_I32: "i", dtypes.TYPE_I64: "l"}
_STORAGE_TYPES = {dtypes.TYPE_F32: "f", dtypes.TYPE_F16: "h", dtypes.TYPE_BF16: "h", dtypes.TYPE_I32: "i",
                  dtypes.TYPE_I64: "l"}


def _set_threads(n: int) -> None:
    """numba.set_num_threads(n) (1 <= n <= NUMBA_NUM_THREADS) without the threading-layer start-up
    check it makes on every call: two process-wide locks, ~2-3 us a compute on the dev box (a
    thirtieth of a decode step). Once the layer is up, its C setter is called directly."""
    setter = getattr(_numba_parallel, "_set_num_threads", None) if _numba_parallel._is_initialized else None
    if setter is None:
        numba.set_num_threads(n)
    else:
        setter(n)


def fast_signature(n: Tensor, storage_slots: tuple[int, ...] = (), any_layout: bool = False) -> Optional[str]:
    """Slot dtypes (program.SLOT_BUFFERS letters; upper case for a contiguous tensor, which the
    program passes as a C-contiguous array, unless the kernel is any_layout) when every tensor of
    node `n` can run in the compiled program, else None (the node runs from Python). Storage
    slots always go as strided views: one compiled variant per type."""
    sig = ""
    for s, t in enumerate([n, *n.src]):
        if t is None:
            sig += "f"
            continue
        c = (_STORAGE_TYPES if s in storage_slots else _FAST_TYPES).get(t.type)
        if c is None and s in storage_slots and dtypes.is_quantized(t.type):
            c = "b"      # raw bytes: the program passes the rows as they are stored
        buf = t.root._buf
        if c is None or (buf is not None and buf.is_host and
                         (buf.data.ctypes.data + tensor_start(t)) % np.dtype(program.SLOT_BUFFERS[c]).itemsize):
            return None   # misaligned for its type (a caller's array): the per-node path copes
        contiguous = s not in storage_slots and not any_layout and is_contiguous(t) and nelements(t) > 0
        sig += c.upper() if contiguous else c
    return sig


def node_kernel(backend: "CpuBackend", n: Tensor) -> Optional[Kernel]:
    """The kernel a plan's program runs node `n` with: the op's, or for a node with a
    block-quantized tensor its quantized path's program form (None: it has none, the node runs
    from Python)."""
    return backend.quant_programs.get(n.op) if _has_quantized(n) else backend.kernels[n.op]


def node_variant(kern: Kernel, n: Tensor, build: str) -> Optional[tuple]:
    """The program variant that runs node `n` with `build` ('serial' | 'parallel'):
    (DualKernel, build, slot dtypes, param kinds, extras), or None for a node that runs from
    Python. What a plan compiles, and what `minigraph warmup` compiles ahead."""
    op = OPS[n.op]
    fn = kern.for_node(n)
    sig = fast_signature(n, kern.storage_slots, getattr(fn, "any_layout", False))
    if sig is None:
        return None
    kinds = "".join("f" if p in op.float_params else "i" for p in op.params) + "i" * len(kern.storage_slots)
    return (fn, build, sig, kinds, kern.extra)


class CpuBackend(Backend):
    name = "CPU"

    def __init__(self, n_threads: int = 0) -> None:
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 0:
            raise MinigraphError(f"backend_cpu_init: n_threads must be an int >= 0 (0: MINIGRAPH_THREADS, "
                                 f"load-aware by default), got {n_threads!r}")
        fixed = int(n_threads) or flags.n_threads()
        # n_threads: the most threads a compute uses; load_monitor (None when fixed) picks fewer
        # while other processes keep cores busy
        self.n_threads = fixed or len(usable_cores())
        self.load_monitor: Optional[LoadMonitor] = None if fixed else LoadMonitor(self.n_threads)
        self.last_threads = self.n_threads        # what the latest compute ran with
        self.kernels = kernels_for("cpu")
        self.quant_kernels = quant_kernels_for("cpu")
        self.quant_programs = quant_programs_for("cpu")
        self._plans = PlanCache()

    def __repr__(self) -> str:
        mode = "fixed" if self.load_monitor is None else "load-aware"
        return f"CpuBackend(n_threads={self.n_threads}, {mode})"

    def set_n_threads(self, n: int) -> None:
        """Exactly n threads on every compute from now on (ggml_backend_cpu_set_n_threads)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise MinigraphError(f"set_n_threads: expected an int >= 1, got {n!r}")
        self.n_threads = int(n)
        self.load_monitor = None

    # -- planning -----------------------------------------------------------------------------
    def plan(self, graph: Graph) -> "CpuPlan":
        """The plan of `graph` (made once per graph version; remade when an input moved)."""
        if not isinstance(graph, Graph):
            raise MinigraphError(f"{self.name}.graph_compute: expected a Graph, got {type(graph).__name__} "
                                 "(mg.compute(tensor) takes a tensor)")
        return self._plans.get(graph, lambda: CpuPlan(self, graph), valid=CpuPlan.inputs_in_place)

    def reserve(self, graph: Graph) -> int:
        """Plan without computing; returns the compute-buffer bytes."""
        return self.plan(graph).memory.size

    def graph_compute(self, graph: Graph) -> None:
        n = self.n_threads if self.load_monitor is None else self.load_monitor.threads()
        self.last_threads = min(n, numba.config.NUMBA_NUM_THREADS)
        _set_threads(self.last_threads)
        with graph_lock(graph):
            self.plan(graph).run()


class CpuPlan:
    """Everything decided once per graph: memory, kernel build per node, the program rows."""

    def __init__(self, backend: CpuBackend, graph: Graph) -> None:
        self.backend = backend
        self.memory = prepare(backend, graph)
        self.arena = HostBuffer(aligned_zeros(max(self.memory.size, 64), "CPU compute buffer"))
        self.bindings = [(root, self.arena, self.memory.offsets[id(root)]) for root in self.memory.roots]
        self.epoch = bind_storage(self.bindings)
        self.bufs: list[HostBuffer] = [_DUMMY, self.arena]
        self.leaf_bufs: list[tuple[Tensor, HostBuffer]] = []
        self.steps: list[tuple] = []  # ("prog", start, end) or ("node", node)
        self.nodes: list[Tensor] = []  # program row -> node
        variants: dict[tuple, int] = {}
        rows, frows = [], []
        for n in graph.nodes:
            if not runs_kernel(n):
                continue
            op = OPS[n.op]
            kern = node_kernel(backend, n)
            build = "parallel" if op.flops(n) >= flags.parallel_min_elements() else "serial"
            slots = [n, *n.src]
            key = None if kern is None else self._node_variant(kern, n, build)
            if key is None:
                self.steps.append(("node", n, build))
                continue
            kinds = key[3]
            code = variants.setdefault(key, len(variants))
            row = np.zeros(program.ROW_W, np.int64)
            row[0], row[1], row[2] = code, build == "parallel", len(slots)
            for s, t in enumerate(slots):
                if t is None:
                    program.encode_slot(row, s, 0, 0, 4, (1, 1, 1, 1), (4, 4, 4, 4))
                else:
                    buf, offs = self._locate(t)
                    if dtypes.is_quantized(t.type):
                        program.encode_quant_slot(row, s, buf, offs, row_size(t.type, t.ne[0]), t.ne, t.nb)
                    else:
                        program.encode_slot(row, s, buf, offs, dtypes.type_size(t.type), t.ne, t.nb)
            vals = [*op.param_values(n), *_storage_codes(n, kern.storage_slots)]
            row[program.IP:program.IP + sum(k == "i" for k in kinds)] = [v for v, k in zip(vals, kinds) if k == "i"]
            frow = np.zeros(program.MAX_PARAMS)
            frow[:sum(k == "f" for k in kinds)] = [v for v, k in zip(vals, kinds) if k == "f"]
            if self.steps and self.steps[-1][0] == "prog":
                self.steps[-1] = ("prog", self.steps[-1][1], len(rows) + 1)
            else:
                self.steps.append(("prog", len(rows), len(rows) + 1))
            rows.append(row)
            frows.append(frow)
            self.nodes.append(n)
        self.prog = np.array(rows, np.int64).reshape(-1, program.ROW_W)
        self.fprm = np.array(frows, np.float64).reshape(-1, program.MAX_PARAMS)
        # codes in a canonical order: the same set of variants shares one generated program
        order = sorted(variants, key=lambda v: (v[0].name, v[1:4], repr(v[4])))
        recode = np.array([order.index(v) for v in variants] or [0], np.int64)
        self.prog[:, 0] = recode[self.prog[:, 0]]
        self.runner = program.load_runner(order) if variants else None
        # the program addresses buffers by base address: the arrays stay referenced here
        self.buf_data = [x.data for x in self.bufs]
        self.bases = np.array([d.ctypes.data for d in self.buf_data] or [0], np.int64)
        self.cur = np.zeros(1, np.int64)

    def inputs_in_place(self) -> bool:
        """Whether every input still lives in the buffer it was planned with."""
        return all(t._buf is b for t, b in self.leaf_bufs)

    def _locate(self, t: Tensor) -> tuple[int, int]:
        root = t.root
        buf = root._buf
        for i, b in enumerate(self.bufs):
            if b is buf:
                break
        else:
            if not buf.is_host and buf.backend is not self.backend:  # its own device memory (a fake device) is fine
                raise MinigraphError(f"CPU backend: tensor {describe(t)} lives in {buf!r}, which the "
                                     "CPU backend cannot address: use a scheduler over both backends")
            self.bufs.append(buf)
            self.leaf_bufs.append((root, buf))
            i = len(self.bufs) - 1
        return i, tensor_start(t)

    # which program variant runs a node (None: from Python); a class attribute so a test plan
    # can run every node from Python
    _node_variant = staticmethod(node_variant)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> None:
        if self.epoch != binding_epoch():  # another planner (e.g. the scheduler) re-bound roots
            self.epoch = bind_storage(self.bindings)
        for step in self.steps:
            if step[0] == "prog":
                try:
                    self.runner(self.bases, self.prog, self.fprm, step[1], step[2], self.cur)
                except (IndexError, ValueError, ZeroDivisionError) as e:
                    n = self.nodes[int(self.cur[0])]
                    raise MinigraphError(f"{n.op}: kernel failed on {describe(n)}: {e}") from None
            else:
                self._run_node(step[1], step[2])

    def _run_node(self, n: Tensor, build: str) -> None:
        """Run one node from Python: f16/bf16 tensors go through f32 copies (storage slots: as
        raw 16-bit words)."""
        op = OPS[n.op]
        kern = self.backend.kernels[n.op]
        quant = _has_quantized(n)
        slots = (self.backend.quant_kernels[n.op] if quant else kern).storage_slots   # the path that runs
        arrays = []
        for s, t in enumerate(n.src, start=1):
            if t is None:
                arrays.append(np.zeros((1, 1, 1, 1), np.float32))
                continue
            raw = storage_view(t.root._buf.data, self._locate(t)[1], t.type, t.ne, t.nb)
            if t.type in (dtypes.TYPE_F16, dtypes.TYPE_BF16):
                raw = raw.view(np.uint16) if s in slots else np.ascontiguousarray(dtypes.to_float(raw, t.type))
            arrays.append(raw)
        dst_raw = storage_view(n.root._buf.data, self._locate(n)[1], n.type, n.ne, n.nb)
        converted = n.type in (dtypes.TYPE_F16, dtypes.TYPE_BF16) and 0 not in slots
        if converted:
            dst = np.array(dtypes.to_float(dst_raw, n.type), np.float32)
        else:
            dst = dst_raw.view(np.uint16) if n.type in (dtypes.TYPE_F16, dtypes.TYPE_BF16) else dst_raw
        try:
            if quant:  # block-quantized tensors come as raw row bytes (backends/cpu/quant.py)
                self.backend.quant_kernels[n.op].fn(n, build, dst, *arrays)
            else:
                scale = 4 // dtypes.type_size(n.type) if converted else 1  # byte params of f16 -> f32
                fn = kern.for_node(n)
                fn.load_helpers()
                getattr(fn, build)(dst, *arrays, *op.param_values(n, scale),
                                   *_storage_codes(n, kern.storage_slots), *kern.extra)
        except (IndexError, ValueError, ZeroDivisionError) as e:
            raise MinigraphError(f"{n.op}: kernel failed on {describe(n)}: {e}") from None
        if converted:
            dst_raw[...] = dtypes.from_float(dst, n.type)


def _has_quantized(n: Tensor) -> bool:
    return any(t is not None and dtypes.is_quantized(t.type) for t in (n, *n.src))


def _storage_codes(n: Tensor, storage_slots: tuple[int, ...]) -> list[int]:
    """The type code of each storage slot (f32 for an absent optional source)."""
    slots = [n, *n.src]
    return [slots[s].type if s < len(slots) and slots[s] is not None else dtypes.TYPE_F32 for s in storage_slots]
