"""`minigraph test-backend-ops`: ggml's tests/test-backend-ops.cpp over minigraph.cases.

Modes: `test` (each backend against the float64 numpy reference, by NMSE with per-case
tolerances; NaN/inf mismatches fail first), `perf` (time per run, GFLOP/s for compute-bound
cases, GB/s for the others), `support` (op x backend table; `--markdown` writes docs/ops.md).
A case a backend refuses (supports_op on any of its compute nodes) is "not supported", never a
failure; a case it claims and then cannot run is a failure (supports_op must be honest).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional, TextIO

import numpy as np

from minigraph.core.cases import CASES, Case
from minigraph.tools.conformance import check_case
from minigraph.tools.dump import init_backend
from minigraph.core.errors import MinigraphError

ALL_BACKENDS = ("cpu", "cuda")
GGML_MISSING = ("--against ggml needs ggml-python (the real ggml CPU backend), which is not installed: "
                'pip install -e ".[ggml]" (or pip install ggml-python==0.0.45)')
PERF_MIN_SECONDS = 0.05  # time each case for at least this long (and at least PERF_MIN_RUNS runs)
PERF_MIN_RUNS = 3


@dataclass
class Result:
    backend: str
    case: str
    op: str
    status: str           # "ok", "fail", "not supported"
    detail: str = ""
    us_per_run: Optional[float] = None
    flops: Optional[float] = None
    bytes: Optional[int] = None
    baseline_us: Optional[float] = None   # perf --baseline: the same case's time in that file


# -- selecting cases -------------------------------------------------------------------------

def split_top(s: str) -> list[str]:
    """Split a comma list at depth 0, so `MUL_MAT(ne_a=[16,9,1,1],...)` stays one item."""
    items, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [x.strip() for x in items + [cur] if x.strip()]


def select_cases(ops: str = "", params: str = "", pool: Optional[list[Case]] = None) -> list[Case]:
    """Cases of `pool` (default: the built-in ones) named by -o (ops or full case strings) and
    matching -p; nothing selected is an error."""
    from minigraph.core.registry import OPS

    want = split_top(ops)
    for w in want:
        if "(" not in w and w.upper() not in OPS:
            raise MinigraphError(f"-o {w}: unknown op (known: {', '.join(sorted(OPS))})")
    try:
        rx = re.compile(params) if params else None
    except re.error as e:
        raise MinigraphError(f"-p {params!r}: bad regex: {e}") from None
    out = [c for c in (CASES if pool is None else pool)
           if (not want or any(w == c.name if "(" in w else w.upper() == c.op for w in want))
           and (rx is None or rx.search(c.vars))]
    if not out:
        raise MinigraphError(f"no case matches -o {ops!r} -p {params!r} (see --list)")
    return out


# -- running one case ------------------------------------------------------------------------

def _build(case: Case, seed: int) -> tuple[Any, Any]:
    from minigraph.core.context import Context

    ctx = Context()
    out = case.build(ctx, np.random.default_rng(seed))
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    return gf, out


def refusal(case: Case, backend: Any, seed: int = 0) -> Optional[str]:
    """None when the backend claims every compute node of the case, else its first reason."""
    from minigraph.core.registry import OPS

    gf, _ = _build(case, seed)
    for n in gf.nodes:
        if OPS[n.op].is_view:
            continue
        ok, reason = backend.supports_op(n)
        if not ok:   # most kernels' reasons name their op already
            return reason if reason.startswith(f"{n.op}:") else f"{n.op}: {reason}"
    return None


def test_case(case: Case, backend: Any, seed: int) -> Result:
    why = refusal(case, backend, seed)
    if why is not None:
        return Result(backend.name, case.name, case.op, "not supported", why)
    try:
        err = check_case(case, backend, seed)
    except Exception as e:  # a claimed case that cannot run is a failure, whatever it raised
        err = f"{type(e).__name__}: {e}".splitlines()[0]
    return Result(backend.name, case.name, case.op, "ok" if err is None else "fail", err or "")


def perf_case(case: Case, backend: Any, seed: int) -> Result:
    """Time per graph run (after a warm-up run), FLOPs and bytes of the case's compute nodes."""
    from minigraph.core.registry import OPS
    from minigraph.core.tensor import nbytes

    why = refusal(case, backend, seed)
    if why is not None:
        return Result(backend.name, case.name, case.op, "not supported", why)
    gf, _ = _build(case, seed)
    nodes = [n for n in gf.nodes if not OPS[n.op].is_view]
    flops = sum(float(OPS[n.op].flops(n)) for n in nodes)
    nbytes_ = sum(nbytes(n) + sum(nbytes(s) for s in n.src if s is not None) for n in nodes)
    try:
        backend.graph_compute(gf)
        backend.synchronize()
        runs, t0 = 0, time.perf_counter()
        while runs < PERF_MIN_RUNS or time.perf_counter() - t0 < PERF_MIN_SECONDS:
            backend.graph_compute(gf)
            backend.synchronize()
            runs += 1
        us = (time.perf_counter() - t0) / runs * 1e6
    except Exception as e:
        return Result(backend.name, case.name, case.op, "fail", f"{type(e).__name__}: {e}".splitlines()[0])
    return Result(backend.name, case.name, case.op, "ok", "", us, flops, nbytes_)


