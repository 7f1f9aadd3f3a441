"""The recurrent-state copy into GATED_DELTA_NET: cpy(final state of the op, cache slot) -> the op
writes its final state into the slot itself.

Why: llama.cpp writes a delta-net layer's new state back with ggml_cpy(view of the op's snapshot
tail, view of the recurrent cache), once a layer and token. Unfused, a decode step moves the state
four times (the op reads it and writes the tail, the copy reads the tail and writes the cache);
fused, twice. ggml-cuda does this inside its backend (llama.cpp #23940), ik_llama for CPU and CUDA
(#2251); here it is a rewrite every backend sees: the GATED_DELTA_NET gets the slot as its state
destination (ops/gated_delta_net.attach_state_dst), and the CPY stays in the graph, marked
written_by (registry.WRITTEN_BY), so the graph keeps its shape, the user's copy still names the
written memory, and backends skip it. The reference engine runs the CPY as written: same values.

Legal when (each a logged near miss otherwise):
  - the CPY reads exactly the op's snapshot slot 0 (contiguous f32, behind any relabels) and K == 1;
  - the destination is a contiguous f32 view of a leaf (the cache), not a computed tensor, and
    overlaps none of q, k, v, g, beta; it may be the input state's own memory exactly (an in-place
    update), no other overlap with it;
  - nothing else reads the snapshot slot (no other compute node, no graph output);
  - no node between the op and the CPY (graph order) reads or writes the destination's bytes, and
    no other node writes them;
  - the backend that runs the op supports the new node and, when the target has several
    backends, is the one whose memory holds the destination (what the scheduler requires too).
"""
from __future__ import annotations

from typing import Optional, Union

from minigraph.core.buffer import extent_bytes
from minigraph.core.context import Context
from minigraph.core.dtypes import TYPE_F32
from minigraph.core.graph import Graph
from minigraph.core.registry import OPS, written_by
from minigraph.core.tensor import Tensor, is_contiguous, nelements
from minigraph.device.buffers import residence_index
from minigraph.ops.gated_delta_net import (GATED_DELTA_NET, attach_state_dst, gdn_dims, mark_state_written,
                                          snapshot_offset)
from minigraph.passes.pipeline import PassLog, Rewrite, Target
from minigraph.passes.patterns import Miss

PASS = "gdn_state_write"


def _span(t: Tensor) -> tuple[int, int, int]:
    """(id of the storage root, first byte, end byte) of t's memory."""
    lo = t.view_offs if t.view_src is not None else 0
    return id(t.root), lo, lo + extent_bytes(t.type, t.ne, t.nb)


def _overlap(a: Tensor, b: Tensor) -> bool:
    ra, la, ha = _span(a)
    rb, lb, hb = _span(b)
    return ra == rb and la < hb and lb < ha


