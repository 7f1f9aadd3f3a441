"""Commands that tell the truth: a missing reference engine is an error, profile totals follow
--filter, a Python target without :function says what to name, fused nodes keep user names,
non-integral sizes and out-of-range GET_ROWS indices are refusals. In-process, as test_cli.py."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minigraph as mg
from minigraph.backends.reference import reference_compute
from minigraph.testing import ggml_bridge
from minigraph.tools import cli, profile
from minigraph.tools.profile import NodeTime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPHS = os.path.join(ROOT, "examples", "graphs.py")


def run(*argv):
    out = io.StringIO()
    rc = cli.main(list(argv), out=out)
    return rc, out.getvalue()


# -- --against ggml without ggml-python ------------------------------------------------------

def test_against_ggml_without_ggml_python_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(ggml_bridge, "_g", None)  # what `import ggml.ggml` failing leaves behind
    rc, out = run("test-backend-ops", "--against", "ggml", "-o", "NEG", "--seed", "1")
    err = capsys.readouterr().err
    assert rc == 2, out
    assert 'pip install -e ".[ggml]"' in err and "ggml-python" in err
    assert "not supported" not in out and not out.rstrip().endswith("OK")
    rc, out = run("test-backend-ops", "-b", "cpu", "--against", "ggml", "-o", "NEG", "--seed", "1")
    assert rc == 2 and "Testing" not in out  # refused before the CPU cases run


def test_against_ggml_without_the_package_in_a_fresh_process():
    """The whole command, in a process where `import ggml` fails (the package is blocked)."""
    code = ("import sys; sys.modules['ggml'] = None; sys.modules['ggml.ggml'] = None\n"
            "from minigraph.tools import cli\n"
            "sys.exit(cli.main(['test-backend-ops', '--against', 'ggml', '-o', 'NEG', '--seed', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert 'pip install -e ".[ggml]"' in proc.stderr
    assert "not supported" not in proc.stdout


def test_ggml_child_reports_a_missing_package(monkeypatch):
    """The child process of the ggml run says so once, and the parent turns that into an error."""
    from minigraph.testing import ggml_conformance

    monkeypatch.setattr(ggml_bridge, "_g", None)
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    assert ggml_conformance.main(["-o", "NEG"]) == 3
    assert json.loads(buf.getvalue())["status"] == "unavailable"

    class Proc:
        returncode, stdout, stderr = 3, buf.getvalue(), ""

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(mg.MinigraphError, match=r'pip install -e "\.\[ggml\]"'):
        ggml_conformance.run_all(op="NEG")


def test_ggml_child_that_hangs_is_killed_reported_and_skipped(monkeypatch):
    """A child stuck in a case (ggml's abort once deadlocked in its backtrace fork) is killed at
    the timeout; the case is reported as "hang" and the next child resumes after it, with
    ggml's backtrace fork turned off."""
    from minigraph.testing import ggml_conformance

    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd[cmd.index("--after") + 1], kw["env"].get("GGML_NO_BACKTRACE")))
        if len(calls) == 1:
            out = '{"case": "A", "status": "ok"}\n{"case": "B", "status": "start"}\n'
            raise subprocess.TimeoutExpired(cmd, kw["timeout"], output=out.encode(), stderr=b"")

        class Proc:
            returncode, stdout, stderr = 0, '{"case": "C", "status": "ok"}\n', ""
        return Proc()

    monkeypatch.setattr(subprocess, "run", fake_run)
    res = ggml_conformance.run_all(op="NEG", timeout=5)
    assert [(r["case"], r["status"]) for r in res] == [("A", "ok"), ("B", "hang"), ("C", "ok")]
    assert "5 s" in res[1]["why"] and calls == [("", "1"), ("B", "1")]


# -- profile totals follow --filter ------------------------------------------------------------

ROWS = [NodeTime(0, "RMS_NORM", "n0", "CPU", [4, 1, 1, 1], 1e-6, 10.0, 100),
        NodeTime(1, "MUL_MAT", "up", "CPU", [4, 1, 1, 1], 8e-6, 1000.0, 100),
        NodeTime(2, "MUL_MAT", "down", "CPU", [4, 1, 1, 1], 2e-6, 1000.0, 100),
        NodeTime(3, "ADD", "out", "CPU", [4, 1, 1, 1], 4e-6, 10.0, 100)]


def test_profile_filter_applies_to_by_op_and_sum():
    text = profile.render_profile(ROWS, 20e-6, top=None, pattern="MUL_MAT")
    by_op = text.split("by op:")[1]
    assert "MUL_MAT" in by_op and "ADD" not in by_op and "RMS_NORM" not in by_op
    assert "sum of the 2 of 4 nodes matching --filter 'MUL_MAT': 10.0 us" in text
    assert "profile: 2 nodes matching 'MUL_MAT'" in text
    shares = [float(line.split()[6]) for line in text.split("by op:")[0].splitlines() if " MUL_MAT " in line]
    assert sum(shares) == pytest.approx(100.0, abs=0.2)  # shares are of the filtered sum
    top = profile.render_profile(ROWS, 20e-6, top=1, pattern="MUL_MAT|ADD")
    assert "top 1 of 3 nodes matching" in top and "by op: top 1 of 2 ops" in top
    assert "sum of the 3 of 4 nodes matching" in top and "14.0 us" in top
    doc = profile.profile_json(ROWS, 20e-6, top=None, pattern="ADD")["profile"]
    assert [a["op"] for a in doc["by_op"]] == ["ADD"] and doc["sum_seconds"] == pytest.approx(4e-6)
    assert doc["sum_covers"] == "the 1 of 4 nodes matching --filter 'ADD'"
    plain = profile.render_profile(ROWS, 20e-6)
    assert "sum of all 4 nodes: 15.0 us" in plain


