"""The compiled executor: a planned graph becomes rows of ints that one Numba loop runs.

Each row holds an op code, the kernel build (serial or parallel) and up to MAX_SLOTS tensors
(dst, then srcs) as (buffer index, element offset, ne[4], nb[4] in bytes), then int params;
float params sit in a parallel float64 table. The loop gets the base address of every buffer
(an int64 array the plan fills, keeping the buffers alive) and views a slot as an array of the
slot's element type (SLOT_BUFFERS: f32, i32, i64, raw 16-bit words for f16/bf16 storage slots
and raw bytes for block-quantized ones) at its offset, with its shape and strides. The loop is
generated Python source, written to a real module file (so Numba can cache it) for the set of
(op, build, dtypes) a plan uses: one `if code == k:` branch each, calling the kernel registered
for that op. Per node the loop costs tens of nanoseconds instead of a Python call.

The loop calls each kernel through its native entry point (an address passed in at run time,
`call_kernel`), not by linking the kernel's code into itself: Numba would otherwise optimise
and generate every kernel's machine code again inside each new loop. So a kernel compiles once
for its signature (`variant_signature`), is cached on disk on its own, and serves every plan
that uses it; a new plan compiles only its small loop. `load_runner` compiles (or loads) the
kernels first, with a progress line while anything really compiles (backends/progress.py).
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from typing import Any, Optional, Sequence

import numpy as np
import numba
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from minigraph.core.flags import cache_dir

from minigraph.backends.cpu.compile_pool import Job, compile_in_parallel
from minigraph.backends.cpu.jit import kernels_fingerprint
from minigraph.backends.progress import CompileProgress

MAX_SLOTS = 8      # dst + up to 7 sources (GATED_DELTA_NET with a state destination)
SLOT_W = 10
HEAD = 3          # code, build, n_slots
IP = HEAD + MAX_SLOTS * SLOT_W
MAX_PARAMS = 16   # per kind (int / float); storage slots add one int (their type code) each
ROW_W = IP + MAX_PARAMS
GENERATOR_VERSION = 8
# slot dtype letter -> numpy dtype the slot is viewed as; "b": raw bytes, the rows of a
# block-quantized tensor (encode_quant_slot)
SLOT_BUFFERS = {"f": np.float32, "i": np.int32, "l": np.int64, "h": np.uint16, "b": np.uint8}


def _view_intrinsic(dtype: Any, contiguous: bool) -> Any:
    """An intrinsic (bases, row, b) -> the 4-D `dtype` view that row[b:b + SLOT_W] describes:
    buffer row[b] (its address bases[row[b]]), data at element row[b+1], shape (ne3, ne2, ne1,
    ne0) from row[b+5..b+2] and, unless contiguous (then C strides of that shape), byte strides
    row[b+9..b+6]. It only fills an array header over memory the plan keeps alive (no meminfo:
    nothing to count), so the executor's dozens of slot views compile in a blink and cost a few
    instructions each; the plan guarantees every view lies in its buffer and is aligned."""
    layout = "C" if contiguous else "A"
    nbtype = numba.from_dtype(np.dtype(dtype))

    def typer(typingctx, bases, row, b):
        retty = types.Array(nbtype, 4, layout)

        def codegen(context, builder, sig, args):
            basesv, rowv, bv = args
            rows = context.make_array(row)(context, builder, rowv)
            table = context.make_array(bases)(context, builder, basesv)

            def field(k):
                idx = builder.add(bv, context.get_constant(types.intp, k))
                return builder.load(cgutils.get_item_pointer(context, builder, row, rows, [idx]))

            base = builder.load(cgutils.get_item_pointer(context, builder, bases, table, [field(0)]))
            ptrty = context.get_data_type(nbtype).as_pointer()
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(nbtype)))
            shape = [field(5), field(4), field(3), field(2)]
            if contiguous:
                strides = [itemsize] * 4
                for d in (2, 1, 0):
                    strides[d] = builder.mul(strides[d + 1], shape[d + 1])
            else:
                strides = [field(9), field(8), field(7), field(6)]
            out = context.make_array(retty)(context, builder)
            meminfo = context.get_constant_null(types.MemInfoPointer(types.voidptr))
            context.populate_array(out, data=builder.gep(builder.inttoptr(base, ptrty), [field(1)]),
                                   shape=cgutils.pack_array(builder, shape),
                                   strides=cgutils.pack_array(builder, strides),
                                   itemsize=itemsize, meminfo=meminfo, parent=None)
            return out._getvalue()

        return retty(bases, row, b), codegen

    typer.__name__ = f"_view_{layout.lower()}_{np.dtype(dtype).name}"
    return intrinsic(typer)


# the loop views slot s of a row as VIEWS[letter + "a"](bases, row, b), "c" when the tensor is
# contiguous (a C-contiguous array type, so kernels compiled for it vectorise), b = HEAD + s * SLOT_W
VIEWS = {f"{k}{'c' if c else 'a'}": _view_intrinsic(dt, c) for k, dt in SLOT_BUFFERS.items() for c in (False, True)}


def encode_slot(row: np.ndarray, slot: int, buf_index: int, byte_offset: int, itemsize: int,
                ne: Sequence[int], nb: Sequence[int]) -> None:
    b = HEAD + slot * SLOT_W
    row[b] = buf_index
    row[b + 1] = byte_offset // itemsize
    row[b + 2:b + 6] = ne
    row[b + 6:b + 10] = nb


def encode_quant_slot(row: np.ndarray, slot: int, buf_index: int, byte_offset: int, row_bytes: int,
                      ne: Sequence[int], nb: Sequence[int]) -> None:
    """A block-quantized tensor as a "b" slot: its raw rows, shape (ne3, ne2, ne1, row bytes),
    byte strides (nb3, nb2, nb1, 1), as the CPU's quantized kernels take it."""
    encode_slot(row, slot, buf_index, byte_offset, 1, (row_bytes, *ne[1:]), (1, *nb[1:]))


