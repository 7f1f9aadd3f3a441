"""mg.optimize: the graph that will actually run (fusion passes applied). The input graph is unchanged.

Pipeline (each pass: Graph in, rewrites out, a new Graph built from them):
  1. delta_net_chunked         llama.cpp's chunked delta net (GDA/KDA)  -> GATED_DELTA_NET + 2 views
  2. delta_net_autoregressive  llama.cpp's one-token delta net (GDA)    -> GATED_DELTA_NET + 2 views
  3. elementwise               chains of elementwise ops over one shape -> FUSED_ELEMENTWISE
A rewrite happens only where the backend the region would run on (the first of `backend`, in
priority order, that supports the region's anchor node) `supports_op` the fused node. Every fused
node carries op_params["fused_from"] (the op names it replaced) and op_params["fused_pattern"].

Results: the rewritten graph is made of new tensors where anything changed, so the user's output
tensors are not computed by it. After a run, `bind_results(run)` makes each user output show its
value: when the new tensor has the same memory layout, the user's storage root is pointed at the
new tensor's memory (no copy; what ggml's allocator would do); otherwise (e.g. the delta net's
attention output, a permuted view of a padded chunk buffer) the values are copied into a private
buffer of the user's tensor. `mg.compute` and `sched.graph_compute` do both; fuse=False or
MINIGRAPH_FUSION=0 runs the graph as written. MINIGRAPH_FUSION_DEBUG=1 prints the pass log.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from minigraph.core import flags
from minigraph.core.context import Context
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.tensor import FLAG_OUTPUT, Tensor, bind_storage, contiguous_strides, extent_bytes

COUNTERS: Counter = Counter()  # "<pass>.fused", "<pass>.near_miss", "<pass>.refused" (Inductor's counters)


class RewriteRefused(MinigraphError):
    """A rewrite that cannot be spliced in (a consumer addresses the replaced tensor's raw memory)."""


@dataclass
class Rewrite:
    """One match turned into new nodes: `replace` maps id(old tensor) -> new tensor (consumers of
    old read new), `absorbed` lists the old nodes the fused node computes (for provenance)."""

    name: str
    fused: Tensor
    replace: dict = field(default_factory=dict)
    keep: list = field(default_factory=list)       # the old tensors (keeps ids valid)
    absorbed: list = field(default_factory=list)


class Target:
    """Where regions run: backends in priority order (a Backend, a list, or a scheduler)."""

    def __init__(self, backend: Any) -> None:
        b = getattr(backend, "backends", backend)
        self.backends = list(b) if isinstance(b, (list, tuple)) else [b]
        self._cache: dict[tuple, Any] = {}

    def supports(self, backend: Any, node: Tensor) -> Any:
        key = (id(backend), id(node))
        if key not in self._cache:
            self._cache[key] = backend.supports_op(node)
        return self._cache[key]

    def placement(self, node: Tensor) -> Optional[Any]:
        """The first backend that supports `node` (where the scheduler would put it)."""
        for b in self.backends:
            if self.supports(b, node):
                return b
        return None


class PassLog:
    """What each pass matched, refused and nearly matched (MINIGRAPH_FUSION_DEBUG=1 prints it)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str]] = []

    def add(self, pass_name: str, status: str, msg: Any) -> None:
        COUNTERS[f"{pass_name}.{status}"] += 1
        self.entries.append((pass_name, status, str(msg)))
        if flags.fusion_debug():
            print(f"[fusion] {pass_name}: {status}: {msg}")

    def __str__(self) -> str:
        return "\n".join(f"{p}: {s}: {m}" for p, s, m in self.entries)


def _pipeline() -> list:
    from minigraph.passes import delta_net, elementwise

    return [delta_net.chunked_pass, delta_net.autoregressive_pass, elementwise.elementwise_pass]


def _clone(n: Tensor, srcs: list, ctx: Context) -> Tensor:
    """n with new sources; a view keeps its geometry relative to its (new) parent."""
    if n.view_src is None:
        t = Tensor(ctx, n.type, n.ne, n.nb, op=n.op, src=srcs, op_params=n.op_params)
    else:
        p = next(i for i, s in enumerate(n.src) if s is not None and s.root is n.root)
        old, new = n.src[p], srcs[p]
        rel = n.view_offs - (old.view_offs if old.view_src is not None else 0)
        nb = n.nb
        if new is not old and (new.nb != old.nb or new.ne != old.ne):
            if n.op in ("PERMUTE", "TRANSPOSE"):
                axes = [n.op_params[f"axis{i}"] for i in range(4)] if n.op == "PERMUTE" else [1, 0, 2, 3]
                nbl = [0] * 4
                for i, ax in enumerate(axes):
                    nbl[ax] = new.nb[i]
                nb = tuple(nbl)
            elif n.op == "RESHAPE" and new.nb == contiguous_strides(new.type, new.ne):
                nb = contiguous_strides(n.type, n.ne)
            else:
                raise RewriteRefused(f"{n.op} {describe(n)} addresses the raw memory of a rewritten tensor")
        t = Tensor(ctx, n.type, n.ne, nb, op=n.op, src=srcs, op_params=n.op_params, view_src=new, view_offs=rel)
    t.name, t.flags = n.name, n.flags
    ctx.tensors.append(t)
    return t


def rebuild(gf: Graph, outputs: Sequence[Tensor], rewrites: Sequence[Rewrite], ctx: Context) -> tuple[Graph, dict]:
    """A new graph computing `outputs` with the rewrites spliced in; returns it and id(old) -> new
    for every replaced or re-created tensor. Unchanged tensors are shared, not copied."""
    replace: dict[int, Tensor] = {}
    for rw in rewrites:
        replace.update(rw.replace)
    old = {id(t) for t in gf.nodes} | {id(t) for t in gf.leafs}
    new_of: dict[int, Tensor] = {}
    fixed: dict[int, Tensor] = {}

    def fix(t: Tensor) -> Tensor:
        """A rewrite's new tensor, re-pointed at the rebuilt versions of the old tensors it reads
        (a fused region may read another region's output)."""
        if id(t) in old:
            return new_of.get(id(t), t)
        if id(t) not in fixed:
            srcs = [None if s is None else fix(s) for s in t.src]
            fixed[id(t)] = t if all(a is b for a, b in zip(srcs, t.src)) else _clone(t, srcs, ctx)
        return fixed[id(t)]

    for n in gf.nodes:
        if id(n) in replace:
            new_of[id(n)] = fix(replace[id(n)])
            continue
        srcs = [None if s is None else new_of.get(id(s), s) for s in n.src]
        if any(a is not b for a, b in zip(srcs, n.src)):
            new_of[id(n)] = _clone(n, srcs, ctx)
    g = Graph(ctx)
    for o in outputs:
        g.build_forward_expand(new_of.get(id(o), o))
    return g, new_of


def _results(gf: Graph) -> list[Tensor]:
    outs = list(gf.outputs) or [n for n in gf.nodes[-1:]]
    seen = {id(t) for t in outs}
    return outs + [n for n in gf.nodes if n.flags & FLAG_OUTPUT and id(n) not in seen]


def optimize(gf: Graph, backend: Any = None, fuse: Optional[bool] = None) -> Graph:
    """The graph that will run `gf` on `backend` (a Backend, a list in priority order, a scheduler,
    or "cpu"; default the CPU). Returns gf itself when nothing is rewritten (or fusion is off);
    otherwise a new Graph with `.fusion_log`, `.results` [(user tensor, tensor holding its value)]
    and `.provenance` {id(user node): tensor that now computes it}. Cached on gf."""
    if not isinstance(gf, Graph):
        raise MinigraphError(f"optimize: expected a Graph, got {type(gf).__name__}")
    if not (flags.fusion_enabled() if fuse is None else fuse):
        return gf
    if backend is None or isinstance(backend, str):
        from minigraph.device.backend import _BACKENDS, backend_cpu_init

        if "cpu" not in _BACKENDS:
            _BACKENDS["cpu"] = backend_cpu_init()
        backend = _BACKENDS["cpu"]
    key = (getattr(gf, "_version", 0), len(gf.nodes), id(backend))
    cached = getattr(gf, "_optimized", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    target, log, ctx = Target(backend), PassLog(), Context()
    results = [(u, u) for u in _results(gf)]
    prov: dict[int, Tensor] = {}
    graph = gf
    for p in _pipeline():
        keep = {id(c) for _, c in results}
        rewrites = p(graph, target, log, keep)
        if not rewrites:
            continue
        try:
            graph, new_of = rebuild(graph, [c for _, c in results], rewrites, ctx)
        except RewriteRefused as e:
            log.add(p.__name__.replace("_pass", ""), "refused", e)
            continue
        absorbed = {id(a): rw.fused for rw in rewrites for a in rw.absorbed}
        results = [(u, new_of.get(id(c), c)) for u, c in results]
        for n in gf.nodes:
            cur = prov.get(id(n), n)
            cur = new_of.get(id(cur)) or absorbed.get(id(cur)) or cur
            if cur is not n:
                prov[id(n)] = cur
    if graph is not gf:
        graph.fusion_log = log  # type: ignore[attr-defined]
        graph.results = [(u, c) for u, c in results if c is not u]  # type: ignore[attr-defined]
        graph.provenance = prov  # type: ignore[attr-defined]
        graph._bound = {}  # type: ignore[attr-defined]
    gf._optimized = (key, graph)  # type: ignore[attr-defined]
    gf.fusion_log = log  # type: ignore[attr-defined]
    return graph


def _start(t: Tensor) -> int:
    return t.root._offs + (t.view_offs if t.view_src is not None else 0)


def bind_results(run: Graph) -> None:
    """After `run` computed: make each user output tensor show its value (see the module doc)."""
    from minigraph.schedule.scheduler import backend_tensor_get, tensor_buffer

    copies = run.__dict__.setdefault("_copies", {})
    for u, r in getattr(run, "results", ()):
        root = u.root
        c = copies.get(id(u))  # an alias or host copy made before: same memory on both sides?
        if c is not None and c[0] is root._buf and c[1] is r.root._buf and c[2] == (root._offs, r.root._offs):
            if c[3] is not None:
                np.copyto(c[3], c[4])
            continue
        rel = u.view_offs if u.view_src is not None else 0
        if u.nb == r.nb and root.op is not None and _start(r) >= rel:
            buf, offs = r.root._buf, _start(r) - rel
            if root._buf is not buf or root._offs != offs:
                bind_storage([(root, buf, offs)])  # alias: the user's root over the result's memory
            copies[id(u)] = (root._buf, r.root._buf, (root._offs, r.root._offs), None, None)
            continue
        host = tensor_buffer(r) is None or isinstance(tensor_buffer(r), np.ndarray)
        data = r._raw_view() if host else backend_tensor_get(r)
        if root.op is None and root._buf is None:
            root._alloc_root()
        if root.op is not None and (root._buf is None or run._bound.get(id(root)) is not root._buf):  # type: ignore[attr-defined]
            size = extent_bytes(root.type, root.ne, root.nb)
            priv = np.zeros(-(-max(size, 1) // 64) * 64, np.uint8)
            bind_storage([(root, priv, 0)])
            run._bound[id(root)] = priv  # type: ignore[attr-defined]
        if tensor_buffer(u) is not None and not isinstance(tensor_buffer(u), np.ndarray):
            from minigraph.schedule.scheduler import backend_tensor_set

            backend_tensor_set(u, data)
        else:
            dst = u._raw_view()
            dst[...] = np.asarray(data).reshape(dst.shape)
            if host and data.shape == dst.shape:  # both views stay valid while neither root is re-bound
                copies[id(u)] = (root._buf, r.root._buf, (root._offs, r.root._offs), dst, data)


def sched_provenance(plan: Any, run: Graph) -> None:
    """Let a scheduler plan of `run` answer get_tensor_backend/cause for the user's fused-away
    tensors: each gets the placement of the node that now computes it."""
    for t_id, cur in getattr(run, "provenance", {}).items():
        c = cur
        while id(c) not in plan.assign and c.view_src is not None and c.src:
            c = c.src[0]
        if id(c) in plan.assign and t_id not in plan.assign:
            plan.assign[t_id] = plan.assign[id(c)]
            if id(c) in plan.cause:
                plan.cause[t_id] = plan.cause[id(c)]


def view_segment(ctx: Context, fused: Tensor, ne: Sequence[int], offset: int) -> Tensor:
    """A contiguous view of `ne` elements at byte `offset` of a fused node's packed output."""
    nb = contiguous_strides(fused.type, ne)
    return ctx.view_4d(fused, *ne, nb[1], nb[2], nb[3], offset)
