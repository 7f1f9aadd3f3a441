"""Run minigraph's conformance cases on ggml's own CPU backend (through ggml-python).

ggml aborts the process on an argument it rejects, so this runs as its own process:
`python -m minigraph.testing.ggml_conformance [-o OP] [-p REGEX]` prints one JSON line per case
("start" before it, then the result) and the parent reads them; a crash shows up as a case that
started and never finished.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional

import numpy as np

from minigraph.core.cases import CASES, Case, nmse
from minigraph.core.errors import MinigraphError
from minigraph.backends.reference import reference_compute

# what ggml's CPU backend accepts of our cases: layouts it asserts on, and our extensions
NON_CONTIGUOUS_OK = {"CONT", "CPY", "DUP", "MUL_MAT", "OUT_PROD", "REPEAT", "CONCAT", "PAD", "GET_ROWS",
                     "SUM", "SUM_ROWS", "MEAN", "PERMUTE", "TRANSPOSE"}
# ggml computes these f32 functions through an f16 table or an approximation
GGML_TOLERANCE = {"GELU": 1e-5, "SILU": 1e-6, "SIGMOID": 1e-6, "SOFTPLUS": 1e-6}
# FLASH_ATTN_EXT: ggml rounds Q to K's dot type (f16 / bf16) and, for f16 V, accumulates V in
# f16; f32 K/V stay f32. Measured on the cases (seed 1): f32 <= 6e-14, f16 <= 2.3e-6, bf16 <= 2.5e-7.
# A quantized cache: Q rounded to Q8_0 values, as minigraph's CPU does (the cases' own tolerance).
GGML_FA_TOLERANCE = {"f32": 1e-6, "f16": 2e-5, "bf16": 5e-6, "q8_0": 2e-5, "q4_0": 2e-5, "q4_1": 2e-5,
                     "q5_0": 2e-5, "q5_1": 2e-5}


def ggml_tolerance(case: Case) -> float:
    """The NMSE that ggml's CPU backend is allowed against the float64 reference."""
    tol = max(case.max_nmse, GGML_TOLERANCE.get(case.op, 0.0))
    if case.op == "FLASH_ATTN_EXT":   # a built-in case names type_KV; an exported one, K's type (src1)
        m = re.search(r"type_KV=(\w+)", case.vars) or re.search(r"src1=(\w+)\[", case.vars)
        tol = max(tol, GGML_FA_TOLERANCE.get(m.group(1) if m else "f32", 2e-5))
    return tol


def ggml_accepts(case: Case) -> Optional[str]:
    """None when ggml can run the case, else why it is skipped."""
    from minigraph.core.registry import OPS

    v = case.vars
    if OPS[case.op].family == "fused":
        return "minigraph extension: a fused op with no ggml twin"
    if "layout=perm" in v and case.op not in NON_CONTIGUOUS_OK:
        return "ggml needs contiguous rows for this op"
    if case.op == "CUMSUM" and "dim=0" not in v:
        return "minigraph extension: cumsum along ne[dim>0]"
    if "bcast=1" in v:
        return "minigraph extension: gated_delta_net_set_bcast (planned in ggml.h, TAG_GGML_GDN_BCAST)"
    if "ext=" in v:
        return "minigraph extension: " + v.split("ext=")[1]
    if case.op == "SOLVE_TRI" and not ("left=1,lower=1,uni=0" in v):
        return "minigraph extension: ggml implements left/lower/non-unit only"
    if case.op == "SET_ROWS" and "type=bf16" in v:
        return "the bridge has no numpy type for bf16 data"
    if case.op == "SET_ROWS" and "src=f16" in v:
        return "ggml-python 0.0.45's ggml_set_rows takes f32 rows only (current ggml also f16)"
    return None


