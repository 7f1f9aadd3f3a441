"""How CPU threads wait and how many a compute runs with: fixed, or load-aware ("auto", the default).

Why load-aware: a parallel kernel ends at a barrier that waits for every thread of its team. When
another process keeps one of the cores busy, the worker that shares that core runs only when the
scheduler gives it a time slice (milliseconds later), so each parallel node costs a slice instead
of microseconds: a 100-node delta-net layer went from ~1-14 ms to ~0.1-0.3 s. No wait policy
fixes that on its own (benchmarks/contention.py compares them); using only the cores nobody else
is using does.

`LoadMonitor.threads()` is called once per compute. At most every INTERVAL seconds it reads the
CPU time the machine spent busy on the cores this process may run on (/proc/stat, Linux) and
subtracts this process's own CPU time (time.process_time, all its threads): what is left is the
load of other processes, in cores. It then runs with the cores that load leaves free, rounded
down (a core busy more than SLACK of the time is not free), at least 1 and at most the cap. On
systems without /proc/stat it always runs with the cap.

How idle workers wait: GNU OpenMP's default (OMP_WAIT_POLICY unset) spins ~7 ms after every
parallel node before it sleeps (GOMP_SPINCOUNT 300000; measured here), a whole time slice taken
from whatever shares the core, including this process's own main thread. Fully passive waiting
(OMP_WAIT_POLICY=passive) pays a sleep/wake per node instead: decode N=1 went from ~95 us to
~160-220 us on this 2-core VM. A short spin keeps both: set_wait_policy() makes idle workers
spin ~0.1 ms (GOMP_SPINCOUNT=3000), which bridges the gaps between the nodes of a graph and
between back-to-back computes, then sleep. It only sets defaults (a user's OMP_WAIT_POLICY,
GOMP_SPINCOUNT or KMP_BLOCKTIME wins) and acts only if no OpenMP runtime is loaded yet: it runs
when minigraph.backends.cpu is imported (import minigraph does), before Numba starts its threads.
KMP_BLOCKTIME (Intel / LLVM OpenMP, whose default spins 200 ms) gets 1 ms by the same reasoning,
unmeasured here (this machine's Numba uses GNU OpenMP).
"""
from __future__ import annotations

import os
import time
from typing import Optional

# Seconds between two looks at the load. /proc/stat counts in clock ticks (10 ms), so a window of
# 0.25 s reads a core's load to +-0.04; the thread count follows a change of load within ~0.5 s.
INTERVAL = 0.25
# A core counts as free while other processes use at most this much of it: one that is busy a
# fifth of the time would stall a fifth of the parallel nodes by a time slice each.
SLACK = 0.2


GOMP_SPINCOUNT = "3000"   # ~80 us of spinning on the 2-core dev VM (default 300000: ~7 ms)
KMP_BLOCKTIME = "1"       # ms (Intel / LLVM OpenMP; default 200)


def set_wait_policy() -> None:
    """Short-spin defaults for the OpenMP runtime Numba's threading layer will load (see above)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    os.environ.setdefault("KMP_BLOCKTIME", KMP_BLOCKTIME)


set_wait_policy()


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity mask; a container's cpuset shows here)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _busy_ticks(cpus: set) -> Optional[tuple[int, int]]:
    """(busy, total) clock ticks summed over `cpus` since boot, from /proc/stat; None if unreadable.
    Busy counts user, nice, system, irq, softirq and steal (a hypervisor's other guests)."""
    try:
        with open("/proc/stat", "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return None
    busy = total = 0
    for line in lines[1:]:
        if not line.startswith(b"cpu"):
            break
        fields = line.split()
        try:
            if int(fields[0][3:]) not in cpus:
                continue
            v = [int(x) for x in fields[1:9]]
        except (ValueError, IndexError):
            return None
        total += sum(v)
        busy += sum(v) - v[3] - v[4]          # minus idle and iowait
    return (busy, total) if total else None


class LoadMonitor:
    """Threads for the next compute: min(cap, cores other processes leave free), at least 1."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.cpus = set(usable_cores())
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.current = cap
        self.other_load = 0.0               # other processes' load at the last look, in cores
        self._t = time.monotonic()
        self._ticks = _busy_ticks(self.cpus)
        self._own = time.process_time()

    def threads(self) -> int:
        now = time.monotonic()
        if now - self._t >= INTERVAL and self._ticks is not None:
            self._look(now)
        return self.current

    def _look(self, now: float) -> None:
        ticks, own = _busy_ticks(self.cpus), time.process_time()
        if ticks is None:
            self._ticks = None
            return
        d_busy, d_total = ticks[0] - self._ticks[0], ticks[1] - self._ticks[1]
        if d_total > 0:
            window = d_total / self.hz / len(self.cpus)       # seconds, measured by the same ticks
            others = max(0.0, d_busy / self.hz - (own - self._own)) / window
            self.other_load = others
            self.current = self._decide(others)
        self._t, self._ticks, self._own = now, ticks, own

    def _decide(self, others: float) -> int:
        free = len(self.cpus) - others
        return max(1, min(self.cap, int(free + SLACK)))
