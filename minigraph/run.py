"""The run layer: the one place that chains the stages, optimize -> schedule -> plan -> compute ->
bind results, and the entry points that pick backends by name.

    run = DEFAULT_PIPELINE.optimize(gf, backend)   # passes (fusion): an Optimized result
    backend.graph_compute(run.graph)               # a backend plans (memory, kernels) and runs
    bind_results(run.results, run.binder)          # the user's tensors show their values

A scheduler does the same for each of its splits (minigraph.schedule.scheduler.graph_compute).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from minigraph.core import flags
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph
from minigraph.core.tensor import Tensor
from minigraph.device.backend import Backend
from minigraph.memory.binding import bind_results, graph_lock
from minigraph.passes import DEFAULT_PIPELINE, Optimized
from minigraph.schedule.scheduler import BackendSched

_BACKENDS: dict[str, Any] = {}
BACKEND_NAMES = ("cpu", "cuda", "auto")


def backend_cpu_init(n_threads: int = 0) -> Any:
    """ggml_backend_cpu_init: the Numba CPU backend (n_threads 0 = MINIGRAPH_THREADS, load-aware by default).

    n_threads: the threads parallel kernels use. N >= 1: exactly N on every compute, as ggml's
    n_threads (cpu.set_n_threads(N) the same later). 0 (the default): what MINIGRAPH_THREADS says:
      MINIGRAPH_THREADS=N      exactly N threads
      unset, "auto" or 0       load-aware: at most the cores this process may run on
                               (os.sched_getaffinity), and on each compute only those that other
                               processes left free over the last ~0.25 s (/proc/stat minus this
                               process's own CPU time; at least 1). A parallel node waits for every
                               thread, so a thread sharing a busy core costs a scheduler time slice
                               per node: with one of two cores taken, load-aware runs one thread at
                               serial speed where two fixed threads ran ~20x slower
                               (benchmarks/contention.py).
    `cpu.last_threads` tells what the latest compute ran with."""
    from minigraph.backends.cpu.backend import CpuBackend

    return CpuBackend(n_threads)


def backend_cuda_init(device: int = 0, use_graphs: bool = True) -> Any:
    """ggml_backend_cuda_init: the Numba CUDA backend on GPU `device` (needs numba-cuda, the
    `cuda` extra; NUMBA_ENABLE_CUDASIM=1 runs it on the simulator). use_graphs=False or
    MINIGRAPH_CUDA_GRAPHS=0: plain kernel launches instead of CUDA graph replay."""
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise MinigraphError(f"backend_cuda_init: device must be a GPU index >= 0, got {device!r}")
    try:
        from minigraph.backends.cuda.backend import CudaBackend

        return CudaBackend(device, use_graphs=use_graphs)
    except MinigraphError:
        raise
    except Exception as e:  # ImportError, the driver's CudaSupportError, a bad device index
        why = " ".join(str(e).split())  # driver errors span several lines
        raise MinigraphError(f"backend_cuda_init({device}): CUDA is unavailable: {type(e).__name__}: {why}\n"
                             "  hint: install the extra with `pip install -e \".[cuda]\"` on a machine with an "
                             "NVIDIA GPU and driver, or set NUMBA_ENABLE_CUDASIM=1 to run the simulator") from None


def backend_sched_new(backends: Sequence[Any], op_offload: Optional[bool] = None,
                      offload_min_batch: Optional[int] = None, tensor_split: Optional[Sequence[float]] = None,
                      n_layer: Optional[int] = None, **_ggml_args: Any) -> BackendSched:
    """ggml_backend_sched_new(backends, bufts, n_backends, graph_size, parallel, op_offload).

    The scheduler runs the default pass pipeline (fusion) before it plans. op_offload=False (or
    MINIGRAPH_NO_OFFLOAD=1) keeps ops on host weights on the host; offload_min_batch
    (MINIGRAPH_OFFLOAD_MIN_BATCH, default 32) is the smallest node.ne[1] offloaded.
    tensor_split (llama.cpp's --tensor-split, one fraction per device: every backend but the
    last) splits the graph's layers over the devices as llama.cpp's -sm layer; n_layer is the
    model's layer count when the graph holds only some layers (docs/multi_device.md)."""
    return BackendSched(backends, op_offload, offload_min_batch, optimizer=DEFAULT_PIPELINE,
                        tensor_split=tensor_split, n_layer=n_layer)


def _gpu_present() -> bool:
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
    return backend_sched_new([backend_cuda_init(0), backend_cpu_init()])


def resolve_backend(backend: Any, where: str) -> Any:
    """A backend (or scheduler) object, or one of BACKEND_NAMES made once per process."""
    if isinstance(backend, str):
        known = {"cpu": backend_cpu_init, "cuda": backend_cuda_init, "auto": _auto}
        if backend not in known:
            raise MinigraphError(f"{where}: unknown backend {backend!r} (known: {', '.join(BACKEND_NAMES)}, "
                                 "or a backend / scheduler object)")
        if backend not in _BACKENDS:
            _BACKENDS[backend] = known[backend]()
        return _BACKENDS[backend]
    if isinstance(backend, (list, tuple)) and backend and all(isinstance(b, Backend) for b in backend):
        return list(backend)
    if isinstance(backend, (Backend, BackendSched)):
        return backend
    raise MinigraphError(f"{where}: expected a backend name ({', '.join(BACKEND_NAMES)}), a Backend or a "
                         f"scheduler, got {type(backend).__name__} {backend!r}")


def _as_graph(target: Union[Graph, Tensor], where: str) -> Graph:
    if isinstance(target, Graph):
        return target
    if isinstance(target, Tensor):
        gf = Graph(target.ctx)
        gf.build_forward_expand(target)
        return gf
    raise MinigraphError(f"{where}: expected a Graph or a Tensor, got {type(target).__name__}")


def optimize(gf: Graph, backend: Any = "cpu", fuse: Optional[bool] = None) -> Optimized:
    """mg.optimize: the Optimized result (`.graph` that will run, `.results`, `.provenance`,
    `.log`) of gf on `backend` (a name, a Backend, a list in priority order, or a scheduler).
    fuse=False or MINIGRAPH_FUSION=0: gf as written. The input graph is never changed."""
    if not isinstance(gf, Graph):
        raise MinigraphError(f"optimize: expected a Graph, got {type(gf).__name__}")
    return DEFAULT_PIPELINE.optimize(gf, resolve_backend(backend, "optimize"), fuse)


def compute(target: Union[Graph, Tensor], backend: Any = "cpu", fuse: Optional[bool] = None) -> Any:
    """Run a graph (or the graph ending in a tensor) on a backend ("cpu", "cuda", "auto", a Backend
    or a scheduler); returns the tensor's numpy value for a tensor, else the graph. What runs is
    the optimized graph (fusion passes); fuse=False or MINIGRAPH_FUSION=0 runs it as written."""
    gf = _as_graph(target, "compute")
    b = resolve_backend(backend, "compute")
    if isinstance(b, list):
        b = backend_sched_new(b)
    if isinstance(b, BackendSched):
        b.graph_compute(gf, fuse)
    else:
        with graph_lock(gf):
            run = DEFAULT_PIPELINE.optimize(gf, b, fuse)
            b.graph_compute(run.graph)
            if run.results:
                bind_results(run.results, run.binder)
    return target.numpy() if isinstance(target, Tensor) else gf
