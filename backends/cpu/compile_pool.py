"""Kernel compiles spread over the cores: worker processes that compile into Numba's disk cache.

Numba compiles one function at a time per process (a global lock), and a cold plan can hold tens of
kernels at 0.2-7 s each. When a plan finds two or more of its compiles missing from the disk cache,
this process and up to `compile_jobs() - 1` worker processes (started on first need, kept for the
life of this one) share them: each takes the next job nobody has claimed (by creating its claim
file, O_EXCL), compiles it, which writes it to the cache, and moves on. Afterwards the plan loads
every kernel as before, now from the cache; anything a worker did not finish (it died, or was
killed after WORKER_TIMEOUT) is compiled here then. So a worker can cost time, never correctness.

Numba updates a function's cache index read-modify-write: two processes saving signatures of one
function at once could lose an entry or pick the same data file name for different code.
`IndexDataCacheFile.save` therefore runs under an inter-process file lock (installed at import, so
pytest-xdist workers sharing a cache are covered too).
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numba
from numba.core import caching

from minigraph.core import flags
from minigraph.core.flags import cache_dir

WORKER_TIMEOUT = 600.0   # seconds a batch may take in the workers before they are killed
POLL = 0.01

try:
    import fcntl
except ImportError:      # not POSIX: no lock, so no workers (compile_jobs() is 1)
    fcntl = None


# ----------------------------------------------------------------------------- cache lock

@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install_cache_lock() -> None:
    cls = caching.IndexDataCacheFile
    save = cls.save
    if fcntl is None or getattr(save, "_minigraph_locked", False):
        return

    def locked_save(self: Any, key: Any, data: Any) -> None:
        with _file_lock(self._index_path + ".lock"):
            save(self, key, data)

    locked_save._minigraph_locked = True
    cls.save = locked_save


_install_cache_lock()


# ----------------------------------------------------------------------------- jobs

def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Job:
    """One compile, picklable for the workers: `run` and `cached` name module-level functions
    ("module:function") that take `arg`; `run(arg)` compiles (or loads) into the disk cache,
    `cached(arg)` says whether the cache already holds it. `name`: what the progress line shows.
    (The CPU backend's jobs: program.compile_jobs_for.)"""

    run: str
    cached: str
    arg: Any
    name: str

    def compile(self) -> None:
        _resolve(self.run)(self.arg)

    def is_cached(self) -> bool:
        try:
            return bool(_resolve(self.cached)(self.arg))
        except Exception:  # unsure (e.g. Numba's private cache API moved): compile it
            return False


def compile_jobs() -> int:
    """Processes compiling at once: MINIGRAPH_COMPILE_JOBS, default the cores this process may
    use (at most 4); 1 compiles everything here, and so does a system without file locks or a
    process whose sys.executable is not a Python interpreter (an application embedding Python,
    a frozen program: starting "it" again would not start a worker)."""
    exe = os.path.basename(sys.executable or "").lower()
    if fcntl is None or getattr(sys, "frozen", False) or not exe.startswith(("python", "pypy")):
        return 1
    return flags.compile_jobs()


def _claim(folder: str, i: int) -> bool:
    try:
        fd = os.open(os.path.join(folder, f"{i}.claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError:   # claimed already, or the batch is over (its folder removed)
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def work(folder: str, jobs: Sequence[Job], on_job: Any = None) -> None:
    """Take and run unclaimed jobs of the batch in `folder` until none is left."""
    for i, job in enumerate(jobs):
        if not _claim(folder, i):
            continue
        if on_job is not None:
            on_job(job)
        try:
            job.compile()
        except Exception:  # the plan compiles it again and reports the error there
            pass
        with contextlib.suppress(OSError):
            open(os.path.join(folder, f"{i}.done"), "w").close()


# ----------------------------------------------------------------------------- workers

class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
        env["MINIGRAPH_CACHE_DIR"] = cache_dir()
        env["MINIGRAPH_COMPILE_JOBS"] = "1"
        env["MINIGRAPH_WORKER_PATH"] = json.dumps(sys.path)
        code = ("import json, os, sys; sys.path[:] = json.loads(os.environ['MINIGRAPH_WORKER_PATH']); "
                "from minigraph.backends.cpu.compile_pool import worker_main; worker_main()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     text=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, folder: str) -> bool:
        try:
            self.proc.stdin.write(folder + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
            self.proc.wait(5)


_workers: list[_Worker] = []
_lock = threading.Lock()   # one batch at a time per process (plans built from several threads)


def _pool(n: int) -> list[_Worker]:
    _workers[:] = [w for w in _workers if w.alive()]
    while len(_workers) < n:
        _workers.append(_Worker())
    return _workers[:n]


def compile_in_parallel(jobs: Sequence[Job], progress: Any = None, first_implies_rest: bool = True) -> dict[int, int]:
    """Run `jobs` here and in worker processes (see the module docstring); returns when each is
    done or its worker gone, with how many jobs each process (pid) took. With
    first_implies_rest, a cached first job (a plan's loop) means the rest is cached too; else
    jobs already in the cache are dropped, and with fewer than two left, or one compile
    process, nothing happens (the caller compiles as before). `progress` (a CompileProgress)
    shows each job as a process takes it; the jobs run in list order, so put the longest first."""
    n = compile_jobs()
    if n < 2 or first_implies_rest and jobs and jobs[0].is_cached():
        return {}
    with _lock:
        return _batch(jobs, n, progress)


def _batch(jobs: Sequence[Job], n: int, progress: Any) -> dict[int, int]:
    todo = [j for j in jobs if not j.is_cached()]
    if len(todo) < 2:
        return {}
    folder = tempfile.mkdtemp(prefix="batch-", dir=_batches_dir())
    seen: list[int] = []

    def announce(*_: Any) -> None:
        if progress is not None:
            for i in sorted(set(_claims(folder)) - set(seen)):
                seen.append(i)
                progress.started(len(seen), todo[i].name)

    try:
        with open(os.path.join(folder, "jobs.pickle"), "wb") as f:
            pickle.dump(todo, f)
        workers = [w for w in _pool(min(n, len(todo)) - 1) if w.send(folder)]
        work(folder, todo, announce)
        _wait(folder, workers, announce)
        taken: dict[int, int] = {}
        for pid in _claims(folder).values():
            taken[pid] = taken.get(pid, 0) + 1
        if progress is not None:
            progress.compiled_elsewhere(len(todo), len(taken))
        return taken
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _batches_dir() -> str:
    d = os.path.join(cache_dir(), "compile-batches")
    os.makedirs(d, exist_ok=True)
    return d


def _claims(folder: str) -> dict[int, int]:
    """{job index: pid of the process that took it} of a batch."""
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".claim"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, name)) as f:
                out[int(name[:-6])] = int(f.read() or 0)
    return out


def _wait(folder: str, workers: Sequence[_Worker], tick: Any) -> None:
    """Until no live worker holds an unfinished job of the batch (or WORKER_TIMEOUT: kill them)."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while True:
        tick()
        names = set(os.listdir(folder))
        owners = {pid for i, pid in _claims(folder).items() if f"{i}.done" not in names}
        if not any(w.alive() and w.proc.pid in owners for w in workers):
            return
        if time.monotonic() > deadline:
            for w in workers:
                w.kill()
            return
        time.sleep(POLL)


def worker_main() -> None:
    """A worker process: one batch folder per line on stdin; ends when stdin closes."""
    for line in sys.stdin:
        folder = line.strip()
        try:
            with open(os.path.join(folder, "jobs.pickle"), "rb") as f:
                jobs = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
        work(folder, jobs)


def stop_workers() -> None:
    """End the worker processes: stdin closed, an idle worker exits at once (at exit of this
    process too, so the workers are reaped and their CPU time counts as its children's)."""
    for w in _workers:
        with contextlib.suppress(OSError):
            w.proc.stdin.close()
    for w in _workers:
        try:
            w.proc.wait(2)
        except subprocess.TimeoutExpired:
            w.kill()
    _workers.clear()


atexit.register(stop_workers)
