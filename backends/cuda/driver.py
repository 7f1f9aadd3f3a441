"""The CUDA driver and NVRTC through cuda.bindings, for the kernels written in CUDA C++
(attention_mma.cu, quant_mmvq.cu, the GATED_DELTA_NET decode) and the CUDA-graph capture: compile
a source to a cubin, launch a driver function like a Numba kernel, and check the (CUresult,
*values) tuples the driver calls return."""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Callable, Sequence

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


def _out_buffer(n: int) -> bytes:
    """A new bytes object of at least n bytes for NVRTC to write into. Never b" " * n itself: for
    n == 1 (an empty log, only its NUL) that is CPython's shared one-byte b" ", and NVRTC's write
    turned every b" " of the process into b"\\x00" (torch's schema parser then read "str tag" as
    "strtag" and failed to import)."""
    return bytes(bytearray(max(n, 2)))


def nvrtc_cubin(source: Path, arch: str, defines: Sequence[tuple[str, Any]], extra: Sequence[str],
                what: str) -> tuple[bytes, str]:
    """(cubin, compile log) of CUDA C++ file `source` for an sm_XY arch, C++17, with -D name=value
    for each of `defines` and the `extra` NVRTC options (tests pass --ptxas-options=-v to read
    registers and spills). `what` names the op and the config in errors."""
    return nvrtc_cubin_text(source.read_bytes(), source.name, arch, defines, extra, what)


def nvrtc_cubin_text(text: bytes, name: str, arch: str, defines: Sequence[tuple[str, Any]], extra: Sequence[str],
                     what: str) -> tuple[bytes, str]:
    """nvrtc_cubin of a source given as its text (`name` for NVRTC's messages)."""
    from cuda.bindings import nvrtc

    err, prog = nvrtc.nvrtcCreateProgram(text, name.encode(), 0, [], [])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise MinigraphError(f"{what}: NVRTC could not create the program: {err}")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17"]
        opts += [f"-D{k}={v}".encode() for k, v in defines]
        opts += [x.encode() for x in extra]
        (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, n = nvrtc.nvrtcGetProgramLogSize(prog)
        log = _out_buffer(n)
        nvrtc.nvrtcGetProgramLog(prog, log)
        log_text = log.decode(errors="replace").rstrip(" \x00")
        if res != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise MinigraphError(f"{what}: NVRTC failed on {name}: {log_text}")
        _, n = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = _out_buffer(n)
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        return cubin, log_text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class Module:
    """A cubin loaded into the current device's context (numba's primary one, made current here):
    `function(name)` its driver functions, looked up once. The image stays alive with the module;
    `what` names the op in errors."""

    def __init__(self, cubin: bytes, what: str) -> None:
        from cuda.bindings import driver as drv
        from numba import cuda

        cuda.current_context()
        self.what = what
        self.image = ctypes.create_string_buffer(cubin)
        self.handle = check(drv.cuModuleLoadData(ctypes.addressof(self.image)), f"{what}: module load")
        self.functions: dict[str, Any] = {}

    def function(self, name: str) -> Any:
        if name not in self.functions:
            from cuda.bindings import driver as drv

            self.functions[name] = check(drv.cuModuleGetFunction(self.handle, name.encode()),
                                         f"{self.what}: get {name}")
        return self.functions[name]


def device_ptr(a: Any) -> int:
    """The device address of an array with __cuda_array_interface__ (0 for an empty one)."""
    return int(a.__cuda_array_interface__["data"][0] or 0)


def stream_handle(stream: Any) -> Any:
    """A CUstream for a Numba stream, a raw handle or 0 (the default stream)."""
    from cuda.bindings import driver as drv

    h = getattr(stream, "handle", stream)
    if isinstance(h, drv.CUstream):
        return h
    return drv.CUstream(int(getattr(h, "value", h) or 0))


class RawKernel:
    """A driver function launched like a Numba kernel: kernel[grid, block] or kernel[grid, block,
    stream], then (*args) in the backend's order; `pack(*args)` turns them into the function's
    parameters (ctypes values); smem: bytes of dynamic shared memory."""

    def __init__(self, fn: Any, smem: int, pack: Callable[..., list], what: str = "CUDA C++ kernel") -> None:
        self.fn, self.smem, self.pack, self.what = fn, smem, pack, what

    def __getitem__(self, cfg: tuple) -> Any:
        grid, block = cfg[0], cfg[1]
        stream = cfg[2] if len(cfg) > 2 else 0
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))

        def launch(*args: Any) -> None:
            from cuda.bindings import driver as drv

            vals = self.pack(*args)
            ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(x) for x in vals])
            check(drv.cuLaunchKernel(self.fn, *g, *b, self.smem, stream_handle(stream), ctypes.addressof(ptrs), 0),
                  f"{self.what}: launch")

        return launch
