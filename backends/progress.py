"""Kernel compiles made visible: a progress line on stderr, only while Numba really compiles.

Numba fires a "numba:compile" event when it starts compiling a function and never when it loads
one from its disk cache, so a run whose kernels are all cached prints nothing. A backend that
prepares a list of kernels wraps the work in `CompileProgress(what, total)` and calls `step(name)`
before each one; the line "minigraph: compiling CPU kernels 3/17 (cumsum)" appears (rewritten
in place on a terminal) the moment a step's compile starts, and a summary line ends it:

    minigraph: compiled 17 CPU kernels in 21.4 s (cached on disk: the next run starts at once)

A compile outside any CompileProgress (a kernel called straight from Python) shows as
"minigraph: compiling <name>" while it lasts. MINIGRAPH_QUIET (minigraph.core.flags) decides:
unset, the line is shown when stderr is a terminal; 1 never; 0 always.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Optional, TextIO

from numba.core import event

from minigraph.core import flags

BAR_WIDTH = 24
_local = threading.local()  # .current: the innermost CompileProgress of this thread; .depth


def _stream() -> Optional[TextIO]:
    """stderr when progress is to be shown, else None."""
    err = sys.stderr
    if err is None:
        return None
    try:
        tty = err.isatty()
    except (AttributeError, ValueError):
        tty = False
    return err if flags.compile_progress(tty) else None


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class CompileProgress:
    """Progress of preparing `total` kernels (see the module docstring).

    bar=True (the warmup command) shows a bar for every step, compiled or loaded from cache;
    otherwise a step shows only when its compile starts."""

    def __init__(self, what: str, total: int, bar: bool = False, prefix: str = "minigraph") -> None:
        self.what, self.total, self.bar, self.prefix = what, total, bar, prefix
        self.k = 0
        self.name = ""
        self.compiled = 0           # steps during which at least one compile happened
        self._step_compiled = False
        self._shown = False         # the current step's line is on screen
        self._t0: Optional[float] = None
        self._stream: Optional[TextIO] = None
        self._outer: Optional[CompileProgress] = None

    def __enter__(self) -> "CompileProgress":
        self._stream = _stream()
        self._outer = getattr(_local, "current", None)
        _local.current = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _local.current = self._outer
        if self._stream is None or (self.compiled == 0 and not self.bar):
            return
        took = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        if self.compiled:
            msg = f"{self.prefix}: compiled {self.compiled} {self.what} in {took:.1f} s"
            if self.compiled < self.k:
                msg += f" ({self.k - self.compiled} loaded from cache)"
        else:
            msg = f"{self.prefix}: all {self.k} {self.what} loaded from cache"
        self._write(msg, final=True)

    def step(self, name: str) -> None:
        """The next kernel is `name` (shown now in bar mode, else when its compile starts)."""
        self.k += 1
        self.name = name
        self._step_compiled = False
        self._shown = False
        if self.bar:
            self._show()

    def started(self, k: int, name: str) -> None:
        """Step `k` is `name`, and it is being compiled (now, here or in a compile worker)."""
        self.k = k - 1
        self.step(name)
        self.compiling()

    def compiled_elsewhere(self, n: int, processes: int) -> None:
        """The batch ended with `n` steps compiled, by `processes` processes together."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self.k = self.compiled = n
        if processes > 1:
            self.what += f" ({processes} processes)"

    def compiling(self) -> None:
        """Called by the event listener when a compile starts inside the current step."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if not self._step_compiled:
            self._step_compiled = True
            self.compiled += 1
            if not self._shown or self.bar:
                self._show(compiling=True)

    def _show(self, compiling: bool = False) -> None:
        if self._stream is None:
            return
        if self.bar:
            filled = BAR_WIDTH * self.k // max(self.total, 1)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            msg = f"{self.prefix}: [{bar}] {self.k}/{self.total} {self.name}{' (compiling)' if compiling else ''}"
        else:
            msg = f"{self.prefix}: compiling {self.what} {self.k}/{self.total} ({self.name})"
        self._shown = True
        self._write(msg)

    def _write(self, msg: str, final: bool = False) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            if _is_tty(stream):
                stream.write("\r\x1b[K" + msg + ("\n" if final else ""))
            elif final or not self.bar or self._step_compiled:
                stream.write(msg + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr never stops a compute
            self._stream = None


class quietly:
    """Compiles inside this block show nothing (small helpers a backend compiles once)."""

    def __enter__(self) -> "quietly":
        self._outer = getattr(_local, "current", None)
        _local.current = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _local.current = self._outer

    def compiling(self) -> None:
        pass


class _Loose:
    """A compile outside any CompileProgress: "minigraph: compiling <name>" while it lasts."""

    def __init__(self, name: str) -> None:
        self.stream = _stream()
        if self.stream is not None:
            self._write(f"minigraph: compiling {name}", end="" if _is_tty(self.stream) else "\n")

    def done(self) -> None:
        if self.stream is not None and _is_tty(self.stream):
            self._write("\r\x1b[K", end="")

    def _write(self, msg: str, end: str) -> None:
        try:
            self.stream.write(msg + end)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None


def _ours(dispatcher: Any) -> bool:
    """Whether a compile is of minigraph's code (its kernels, generated executors and programs)."""
    mod = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
    return mod.startswith(("minigraph.", "mg_"))


class _Listener(event.Listener):
    def on_start(self, ev: event.Event) -> None:
        depth = getattr(_local, "depth", 0)
        _local.depth = depth + 1
        current = getattr(_local, "current", None)
        if current is not None:
            current.compiling()
        elif depth == 0 and _ours(ev.data.get("dispatcher")):
            py = ev.data["dispatcher"].py_func
            _local.loose = _Loose(py.__qualname__.replace("__serial", ""))

    def on_end(self, ev: event.Event) -> None:
        _local.depth = max(getattr(_local, "depth", 1) - 1, 0)
        loose = getattr(_local, "loose", None)
        if _local.depth == 0 and loose is not None:
            loose.done()
            _local.loose = None


event.register("numba:compile", _Listener())
