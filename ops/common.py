"""Small helpers shared by the op modules: type checks, broadcasting, strided references."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError, expect
from minigraph.core.tensor import Tensor, extent_bytes

F32 = dtypes.TYPE_F32


def check_tensor(op: str, *ts: Any) -> None:
    for t in ts:
        if not isinstance(t, Tensor):
            raise MinigraphError(f"{op}: expected a Tensor, got {type(t).__name__} {t!r:.60}")


def check_float(op: str, *ts: Tensor) -> None:
    check_tensor(op, *ts)
    for t in ts:
        expect(t.type in dtypes.FLOAT_TYPES, op, f"expects float tensors (f32/f16/bf16), '{t.name}' is "
               f"{dtypes.type_name(t.type)}", *ts)


def check_int(op: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MinigraphError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r:.40}")
    return int(value)


def check_number(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MinigraphError(f"{op}: {name} must be a number, got {type(value).__name__} {value!r:.40}")
    return float(value)


def tile_to(b: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Repeat b (ggml can_repeat semantics: each dim divides) to `shape`."""
    reps = tuple(s // n for s, n in zip(shape, b.shape))
    return np.tile(b, reps) if any(r != 1 for r in reps) else b


def strided_region(flat: np.ndarray, type_: int, ne: Sequence[int], nb: Sequence[int], offset: int) -> np.ndarray:
    """View (ne3, ne2, ne1, ne0) of a flat element array, with byte strides/offset of `type_`."""
    ts = dtypes.type_size(type_)
    return np.lib.stride_tricks.as_strided(
        flat[offset // ts:], shape=tuple(reversed(ne)),
        strides=tuple(s // ts * flat.itemsize for s in reversed(nb)))


def check_region(op: str, dst: Tensor, ne: Sequence[int], nb: Sequence[int], offset: int, *ts: Tensor) -> None:
    """A write region (ne, byte strides nb, byte offset) must lie inside dst's memory."""
    ts_ = dtypes.type_size(dst.type)
    expect(offset >= 0 and offset % ts_ == 0 and all(s % ts_ == 0 and s >= 0 for s in nb), op,
           f"offset {offset} and strides {list(nb)} must be non-negative multiples of the element size {ts_}", *ts)
    end = offset + extent_bytes(dst.type, ne, nb)
    size = extent_bytes(dst.type, dst.ne, dst.nb)
    # a stride of a size-1 dim never moves, but one wider than the destination is a corrupt value
    # (numpy's as_strided overflows on it); the destination's own strides are always fine
    limit = max([size, *dst.nb])
    expect(all(s <= limit for s in nb), op, f"strides {list(nb)} exceed the {size}-byte destination", *ts)
    expect(end <= size, op, f"region ne={list(ne)} nb={list(nb)} at offset {offset} ends at byte {end}, "
           f"past the {size}-byte destination", *ts)
