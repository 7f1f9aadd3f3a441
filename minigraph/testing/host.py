"""The CPU a benchmark ran on, in one line: BENCHMARKS.md figures come from more than one machine
(a Zen 3 with AVX2, a Zen 5 with AVX-512), and the CPU kernels take different code on each."""
from __future__ import annotations

import os
import platform

import numba
import numpy as np


def cpu_model() -> str:
    """/proc/cpuinfo's model name where there is one, else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_line(threads: int) -> str:
    """'<model> (<LLVM's CPU name>; the vector code the kernels take), N cores, T threads; numba ..
    (layer ..), numpy ..'."""
    import llvmlite.binding as llvm

    from minigraph.backends.cpu import quant_ir, tile_ir, vector_width
    isa = ("16-lane float tiles (AVX-512)" if tile_ir.WIDE else "8-lane float tiles") + ", " + (
        "VNNI dots" if quant_ir.VNNI else "AVX2 dots" if quant_ir.AVX2 else "portable dots")
    if vector_width.wide():
        isa += ", 512-bit loops"
    try:
        layer = numba.threading_layer()
    except ValueError:          # no parallel region has run yet: the configured choice
        layer = f"{numba.config.THREADING_LAYER}, not started"
    return (f"{cpu_model()} ({llvm.get_host_cpu_name()}; {isa}), {os.cpu_count()} cores, {threads} threads; "
            f"numba {numba.__version__} (layer {layer}), numpy {np.__version__}")
