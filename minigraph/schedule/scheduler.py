"""ggml_backend_sched: place a graph on several backends, split it into runs, copy between them.

`sched = mg.backend_sched_new([dev, ..., cpu])` takes backends in priority order, the last one
the fallback that runs everything (the CPU). Planning is five numbered passes over the graph;
every decision records a cause tag (ggml's GGML_SCHED_DEBUG tags, spelled out):

  1. pre-allocated: leafs stay where their memory is (`weights/buffer`, `input`); a write into
     a resident tensor runs where it lives (`pre-allocated dst`); an op reading resident weights
     goes to their backend (`weights/buffer`, `upgrade` when weights live on several backends),
     or, for host weights and a batch >= the offload minimum, up to a faster one (`offload`).
  2. views follow their source (`view src`).
  3. every other node: the first backend that supports it (`supported`); a refused op falls
     back to the supporting backend that needs the fewest copied bytes (`fallback`).
  4. splits: consecutive compute nodes on one backend form a split; a source living elsewhere
     is copied once per split into a contiguous tensor on the split's backend (`copy`).
  5. memory: each backend's nodes and copies get one compute buffer from the memory planner.

The backend interface this needs is docs/backend-interface.md. MINIGRAPH_SCHED_DEBUG=1 prints
every placement with its cause; `sched.report()` returns the same facts as data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from minigraph.core import dtypes, flags
from minigraph.memory.alloc import ALIGNMENT, plan_memory
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.tensor import Tensor, bind_storage, binding_epoch, nelements

_HOST_BUF_ALIGN = 64


# -- where a tensor lives --------------------------------------------------------------------

class HostBuffer(np.ndarray):
    """Host memory (uint8) owned by a backend: a numpy array everywhere, with `.backend`."""

    def __array_finalize__(self, obj: Any) -> None:
        self.backend = getattr(obj, "backend", None)


def tensor_buffer(t: Tensor) -> Any:
    """The buffer holding t's memory (an object with `.backend`), or None for plain host memory
    of the CPU backend (or no memory yet)."""
    buf = t.root._buf
    return buf if buf is not None and getattr(buf, "backend", None) is not None else None


def _packed_bytes(t: Tensor) -> int:
    return nelements(t) * dtypes.type_size(t.type)


def _alloc_buffer(backend: Any, nbytes: int) -> Any:
    fn = getattr(backend, "alloc_buffer", None)
    if fn is not None:
        return fn(nbytes)
    buf = np.zeros(-(-max(nbytes, 1) // _HOST_BUF_ALIGN) * _HOST_BUF_ALIGN, np.uint8).view(HostBuffer)
    buf.backend = backend
    return buf


def _tensor_get(backend: Any, t: Tensor) -> np.ndarray:
    """t's elements in logical order as packed uint8 bytes (never the raw strided extent)."""
    fn = getattr(backend, "tensor_get", None) if backend is not None else None
    if fn is not None:
        return fn(t)
    return np.ascontiguousarray(t._raw_view()).reshape(-1).view(np.uint8)


def _tensor_set(backend: Any, t: Tensor, data: np.ndarray) -> None:
    fn = getattr(backend, "tensor_set", None) if backend is not None else None
    if fn is not None:
        fn(t, data)
        return
    t._alloc_root()
    t._raw_view()[...] = data.view(dtypes.storage_dtype(t.type)).reshape(tuple(reversed(t.ne)))


def backend_tensor_alloc(backend: Any, t: Tensor) -> Tensor:
    """ggml_backend_tensor_alloc: give t's root memory on `backend` (data already there is kept).

    Resident tensors pull the ops that read them to their backend (weights, state)."""
    root = t.root
    if tensor_buffer(root) is not None and tensor_buffer(root).backend is backend:
        return t
    old = _tensor_get(tensor_buffer(root) and tensor_buffer(root).backend, root) if root.has_data() else None
    buf = _alloc_buffer(backend, root.nbytes())
    root._buf, root._offs = buf, 0
    if old is not None:
        _tensor_set(backend, root, old)
    return t


