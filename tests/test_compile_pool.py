"""Compiles shared between processes (backends/cpu/compile_pool.py) and helpers that kernels call
by address (jit.Helper): what a worker compiles serves the plan from the disk cache, a dead worker
costs time and never a result, concurrent cache saves keep every entry, and a helper call is
checked when it is typed and when it runs."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from numba import njit, types
from numba.core import caching
from numba.core.errors import TypingError

from minigraph.backends.cpu import compile_pool
from minigraph.backends.cpu.jit import Helper

pytestmark = pytest.mark.skipif(compile_pool.fcntl is None, reason="compile workers need POSIX file locks")

GRAPH = """
import numpy as np, minigraph as mg
ctx = mg.Context()
a = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
c = ctx.cumsum(ctx.transpose(a))
m = ctx.tri(ctx.fill(ctx.new_tensor_2d(mg.TYPE_F32, 3, 3), 2.0), mg.TRI_TYPE_LOWER)
gf = ctx.new_graph(); mg.build_forward_expand(gf, c); mg.build_forward_expand(gf, m)
mg.backend_cpu_init(1).graph_compute(gf)
assert np.allclose(c.numpy(), np.cumsum(np.arange(12, dtype=np.float32).reshape(3, 4).T, axis=1))
assert np.allclose(m.numpy(), np.tril(np.full((3, 3), 2.0), -1))
"""

# the plan's whole batch goes to one worker while this process waits: then every kernel and the
# loop must load from the cache the worker wrote, with no compile of them here
ONE_WORKER = """
import os, pickle, tempfile, time
from numba.core import event
from minigraph.backends.cpu import compile_pool, program

def one_worker(jobs, progress=None):
    todo = [j for j in jobs if not j.is_cached()]
    folder = tempfile.mkdtemp(dir=compile_pool._batches_dir())
    with open(os.path.join(folder, "jobs.pickle"), "wb") as f:
        pickle.dump(todo, f)
    (w,) = compile_pool._pool(1)
    assert w.send(folder)
    deadline = time.monotonic() + 300
    while sum(n.endswith(".done") for n in os.listdir(folder)) < len(todo):
        assert w.alive() and time.monotonic() < deadline
        time.sleep(0.05)
    assert set(compile_pool._claims(folder).values()) == {w.proc.pid}
    print("worker took", len(todo), "jobs:", sorted(j.name for j in todo))
    return {}

program.compile_in_parallel = one_worker
compiled = []
class Seen(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__qualname__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Seen())
""" + GRAPH + """
kernels = [n for n in compiled if n.endswith("__serial") or n == "run"]
assert kernels == [], kernels
print("compiled here:", sorted(set(compiled)))
"""


def _env(tmp_path, jobs: str) -> dict:
    return dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), MINIGRAPH_CACHE_DIR=str(tmp_path / "mg"),
                MINIGRAPH_QUIET="1", MINIGRAPH_COMPILE_JOBS=jobs)


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_a_worker_compiles_the_batch_and_the_plan_loads_it_from_the_cache(tmp_path):
    out = _python(ONE_WORKER, _env(tmp_path, "2")).stdout
    assert "worker took 4 jobs: ['cumsum', 'executor', 'fill', 'tri']" in out


def test_two_processes_give_the_same_results_and_a_warm_cache(tmp_path):
    _python(GRAPH, _env(tmp_path, "2"))
    warm = GRAPH + ("from minigraph.backends.cpu import program\n"
                    "assert all(sum(r.stats.cache_misses.values()) == 0 for r in program._loaded.values())\n")
    _python(warm, _env(tmp_path, "2"))


THREADS = """
import threading, numpy as np, minigraph as mg
def job(seed, out):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    ctx = mg.Context()
    a = ctx.from_numpy(x)
    t = ctx.cumsum(ctx.transpose(a)) if seed % 2 else ctx.soft_max(ctx.scale(a, 0.5))
    gf = ctx.new_graph(); mg.build_forward_expand(gf, t)
    mg.backend_cpu_init(1).graph_compute(gf)
    if seed % 2:
        want = np.cumsum(x.T, axis=1)
    else:
        e = np.exp(0.5 * x - (0.5 * x).max(axis=1, keepdims=True)); want = e / e.sum(axis=1, keepdims=True)
    out[seed] = np.allclose(t.numpy(), want, atol=1e-5)
