"""Every environment flag minigraph reads, declared once."""
from __future__ import annotations

import os
import tempfile


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() not in ("0", "false", "off", "no")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def sched_debug() -> bool:
    """MINIGRAPH_SCHED_DEBUG=1: print every placement decision with its cause."""
    return _env_bool("MINIGRAPH_SCHED_DEBUG", False)


def fusion_enabled() -> bool:
    """MINIGRAPH_FUSION=0 turns graph rewrites off."""
    return _env_bool("MINIGRAPH_FUSION", True)


def n_threads() -> int:
    """MINIGRAPH_THREADS: CPU threads for parallel kernels. N >= 1: exactly N on every compute (as
    ggml's n_threads); unset, "auto" or 0: load-aware, the usable cores that other processes leave
    free at compute time (backends/cpu/threads.py). Returns N, or 0 for load-aware."""
    v = os.environ.get("MINIGRAPH_THREADS", "").strip().lower()
    if v in ("", "auto"):
        return 0
    return max(0, _env_int("MINIGRAPH_THREADS", 0))


def vector_bits() -> int:
    """MINIGRAPH_VECTOR_BITS=256 keeps LLVM's 256-bit preference for vectorised loops on Intel
    AVX-512 CPUs (backends/cpu/vector_width.py); unset or anything else: 512-bit vectors."""
    return 256 if os.environ.get("MINIGRAPH_VECTOR_BITS", "").strip() == "256" else 512


def parallel_min_elements() -> int:
    """MINIGRAPH_PARALLEL_MIN: nodes with fewer output elements run the serial kernel build."""
    return _env_int("MINIGRAPH_PARALLEL_MIN", 1 << 15)


def compile_jobs() -> int:
    """MINIGRAPH_COMPILE_JOBS: processes that compile a plan's missing CPU kernels at once
    (backends/cpu/compile_pool.py). Unset: the cores this process may run on, at most 4; 1: all
    compiles in this process, no worker processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, _env_int("MINIGRAPH_COMPILE_JOBS", min(cores, 4)))


def cache_dir() -> str:
    """MINIGRAPH_CACHE_DIR: generated executors and (for read-only installs) Numba's cache."""
    d = os.environ.get("MINIGRAPH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "minigraph")
    try:
        os.makedirs(d, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = os.path.join(tempfile.gettempdir(), f"minigraph-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    os.makedirs(d, exist_ok=True)
    return d


def offload_min_batch() -> int:
    """MINIGRAPH_OFFLOAD_MIN_BATCH: smallest batch (node.ne[1]) for which the scheduler moves an
    op on host-resident weights to a higher-priority backend (ggml: 32)."""
    return _env_int("MINIGRAPH_OFFLOAD_MIN_BATCH", 32)


def no_offload() -> bool:
    """MINIGRAPH_NO_OFFLOAD=1: ops on host-resident weights always stay on the host."""
    return _env_bool("MINIGRAPH_NO_OFFLOAD", False)


def cuda_graphs() -> bool:
    """MINIGRAPH_CUDA_GRAPHS=0: plain kernel launches on every compute, no CUDA graph replay."""
    return _env_bool("MINIGRAPH_CUDA_GRAPHS", True)


def cuda_simulator() -> bool:
    """NUMBA_ENABLE_CUDASIM=1 (Numba's own flag): CUDA kernels run on numba-cuda's simulator."""
    return _env_bool("NUMBA_ENABLE_CUDASIM", False)


def cuda_reorder() -> bool:
    """MINIGRAPH_CUDA_REORDER=0: a quantized MUL_MAT on a real GPU reads Q4_0 / Q4_K weights as
    stored instead of from a reordered device copy (backends/cuda/quant_reorder.py: faster, and
    costs the weights' bytes again in device memory)."""
    return _env_bool("MINIGRAPH_CUDA_REORDER", True)


def cuda_tensor_cores() -> bool:
    """MINIGRAPH_CUDA_TENSOR_CORES=0: GATED_DELTA_NET on a real GPU runs the plain Numba kernels
    instead of the linked CUDA C++ ones (3xTF32 tensor-core prefill, eight-lanes-a-row decode)."""
    return _env_bool("MINIGRAPH_CUDA_TENSOR_CORES", True)


def fusion_debug() -> bool:
    """MINIGRAPH_FUSION_DEBUG=1: print what each fusion pass matched, what it did not and why
    (the first mismatching node of a near miss)."""
    return _env_bool("MINIGRAPH_FUSION_DEBUG", False)


def cuda_peer() -> bool:
    """MINIGRAPH_CUDA_PEER=0: copies between two GPUs go through host memory, never peer to peer."""
    return _env_bool("MINIGRAPH_CUDA_PEER", True)


def random_input_max_bytes() -> int:
    """MINIGRAPH_RANDOM_INPUT_MAX_BYTES: the most memory `dump --profile` and `compare` may
    allocate for random inputs of leafs without data (default 4 GiB); more is refused."""
    return _env_int("MINIGRAPH_RANDOM_INPUT_MAX_BYTES", 4 << 30)


def compile_progress(stream_is_tty: bool) -> bool:
    """MINIGRAPH_QUIET: the progress line on stderr while kernels compile. Unset: shown when
    stderr is a terminal; 1 never; 0 always (one line per kernel when stderr is not a terminal)."""
    v = os.environ.get("MINIGRAPH_QUIET")
    if v is None or v.strip() == "":
        return stream_is_tty
    return not _env_bool("MINIGRAPH_QUIET", False)
