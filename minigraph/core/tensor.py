"""ggml's tensor model: 4 dims, ne (elements) and nb (byte strides), views over a root's memory.

Element (i0, i1, i2, i3) of a tensor lives at byte `view_offs + i0*nb[0] + i1*nb[1] + i2*nb[2]
+ i3*nb[3]` of its storage root (`view_src`, or the tensor itself). numpy sees a tensor as an
array of shape (ne3, ne2, ne1, ne0), so `ne = [a, b, c, d]` is numpy shape `(d, c, b, a)`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.buffer import Buffer, HostBuffer, extent_bytes, storage_view, tensor_start  # noqa: F401
from minigraph.core.errors import MinigraphError, describe

MAX_DIMS = 4
MAX_NAME = 64  # ggml's GGML_MAX_NAME
FLAG_INPUT = 1
FLAG_OUTPUT = 2
FLAG_PARAM = 4



def contiguous_strides(type_: int, ne: Sequence[int]) -> tuple[int, int, int, int]:
    """ggml's strides of a packed tensor: nb0 = type size (a block's bytes), nb1 = row size, ..."""
    nb = [dtypes.type_size(type_), dtypes.type_size(type_) * (ne[0] // dtypes.blck_size(type_))]
    for i in range(2, MAX_DIMS):
        nb.append(nb[i - 1] * ne[i - 1])
    return tuple(nb)  # type: ignore[return-value]


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
        blck = dtypes.blck_size(self.type)
        if self.ne[0] % blck:
            raise MinigraphError(f"{op or 'new_tensor'}: a {dtypes.type_name(self.type)} row holds whole blocks of "
                                 f"{blck} elements; ne0 = {self.ne[0]} is not a multiple of {blck} (ne={list(self.ne)})")
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
        self.view_offs = int(view_offs) if view_src is not None else 0
        self.flags = 0
        self._buf: Optional[Buffer] = None  # storage (roots only): see minigraph.core.buffer
        self._offs = 0

    # -- ggml's little predicates -------------------------------------------------------------
    @property
    def n_dims(self) -> int:
        """ggml_n_dims (see the module function n_dims)."""
        return n_dims(self)

    def nelements(self) -> int:
        """ggml_nelements: ne0 * ne1 * ne2 * ne3."""
        return nelements(self)

    def nbytes(self) -> int:
        """ggml_nbytes (see the module function nbytes)."""
        return nbytes(self)

    def __repr__(self) -> str:
        return f"Tensor({self.op or 'NONE'} {describe(self)})"

    # -- names --------------------------------------------------------------------------------
    def set_name(self, name: str) -> "Tensor":
        """ggml_set_name; returns self, so `ctx.add(a, b).set_name("x")` chains."""
        return set_name(self, name)

    def format_name(self, fmt: str, *args: Any) -> "Tensor":
        """ggml_format_name: set_name(fmt % args); returns self."""
        return format_name(self, fmt, *args)

    # -- data ---------------------------------------------------------------------------------
    @property
    def root(self) -> "Tensor":
        """The tensor whose memory this one views (view_src, which is always a root), else self."""
        return self.view_src if self.view_src is not None else self

    @property
    def buffer(self) -> Optional[Buffer]:
        """The buffer holding the root's memory (None: no memory yet)."""
        return self.root._buf

    @property
    def data_offs(self) -> int:
        """Byte offset of the first element inside `buffer` (ggml's `t->data - base`)."""
        return tensor_start(self)

    def has_data(self) -> bool:
        """Whether the root has memory yet (set_data, from_numpy, a backend allocation or a plan)."""
        return self.root._buf is not None

    def alloc_host(self) -> None:
        """Give the root zeroed host memory of its own, if it has none yet."""
        root = self.root
        if root._buf is None:
            root._buf = HostBuffer.alloc(extent_bytes(root.type, root.ne, root.nb), what=f"tensor '{root.name}'")
            root._offs = 0

    def _buffer_or_fail(self) -> Buffer:
        buf = self.root._buf
        if buf is None:
            raise MinigraphError(f"tensor {describe(self)} has no data: call set_data() on it "
                                 "or compute the graph that produces it first")
        return buf

    def numpy(self, copy: bool = True) -> np.ndarray:
        """The data as numpy, shape reversed(ne[:n_dims]), in logical order whatever nb is.

        copy=True (default): a new array (ggml_backend_tensor_get); memory on a device is read
        through its buffer. F32/F16/I32 keep their dtype; BF16 comes back as float32.
        copy=False: a view of the tensor's host memory, strided like nb (refused for device
        memory and BF16). It shows what the next compute writes there: a compute that reuses
        this memory (a later node, another graph on the same plan) overwrites it.
        Quantized types: copy=True dequantizes to float32 (ggml's to_float); copy=False is the
        raw block bytes, shape reversed(ne) with ne0 replaced by the row's bytes."""
        buf = self._buffer_or_fail()
        zero = [i for i, n in enumerate(self.ne) if n == 0]  # an empty dim counts, wherever it is
        shape = tuple(reversed(self.ne[: max(self.n_dims, zero[-1] + 1 if zero else 0)]))
        if dtypes.is_quantized(self.type):
            if not copy and not buf.is_host:
                raise MinigraphError(f"numpy(copy=False): tensor {describe(self)} lives in {buf!r}, not host memory")
            raw = buf.view(self) if buf.is_host else buf.get(self)
            raw = raw.reshape(tuple(reversed(self.ne[1:])) + (-1,))
            if not copy:
                return raw.reshape(shape[:-1] + (raw.shape[-1],))
            return dtypes.to_float(raw, self.type).reshape(shape)
        if not copy:
            if not buf.is_host:
                raise MinigraphError(f"numpy(copy=False): tensor {describe(self)} lives in {buf!r}, not host "
                                     "memory: use torch/cupy from_dlpack(t) or t.__cuda_array_interface__")
            if self.type == dtypes.TYPE_BF16:
                raise MinigraphError(f"numpy(copy=False): tensor {describe(self)} is bf16, which numpy cannot view")
            return buf.view(self).reshape(shape)
        if buf.is_host:
            raw = buf.view(self)
        else:
            raw = buf.get(self).view(dtypes.storage_dtype(self.type))
        out = dtypes.to_float(raw, self.type) if self.type == dtypes.TYPE_BF16 else raw
        return np.array(out).reshape(shape)

    def set_data(self, arr: Any) -> "Tensor":
        """Write `arr` (numpy shape reversed(ne)) into the tensor's memory, through its strides
        (ggml_backend_tensor_set: a device tensor is written through its buffer). A quantized
        tensor gets the values quantized by ggml's reference quantizer (ggml_quantize_chunk)."""
        a = np.asarray(arr)
        if a.dtype == object or a.dtype.kind not in "fiub":
            raise MinigraphError(f"set_data: tensor {describe(self)}: numpy dtype {a.dtype} is not numeric")
        want = tuple(reversed(self.ne))
        shape4 = (1,) * (MAX_DIMS - a.ndim) + a.shape if a.ndim <= MAX_DIMS else None
        if shape4 != want:
            raise MinigraphError(f"set_data: tensor {describe(self)} expects numpy shape "
                                 f"{tuple(reversed(self.ne[: self.n_dims]))}, got {a.shape}")
        self.alloc_host()
        buf = self.root._buf
        vals = dtypes.from_float(a.reshape(want), self.type)
        if buf.is_host:
            buf.view(self)[...] = vals
        else:
            buf.set(self, np.ascontiguousarray(vals).reshape(-1).view(np.uint8))
        return self

    # -- zero-copy interop (DLPack, CUDA array interface) ----------------------------------------
    def __dlpack__(self, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Optional[bool] = None) -> Any:
        """DLPack export of the tensor's memory (no copy): torch.from_dlpack(t), np.from_dlpack(t)."""
        if copy:
            raise MinigraphError(f"__dlpack__: tensor {describe(self)}: copy=True is not offered; use t.numpy()")
        from minigraph.core.dlpack import to_dlpack

        return to_dlpack(self)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._buffer_or_fail().dlpack_device()

    @property
    def __cuda_array_interface__(self) -> dict:
        buf = self.root._buf
        if buf is None or buf.is_host:
            raise AttributeError("__cuda_array_interface__: the tensor is not in device memory")
        return buf.view(self).__cuda_array_interface__


