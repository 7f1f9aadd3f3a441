"""Graph files are untrusted input (mg.load_graph, minigraph/tools/graphio.py).

Every node is rebuilt through its op's builder (OpDef.rebuild) and must match its record; leafs
get exactly their declared bytes. The probe's edits are refused one by one, and a hypothesis test
mutates saved graphs field by field: each load raises MinigraphError, or gives a graph that
computes on the CPU what the original computed (the same file), or, when the edit changed a value
the file legitimately holds (an op param, a view's geometry, a name), what the float64 reference
says that graph computes.
"""
import base64
import copy
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigraph as mg
from minigraph.backends.reference import reference_compute
from minigraph.core.cases import nmse
from minigraph.tools.graphio import fill_random_inputs, graph_from_dict, graph_to_dict, load_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPHS = os.path.join(ROOT, "examples", "graphs.py")
# hypothesis examples per saved graph; CI keeps the whole file under ~60 s
EXAMPLES = int(os.environ.get("MINIGRAPH_GRAPH_FILE_EXAMPLES", "60"))


def odd_views(ctx: mg.Context) -> mg.Tensor:
    """Views at odd element offsets and strides into one f32 leaf, a permute, an in-place op."""
    rng = np.random.default_rng(1)
    base = ctx.from_numpy(rng.uniform(-1, 1, 37).astype(np.float32)).set_name("base")
    v = ctx.view_2d(base, 5, 6, 20, 12).set_name("v_odd")     # rows of 5 at element offset 3
    c = ctx.cont(ctx.permute(v, 1, 0, 2, 3)).set_name("c")    # [6, 5]
    w = ctx.view_2d(base, 6, 5, 24, 4).set_name("w_odd")      # rows of 6 at element offset 1
    s = ctx.scale_inplace(ctx.add(c, w), 0.5)
    rows = ctx.get_rows(s, ctx.from_numpy(np.array([4, 0, 2], np.int32)).set_name("idx"))
    return ctx.sum_rows(rows).set_name("out")


def _graph(name: str) -> mg.Graph:
    if name == "mlp":
        return load_target(GRAPHS + ":mlp", {"n_embd": 8, "n_ff": 16, "n_tokens": 3})
    if name == "mlp_fused":
        return mg.optimize(_graph("mlp")).graph
    if name == "delta_net":
        return load_target(GRAPHS + ":delta_net", {"n_tokens": 3, "head_dim": 4, "n_heads": 1})
    if name == "delta_net_fused":
        return mg.optimize(_graph("delta_net")).graph
    if name in ("mla_decode", "mla_rope_shift"):   # ROPE, SET_ROWS, FLASH_ATTN_EXT with V a view of K
        return load_target(GRAPHS + ":" + name)
    ctx = mg.Context()
    gf = ctx.new_graph()
    gf.build_forward_expand(odd_views(ctx))
    return gf


def _cpu_outputs(gf: mg.Graph) -> list:
    """The outputs as 4-d (ne3, ne2, ne1, ne0) arrays: Tensor.numpy() cannot reshape an empty
    tensor whose zero is in an inner dim (ne [4, 4, 0, 1]; reported for minigraph/core/tensor.py)."""
    cpu = mg.backend_cpu_init(1)
    cpu.graph_compute(gf)
    return [np.array(t.buffer.view(t)) for t in gf.outputs]


def _saved(gf: mg.Graph) -> dict:
    """The graph file of gf, as parsed JSON (tuples become lists, as on disk)."""
    return json.loads(json.dumps(graph_to_dict(gf)))


_DOCS: dict = {}


def _doc(name: str) -> tuple[dict, list]:
    """The saved graph (as parsed JSON) and its CPU results, made once per name."""
    if name not in _DOCS:
        gf = _graph(name)
        doc = _saved(gf)
        _DOCS[name] = (doc, _cpu_outputs(graph_from_dict(doc)))
    return _DOCS[name]


def _rec(doc: dict, name: str) -> dict:
    return next(r for r in doc["tensors"] if r["name"] == name)


def _refused(doc: dict, *words: str) -> str:
    with pytest.raises(mg.MinigraphError) as e:
        graph_from_dict(doc)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    return msg


# -- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "mlp_fused", "delta_net", "delta_net_fused", "odd_views", "mla_decode",
                                  "mla_rope_shift"])
