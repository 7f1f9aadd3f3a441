"""The graph builder: `ctx = mg.Context()`, then ggml's functions as methods (`ctx.cumsum(a)`).

Every op method is inherited from OpMethods (minigraph/core/op_methods.py), generated from the op
registry by `python -m minigraph.tools.gen_api`: each calls the builder registered for ggml_X, so
ops are defined once, in their own module, and still have real signatures and docstrings.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from minigraph.core import dtypes
from minigraph.core.errors import MinigraphError
from minigraph.core.buffer import DLPACK_CPU, DLPACK_IMPORTERS, wrap_host_array
from minigraph.core.op_methods import OpMethods
from minigraph.core.tensor import MAX_DIMS, Tensor, extent_bytes

if TYPE_CHECKING:
    from minigraph.core.graph import Graph


class Context(OpMethods):
    """Owns the tensors of one graph-building session (ggml_context without a memory pool)."""

    def __init__(self, mem_size: int = 0, no_alloc: bool = False) -> None:
        # ggml sizes its pool up front; minigraph allocates per tensor, so both are advisory
        self.mem_size = mem_size
        self.no_alloc = no_alloc
        self.tensors: list[Tensor] = []

    def __getattr__(self, name: str) -> Any:
        # reached only when normal lookup fails: every op is a real method of OpMethods. A builder
        # registered after op_methods.py was generated gets this error, never a silent lambda.
        from minigraph.core.registry import API

        if name in API:
            raise AttributeError(f"Context.{name}: ggml_{name} has a registered builder but no method; "
                                 "minigraph/core/op_methods.py is stale: run `python -m minigraph.tools.gen_api`")
        raise AttributeError(f"'Context' object has no attribute '{name}' (minigraph has no op ggml_{name})")

    # -- tensors ------------------------------------------------------------------------------
    def new_tensor(self, type_: int, n_dims: int, ne: Sequence[int]) -> Tensor:
        """ggml_new_tensor: a leaf of `type_` (mg.TYPE_F32, ...) with ne = ne[:n_dims] padded with
        1s to 4 dims (ne0 fastest), contiguous strides, and no memory until it gets data
        (set_data) or a plan gives it some. Sizes must be integers >= 0."""
        if not 1 <= n_dims <= MAX_DIMS or len(ne) < n_dims:
            raise MinigraphError(f"new_tensor: n_dims must be 1..4 with that many sizes, got {n_dims}, {list(ne)}")
        for i, n in enumerate(ne[:n_dims]):
            # int(2.5) would silently truncate: only integral sizes (ints, integral floats)
            integral = (isinstance(n, (int, np.integer)) or (isinstance(n, (float, np.floating)) and float(n).is_integer()))
            if isinstance(n, (bool, np.bool_)) or not integral:
                raise MinigraphError(f"new_tensor: ne{i} must be an integer, got {type(n).__name__} {n!r:.40} "
                                     f"(ne={list(ne)[:n_dims]})")
        full = [int(n) for n in ne[:n_dims]] + [1] * (MAX_DIMS - n_dims)
        if any(n < 0 for n in full):
            raise MinigraphError(f"new_tensor: negative size in ne={full}")
        return self._add(Tensor(self, dtypes.check_type(type_), full))

    def new_tensor_1d(self, type_: int, ne0: int) -> Tensor:
        """ggml_new_tensor_1d: a leaf of ne [ne0, 1, 1, 1] (see new_tensor)."""
        return self.new_tensor(type_, 1, [ne0])

    def new_tensor_2d(self, type_: int, ne0: int, ne1: int) -> Tensor:
        """ggml_new_tensor_2d: a leaf of ne [ne0, ne1, 1, 1]: ne1 rows of ne0 elements, numpy shape
        (ne1, ne0) (see new_tensor)."""
        return self.new_tensor(type_, 2, [ne0, ne1])

    def new_tensor_3d(self, type_: int, ne0: int, ne1: int, ne2: int) -> Tensor:
        """ggml_new_tensor_3d: a leaf of ne [ne0, ne1, ne2, 1], numpy shape (ne2, ne1, ne0)."""
        return self.new_tensor(type_, 3, [ne0, ne1, ne2])

    def new_tensor_4d(self, type_: int, ne0: int, ne1: int, ne2: int, ne3: int) -> Tensor:
        """ggml_new_tensor_4d: a leaf of ne [ne0, ne1, ne2, ne3], numpy shape (ne3, ne2, ne1, ne0)."""
        return self.new_tensor(type_, 4, [ne0, ne1, ne2, ne3])

    def new_f32(self, value: float) -> Tensor:
        """ggml_new_f32: an F32 leaf of ne [1, 1, 1, 1] holding `value`."""
        return self.new_tensor_1d(dtypes.TYPE_F32, 1).set_data(np.array([value], np.float32))

    def new_i32(self, value: int) -> Tensor:
        """ggml_new_i32: an I32 leaf of ne [1, 1, 1, 1] holding `value`."""
        return self.new_tensor_1d(dtypes.TYPE_I32, 1).set_data(np.array([value], np.int32))

    def from_numpy(self, arr: Any, type_: Optional[int] = None, copy: bool = True) -> Tensor:
        """A leaf over `arr`: numpy shape (d, c, b, a) becomes ne = [a, b, c, d].

        copy=True (ggml's semantics: the data belongs to the context) copies; copy=False wraps a
        C-contiguous, aligned, writeable array as the tensor's memory, so a change to `arr` between
        two computes changes the result, and a node that writes this tensor writes `arr`.

        A quantized `type_` (mg.TYPE_Q4_0, ...): float values are quantized with ggml's reference
        quantizer; a uint8 array is taken as the raw blocks, numpy shape (..., row bytes)."""
        a = np.asarray(arr)
        if a.dtype == object or a.dtype.kind not in "fiub":
            raise MinigraphError(f"from_numpy: numpy dtype {a.dtype} is not numeric")
        if a.ndim > MAX_DIMS:
            raise MinigraphError(f"from_numpy: ggml tensors have at most 4 dims, got shape {a.shape}")
        t = type_ if type_ is not None else dtypes.type_from_numpy(a.dtype)
        if dtypes.is_quantized(dtypes.check_type(t, "from_numpy")) and a.dtype == np.uint8:
            return self._from_block_bytes(a, t, copy)
        ne = list(reversed(a.shape)) or [1]
        if copy:
            return self.new_tensor(t, max(len(ne), 1), ne).set_data(a.reshape(a.shape or (1,)))
        if a.dtype != dtypes.storage_dtype(t):
            raise MinigraphError(f"from_numpy(copy=False): numpy dtype {a.dtype} is not the storage of "
                                 f"{dtypes.type_name(t)} ({dtypes.storage_dtype(t)}); convert it or pass copy=True")
        leaf = self.new_tensor(t, max(len(ne), 1), ne)
        leaf._buf, leaf._offs = wrap_host_array(a), 0
        return leaf

    def _from_block_bytes(self, a: np.ndarray, type_: int, copy: bool) -> Tensor:
        ts, blck = dtypes.type_size(type_), dtypes.blck_size(type_)
        if a.ndim == 0 or a.ndim > MAX_DIMS or a.shape[-1] % ts:
            raise MinigraphError(f"from_numpy: raw {dtypes.type_name(type_)} rows must be whole {ts}-byte blocks "
                                 f"along the last axis, got shape {a.shape}")
        ne = [a.shape[-1] // ts * blck] + list(reversed(a.shape[:-1]))
        leaf = self.new_tensor(type_, len(ne), ne)
        if copy:
            leaf.alloc_host()
            leaf.root._buf.view(leaf)[...] = a.reshape(leaf.root._buf.view(leaf).shape)
        else:
            leaf._buf, leaf._offs = wrap_host_array(a), 0
        return leaf

    def from_dlpack(self, obj: Any) -> Tensor:
        """A leaf sharing the memory of any DLPack producer (numpy, torch, cupy, a minigraph Tensor).

        Host memory is wrapped like from_numpy(copy=False); CUDA memory is wrapped by the CUDA
        backend (create it first with mg.backend_cuda_init(device)), with no host round trip."""
        if not hasattr(obj, "__dlpack_device__"):
            raise MinigraphError(f"from_dlpack: {type(obj).__name__} is not a DLPack producer (no __dlpack_device__)")
        dev_type, dev_id = (int(x) for x in obj.__dlpack_device__())
        if dev_type == DLPACK_CPU:
            try:
                a = np.from_dlpack(obj)
            except (BufferError, TypeError, RuntimeError) as e:
                raise MinigraphError(f"from_dlpack: numpy cannot import this {type(obj).__name__}: {e}") from None
            t = dtypes.type_from_numpy(a.dtype, "from_dlpack")
            if a.ndim > MAX_DIMS or a.dtype != dtypes.storage_dtype(t):
                raise MinigraphError(f"from_dlpack: need at most 4 dims of a ggml type, got {a.dtype} shape {a.shape}")
            leaf = self.new_tensor(t, max(a.ndim, 1), list(reversed(a.shape)) or [1])
            leaf._buf, leaf._offs = wrap_host_array(a, "from_dlpack", writable_import=True), 0
            return leaf
        importer = DLPACK_IMPORTERS.get(dev_type)
        if importer is None:
            raise MinigraphError(f"from_dlpack: memory on DLPack device type {dev_type} (id {dev_id}) needs a backend "
                                 "that imports it: create it first (mg.backend_cuda_init(device) for CUDA)")
        return importer(self, obj, dev_id)

    # -- nodes (used by op builders) ------------------------------------------------------------
    def new_node(self, op: Any, type_: int, ne: Sequence[int], src: Sequence[Tensor],
                 params: Optional[dict] = None, nb: Optional[Sequence[int]] = None,
                 view_src: Optional[Tensor] = None, view_offs: int = 0) -> Tensor:
        """Record a node of `op` (an OpDef or its name). Views pass view_src/view_offs and nb."""
        name = op if isinstance(op, str) else op.name
        t = Tensor(self, type_, ne, nb, op=name, src=src, op_params=params, view_src=view_src,
                   view_offs=view_offs)
        if view_src is not None:
            need = t.view_offs + extent_bytes(t.type, t.ne, t.nb)
            have = extent_bytes(t.root.type, t.root.ne, t.root.nb)
            if need > have:
                raise MinigraphError(
                    f"{name}: view reaches byte {need} of a {have}-byte tensor '{t.root.name}' "
                    f"(ne={list(t.root.ne)}); offset {t.view_offs}, view ne={list(t.ne)} nb={list(t.nb)}")
        return self._add(t)

    def _add(self, t: Tensor) -> Tensor:
        self.tensors.append(t)
        return t

    # -- graphs -------------------------------------------------------------------------------
    def new_graph(self, size: int = 0, grads: bool = False) -> "Graph":
        """ggml_new_graph: an empty graph; fill it with mg.build_forward_expand(gf, t). `size`
        (ggml's node capacity) is advisory: the graph grows as needed; grads is accepted for
        ggml parity (no backward graphs)."""
        from minigraph.core.graph import Graph

        return Graph(self, size)

    def new_graph_custom(self, size: int, grads: bool = False) -> "Graph":
        """ggml_new_graph_custom: new_graph with an explicit capacity (advisory here)."""
        return self.new_graph(size, grads)


def init(params: Any = None) -> Context:
    """ggml_init: the parameters (mem_size, no_alloc) are accepted and advisory."""
    if isinstance(params, dict):
        return Context(params.get("mem_size", 0), params.get("no_alloc", False))
    return Context()
