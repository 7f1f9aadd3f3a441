"""Plans are objects keyed by the graph, never attributes set on it.

Every stage that derives something from a graph (the optimizer's rewritten graph, the scheduler's
placement, a backend's memory plan and launches) keeps it in a PlanCache: entries are held weakly
by graph, tagged (e.g. by target) and keyed by `graph.plan_key()`, so a graph that changed gets a
new plan and a graph that is dropped drops its plans.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Hashable, Optional


class PlanCache:
    def __init__(self) -> None:
        self._plans: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, graph: Any, make: Callable[[], Any], tag: Hashable = None,
            valid: Optional[Callable[[Any], bool]] = None) -> Any:
        """The plan for (graph, tag) at the graph's current key, made by `make()` when missing,
        stale, or refused by `valid(plan)` (e.g. an input moved to another buffer)."""
        key = graph.plan_key()
        plans = self._plans.get(graph)   # a read needs no lock (and setdefault made a weakref each call)
        entry = None if plans is None else plans.get(tag)
        if entry is not None and entry[0] == key and (valid is None or valid(entry[1])):
            return entry[1]
        plan = make()
        with self._lock:
            self._plans.setdefault(graph, {})[tag] = (key, plan)
        return plan

    def peek(self, graph: Any, tag: Hashable = None) -> Optional[Any]:
        """The plan last made for (graph, tag), stale or not (None if none)."""
        entry = self._plans.get(graph, {}).get(tag)
        return None if entry is None else entry[1]
