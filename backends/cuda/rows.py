"""CUDA kernel of the rows family: SET_ROWS (rows of b scattered into a, in place).

One thread per (i0, i2, i3) element column of the destination: it walks b's rows i = 0, 1, ...
in order, so a repeated index keeps the last row, as on the CPU and in the reference, and no
two threads write the same element. Rows f32 or f16 into an f32 or f16 destination (the KV
cache; f32 -> f16 rounds to nearest even on assignment), indices I32 or I64 (each slot is a
flat array of its own element type, so an I64 index is read as one int64). A GPU kernel cannot
raise: every thread checks all indices before it writes, so one outside a's rows means nothing
is written (as on the CPU); thread 0 reports it in the error words, which the plan raises after
the run as the CPU backend's MinigraphError. A bf16
destination goes to the CPU backend (rounding f32 to bf16 needs a bit cast plain Numba lacks).
"""
from __future__ import annotations

from dataclasses import replace

from numba import cuda

from minigraph.core import dtypes
from minigraph.core.registry import register_kernel

from minigraph.backends.cuda.common import CudaKernel, at, flat_launch, ne
from minigraph.backends.cuda.convert import ERR_WORDS, report

ROW_TYPES = (dtypes.TYPE_F32, dtypes.TYPE_F16)


@cuda.jit
def set_rows(meta, dst, b, idx, a, err):
    """dst (i0, idx[i, i2 % ne11, i3 % ne12], i2, i3) = b (i0, i, i2, i3) for i in 0..n-1."""
    n0 = ne(meta, 1, 0)
    n2 = ne(meta, 1, 2)
    j = cuda.grid(1)
    if j < n0 * n2 * ne(meta, 1, 3):
        i0 = j % n0
        i2 = (j // n0) % n2
        i3 = j // (n0 * n2)
        k1 = i2 % ne(meta, 2, 1)
        k2 = i3 % ne(meta, 2, 2)
        n_rows = ne(meta, 0, 1)
        # all indices are checked before any write (as the CPU backend does): nothing is written
        # when one is out of range, and thread 0 reports the first it finds
        for c2 in range(ne(meta, 2, 2)):
            for c1 in range(ne(meta, 2, 1)):
                for i in range(ne(meta, 1, 1)):
                    row = idx[at(meta, 2, i, c1, c2, 0)]
                    if row < 0 or row >= n_rows:
                        if j == 0:
                            report(err, 1, row, i, c1, c2)
                        return
        for i in range(ne(meta, 1, 1)):
            row = idx[at(meta, 2, i, k1, k2, 0)]
            dst[at(meta, 0, i0, row, i2, i3)] = b[at(meta, 1, i0, i, i2, i3)]


def _supports(node):
    b, c, a = node.src
    if c.type not in dtypes.INT_TYPES:
        return f"SET_ROWS: indices must be i32 or i64, got {dtypes.type_name(c.type)}"
    if a.type not in ROW_TYPES or b.type not in ROW_TYPES:
        return (f"SET_ROWS: CUDA writes f32/f16 rows into an f32/f16 destination, got "
                f"{dtypes.type_name(b.type)} -> {dtypes.type_name(a.type)} (bf16 runs on the CPU)")
    return None


def _explain(node, words) -> str:
    n_rows = node.src[2].ne[1]
    return (f"set_rows: row index {int(words[1])} at indices[{int(words[2])}, {int(words[3])}, {int(words[4])}] "
            f"is outside 0..{n_rows - 1} (the destination's ne1 = {n_rows} rows); nothing was written")


def _launches(node):
    b = node.src[0]
    return [replace(flat_launch(set_rows, b.ne[0] * b.ne[2] * b.ne[3]), n_err=ERR_WORDS)]


register_kernel("SET_ROWS", "cuda", CudaKernel(_launches, "set_rows", _explain), supports=_supports,
                index_slots=(2,))