def _fuse(graph: Graph, pos: dict, c: Tensor, target: Target, keep: set,
          ctx: Context) -> Union[None, Miss, Rewrite]:
    a, b = c.src[0], c.src[1]
    gdn = a.root
    if gdn is a or gdn.op != "GATED_DELTA_NET" or len(gdn.src) != 6:
        return None
    S, H, T, N, K = gdn_dims(gdn)
    tail = snapshot_offset(gdn)
    if K != 1:
        return Miss(c, f"copies a snapshot of a GATED_DELTA_NET with K={K} (the fused write takes K == 1)")
    if not (a.type == TYPE_F32 and is_contiguous(a) and a.view_offs == tail and nelements(a) == S * S * H * N):
        return Miss(c, "copies part of a GATED_DELTA_NET result that is not its whole final state (snapshot slot 0)")
    if b.type != TYPE_F32 or not is_contiguous(b):
        return Miss(c, "the state's destination is not contiguous f32")
    if b.root.op is not None:
        return Miss(c, "the state's destination is a computed tensor, not a cache leaf")
    for name, s in zip(("q", "k", "v", "g", "beta"), gdn.src[:5]):
        if _overlap(s, b):
            return Miss(c, f"the state's destination overlaps the op's {name}")
    st = gdn.src[5]
    if _overlap(st, b) and not (st.root is b.root and _span(st) == _span(b) and is_contiguous(st)):
        return Miss(c, "the state's destination overlaps the input state without being exactly it")
    state_bytes = (id(gdn), tail, tail + 4 * S * S * H * N)
    lo, hi = pos[id(gdn)], pos[id(c)]
    for n in graph.nodes:
        if n is c or n is gdn or OPS[n.op].is_view:
            continue
        for s in n.src:
            if s is None:
                continue
            r, sl, sh = _span(s)
            if r == state_bytes[0] and sl < state_bytes[2] and state_bytes[1] < sh:
                return Miss(c, f"{n.op} '{n.name}' reads the GATED_DELTA_NET's final state too")
            if lo < pos[id(n)] < hi and _overlap(s, b):
                return Miss(c, f"{n.op} '{n.name}' reads the state's destination between the op and the copy")
        if n.view_src is not None and _overlap(n, b):
            return Miss(c, f"{n.op} '{n.name}' writes the state's destination too")
    for t in graph.nodes:
        if id(t) in keep and t.root is gdn:
            r, sl, sh = _span(t)
            if sl < state_bytes[2] and state_bytes[1] < sh:
                return Miss(c, f"the graph returns '{t.name or t.op}', which holds the GATED_DELTA_NET's final state")
    rs = 4 * S
    dst = ctx.view_4d(b.root, S, S, H, N, rs, rs * S, rs * S * H, b.view_offs)
    fused = ctx.new_node(GATED_DELTA_NET, gdn.type, gdn.ne, list(gdn.src), params=dict(gdn.op_params))
    attach_state_dst(fused, dst)
    backend = target.placement(gdn)
    ok = target.supports(backend, fused) if backend is not None else None
    if not ok:
        why = ok.reason if ok is not None else "no backend runs the node"
        return Miss(gdn, f"{getattr(backend, 'name', '?')} does not support GATED_DELTA_NET with a state destination: {why}")
    home = residence_index(b.root, target.backends)
    if len(target.backends) > 1 and (home is None or target.backends[home] is not backend):
        where = "a backend the target lacks" if home is None else target.backends[home].name
        return Miss(c, f"the state's destination lives on {where}, the GATED_DELTA_NET runs on {backend.name}")
    fused.name = gdn.name
    fused.op_params["fused_from"] = list(gdn.op_params.get("fused_from", ["GATED_DELTA_NET"])) + ["CPY"]
    fused.op_params["fused_pattern"] = "+".join(p for p in (gdn.op_params.get("fused_pattern"), PASS) if p)
    fused.op_params["fused_names"] = list(gdn.op_params.get("fused_names", [])) + ([c.name] if c.name else [])
    # the copy again, from the new node's final state, marked by the one function that defines the mark
    done = ctx.cpy(ctx.view_4d(fused, *a.ne, *a.nb[1:], a.view_offs), b)
    mark_state_written(done)
    done.name, done.flags = c.name, c.flags
    return Rewrite(PASS, fused, replace={id(gdn): fused, id(c): done}, keep=[gdn, c], absorbed=[gdn])


def gdn_state_write_pass(graph: Graph, target: Target, log: PassLog, keep: set) -> list:
    ctx = Context()
    pos = {id(n): i for i, n in enumerate(graph.nodes)}
    rewrites, taken = [], set()
    for c in graph.nodes:
        if c.op != "CPY" or written_by(c):
            continue
        out: Optional[Union[Miss, Rewrite]] = _fuse(graph, pos, c, target, keep, ctx)
        if out is None:
            continue
        if isinstance(out, Miss):
            log.add(PASS, "near_miss", out)
            continue
        if id(c.src[0].root) in taken:
            log.add(PASS, "near_miss", Miss(c, "a second copy of the same final state"))
            continue
        taken.add(id(c.src[0].root))
        rewrites.append(out)
        S, H, T, N, _ = gdn_dims(out.fused)
        inplace = " in place" if _span(out.fused.src[5]) == _span(out.fused.src[6]) else ""
        log.add(PASS, "fused", f"CPY of the final state -> GATED_DELTA_NET writes it{inplace} "
                               f"({4 * S * S * H * N} bytes, T={T})")
    return rewrites
