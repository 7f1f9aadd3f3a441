"""`minigraph warmup`: compile kernels ahead, so a first run starts without a long compile.

CPU: every kernel form that the conformance cases of the selected ops run (the same shapes of
call a plan makes: contiguous, permuted and offset tensors, every op parameter the cases
cover), in both builds (serial, parallel) unless told otherwise, goes into Numba's disk cache,
the one a later process loads from. What a later graph still compiles is its own small loop
(backends/cpu/program.py) and any kernel form no case covers. Nodes with a block-quantized
tensor (a Q8_0 KV cache's FLASH_ATTN_EXT, quantized MUL_MAT, SET_ROWS into a quantized cache) run
their op's quantized path from Python, not from a program: warmup computes those cases' graphs
once, which puts the quantized kernels they call into the same disk cache.

CUDA: minigraph's CUDA kernels are compiled by numba-cuda in each process (no disk cache), so
there is nothing to keep between processes: `warmup("cuda")` in the process that computes runs
each case once so its kernels are compiled before the real work; the command refuses.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from minigraph.core.cases import CASES, Case
from minigraph.core.context import Context
from minigraph.core.dtypes import is_quantized
from minigraph.core.errors import MinigraphError
from minigraph.core.registry import OPS

BUILDS = ("serial", "parallel")


@dataclass(frozen=True)
class WarmupReport:
    backend: str
    kernels: int      # kernel forms prepared (CPU) or cases run (CUDA)
    compiled: int     # of those, how many Numba really compiled (CPU; the rest came from cache)
    seconds: float


class _CompileCount:
    """Counts Numba compiles started inside the block (any thread of this process)."""

    def __enter__(self) -> "_CompileCount":
        from numba.core import event

        self.n = 0
        outer = self

        class _Listener(event.Listener):
            def on_start(self, ev: event.Event) -> None:
                outer.n += 1

            def on_end(self, ev: event.Event) -> None:
                pass

        self._ctx = event.install_listener("numba:compile", _Listener())
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _select(ops: Optional[Iterable[str]]) -> list[Case]:
    want = None if ops is None else [o.strip().upper() for o in ops if o.strip()]
    if want is not None:
        unknown = [o for o in want if o not in OPS]
        if unknown:
            raise MinigraphError(f"warmup: unknown op {', '.join(unknown)} (known: {', '.join(sorted(OPS))})")
    cases = [c for c in CASES if want is None or c.op in want]
    if not cases:
        raise MinigraphError(f"warmup: no conformance case covers {', '.join(want or [])}")
    return cases


def _case_graph(case: Case):
    ctx = Context()
    out = case.build(ctx, np.random.default_rng(0))
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    return gf


def cpu_variants(cases: list[Case], builds: Iterable[str] = BUILDS) -> list[tuple]:
    """The distinct program variants (backends.cpu.backend.node_variant) the cases' nodes run,
    for each build. Skipped: nodes the CPU backend refuses or runs from Python, and generated
    kernels (FUSED_ELEMENTWISE: made per graph, so a warmup's would serve no later graph)."""
    from minigraph.backends.cpu.backend import CpuBackend, node_kernel, node_variant

    cpu = CpuBackend(1)
    seen: dict[tuple, None] = {}
    for case in cases:
        for n in _case_graph(case).nodes:
            if OPS[n.op].is_view or not cpu.supports_op(n) or _quantized(n):
                continue
            for build in builds:
                kern = node_kernel(cpu, n)
                v = None if kern is None else node_variant(kern, n, build)
                if v is not None and not v[0].serial.py_func.__module__.startswith("mg_"):
                    seen.setdefault(v, None)
    return list(seen)


def _quantized(n) -> bool:
    return any(t is not None and is_quantized(t.type) for t in (n, *n.src))


def quant_cases(cases: list[Case]) -> list[Case]:
    """The cases with a node on a block-quantized tensor (run by the op's quantized path)."""
    return [c for c in cases if any(_quantized(n) and not OPS[n.op].is_view for n in _case_graph(c).nodes)]


def warmup(backend: str = "cpu", ops: Optional[Iterable[str]] = None, builds: Iterable[str] = BUILDS) -> WarmupReport:
    """Compile ahead what the conformance cases of `ops` (default: all ops) run on `backend`
    ("cpu": into the disk cache, in `builds`; "cuda": in this process), with a progress bar on
    stderr (MINIGRAPH_QUIET=1 hides it). Returns what was done."""
    builds = tuple(builds)
    if any(b not in BUILDS for b in builds) or not builds:
        raise MinigraphError(f"warmup: builds must be some of {', '.join(BUILDS)}, got {', '.join(builds) or 'none'}")
    cases = _select(ops)
    t0 = time.perf_counter()
    if backend == "cpu":
        from minigraph.backends.cpu import program
        from minigraph.backends.cpu.compile_pool import compile_in_parallel
        from minigraph.backends.progress import CompileProgress

        from minigraph.backends.cpu.backend import CpuBackend

        variants = cpu_variants(cases, builds)
        quant = quant_cases(cases)
        cpu = CpuBackend(2 if "parallel" in builds else 1)
        # the kernel forms compile in the compile pool's processes (when it has more than one),
        # then the loop below loads them from the cache, compiling only what is left
        fresh = sum(not program.variant_cached(program.variant_spec(v)) for v in variants)
        jobs = program.compile_jobs_for(variants)
        with CompileProgress("CPU kernels", len(jobs), bar=True, prefix="minigraph warmup") as pooled:
            compile_in_parallel(jobs, pooled, first_implies_rest=False)
        with CompileProgress("CPU kernels", len(variants) + len(quant), bar=not pooled.compiled,
                             prefix="minigraph warmup") as progress:
            for v in variants:
                progress.step(program.variant_name(v))
                program.kernel_address(v)
            for case in quant:
                progress.step(f"{case.op} (quantized path)")
                with _CompileCount() as count:     # its plan compiles under its own progress line
                    cpu.graph_compute(_case_graph(case))
                fresh += count.n > 0
        total = len(variants) + len(quant)
        return WarmupReport("cpu", total, fresh, time.perf_counter() - t0)
    if backend == "cuda":
        from minigraph.run import backend_cuda_init

        cuda = backend_cuda_init()
        ran = 0
        for case in cases:
            gf = _case_graph(case)
            if all(OPS[n.op].is_view or cuda.supports_op(n) for n in gf.nodes):
                cuda.graph_compute(gf)
                ran += 1
        return WarmupReport("cuda", ran, 0, time.perf_counter() - t0)
    raise MinigraphError(f"warmup: backend must be 'cpu' or 'cuda', got {backend!r}")