# -- module functions, named as ggml's -------------------------------------------------------

def n_dims(t: Tensor) -> int:
    """ggml_n_dims: 1 + the index of the last dimension with ne > 1 (1 for scalars and
    vectors: ne [5, 1, 1, 1] has 1 dim, ne [5, 1, 3, 1] has 3)."""
    for i in range(MAX_DIMS - 1, 0, -1):
        if t.ne[i] > 1:
            return i + 1
    return 1


def nelements(t: Tensor) -> int:
    """ggml_nelements: ne0 * ne1 * ne2 * ne3."""
    return int(np.prod(t.ne))


def nrows(t: Tensor) -> int:
    """ggml_nrows: the number of rows of ne0 elements, ne1 * ne2 * ne3."""
    return t.ne[1] * t.ne[2] * t.ne[3]


def nbytes(t: Tensor) -> int:
    """ggml_nbytes: the bytes from the first element to the end of the last one, following nb
    (element_size + sum over i of (ne_i - 1) * nb_i); for a contiguous tensor that is
    nelements * element_size. 0 when some ne is 0."""
    return extent_bytes(t.type, t.ne, t.nb)


def element_size(t: Tensor) -> int:
    """ggml_element_size: bytes per element of t's type (4 for F32/I32, 2 for F16/BF16)."""
    return dtypes.type_size(t.type)


def row_size(type_: int, ne: int) -> int:
    """ggml_row_size: bytes of ne elements of one row (ne a multiple of the type's block length)."""
    blck = dtypes.blck_size(type_)
    if int(ne) % blck:
        raise MinigraphError(f"row_size: {ne} elements of {dtypes.type_name(type_)} are not whole blocks of {blck}")
    return dtypes.type_size(type_) * int(ne) // blck


