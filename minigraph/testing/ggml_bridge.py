"""Run code written against minigraph's ggml-mirroring API on the REAL ggml (via ggml-python).

The transcription rule of minigraph applies in reverse: ``ctx.X(args...)`` calls
``ggml.ggml.ggml_X(ctx, args...)``; a returned tensor pointer comes back as a `GgmlTensor`.
Constants drop the ``GGML_`` prefix and are module attributes (``ggml_bridge.TYPE_F32``,
``ggml_bridge.TRI_TYPE_LOWER_DIAG``) with ggml's integer values.

Tensors live in one ggml context with allocated memory (``no_alloc=False``), so every tensor has
data as soon as it is created; graphs are computed on the CPU with ``ggml_graph_plan`` +
``ggml_graph_compute`` (ggml-python 0.0.45 exposes the libggml-cpu C API directly).

Caution: ggml checks its arguments with GGML_ASSERT, which aborts the whole process. Build
only graphs that ggml accepts; the bridge is a reference for tests and benchmarks, not a sandbox.
"""
from __future__ import annotations

import ctypes
import time
from typing import Any, Sequence

import numpy as np

try:
    import ggml.ggml as _g
except ImportError:  # ggml-python is an optional test dependency
    _g = None

DEFAULT_MEM_SIZE = 1 << 30        # bytes; ggml mallocs it once, pages are touched only when used
DEFAULT_GRAPH_SIZE = 1 << 15      # nodes per graph: enough for long chunked delta-net graphs

_NP_OF_TYPE = {0: np.float32, 1: np.float16, 26: np.int32, 27: np.int64}  # GGML_TYPE_F32, F16, I32, I64
_TYPE_OF_NP = {np.dtype(v): k for k, v in _NP_OF_TYPE.items()}
_BF16 = 30   # GGML_TYPE_BF16: stored as raw uint16 bits, converted on set_data / numpy
_cpu_ready = False


def available() -> bool:
    """True when ggml-python (the real ggml C library) can be imported."""
    return _g is not None


def _require() -> None:
    if _g is None:
        raise ImportError("ggml-python is not installed (pip install 'minigraph[ggml]')")


