"""backends/cpu/vexp.py: the vectorised float32 exp of the softmax and the KDA gates, against float64."""
import numpy as np

from minigraph.backends.cpu import vexp


def test_exp_row_matches_float64_and_its_limits():
    x = np.concatenate([np.linspace(-87.0, 88.0, 20001, dtype=np.float32),
                        np.array([np.nan, -np.inf, np.inf, -1e30, 1e30, -87.5, 88.5, 0.0, -0.0], np.float32)])
    got = x.copy()
    vexp.exp_row(got)
    inside = np.isfinite(x) & (x > vexp.EXP_MIN) & (x <= vexp.EXP_MAX)
    want = np.exp(x[inside].astype(np.float64))
    assert np.abs(got[inside] / want - 1).max() < 2e-7                     # expf's accuracy
    out = x[~inside]
    assert np.isnan(got[~inside][np.isnan(out)]).all()                     # NaN stays NaN
    assert (got[~inside][out <= vexp.EXP_MIN] == 0).all()                  # -inf and below: 0
    assert np.isposinf(got[~inside][out > vexp.EXP_MAX]).all()             # +inf and above: inf


def test_exp_nonpos_is_exp_row_on_its_domain():
    from numba import njit
    apply = njit(lambda x: np.array([vexp.exp_nonpos(v) for v in x], np.float32))
    x = np.array([-np.inf, -200.0, -87.0, -30.5, -1.0, -1e-7, 0.0], np.float32)
    row = x.copy()
    vexp.exp_row(row)
    assert np.array_equal(apply(x), row)
