"""What every backend offers: ggml_backend's interface (supports_op, graph_compute, synchronize)."""
from __future__ import annotations

from typing import Any

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.core.registry import OPS
from minigraph.core.tensor import Tensor


class Support:
    """supports_op's answer: truthy like ggml's bool, with the reason the scheduler logs."""

    __slots__ = ("ok", "reason")

    def __init__(self, ok: bool, reason: str) -> None:
        self.ok = bool(ok)
        self.reason = reason

    def __bool__(self) -> bool:
        return self.ok

    def __iter__(self):
        return iter((self.ok, self.reason))

    def __repr__(self) -> str:
        return f"Support({self.ok}, {self.reason!r})"


class Backend:
    """A place that runs nodes: name, supports_op(node), graph_compute(graph), synchronize().

    What a backend supports derives from its kernel table (`self.kernels`, the registry's
    KERNELS[key]) and each kernel's own `supports` rule, so the answer cannot drift."""

    name = "?"
    kernels: dict = {}
    quant_kernels: dict = {}   # the registry's QUANT_KERNELS[key]: nodes touching quantized tensors

    def supports_op(self, node: Tensor) -> Support:
        """ggml_backend_supports_op: whether this backend can compute `node` (the whole node:
        op, types, strides), with the reason; truthy like ggml's bool."""
        op = OPS.get(node.op) if node.op else None
        if op is None:
            return Support(node.op is None, "leaf" if node.op is None else f"unknown op {node.op}")
        if op.is_view:
            return Support(True, "view: no compute")
        quant = [t for t in (node, *node.src) if t is not None and dtypes.is_quantized(t.type)]
        if quant:
            qk = self.quant_kernels.get(node.op)
            if qk is None:
                names = sorted({dtypes.type_name(t.type) for t in quant})
                return Support(False, f"{node.op}: {self.name} has no kernel for quantized tensors ({', '.join(names)})")
            reason = qk.supports(node) if qk.supports else None
            return Support(reason is None, reason or "quantized kernel")
        k = self.kernels.get(node.op)
        if k is None:
            return Support(False, f"no {self.name} kernel for {node.op}")
        reason = k.supports(node) if k.supports else None
        return Support(reason is None, reason or "kernel")

    def supports_op_name(self, op: str) -> bool:
        """Whether some node of `op` can run here (views always can)."""
        return OPS[op].is_view or op in self.kernels or op in self.quant_kernels

    def graph_compute(self, graph: Graph) -> None:  # pragma: no cover - interface
        """ggml_backend_graph_compute: run every node of `graph` on this backend."""
        raise MinigraphError(f"backend {self.name} does not implement graph_compute")

    def synchronize(self) -> None:
        """ggml_backend_synchronize: wait until queued work is done (a no-op for the CPU)."""
        pass