def rate(r: Result) -> str:
    """GFLOP/s when the case does more than one FLOP per byte moved (compute-bound), else GB/s."""
    if not r.us_per_run:
        return ""
    if r.flops and r.bytes and r.flops > r.bytes:
        return f"{r.flops / r.us_per_run / 1e3:9.2f} GFLOP/s"
    return f"{(r.bytes or 0) / r.us_per_run / 1e3:9.2f} GB/s"


# -- output ----------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr when it is a terminal (erased before each result line)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.enabled = enabled and sys.stderr.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            fill = width * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {what[:40]:<40}")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()


def result_line(r: Result, mode: str) -> str:
    if r.status == "not supported":
        return f"  {r.case}: not supported [{r.backend}] ({r.detail})"
    if r.status == "fail":
        return f"  {r.case}: FAIL [{r.backend}] {r.detail}"
    if mode == "perf":
        vs = f"  {r.baseline_us / r.us_per_run:5.2f}x vs baseline" if r.baseline_us and r.us_per_run else ""
        return f"  {r.case + ':':<58} {r.us_per_run:10.2f} us/run  {rate(r)}{vs}"
    return f"  {r.case}: OK"


def print_result(r: Result, mode: str, seed: int, out: TextIO, test_file: str = "") -> None:
    """A result's line, and for a failure its seed and repro command."""
    print(result_line(r, mode), file=out, flush=True)
    if r.status == "fail":
        print(f"    seed {seed}; repro: {repro(r, seed, test_file)}", file=out)


def repro(r: Result, seed: int, test_file: str = "") -> str:
    b = "ggml" if r.backend == "ggml-CPU" else r.backend
    extra = " --against ggml" if b == "ggml" else f" -b {b}"
    if test_file:
        extra += f" --test-file {shlex.quote(test_file)}"
    return f"minigraph test-backend-ops test{extra} -o {shlex.quote(r.case)} --seed {seed}"


def run_backend(mode: str, backend: Any, cases: list[Case], seed: int, out: Optional[TextIO],
                test_file: str = "", baseline: Optional[dict] = None) -> list[Result]:
    fn = test_case if mode == "test" else perf_case
    prog = Progress(len(cases), out is not None)
    results = []
    for case in cases:
        prog.step(case.name)
        r = fn(case, backend, seed)
        r.baseline_us = (baseline or {}).get((r.backend, r.case))
        results.append(r)
        if out is not None:
            prog.clear()
            print_result(r, mode, seed, out, test_file)
    prog.clear()
    return results


def _init_name(backend: Any, names: list[str]) -> str:
    """The -b name (cpu, cuda) that made `backend`."""
    return next((n for n in names if backend.name.lower().startswith(n.lower())), backend.name.lower())


