"""The one binder: which buffer each storage root points at, and how results reach the user.

Planners (a backend's plan, the scheduler) bind the roots they planned with `bind_storage`; the
binding epoch tells a plan whose roots someone else re-pointed since (another plan of the same
graph) to re-bind before it runs. `graph_lock(gf)` serialises computes of one graph: two threads
computing the same graph would otherwise share its compute buffers.

After an optimized graph ran, `bind_results` makes each user output show its value: when the
tensor that computed it has the same layout, the user's root is pointed at that memory (an alias,
what ggml's allocator would do); otherwise the values are copied into a private buffer of the
user's tensor (e.g. a fused delta net's output, a permuted view of a padded chunk buffer).
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterable, Sequence

import numpy as np

from minigraph.core.buffer import HostBuffer, extent_bytes, tensor_start
from minigraph.core.tensor import Tensor

_epoch = [0]
_locks: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def bind_storage(bindings: Iterable[tuple[Tensor, Any, int]]) -> int:
    """Point storage roots at (buffer, byte offset) pairs; returns the new binding epoch."""
    for root, buf, offs in bindings:
        root._buf, root._offs = buf, offs
    _epoch[0] += 1
    return _epoch[0]


def binding_epoch() -> int:
    return _epoch[0]


def graph_lock(graph: Any) -> "threading.RLock":
    """The lock computes of `graph` hold (re-entrant: a scheduler computes its splits inside it)."""
    lock = _locks.get(graph)             # the guard only for making one (the read is atomic)
    if lock is None:
        with _locks_guard:
            lock = _locks.get(graph)
            if lock is None:
                lock = _locks[graph] = threading.RLock()
    return lock


class ResultBinder:
    """What bind_results remembers between computes of one optimized graph: per user tensor, the
    buffers both sides had (and the two views of a host copy), so a repeat compute only checks
    identities; and the private buffers it gave user roots."""

    def __init__(self) -> None:
        self.copies: dict[int, tuple] = {}
        self.private: dict[int, Any] = {}


def bind_results(results: Sequence[tuple[Tensor, Tensor]], binder: ResultBinder) -> None:
    """After a compute: make each user tensor u of (u, r) show the value r holds."""
    for u, r in results:
        root, rroot = u.root, r.root
        c = binder.copies.get(id(u))
        if c is not None and c[0] is root._buf and c[1] is rroot._buf and c[2] == (root._offs, rroot._offs):
            if c[3] is not None:
                np.copyto(c[3], c[4])
            continue
        rel = u.view_offs
        if u.nb == r.nb and root.op is not None and tensor_start(r) >= rel:
            buf, offs = rroot._buf, tensor_start(r) - rel
            if root._buf is not buf or root._offs != offs:
                bind_storage([(root, buf, offs)])  # alias: the user's root over the result's memory
            binder.copies[id(u)] = (root._buf, rroot._buf, (root._offs, rroot._offs), None, None)
            continue
        if root.op is None and root._buf is None:
            root.alloc_host()
        if root.op is not None and (root._buf is None or binder.private.get(id(root)) is not root._buf):
            priv = HostBuffer.alloc(extent_bytes(root.type, root.ne, root.nb), what=f"result '{root.name}'")
            bind_storage([(root, priv, 0)])
            binder.private[id(root)] = priv
        ubuf, rbuf = root._buf, rroot._buf
        if not (ubuf.is_host and rbuf.is_host):
            ubuf.set(u, rbuf.get(r))
            continue
        dst, data = ubuf.view(u), rbuf.view(r)
        dst[...] = data.reshape(dst.shape)
        if data.shape == dst.shape:  # both views stay valid while neither root is re-bound
            binder.copies[id(u)] = (ubuf, rbuf, (root._offs, rroot._offs), dst, data)
