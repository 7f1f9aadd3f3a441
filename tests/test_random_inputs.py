"""Random inputs for leafs without data (dump --profile, compare) stay within a byte budget."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.tools import cli
from minigraph.tools.graphio import fill_random_inputs


def _graph(ne0, ne1):
    ctx = mg.Context()
    x = ctx.new_tensor_2d(mg.TYPE_F32, ne0, ne1).set_name("x")
    rows = ctx.new_tensor_1d(mg.TYPE_I32, 3).set_name("rows")
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, ctx.get_rows(ctx.scale(x, 2.0), rows))
    return gf, x, rows


def test_small_inputs_are_filled_once():
    gf, x, rows = _graph(8, 4)
    assert fill_random_inputs(gf, seed=1) == 2
    assert fill_random_inputs(gf, seed=1) == 0                    # they have data now
    assert np.all(np.abs(x.numpy()) <= 1) and set(np.unique(rows.numpy())) <= {0, 1}


def test_a_terabyte_of_random_inputs_is_refused_with_the_byte_count():
    gf, x, _ = _graph(1 << 20, 1 << 18)                           # 2**38 f32: 1 TiB of storage
    need = (1 << 38) * 4 + 3 * 4 + (1 << 38) * 8                   # storage + the float64 draw
    with pytest.raises(mg.MinigraphError, match=rf"need {need} bytes .* the largest is 'x' f32"):
        fill_random_inputs(gf)
    assert x._buf is None                                          # nothing was allocated


def test_the_budget_is_a_parameter_and_a_flag(monkeypatch):
    gf, _, _ = _graph(100, 10)                                     # 4000 + 12 bytes, + 8000 drawn
    with pytest.raises(mg.MinigraphError, match="over the budget of 12000 bytes"):
        fill_random_inputs(gf, max_bytes=12000)
    monkeypatch.setenv("MINIGRAPH_RANDOM_INPUT_MAX_BYTES", "12012")
    assert fill_random_inputs(gf) == 2


def test_compare_refuses_before_allocating(tmp_path, capsys):
    f = tmp_path / "big.py"
    f.write_text("import minigraph as mg\n"
                 "def big(ctx):\n"
                 "    return ctx.scale(ctx.new_tensor_2d(mg.TYPE_F32, 1 << 20, 1 << 18), 2.0)\n")
    assert cli.main(["compare", f"{f}:big"]) == 2
    err = capsys.readouterr().err
    assert "random inputs: 1 leafs without data need" in err and "MINIGRAPH_RANDOM_INPUT_MAX_BYTES" in err