_import_paths: dict[int, tuple[str, str]] = {}   # id(obj) -> path: module-level objects live on


def _import_path(obj: Any) -> tuple[str, str]:
    """(module, attribute) under which a module-level kernel object can be imported: looked up
    in the module of its function, then in the other kernel modules (a DualKernel may wrap a
    function of a helper module, e.g. gated_delta_net's forms from gdn_rows)."""
    if id(obj) not in _import_paths:
        _import_paths[id(obj)] = _find_import_path(obj)
    return _import_paths[id(obj)]


def _find_import_path(obj: Any) -> tuple[str, str]:
    py = getattr(obj, "py_func", None) or getattr(getattr(obj, "parallel", None), "py_func", None)
    home = (py or obj).__module__
    mods = [sys.modules[home]] + [m for n, m in list(sys.modules.items())
                                  if n.startswith("minigraph.backends.") and n != home and m is not None]
    for mod in mods:
        for name, value in vars(mod).items():
            if value is obj:
                return mod.__name__, name
    raise RuntimeError(f"{obj!r} is not a module-level object of {home} or another kernel module")


@intrinsic
def call_kernel(typingctx, kern, fptr, *args):
    """kern(*args) through its native entry point at address `fptr` (see the module docstring).
    `kern` is the kernel's dispatcher, there to check at typing time that it was compiled for
    these argument types (literal extras compare by type), so the call cannot mismatch."""
    argtys = tuple(args[0].types) if len(args) == 1 and isinstance(args[0], types.StarArgTuple) else tuple(args)
    disp = kern.dispatcher if isinstance(kern, types.Dispatcher) else None
    want = tuple(map(types.unliteral, argtys))
    if disp is None or not (any(tuple(map(types.unliteral, sig)) == want and cres.signature.return_type == types.none
                                for sig, cres in disp.overloads.items())
                            or (id(disp), want) in _expected):
        raise TypingError(f"call_kernel: {kern} has no compiled form for {argtys} returning None "
                          "(load_runner compiles the kernels before the executor)")

    def codegen(context, builder, sig, llargs):
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = builder.inttoptr(llargs[1], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.none, argtys,
                                                    cgutils.unpack_tuple(builder, llargs[2]))
        with cgutils.if_unlikely(builder, status.is_error):  # the kernel raised: pass it on
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(kern, fptr, types.StarArgTuple.from_types(argtys)), codegen


_SLOT_TYPES = {k: numba.from_dtype(dt) for k, dt in SLOT_BUFFERS.items()}


def _const_type(x: Any) -> types.Type:
    """The type Numba gives constant `x` as a call argument in the generated loop."""
    if isinstance(x, bool):
        return types.BooleanLiteral(x)
    if isinstance(x, int):
        return types.IntegerLiteral(x)
    if isinstance(x, float):
        return types.float64
    return numba.typeof(x)


def variant_signature(variant: tuple) -> tuple:
    """The argument types the generated loop passes to a variant's kernel: each tensor slot a
    4-D array ('C' layout for an upper-case letter, view_c), int params int64 (a program
    row), float params float64, extras as Numba types constants (ints as literals, so a kernel's
    branches on them are pruned at compile time)."""
    _, _, dtypes_, kinds, extras = variant
    sig = [types.Array(_SLOT_TYPES[d.lower()], 4, "C" if d.isupper() else "A") for d in dtypes_]
    sig += [types.float64 if k == "f" else types.int64 for k in kinds]
    return tuple(sig + [_const_type(x) for x in extras])


