"""ggml_backend_sched: place a graph on several backends, split it into runs, copy between them.

`sched = mg.backend_sched_new([dev, ..., cpu])` takes backends in priority order, the last one
the fallback that runs everything (the CPU). Planning is five numbered passes over the graph
(and three that only a multi-device placement needs); every decision records a cause tag
(ggml's GGML_SCHED_DEBUG tags, spelled out):

  0. row split: a MUL_MAT on a weight split by rows over devices (mg.split_buffer_type) becomes one
     part per device plus the gather on the main device (`row split`, schedule/row_split.py);
     nodes the user placed with sched.set_tensor_backend go there (`user`).
  1. pre-allocated: leafs stay where their memory is (`weights/buffer`, `input`); a write into
     a resident tensor runs where it lives (`pre-allocated dst`); an op reading resident weights
     goes to their backend (`weights/buffer`, `upgrade` when weights live on several backends),
     or, for host weights and a batch >= the offload minimum, up to a faster one (`offload`).
     1b. with tensor_split: nodes of layer N (blk.N. names, their weights) go to that layer's
     device (`layer split`, schedule/layers.py: llama.cpp's -sm layer).
  2. views follow their source (`view src`).
     2b. when placement spans two devices: ggml's expand, a node follows the placed node before
     (else after) it, never the CPU fallback (`expand`).
  3. every other node: the first backend that supports it (`supported`); a refused op falls
     back to the supporting backend that needs the fewest copied bytes (`fallback`).
  4. splits: consecutive compute nodes on one backend form a split; a source living elsewhere
     is copied once per split into a contiguous tensor on the split's backend (`copy`).
  5. memory: each backend's nodes and copies get one compute buffer from the memory planner.

The backend interface this needs is docs/backend-interface.md; several devices: docs/multi_device.md.
MINIGRAPH_SCHED_DEBUG=1 prints every placement with its cause; `sched.report()` returns the same
facts as data, `sched.get_copy_stats()` the copies actually made (bytes, device pairs, paths).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from minigraph.core import dtypes, flags
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph, graph_labels
from minigraph.core.plan_cache import PlanCache
from minigraph.core.registry import OPS
from minigraph.core.tensor import Tensor, nelements
from minigraph.device.buffers import alloc_buffer, backend_tensor_alloc, residence_index, tensor_buffer
from minigraph.device.split_buffer import check_tensor_split
from minigraph.memory.alloc import ALIGNMENT, plan_memory
from minigraph.memory.binding import bind_results, bind_storage, binding_epoch, graph_lock
from minigraph.memory.scaffold import bind_leafs, can_inplace
from minigraph.schedule.layers import (LayerMap, build_layer_map, layer_of_name, multi_device, pass1b_layers,
                                       pass2b_expand)
from minigraph.schedule.row_split import pass0_row_split

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
    epoch: int = -1                                  # memory.binding epoch of the bindings
    residence: list = field(default_factory=list)    # (leaf root, buffer) seen when planning
    layers: Optional[LayerMap] = None                # the layer split used (tensor_split)
    row_splits: list = field(default_factory=list)   # (user MUL_MAT node, [(part, row_low)], gather node)
    labels: dict = field(default_factory=dict)       # id(tensor) -> label (core.graph.graph_labels)

    def still_resident(self) -> bool:
        """Whether every leaf is still in the buffer it was planned in."""
        return all(tensor_buffer(r) is b for r, b in self.residence)


class BackendSched:
    """ggml_backend_sched: see the module docstring for the passes."""

    def __init__(self, backends: Sequence[Any], op_offload: Optional[bool] = None,
                 offload_min_batch: Optional[int] = None, optimizer: Optional[Any] = None,
                 tensor_split: Optional[Sequence[float]] = None, n_layer: Optional[int] = None) -> None:
        """optimizer(gf, target, fuse) -> an optimize result (.graph, .results, .provenance,
        .binder): the pass pipeline run before planning (mg.backend_sched_new gives the default
        one; None runs graphs as written). tensor_split: one fraction per device (every backend
        but the last) for the layer split; n_layer: the model's layer count (default: the largest
        blk.N index in the graph + 1)."""
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
        devices = [b.name for b in backends[:-1]]
        self.tensor_split = (None if tensor_split is None else
                             check_tensor_split("backend_sched_new", tensor_split, devices))
        if n_layer is not None and (isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 1):
            raise MinigraphError(f"backend_sched_new: n_layer must be an int >= 1, got {n_layer!r}")
        self.n_layer = n_layer
        self._user: dict[int, tuple[Tensor, int]] = {}   # id(node) -> (node, backend index)
        self.copy_stats = _new_stats()
        self.op_offload = (not flags.no_offload()) if op_offload is None else bool(op_offload)
        self.offload_min_batch = flags.offload_min_batch() if offload_min_batch is None else int(offload_min_batch)
        self.optimizer = optimizer
        self.plan: Optional[SchedPlan] = None
        self._plans = PlanCache()

    def __repr__(self) -> str:
        return f"BackendSched([{', '.join(b.name for b in self.backends)}])"

    # -- public API (ggml names) -------------------------------------------------------------
    def get_n_backends(self) -> int:
        """ggml_backend_sched_get_n_backends: how many backends the scheduler places on."""
        return len(self.backends)

    def get_backend(self, i: int) -> Any:
        """ggml_backend_sched_get_backend: backend `i`, in priority order (0 first)."""
        return self.backends[i]

    def reserve(self, gf: Graph, fuse: Optional[bool] = None) -> bool:
        """Plan placement, splits and memory without computing (of the optimized gf)."""
        run = self._optimize(gf, fuse)
        self._get_plan(run.graph, run.provenance)
        return True

    def graph_compute(self, gf: Graph, fuse: Optional[bool] = None) -> Graph:
        """Run the optimizer's graph for gf (fuse=False or MINIGRAPH_FUSION=0: gf as written)."""
        with graph_lock(gf):
            run = self._optimize(gf, fuse)
            plan = self._get_plan(run.graph, run.provenance)
            _provenance(plan, run)
            if plan.epoch != binding_epoch():  # another runner may have re-bound these roots
                plan.epoch = bind_storage(plan.bindings)
            for split in plan.splits:
                for cp in split.copies:
                    self._count(cp, self._copy(cp))
                self.backends[split.backend].graph_compute(split.graph)
            for i in {s.backend for s in plan.splits}:
                self.backends[i].synchronize()
            if run.results:
                bind_results(run.results, run.binder)
            self.copy_stats["runs"] += 1
        return gf

    def _optimize(self, gf: Graph, fuse: Optional[bool]) -> Any:
        if not isinstance(gf, Graph):
            raise MinigraphError(f"scheduler: expected a Graph, got {type(gf).__name__}")
        if self.optimizer is None:
            return _AsWritten(gf)
        return self.optimizer(gf, self, fuse)

    def get_n_splits(self) -> int:
        """ggml_backend_sched_get_n_splits: the splits (runs of nodes on one backend) of the last plan."""
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
        """ggml_backend_sched_get_buffer_size: compute-buffer bytes of `backend` in the last plan."""
        return self._last().buffer_size.get(self._index(backend), 0)

    def report(self) -> dict:
        """The last plan as data (splits, copies, bytes, every placement with its cause), with
        tensors named as `minigraph dump` prints them; what MINIGRAPH_SCHED_DEBUG prints."""
        from minigraph.schedule.report import report

        return report(self, self._last())

    def set_tensor_backend(self, node: Tensor, backend: Any) -> None:
        """ggml_backend_sched_set_tensor_backend: run `node` on `backend` (cause `user`). Only
        compute nodes: a leaf lives where its memory is (mg.backend_tensor_alloc), a view or an
        in-place write where its source's memory is."""
        i = self._index(backend)
        if not isinstance(node, Tensor):
            raise MinigraphError(f"set_tensor_backend: expected a Tensor, got {type(node).__name__}")
        if node.op is None:
            raise MinigraphError(f"set_tensor_backend: {describe(node)} is a leaf: it lives where its memory is; "
                                 f"move it with mg.backend_tensor_alloc({backend.name}, t)")
        if node.view_src is not None:
            raise MinigraphError(f"set_tensor_backend: {describe(node)} ({node.op}) is a view or an in-place "
                                 "write: it runs where its source's memory is")
        self._user[id(node)] = (node, i)
        self._plans = PlanCache()  # the next compute plans again with the assignment

    def alloc_layer_weights(self, gf: Graph) -> dict:
        """llama.cpp's load_tensors for -sm layer: every host leaf of gf whose name carries a layer
        (blk.N., output.*) moves into the memory of the device its layer maps to (tensor_split);
        leafs already in a backend buffer stay. Returns {backend name: bytes moved}."""
        if self.tensor_split is None:
            raise MinigraphError("alloc_layer_weights: the scheduler has no tensor_split "
                                 "(mg.backend_sched_new(backends, tensor_split=[...]))")
        if not isinstance(gf, Graph):
            raise MinigraphError(f"alloc_layer_weights: expected a Graph, got {type(gf).__name__}")
        lm = build_layer_map(gf.leafs + gf.nodes, self.tensor_split, self.n_layer)
        moved: dict[str, int] = {}
        for leaf in gf.leafs:
            layer = layer_of_name(leaf.root.name)
            slot = None if layer is None else lm.slot(layer)
            if slot is None or leaf.root.op is not None or tensor_buffer(leaf) is not None or not leaf.has_data():
                continue
            be = self.backends[lm.devices[slot]]
            backend_tensor_alloc(be, leaf.root)
            moved[be.name] = moved.get(be.name, 0) + leaf.root.nbytes()
        return moved

    def get_copy_stats(self) -> dict:
        """The copies made by computes so far: runs, copies, bytes, bytes between devices (neither
        end the CPU fallback), and per "SRC->DST" pair its copies, bytes and paths ("host": through
        host memory, "device": one device's memory, "peer": GPU to GPU by peer access)."""
        return copy.deepcopy(self.copy_stats)

    def reset_copy_stats(self) -> None:
        """Zero the counts get_copy_stats reports (copies made and bytes, per path and device pair)."""
        self.copy_stats = _new_stats()

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

    def _get_plan(self, gf: Graph, provenance: Optional[dict] = None) -> SchedPlan:
        if not isinstance(gf, Graph):
            raise MinigraphError(f"scheduler: expected a Graph, got {type(gf).__name__}")
        plan = self._plans.get(gf, lambda: self._make_plan(gf, provenance), valid=SchedPlan.still_resident)
        self.plan = plan
        if flags.sched_debug():
            from minigraph.schedule.report import print_log

            print_log(self, plan, gf)
        return plan

    def _make_plan(self, gf: Graph, provenance: Optional[dict] = None) -> SchedPlan:
        bind_leafs(gf)  # a cpy/set destination or a FILL input without data gets zeroed host memory
        state = _State(self, gf, SchedPlan())
        pass0_row_split(state)
        pass0_user(state, provenance or {})
        pass1_preallocated(state)
        if self.tensor_split is not None:
            state.plan.layers = build_layer_map(gf.leafs + state.nodes, self.tensor_split, self.n_layer)
            pass1b_layers(state, state.plan.layers)
        pass2_views(state)
        if multi_device(state):
            pass2b_expand(state)
        pass3_supported(state)
        pass4_splits(state)
        pass5_memory(state)
        return state.plan

    def _copy(self, cp: Copy) -> str:
        """Make one copy; returns its path: "host" (bytes through host memory), or what the
        destination's copy_tensor answered ("device", "peer")."""
        src_b, dst_b = self.backends[cp.src_backend], self.backends[cp.dst_backend]
        src_b.synchronize()
        fast = getattr(dst_b, "copy_tensor", None)
        done = fast(cp.src, cp.dst) if fast is not None else False
        if done:
            return done if isinstance(done, str) else "device"
        cp.dst.root._buf.set(cp.dst, cp.src.root._buf.get(cp.src))
        return "host"

    def _count(self, cp: Copy, path: str) -> None:
        st = self.copy_stats
        last = len(self.backends) - 1
        st["copies"] += 1
        st["bytes"] += cp.nbytes
        if last not in (cp.src_backend, cp.dst_backend):
            st["bytes_between_devices"] += cp.nbytes
        key = f"{self.backends[cp.src_backend].name}->{self.backends[cp.dst_backend].name}"
        pair = st["by_pair"].setdefault(key, {"copies": 0, "bytes": 0, "paths": {}})
        pair["copies"] += 1
        pair["bytes"] += cp.nbytes
        pair["paths"][path] = pair["paths"].get(path, 0) + cp.nbytes


