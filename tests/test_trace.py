"""`minigraph trace` (minigraph/tools/trace.py): every node's value after a run, as llama.cpp's
llama-eval-callback prints them, and the first node whose output is not finite."""
import io
import json
import os

import numpy as np

import minigraph as mg
from minigraph.tools import cli, trace
from minigraph.tools.graphio import fill_random_inputs, load_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "examples", "graphs.py") + ":mlp"

NAN_TARGET = '''
import numpy as np
import minigraph as mg

def nan_at_sqrt(ctx):
    x = ctx.from_numpy(np.array([4.0, 1.0, -1.0, 9.0], np.float32)).set_name("x")
    s = ctx.sqrt(ctx.scale(x, 1.0)).set_name("root")        # NaN born here (sqrt of -1)
    return ctx.sum(ctx.add(s, s)).set_name("total")
'''


def run(*argv):
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


def test_every_node_with_the_values_a_reference_run_gives():
    rc, out = run("trace", MLP, "--json", "--no-fuse")
    res = json.loads(out)
    gf = load_target(MLP)
    fill_random_inputs(gf, 0)
    want = mg.reference_compute(gf)
    compute = [n for n in gf.nodes if n.op not in ("VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE")]
    assert rc == 0 and res["traced"] == res["of"] == len(compute)
    for rec, n in zip(res["nodes"], compute):
        assert rec["op"] == n.op and rec["ne"] == list(n.ne)
        np.testing.assert_allclose(rec["sum"], want[n].sum(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose([rec["min"], rec["max"]], [want[n].min(), want[n].max()], rtol=1e-5, atol=1e-6)
        assert rec["nonfinite"] == 0


def test_filter_and_values():
    rc, out = run("trace", MLP, "--filter", "MUL_MAT", "-v", "-n", "2")
    assert rc == 0 and out.startswith("trace on cpu: 3 of 7 nodes")
    assert out.count("MUL_MAT(") == 3 and "RMS_NORM" not in out and "..." in out
    assert run("trace", MLP, "--filter", "(")[0] == 2 and run("trace", MLP, "-v", "-n", "0")[0] == 2


def test_stop_at_the_first_nan(tmp_path):
    path = tmp_path / "nan_graph.py"
    path.write_text(NAN_TARGET)
    for way in ("cpu", "reference"):
        rc, out = run("trace", f"{path}:nan_at_sqrt", "-b", way, "--stop-at-nan", "--filter", "NOTHING", "--no-fuse")
        assert rc == 1, out
        assert "stopped: node 1 SQRT 'root' is the first whose output is not finite" in out
        assert "non-finite 1 (1 NaN)" in out and "total" not in out   # the later nodes are not printed
    rc, out = run("trace", f"{path}:nan_at_sqrt", "--no-fuse")         # without the flag: every node, exit 0
    assert rc == 0 and out.count("non-finite") == 3
    rc, out = run("trace", f"{path}:nan_at_sqrt", "--stop-at-nan")       # fused: the chain's one kernel is named
    assert rc == 1 and "FUSED_ELEMENTWISE 'node_0' is the first" in out


def test_the_record_of_an_empty_and_an_all_nan_tensor():
    ctx = mg.Context()
    t = ctx.new_tensor_1d(mg.TYPE_F32, 3)
    rec = trace.node_record(0, t, np.full(3, np.nan), {}, edge=1)
    assert rec["sum"] is None and rec["nonfinite"] == rec["nan"] == 3 and "nan" in rec["values"]


def test_a_fused_state_write_shows_the_state_where_the_op_wrote_it():
    """The fused graph of a decode step over a recurrent cache: the GATED_DELTA_NET leaves its
    snapshot slot unwritten and writes the cache; its record shows the state it wrote there (the
    same sum as the float64 reference of the whole packed result, the output and the state of the
    unfused graph), not the slot's stale bytes."""
    target = os.path.join(ROOT, "examples", "graphs.py") + ":delta_net_cache"
    rc, out = run("trace", target, "--json")
    res = json.loads(out)
    assert rc == 0
    gdn = next(r for r in res["nodes"] if r["op"] == "GATED_DELTA_NET")
    assert len(gdn["src"]) == 7
    gf = load_target(target)
    fill_random_inputs(gf, 0)
    want = mg.reference_compute(gf)
    by_name = {n.name: n for n in gf.nodes}
    packed = want[by_name["dn_out"]].sum() + want[by_name["dn_state_write"]].sum()   # output, then slot 0
    np.testing.assert_allclose(gdn["sum"], packed, rtol=1e-4, atol=1e-4)
    assert abs(packed - want[by_name["dn_out"]].sum()) > 1.0    # the state's share is not negligible
