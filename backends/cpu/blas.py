"""BLAS sgemm inside CPU kernels (scipy's OpenBLAS through Numba's own binding), when scipy is there.

Numba's np.dot takes only whole contiguous matrices and overwrites its output; kernels that tile
(FLASH_ATTN_EXT) need leading dimensions (V read inside a K tile) and C += A B. Numba exports the
Fortran sgemm it binds for np.dot under the symbol `numba_xxgemm` (numba/_lapack.c), which takes
both; binding it by name keeps the calling kernels cacheable. Each worker asks OpenBLAS for one
thread of its own around its products: OpenBLAS's pool, entered from two Numba workers at once,
serialises them (see backends/cpu/gated_delta_net.py, which found it first).

Row-major helpers (the kernels' arrays are row-major):
    gemm_nt: C[m, n] (+)= A[m, k] . B[n, k]^T     (scores: Q rows against K rows)
    gemm_tn: C[m, n] (+)= A[k, m]^T . B[k, n]     (output: V rows times probabilities)
Each matrix is a pointer (storage.data_ptr) and a leading dimension in elements; BLAS must be
there (HAVE_BLAS) for a kernel to take these paths.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from numba import njit, types

F32P = types.CPointer(types.float32)
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    F32P, F32P, types.intp, F32P, types.intp, F32P, F32P, types.intp))
_S, _N, _T = ord("s"), ord("n"), ord("t")


def _have_blas() -> bool:
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (numba_xxgemm loads sgemm from here)
        return True
    except ImportError:
        return False


def _openblas_local_threads():
    """openblas_set_num_threads_local of scipy's bundled OpenBLAS as a Numba external function
    (bound by symbol name, so callers stay cacheable), or None when it is not there."""
    import scipy
    for lib in glob.glob(os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "*openblas*")):
        try:
            if hasattr(ctypes.CDLL(lib), "openblas_set_num_threads_local"):
                import llvmlite.binding as llb
                llb.load_library_permanently(lib)
                return types.ExternalFunction("openblas_set_num_threads_local", types.int32(types.int32))
        except OSError:
            pass
    return None


@njit(cache=True, nogil=True)
def _no_blas_threads(n):
    return np.int32(1)


HAVE_BLAS = _have_blas()
blas_threads = (_openblas_local_threads() if HAVE_BLAS else None) or _no_blas_threads


@njit(cache=True, nogil=True, inline="always")
def gemm_nt(m, n, k, a, lda, b, ldb, c, ldc, alpha, beta):
    """C = alpha A B^T + beta C, row-major; alpha and beta point at f32 scalars."""
    # row-major C[m, n] is column-major C^T[n, m] = B A^T: B transposed, A as it lies
    _xxgemm(_S, _T, _N, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)


@njit(cache=True, nogil=True, inline="always")
def gemm_tn(m, n, k, a, lda, b, ldb, c, ldc, alpha, beta):
    """C = alpha A^T B + beta C, row-major, A stored [k, m]; alpha and beta point at f32 scalars."""
    _xxgemm(_S, _N, _T, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)