def _new_stats() -> dict:
    return {"runs": 0, "copies": 0, "bytes": 0, "bytes_between_devices": 0, "by_pair": {}}


def _packed_bytes(t: Tensor) -> int:
    # a quantized tensor is whole blocks: type_size bytes per blck_size elements
    return nelements(t) // dtypes.blck_size(t.type) * dtypes.type_size(t.type)


class _AsWritten:
    """The optimize result of a scheduler without passes: the graph itself, nothing to bind."""

    def __init__(self, gf: Graph) -> None:
        self.graph, self.results, self.provenance, self.binder = gf, (), {}, None


def _provenance(plan: SchedPlan, run: Any) -> None:
    """Let the plan of an optimized graph answer get_tensor_backend/cause for the user's
    fused-away tensors: each gets the placement of the node that now computes it."""
    for t_id, cur in run.provenance.items():
        c = cur
        while id(c) not in plan.assign and c.view_src is not None and c.src:
            c = c.src[0]
        if id(c) in plan.assign and t_id not in plan.assign:
            plan.assign[t_id] = plan.assign[id(c)]
            if id(c) in plan.cause:
                plan.cause[t_id] = plan.cause[id(c)]


# -- the passes ------------------------------------------------------------------------------

class _State:
    """What the passes share: the scheduler, the graph, the plan being filled, support answers."""

    def __init__(self, sched: BackendSched, gf: Graph, plan: SchedPlan) -> None:
        self.sched, self.gf, self.plan = sched, gf, plan
        self.backends = sched.backends
        self.nodes: list[Tensor] = list(gf.nodes)   # what runs: gf's nodes, row splits expanded
        self.alias: dict[int, Tensor] = {}          # id(gather node) -> user node bound to its memory
        self.split_before: set[int] = set()         # ids of nodes that start a split of their own
        self.forced = False                         # a row split or a user assignment was applied
        self._support: dict[tuple[int, int], Any] = {}
        plan.labels = graph_labels(gf)

    def label(self, t: Tensor) -> str:
        """The name `minigraph dump` prints for t (its name, else leaf_<i> / node_<i>)."""
        return self.plan.labels.get(id(t)) or t.name or f"<{t.op or 'leaf'} outside the graph>"

    def index_of(self, backend: Any, what: str) -> int:
        for i, b in enumerate(self.backends):
            if b is backend:
                return i
        raise MinigraphError(f"{what} lives on backend {getattr(backend, 'name', backend)!r}, which is not one "
                             f"of the scheduler's backends ({', '.join(b.name for b in self.backends)})")

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
        i = residence_index(t, self.backends)
        if i is not None:
            return i
        buf = tensor_buffer(t)
        raise MinigraphError(f"tensor {describe(t)} lives in a buffer of backend "
                             f"{getattr(buf.backend, 'name', buf.backend)!r}, which is not one of the "
                             f"scheduler's backends ({', '.join(b.name for b in self.backends)})")