def backend_alloc_ctx_tensors(ctx: Any, backend: Any) -> None:
    """ggml_backend_alloc_ctx_tensors: every leaf of ctx without a buffer moves to `backend`."""
    for t in ctx.tensors:
        if t.op is None and t.view_src is None and tensor_buffer(t) is None:
            backend_tensor_alloc(backend, t)


def backend_tensor_set(t: Tensor, arr: Any) -> Tensor:
    """ggml_backend_tensor_set with numpy in: writes whatever backend t lives on."""
    buf = tensor_buffer(t)
    if buf is None or isinstance(buf, np.ndarray):
        return t.set_data(arr)
    a = np.asarray(arr)
    if a.size != nelements(t):
        raise MinigraphError(f"backend_tensor_set: tensor {describe(t)} has {nelements(t)} elements, got {a.shape}")
    data = np.ascontiguousarray(dtypes.from_float(a.reshape(-1), t.type)).view(np.uint8)
    _tensor_set(buf.backend, t, data)
    return t


def backend_tensor_get(t: Tensor) -> np.ndarray:
    """ggml_backend_tensor_get with numpy out: shape reversed(ne[:n_dims]), from any backend."""
    buf = tensor_buffer(t)
    if buf is None or isinstance(buf, np.ndarray):
        return t.numpy()
    raw = _tensor_get(buf.backend, t).view(dtypes.storage_dtype(t.type))
    out = dtypes.to_float(raw, t.type) if t.type == dtypes.TYPE_BF16 else raw
    return np.array(out).reshape(tuple(reversed(t.ne[: t.n_dims])))


# -- the plan --------------------------------------------------------------------------------

@dataclass
class Copy:
    """One input of a split: `src` (on backend `src_backend`) copied into `dst` before it runs."""

    src: Tensor
    dst: Tensor
    src_backend: int
    dst_backend: int
    nbytes: int


@dataclass
class Split:
    backend: int
    nodes: list = field(default_factory=list)     # the user's compute nodes, in order
    copies: list = field(default_factory=list)    # Copy, made before the split runs
    graph: Optional[Graph] = None                 # what backend.graph_compute receives


@dataclass
class SchedPlan:
    assign: dict = field(default_factory=dict)    # id(tensor) -> backend index
    cause: dict = field(default_factory=dict)     # id(tensor) -> (tag, detail)
    tensors: dict = field(default_factory=dict)   # id(tensor) -> tensor (keeps ids alive)
    splits: list = field(default_factory=list)
    buffer_size: dict = field(default_factory=dict)  # backend index -> compute-buffer bytes
    buffers: dict = field(default_factory=dict)      # backend index -> buffer
    bindings: list = field(default_factory=list)     # (root, buffer, offset)
    epoch: int = -1                                  # tensor.bind_storage epoch of the bindings
    residence: list = field(default_factory=list)    # (leaf root, buffer) seen when planning
    version: int = -1
    n_nodes: int = -1

    def valid_for(self, gf: Graph) -> bool:
        return (self.version == getattr(gf, "_version", 0) and self.n_nodes == len(gf.nodes)
                and all(tensor_buffer(r) is b for r, b in self.residence))


