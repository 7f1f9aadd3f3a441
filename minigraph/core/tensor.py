"""ggml's tensor model: 4 dims, ne (elements) and nb (byte strides), views over a root's memory.

Element (i0, i1, i2, i3) of a tensor lives at byte `view_offs + i0*nb[0] + i1*nb[1] + i2*nb[2]
+ i3*nb[3]` of its storage root (`view_src`, or the tensor itself). numpy sees a tensor as an
array of shape (ne3, ne2, ne1, ne0), so `ne = [a, b, c, d]` is numpy shape `(d, c, b, a)`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError, describe

MAX_DIMS = 4
MAX_NAME = 64  # ggml's GGML_MAX_NAME
FLAG_INPUT = 1
FLAG_OUTPUT = 2
FLAG_PARAM = 4

_STORAGE_ALIGN = 64
_binding_epoch = [0]


def bind_storage(bindings) -> int:
    """Point storage roots at (buffer, byte offset) pairs; returns the new binding epoch.

    Planners (the CPU backend, the scheduler) bind the roots they planned; one whose epoch is no
    longer current re-binds before it runs, since someone else may have re-pointed the roots."""
    for root, buf, offs in bindings:
        root._buf, root._offs = buf, offs
    _binding_epoch[0] += 1
    return _binding_epoch[0]


def binding_epoch() -> int:
    return _binding_epoch[0]


def contiguous_strides(type_: int, ne: Sequence[int]) -> tuple[int, int, int, int]:
    nb = [dtypes.type_size(type_)]
    for i in range(1, MAX_DIMS):
        nb.append(nb[i - 1] * ne[i - 1])
    return tuple(nb)  # type: ignore[return-value]


def extent_bytes(type_: int, ne: Sequence[int], nb: Sequence[int]) -> int:
    """ggml_nbytes: the bytes from the first element to the end of the last one."""
    if any(n <= 0 for n in ne):
        return 0
    return dtypes.type_size(type_) + sum((n - 1) * s for n, s in zip(ne, nb))


class Tensor:
    """A ggml tensor: a leaf (data, no op), an op node, or a view of another tensor's memory."""

    __slots__ = ("ctx", "type", "ne", "nb", "op", "op_params", "src", "name", "view_src",
                 "view_offs", "flags", "_buf", "_offs", "__weakref__")

    def __init__(self, ctx: Any, type_: int, ne: Sequence[int], nb: Optional[Sequence[int]] = None,
                 op: Optional[str] = None, src: Sequence["Tensor"] = (),
                 op_params: Optional[dict] = None, view_src: Optional["Tensor"] = None,
                 view_offs: int = 0) -> None:
        self.ctx = ctx
        self.type = dtypes.check_type(type_)
        self.ne = tuple(int(n) for n in ne)
        self.nb = tuple(int(s) for s in nb) if nb is not None else contiguous_strides(type_, self.ne)
        self.op = op
        self.op_params = dict(op_params or {})
        self.src = list(src)
        self.name = ""
        # like ggml, view_src is always the storage root and view_offs is absolute
        if view_src is not None and view_src.view_src is not None:
            view_offs += view_src.view_offs
            view_src = view_src.view_src
        self.view_src = view_src
        self.view_offs = int(view_offs)
        self.flags = 0
        self._buf: Optional[np.ndarray] = None  # uint8 storage (roots only)
        self._offs = 0

    # -- ggml's little predicates -------------------------------------------------------------
    @property
    def n_dims(self) -> int:
        return n_dims(self)

    def nelements(self) -> int:
        return nelements(self)

    def nbytes(self) -> int:
        return nbytes(self)

    def __repr__(self) -> str:
        return f"Tensor({self.op or 'NONE'} {describe(self)})"

    # -- names --------------------------------------------------------------------------------
    def set_name(self, name: str) -> "Tensor":
        return set_name(self, name)

    def format_name(self, fmt: str, *args: Any) -> "Tensor":
        return format_name(self, fmt, *args)

    # -- data ---------------------------------------------------------------------------------
    @property
    def root(self) -> "Tensor":
        return self.view_src if self.view_src is not None else self

    def has_data(self) -> bool:
        return self.root._buf is not None

    def _alloc_root(self) -> None:
        root = self.root
        if root._buf is None:
            size = extent_bytes(root.type, root.ne, root.nb)
            root._buf = np.zeros(-(-max(size, 1) // _STORAGE_ALIGN) * _STORAGE_ALIGN, np.uint8)
            root._offs = 0

    def _raw_view(self) -> np.ndarray:
        """Strided numpy view (storage dtype) of shape (ne3, ne2, ne1, ne0) over the memory."""
        root = self.root
        if root._buf is None:
            raise MinigraphError(f"tensor {describe(self)} has no data: call set_data() on it "
                                 "or compute the graph that produces it first")
        offs = root._offs + (self.view_offs if self.view_src is not None else 0)
        return storage_view(root._buf, offs, self.type, self.ne, self.nb)

    def numpy(self) -> np.ndarray:
        """A copy of the data, shape reversed(ne[:n_dims]), logical order whatever nb is.

        F32/F16/I32 keep their dtype; BF16 comes back as float32. Memory on a device (a
        scheduler's GPU compute buffer, a backend_tensor_alloc'd tensor) is read through its
        backend, like ggml_backend_tensor_get."""
        buf = self.root._buf
        if buf is not None and not isinstance(buf, np.ndarray):
            from minigraph.schedule.scheduler import backend_tensor_get

            return backend_tensor_get(self)
        raw = self._raw_view()
        out = dtypes.to_float(raw, self.type) if self.type == dtypes.TYPE_BF16 else raw
        return np.array(out).reshape(tuple(reversed(self.ne[: self.n_dims])))

    def set_data(self, arr: Any) -> "Tensor":
        """Write `arr` (numpy shape reversed(ne)) into the tensor's memory, through its strides."""
        a = np.asarray(arr)
        if a.dtype == object or a.dtype.kind not in "fiub":
            raise MinigraphError(f"set_data: tensor {describe(self)}: numpy dtype {a.dtype} is not numeric")
        want = tuple(reversed(self.ne))
        shape4 = (1,) * (MAX_DIMS - a.ndim) + a.shape if a.ndim <= MAX_DIMS else None
        if shape4 != want:
            raise MinigraphError(f"set_data: tensor {describe(self)} expects numpy shape "
                                 f"{tuple(reversed(self.ne[: self.n_dims]))}, got {a.shape}")
        self._alloc_root()
        self._raw_view()[...] = dtypes.from_float(a.reshape(want), self.type)
        return self


def storage_view(buf: np.ndarray, offs: int, type_: int, ne: Sequence[int], nb: Sequence[int]) -> np.ndarray:
    """A 4-D numpy view (shape (ne3, ne2, ne1, ne0)) of a uint8 buffer, with byte strides nb."""
    dt = dtypes.storage_dtype(type_)
    shape = tuple(reversed(ne))
    strides = tuple(reversed(nb))
    if extent_bytes(type_, ne, nb) == 0:
        return np.zeros(shape, dt)
    # np.ndarray checks that the whole extent lies inside `buf`: no view can reach past it
    return np.ndarray(shape, dtype=dt, buffer=buf, offset=offs, strides=strides)


# -- module functions, named as ggml's -------------------------------------------------------

def n_dims(t: Tensor) -> int:
    for i in range(MAX_DIMS - 1, 0, -1):
        if t.ne[i] > 1:
            return i + 1
    return 1


def nelements(t: Tensor) -> int:
    return int(np.prod(t.ne))


def nrows(t: Tensor) -> int:
    return t.ne[1] * t.ne[2] * t.ne[3]


def nbytes(t: Tensor) -> int:
    return extent_bytes(t.type, t.ne, t.nb)


def element_size(t: Tensor) -> int:
    return dtypes.type_size(t.type)


def row_size(type_: int, ne: int) -> int:
    return dtypes.type_size(type_) * int(ne)


def is_empty(t: Tensor) -> bool:
    return any(n == 0 for n in t.ne)


def _is_contiguous_n(t: Tensor, n: int) -> bool:
    next_nb = dtypes.type_size(t.type)
    if t.ne[0] != 1 and t.nb[0] != next_nb:
        return False
    next_nb *= t.ne[0]
    for i in range(1, MAX_DIMS):
        if t.ne[i] != 1:
            if i > n:
                if t.nb[i] != next_nb:
                    return False
                next_nb *= t.ne[i]
            else:
                next_nb = t.ne[i] * t.nb[i]
    return True


def is_contiguous(t: Tensor) -> bool:
    return _is_contiguous_n(t, 0)


def is_contiguous_1(t: Tensor) -> bool:
    return _is_contiguous_n(t, 1)


def is_contiguous_2(t: Tensor) -> bool:
    return _is_contiguous_n(t, 2)


def is_contiguous_rows(t: Tensor) -> bool:
    return t.ne[0] == 1 or t.nb[0] == dtypes.type_size(t.type)


def is_transposed(t: Tensor) -> bool:
    return t.nb[0] > t.nb[1]


def is_permuted(t: Tensor) -> bool:
    return t.nb[0] > t.nb[1] or t.nb[1] > t.nb[2] or t.nb[2] > t.nb[3]


def is_scalar(t: Tensor) -> bool:
    return all(n == 1 for n in t.ne)


def is_vector(t: Tensor) -> bool:
    return t.ne[1] == 1 and t.ne[2] == 1 and t.ne[3] == 1


def is_matrix(t: Tensor) -> bool:
    return t.ne[2] == 1 and t.ne[3] == 1


def are_same_shape(a: Tensor, b: Tensor) -> bool:
    return a.ne == b.ne


def are_same_stride(a: Tensor, b: Tensor) -> bool:
    return a.nb == b.nb


def can_repeat(t0: Tensor, t1: Tensor) -> bool:
    """True when t0 can be repeated (tiled) to fill t1's shape."""
    if is_empty(t0):
        return is_empty(t1)
    return all(b % a == 0 for a, b in zip(t0.ne, t1.ne))


def can_repeat_rows(t0: Tensor, t1: Tensor) -> bool:
    return t0.ne[0] == t1.ne[0] and can_repeat(t0, t1)


def set_name(t: Tensor, name: str) -> Tensor:
    t.name = str(name)[: MAX_NAME - 1]
    return t


def get_name(t: Tensor) -> str:
    return t.name


def format_name(t: Tensor, fmt: str, *args: Any) -> Tensor:
    """ggml_format_name: printf-style."""
    return set_name(t, fmt % args if args else fmt)


def set_input(t: Tensor) -> None:
    t.flags |= FLAG_INPUT


def set_output(t: Tensor) -> None:
    t.flags |= FLAG_OUTPUT


def set_param(t: Tensor) -> None:
    t.flags |= FLAG_PARAM
