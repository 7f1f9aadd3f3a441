"""A model graph's ops as conformance cases (minigraph/tools/graph_ops.py): `minigraph export-ops`
writes them, `minigraph test-backend-ops --test-file` runs them (llama.cpp #19896)."""
import io
import json
import os

import numpy as np
import pytest

import minigraph as mg
from minigraph.testing import ggml_bridge
from minigraph.tools import cli, graph_ops
from minigraph.tools.conformance import check_case
from minigraph.tools.graphio import graph_from_dict, load_target
from minigraph.tools.test_backend_ops import Result, repro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPHS = os.path.join(ROOT, "examples", "graphs.py")


def _export(tmp_path, target: str, *extra: str) -> tuple[str, dict]:
    path = str(tmp_path / "ops.json")
    out = io.StringIO()
    assert cli.main(["export-ops", f"{GRAPHS}:{target}", "-o", path, *extra], out) == 0
    assert "test-backend-ops --test-file" in out.getvalue()
    with open(path) as f:
        return path, json.load(f)


def _entry(doc: dict, op: str, name: str = "") -> dict:
    return next(e for e in doc["ops"] if e["op"] == op and (not name or name in e["names"]))


def _src(entry: dict, i: int) -> dict:
    """The record of source i of the entry's op (its graph's last record)."""
    recs = entry["graph"]["tensors"]
    return recs[recs[-1]["src"][i]]


def test_export_keeps_layouts_and_counts_repeats(tmp_path):
    _, doc = _export(tmp_path, "mla_decode")
    assert doc["format"] == "minigraph-ops" and doc["source"].endswith(":mla_decode")
    fa = _entry(doc, "FLASH_ATTN_EXT")
    k, v = _src(fa, 1), _src(fa, 2)
    # V stays a view of K's storage: the same leaf, K's row strides, offset 0 (MLA, seed #18986)
    assert v["view_src"] == k["view_src"] is not None and v["nb"][1:] == k["nb"][1:] and v["ne"][0] < k["ne"][0]
    rope = _entry(doc, "ROPE", "q_pe")    # the pe part of q: a strided view at an offset
    src = _src(rope, 0)
    assert src["op"] == "VIEW" and src["view_offs"] > 0 and src["nb"][1] > src["ne"][0] * 4
    _, mlp = _export(tmp_path, "mlp")     # gate and up projections: one entry, counted twice
    up = [e for e in mlp["ops"] if e["op"] == "MUL_MAT" and e["count"] == 2]
    assert len(up) == 1 and "ffn_up_out" in up[0]["names"]
    assert sum(e["count"] for e in mlp["ops"]) == 7


def test_file_cases_pass_on_the_cpu(tmp_path):
    path, _ = _export(tmp_path, "mla_decode")
    cpu = mg.backend_cpu_init(1)
    cases = graph_ops.load_cases(path)
    assert {c.op for c in cases} >= {"FLASH_ATTN_EXT", "ROPE", "SET_ROWS", "MUL_MAT", "CONCAT"}
    for c in cases:
        assert c.origin == path
        assert check_case(c, cpu, 5) is None, c.name
    out = io.StringIO()
    assert cli.main(["test-backend-ops", "--test-file", path, "-b", "cpu", "-o", "ROPE,SET_ROWS", "--seed", "2"], out) == 0
    text = out.getvalue()
    assert "CPU: 3/3 tests passed" in text and "OK" in text.splitlines()[-1]
    two = io.StringIO()     # -j: the workers load the same file
    assert cli.main(["test-backend-ops", "--test-file", path, "-b", "cpu", "-o", "ROPE,SET_ROWS", "--seed", "2",
                     "-j", "2"], two) == 0
    assert [ln for ln in two.getvalue().splitlines() if ln.startswith("  ")] == \
        [ln for ln in text.splitlines() if ln.startswith("  ")]
    listed = io.StringIO()
    assert cli.main(["test-backend-ops", "--test-file", path, "--list", "-p", "f16"], listed) == 0
    assert f"from {path}" in listed.getvalue() and "SET_ROWS(id=" in listed.getvalue()


def test_a_fused_delta_net_and_its_unfused_ops(tmp_path):
    path, doc = _export(tmp_path, "delta_net", "-p", "n_tokens=9", "-p", "head_dim=8")
    assert [e["op"] for e in doc["ops"]].count("GATED_DELTA_NET") == 1
    path_u, doc_u = _export(tmp_path, "delta_net", "-p", "n_tokens=9", "-p", "head_dim=8", "--no-fuse")
    ops = {e["op"] for e in doc_u["ops"]}
    assert "GATED_DELTA_NET" not in ops and {"SOLVE_TRI", "CUMSUM", "TRI"} <= ops
    cpu = mg.backend_cpu_init(1)
    for c in graph_ops.load_cases(path) + [c for c in graph_ops.load_cases(path_u) if c.op in ("SOLVE_TRI", "CUMSUM")]:
        assert check_case(c, cpu, 3) is None, c.name


