"""A CPU backend that refuses chosen ops: exercises the scheduler's splits, copies and
fallbacks (and the fusion passes' supports_op checks) without a GPU."""
from __future__ import annotations

from typing import Any, Iterable

from minigraph.device.backend import Support
from minigraph.backends.cpu.backend import CpuBackend


class RestrictedCpu(CpuBackend):
    """The CPU backend, named "CPU-R", refusing every op in `refuse`."""

    name = "CPU-R"

    def __init__(self, refuse: Iterable[str] = (), n_threads: int = 1) -> None:
        super().__init__(n_threads)
        self.refuse = set(refuse)

    def supports_op(self, node) -> Support:
        if node.op in self.refuse:
            return Support(False, f"CPU-R refuses {node.op}")
        return super().supports_op(node)


def restricted_cuda(refuse: Iterable[str] = (), device: int = 0, name: str = "") -> Any:
    """A CUDA backend on `device` refusing every op in `refuse` (named `name`, default
    "CUDA<device>-R"): a second CUDA backend for scheduler tests on one GPU or the simulator."""
    from minigraph.backends.cuda.backend import CudaBackend

    class RestrictedCuda(CudaBackend):
        def supports_op(self, node) -> Support:
            if node.op in self.refuse:
                return Support(False, f"{self.name} refuses {node.op}")
            return super().supports_op(node)

    be = RestrictedCuda(device)
    be.refuse = set(refuse)
    be.name = name or f"CUDA{device}-R"
    return be