def run_parallel(mode: str, name: str, cases: list[Case], seed: int, jobs: int, out: Optional[TextIO],
                 test_file: str = "") -> list[Result]:
    """Test mode in `jobs` worker processes (llama.cpp #23637), each a `-b name --json` run over
    every jobs-th case; results in case order, as one process would print them. Each worker
    compiles its own kernels (the disk cache shares what an earlier run compiled)."""
    import subprocess

    chunks = [cases[w::jobs] for w in range(jobs) if cases[w::jobs]]
    procs = []
    for chunk in chunks:
        cmd = [sys.executable, "-m", "minigraph", "test-backend-ops", "test", "-b", name, "--seed", str(seed), "--json",
               "-o", ",".join(c.name for c in chunk)] + (["--test-file", test_file] if test_file else [])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    by_case: dict[str, Result] = {}
    for chunk, proc in zip(chunks, procs):
        stdout, stderr = proc.communicate()
        try:
            recs = json.loads(stdout)["results"]
        except (ValueError, KeyError):
            why = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:300]
            recs = [asdict(Result(name, c.name, c.op, "fail", f"worker process failed: {why}")) for c in chunk]
        for r in recs:
            by_case[r["case"]] = Result(**r)
    results = [by_case[c.name] for c in cases if c.name in by_case]
    for r in results:
        if out is not None:
            print_result(r, mode, seed, out, test_file)
    return results


def run_ggml(cases: list[Case], seed: int, out: Optional[TextIO], test_file: str = "") -> list[Result]:
    """The same cases on ggml's own CPU backend (ggml-python), in child processes. Without
    ggml-python there is no reference engine: a MinigraphError, not a run of "not supported"."""
    from minigraph.testing import ggml_bridge
    from minigraph.testing.ggml_conformance import run_all

    if not ggml_bridge.available():
        raise MinigraphError(GGML_MISSING)

    ops = ",".join(sorted({c.op for c in cases}))
    names = {c.name: c for c in cases}
    status = {"ok": "ok", "fail": "fail", "skip": "not supported", "crash": "not supported", "hang": "fail"}
    results = []
    child = ("minigraph.tools.graph_ops", "--test-file", test_file) if test_file else ("minigraph.testing.ggml_conformance",)
    for rec in run_all(op=ops, seed=seed, child=child):
        if rec["case"] not in names:
            continue
        detail = rec.get("why", "")
        if rec["status"] == "crash":
            detail = "ggml aborted: " + re.sub(r"\S*/([^/\s]+:\d+:)", r"\1", detail)  # file:line, no build path
        elif rec["status"] == "hang":
            detail = "ggml never finished: " + detail
        elif rec["status"] == "fail":
            detail = f"NMSE {rec['nmse']:.3g} > {rec['tol']:g}"
        r = Result("ggml-CPU", rec["case"], names[rec["case"]].op, status[rec["status"]], detail)
        results.append(r)
        if out is not None:
            print_result(r, "test", seed, out, test_file)
    return results


def summary_lines(results: list[Result], backend: str, mode: str) -> list[str]:
    mine = [r for r in results if r.backend == backend]
    ok = sum(r.status == "ok" for r in mine)
    ns = sum(r.status == "not supported" for r in mine)
    fail = sum(r.status == "fail" for r in mine)
    verb = "ran" if mode == "perf" else "passed"
    lines = [f"  {backend}: {ok}/{len(mine) - ns} tests {verb}, {ns} not supported, {fail} failed"]
    ratios = [r.baseline_us / r.us_per_run for r in mine if r.baseline_us and r.us_per_run]
    if ratios:
        geo = float(np.exp(np.mean(np.log(ratios))))
        lines.append(f"  {backend} vs baseline: {geo:.2f}x (geometric mean of {len(ratios)} cases), "
                     f"{sum(x > 1.05 for x in ratios)} faster and {sum(x < 1 / 1.05 for x in ratios)} slower by more than 5%")
    return lines


CSV_COLUMNS = ("backend", "case", "op", "status", "us_per_run", "gflops", "gbps", "flops", "bytes", "baseline_us", "detail")


