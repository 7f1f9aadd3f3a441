"""How CPU kernels are compiled: each kernel once serial and once parallel, cached on disk.

A kernel is written once with `prange` for its outer loop. `@kernel` compiles it twice: a serial
build (prange runs as range; ~10 ns to call) for the small nodes that dominate big graphs, and a
parallel build for nodes big enough to repay a thread-pool launch (~1 us). The executor picks one
per node at plan time. The serial build is a renamed copy of the function so that the two builds
get separate entries in Numba's on-disk cache.
"""
from __future__ import annotations

import functools
import hashlib
import os
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

import llvmlite.binding as llb
import numpy as np
import numba
from llvmlite import ir
from numba import types as nbtypes
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from minigraph.core.flags import cache_dir

JIT_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")


@functools.lru_cache(maxsize=None)
def kernels_fingerprint() -> str:
    """A hash of every kernel source file (backends/**/*.py) and the Numba version.

    Numba's disk cache checks only the cached function's own file, but a generated program
    compiles the kernels it calls into itself: its cache key must change whenever any kernel
    source does, or a stale program would run against new kernels."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha1(numba.__version__.encode())
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:16]


# Numba keys a cached kernel on its own file only, so a kernel that inlines scalar_math (or a
# program that inlines kernels) would survive an edit of what it calls. Keep every compiled
# kernel under a folder named after the fingerprint of all kernel sources instead; this also
# gives read-only installs a writable cache. An explicit NUMBA_CACHE_DIR is respected.
if not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = os.path.join(cache_dir(), "numba", kernels_fingerprint())


_helper_symbols: set[str] = set()


class Helper:
    """A kernel's heavy callee, called through its native entry point instead of compiled into
    the kernel. Numba compiles a callee's code again inside every caller (and again inside a
    prange's outlined loop): the GDN chunk step costs 3.7 s on its own and 3.4 s more inside
    the chunked form. Called by address it compiles once, and in a different compile process
    than its caller (compile_pool). The kernel calls `helper.call(*args)`; at run time that reads
    the address from a process-wide int64 cell registered under the symbol
    `minigraph_helper.<module>.<name>` (registered at import, so a kernel loaded from the disk
    cache links against it too). `load()` compiles the helper for `signature` and fills the cell;
    kernel_address loads a kernel's helpers (DualKernel.helpers) first. A call before `load()`
    raises instead of jumping to address 0.

    `signature`: the argument types the helper is compiled for. A kernel may pass arrays of any
    layout where it says 'A' (the array structs are the same; only the static layout differs)
    and any integer where it says int64."""

    def __init__(self, dispatcher: Any, signature: tuple) -> None:
        py = dispatcher.py_func
        self.dispatcher, self.signature = dispatcher, tuple(signature)
        self.name = f"{py.__module__}.{py.__qualname__}"
        self.symbol = f"minigraph_helper.{self.name}"
        if self.symbol in _helper_symbols:   # a second cell under one symbol: callers would mix them
            raise RuntimeError(f"helper {self.name} registered twice")
        _helper_symbols.add(self.symbol)
        self._cell = np.zeros(1, np.int64)
        llb.add_symbol(self.symbol, self._cell.ctypes.data)
        self.call = self._make_call()

    def load(self) -> int:
        """Compile (or load from the disk cache) and publish the address; returns it."""
        if not self._cell[0]:
            self.dispatcher.compile(self.signature)
            cres = self.dispatcher.overloads[self.signature]
            self._cell[0] = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        return int(self._cell[0])

    def _accepts(self, got: tuple) -> bool:
        if len(got) != len(self.signature):
            return False
        for g, w in zip(map(nbtypes.unliteral, got), self.signature):
            if isinstance(w, nbtypes.Array):
                if not (isinstance(g, nbtypes.Array) and g.dtype == w.dtype and g.ndim == w.ndim
                        and w.layout in ("A", g.layout)):
                    return False
            elif not (g == w or (isinstance(g, nbtypes.Integer) and isinstance(w, nbtypes.Integer))):
                return False
        return True

    def _make_call(self) -> Any:
        helper = self

        def typer(typingctx: Any, *args: Any) -> Any:
            got = tuple(args[0].types) if len(args) == 1 and isinstance(args[0], nbtypes.StarArgTuple) else args
            if not helper._accepts(got):
                raise TypingError(f"{helper.name} is called by address for {helper.signature}, not {got}")
            sigtys = helper.signature

            def codegen(context: Any, builder: Any, sig: Any, llargs: Any) -> Any:
                mod = builder.module
                cell = mod.globals.get(helper.symbol)
                if cell is None:
                    cell = ir.GlobalVariable(mod, ir.IntType(64), helper.symbol)
                    cell.linkage = "external"
                addr = builder.load(cell)
                unloaded = f"{helper.name} was not loaded: call the kernel's load_helpers() first (plans do)"
                with cgutils.if_unlikely(builder, builder.icmp_unsigned("==", addr, addr.type(0))):
                    context.call_conv.return_user_exc(builder, RuntimeError, (unloaded,))
                vals = [context.cast(builder, v, t, w)
                        for v, t, w in zip(cgutils.unpack_tuple(builder, llargs[0]), got, sigtys)]
                fnty = context.call_conv.get_function_type(nbtypes.none, sigtys)
                status, _ = context.call_conv.call_function(builder, builder.inttoptr(addr, fnty.as_pointer()),
                                                            nbtypes.none, sigtys, vals)
                with cgutils.if_unlikely(builder, status.is_error):
                    context.call_conv.return_status_propagate(builder, status)
                return context.get_dummy_value()

            return nbtypes.none(nbtypes.StarArgTuple.from_types(got)), codegen

        typer.__name__ = f"call_{self.dispatcher.py_func.__name__}"
        return intrinsic(typer)


@dataclass(frozen=True)
class DualKernel:
    """A kernel's two builds. any_layout: the kernel gains nothing from C-contiguous arrays (it
    copies what it reads into tiles), so plans pass every tensor as a strided view and one
    compiled form per build serves every mix of layouts. helpers: the Helpers it calls by
    address, loaded before it runs: plans and a call of the DualKernel itself do it; code that
    calls `.serial` / `.parallel` directly calls `load_helpers()` first."""

    serial: Any
    parallel: Any
    name: str
    any_layout: bool = False
    helpers: tuple = ()

    def load_helpers(self) -> None:
        for h in self.helpers:
            h.load()

    def __call__(self, *args: Any) -> Any:
        """The serial build, straight from Python (tests, benchmarks)."""
        self.load_helpers()
        return self.serial(*args)


def _renamed_copy(fn: Callable, suffix: str) -> Callable:
    code = fn.__code__.replace(co_name=fn.__name__ + suffix, co_qualname=fn.__qualname__ + suffix)
    copy = types.FunctionType(code, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    return copy


def kernel(fn: Optional[Callable] = None, *, any_layout: bool = False, helpers: tuple = ()) -> Any:
    """Compile `fn` as a serial and a parallel Numba kernel (both cached, compiled on first use
    for each signature). `@kernel` or `@kernel(any_layout=True, helpers=(...))` (see DualKernel)."""
    def make(f: Callable) -> DualKernel:
        serial = numba.njit(**JIT_OPTIONS)(_renamed_copy(f, "__serial"))
        parallel = numba.njit(parallel=True, **JIT_OPTIONS)(f)
        return DualKernel(serial, parallel, f.__qualname__, any_layout, tuple(helpers))

    return make if fn is None else make(fn)


def scalar(fn: Callable) -> Any:
    """A scalar device function (inlined into the kernels that take it as an argument)."""
    return numba.njit(inline="always", **JIT_OPTIONS)(fn)


@scalar
def row_index(r, n2, n1):
    """(i3, i2, i1) of flattened row r of a (n3, n2, n1, ne0) array: kernels run prange over rows."""
    return r // (n2 * n1), (r // n1) % n2, r % n1


@intrinsic
def fetch_add(typingctx, counter, value):
    """Atomically counter[0] += value (an int64 array); returns the value before. Lets the lanes
    of a prange take tasks from a shared queue: prange splits its range statically, so uneven
    tasks (causal prefill) or a core busy with other work would leave the other threads idle."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[1], signature.args[1], nbtypes.int64)
        return builder.atomic_rmw("add", ary.data, v, "monotonic")
    return nbtypes.int64(counter, value), codegen