def test_round_trip_reproduces_the_result(name):
    gf = _graph(name)
    want = _cpu_outputs(gf)
    doc, got = _doc(name)
    assert _saved(graph_from_dict(doc)) == doc  # loading and saving again changes nothing
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_fused_names_survive_the_file(tmp_path):
    path = str(tmp_path / "dn.json")
    mg.save_graph(_graph("delta_net_fused"), path)
    g = mg.load_graph(path)
    assert {t.name for t in g.nodes} >= {"dn_out", "dn_state"}
    fused = next(t for t in g.nodes if t.op == "GATED_DELTA_NET")
    assert fused.op_params["fused_pattern"] == "delta_net_chunked" and len(fused.op_params["fused_from"]) > 10


def test_sinks_survive_the_file():
    """soft_max_add_sinks's src[2] goes through the file (rebuilt through the module function),
    and the values agree before and after."""
    rng = np.random.default_rng(5)
    ctx = mg.Context()
    sm = ctx.soft_max_ext(ctx.from_numpy(rng.standard_normal((2, 3, 5, 7)).astype(np.float32)), None, 0.5, 0.0)
    mg.soft_max_add_sinks(sm, ctx.from_numpy(rng.standard_normal(3).astype(np.float32)).set_name("sinks"))
    gf = mg.Graph()
    gf.build_forward_expand(sm)
    want = _cpu_outputs(gf)
    doc = _saved(gf)
    back = graph_from_dict(doc)
    node = next(t for t in back.nodes if t.op == "SOFT_MAX")
    assert node.src[2].name == "sinks" and node.op_params["has_sinks"] == 1
    np.testing.assert_array_equal(_cpu_outputs(back)[0], want[0])
    assert float(want[0].sum(axis=-1).max()) < 1.0   # a sink takes a share of every row


# -- the probe's edits, one by one ---------------------------------------------------------------

def test_mul_mat_ne_nb_inconsistent_with_sources():
    doc = copy.deepcopy(_doc("mlp")[0])
    r = _rec(doc, "ffn_up_out")
    r["ne"][1] += 1
    r["nb"][2] = r["nb"][3] = r["ne"][0] * r["ne"][1] * 4
    _refused(doc, "tensor #", "'ffn_up_out' (MUL_MAT)", "field 'ne'")
    doc = copy.deepcopy(_doc("mlp")[0])
    _rec(doc, "ffn_up_out")["nb"][1] = 4
    _refused(doc, "'ffn_up_out'", "field 'nb'")


def test_negative_nb_on_a_leaf():
    doc = copy.deepcopy(_doc("mlp")[0])
    _rec(doc, "x")["nb"][1] = -32
    _refused(doc, "'x' (leaf)", "field 'nb'", "contiguous")


def test_view_offset_not_a_multiple_of_the_element_size():
    doc = copy.deepcopy(_doc("odd_views")[0])
    _rec(doc, "v_odd")["view_offs"] = 6
    _refused(doc, "'v_odd' (VIEW)", "multiples of the element size 4")


def test_view_reaching_past_its_source():
    doc = copy.deepcopy(_doc("odd_views")[0])
    _rec(doc, "v_odd")["nb"][1] = 400  # nb pointing past the data
    _refused(doc, "'v_odd' (VIEW)", "view reaches byte")
    doc = copy.deepcopy(_doc("odd_views")[0])
    _rec(doc, "w_odd")["view_offs"] = 4 * 30
    _refused(doc, "'w_odd' (VIEW)", "view reaches byte")


def test_leaf_data_must_have_the_declared_size():
    doc = copy.deepcopy(_doc("mlp")[0])
    r = _rec(doc, "x")
    r["data"] = base64.b64encode(base64.b64decode(r["data"])[:-4]).decode()
    _refused(doc, "'x' (leaf)", "field 'data'", "bytes")
    r["data"] = r["data"][:-3] + "!!!"
    _refused(doc, "'x' (leaf)", "field 'data'", "base64")


def test_nodes_out_of_topological_order():
    doc = copy.deepcopy(_doc("mlp")[0])
    doc["nodes"] = doc["nodes"][::-1]
    _refused(doc, "topological order")
    doc = copy.deepcopy(_doc("mlp")[0])
    doc["tensors"].reverse()
    _refused(doc, "field 'id'")


def test_negative_and_huge_ne():
    doc = copy.deepcopy(_doc("mlp")[0])
    _rec(doc, "x")["ne"][0] = -8
    _refused(doc, "'x' (leaf)", "field 'ne'")
    _rec(doc, "x")["ne"][0] = 1 << 62
    _refused(doc, "'x' (leaf)", "field 'ne'")