def test_a_state_written_into_the_cache(tmp_path):
    """The fused graph of a decode step over a recurrent cache: the GATED_DELTA_NET with its state
    destination (in place over the input state) is a case whose conformance reads the state there,
    so a kernel that does not write it fails; the copy it replaced is listed as skipped."""
    path, doc = _export(tmp_path, "delta_net_cache")
    gdn = _entry(doc, "GATED_DELTA_NET")
    assert len(gdn["graph"]["tensors"][-1]["src"]) == 7
    assert [s["op"] for s in doc["skipped"]] == ["CPY"] and "backends skip" in doc["skipped"][0]["why"]
    cpu = mg.backend_cpu_init(1)
    (case,) = [c for c in graph_ops.load_cases(path) if c.op == "GATED_DELTA_NET"]
    assert check_case(case, cpu, 4) is None

    class NoStateWrite(type(cpu)):
        """The CPU, but its GATED_DELTA_NET kernel leaves the state destination alone."""
        def graph_compute(self, graph):
            node = graph.nodes[-1]
            keep = node.src[6].numpy().copy()
            super().graph_compute(graph)
            mg.backend_tensor_set(node.src[6], keep)
    assert "NMSE" in check_case(case, NoStateWrite(1), 4)


def _values(entry: dict, seed: int = 0) -> tuple:
    gf = graph_from_dict(entry["graph"])
    node = gf.nodes[-1]
    vals = graph_ops.input_values(gf, node, np.random.default_rng(seed))
    by_leaf = {id(leaf): vals[k] for k, leaf in enumerate(gf.leafs)}
    return node, [None if s is None else by_leaf.get(id(s.root)) for s in node.src]


def test_inputs_keep_each_op_well_posed(tmp_path):
    """Default uniform [-1, 1) inputs would make a 64-row triangle blow up, index rows outside the
    cache and give gates > 0; each op's OpDef.sample says what its sources must hold."""
    _, doc = _export(tmp_path, "delta_net", "--no-fuse")
    node, (a, _) = _values(_entry(doc, "SOLVE_TRI"))
    n = node.src[0].ne[0]
    assert np.all(np.diagonal(a, axis1=-2, axis2=-1) >= 2.0) and np.abs(a - np.eye(n) * a).max() <= 0.2
    _, fused = _export(tmp_path, "delta_net")
    _, (q, k, v, g, beta, state) = _values(_entry(fused, "GATED_DELTA_NET"))
    np.testing.assert_allclose(np.linalg.norm(k, axis=-1), 1.0, rtol=1e-12)
    assert g.max() < 0 and g.min() >= -20 and 0 <= beta.min() and beta.max() <= 1
    _, mla = _export(tmp_path, "mla_decode", "-p", "n_past=40", "-p", "kv_size=64")
    node, (_, rows, cache) = _values(_entry(mla, "SET_ROWS"))
    assert rows.min() >= 0 and rows.max() < node.src[2].ne[1]
    _, srcs = _values(_entry(mla, "ROPE", "q_pe"))
    assert srcs[1].max() > 1      # positions over a context, not the default 0 / 1


def test_repro_line_names_the_file():
    line = repro(Result("CPU", "ADD(id=3,src0=f32[4,1,1,1])", "ADD", "fail"), 7, "model ops.json")
    assert "--test-file 'model ops.json'" in line and "-b CPU" in line and "--seed 7" in line


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(format="minigraph-graph"), ["not a minigraph-ops file", "export-ops"]),
    (lambda d: d.update(version=2), ["version 2"]),
    (lambda d: d.update(ops=[]), ["lists no ops"]),
    (lambda d: d["ops"][1].update(op="NOPE"), ["op #1", "known 'op'"]),
    (lambda d: d["ops"][0]["graph"]["tensors"][-1].update(ne=[7, 7, 7, 7]), ["op #0", "ne"]),
    (lambda d: d["ops"][0].update(op="ADD"), ["op #0", "must end in one ADD node"]),
    (lambda d: d["ops"][0].update(count="two"), ["'count' must be an integer"]),
])
def test_bad_files_are_refused_naming_the_entry(tmp_path, edit, words):
    path, doc = _export(tmp_path, "mlp")
    edit(doc)
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(mg.MinigraphError) as e:
        graph_ops.load_cases(path)
    for w in words:
        assert w in str(e.value), str(e.value)
    err = io.StringIO()
    assert cli.main(["test-backend-ops", "--test-file", path, "-b", "cpu"], err) == 2


def test_unreadable_file_and_missing_output(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(mg.MinigraphError, match="cannot read it as a minigraph-ops file"):
        graph_ops.load_cases(str(bad))
    with pytest.raises(mg.MinigraphError, match="cannot write"):
        graph_ops.save_ops(load_target(f"{GRAPHS}:mlp"), str(tmp_path / "no" / "such" / "dir.json"))


@pytest.mark.ggml
@pytest.mark.skipif(not ggml_bridge.available(), reason="needs ggml-python")
def test_file_cases_against_ggml(tmp_path):
    path, _ = _export(tmp_path, "mla_decode")
    out = io.StringIO()
    assert cli.main(["test-backend-ops", "--test-file", path, "--against", "ggml", "-o", "SET_ROWS,CONCAT,ROPE,FLASH_ATTN_EXT",
                     "--seed", "1"], out) == 0
    assert "ggml-CPU: 6/6 tests passed" in out.getvalue(), out.getvalue()


def test_an_input_that_cannot_be_a_leaf_is_skipped_with_its_reason():
    """An in-place result over a permuted view is neither contiguous nor a view node: the op
    reading it is listed under "skipped", the others are exported."""
    ctx = mg.Context()
    x = ctx.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4))
    s = ctx.scale_inplace(ctx.permute(x, 1, 0, 2, 3), 2.0)
    out = ctx.cont(s)
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    doc = graph_ops.export_ops(gf)
    assert [e["op"] for e in doc["ops"]] == ["SCALE"]
    assert doc["skipped"][0]["op"] == "CONT" and "is not contiguous" in doc["skipped"][0]["why"]
