"""Conformance cases as data, in the shape of ggml's test-backend-ops.

A Case names its op, the parameter string a `-p` filter sees (`vars`), a builder
`build(ctx, rng) -> output tensor` and a tolerance (NMSE, as test-backend-ops). Inputs come in
three layouts so every op also runs on non-contiguous memory: "cont", "perm" (a permuted view
with the same logical shape) and "offs" (a view at an element offset inside a larger tensor).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from minigraph.core import dtypes
from minigraph.core.tensor import Tensor

LAYOUTS = ("cont", "perm", "offs")


@dataclass(frozen=True)
class Case:
    op: str
    vars: str
    build: Callable[[Any, np.random.Generator], Tensor]
    max_nmse: float = 1e-7
    origin: str = ""      # the minigraph-ops file a case exported from a model came from ("": built in)

    @property
    def name(self) -> str:
        return f"{self.op}({self.vars})"


def make_input(ctx: Any, rng: np.random.Generator, ne, layout: str = "cont", lo: float = -1.0,
               hi: float = 1.0, type_: int = dtypes.TYPE_F32, name: str = "") -> Tensor:
    """A leaf (or a view of one) of logical shape `ne` filled with uniform values in [lo, hi)."""
    ne = list(ne) + [1] * (4 - len(ne))
    data = rng.uniform(lo, hi, size=tuple(reversed(ne))).astype(np.float32)
    if type_ == dtypes.TYPE_I32:
        data = data.astype(np.int32)
    if layout == "perm":
        # store with dims 0 and 1 swapped, then permute back: same logical tensor, transposed memory
        base = ctx.new_tensor_4d(type_, ne[1], ne[0], ne[2], ne[3])
        base.set_data(np.ascontiguousarray(np.swapaxes(data, 2, 3)))
        t = ctx.permute(base, 1, 0, 2, 3)
    elif layout == "offs":
        pad = 3  # an odd element offset: not 8/16/32-byte aligned
        n = int(np.prod(ne))
        base = ctx.new_tensor_1d(type_, n + pad + 5)
        flat = np.zeros(n + pad + 5, data.dtype)
        flat[pad:pad + n] = data.reshape(-1)
        base.set_data(flat)
        ts = dtypes.type_size(type_)
        t = ctx.view_4d(base, ne[0], ne[1], ne[2], ne[3], ne[0] * ts, ne[0] * ne[1] * ts,
                        ne[0] * ne[1] * ne[2] * ts, pad * ts)
    else:
        t = ctx.new_tensor_4d(type_, *ne)
        t.set_data(data)
    if name and hasattr(t, "set_name"):
        t.set_name(name)
    return t


CASES: list[Case] = []  # filled by the op families (minigraph.ops.cases and the op modules)


def cases_for(op: Optional[str] = None) -> list[Case]:
    return [c for c in CASES if op is None or c.op == op]


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """test-backend-ops' normalised mean squared error."""
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    den = float((ref * ref).sum())
    num = float(((out - ref) ** 2).sum())
    return num / den if den > 0 else num