@pytest.mark.parametrize("field, value, words", [
    ("type", "f64", ["field 'type'", "unknown type"]),
    ("op", "MATMUL", ["field 'op'", "unknown op"]),
    ("op", 3, ["field 'op'"]),
    ("ne", "8,4", ["field 'ne'", "list of 4 integers"]),
    ("ne", [8, 4, 1, True], ["field 'ne'"]),
    ("src", [0, 99], ["field 'src[1]'", "earlier tensor"]),
    ("src", "0", ["field 'src'"]),
    ("view_src", 1.5, ["field 'view_src'"]),
    ("flags", 64, ["field 'flags'"]),
    ("name", ["x"], ["field 'name'"]),
    ("op_params", [], ["field 'op_params'"]),
])
def test_wrong_field_types_name_the_tensor_and_field(field, value, words):
    doc = copy.deepcopy(_doc("mlp")[0])
    rec = _rec(doc, "ffn_out")
    rec[field] = value
    _refused(doc, "tensor #", *words)


def test_missing_keys_and_params():
    doc = copy.deepcopy(_doc("mlp")[0])
    del _rec(doc, "ffn_out")["nb"]
    _refused(doc, "'ffn_out'", "field 'nb'", "missing")
    doc = copy.deepcopy(_doc("mlp")[0])
    r = next(r for r in doc["tensors"] if r["op"] == "RMS_NORM")
    del r["op_params"]["eps"]
    _refused(doc, "(RMS_NORM)", "eps must be a number")
    r["op_params"]["eps"] = "tiny"
    _refused(doc, "(RMS_NORM)", "eps must be a number")
    doc = copy.deepcopy(_doc("mlp")[0])
    del doc["nodes"]
    _refused(doc, "missing 'nodes'")


def test_params_the_builder_would_not_record():
    doc = copy.deepcopy(_doc("delta_net")[0])
    r = next(r for r in doc["tensors"] if r["op"] == "SOLVE_TRI")
    r["op_params"]["left"] = True  # a bool where the builder records 0/1
    _refused(doc, "(SOLVE_TRI)", "field 'op_params'")
    doc = copy.deepcopy(_doc("mlp_fused")[0])
    r = next(r for r in doc["tensors"] if r["op"] == "FUSED_ELEMENTWISE")
    r["op_params"]["code"] += 1
    _refused(doc, "(FUSED_ELEMENTWISE)", "field 'op_params'")
    r["op_params"]["program"] = [["EXP"]]
    _refused(doc, "(FUSED_ELEMENTWISE)", "builder")


def test_leaf_type_the_op_refuses():
    doc = copy.deepcopy(_doc("mlp")[0])
    r = _rec(doc, "x")
    r["type"], r["nb"] = "i32", r["nb"]  # same size: the data fits, the ops refuse i32
    _refused(doc, "expects float tensors")


def test_not_json_and_not_utf8(tmp_path):
    p = tmp_path / "g.json"
    p.write_bytes(b"\xff\xfe{")
    with pytest.raises(mg.MinigraphError, match="cannot read"):
        mg.load_graph(str(p))
    p.write_text("[" * 100000)
    with pytest.raises(mg.MinigraphError, match="cannot read"):
        mg.load_graph(str(p))
    p.write_text("[]")
    with pytest.raises(mg.MinigraphError, match="not a minigraph graph file"):
        mg.load_graph(str(p))


# -- mutations -------------------------------------------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
SEMANTIC_GEOMETRY = {"VIEW", "RESHAPE", "CONT", "REPEAT"}  # ops whose ne/nb/offset are their parameters


def _paths(doc: dict) -> list[tuple]:
    """Every mutable place of a graph file: (tensor index, field[, element or param key])."""
    out = []
    for k, r in enumerate(doc["tensors"]):
        for f, v in r.items():
            out.append((k, f))
            if isinstance(v, list):
                out += [(k, f, i) for i in range(len(v))]
            if isinstance(v, dict):
                out += [(k, f, key) for key in v]
    out += [("graph", key) for key in ("leafs", "nodes", "outputs")]
    return out


MUTATIONS = ("+1", "-1", "neg", "huge", "str", "none", "float", "bool", "list", "delete", "truncate", "shuffle")