def __getattr__(name: str) -> Any:
    """Constants without their prefix: TYPE_F32, TRI_TYPE_LOWER, OP_CUMSUM ... (ggml's values)."""
    if _g is not None and hasattr(_g, "GGML_" + name):
        return getattr(_g, "GGML_" + name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def row_size(type: int, n: int) -> int:
    """ggml_row_size: bytes of n elements of `type`."""
    _require()
    return int(_g.ggml_row_size(type, n))


def quantize_chunk(type_: int, x: np.ndarray) -> np.ndarray:
    """ggml_quantize_chunk(type_, rows x (nrows, n) f32, no imatrix) -> raw blocks (nrows, row bytes).

    Q8_1 and Q8_K (dot-product types that ggml_quantize_chunk does not take) go through the
    CPU type traits' from_float, the quantizer ggml's MUL_MAT applies to src1."""
    _require()
    x = np.ascontiguousarray(x, np.float32)
    nrows, n = x.shape
    rs = int(_g.ggml_row_size(type_, n))
    out = np.zeros((nrows, rs), np.uint8)
    fptr = ctypes.POINTER(ctypes.c_float)
    if type_ in (9, 15):  # GGML_TYPE_Q8_1, GGML_TYPE_Q8_K
        from_float = _g.ggml_get_type_traits_cpu(type_).contents.from_float
        for r in range(nrows):
            from_float(x[r].ctypes.data_as(fptr), out[r].ctypes.data_as(ctypes.c_void_p), n)
    else:
        _g.ggml_quantize_chunk(type_, x.ctypes.data_as(fptr), out.ctypes.data_as(ctypes.c_void_p), 0, nrows, n, None)
    return out


def dequantize_rows(type_: int, raw: np.ndarray) -> np.ndarray:
    """The type traits' to_float over raw blocks (nrows, row bytes) -> (nrows, n) f32."""
    _require()
    raw = np.ascontiguousarray(raw, np.uint8)
    tr = _g.ggml_get_type_traits(type_).contents
    if not tr.to_float:
        raise TypeError(f"ggml_bridge: type {type_} has no to_float")
    n = raw.shape[-1] // tr.type_size * tr.blck_size
    out = np.zeros((raw.shape[0], n), np.float32)
    tr.to_float(raw.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
    return out


def _unwrap(x: Any) -> Any:
    return x._ptr if isinstance(x, GgmlTensor) else x


class GgmlTensor:
    """A ggml tensor: `ne`, `nb` (bytes) as 4-tuples of ints, `type`, `op` (ggml's op name)."""

    def __init__(self, ptr: Any, owner: "GgmlContext") -> None:
        self._ptr = ptr
        self._owner = owner          # keeps the ggml context (and the data) alive

    @property
    def _t(self):
        return self._ptr.contents

    @property
    def ne(self) -> tuple[int, int, int, int]:
        return tuple(int(x) for x in self._t.ne)

    @property
    def nb(self) -> tuple[int, int, int, int]:
        return tuple(int(x) for x in self._t.nb)

    @property
    def type(self) -> int:
        return int(self._t.type)

    @property
    def op(self) -> str:
        return _g.ggml_op_name(self._t.op).decode()

    @property
    def op_desc(self) -> str:
        """ggml_op_desc: like `op`, but names the unary op (EXP, NEG) instead of UNARY."""
        return _g.ggml_op_desc(self._ptr).decode()

    @property
    def name(self) -> str:
        return _g.ggml_get_name(self._ptr).decode()

    @name.setter
    def name(self, value: str) -> None:
        _g.ggml_set_name(self._ptr, value.encode())

    @property
    def src(self) -> list["GgmlTensor | None"]:
        return [GgmlTensor(p, self._owner) if p else None for p in self._t.src]

    @property
    def view_src(self) -> "GgmlTensor | None":
        p = self._t.view_src
        return GgmlTensor(p, self._owner) if p else None

    @property
    def view_offs(self) -> int:
        return int(self._t.view_offs)

    @property
    def n_dims(self) -> int:
        return int(_g.ggml_n_dims(self._ptr))

    def _strided(self) -> np.ndarray:
        """A (ne3, ne2, ne1, ne0) numpy view of the tensor's memory with strides (nb3, nb2, nb1, nb0)."""
        np_type = np.uint16 if self.type == _BF16 else _NP_OF_TYPE.get(self.type)
        if np_type is None:
            raise TypeError(f"ggml_bridge: type {self.type} of tensor {self.name!r} has no numpy dtype")
        ne, nb = self.ne, self.nb
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + nb[0] if min(ne) > 0 else 0
        addr = _g.ggml_get_data(self._ptr)
        buf = (ctypes.c_uint8 * span).from_address(addr) if span else bytearray()
        return np.ndarray(tuple(reversed(ne)), np_type, buf, 0, tuple(reversed(nb)))

    def numpy(self) -> np.ndarray:
        """A copy in logical element order, shape reversed(ne[:n_dims]), whatever nb is
        (a quantized tensor is dequantized with its type traits' to_float)."""
        if _g.ggml_is_quantized(self.type):
            ne, nb = self.ne, self.nb
            rs = int(_g.ggml_row_size(self.type, ne[0]))
            span = sum((n - 1) * s for n, s in zip(ne[1:], nb[1:])) + rs if min(ne) > 0 else 0
            buf = (ctypes.c_uint8 * span).from_address(_g.ggml_get_data(self._ptr)) if span else bytearray()
            raw = np.ndarray((ne[3], ne[2], ne[1], rs), np.uint8, buf, 0, (nb[3], nb[2], nb[1], 1))
            vals = dequantize_rows(self.type, raw.reshape(-1, rs))
            return vals.reshape(tuple(reversed(self.ne[:self.n_dims])))
        out = self._strided().copy()
        if self.type == _BF16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out.reshape(tuple(reversed(self.ne[:self.n_dims])))

    def set_data(self, arr: np.ndarray) -> None:
        """Write `arr` (any shape with ne0*ne1*ne2*ne3 elements, logical order) into the tensor."""
        dst = self._strided()
        arr = np.asarray(arr)
        if arr.size != dst.size:
            raise ValueError(f"ggml_bridge: set_data of {arr.shape} into tensor with ne {self.ne}")
        if self.type == _BF16:
            from minigraph.core.dtypes import f32_to_bf16

            arr = f32_to_bf16(np.asarray(arr, np.float32))
        dst[...] = arr.reshape(dst.shape).astype(dst.dtype, copy=False)

    def __repr__(self) -> str:
        return f"GgmlTensor(op={self.op}, ne={self.ne}, nb={self.nb}, type={self.type}, name={self.name!r})"


class GgmlContext:
    """A ggml context; `ctx.X(*args)` calls ggml_X(ctx, *args) of the real library."""

    def __init__(self, mem_size: int = DEFAULT_MEM_SIZE) -> None:
        _require()
        params = _g.ggml_init_params(mem_size=mem_size, mem_buffer=None, no_alloc=False)
        self._ctx = _g.ggml_init(params)
        if not self._ctx:
            raise MemoryError(f"ggml_init could not allocate {mem_size} bytes")

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) and _g is not None:
            _g.ggml_free(self._ctx)
            self._ctx = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = getattr(_g, "ggml_" + name, None)
        if fn is None:
            raise AttributeError(f"ggml has no function ggml_{name}")

        def call(*args: Any) -> Any:
            res = fn(self._ctx, *(_unwrap(a) for a in args))
            if isinstance(res, ctypes.POINTER(_g.ggml_tensor)):
                if not res:
                    raise RuntimeError(f"ggml_{name} returned NULL")
                return GgmlTensor(res, self)
            return res

        call.__name__ = name
        return call

    # ggml functions that take no context, called as the case builders call minigraph's
    def flash_attn_ext_add_sinks(self, a: GgmlTensor, sinks: GgmlTensor) -> None:
        """ggml_flash_attn_ext_add_sinks(a, sinks) (no context in ggml)."""
        _g.ggml_flash_attn_ext_add_sinks(a._ptr, sinks._ptr)

    def flash_attn_ext_set_prec(self, a: GgmlTensor, prec: int) -> None:
        """ggml_flash_attn_ext_set_prec(a, prec) (no context in ggml)."""
        _g.ggml_flash_attn_ext_set_prec(a._ptr, prec)

    def soft_max_add_sinks(self, a: GgmlTensor, sinks: GgmlTensor) -> None:
        """ggml_soft_max_add_sinks(a, sinks) (no context in ggml)."""
        _g.ggml_soft_max_add_sinks(a._ptr, sinks._ptr)

    def flash_attn_ext_set_prec(self, a: GgmlTensor, prec: int) -> None:
        """ggml_flash_attn_ext_set_prec(a, prec) (no context in ggml)."""
        _g.ggml_flash_attn_ext_set_prec(a._ptr, prec)

    def from_numpy(self, arr: np.ndarray, type_: Any = None) -> GgmlTensor:
        """New tensor holding a copy of `arr`: numpy shape (d, c, b, a) is ggml ne [a, b, c, d].

        float32, float16 and int32 keep their type; float64 is stored as F32. A quantized
        `type_` quantizes the values with ggml_quantize_chunk (minigraph's from_numpy twin).
        """
        arr = np.asarray(arr)
        if type_ is not None and _g.ggml_is_quantized(type_):
            rows = np.asarray(arr, np.float32).reshape(-1, arr.shape[-1])
            return self.from_block_bytes(quantize_chunk(type_, rows).reshape(*arr.shape[:-1], -1), type_)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.dtype not in _TYPE_OF_NP or not 1 <= max(arr.ndim, 1) <= 4:
            raise TypeError(f"ggml_bridge.from_numpy: unsupported array {arr.dtype} {arr.shape}")
        ne = list(reversed(arr.shape)) or [1]
        t = getattr(self, f"new_tensor_{len(ne)}d")(_TYPE_OF_NP[arr.dtype], *ne)
        t.set_data(arr)
        return t

    def from_block_bytes(self, raw: np.ndarray, type_: int) -> GgmlTensor:
        """New quantized tensor holding the raw blocks `raw`, numpy shape (..., row bytes)."""
        raw = np.ascontiguousarray(raw, np.uint8)
        tr = _g.ggml_get_type_traits(type_).contents
        ne = [raw.shape[-1] // tr.type_size * tr.blck_size] + list(reversed(raw.shape[:-1]))
        t = getattr(self, f"new_tensor_{len(ne)}d")(type_, *ne)
        ctypes.memmove(_g.ggml_get_data(t._ptr), raw.ctypes.data, raw.nbytes)
        return t

    def _graph(self, outputs: Sequence[GgmlTensor], size: int):
        gf = _g.ggml_new_graph_custom(self._ctx, size, False)
        for t in outputs:
            _g.ggml_build_forward_expand(gf, t._ptr)
        return gf

    def _plan(self, gf, n_threads: int):
        global _cpu_ready
        if not _cpu_ready:
            _g.ggml_cpu_init()
            _cpu_ready = True
        plan = _g.ggml_graph_plan(gf, n_threads, None)
        work = None
        if plan.work_size > 0:
            work = np.empty(plan.work_size, np.uint8)   # kept alive by the caller
            plan.work_data = work.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return plan, work

    @staticmethod
    def _run(gf, plan) -> None:
        status = _g.ggml_graph_compute(gf, ctypes.byref(plan))
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute failed with status {status}")


def _owner(outputs: Sequence[GgmlTensor]) -> GgmlContext:
    owners = {id(t._owner): t._owner for t in outputs}
    if len(owners) != 1:
        raise ValueError("ggml_bridge: outputs must come from one GgmlContext")
    return next(iter(owners.values()))


def compute(outputs: GgmlTensor | Sequence[GgmlTensor], n_threads: int = 2,
            graph_size: int = DEFAULT_GRAPH_SIZE) -> list[np.ndarray]:
    """Build one forward graph over `outputs`, compute it on ggml's CPU backend, return numpy copies."""
    outputs = [outputs] if isinstance(outputs, GgmlTensor) else list(outputs)
    ctx = _owner(outputs)
    gf = ctx._graph(outputs, graph_size)
    plan, work = ctx._plan(gf, n_threads)
    ctx._run(gf, plan)
    del work
    return [t.numpy() for t in outputs]


def time_compute(outputs: GgmlTensor | Sequence[GgmlTensor], n_threads: int = 2, repeat: int = 10,
                 graph_size: int = DEFAULT_GRAPH_SIZE) -> float:
    """Mean seconds per compute: graph and plan built once, one warm-up run, then `repeat` timed runs."""
    outputs = [outputs] if isinstance(outputs, GgmlTensor) else list(outputs)
    ctx = _owner(outputs)
    gf = ctx._graph(outputs, graph_size)
    plan, work = ctx._plan(gf, n_threads)
    ctx._run(gf, plan)
    repeat = max(1, repeat)
    t0 = time.perf_counter()
    for _ in range(repeat):
        ctx._run(gf, plan)
    elapsed = time.perf_counter() - t0
    del work
    return elapsed / repeat
