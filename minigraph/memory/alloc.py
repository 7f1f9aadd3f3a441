"""The memory planner (ggml-alloc's job): intermediate tensors share one compute buffer.

Every node that owns memory (a compute node that is not a view or an in-place write) gets a
byte range in the buffer from its definition to its last use; ranges are reused by later nodes
once free, and an elementwise node runs in place on its first source when that source dies
there. Leafs keep their own memory, and graph outputs are never freed or overwritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from minigraph.core.graph import Graph
from minigraph.core.tensor import FLAG_OUTPUT, Tensor, extent_bytes, is_contiguous

ALIGNMENT = 64


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


@dataclass
class MemoryPlan:
    offsets: dict[int, int] = field(default_factory=dict)  # id(root) -> byte offset in the buffer
    roots: list[Tensor] = field(default_factory=list)       # compute roots in allocation order
    size: int = 0                                          # compute-buffer bytes
    inplace: dict[int, int] = field(default_factory=dict)  # id(node) -> id(src root it reuses)


class _FreeList:
    """Best-fit allocator over one growing address space (like ggml's dynamic tallocr)."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        self.top = 0

    def alloc(self, size: int) -> int:
        size = _align(max(size, 1))
        best = None
        for i, (off, sz) in enumerate(self.free):
            if sz >= size and (best is None or sz < self.free[best][1]):
                best = i
        if best is None:
            # grow, merging a free block that ends at the top
            if self.free and self.free[-1][0] + self.free[-1][1] == self.top:
                off, _ = self.free.pop()
                self.top = off + size
                return off
            off, self.top = self.top, self.top + size
            return off
        off, sz = self.free[best]
        if sz == size:
            self.free.pop(best)
        else:
            self.free[best] = (off + size, sz - size)
        return off

    def release(self, off: int, size: int) -> None:
        size = _align(max(size, 1))
        self.free.append((off, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def plan_memory(graph: Graph, nodes: Optional[Iterable[Tensor]] = None,
                can_inplace: Callable[[Tensor], bool] = lambda n: False) -> MemoryPlan:
    """Assign buffer offsets to the compute roots among `nodes` (default: all graph nodes).

    `can_inplace(node)` says whether the op of `node` may write over its src[0]."""
    order = list(graph.nodes if nodes is None else nodes)
    index = {id(n): i for i, n in enumerate(order)}
    keep = {id(t.root) for t in graph.outputs} | {id(t.root) for t in order if t.flags & FLAG_OUTPUT}

    def owns_memory(t: Tensor) -> bool:
        return t.op is not None and t.view_src is None and id(t) in index

    last_use: dict[int, int] = {}
    for i, n in enumerate(order):
        for s in [n, *n.src]:
            if s is not None:
                last_use[id(s.root)] = i
    consumers: dict[int, int] = {}
    for n in order:
        for s in n.src:
            if s is not None:
                consumers[id(s.root)] = consumers.get(id(s.root), 0) + 1
    # sinks (nothing reads them) are results someone may read: keep them like ggml does
    keep |= {id(n) for n in order if owns_memory(n) and consumers.get(id(n), 0) == 0}

    plan = MemoryPlan()
    heap = _FreeList()
    sizes: dict[int, int] = {}
    owner: dict[int, int] = {}  # id(root) -> id(root whose range it occupies)
    for i, n in enumerate(order):
        if owns_memory(n):
            size = extent_bytes(n.type, n.ne, n.nb)
            src0 = n.src[0] if n.src else None
            if (src0 is not None and can_inplace(n) and src0 is src0.root and owns_memory(src0)
                    and id(src0) not in keep and last_use.get(id(src0)) == i and src0.type == n.type
                    and extent_bytes(src0.type, src0.ne, src0.nb) == size and is_contiguous(src0)
                    and is_contiguous(n) and all(s is None or s.root is not src0 for s in n.src[1:])):
                plan.offsets[id(n)] = plan.offsets[id(src0)]
                owner[id(n)] = owner[id(src0)]
                plan.inplace[id(n)] = id(src0)
                last_use[id(src0)] = -1  # the range now belongs to n
            else:
                plan.offsets[id(n)] = heap.alloc(size)
                owner[id(n)] = id(n)
                sizes[id(n)] = size
            plan.roots.append(n)
        # free the ranges whose last reader was this node
        for s in {id(t.root): t.root for t in [n, *n.src] if t is not None}.values():
            if id(s) in plan.offsets and last_use.get(id(s)) == i and id(s) not in keep and owner.get(id(s)) in sizes:
                heap.release(plan.offsets[id(s)], sizes.pop(owner[id(s)]))
    plan.size = heap.top
    return plan