def is_empty(t: Tensor) -> bool:
    """ggml_is_empty: whether some ne_i is 0 (the tensor holds no element)."""
    return any(n == 0 for n in t.ne)


def _is_contiguous_n(t: Tensor, n: int) -> bool:
    next_nb = dtypes.type_size(t.type)
    blck = dtypes.blck_size(t.type)
    if t.ne[0] != blck and t.nb[0] != next_nb:
        return False
    next_nb *= t.ne[0] // blck
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
    """ggml_is_contiguous: elements packed in ne order with no gaps (nb0 = element size,
    nb_i = nb_{i-1} * ne_{i-1}; dims of size 1 may have any nb)."""
    return _is_contiguous_n(t, 0)


def is_contiguous_1(t: Tensor) -> bool:
    """ggml_is_contiguous_1: contiguous for dims >= 1: rows are packed elements and dims 2, 3
    follow without gaps, but the row stride nb1 may be padded."""
    return _is_contiguous_n(t, 1)


def is_contiguous_2(t: Tensor) -> bool:
    """ggml_is_contiguous_2: contiguous for dims >= 2: each row packed, dim 3 without gaps;
    nb1 and nb2 may be padded."""
    return _is_contiguous_n(t, 2)


def is_contiguous_rows(t: Tensor) -> bool:
    """ggml_is_contiguous_rows: each row's ne0 elements are packed (nb0 = element size, or
    ne0 == 1); rows themselves may lie anywhere."""
    return t.ne[0] == 1 or t.nb[0] == dtypes.type_size(t.type)


def is_transposed(t: Tensor) -> bool:
    """ggml_is_transposed: nb0 > nb1 (e.g. a ggml_transpose view)."""
    return t.nb[0] > t.nb[1]


def is_permuted(t: Tensor) -> bool:
    """ggml_is_permuted: strides out of order, nb_i > nb_{i+1} for some i (a permute or
    transpose view)."""
    return t.nb[0] > t.nb[1] or t.nb[1] > t.nb[2] or t.nb[2] > t.nb[3]


def is_scalar(t: Tensor) -> bool:
    """ggml_is_scalar: ne == [1, 1, 1, 1]."""
    return all(n == 1 for n in t.ne)


def is_vector(t: Tensor) -> bool:
    """ggml_is_vector: ne1 == ne2 == ne3 == 1 (ne [n, 1, 1, 1])."""
    return t.ne[1] == 1 and t.ne[2] == 1 and t.ne[3] == 1


def is_matrix(t: Tensor) -> bool:
    """ggml_is_matrix: ne2 == ne3 == 1 (ne [cols, rows, 1, 1])."""
    return t.ne[2] == 1 and t.ne[3] == 1


def are_same_shape(a: Tensor, b: Tensor) -> bool:
    """ggml_are_same_shape: a.ne == b.ne in all four dims."""
    return a.ne == b.ne


def are_same_stride(a: Tensor, b: Tensor) -> bool:
    """ggml_are_same_stride: a.nb == b.nb in all four dims."""
    return a.nb == b.nb


def can_repeat(t0: Tensor, t1: Tensor) -> bool:
    """ggml_can_repeat: whether t0 tiles t1 (each t1.ne_i a multiple of t0.ne_i; an empty t0
    only tiles an empty t1)."""
    if is_empty(t0):
        return is_empty(t1)
    return all(b % a == 0 for a, b in zip(t0.ne, t1.ne))


def can_repeat_rows(t0: Tensor, t1: Tensor) -> bool:
    """ggml_can_repeat_rows: same row length ne0 and t0 tiles t1 (can_repeat)."""
    return t0.ne[0] == t1.ne[0] and can_repeat(t0, t1)


def set_name(t: Tensor, name: str) -> Tensor:
    """ggml_set_name: name t (cut to ggml's GGML_MAX_NAME - 1 characters); returns t. Names
    show in dump, the scheduler log, errors and graph files."""
    t.name = str(name)[: MAX_NAME - 1]
    return t


def get_name(t: Tensor) -> str:
    """ggml_get_name: t's name ('' when unnamed)."""
    return t.name


def format_name(t: Tensor, fmt: str, *args: Any) -> Tensor:
    """ggml_format_name: name t printf-style (fmt % args, e.g. ("layer%d.attn", 3)); returns t."""
    return set_name(t, fmt % args if args else fmt)


def set_input(t: Tensor) -> None:
    """ggml_set_input: flag t as a graph input (GGML_TENSOR_FLAG_INPUT). Recorded (graph files
    keep it); minigraph gives leafs their own memory whatever the flag."""
    t.flags |= FLAG_INPUT


def set_output(t: Tensor) -> None:
    """ggml_set_output: flag t as a graph output (GGML_TENSOR_FLAG_OUTPUT): the memory planner
    never reuses its memory for later nodes, so its value is readable after the compute."""
    t.flags |= FLAG_OUTPUT


def set_param(t: Tensor) -> None:
    """ggml_set_param: flag t as a trainable parameter (GGML_TENSOR_FLAG_PARAM). Recorded for
    ggml parity (graph files keep it); minigraph builds no backward graphs."""
    t.flags |= FLAG_PARAM