def _written_leaf(node: Tensor) -> Optional[Tensor]:
    """The leaf whose memory a node views or writes (its own root, or the root of a source it
    writes into: OpDef.written_srcs, GATED_DELTA_NET's state destination); None when it has none.
    The node runs where that memory is: a copy of it would take the write."""
    op = OPS.get(node.op)
    for s in op.written_srcs if op else ():
        if s < len(node.src) and node.src[s].root.op is None:
            return node.src[s].root
    return node.root if node.view_src is not None and node.root.op is None else None


def _is_view_op(node: Tensor) -> bool:
    op = OPS.get(node.op)
    return op is not None and op.is_view


def _buffer_name(st: _State, t: Tensor) -> str:
    buf = tensor_buffer(t)
    owner = st.backends[st.residence(t)].name
    kind = "host memory" if buf is None else f"{type(buf).__name__} of {owner}"
    return f"{owner} ({kind}, {t.root.nbytes()} bytes)"


def _preallocated_error(st: _State, node: Tensor, i: int, reason: str,
                        root: Optional[Tensor] = None) -> MinigraphError:
    root = node.root if root is None else root
    able = [b.name for k, b in enumerate(st.backends) if st.supports(k, node)]
    fix = (f"allocate '{st.label(root)}' on a backend that supports {node.op} "
           f"(mg.backend_tensor_alloc(backend, t) with one of: {', '.join(able)})" if able else
           f"no backend of this scheduler supports this {node.op}; add one that does")
    return MinigraphError(
        f"{node.op}: pre-allocated tensor {describe(root)} in a buffer ({_buffer_name(st, root)}) that "
        f"cannot run the operation: {st.backends[i].name} refuses node {describe(node)}: {reason}.\n"
        f"  fix: {fix}, or use the non-inplace op and write the result back with ctx.cpy.")