class BackendSched:
    """ggml_backend_sched: see the module docstring for the passes."""

    def __init__(self, backends: Sequence[Any], op_offload: Optional[bool] = None,
                 offload_min_batch: Optional[int] = None) -> None:
        backends = list(backends) if isinstance(backends, (list, tuple)) else None
        if not backends:
            raise MinigraphError("backend_sched_new: expected a non-empty list of backends in priority "
                                 "order, the CPU backend last")
        for b in backends:
            if not (callable(getattr(b, "supports_op", None)) and callable(getattr(b, "graph_compute", None))):
                raise MinigraphError(f"backend_sched_new: {b!r} is not a backend (needs supports_op and graph_compute)")
        if len({id(b) for b in backends}) != len(backends):
            raise MinigraphError("backend_sched_new: a backend appears twice in the list")
        self.backends = backends
        self.op_offload = (not flags.no_offload()) if op_offload is None else bool(op_offload)
        self.offload_min_batch = flags.offload_min_batch() if offload_min_batch is None else int(offload_min_batch)
        self.plan: Optional[SchedPlan] = None

    def __repr__(self) -> str:
        return f"BackendSched([{', '.join(b.name for b in self.backends)}])"

    # -- public API (ggml names) -------------------------------------------------------------
    def get_n_backends(self) -> int:
        return len(self.backends)

    def get_backend(self, i: int) -> Any:
        return self.backends[i]

    def reserve(self, gf: Graph, fuse: Optional[bool] = None) -> bool:
        """Plan placement, splits and memory without computing (of mg.optimize(gf, self))."""
        from minigraph.passes.pipeline import optimize

        self._get_plan(optimize(gf, self, fuse))
        return True

    def graph_compute(self, gf: Graph, fuse: Optional[bool] = None) -> Graph:
        """Run mg.optimize(gf, self) (fusion passes; fuse=False or MINIGRAPH_FUSION=0: gf as written)."""
        from minigraph.passes.pipeline import bind_results, optimize, sched_provenance

        run = optimize(gf, self, fuse)
        plan = self._get_plan(run)
        sched_provenance(plan, run)
        if plan.epoch != binding_epoch():  # another runner may have re-bound these roots
            plan.epoch = bind_storage(plan.bindings)
        for split in plan.splits:
            for cp in split.copies:
                self._copy(cp)
            self.backends[split.backend].graph_compute(split.graph)
        for i in {s.backend for s in plan.splits}:
            self.backends[i].synchronize()
        bind_results(run)
        return gf

    def get_n_splits(self) -> int:
        return len(self._last().splits)

    def get_n_copies_made(self) -> int:
        """Tensor copies per run (ggml's get_n_copies is pipeline copies; this counts inputs)."""
        return sum(len(s.copies) for s in self._last().splits)

    def get_tensor_backend(self, t: Tensor) -> Any:
        """The backend t was placed on by the last plan, else where its memory lives, else None."""
        if self.plan is not None and id(t) in self.plan.assign:
            return self.backends[self.plan.assign[id(t)]]
        buf = tensor_buffer(t)
        if buf is not None:
            return buf.backend
        return self.backends[-1] if t.has_data() else None

    def get_tensor_cause(self, t: Tensor) -> Optional[tuple]:
        """(cause tag, detail) of t's placement in the last plan."""
        return self.plan.cause.get(id(t)) if self.plan is not None else None

    def get_buffer_size(self, backend: Any) -> int:
        return self._last().buffer_size.get(self._index(backend), 0)

    def report(self) -> dict:
        from minigraph.schedule.report import report

        return report(self, self._last())

    # -- planning ----------------------------------------------------------------------------
    def _index(self, backend: Any) -> int:
        for i, b in enumerate(self.backends):
            if b is backend:
                return i
        raise MinigraphError(f"backend {getattr(backend, 'name', backend)!r} is not one of this scheduler's "
                             f"backends ({', '.join(b.name for b in self.backends)})")

    def _last(self) -> SchedPlan:
        if self.plan is None:
            raise MinigraphError("scheduler: no graph planned yet: call sched.reserve(gf) or sched.graph_compute(gf)")
        return self.plan

    def _get_plan(self, gf: Graph) -> SchedPlan:
        if not isinstance(gf, Graph):
            raise MinigraphError(f"scheduler: expected a Graph, got {type(gf).__name__}")
        plan = getattr(gf, "_sched_plan", None)
        if plan is None or plan.sched is not self or not plan.valid_for(gf):
            plan = SchedPlan(version=getattr(gf, "_version", 0), n_nodes=len(gf.nodes))
            plan.sched = self  # type: ignore[attr-defined]
            state = _State(self, gf, plan)
            pass1_preallocated(state)
            pass2_views(state)
            pass3_supported(state)
            pass4_splits(state)
            pass5_memory(state)
            gf._sched_plan = plan  # type: ignore[attr-defined]
        self.plan = plan
        if flags.sched_debug():
            from minigraph.schedule.report import print_log

            print_log(self, plan, gf)
        return plan

    def _copy(self, cp: Copy) -> None:
        src_b, dst_b = self.backends[cp.src_backend], self.backends[cp.dst_backend]
        src_b.synchronize()
        fast = getattr(dst_b, "copy_tensor", None)
        if fast is not None and fast(cp.src, cp.dst):
            return
        buf = tensor_buffer(cp.src)
        _tensor_set(dst_b, cp.dst, _tensor_get(buf.backend if buf is not None else src_b, cp.src))