def run_on_ggml(case: Case, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from minigraph.core.context import Context
    from minigraph.testing import ggml_bridge

    ref_ctx = Context()
    ref_out = case.build(ref_ctx, np.random.default_rng(seed))
    ref = reference_compute(ref_out)[ref_out]
    gctx = ggml_bridge.GgmlContext()
    out = case.build(gctx, np.random.default_rng(seed))
    got = ggml_bridge.compute([out], n_threads=2)[0]
    return np.asarray(got).reshape(ref.shape), ref


def main(argv: Optional[list[str]] = None, cases: Optional[list[Case]] = None) -> int:
    """The child process: `cases` (default the built-in CASES) filtered by -o / -p."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--op", default="", help="comma list of ops")
    ap.add_argument("-p", "--params", default="", help="regex over the case's parameter string")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--after", default="", help="(internal) resume after this case")
    args = ap.parse_args(argv)
    from minigraph.testing import ggml_bridge

    if not ggml_bridge.available():  # no reference engine: say so once, never per case
        print(json.dumps({"case": "", "status": "unavailable", "why": "ggml-python is not installed"}), flush=True)
        return 3
    ops = set(filter(None, args.op.split(",")))
    started = not args.after
    for case in (CASES if cases is None else cases):
        if not started:
            started = case.name == args.after
            continue
        if (ops and case.op not in ops) or (args.params and not re.search(args.params, case.vars)):
            continue
        skip = ggml_accepts(case)
        if skip:
            print(json.dumps({"case": case.name, "status": "skip", "why": skip}), flush=True)
            continue
        print(json.dumps({"case": case.name, "status": "start"}), flush=True)
        try:
            got, ref = run_on_ggml(case, args.seed)
        except Exception as e:  # noqa: BLE001 - Python refused it: the bridge, not ggml (ggml's refusal aborts)
            why = f"the ggml-python bridge cannot build it: {type(e).__name__}: {e}".splitlines()[0][:300]
            print(json.dumps({"case": case.name, "status": "skip", "why": why}), flush=True)
            continue
        tol = ggml_tolerance(case)
        err = nmse(got, ref)
        ok = bool(np.isfinite(got).all() == np.isfinite(ref).all() and err <= tol)
        print(json.dumps({"case": case.name, "status": "ok" if ok else "fail", "nmse": err, "tol": tol}), flush=True)
    return 0


def run_all(op: str = "", params: str = "", seed: int = 1, timeout: float = 300.0,
            child: tuple = ("minigraph.testing.ggml_conformance",)) -> list[dict]:
    """Run the cases in child processes; a case during which ggml aborted is reported as
    "crash" (ggml refused it), one a child spent `timeout` seconds in as "hang" (the child is
    killed), and the run resumes after it. `child`: the module run with -m and its leading
    arguments (another case list: minigraph.tools.graph_ops --test-file FILE)."""
    import subprocess

    results: list[dict] = []
    after = ""
    while True:
        cmd = [sys.executable, "-m", *child, "-o", op, "-p", params, "--seed", str(seed), "--after", after]
        # GGML_NO_BACKTRACE: on an abort ggml forks to print a backtrace (gdb, else
        # backtrace_symbols); in a process with worker threads that fork can deadlock on a lock
        # another thread held, and the abort then never ends. The assert line is all we read.
        env = dict(os.environ, GGML_NO_BACKTRACE="1")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            stdout, stderr, hung = proc.stdout, proc.stderr, False
        except subprocess.TimeoutExpired as e:   # subprocess.run has killed the child
            stdout, stderr, hung = _text(e.stdout), _text(e.stderr), True
        current = None
        for line in stdout.splitlines():
            if not line.startswith('{"case"'):
                continue  # ggml's abort handler prints a backtrace to stdout
            rec = json.loads(line)
            if rec["status"] == "unavailable":
                raise MinigraphError(f"ggml conformance: {rec['why']} in {sys.executable}: "
                                     'pip install -e ".[ggml]"')
            if rec["status"] == "start":
                current = rec["case"]
            else:
                results.append(rec)
                current = None
        if not hung and proc.returncode == 0 and current is None:
            return results
        if current is None:
            raise RuntimeError(f"ggml conformance run {'hung between cases' if hung else 'failed'}: {stderr[-2000:]}")
        if hung:
            results.append({"case": current, "status": "hang", "why": f"no result after {timeout:g} s (child killed)"})
        else:
            tail = [ln for ln in stderr.splitlines() if "GGML_ASSERT" in ln or "error" in ln.lower()]
            results.append({"case": current, "status": "crash", "why": (tail[-1] if tail else stderr[-300:]).strip()})
        after = current


def _text(b: object) -> str:
    """TimeoutExpired's captured output: bytes even when the run asked for text."""
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


if __name__ == "__main__":
    sys.exit(main())
