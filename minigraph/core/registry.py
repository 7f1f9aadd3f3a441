"""The op registry: every op is one OpDef; every other layer looks ops up here.

An op module declares its OpDef (ggml name, ordered params, numpy float64 reference, cost
estimate) and the ggml-named builder functions (`ctx.cumsum(...)`) that validate inputs and
record the node. Backends attach kernels with `register_kernel`; the dump, the conformance cases
and `supports_op` read the same tables. Nothing outside this module keeps a list of ops.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from minigraph.core import dtypes


@dataclass(frozen=True)
class OpDef:
    """One ggml op.

    name:      ggml's upper-case name (GGML_OP_CUMSUM -> "CUMSUM"); unary ops use their unary name.
    family:    op family; CPU kernels for a family live in backends/cpu/<family>.py.
    params:    ordered op_params keys: kernels receive them positionally after the arrays.
    float_params: the params that are floats (kernels get float64); the others are ints.
    reference: fn(node, *srcs, **params) -> float64 array of shape (ne3, ne2, ne1, ne0), where
               each src is the float64 (int64 for I32) array of that source, same layout rule.
    is_view:   the node only relabels memory (VIEW, RESHAPE, PERMUTE, TRANSPOSE): no compute.
    inplace_ok: the output may share memory with src[0] (elementwise, same shape and type).
    shape_only: src slots whose values are never read (FILL's input, CPY's destination): a
               leaf used only there needs no data.
    written_srcs: src slots the node writes into (GATED_DELTA_NET's state destination, when the
               node has that source): the scheduler runs the node where that memory lives and
               never copies it in.
    written_at: fn(node, slot) -> the byte offset in the node's result whose bytes a written
               source holds instead (GATED_DELTA_NET: its snapshot slot 0), so conformance reads
               them there.
    byte_params: params counted in bytes of the node's type (rescaled when a backend computes
               an f16/bf16 node in f32).
    flops:     fn(node) -> float operations, for profiles and perf mode.
    rebuild:   fn(ctx, spec, *srcs) -> Tensor: the node made again through its builder from a
               graph file's record (`spec` is a NodeSpec: the record's type, ne, nb, op_params,
               view_offs), so a loaded node passes the same checks as a built one; the loader
               then refuses any difference between the rebuilt node and the record.
    param_defaults: values of params added after graph files were first written (GATED_DELTA_NET's
               bcast): a record without them loads as if it held these.
    sample:    fn(node, i, rng) -> values for source i (numpy order, reversed ne) that keep the
               op well-posed when conformance runs it on random data: indices in range, a
               positive log argument, a well-conditioned triangle, stable gates; None (or no
               sample) for the default, `default_sample`. A case exported from a model's graph
               (minigraph.tools.graph_ops) has only leaves as inputs, so this is all it gets.
    """

    name: str
    family: str
    reference: Optional[Callable[..., np.ndarray]]
    params: tuple[str, ...] = ()
    float_params: tuple[str, ...] = ()
    is_view: bool = False
    inplace_ok: bool = False
    shape_only: tuple[int, ...] = ()
    written_srcs: tuple[int, ...] = ()
    written_at: Optional[Callable[[Any, int], int]] = None
    byte_params: tuple[str, ...] = ()
    flops: Callable[[Any], float] = field(default=lambda node: float(np.prod(node.ne)))
    doc: str = ""
    rebuild: Optional[Callable[..., Any]] = None
    sample: Optional[Callable[[Any, int, np.random.Generator], Optional[np.ndarray]]] = None
    param_defaults: dict = field(default_factory=dict)

    def param_values(self, node: Any, byte_scale: int = 1) -> tuple:
        """The node's params in kernel order, typed as the kernels expect; byte params are
        multiplied by `byte_scale` (f32 size / the node type's size when computed in f32)."""
        return tuple(float(node.op_params[p]) if p in self.float_params
                     else int(node.op_params[p]) * (byte_scale if p in self.byte_params else 1)
                     for p in self.params)


# op_params key of a node whose effect another node performs (a CPY into the recurrent cache whose
# GATED_DELTA_NET writes the state there itself: passes/gdn_state_write.py): backends skip it; the
# reference engine runs it as written (the same values)
WRITTEN_BY = "written_by"


def written_by(node: Any) -> Optional[str]:
    """The op that already writes this node's memory (backends then skip the node), or None."""
    return node.op_params.get(WRITTEN_BY) if node.op_params else None


def runs_kernel(node: Any) -> bool:
    """Whether a backend runs a kernel for this node: not for a view (it only relabels memory),
    not for a written_by node (its producer wrote its memory)."""
    return not OPS[node.op].is_view and not written_by(node)


def default_sample(t: Any, rng: np.random.Generator) -> np.ndarray:
    """Uniform [-1, 1) floats, integers in [0, 2) (the random inputs of `compare` and `dump`),
    numpy order."""
    shape = tuple(reversed(t.ne))
    if t.type in (dtypes.TYPE_I32, dtypes.TYPE_I64):
        return rng.integers(0, 2, size=shape)
    return rng.uniform(-1.0, 1.0, size=shape)


def uniform_sample(lo: float, hi: float, slots: tuple[int, ...] = (0,)) -> Callable[..., Optional[np.ndarray]]:
    """An OpDef.sample drawing sources `slots` uniformly from [lo, hi) (the others: the default)."""
    def sample(node: Any, i: int, rng: np.random.Generator) -> Optional[np.ndarray]:
        return rng.uniform(lo, hi, size=tuple(reversed(node.src[i].ne))) if i in slots else None
    return sample


@dataclass(frozen=True)
class NodeSpec:
    """What a graph file says about a node besides its op and sources (OpDef.rebuild's input).

    type, ne, nb: ggml's (ne in elements, nb in bytes); params: the record's op_params;
    view_offs: the absolute byte offset into the storage root (ggml's view_offs);
    inplace: the record has a view_src although its op is not a view (an _inplace builder, CPY)."""

    type: int
    ne: tuple
    nb: tuple
    params: dict
    view_offs: int
    inplace: bool

    def offset_in(self, parent: Any) -> int:
        """view_offs relative to `parent` (a view builder's `offset` argument)."""
        return self.view_offs - (parent.view_offs if parent.view_src is not None else 0)


OPS: dict[str, OpDef] = {}
API: dict[str, Callable[..., Any]] = {}
# BUILDER_OP[builder name] -> the OpDef name of the node it records, where the name does not say
# it (gated_delta_net_attn records a VIEW); the docs generator reads it (minigraph.tools.gen_api)
BUILDER_OP: dict[str, str] = {}
# KERNELS[backend][op name] -> Kernel
KERNELS: dict[str, dict[str, "Kernel"]] = {}
# QUANT_KERNELS[backend][op name] -> Kernel for nodes that read or write a block-quantized tensor
QUANT_KERNELS: dict[str, dict[str, "Kernel"]] = {}
# QUANT_PROGRAMS[backend][op name] -> the same path in the form a compiled executor runs (CPU)
QUANT_PROGRAMS: dict[str, dict[str, "Kernel"]] = {}


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise RuntimeError(f"op {op.name} registered twice")
    OPS[op.name] = op
    return op


def builder(*names: str, op: Optional[str] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Expose a builder as ctx.<name>(...) for each ggml name (ggml_<name> without its prefix).

    `op`: the OpDef name of the node the builder records, when the builder's name does not start
    with it (the API docs group builders by op: minigraph.tools.gen_api). Context gets one real
    method per name from the generated minigraph/core/op_methods.py: rerun
    `python -m minigraph.tools.gen_api` after adding or changing a builder.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            if name in API:
                raise RuntimeError(f"builder {name} registered twice")
            API[name] = fn
            if op is not None:
                BUILDER_OP[name] = op
        return fn

    return deco


@dataclass(frozen=True)
class Kernel:
    """A backend's implementation of one op.

    fn:       the kernel (backend-specific calling convention).
    supports: optional fn(node) -> None if the node is fine, else a reason string.
    index_slots: tensor slots (0 = dst, 1.. = srcs) that hold I32/I64 indices rather than floats.
    storage_slots: tensor slots the kernel reads (and writes) in their storage type: f32 as f32,
              f16/bf16 as their raw 16 bits, passed as strided views with each slot's type code
              appended to the arguments after the op's params (no f32 copies); CPU only.
    extra:    constant arguments passed after the op's params (e.g. the scalar function of a
              shared unary kernel); each must be a module-level object of the kernel's module.
    pick:     optional fn(node) -> the kernel for this node, when the op has several forms chosen
              from its shapes (GATED_DELTA_NET: decode, recurrence, chunked): a plan then compiles
              only the form it runs, not every form behind a run-time branch.
    """

    fn: Any
    supports: Optional[Callable[[Any], Optional[str]]] = None
    index_slots: tuple[int, ...] = ()
    extra: tuple = ()
    storage_slots: tuple[int, ...] = ()
    pick: Optional[Callable[[Any], Any]] = None

    def for_node(self, node: Any) -> Any:
        """The kernel that runs `node` (pick's choice, else fn)."""
        return self.fn if self.pick is None else self.pick(node)


def register_kernel(op: str, backend: str, fn: Any, supports: Optional[Callable[[Any], Optional[str]]] = None,
                    index_slots: tuple[int, ...] = (), extra: tuple = (),
                    storage_slots: tuple[int, ...] = (),
                    pick: Optional[Callable[[Any], Any]] = None) -> None:
    """Attach `backend`'s kernel `fn` to op `op` (see Kernel for the other fields)."""
    if op not in OPS:
        raise RuntimeError(f"kernel for unknown op {op}")
    table = KERNELS.setdefault(backend, {})
    if op in table:
        raise RuntimeError(f"{backend} kernel for {op} registered twice")
    table[op] = Kernel(fn, supports, index_slots, extra, storage_slots, pick)


def kernels_for(backend: str) -> dict[str, Kernel]:
    return KERNELS.get(backend, {})


def register_quant_kernel(op: str, backend: str, fn: Any,
                          supports: Optional[Callable[[Any], Optional[str]]] = None,
                          program: Optional[Kernel] = None) -> None:
    """A backend's path for nodes of `op` with a block-quantized tensor (Q4_0 ... Q8_K) among dst
    and srcs; a node without one keeps the op's plain kernel. The calling convention is the
    backend's (the CPU backend: fn(node, build, dst, *srcs) with quantized tensors as raw row
    bytes). A backend without an entry refuses such nodes in supports_op. `program`: the same
    path as a Kernel its compiled executor can run (CPU: quantized tensors in storage slots),
    used for the nodes it fits; `fn` runs the others."""
    if op not in OPS:
        raise RuntimeError(f"quantized kernel for unknown op {op}")
    table = QUANT_KERNELS.setdefault(backend, {})
    if op in table:
        raise RuntimeError(f"{backend} quantized kernel for {op} registered twice")
    table[op] = Kernel(fn, supports)
    if program is not None:
        QUANT_PROGRAMS.setdefault(backend, {})[op] = program


def quant_kernels_for(backend: str) -> dict[str, Kernel]:
    return QUANT_KERNELS.get(backend, {})


def quant_programs_for(backend: str) -> dict[str, Kernel]:
    return QUANT_PROGRAMS.get(backend, {})