def _mutate(doc: dict, path: tuple, how: str, rng: np.random.Generator) -> bool:
    """Apply one mutation in place; False when it does not apply to that place."""
    if path[0] == "graph":
        lst = doc[path[1]]
        if how == "shuffle" and len(lst) > 1:
            rng.shuffle(lst)
        elif how == "delete" and lst:
            del lst[int(rng.integers(len(lst)))]
        elif how == "+1" and lst:
            lst[-1] += 1
        else:
            return False
        return True
    k, field = path[:2]
    holder, key = (doc["tensors"][k], field) if len(path) == 2 else (doc["tensors"][k][field], path[2])
    if how == "delete":
        del holder[key]
        return True
    v = holder[key]
    if how == "truncate":
        if not isinstance(v, str) or not v:
            return False
        holder[key] = v[: len(v) // 2] if field == "data" else v[:-1]
        return True
    if how in ("+1", "-1", "neg", "huge"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        holder[key] = {"+1": v + 1, "-1": v - 1, "neg": -v if v else -1, "huge": (1 << 62) if isinstance(v, int) else 1e300}[how]
        return True
    holder[key] = {"str": "x", "none": None, "float": 1.5, "bool": True, "list": [], "shuffle": {"a": 1}}[how]
    return True


def _semantic(doc: dict, path: tuple, how: str) -> bool:
    """Places whose values the file legitimately chooses (a load may then mean another graph):
    op params, names, flags, which earlier tensor a source is (when the builder accepts it), in
    place or not (view_src of an _inplace op), the geometry of view-like ops; a leaf without
    data is a file saved with data=False."""
    if path[0] == "graph":
        return path[1] == "outputs"
    rec = doc["tensors"][path[0]]
    return (path[1] in ("op_params", "name", "flags", "src", "view_src") or path == (path[0], "data") and how == "delete"
            or (path[1] in ("ne", "nb", "view_offs") and rec["op"] in SEMANTIC_GEOMETRY))


@pytest.mark.parametrize("name", ["mlp", "mlp_fused", "delta_net_fused", "odd_views", "delta_net"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_are_refused_or_compute_right(name, data):
    doc, want = _doc(name)
    bad = copy.deepcopy(doc)
    paths = _paths(doc)
    path = data.draw(st.sampled_from(paths), label="path")
    how = data.draw(st.sampled_from(MUTATIONS), label="mutation")
    if not _mutate(bad, path, how, np.random.default_rng(data.draw(st.integers(0, 99), label="seed"))):
        return
    try:
        g = graph_from_dict(bad)
    except mg.MinigraphError as e:
        assert str(e).startswith("load_graph: "), e
        return
    reordered = path in (("graph", "leafs"), ("graph", "nodes")) and sorted(bad[path[1]]) == sorted(doc[path[1]])
    if reordered or _saved(g) == doc:  # the same graph again (a shuffle that kept a valid order)
        for a, b in zip(want, _cpu_outputs(g)):
            np.testing.assert_array_equal(a, b)
        return
    assert _semantic(doc, path, how), f"{path} {how}: a structural edit loaded as a different graph"
    fill_random_inputs(g)
    ref = reference_compute(g)
    got = _cpu_outputs(g)  # whatever the values: it ran, inside its tensors' memory
    if any(np.any(np.abs(np.array(ref.view4(n))) > F32_MAX) for n in g.nodes):
        return  # an edited param (scale 1e300) overflows f32: the f32 kernels and the f64 reference part ways
    for t, x in zip(g.outputs, got):
        r = np.array(ref.view4(t))
        assert np.isfinite(x).all() == np.isfinite(r).all()
        fin = np.isfinite(r)
        assert nmse(x[fin], r[fin]) < 1e-6


def test_region_strides_wider_than_the_destination():
    """Found by the mutation test: ACC/SET with a huge stride on a size-1 dim (it never moves, so
    the extent check passed, and numpy's as_strided overflowed on it)."""
    ctx = mg.Context()
    a = ctx.new_tensor_2d(mg.TYPE_F32, 8, 4)
    b = ctx.new_tensor_2d(mg.TYPE_F32, 4, 2)
    with pytest.raises(mg.MinigraphError, match="exceed the 128-byte destination"):
        ctx.acc(a, b, 32, 1 << 62, 1 << 62, 0)
    assert ctx.acc(a, b, 32, 128, 128, 0).ne == (8, 4, 1, 1)


def test_reference_value_of_an_empty_tensor():
    """Found by the mutation test (a view edited to ne [4, 4, 0, 1]): the reference keeps the
    zero-size dim instead of failing to reshape (Tensor.numpy() still does: see the report)."""
    ctx = mg.Context()
    a = ctx.new_tensor_4d(mg.TYPE_F32, 4, 4, 0, 1)
    a.set_data(np.zeros((1, 0, 4, 4), np.float32))
    b = ctx.neg(a)
    assert reference_compute(b)[b].shape == (0, 4, 4)
