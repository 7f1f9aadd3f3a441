"""Fake devices: CPU backends that behave like separate GPUs for the scheduler's multi-device logic.

`DEV0`, `DEV1`, ... each own their memory (a FakeDeviceBuffer: host bytes marked as device
memory, so no other backend reads it in place and the offload rule does not treat it as host
weights), so every tensor that crosses from one to another is really copied, and every byte
written into a device's memory is counted. They run their nodes one by one with the CPU kernels
(no compiled program per split, so tests stay cheap). Copies between two fake devices go "peer"
(buffer to buffer) when both allow it, else the scheduler copies through host memory, as it does
between two GPUs without peer access. They stand in for CUDA0/CUDA1 in CI, where no GPU exists.
"""
from __future__ import annotations

from typing import Any, Iterable, Union

import numpy as np

from minigraph.backends.cpu.backend import CpuPlan
from minigraph.core import dtypes
from minigraph.core.buffer import HostBuffer, aligned_zeros
from minigraph.core.graph import Graph
from minigraph.core.tensor import Tensor, is_contiguous, nelements
from minigraph.testing.restricted import RestrictedCpu


class FakeDeviceBuffer(HostBuffer):
    """A fake device's memory: host bytes only its own backend computes on. Bytes written in
    through set() (uploads, host-path copies) count on the device's `bytes_in`."""

    is_host = False

    def set(self, t: Any, data: np.ndarray) -> None:
        self.backend.bytes_in += np.asarray(data).nbytes
        super().set(t, data)

    def __repr__(self) -> str:
        return f"FakeDeviceBuffer({self.nbytes} bytes, {self.backend.name})"


class _NodeByNode(CpuPlan):
    """The CPU plan run node by node with the same kernels (no generated program to compile)."""

    @staticmethod
    def _node_variant(kern: Any, n: Tensor, build: str) -> None:
        return None


class FakeDevice(RestrictedCpu):
    """A CPU backend named "DEV<device_id>" with memory of its own; refuses the ops in `refuse`.
    peer=False: copies into it go through host memory (a GPU pair without peer access)."""

    def __init__(self, device_id: int, refuse: Iterable[str] = (), peer: bool = True, n_threads: int = 1) -> None:
        super().__init__(refuse, n_threads)
        self.device_id = int(device_id)
        self.name = f"DEV{self.device_id}"
        self.peer = bool(peer)
        self.peer_bytes = 0     # bytes copied in from another fake device, buffer to buffer
        self.bytes_in = 0       # bytes written in through host memory (uploads, host-path copies)

    def __repr__(self) -> str:
        return f"FakeDevice({self.device_id}, peer={self.peer})"

    def supports_op(self, node: Tensor) -> Any:
        sup = super().supports_op(node)
        if not sup.ok and node.op in self.refuse:
            sup.reason = f"{self.name} refuses {node.op}"
        return sup

    def plan(self, graph: Graph) -> CpuPlan:
        """Node by node: each split of a test graph would otherwise compile a program of its own."""
        return self._plans.get(graph, lambda: _NodeByNode(self, graph), valid=CpuPlan.inputs_in_place)

    def alloc_buffer(self, nbytes: int) -> FakeDeviceBuffer:
        return FakeDeviceBuffer(aligned_zeros(nbytes, f"{self.name} buffer"), self)

    def copy_tensor(self, src: Tensor, dst: Tensor) -> Union[bool, str]:
        """Device to device when src is on another fake device and both allow peer copies."""
        sb, db = src.root._buf, dst.root._buf
        if not (isinstance(sb, FakeDeviceBuffer) and isinstance(db, FakeDeviceBuffer) and db.backend is self):
            return False
        if sb.backend is self or not (self.peer and getattr(sb.backend, "peer", False)):
            return False
        if src.type != dst.type or not is_contiguous(dst):
            return False
        HostBuffer.set(db, dst, HostBuffer.get(sb, src))  # bypass the host-path counters
        self.peer_bytes += nelements(src) * dtypes.type_size(src.type)
        return "peer"


def fake_devices(n: int = 2, refuse: Iterable[str] = (), peer: bool = True) -> list:
    """n fake devices DEV0..DEV{n-1}."""
    return [FakeDevice(i, refuse, peer) for i in range(n)]

