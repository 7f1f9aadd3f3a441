"""What every backend offers (ggml_backend's interface) and the one-call `compute`."""
from __future__ import annotations

from typing import Any, Optional, Union

from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
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

    def supports_op(self, node: Tensor) -> Support:
        from minigraph.core.registry import OPS

        op = OPS.get(node.op) if node.op else None
        if op is None:
            return Support(node.op is None, "leaf" if node.op is None else f"unknown op {node.op}")
        if op.is_view:
            return Support(True, "view: no compute")
        k = self.kernels.get(node.op)
        if k is None:
            return Support(False, f"no {self.name} kernel for {node.op}")
        reason = k.supports(node) if k.supports else None
        return Support(reason is None, reason or "kernel")

    def supports_op_name(self, op: str) -> bool:
        """Whether some node of `op` can run here (views always can)."""
        from minigraph.core.registry import OPS

        return OPS[op].is_view or op in self.kernels

    def graph_compute(self, graph: Graph) -> None:  # pragma: no cover - interface
        raise MinigraphError(f"backend {self.name} does not implement graph_compute")

    def synchronize(self) -> None:
        pass


_BACKENDS: dict[str, Any] = {}


def backend_cpu_init(n_threads: int = 0) -> Any:
    """ggml_backend_cpu_init: the Numba CPU backend (n_threads 0 = MINIGRAPH_THREADS or all cores)."""
    from minigraph.backends.cpu.backend import CpuBackend

    return CpuBackend(n_threads)


def backend_cuda_init(device: int = 0, use_graphs: bool = True) -> Any:
    """ggml_backend_cuda_init: the Numba CUDA backend on GPU `device` (needs numba-cuda;
    NUMBA_ENABLE_CUDASIM=1 runs it on the simulator). use_graphs=False or
    MINIGRAPH_CUDA_GRAPHS=0: plain kernel launches instead of CUDA graph replay."""
    from minigraph.backends.cuda.backend import CudaBackend

    return CudaBackend(device, use_graphs=use_graphs)


def _as_graph(target: Union[Graph, Tensor]) -> Graph:
    if isinstance(target, Graph):
        return target
    if isinstance(target, Tensor):
        gf = Graph(target.ctx)
        gf.build_forward_expand(target)
        return gf
    raise MinigraphError(f"compute: expected a Graph or a Tensor, got {type(target).__name__}")


def _gpu_present() -> bool:
    from minigraph.core import flags

    if flags.cuda_simulator():
        return False  # the simulator is for tests, never an automatic choice
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except ImportError:
        return False


def _auto() -> Any:
    """The scheduler over [CUDA, CPU] when a GPU is there, else the CPU backend."""
    if not _gpu_present():
        return backend_cpu_init()
    from minigraph.schedule.scheduler import backend_sched_new

    return backend_sched_new([backend_cuda_init(0), backend_cpu_init()])


def _named_backend(name: str) -> Any:
    known = {"cpu": backend_cpu_init, "cuda": backend_cuda_init, "auto": _auto}
    if name not in known:
        raise MinigraphError(f"compute: unknown backend '{name}' (known: cpu, cuda, auto)")
    if name not in _BACKENDS:
        _BACKENDS[name] = known[name]()
    return _BACKENDS[name]


def compute(target: Union[Graph, Tensor], backend: Union[str, Backend] = "cpu",
            fuse: Optional[bool] = None) -> Union[Graph, Any]:
    """Run a graph (or the graph ending in a tensor) on one backend ("cpu", "cuda", "auto" or a
    Backend); returns the tensor's numpy value for a tensor, else the graph. What runs is
    mg.optimize(gf, backend) (fusion passes); fuse=False or MINIGRAPH_FUSION=0 runs gf as written."""
    from minigraph.passes.pipeline import bind_results, optimize

    gf = _as_graph(target)
    if isinstance(backend, str):
        backend = _named_backend(backend)
    run = optimize(gf, backend, fuse)
    backend.graph_compute(run)
    bind_results(run)
    return target.numpy() if isinstance(target, Tensor) else gf
