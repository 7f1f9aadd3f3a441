"""Run one conformance case on a backend against the float64 reference (what test-backend-ops does per case)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from minigraph.backends.reference import reference_compute
from minigraph.core import dtypes
from minigraph.core.cases import Case, nmse
from minigraph.core.context import Context
from minigraph.core.registry import OPS


def run_case(case: Case, backend: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(backend output, float64 reference) of one case; the reference runs first, since a
    backend may write into its inputs (in-place ops)."""
    ctx = Context()
    out = case.build(ctx, np.random.default_rng(seed))
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    ref = reference_compute(gf)[out]
    backend.graph_compute(gf)
    return node_values(out), ref


def node_values(out: Any) -> np.ndarray:
    """The node's values after a backend ran it; where it writes a source instead of part of its
    result (OpDef.written_at: GATED_DELTA_NET's state destination), that source's values in that
    part (what the float64 reference holds there)."""
    got = out.numpy()
    op = OPS[out.op]
    for slot in op.written_srcs:
        if slot < len(out.src) and op.written_at is not None:
            flat = got.reshape(-1)
            w = out.src[slot].numpy().reshape(-1)
            start = op.written_at(out, slot) // dtypes.type_size(out.type)
            flat[start:start + w.size] = w
    return got


def check_case(case: Case, backend: Any, seed: int = 0) -> Optional[str]:
    """None if the backend matches the reference, else what broke (NaN/inf first, then NMSE)."""
    out, ref = run_case(case, backend, seed)
    if out.shape != ref.shape:
        return f"shape {out.shape} != reference {ref.shape}"
    bad = np.isfinite(out) != np.isfinite(ref)
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        return f"non-finite mismatch at {i}: got {out[i]}, want {ref[i]}"
    fin = np.isfinite(ref)
    err = nmse(out[fin], ref[fin])
    if err > case.max_nmse:
        diff = np.abs(np.where(fin, out - ref, 0))
        i = tuple(int(x) for x in np.unravel_index(np.argmax(diff), diff.shape))
        return f"NMSE {err:.3g} > {case.max_nmse:g}; worst at {i}: got {out[i]}, want {ref[i]}"
    return None
