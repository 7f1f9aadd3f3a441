"""CUDA GET_ROWS (simulator without a GPU): f32/f16/bf16 tables read in place, and an index out of
range reported after the compute as the CPU backend's MinigraphError (naming op and tensor),
not returned as a NaN row; the same graph computes once the index is fixed."""
import os

import numpy as np
import pytest

import minigraph as mg
from minigraph.core import dtypes

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _cuda():
    try:
        from numba import cuda
    except ImportError:
        return None
    return mg.backend_cuda_init(0) if SIM or cuda.is_available() else None


BE = _cuda()
pytestmark = [pytest.mark.skipif(BE is None, reason="numba-cuda is not installed or there is no GPU / simulator"),
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]


@pytest.mark.parametrize("type_", [mg.TYPE_F32, mg.TYPE_F16, mg.TYPE_BF16])
def test_get_rows_tables_of_every_float_type(type_):
    rng = np.random.default_rng(0)
    vals = rng.uniform(-3, 3, (2, 5, 6)).astype(np.float32)
    vals[0, 1, :3] = [np.inf, -np.inf, 1e-40]          # inf and a subnormal survive the widening
    ctx = mg.Context()
    table = ctx.new_tensor_3d(type_, 6, 5, 2).set_name("table")
    table.set_data(dtypes.from_float(vals, type_))
    idx = ctx.from_numpy(np.array([[4, 1, 1], [0, 3, 2]], np.int32))
    rows = ctx.get_rows(table, idx)
    assert BE.supports_op(rows)
    gf = ctx.new_graph()
    gf.build_forward_expand(rows)
    ref = mg.reference_compute(gf)[rows]
    BE.graph_compute(gf)
    np.testing.assert_array_equal(rows.numpy(), np.asarray(ref, np.float32))


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_get_rows_out_of_range_is_reported_after_compute(bad):
    ctx = mg.Context()
    table = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4)).set_name("table")
    idx = ctx.from_numpy(np.array([0, bad, 1], np.int32)).set_name("idx")
    rows = ctx.get_rows(table, idx).set_name("rows")
    y = ctx.scale(rows, 2.0)
    gf = ctx.new_graph()
    gf.build_forward_expand(y)
    with pytest.raises(mg.MinigraphError, match=f"GET_ROWS.*'rows'.*row index {bad} at indices.1, 0, 0.*outside 0..2"):
        BE.graph_compute(gf)
    idx.set_data(np.array([0, 2, 1], np.int32))     # fixed: the same graph computes, no stale error
    BE.graph_compute(gf)
    np.testing.assert_array_equal(y.numpy(), 2 * np.arange(12, dtype=np.float32).reshape(3, 4)[[0, 2, 1]])