def backend_sched_new(backends: Sequence[Any], op_offload: Optional[bool] = None,
                      offload_min_batch: Optional[int] = None, **_ggml_args: Any) -> BackendSched:
    """ggml_backend_sched_new(backends, bufts, n_backends, graph_size, parallel, op_offload).

    op_offload=False (or MINIGRAPH_NO_OFFLOAD=1) keeps ops on host weights on the host;
    offload_min_batch (MINIGRAPH_OFFLOAD_MIN_BATCH, default 32) is the smallest node.ne[1] offloaded."""
    return BackendSched(backends, op_offload, offload_min_batch)


# -- the passes ------------------------------------------------------------------------------

class _State:
    """What the passes share: the scheduler, the graph, the plan being filled, support answers."""

    def __init__(self, sched: BackendSched, gf: Graph, plan: SchedPlan) -> None:
        self.sched, self.gf, self.plan = sched, gf, plan
        self.backends = sched.backends
        self._support: dict[tuple[int, int], Any] = {}

    def supports(self, i: int, node: Tensor) -> Any:
        key = (i, id(node))
        if key not in self._support:
            self._support[key] = self.backends[i].supports_op(node)
        return self._support[key]

    def assign(self, t: Tensor, i: int, tag: str, detail: str = "") -> None:
        self.plan.assign[id(t)] = i
        self.plan.cause[id(t)] = (tag, detail)
        self.plan.tensors[id(t)] = t

    def where(self, t: Tensor) -> Optional[int]:
        return self.plan.assign.get(id(t))

    def residence(self, t: Tensor) -> int:
        """Backend index of a leaf's memory: its buffer's backend, or the CPU (last) for host."""
        buf = tensor_buffer(t)
        if buf is None:
            return len(self.backends) - 1
        for i, b in enumerate(self.backends):
            if b is buf.backend:
                return i
        raise MinigraphError(f"tensor {describe(t)} lives in a buffer of backend "
                             f"{getattr(buf.backend, 'name', buf.backend)!r}, which is not one of the "
                             f"scheduler's backends ({', '.join(b.name for b in self.backends)})")


def _is_view_op(node: Tensor) -> bool:
    from minigraph.core.registry import OPS

    op = OPS.get(node.op)
    return op is not None and op.is_view


def _buffer_name(st: _State, t: Tensor) -> str:
    buf = tensor_buffer(t)
    owner = st.backends[st.residence(t)].name
    kind = "host memory" if buf is None else f"{type(buf).__name__} of {owner}"
    return f"{owner} ({kind}, {t.root.nbytes()} bytes)"


def _preallocated_error(st: _State, node: Tensor, i: int, reason: str) -> MinigraphError:
    root = node.root
    able = [b.name for k, b in enumerate(st.backends) if st.supports(k, node)]
    fix = (f"allocate '{root.name or '<unnamed>'}' on a backend that supports {node.op} "
           f"(mg.backend_tensor_alloc(backend, t) with one of: {', '.join(able)})" if able else
           f"no backend of this scheduler supports this {node.op}; add one that does")
    return MinigraphError(
        f"{node.op}: pre-allocated tensor {describe(root)} in a buffer ({_buffer_name(st, root)}) that "
        f"cannot run the operation: {st.backends[i].name} refuses node {describe(node)}: {reason}.\n"
        f"  fix: {fix}, or use the non-inplace op and write the result back with ctx.cpy.")