def variant_dispatcher(variant: tuple) -> Any:
    """The Numba dispatcher of a variant: its kernel's serial or parallel build."""
    return getattr(variant[0], variant[1])


def kernel_address(variant: tuple) -> int:
    """Compile (or load from cache) a variant's kernel for its signature; its native entry point."""
    disp = variant_dispatcher(variant)
    sig = variant_signature(variant)
    getattr(variant[0], "load_helpers", lambda: None)()
    disp.compile(sig)
    cres = disp.overloads[sig]
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)


# (id(dispatcher), unliteral signature) of kernels a loop may be typed against before they are
# compiled (a compile worker typing the loop while others compile the kernels): the signature is
# the one kernel_address compiles, so the address the loop gets at run time matches it
_expected: set[tuple[int, tuple]] = set()


def expect_variant(variant: tuple) -> None:
    disp = variant_dispatcher(variant)
    _expected.add((id(disp), tuple(map(types.unliteral, variant_signature(variant)))))


def variant_spec(variant: tuple) -> tuple:
    """A picklable form of a variant (kernel objects by import path), for compile workers."""
    kern, build, dtypes_, kinds, extras = variant
    ex = tuple(("v", x) if isinstance(x, (bool, int, float)) else ("o", *_import_path(x)) for x in extras)
    return (_import_path(kern), build, dtypes_, kinds, ex)


def variant_from_spec(spec: tuple) -> tuple:
    (mod, name), build, dtypes_, kinds, ex = spec
    extras = tuple(e[1] if e[0] == "v" else getattr(importlib.import_module(e[1]), e[2]) for e in ex)
    return (getattr(importlib.import_module(mod), name), build, dtypes_, kinds, extras)


def compile_jobs_for(variants: Sequence[tuple], loop_module: Optional[str] = None, loop_folder: str = "") -> list:
    """The compile pool's jobs for a plan: its loop (first: when it is cached, so is the rest;
    none without `loop_module`, e.g. for warmup), then the heaviest first so the processes end
    together: parallel builds, the helpers they call by address, serial builds."""
    here = __name__
    specs = [variant_spec(v) for v in variants]
    kernels = [Job(f"{here}:compile_variant", f"{here}:variant_cached", s, variant_name(v))
               for s, v in zip(specs, variants)]
    helpers = {h.name: h for v in variants for h in getattr(v[0], "helpers", ())}
    called = [Job(f"{here}:compile_helper", f"{here}:helper_cached", (*_import_path(h.dispatcher), h.signature),
                  h.name.rsplit(".", 1)[-1]) for h in helpers.values()]
    loop = [] if loop_module is None else [
        Job(f"{here}:compile_loop", f"{here}:loop_cached", (loop_module, loop_folder, specs), "executor")]
    return (loop + [j for j in kernels if j.arg[1] == "parallel"] + called
            + [j for j in kernels if j.arg[1] != "parallel"])


def _in_disk_cache(disp: Any, sig: tuple) -> bool:
    """Whether Numba's disk cache holds `disp` compiled for `sig` (Numba's cache index)."""
    if sig in disp.overloads:
        return True
    cache = disp._cache
    key = cache._index_key(sig, disp.targetctx.codegen())
    return cache._cache_file._load_index().get(key) is not None


def compile_variant(spec: tuple) -> None:
    """The kernel alone: its helpers are jobs of their own (they run at load time)."""
    v = variant_from_spec(spec)
    variant_dispatcher(v).compile(variant_signature(v))


def variant_cached(spec: tuple) -> bool:
    v = variant_from_spec(spec)
    return _in_disk_cache(variant_dispatcher(v), variant_signature(v))


def compile_helper(arg: tuple) -> None:
    module, name, sig = arg
    getattr(importlib.import_module(module), name).compile(sig)


def helper_cached(arg: tuple) -> bool:
    module, name, sig = arg
    return _in_disk_cache(getattr(importlib.import_module(module), name), sig)


def _loop_dispatcher(module: str, folder: str) -> Any:
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(module).run


def compile_loop(arg: tuple) -> None:
    """The loop, typed against its kernels' signatures while they compile elsewhere."""
    module, folder, specs = arg
    for spec in specs:
        expect_variant(variant_from_spec(spec))
    _loop_dispatcher(module, folder).compile(RUN_SIGNATURE)


def loop_cached(arg: tuple) -> bool:
    return _in_disk_cache(_loop_dispatcher(arg[0], arg[1]), RUN_SIGNATURE)


def variant_name(variant: tuple) -> str:
    return variant[0].name + ("" if variant[1] == "serial" else " parallel")


