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
import importlib.util
import os
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numba
from numba import types as nbtypes
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
    # kernels bake in whether BLAS (scipy) is there (gated_delta_net.HAVE_BLAS): a cache made
    # without it must not serve a process that has it
    h.update(b"blas" if importlib.util.find_spec("scipy") is not None else b"noblas")
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


@dataclass(frozen=True)
class DualKernel:
    """A kernel's two builds. any_layout: the kernel gains nothing from C-contiguous arrays (it
    copies what it reads into tiles), so plans pass every tensor as a strided view and one
    compiled form per build serves every mix of layouts."""

    serial: Any
    parallel: Any
    name: str
    any_layout: bool = False

    def __call__(self, *args: Any) -> Any:
        return self.serial(*args)


def _renamed_copy(fn: Callable, suffix: str) -> Callable:
    code = fn.__code__.replace(co_name=fn.__name__ + suffix, co_qualname=fn.__qualname__ + suffix)
    copy = types.FunctionType(code, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    return copy


def kernel(fn: Optional[Callable] = None, *, any_layout: bool = False) -> Any:
    """Compile `fn` as a serial and a parallel Numba kernel (both cached, compiled on first use
    for each signature). `@kernel` or `@kernel(any_layout=True)` (see DualKernel)."""
    def make(f: Callable) -> DualKernel:
        serial = numba.njit(**JIT_OPTIONS)(_renamed_copy(f, "__serial"))
        parallel = numba.njit(parallel=True, **JIT_OPTIONS)(f)
        return DualKernel(serial, parallel, f.__qualname__, any_layout)

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
