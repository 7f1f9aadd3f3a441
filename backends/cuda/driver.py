"""The CUDA driver and NVRTC through cuda.bindings, for the kernels written in CUDA C++
(attention_mma.cu, quant_mmvq.cu) and the CUDA-graph capture: compile a source to a cubin, and
check the (CUresult, *values) tuples the driver calls return."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from minigraph.core.errors import MinigraphError


def check(result: Any, what: str) -> Any:
    """A cuda.bindings driver call's (CUresult, *values): raise a MinigraphError naming `what`
    on an error, else return the value (or the values)."""
    from cuda.bindings import driver as drv

    err, *vals = result if isinstance(result, tuple) else (result,)
    if err != drv.CUresult.CUDA_SUCCESS:
        raise MinigraphError(f"{what} failed: {err}")
    return vals[0] if len(vals) == 1 else tuple(vals)


def device_arch() -> str:
    """The current device's NVRTC architecture name, sm_XY."""
    from numba import cuda

    cc = cuda.get_current_device().compute_capability
    return f"sm_{cc[0]}{cc[1]}"


def nvrtc_cubin(source: Path, arch: str, defines: Sequence[tuple[str, Any]], extra: Sequence[str],
                what: str) -> tuple[bytes, str]:
    """(cubin, compile log) of CUDA C++ file `source` for an sm_XY arch, C++17, with -D name=value
    for each of `defines` and the `extra` NVRTC options (tests pass --ptxas-options=-v to read
    registers and spills). `what` names the op and the config in errors."""
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], [])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise MinigraphError(f"{what}: NVRTC could not create the program: {err}")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
        opts += [f"-D{k}={v}".encode() for k, v in defines]
        opts += [x.encode() for x in extra]
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, n = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * n
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.decode(errors="replace").rstrip(" \x00")
        if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise MinigraphError(f"{what}: NVRTC failed on {source.name}: {text}")
        _, n = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * n
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        return cubin, text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