def generate_source(variants: Sequence[tuple[Any, str, str, int, int, tuple]]) -> str:
    """Source of the run loop. Each variant: (DualKernel, build 'serial'|'parallel', slot dtypes
    (a SLOT_BUFFERS letter per tensor slot, upper case when the tensor is passed C-contiguous,
    e.g. 'FFi'), param kinds ('f' float / 'i' int each), extra constant arguments)."""
    lines = ["# generated by minigraph.backends.cpu.program: do not edit", "import numpy as np",
             "from numba import njit", "from minigraph.backends.cpu.program import VIEWS, call_kernel", ""]
    imports: dict[tuple[str, str], str] = {}

    def alias(obj: Any) -> str:
        key = _import_path(obj)
        if key not in imports:
            imports[key] = f"_o{len(imports)}"
            lines.insert(4, f"from {key[0]} import {key[1]} as {imports[key]}")
        return imports[key]

    body = []
    views: set[str] = set()
    for code, (kern, build, dtypes_, kinds, extras) in enumerate(variants):
        fn = f"{alias(kern)}.{build}"
        args = []
        for s, d in enumerate(dtypes_):
            view = f"{d.lower()}{'c' if d.isupper() else 'a'}"
            views.add(view)
            args.append(f"_v{view}(bases, row, {HEAD + s * SLOT_W})")
        ni = nf = 0
        for k in kinds:
            if k == "f":
                args.append(f"fprm[n, {nf}]")
                nf += 1
            else:
                args.append(f"row[{IP + ni}]")
                ni += 1
        args += [repr(x) if isinstance(x, (int, float)) else alias(x) for x in extras]
        body.append(f"        {'if' if code == 0 else 'elif'} code == {code}:")
        body.append(f"            call_kernel(_k{code}, fptrs[{code}], {', '.join(args)})")
        lines.append(f"_k{code} = {fn}")
    lines += [f"_v{v} = VIEWS[{v!r}]" for v in sorted(views)]
    lines += ["", "", "@njit(cache=True, nogil=True)", "def run(bases, prog, fprm, fptrs, start, end, cur):",
              "    for n in range(start, end):", "        row = prog[n]", "        code = row[0]",
              "        cur[0] = n"]
    lines += body or ["        pass"]
    return "\n".join(lines) + "\n"


# the loop's argument types: the buffers' base addresses, the program rows, their float params,
# the kernels' entry points, the row range to run, the row being run (for error reports)
RUN_SIGNATURE = (types.Array(types.int64, 1, "C"), types.Array(types.int64, 2, "C"),
                 types.Array(types.float64, 2, "C"), types.Array(types.int64, 1, "C"), types.int64,
                 types.int64, types.Array(types.int64, 1, "C"))


class Runner:
    """A compiled loop and the entry points of its kernels: runner(bases, prog, fprm, start, end,
    cur) runs rows start..end, `bases` the address of each buffer (kept alive by the caller)."""

    def __init__(self, run: Any, fptrs: np.ndarray) -> None:
        self.run = run
        self.fptrs = fptrs

    def __call__(self, bases: np.ndarray, prog: np.ndarray, fprm: np.ndarray, start: int, end: int,
                 cur: np.ndarray) -> None:
        self.run(bases, prog, fprm, self.fptrs, start, end, cur)

    @property
    def stats(self) -> Any:
        """The loop's Numba dispatcher stats (cache_hits, cache_misses)."""
        return self.run.stats


_loaded: dict[str, Runner] = {}


def load_runner(variants: Sequence[tuple]) -> Runner:
    """The compiled `run` for these variants (generated once per set, cached on disk), after its
    kernels; a progress line shows on stderr while any of them really compiles."""
    src = generate_source(variants)
    key = hashlib.sha1(f"{GENERATOR_VERSION}\n{kernels_fingerprint()}\n{src}".encode()).hexdigest()[:16]
    if key in _loaded:
        return _loaded[key]
    folder = os.path.join(cache_dir(), "executors")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"mg_exec_{key}.py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"   # per thread: two may write it
        with open(tmp, "w") as f:
            f.write(src)
        os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    # importable by name: Numba's cache re-imports the module when it loads the compiled loop
    if folder not in sys.path:
        sys.path.append(folder)
    mod = importlib.import_module(f"mg_exec_{key}")
    fptrs = np.zeros(max(len(variants), 1), np.int64)
    jobs = compile_jobs_for(variants, mod.__name__, folder)
    with CompileProgress("CPU kernels", len(jobs)) as progress:
        compile_in_parallel(jobs, progress)
    with CompileProgress("CPU kernels", len(variants) + 1) as progress:
        for code, v in enumerate(variants):
            progress.step(variant_name(v))
            fptrs[code] = kernel_address(v)
        progress.step("executor")
        mod.run.compile(RUN_SIGNATURE)
    runner = _loaded[key] = Runner(mod.run, fptrs)
    return runner