def pass1_preallocated(st: _State) -> None:
    """Leafs stay with their memory; writes into resident tensors and ops on weights follow it."""
    gf = st.gf
    written = {id(n.root) for n in gf.nodes if n.view_src is not None and not _is_view_op(n)}
    for leaf in gf.leafs:
        i = st.residence(leaf)
        if tensor_buffer(leaf) is not None:
            st.assign(leaf, i, "weights/buffer", f"lives in {_buffer_name(st, leaf)}")
        else:
            if leaf._buf is None and id(leaf) in written:
                leaf._alloc_root()  # a cpy/set destination that holds no data yet
            st.assign(leaf, i, "input", "host memory (no backend buffer)")
        st.plan.residence.append((leaf, tensor_buffer(leaf)))
    for node in gf.nodes:
        root = node.root
        if node.view_src is not None and root.op is None:
            i = st.where(root)
            if i is None:  # a view of a tensor that is not a leaf of this graph
                i = st.residence(root)
            if _is_view_op(node):
                st.assign(node, i, "view src", f"view of '{root.name}' on {st.backends[i].name}")
                continue
            sup = st.supports(i, node)
            if not sup:
                raise _preallocated_error(st, node, i, sup.reason)
            st.assign(node, i, "pre-allocated dst", f"writes into '{root.name}' in {_buffer_name(st, root)}")
            continue
        if node.view_src is not None:
            continue  # views of computed nodes: pass 2/3
        weights = [s for s in node.src if s is not None and s.root.op is None and tensor_buffer(s) is not None]
        if not weights:
            continue
        first = st.residence(weights[0])
        homes = sorted({st.residence(w) for w in weights})
        able = [i for i in homes if st.supports(i, node)]
        if not able:
            continue  # no weight backend runs it: pass 3 places it, copying the weights
        i = able[0]
        tag = "weights/buffer" if i == first else "upgrade"
        w = next(w for w in weights if st.residence(w) == i)
        detail = f"reads '{w.root.name}' in {_buffer_name(st, w)}"
        if isinstance(tensor_buffer(w), np.ndarray) and i > 0:
            # host weights: a big enough batch is worth offloading to a higher-priority backend
            batch = node.ne[1]
            if st.sched.op_offload and batch >= st.sched.offload_min_batch:
                for k in range(i):
                    offload = getattr(st.backends[k], "offload_op", None)
                    if st.supports(k, node) and (offload is None or offload(node)):
                        tag, i = "offload", k
                        detail = (f"host weights '{w.root.name}', batch ne[1]={batch} >= "
                                  f"min batch {st.sched.offload_min_batch}")
                        break
        st.assign(node, i, tag, detail)


def pass2_views(st: _State) -> None:
    """Views (and in-place writes) of computed nodes follow their source's backend."""
    for node in st.gf.nodes:
        if node.view_src is None or st.where(node) is not None:
            continue
        i = st.where(node.root)
        if i is None:
            continue  # the source is placed in pass 3, which handles this view in order
        _follow_source(st, node, i)


def _follow_source(st: _State, node: Tensor, i: int) -> None:
    if not _is_view_op(node):
        sup = st.supports(i, node)
        if not sup:
            raise _preallocated_error(st, node, i, sup.reason)
    st.assign(node, i, "view src", f"memory of '{node.root.name}' on {st.backends[i].name}")


def pass3_supported(st: _State) -> None:
    """The first backend that supports a node; a refused node falls back with the fewest copies."""
    for node in st.gf.nodes:
        if st.where(node) is not None:
            continue
        if node.view_src is not None:
            _follow_source(st, node, st.where(node.root))
            continue
        able = [i for i in range(len(st.backends)) if st.supports(i, node)]
        if not able:
            reasons = "; ".join(f"{b.name}: {st.supports(k, node).reason}" for k, b in enumerate(st.backends))
            raise MinigraphError(f"{node.op}: no backend of the scheduler supports {describe(node)} ({reasons})")
        if able[0] == 0:
            st.assign(node, 0, "supported", str(st.supports(0, node).reason))
            continue

        def copied_bytes(i: int) -> int:
            return sum(_packed_bytes(s) for s in node.src if s is not None and st.where(s) != i)

        i = min(able, key=lambda k: (copied_bytes(k), k))
        refused = "; ".join(f"{st.backends[k].name} refuses: {st.supports(k, node).reason}" for k in range(able[0]))
        st.assign(node, i, "fallback", f"{refused}; {copied_bytes(i)} bytes to copy in")