def pass0_user(st: _State, provenance: dict) -> None:
    """Nodes placed by sched.set_tensor_backend (through the optimizer's provenance when fused)."""
    ids = {id(n) for n in st.nodes}
    for node, i in st.sched._user.values():
        cur = node if id(node) in ids else provenance.get(id(node))
        if cur is None or id(cur) not in ids or st.where(cur) is not None:
            continue  # not in this graph (or a row split placed it)
        sup = st.supports(i, cur)
        if not sup:
            raise MinigraphError(f"{cur.op}: set_tensor_backend put {describe(node)} on {st.backends[i].name}, "
                                 f"which refuses it: {sup.reason}")
        st.assign(cur, i, "user", f"sched.set_tensor_backend(..., {st.backends[i].name})")
        st.forced = True


def pass1_preallocated(st: _State) -> None:
    """Leafs stay with their memory; writes into resident tensors and ops on weights follow it."""
    gf = st.gf
    for leaf in gf.leafs:
        st.plan.residence.append((leaf, tensor_buffer(leaf)))
        if st.where(leaf) is not None:
            continue  # a row-split weight (pass 0)
        i = st.residence(leaf)
        if tensor_buffer(leaf) is not None:
            st.assign(leaf, i, "weights/buffer", f"lives in {_buffer_name(st, leaf)}")
        else:
            st.assign(leaf, i, "input", "host memory (no backend buffer)")
    for node in st.nodes:
        if st.where(node) is not None:
            continue  # placed by pass 0 (row split, user)
        w = _written_leaf(node)
        if w is not None:
            i = st.where(w)
            if i is None:  # a view of a tensor that is not a leaf of this graph
                i = st.residence(w)
            if _is_view_op(node):
                st.assign(node, i, "view src", f"view of '{st.label(w)}' on {st.backends[i].name}")
                continue
            sup = st.supports(i, node)
            if not sup:
                raise _preallocated_error(st, node, i, sup.reason, w)
            st.assign(node, i, "pre-allocated dst", f"writes into '{st.label(w)}' in {_buffer_name(st, w)}")
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
        detail = f"reads '{st.label(w.root)}' in {_buffer_name(st, w)}"
        if tensor_buffer(w).is_host and i > 0:
            # host weights: a big enough batch is worth offloading to a higher-priority backend
            batch = node.ne[1]
            if st.sched.op_offload and batch >= st.sched.offload_min_batch:
                for k in range(i):
                    offload = getattr(st.backends[k], "offload_op", None)
                    if st.supports(k, node) and (offload is None or offload(node)):
                        tag, i = "offload", k
                        detail = (f"host weights '{st.label(w.root)}', batch ne[1]={batch} >= "
                                  f"min batch {st.sched.offload_min_batch}")
                        break
        st.assign(node, i, tag, detail)