def test_dump_profile_filter_end_to_end():
    rc, out = run("dump", GRAPHS + ":mlp", "-p", "n_embd=16", "-p", "n_ff=32", "--no-fuse", "--profile",
                  "--filter", "MUL_MAT", "--top", "2", "--repeat", "1")
    assert rc == 0
    prof = out.split("profile:")[1]
    assert "ADD" not in prof.split("by op")[1] and "matching --filter 'MUL_MAT'" in prof
    rc, out = run("dump", GRAPHS + ":mlp", "--no-fuse", "--profile", "--filter", "ADD", "--format", "json",
                  "--repeat", "1")
    doc = json.loads(out)["profile"]
    assert rc == 0 and {a["op"] for a in doc["by_op"]} == {"ADD"} and doc["filter"] == "ADD"


# -- a .py target without :function ---------------------------------------------------------------

def test_python_target_without_function_lists_them(capsys, tmp_path):
    rc, _ = run("dump", GRAPHS)
    err = capsys.readouterr().err
    listed = "mlp, ffn_quant, delta_net, delta_net_cache, mla_decode"   # examples/graphs.py's targets, in file order
    assert rc == 2 and ":FUNCTION" in err and listed in err and "Extra data" not in err
    rc, _ = run("dump", GRAPHS + ":")
    assert rc == 2 and listed in capsys.readouterr().err
    f = tmp_path / "empty.py"
    f.write_text("X = 1\n")
    rc, _ = run("compare", str(f))
    assert rc == 2 and "functions in" in capsys.readouterr().err


# -- fused nodes keep user names -------------------------------------------------------------------

def test_fused_elementwise_carries_absorbed_names():
    rc, out = run("dump", GRAPHS + ":mlp", "-p", "n_tokens=4")
    assert rc == 0 and "SILU,MUL (ffn_gate_act)" in out
    rc, out = run("dump", GRAPHS + ":mlp", "-p", "n_tokens=4", "--format", "json")
    fused = [r for r in json.loads(out)["nodes"] if r["op"] == "FUSED_ELEMENTWISE"]
    assert fused and fused[0]["fused_names"] == ["ffn_gate_act"]
    rc, out = run("dump", GRAPHS + ":mlp", "--format", "dot")
    assert "fused from SILU,MUL (ffn_gate_act)" in out


def test_fused_node_keeps_the_name_of_the_output_it_replaces():
    ctx = mg.Context()
    a = ctx.from_numpy(np.linspace(-1, 1, 8, dtype=np.float32)).set_name("a")
    y = ctx.mul(ctx.exp(a).set_name("e"), a).set_name("y")
    gf = ctx.new_graph()
    gf.build_forward_expand(y)
    run_gf = mg.optimize(gf)
    fused = [n for n in run_gf.nodes if n.op == "FUSED_ELEMENTWISE"]
    assert len(fused) == 1 and fused[0].name == "y" and fused[0].op_params["fused_names"] == ["e"]


def test_fused_delta_net_outputs_keep_their_names():
    rc, out = run("dump", GRAPHS + ":delta_net", "-p", "n_tokens=5", "--format", "json")
    nodes = json.loads(out)["nodes"]
    assert any(r["op"] == "GATED_DELTA_NET" for r in nodes)
    names = {r["name"] for r in nodes if r["op"] == "VIEW"}
    assert names == {"dn_out", "dn_state"}
    assert not any(r["name"].startswith("node_") for r in nodes if r["op"] == "VIEW")


# -- new_tensor sizes, GET_ROWS indices -----------------------------------------------------------------

@pytest.mark.parametrize("bad", [2.5, "3", None, True, float("nan")])
def test_new_tensor_refuses_non_integral_sizes(bad):
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError, match="ne0 must be an integer"):
        ctx.new_tensor_2d(mg.TYPE_F32, bad, 3)
    with pytest.raises(mg.MinigraphError, match="ne2 must be an integer"):
        ctx.new_tensor_4d(mg.TYPE_F32, 2, 3, bad, 1)


def test_new_tensor_accepts_integral_sizes():
    ctx = mg.Context()
    assert ctx.new_tensor_2d(mg.TYPE_F32, np.int64(4), 3.0).ne == (4, 3, 1, 1)


@pytest.mark.parametrize("index", [10, -1])
def test_reference_get_rows_out_of_range_is_a_refusal(index):
    ctx = mg.Context()
    table = ctx.from_numpy(np.ones((10, 8), np.float32)).set_name("table")
    idx = ctx.from_numpy(np.array([1, index, 2], np.int32)).set_name("idx")
    rows = ctx.get_rows(table, idx).set_name("rows")
    with pytest.raises(mg.MinigraphError) as e:
        reference_compute(rows)
    msg = str(e.value)
    assert msg.startswith("GET_ROWS:") and f"row index {index}" in msg and "indices[1, 0, 0]" in msg
    assert "'table'" in msg and "'idx'" in msg and "'rows'" in msg