out = {}
ts = [threading.Thread(target=job, args=(i, out)) for i in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
assert out == {0: True, 1: True, 2: True, 3: True}, out
"""


def test_cold_plans_from_several_threads_share_the_pool(tmp_path):
    """Four threads plan different graphs on an empty cache at once: the batches queue on the
    pool (one at a time per process) and every result is right."""
    _python(THREADS, _env(tmp_path, "2"))


def test_dead_workers_cost_nothing_but_time(tmp_path):
    """Workers that die at once: this process takes every job itself."""
    code = ("from minigraph.backends.cpu import compile_pool as p\n"
            "p._Worker.send = lambda self, folder: (self.kill(), True)[1]\n" + GRAPH)
    _python(code, _env(tmp_path, "2"))


class _FakeWorker:
    def __init__(self, pid: int, alive: bool) -> None:
        self.proc = type("P", (), {"pid": pid})()
        self._alive = alive

    def alive(self) -> bool:
        return self._alive

    def kill(self) -> None:
        self._alive = False


def test_wait_follows_the_claims_of_live_workers_only(tmp_path):
    (tmp_path / "0.claim").write_text("111")
    (tmp_path / "1.claim").write_text("222")
    t0 = time.monotonic()
    compile_pool._wait(str(tmp_path), [_FakeWorker(111, False), _FakeWorker(222, False)], lambda: None)
    assert time.monotonic() - t0 < 1.0                     # both owners dead: nothing to wait for
    live = _FakeWorker(222, True)
    threading.Timer(0.3, lambda: (tmp_path / "1.done").touch()).start()
    t0 = time.monotonic()
    compile_pool._wait(str(tmp_path), [_FakeWorker(111, False), live], lambda: None)
    assert 0.25 < time.monotonic() - t0 < 10               # waited for the live worker's job


CONCURRENT = """
import sys, numpy as np
sys.path.insert(0, {folder!r})
import minigraph.backends.cpu.compile_pool  # the cache lock
import shared_fn
for dt in {dtypes}:
    assert shared_fn.plus_one(np.zeros(2, dt))[0] == 1
"""


def test_concurrent_saves_of_one_function_keep_every_entry(tmp_path):
    """Two processes compile different signatures of one cached function at once; a third then
    finds all of them in the cache (Numba's index update is read-modify-write: the lock)."""
    assert getattr(caching.IndexDataCacheFile.save, "_minigraph_locked", False)
    (tmp_path / "shared_fn.py").write_text(textwrap.dedent("""
        from numba import njit
        @njit(cache=True)
        def plus_one(a):
            return a + 1
    """))
    env = _env(tmp_path, "1")
    sets = (["np.int8", "np.int16", "np.int32", "np.int64"], ["np.float32", "np.float64", "np.uint8", "np.uint16"])
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT.format(folder=str(tmp_path), dtypes="[" + ", ".join(s) + "]")],
                              env=env) for s in sets]
    assert all(p.wait(300) == 0 for p in procs)
    check = CONCURRENT.format(folder=str(tmp_path), dtypes="[" + ", ".join(sets[0] + sets[1]) + "]") + \
        "assert shared_fn.plus_one.stats.cache_misses.total() == 0, shared_fn.plus_one.stats\n"
    _python(check, env)


# ----------------------------------------------------------------------------- Helper

@njit(nogil=True)
def _scale_into(out, a, k):
    for i in range(a.shape[0]):
        out[i] = a[i] * k


_F32A = types.Array(types.float32, 1, "A")
_SCALE = Helper(_scale_into, (_F32A, _F32A, types.int64))
_call_scale = _SCALE.call


@njit
def _uses_helper(out, a):
    _call_scale(out, a, 3)


def test_a_helper_is_called_by_address_with_any_layout_after_load():
    out, a = np.zeros(4, np.float32), np.arange(8, dtype=np.float32)
    with pytest.raises(RuntimeError, match="_scale_into was not loaded: call the kernel.s load_helpers"):
        _uses_helper(out, a[:4])
    _SCALE.load()
    _uses_helper(out, a[:4])                                # C-contiguous
    assert out.tolist() == [0, 3, 6, 9]
    _uses_helper(out, a[::2])                               # strided, passed as layout A
    assert out.tolist() == [0, 6, 12, 18]
    with pytest.raises(TypingError, match="called by address"):
        _uses_helper(np.zeros(4), np.zeros(4))              # float64: not the helper's signature


def test_a_helper_is_registered_once():
    with pytest.raises(RuntimeError, match="registered twice"):
        Helper(_scale_into, (_F32A, _F32A, types.int64))


def test_no_workers_where_they_cannot_start(monkeypatch):
    monkeypatch.setenv("MINIGRAPH_COMPILE_JOBS", "3")
    assert compile_pool.compile_jobs() == 3
    monkeypatch.setattr(sys, "executable", "/opt/blender/blender")   # Python embedded in an app
    assert compile_pool.compile_jobs() == 1
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    monkeypatch.setattr(sys, "frozen", True, raising=False)          # a frozen program
    assert compile_pool.compile_jobs() == 1