def render_csv(results: list[Result]) -> str:
    """One row per result (perf CSV columns, llama.cpp #27904): rates in GFLOP/s and GB/s."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        us = r.us_per_run
        w.writerow([r.backend, r.case, r.op, r.status, f"{us:.3f}" if us else "",
                    f"{r.flops / us / 1e3:.4f}" if us and r.flops else "", f"{r.bytes / us / 1e3:.4f}" if us and r.bytes else "",
                    r.flops if r.flops is not None else "", r.bytes if r.bytes is not None else "",
                    f"{r.baseline_us:.3f}" if r.baseline_us else "", r.detail])
    return buf.getvalue()


def load_baseline(path: str) -> dict[tuple[str, str], float]:
    """{(backend, case): us per run} of an earlier `perf --json` run (to compare two commits, #14392)."""
    try:
        with open(path) as f:
            doc = json.load(f)
        recs = doc["results"] if doc.get("mode") == "perf" else None
    except (OSError, ValueError, AttributeError, KeyError) as e:
        raise MinigraphError(f"--baseline {path}: cannot read it as the JSON of `test-backend-ops perf --json`: {e}") from None
    if not isinstance(recs, list):
        raise MinigraphError(f"--baseline {path}: not the output of a perf run (mode {doc.get('mode')!r:.20})")
    return {(r["backend"], r["case"]): float(r["us_per_run"]) for r in recs
            if isinstance(r, dict) and r.get("us_per_run") and "backend" in r and "case" in r}


def _open_backends(names: list[str], explicit: bool, out: Optional[TextIO]) -> tuple[list, dict]:
    """Backends that could be initialised, and {name: reason} for those that could not."""
    ready, missing = [], {}
    for name in names:
        try:
            ready.append(init_backend(name))
        except MinigraphError as e:
            missing[name] = str(e)
            if out is not None:
                print(f"Backend {name}: unavailable ({e})", file=out)
    if explicit and not ready:
        raise MinigraphError("; ".join(missing.values()))
    return ready, missing


# -- support table ---------------------------------------------------------------------------

def support_rows(cases: list[Case], backends: list, missing: dict) -> list[dict]:
    """Per op: how many of its cases each backend claims, with the first refusal reason."""
    from minigraph.core.registry import OPS

    rows = []
    for op in sorted({c.op for c in cases}):
        mine = [c for c in cases if c.op == op]
        row = {"op": op, "family": OPS[op].family, "cases": len(mine), "backends": {}}
        for b in backends:
            why = [w for w in (refusal(c, b) for c in mine) if w is not None]
            row["backends"][b.name] = {"supported": len(mine) - len(why), "reason": why[0] if why else ""}
        for name in missing:
            row["backends"][name] = None
        rows.append(row)
    return rows


def _cell(v: Optional[dict], n: int) -> str:
    if v is None:
        return "n/a"
    if v["supported"] == n:
        return "yes"
    return "no" if v["supported"] == 0 else f"partial ({v['supported']}/{n})"


def render_support(rows: list[dict], markdown: bool) -> str:
    from minigraph.tools.dump import table

    names = list(rows[0]["backends"]) if rows else []
    cells = [[r["op"], r["family"], str(r["cases"])] + [_cell(r["backends"][n], r["cases"]) for n in names]
             for r in rows]
    head = ["op", "family", "cases"] + names
    refusals = sorted({(r["op"], n, v["reason"]) for r in rows for n, v in r["backends"].items()
                       if v and v["reason"]})
    if not markdown:
        lines = table(head, cells)
        lines += [f"  {op} on {n}: {why}" for op, n, why in refusals]
        return "\n".join(lines) + "\n"
    lines = ["# Op support", "",
             "Generated by `minigraph test-backend-ops support --markdown > docs/ops.md`: for every op of",
             "the registry, how many of its conformance cases (minigraph/cases.py: contiguous, permuted",
             "and offset inputs) each backend claims through `supports_op`. `n/a`: the backend could not",
             "be initialised where this was generated.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    if refusals:
        lines += ["", "## First refusal reason per op and backend", ""]
        lines += [f"- `{op}` on {n}: {why}" for op, n, why in refusals]
    return "\n".join(lines) + "\n"


def coverage_lines() -> list[str]:
    from minigraph.core.registry import OPS

    covered = {c.op for c in CASES}
    missing = sorted(set(OPS) - covered)
    return [f"coverage: {len(covered)}/{len(OPS)} ops have cases" + (f"; without: {', '.join(missing)}" if missing else "")]


# -- the command -----------------------------------------------------------------------------

def main(args: Any, out: TextIO) -> int:
    """Dispatch on args.mode (test, perf, support); returns the exit status."""
    test_file = getattr(args, "test_file", None) or ""
    pool = None
    if test_file:
        from minigraph.tools.graph_ops import load_cases

        pool = load_cases(test_file)
    cases = select_cases(args.op or "", args.params or "", pool)
    if args.list:
        for c in cases:
            print(c.name, file=out)
        print(f"{len(cases)} cases" + (f" from {test_file}" if test_file else "; " + coverage_lines()[0]), file=out)
        return 0
    if args.show_coverage:
        print(coverage_lines()[0], file=out)
        return 0
    if args.against == "ggml":  # before any backend runs: a missing reference engine is an error
        from minigraph.testing import ggml_bridge

        if not ggml_bridge.available():
            raise MinigraphError(GGML_MISSING)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "little")
    fmt = "json" if args.json else "csv" if getattr(args, "csv", False) else "text"
    baseline = load_baseline(args.baseline) if getattr(args, "baseline", None) else {}
    if baseline and args.mode != "perf":
        raise MinigraphError("--baseline compares times: it needs perf mode")
    jobs = getattr(args, "jobs", 1)
    if jobs < 1:
        raise MinigraphError(f"-j {jobs}: expected a number of worker processes >= 1")
    if jobs > 1 and args.mode != "test":
        raise MinigraphError(f"-j {jobs}: parallel workers run test mode only (timings of workers sharing the "
                             "cores would disturb each other)")
    text = out if fmt == "text" else None
    names = [b.strip() for b in args.backend.split(",")] if args.backend else list(ALL_BACKENDS)
    if args.against == "ggml" and not args.backend:
        names = []
    backends, missing = _open_backends(names, bool(args.backend), text if args.mode != "support" else None)
    if args.mode == "support":
        rows = support_rows(cases, backends, missing)
        out.write(json.dumps(rows, indent=1) + "\n" if args.json else render_support(rows, args.markdown))
        return 0
    if text:
        print(f"Testing {len(cases)} cases, mode {args.mode}, seed {seed}", file=text)
    results: list[Result] = []
    for i, b in enumerate(backends):
        if text:
            print(f"Backend {i + 1}/{len(backends)}: {b.name}", file=text)
        if jobs > 1:
            results += run_parallel(args.mode, _init_name(b, names), cases, seed, jobs, text, test_file)
        else:
            results += run_backend(args.mode, b, cases, seed, text, test_file, baseline)
    if args.against == "ggml":
        if text:
            print("Backend ggml-CPU (ggml-python, child processes)", file=text)
        results += run_ggml(cases, seed, text, test_file)
    return finish(results, args.mode, seed, out, fmt, test_file)


def finish(results: list[Result], mode: str, seed: int, out: TextIO, fmt: str = "text", test_file: str = "") -> int:
    failing = [r for r in results if r.status == "fail"]
    backends = list(dict.fromkeys(r.backend for r in results))
    if fmt == "csv":
        out.write(render_csv(results))
        return 1 if failing else 0
    if fmt == "json":
        out.write(json.dumps({"mode": mode, "seed": seed, "results": [asdict(r) for r in results],
                              "failing": [{"case": r.case, "backend": r.backend, "repro": repro(r, seed, test_file)}
                                          for r in failing], "ok": not failing}, indent=1) + "\n")
        return 1 if failing else 0
    print("Summary:", file=out)
    for b in backends:
        print("\n".join(summary_lines(results, b, mode)), file=out)
    if failing:
        print(f"failing tests ({len(failing)}):", file=out)
        for r in failing:
            print(f"  {repro(r, seed, test_file)}", file=out)
    print("FAIL" if failing else "OK", file=out)
    return 1 if failing else 0
