"""Let LLVM's loop vectoriser use 512-bit vectors on AVX-512 CPUs whose tuning prefers 256 bits.

Why: LLVM tunes Intel's AVX-512 cores (Skylake-X through Sapphire Rapids; on a VM the host often
reports itself as `rocketlake`) with `prefer-256-bit`, so every loop Numba vectorises runs on ymm
registers, half the lanes the CPU has (a choice made for Skylake-X's clock drops under zmm code).
Zen 4/5 do not carry the flag. ggml's CPU backend, built with -march=native, runs these CPUs with
512-bit intrinsics. Measured on a 2-core Sapphire Rapids VM (LLVM: rocketlake), GATED_DELTA_NET
decode N=1 (S=128, H_v=32), the kernel alone, medians of three alternating processes: see
BENCHMARKS.md ("Gated delta net, CPU", 2026-12-02 session 14). minigraph's explicit vector code
(tile_ir, quant_ir) picks its width from the CPU features and is unaffected.

How: Numba's code generator takes its target features from NUMBA_CPU_FEATURES when that is set
(otherwise the host's), so this module sets it to the host's features plus `-prefer-256-bit`
before anything is compiled: the first CPU kernel compiles when minigraph.backends.cpu is imported
or later (`import minigraph` imports this module first). Numba's on-disk cache keys each kernel by
its target features, so kernels cached without the flag are not reused with it. It sets a default
only: a user's NUMBA_CPU_FEATURES or NUMBA_CPU_NAME wins, and MINIGRAPH_VECTOR_BITS=256 keeps
LLVM's choice.
"""
from __future__ import annotations

import os

import llvmlite.binding as llvm
import numba

from minigraph.core import flags

FLAG = "-prefer-256-bit"


def wide() -> bool:
    """Whether this process's Numba compiles with the 256-bit preference lifted."""
    return FLAG in (os.environ.get("NUMBA_CPU_FEATURES") or "")


def wide_features() -> str | None:
    """The host's feature string with `-prefer-256-bit`, or None where nothing should change:
    no AVX-512, a user's choice of features or CPU, or MINIGRAPH_VECTOR_BITS=256."""
    if os.environ.get("NUMBA_CPU_FEATURES") or os.environ.get("NUMBA_CPU_NAME"):
        return None
    if flags.vector_bits() == 256:
        return None
    feats = llvm.get_host_cpu_features()
    if not feats.get("avx512f", False):
        return None
    return feats.flatten() + "," + FLAG


def prefer_wide_vectors() -> None:
    """Set NUMBA_CPU_FEATURES (see the module docstring) and make Numba's config read it. The
    environment variable, not only numba.config, because Numba re-reads its config from the
    environment when that changes, and so that compile workers started later inherit it."""
    feats = wide_features()
    if feats is None:
        return
    os.environ["NUMBA_CPU_FEATURES"] = feats
    numba.core.config.reload_config()


prefer_wide_vectors()