def pass2_views(st: _State) -> None:
    """Views (and in-place writes) of computed nodes follow their source's backend."""
    for node in st.nodes:
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
    st.assign(node, i, "view src", f"memory of '{st.label(node.root)}' on {st.backends[i].name}")


def pass3_supported(st: _State) -> None:
    """The first backend that supports a node; a refused node falls back with the fewest copies."""
    for node in st.nodes:
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
    for node in st.nodes:
        if _is_view_op(node):
            continue  # no compute: its memory is its source's
        i = plan.assign[id(node)]
        if not plan.splits or plan.splits[-1].backend != i or id(node) in st.split_before:
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
                    c.name = f"{backend.name}#{st.label(s)}"
                    split.copies.append(Copy(s, c, plan.assign[id(s)], split.backend, _packed_bytes(s)))
                    plan.cause[id(c)] = ("copy", f"'{st.label(s)}' from {st.backends[plan.assign[id(s)]].name}")
                    plan.labels[id(c)] = c.name
                    mapped[id(s)] = c
                srcs.append(None if s is None else mapped.get(id(s), s))
            # the clone writes the user's node memory (a view of it), reading the mapped sources
            root = node.root
            clone = Tensor(node.ctx, node.type, node.ne, node.nb, op=node.op, src=srcs,
                           op_params=node.op_params, view_src=root,
                           view_offs=node.view_offs if node.view_src is not None else 0)
            clone.name, clone.flags = node.name, node.flags
            plan.labels[id(clone)] = st.label(node)  # a split's node prints as the user's node
            mapped[id(node)] = clone
            clones.append(clone)
        g = Graph.from_nodes(st.gf.ctx, clones)
        split.graph = g
    # outputs: nodes read by another split (directly or through a copy) or asked for by the user
    readers: dict[int, set] = {}
    for k, split in enumerate(plan.splits):
        for n in split.nodes:
            for s in n.src:
                if s is not None:
                    readers.setdefault(id(s.root), set()).add(k)
    user = {id(t.root) for t in st.gf.outputs}

    def key(n: Tensor) -> int:  # a row split's gather stands for the user's node
        return id(st.alias.get(id(n), n).root)

    for k, split in enumerate(plan.splits):
        split.graph.outputs = [c for c, n in zip(split.graph.nodes, split.nodes)
                               if key(n) in user or readers.get(key(n), set()) - {k}]


