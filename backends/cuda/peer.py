"""Copies between two GPUs: peer to peer when the driver offers it, else the scheduler goes
through host memory (ggml-cuda: ggml_cuda_set_peer_access, then cudaMemcpyPeerAsync).

`peer_access(src, dst)` asks the driver once per ordered pair whether `dst` can read `src`'s
memory (cuDeviceCanAccessPeer) and, if so, enables it from dst's context (cuCtxEnablePeerAccess);
the answer and, when refused, the reason are kept (`peer_status()`, shown by the benchmark).
MINIGRAPH_CUDA_PEER=0 turns peer copies off: every copy between GPUs then travels through host
memory. `copy_peer` is one cuMemcpyPeerAsync on the destination backend's stream.

Written for two real GPUs (nvidia-h200-x2); the simulator has one device, so there every
"other" CUDA backend is on device 0 and copies stay on one device.
"""
from __future__ import annotations

import threading
from typing import Any

from numba import cuda

from minigraph.core import flags
from minigraph.core.errors import MinigraphError

from minigraph.backends.cuda.common import SIM

_STATE: dict[tuple[int, int], tuple[bool, str]] = {}   # (src, dst) -> (enabled, why)
_LOCK = threading.Lock()


def _drv() -> Any:
    from cuda.bindings import driver as drv

    return drv


def _ok(result: Any, what: str, allow: tuple = ()) -> Any:
    drv = _drv()
    err, *vals = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS and err not in allow:
        raise MinigraphError(f"CUDA {what} failed: {err}")
    return vals[0] if len(vals) == 1 else tuple(vals)


def context_handle(device: int) -> Any:
    """The primary context of `device` as a cuda.bindings CUcontext."""
    drv = _drv()
    h = cuda.gpus[device].get_primary_context().handle
    if isinstance(h, drv.CUcontext):
        return h
    return drv.CUcontext(int(getattr(h, "value", h)))


def peer_access(src: int, dst: int) -> bool:
    """Whether copies from GPU `src` into GPU `dst` can go peer to peer (enabled on first ask)."""
    if src == dst:
        return True
    key = (src, dst)
    with _LOCK:
        if key not in _STATE:
            _STATE[key] = _enable(src, dst)
        return _STATE[key][0]


def _enable(src: int, dst: int) -> tuple[bool, str]:
    if SIM:
        return False, "the simulator has one device"
    if not flags.cuda_peer():
        return False, "MINIGRAPH_CUDA_PEER=0"
    drv = _drv()
    try:
        can = _ok(drv.cuDeviceCanAccessPeer(_ok(drv.cuDeviceGet(dst), "cuDeviceGet"),
                                            _ok(drv.cuDeviceGet(src), "cuDeviceGet")), "cuDeviceCanAccessPeer")
        if not can:
            return False, f"the driver reports no peer access from GPU {dst} to GPU {src}"
        with cuda.gpus[dst]:
            _ok(drv.cuCtxEnablePeerAccess(context_handle(src), 0), "cuCtxEnablePeerAccess",
                allow=(drv.CUresult.CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED,))
        return True, "enabled"
    except Exception as e:  # noqa: BLE001 - an unusable peer path means copies go through the host
        return False, f"{type(e).__name__}: {e}"


def peer_status() -> dict:
    """{"src->dst": "enabled" or why not} for every pair asked so far."""
    with _LOCK:
        return {f"{s}->{d}": why for (s, d), (_, why) in _STATE.items()}


def copy_peer(dst_ptr: int, dst_dev: int, src_ptr: int, src_dev: int, nbytes: int, stream: Any) -> None:
    """nbytes from GPU src_dev's memory at src_ptr to GPU dst_dev's at dst_ptr, on `stream`
    (a numba stream of dst_dev): cuMemcpyPeerAsync."""
    drv = _drv()
    h = stream.handle
    h = h if isinstance(h, drv.CUstream) else drv.CUstream(int(getattr(h, "value", h) or 0))
    _ok(drv.cuMemcpyPeerAsync(drv.CUdeviceptr(dst_ptr), context_handle(dst_dev), drv.CUdeviceptr(src_ptr),
                              context_handle(src_dev), nbytes, h), "cuMemcpyPeerAsync")
