"""A CPU backend that refuses chosen ops: exercises the scheduler's splits, copies and
fallbacks (and the fusion passes' supports_op checks) without a GPU."""
from __future__ import annotations

from typing import Iterable

from minigraph.backend import Support
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
