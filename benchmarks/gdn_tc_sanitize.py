"""Every CUDA C++ GATED_DELTA_NET kernel (backends/cuda/gdn_tc.py) once on small shapes, each result
against the float64 reference: the script to run under compute-sanitizer on the device, e.g.

    compute-sanitizer --tool memcheck python benchmarks/gdn_tc_sanitize.py
    compute-sanitizer --tool racecheck python benchmarks/gdn_tc_sanitize.py

Shapes cover a padded tail chunk, S % 8 == 4, GQA with a q/k sequence broadcast, GDA and KDA
chunked (KDA gates down to -5 and to -12: the prep's factored and pair-by-pair diagonal blocks),
state-pass blocks of 1 or 2 column tiles and 2 or 4 warps a tile, decode GDA and KDA with K > 1
(zeroed snapshot slots) and a partial row group.
Exit status 1 if a result is off (> 2e-6 relative) or not finite.
"""
from __future__ import annotations

import sys

import numpy as np
from numba import cuda

from minigraph.backends.cuda import gdn_fast as gf, gdn_tc
from minigraph.ops.gdn_reference import gated_delta_net_reference


def inputs(rng, S, Hk, Hv, T, N, Nqk, kda, g_lo=-5.0):
    def unit(shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    return (unit((Nqk, T, Hk, S)), unit((Nqk, T, Hk, S)), rng.standard_normal((N, T, Hv, S)).astype(np.float32),
            rng.uniform(g_lo, -1e-3, (N, T, Hv, S if kda else 1)).astype(np.float32),
            rng.uniform(0.1, 1, (N, T, Hv, 1)).astype(np.float32),
            (0.1 * rng.standard_normal((N, Hv, S, S))).astype(np.float32))


def run(arrs, K, launches):
    N, T, Hv, S = arrs[2].shape
    d = [cuda.to_device(a) for a in arrs]
    out = cuda.to_device(np.full(S * Hv * (T * N + K * S * N), np.nan, np.float32))
    args = (cuda.to_device(gf.contiguous_meta(out.size, *arrs)), out, *(a.reshape(a.size) for a in d), K)
    for la in launches:
        la.kernel[la.grid, la.block](*args, *la.scalars)
    cuda.synchronize()
    return out.copy_to_host()


def main() -> int:
    if not gdn_tc.available():
        print("no sm_80+ GPU: nothing to check")
        return 0
    rng = np.random.default_rng(0)
    bad = 0
    cases = [("chunked", 128, 2, 4, 130, 2, 1, False, 1, (2, 2)), ("chunked", 128, 2, 4, 130, 2, 1, True, 1, (2, 2)),
             ("chunked", 84, 1, 2, 70, 1, 1, False, 1, (2, 2)), ("chunked", 84, 1, 2, 70, 1, 1, True, 1, (1, 4)),
             ("chunked", 128, 1, 2, 200, 1, 1, False, 1, (2, 4)), ("chunked", 128, 1, 2, 130, 1, 1, True, 1, (2, 4)),
             ("decode", 128, 2, 4, 1, 3, 1, False, 2, 4), ("decode", 84, 1, 2, 1, 2, 2, True, 1, 4)]
    for n, (form, S, Hk, Hv, T, N, Nqk, kda, K, opt) in enumerate(cases):
        g_lo = -12.0 if n == 5 else -5.0   # KDA prep: keys past the diagonal blocks' factored range
        arrs = inputs(rng, S, Hk, Hv, T, N, Nqk, kda, g_lo)
        if form == "chunked":
            las = gdn_tc.chunked_launches(S, Hv, T, N, kda, None, nj=opt[0], ks=opt[1])
        else:
            las = [gdn_tc.decode_launch(S, Hv, N, kda, rows=opt)]
        got = run(arrs, K, las).reshape(-1, S * Hv)
        ref = gated_delta_net_reference(*arrs, K)
        err = float(np.abs(got - ref).max() / np.abs(ref).max()) if np.isfinite(got).all() else np.inf
        ok = err < 2e-6
        bad += not ok
        print(f"{form} S={S} Hk={Hk} Hv={Hv} T={T} N={N}/{Nqk} {'KDA' if kda else 'GDA'} K={K} g>={g_lo} ({opt}): "
              f"{err:.1e} {'ok' if ok else 'FAIL'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