def pass4_splits(st: _State) -> None:
    """Consecutive compute nodes on one backend form a split; foreign sources are copied once."""
    plan = st.plan
    for node in st.gf.nodes:
        if _is_view_op(node):
            continue  # no compute: its memory is its source's
        i = plan.assign[id(node)]
        if not plan.splits or plan.splits[-1].backend != i:
            plan.splits.append(Split(i))
        plan.splits[-1].nodes.append(node)
    for split in plan.splits:
        backend = st.backends[split.backend]
        mapped: dict[int, Tensor] = {}  # id(user tensor) -> tensor the split reads instead
        clones = []
        for node in split.nodes:
            srcs = []
            for s in node.src:
                if s is not None and id(s) not in mapped and plan.assign.get(id(s), split.backend) != split.backend:
                    c = Tensor(s.ctx, s.type, s.ne)  # contiguous: only the elements travel
                    c.name = f"{backend.name}#{s.name or 'node'}"
                    split.copies.append(Copy(s, c, plan.assign[id(s)], split.backend, _packed_bytes(s)))
                    plan.cause[id(c)] = ("copy", f"'{s.name}' from {st.backends[plan.assign[id(s)]].name}")
                    mapped[id(s)] = c
                srcs.append(None if s is None else mapped.get(id(s), s))
            # the clone writes the user's node memory (a view of it), reading the mapped sources
            root = node.root
            clone = Tensor(node.ctx, node.type, node.ne, node.nb, op=node.op, src=srcs,
                           op_params=node.op_params, view_src=root,
                           view_offs=node.view_offs if node.view_src is not None else 0)
            clone.name, clone.flags = node.name, node.flags
            mapped[id(node)] = clone
            clones.append(clone)
        g = Graph(st.gf.ctx)
        g.nodes = clones
        seen = {id(c) for c in clones}
        for c in clones:
            for s in c.src:
                if s is not None and id(s) not in seen:
                    seen.add(id(s))
                    g.leafs.append(s)
        g._seen = {id(t) for t in g.nodes + g.leafs}
        split.graph = g
    # outputs: nodes read by another split (directly or through a copy) or asked for by the user
    readers: dict[int, set] = {}
    for k, split in enumerate(plan.splits):
        for n in split.nodes:
            for s in n.src:
                if s is not None:
                    readers.setdefault(id(s.root), set()).add(k)
    user = {id(t.root) for t in st.gf.outputs}
    for k, split in enumerate(plan.splits):
        split.graph.outputs = [c for c, n in zip(split.graph.nodes, split.nodes)
                               if id(n.root) in user or readers.get(id(n.root), set()) - {k}]


def pass5_memory(st: _State) -> None:
    """One compute buffer per backend: its nodes planned together, its copies after them."""
    from minigraph.core.registry import OPS

    plan = st.plan
    copy_srcs = [cp.src for s in plan.splits for cp in s.copies]  # read by other backends: keep
    for i in sorted({s.backend for s in plan.splits}):
        nodes = [n for s in plan.splits if s.backend == i for n in s.nodes]
        g = Graph(st.gf.ctx)
        g.nodes = nodes
        g.outputs = list(st.gf.outputs) + copy_srcs
        mem = plan_memory(g, can_inplace=lambda n: OPS[n.op].inplace_ok)
        copies = [cp for s in plan.splits if s.backend == i for cp in s.copies]
        offs = mem.size
        placed = [(root, mem.offsets[id(root)]) for root in mem.roots]
        for cp in copies:
            placed.append((cp.dst, offs))
            offs += -(-max(cp.nbytes, 1) // ALIGNMENT) * ALIGNMENT
        buf = _alloc_buffer(st.backends[i], offs)
        plan.buffers[i] = buf
        plan.buffer_size[i] = offs
        plan.bindings += [(root, buf, o) for root, o in placed]
    plan.epoch = bind_storage(plan.bindings)