def pass5_memory(st: _State) -> None:
    """One compute buffer per backend: its nodes planned together, its copies after them."""
    plan = st.plan
    copy_srcs = [cp.src for s in plan.splits for cp in s.copies]  # read by other backends: keep
    for i in sorted({s.backend for s in plan.splits}):
        nodes = [n for s in plan.splits if s.backend == i for n in s.nodes]
        g = Graph.from_nodes(st.gf.ctx, nodes, outputs=list(st.gf.outputs) + copy_srcs)
        mem = plan_memory(g, can_inplace=can_inplace)
        copies = [cp for s in plan.splits if s.backend == i for cp in s.copies]
        offs = mem.size
        placed = [(root, mem.offsets[id(root)]) for root in mem.roots]
        for cp in copies:
            placed.append((cp.dst, offs))
            offs += -(-max(cp.nbytes, 1) // ALIGNMENT) * ALIGNMENT
        buf = alloc_buffer(st.backends[i], offs)
        plan.buffers[i] = buf
        plan.buffer_size[i] = offs
        plan.bindings += [(root, buf, o) for root, o in placed]
    # a row-split MUL_MAT's memory is its gather's (a sink there, so the planner keeps it)
    where = {id(root): (buf, o) for root, buf, o in plan.bindings}
    for g_id, node in st.alias.items():
        buf, o = where[g_id]
        plan.bindings.append((node, buf, o))
    plan.epoch = bind_storage(plan.bindings)
