"""CPU thread policy (backends/cpu/threads.py): MINIGRAPH_THREADS, fixed vs load-aware backends,
and the load monitor's reading of other processes' load (speed under load: benchmarks/contention.py)."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.cpu import threads
from minigraph.core import flags


@pytest.mark.parametrize("value,want", [(None, 0), ("", 0), ("auto", 0), ("AUTO", 0), ("0", 0), ("3", 3),
                                        ("-2", 0), ("many", 0)])
def test_minigraph_threads_flag(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("MINIGRAPH_THREADS", raising=False)
    else:
        monkeypatch.setenv("MINIGRAPH_THREADS", value)
    assert flags.n_threads() == want


def test_fixed_and_load_aware_backends(monkeypatch):
    monkeypatch.setenv("MINIGRAPH_THREADS", "auto")
    auto = mg.backend_cpu_init()
    assert auto.load_monitor is not None and auto.n_threads == len(threads.usable_cores())
    assert "load-aware" in repr(auto)
    fixed = mg.backend_cpu_init(2)
    assert fixed.load_monitor is None and fixed.n_threads == 2 and "fixed" in repr(fixed)
    monkeypatch.setenv("MINIGRAPH_THREADS", "1")
    assert mg.backend_cpu_init().load_monitor is None and mg.backend_cpu_init().n_threads == 1
    auto.set_n_threads(1)
    assert auto.load_monitor is None and auto.n_threads == 1
    with pytest.raises(mg.MinigraphError, match="n_threads"):
        mg.backend_cpu_init(-1)


def test_load_aware_compute_runs_and_reports_its_threads(monkeypatch):
    monkeypatch.setenv("MINIGRAPH_THREADS", "auto")
    cpu = mg.backend_cpu_init()
    ctx = mg.Context()
    x = ctx.from_numpy(np.arange(1 << 16, dtype=np.float32))
    y = ctx.sqr(x)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    cpu.graph_compute(gf)
    assert 1 <= cpu.last_threads <= cpu.n_threads
    np.testing.assert_array_equal(y.numpy(), np.arange(1 << 16, dtype=np.float32) ** 2)


def test_compute_sets_numba_thread_count():
    """graph_compute sets the count through numba's C setter once its threading layer is up (not
    numba.set_num_threads, whose start-up check costs microseconds a call): the count must hold."""
    import numba
    ctx = mg.Context()
    y = ctx.sqr(ctx.from_numpy(np.arange(1 << 16, dtype=np.float32)))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    for n in (1, 2, 1, 3):
        mg.backend_cpu_init(n).graph_compute(gf)
        assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("cpus,others,cap,want", [(2, 0.0, 2, 2), (2, 0.15, 2, 2), (2, 0.3, 2, 1), (2, 1.0, 2, 1),
                                                  (2, 2.5, 2, 1), (8, 3.0, 8, 5), (8, 0.0, 4, 4)])
def test_thread_count_from_other_load(cpus, others, cap, want):
    m = threads.LoadMonitor(cap)
    m.cpus = set(range(cpus))
    assert m._decide(others) == want


def test_monitor_subtracts_its_own_cpu_time(monkeypatch):
    """Ticks say both cores were busy for a second; this process used one core of it: another
    process used the other, so one thread. When this process used both: two threads."""
    m = threads.LoadMonitor(2)
    m.cpus, m.hz = {0, 1}, 100
    for own_cpu, want in ((1.0, 1), (2.0, 2)):
        m._t, m._ticks, m._own = 0.0, (0, 0), 0.0
        monkeypatch.setattr(threads, "_busy_ticks", lambda cpus: (200, 200))
        monkeypatch.setattr(threads.time, "process_time", lambda v=own_cpu: v)
        m._look(1.0)
        assert m.current == want and m.other_load == pytest.approx(2.0 - own_cpu)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_monitor_sees_a_spinning_process():
    """A child spinning on one usable core shows up as about a core of other load."""
    core = threads.usable_cores()[-1]
    spin = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        m = threads.LoadMonitor(2)
        time.sleep(threads.INTERVAL + 0.25)
        m.threads()
        assert m.other_load >= 0.7
        assert m.current == 1 or len(m.cpus) > 2
    finally:
        spin.kill()
        spin.wait()


def test_wait_policy_defaults_yield_to_the_user(monkeypatch):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name, raising=False)
    threads.set_wait_policy()
    assert os.environ["GOMP_SPINCOUNT"] == threads.GOMP_SPINCOUNT and os.environ["KMP_BLOCKTIME"] == threads.KMP_BLOCKTIME
    monkeypatch.setenv("GOMP_SPINCOUNT", "77")
    threads.set_wait_policy()
    assert os.environ["GOMP_SPINCOUNT"] == "77"
    for name in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")      # GOMP_SPINCOUNT would override it
    threads.set_wait_policy()
    assert "GOMP_SPINCOUNT" not in os.environ and "KMP_BLOCKTIME" not in os.environ


def test_a_dropped_graph_frees_its_plan():
    """The backend remembers its last graph for repeat computes, weakly: once the graph is gone,
    its plan (and the plan's compute buffer) go too."""
    import gc
    import weakref
    cpu = mg.backend_cpu_init(1)
    ctx = mg.Context()
    y = ctx.sqr(ctx.from_numpy(np.arange(64, dtype=np.float32)))
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, y)
    cpu.graph_compute(gf)
    cpu.graph_compute(gf)                              # the repeat path
    plan = weakref.ref(cpu.plan(gf))
    del gf
    gc.collect()
    assert plan() is None
    np.testing.assert_array_equal(y.numpy(), np.arange(64, dtype=np.float32) ** 2)
