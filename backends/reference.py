"""The living definition: run a graph with every op's numpy float64 reference.

Memory is emulated per storage root as a flat float64 array (element units), so views,
permutes, in-place writes and odd offsets behave exactly as they do on a backend.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError, describe
from minigraph.core.graph import Graph
from minigraph.core.registry import OPS
from minigraph.core.tensor import Tensor, extent_bytes, is_contiguous
from minigraph.memory.scaffold import leafs_needing_data


class ReferenceResult:
    """Values of every tensor of a graph after a reference run: `res[t]` is t's numpy array."""

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}

    def flat(self, t: Tensor) -> np.ndarray:
        root = t.root
        if id(root) not in self.mem:
            raise MinigraphError(f"reference: no value for {describe(root)}")
        return self.mem[id(root)]

    def view4(self, t: Tensor) -> np.ndarray:
        """(ne3, ne2, ne1, ne0) float64 view of t inside its root's memory."""
        flat = self.flat(t)
        ts, blck = dtypes.type_size(t.type), dtypes.blck_size(t.type)
        offs = t.view_offs // ts * blck if t.view_src is not None else 0
        # a quantized root is held as its dequantized elements, block after block: a block's
        # elements sit next to each other, so nb0 (the block's bytes) steps one element
        steps = [s // ts * blck for s in t.nb]
        if blck > 1:
            steps[0] = 1
        strides = tuple(8 * s for s in reversed(steps))
        return np.lib.stride_tricks.as_strided(flat[offs:], shape=tuple(reversed(t.ne)), strides=strides)

    def __getitem__(self, t: Tensor) -> np.ndarray:
        # ggml_n_dims ignores dims of size 0, but an empty tensor must keep them to reshape
        n = max([t.n_dims] + [i + 1 for i, x in enumerate(t.ne) if x == 0])
        return np.array(self.view4(t)).reshape(tuple(reversed(t.ne[:n])))


def _root_memory(root: Tensor) -> np.ndarray:
    ts, blck = dtypes.type_size(root.type), dtypes.blck_size(root.type)
    n_elem = -(-extent_bytes(root.type, root.ne, root.nb) // ts) * blck
    buf = root._buf
    if buf is None:
        return np.zeros(n_elem)
    if blck > 1:  # quantized: every block of the root's extent, dequantized in order
        raw = buf.data[root._offs:root._offs + n_elem // blck * ts] if buf.is_host else root.numpy(copy=False)
        return dtypes.to_float(np.asarray(raw).reshape(-1), root.type).astype(np.float64)
    if buf.is_host:
        raw = buf.data[root._offs:].view(dtypes.storage_dtype(root.type))[:n_elem]
        return dtypes.to_float(raw, root.type).astype(np.float64)
    # device memory: read through its buffer; a root is laid out contiguous
    if not is_contiguous(root):
        raise MinigraphError(f"reference: {describe(root)} lives on a device with a padded layout")
    return np.asarray(root.numpy(), np.float64).reshape(-1)[:n_elem]


def reference_compute(graph: Union[Graph, Tensor]) -> ReferenceResult:
    """Evaluate every node of `graph` (or of the graph ending in a tensor) in float64."""
    if isinstance(graph, Tensor):
        gf = Graph()
        gf.build_forward_expand(graph)
        graph = gf
    res = ReferenceResult()
    needed = {id(t) for t in leafs_needing_data(graph)}
    for leaf in graph.leafs:
        if leaf.root._buf is None and id(leaf) in needed:
            raise MinigraphError(f"reference: graph input {describe(leaf)} has no data (call set_data)")
        res.mem[id(leaf)] = _root_memory(leaf)
    for node in graph.nodes:
        op = OPS[node.op]
        root = node.root
        if id(root) not in res.mem:
            res.mem[id(root)] = _root_memory(root)
        if op.is_view:
            continue
        srcs = [None if s is None else res.view4(s) for s in node.src]
        srcs = [None if s is None else (s.astype(np.int64) if t.type in dtypes.INT_TYPES else s)
                for s, t in zip(srcs, node.src)]
        out = op.reference(node, *srcs, **{k: node.op_params[k] for k in op.params})
        res.view4(node)[...] = np.broadcast_to(out, tuple(reversed(node.ne)))
    return res
