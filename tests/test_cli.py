"""The `minigraph` command: dump (formats, filters, profile), compare, test-backend-ops, graph
files, exit codes and error frames. Commands run in-process through minigraph.cli.main."""
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minigraph as mg
from minigraph.core.registry import OPS
from minigraph.testing.restricted import RestrictedCpu
from minigraph.core.registry import OPS
from minigraph.tools import cli, dump, test_backend_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "examples", "graphs.py") + ":mlp"
DELTA = os.path.join(ROOT, "examples", "graphs.py") + ":delta_net"
GRAPHS = os.path.join(ROOT, "examples", "graphs.py")


def run(*argv):
    out = io.StringIO()
    rc = cli.main(list(argv), out=out)
    return rc, out.getvalue()


class LyingCpu(RestrictedCpu):
    """Claims every op but fails on SUB: a dishonest supports_op."""

    name = "CPU-L"

    def graph_compute(self, graph):
        if any(n.op == "SUB" for n in graph.nodes):
            raise mg.MinigraphError("SUB: kernel exploded")
        super().graph_compute(graph)


def test_python_m_minigraph_help():
    proc = subprocess.run([sys.executable, "-m", "minigraph", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    assert "dump" in proc.stdout and "test-backend-ops" in proc.stdout


def test_dump_text_counts_and_histogram():
    rc, out = run("dump", MLP, "-p", "n_tokens=4", "--no-fuse")
    assert rc == 0
    assert "totals: 8 nodes (8 compute, 0 views), 5 leafs, 1 splits, 0 copies" in out
    assert "op histogram: MUL_MAT 3, MUL 2" in out
    assert "[128,4,1,1]" in out  # -p n_tokens=4 reached the function
    assert "compute buffer: CPU" in out


def test_dump_filter_keeps_matching_rows():
    rc, out = run("dump", MLP, "--filter", "MUL_MAT|ffn_out", "--no-fuse")
    assert rc == 0
    assert "filter 'MUL_MAT|ffn_out': 4 of 8 nodes" in out
    body = out.split("totals:")[0]
    assert "RMS_NORM" not in body and "SILU" not in body


def test_dump_fused_from_column():
    rc, out = run("dump", DELTA, "--format", "json")
    doc = json.loads(out)
    fused = [r for r in doc["nodes"] if r["fused_from"]]
    assert doc["fusion"] == "on" and fused
    assert doc["totals"]["nodes"] < json.loads(run("dump", DELTA, "--format", "json", "--no-fuse")[1])["totals"]["nodes"]


def test_dump_bad_filter_is_an_error(capsys):
    rc, _ = run("dump", MLP, "--filter", "(")
    assert rc == 2
    assert "bad regex" in capsys.readouterr().err


def test_dump_json_and_views():
    rc, out = run("dump", DELTA, "-p", "n_tokens=20", "--format", "json", "--no-fuse")
    assert rc == 0
    doc = json.loads(out)
    t = doc["totals"]
    assert t["nodes"] == len(doc["nodes"]) and t["leafs"] == len(doc["leafs"]) == 6
    assert t["views"] > 0 and t["histogram"]["SOLVE_TRI"] == 1
    views = [r for r in doc["nodes"] if r["view"]]
    assert views and all("offs" in r["view"] for r in views)
    assert all(r["backend"] == "CPU" for r in doc["nodes"])


def test_dump_dot():
    rc, out = run("dump", MLP, "--format", "dot", "--no-fuse")
    assert rc == 0
    assert out.startswith("digraph G {") and out.rstrip().endswith("}")
    assert "subgraph cluster_split0" in out and 'fillcolor="pink"' in out
    assert "MUL_MAT (f32)" in out


def test_dump_dot_shows_splits_and_copies(tmp_path):
    p = dump.prepare("mlp", graph=mg.load_graph(_saved_mlp(str(tmp_path))), fuse=False, backends=[RestrictedCpu({"SILU"}), mg.backend_cpu_init(1)])
    text = dump.render_text(p)
    assert "3 splits" in text and "CPU-R" in text
    dot = dump.render_dot(p)
    assert dot.count("subgraph cluster_split") == 3
    assert "color=red" in dot and "copy 2048 B" in dot


def test_dump_svg(monkeypatch, capsys):
    if shutil.which("dot"):
        rc, out = run("dump", MLP, "--format", "svg", "--filter", "MUL_MAT")
        assert rc == 0 and "<svg" in out
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc, _ = run("dump", MLP, "--format", "png", "-o", os.devnull)
    assert rc == 2
    assert "Graphviz" in capsys.readouterr().err


def test_dump_profile():
    rc, out = run("dump", MLP, "--profile", "--top", "3", "--repeat", "2", "--no-fuse")
    assert rc == 0
    assert "profile: top 3 of 8 nodes" in out and "GFLOP/s" in out and "by op:" in out
    rc, out = run("dump", MLP, "--profile", "--format", "json", "--repeat", "1", "--no-fuse")
    prof = json.loads(out)["profile"]
    assert len(prof["nodes"]) == 8 and abs(sum(n["share"] for n in prof["nodes"]) - 1) < 1e-9


def _saved_mlp(tmp, data=True):
    path = os.path.join(tmp, f"mlp_{int(data)}.json")
    from minigraph.tools.graphio import load_target

    mg.save_graph(load_target(MLP), path, data=data)
    return path


def test_save_load_round_trip(tmp_path):
    from minigraph.tools.graphio import load_target

    gf = load_target(DELTA, {"n_tokens": 20})
    path = str(tmp_path / "dn.json")
    mg.save_graph(gf, path)
    g2 = mg.load_graph(path)
    assert [n.op for n in g2.nodes] == [n.op for n in gf.nodes]
    assert [(n.ne, n.nb, n.view_offs, n.op_params) for n in g2.nodes] == \
           [(n.ne, n.nb, n.view_offs, n.op_params) for n in gf.nodes]
    assert [t.name for t in g2.leafs] == [t.name for t in gf.leafs]
    cpu = mg.backend_cpu_init(1)
    cpu.graph_compute(gf)
    cpu.graph_compute(g2)
    for a, b in zip(gf.outputs, g2.outputs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    rc, out = run("dump", path, "--no-fuse")
    assert rc == 0 and f"{len(gf.nodes)} nodes" in out


def test_save_without_data_gets_random_inputs(tmp_path):
    path = _saved_mlp(str(tmp_path), data=False)
    g = mg.load_graph(path)
    assert all(not t.has_data() for t in g.leafs)
    rc, out = run("compare", path)
    assert rc == 0 and "8 nodes match" in out


def test_load_graph_rejects_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"format": "something"}')
    with pytest.raises(mg.MinigraphError, match="not a minigraph graph file"):
        mg.load_graph(str(bad))


def test_error_in_user_file_shows_their_frame(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text("import minigraph as mg\n\ndef build(ctx, n=4):\n"
                 "    a = ctx.new_tensor_2d(mg.TYPE_F32, n, 3)\n"
                 "    return ctx.add(a, ctx.new_tensor_2d(mg.TYPE_F32, n + 1, 3))\n")
    rc, _ = run("dump", f"{f}:build")
    err = capsys.readouterr().err
    assert rc == 2
    assert f'File "{f}", line 5, in build' in err and "ctx.add(a" in err
    assert "Traceback" not in err and "ops/" not in err
    rc, _ = run("dump", f"{f}:missing")
    assert rc == 2 and "has no function 'missing' (functions: build)" in capsys.readouterr().err
    rc, _ = run("dump", f"{f}:build", "-p", "oops")
    assert rc == 2 and "expected name=value" in capsys.readouterr().err


def test_compare_match_and_divergence():
    rc, out = run("compare", MLP, "--backends", "cpu,reference")
    assert rc == 0 and "8 nodes match" in out
    rc, out = run("compare", MLP, "--backends", "reference,cpu", "--tol", "1e-30")
    assert rc == 1
    assert "first divergence at node 0 RMS_NORM 'node_0'" in out
    assert "first bad index" in out and "max |diff|" in out and "std" in out
    rc, out = run("compare", MLP, "--tol", "1e-30", "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["diverged"] and doc["node"]["op"] == "RMS_NORM" and "max_abs_diff" in doc


def test_mla_targets_dump_and_compare():
    """The MLA layer (decode, prefill) and the K-cache rope shift work with dump and compare."""
    rc, out = run("dump", GRAPHS + ":mla_decode", "-p", "n_past=5", "--format", "json")
    doc = json.loads(out)
    hist = doc["totals"]["histogram"]
    assert rc == 0 and hist["FLASH_ATTN_EXT"] == 1 and hist["SET_ROWS"] == 1 and hist["ROPE"] == 2
    order = [r["op"] for r in doc["nodes"]]
    assert order.index("SET_ROWS") < order.index("FLASH_ATTN_EXT")
    rc, out = run("dump", GRAPHS + ":mla_prefill", "-p", "flash_attn=0", "--format", "json")
    fused = [r for r in json.loads(out)["nodes"] if r["op"] == "FLASH_ATTN_EXT"]
    assert rc == 0 and len(fused) == 1 and "SOFT_MAX" in fused[0]["fused_from"]
    rc, out = run("compare", GRAPHS + ":mla_prefill", "-p", "flash_attn=0", "--fused-vs-unfused")
    assert rc == 0 and "unfused vs fused" in out and "nodes match" in out
    rc, out = run("compare", GRAPHS + ":mla_decode", "-p", "n_past=5", "--backends", "cpu,reference")
    assert rc == 0 and "nodes match" in out
    rc, out = run("compare", GRAPHS + ":mla_rope_shift", "-p", "kv_size=6", "--backends", "reference,cpu")
    assert rc == 0 and "ROPE 'k_shifted'" in out
    rc, out = run("dump", GRAPHS + ":mla_rope_shift", "-p", "kv_size=6", "--format", "json")
    rope = next(r for r in json.loads(out)["nodes"] if r["op"] == "ROPE")
    assert rc == 0 and rope["view"]["offs"] == 16 * 2   # n_lora_kv f16 values into each row


def test_compare_fused_vs_unfused(capsys):
    rc, out = run("compare", MLP, "--fused-vs-unfused")
    assert rc == 0 and "unfused vs fused" in out  # fusion is exact here: nothing may diverge


def test_test_backend_ops_ok_and_summary():
    rc, out = run("test-backend-ops", "-b", "cpu", "-o", "ADD,VIEW", "-p", "layout=(cont|offs)", "--seed", "3")
    assert rc == 0
    assert "ADD(ne_a=[10,5,4,3],ne_b=[10,5,4,3],layout=cont): OK" in out
    assert "CPU: 8/8 tests passed, 0 not supported, 0 failed" in out and out.rstrip().endswith("OK")


def test_test_backend_ops_filters():
    case = "MUL_MAT(ne_a=[16,9,1,1],ne_b=[16,5,1,1],layout=cont)"
    rc, out = run("test-backend-ops", "-o", f"{case},SUM", "--list")
    assert rc == 0 and case in out and "4 cases" in out
    assert run("test-backend-ops", "-o", "NOT_AN_OP")[0] == 2
    assert run("test-backend-ops", "-o", "ADD", "-p", "no-such-param")[0] == 2
    assert run("test-backend-ops", "-o", "ADD(nope)")[0] == 2


def test_every_registry_op_has_cases():
    rc, out = run("test-backend-ops", "--show-coverage")
    assert rc == 0 and f"{len(OPS)}/{len(OPS)} ops have cases" in out


def test_test_backend_ops_failures_and_not_supported(monkeypatch):
    fake = {"cpu": RestrictedCpu({"ADD"}), "lie": LyingCpu()}
    monkeypatch.setattr(test_backend_ops, "init_backend", lambda name: fake[name])
    rc, out = run("test-backend-ops", "-b", "cpu,lie", "-o", "ADD,SUB", "-p", "layout=cont", "--seed", "5")
    assert rc == 1
    assert "not supported [CPU-R] (ADD: CPU-R refuses ADD)" in out
    assert "FAIL [CPU-L] MinigraphError: SUB: kernel exploded" in out
    assert "seed 5; repro: minigraph test-backend-ops test -b CPU-L -o" in out
    assert "CPU-R: 3/3 tests passed, 3 not supported, 0 failed" in out
    assert "failing tests (3):" in out and out.rstrip().endswith("FAIL")
    rc, out = run("test-backend-ops", "-b", "lie", "-o", "SUB", "-p", "layout=cont", "--seed", "5", "--json")
    doc = json.loads(out)
    assert rc == 1 and not doc["ok"] and len(doc["failing"]) == 3
    assert {r["status"] for r in doc["results"]} == {"fail"}


def test_unavailable_backend(monkeypatch, capsys):
    def init(name):
        if name == "cuda":
            raise mg.MinigraphError("backend CUDA0 unavailable: ImportError: no numba-cuda")
        return mg.backend_cpu_init(1)

    monkeypatch.setattr(test_backend_ops, "init_backend", init)
    rc, out = run("test-backend-ops", "-o", "NEG", "--seed", "1")
    assert rc == 0 and "Backend cuda: unavailable" in out and "CPU: 3/3 tests passed" in out
    rc, _ = run("test-backend-ops", "-b", "cuda", "-o", "NEG")
    assert rc == 2 and "no numba-cuda" in capsys.readouterr().err
    rc, out = run("test-backend-ops", "support", "-o", "NEG,ADD", "--markdown")
    assert rc == 0 and "| op | family | cases | CPU | cuda |" in out and "| NEG | elementwise | 3 | yes | n/a |" in out


def test_perf_mode():
    rc, out = run("test-backend-ops", "perf", "-b", "cpu", "-o", "MUL_MAT,EXP", "-p", "layout=cont")
    assert rc == 0
    assert "us/run" in out and "GFLOP/s" in out and "GB/s" in out


def test_perf_csv_and_a_baseline_from_another_run(tmp_path):
    """Comparing two commits (llama.cpp #14392): perf --json of one, --baseline of the other."""
    rc, out = run("test-backend-ops", "perf", "-b", "cpu", "-o", "EXP,NEG", "-p", "layout=cont", "--json")
    base = tmp_path / "base.json"
    base.write_text(out)
    rc, out = run("test-backend-ops", "perf", "-b", "cpu", "-o", "EXP,NEG", "-p", "layout=(cont|perm)", "--baseline", str(base))
    assert rc == 0 and out.count("x vs baseline") == 2      # only the cases the baseline has
    assert "CPU vs baseline:" in out and "(geometric mean of 2 cases)" in out
    rc, out = run("test-backend-ops", "perf", "-b", "cpu", "-o", "EXP", "-p", "layout=cont", "--csv", "--baseline", str(base))
    rows = out.strip().splitlines()
    assert rc == 0 and rows[0].startswith("backend,case,op,status,us_per_run,gflops,gbps") and len(rows) == 2
    assert float(rows[1].split(",")[-2]) > 0       # the baseline's time, beside this run's
    assert run("test-backend-ops", "test", "-o", "EXP", "--baseline", str(base))[0] == 2
    (tmp_path / "bad.json").write_text('{"mode": "test", "results": []}')
    assert run("test-backend-ops", "perf", "-o", "EXP", "--baseline", str(tmp_path / "bad.json"))[0] == 2


def test_parallel_workers_give_what_one_process_gives():
    """-j N (llama.cpp #23637): N worker processes, results in case order."""
    args = ("test-backend-ops", "-b", "cpu", "-o", "ADD,NEG,CUMSUM", "-p", "layout=(cont|offs)", "--seed", "3")
    rc1, one = run(*args)
    rc2, two = run(*args, "-j", "2")
    lines = lambda text: [ln for ln in text.splitlines() if ln.startswith("  ")]  # noqa: E731
    assert rc1 == rc2 == 0 and lines(one) == lines(two) and len(lines(one)) > 10
    assert run(*args, "-j", "0")[0] == 2 and run("test-backend-ops", "perf", "-o", "NEG", "-j", "2")[0] == 2
    # a worker that cannot run fails its cases with its own error, not silently
    got = test_backend_ops.run_parallel("test", "no-such-backend", test_backend_ops.select_cases("NEG"), 1, 2, None)
    assert len(got) == 3 and all(r.status == "fail" and "worker process failed" in r.detail for r in got)


@pytest.mark.ggml
def test_against_ggml():
    pytest.importorskip("ggml")
    rc, out = run("test-backend-ops", "--against", "ggml", "-o", "NEG,TRANSPOSE", "--seed", "1")
    assert rc == 0 and "[ggml-CPU]" in out and "ggml-CPU: 5/5 tests passed, 1 not supported" in out


def test_test_backend_ops_on_the_cuda_backend():
    """CI has no GPU: conftest.py turns on numba-cuda's simulator, and the same cases run there."""
    pytest.importorskip("numba.cuda")
    rc, out = run("test-backend-ops", "-b", "cuda", "-o", "NEG,ADD,CUMSUM,TRI", "-p", "layout=cont", "--seed", "2")
    assert rc == 0 and "CUDA0:" in out and " 0 failed" in out, out
