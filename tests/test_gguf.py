"""GGUF files: small files written with gguf's own writer, loaded as leaves over the mapped file,
saved back, listed by `minigraph dump`."""
import io

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import minigraph as mg  # noqa: E402
from minigraph.core import quants  # noqa: E402
from minigraph.tools.cli import main  # noqa: E402

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 256)).astype(np.float32)
B = RNG.standard_normal((2, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_tensor("blk.0.ffn_up.weight", quants.quantize(W, mg.TYPE_Q4_K), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.add_tensor("blk.0.attn_q.weight", quants.quantize(W, mg.TYPE_Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", B)
    w.add_tensor("token_embd.weight", W.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_load_gives_named_typed_leaves_over_the_mapped_file(model):
    ctx = mg.Context()
    ts, meta = mg.gguf_load(model, ctx)
    assert list(ts) == ["blk.0.ffn_up.weight", "blk.0.attn_q.weight", "output_norm.weight", "token_embd.weight"]
    q = ts["blk.0.ffn_up.weight"]
    assert (q.type, q.ne, q.name) == (mg.TYPE_Q4_K, (256, 6, 1, 1), "blk.0.ffn_up.weight")
    np.testing.assert_array_equal(q.numpy(copy=False), quants.quantize(W, mg.TYPE_Q4_K))
    np.testing.assert_array_equal(ts["output_norm.weight"].numpy(), B)
    np.testing.assert_array_equal(ts["token_embd.weight"].numpy(), W.astype(np.float16))
    base = q.root._buf.data        # the leaf's memory is a view of the reader's memmap: no copy
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert base is not None and str(base.filename) == str(model)
    assert np.shares_memory(q.root._buf.data, base)
    assert meta["llama.block_count"] == 2 and meta["tokenizer.ggml.tokens"] == ["<s>", "a", "b"]
    assert meta.types["llama.block_count"] == (gguf.GGUFValueType.UINT32,)


def test_loaded_quantized_weights_compute(model):
    ctx = mg.Context()
    ts, _ = mg.gguf_load(model, ctx)
    x = RNG.standard_normal((3, 256)).astype(np.float32)
    out = ctx.mul_mat(ts["blk.0.attn_q.weight"], ctx.from_numpy(x))
    rows = ctx.get_rows(ts["blk.0.ffn_up.weight"], ctx.from_numpy(np.array([4, 1], np.int32)))
    gf = mg.Graph()
    gf.build_forward_expand(out)
    gf.build_forward_expand(rows)
    mg.backend_cpu_init(2).graph_compute(gf)
    wq = quants.dequantize(quants.quantize(W, mg.TYPE_Q8_0), mg.TYPE_Q8_0).astype(np.float64)
    want = x.astype(np.float64) @ wq.T
    assert ((out.numpy() - want) ** 2).sum() / (want ** 2).sum() < 1e-4
    w4 = quants.dequantize(quants.quantize(W, mg.TYPE_Q4_K), mg.TYPE_Q4_K)
    np.testing.assert_array_equal(rows.numpy(), w4[[4, 1]])


def test_save_writes_back_the_same_file(model, tmp_path):
    ctx = mg.Context()
    ts, meta = mg.gguf_load(model, ctx)
    again = tmp_path / "again.gguf"
    mg.gguf_save(again, ts, meta)
    assert again.read_bytes() == model.read_bytes()
    # a list of named tensors and plain metadata also work
    t = ctx.from_numpy(W, mg.TYPE_Q5_0).set_name("w")
    mg.gguf_save(tmp_path / "w.gguf", [t], {"general.name": "w", "n": 7, "on": True})
    back, m = mg.gguf_load(tmp_path / "w.gguf", mg.Context())
    np.testing.assert_array_equal(back["w"].numpy(copy=False), t.numpy(copy=False))
    assert (m["general.name"], m["n"], m["on"], m["general.architecture"]) == ("w", 7, True, "minigraph")


def test_refusals(model, tmp_path):
    ctx = mg.Context()
    with pytest.raises(mg.MinigraphError, match="no file"):
        mg.gguf_load(tmp_path / "missing.gguf", ctx)
    with pytest.raises(mg.MinigraphError, match="no name"):
        mg.gguf_save(tmp_path / "x.gguf", [ctx.new_tensor_1d(mg.TYPE_F32, 4).set_data(np.zeros(4))])
    bad = tmp_path / "iq4.gguf"
    w = gguf.GGUFWriter(str(bad), "llama")
    w.add_tensor("odd", np.zeros((1, 18), np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(mg.MinigraphError, match="'odd'.*IQ4_NL"):
        mg.gguf_load(bad, ctx)


def test_dump_lists_tensors_and_metadata(model):
    out = io.StringIO()
    assert main(["dump", str(model)], out) == 0
    text = out.getvalue()
    assert "blk.0.ffn_up.weight" in text and "q4_K" in text and "[256, 6]" in text and "864" in text
    assert "llama.block_count" in text and "UINT32" in text and "(3 items)" in text


# -- a graph target on a GGUF file's weights (minigraph dump / compare ... --gguf FILE) ---------

GRAPHS = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "graphs.py")
FFN = GRAPHS + ":ffn_quant"
FFN_PARAMS = {"n_embd": 256, "n_ff": 256, "layer": 1}


def _write_ffn(path, gate_type=mg.TYPE_Q4_K, down_ne=(256, 256), skip=()):
    """A file with layer 1's FFN weights (gate/up q4_K, down q8_0) and values of its own."""
    rng = np.random.default_rng(11)
    weights = {"blk.1.ffn_norm.weight": (rng.uniform(0.5, 1.5, 256).astype(np.float32), None),
               "blk.1.ffn_gate.weight": (rng.standard_normal((256, 256)).astype(np.float32) * 0.1, gate_type),
               "blk.1.ffn_up.weight": (rng.standard_normal((256, 256)).astype(np.float32) * 0.1, mg.TYPE_Q4_K),
               "blk.1.ffn_down.weight": (rng.standard_normal(down_ne[::-1]).astype(np.float32) * 0.1, mg.TYPE_Q8_0)}
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (v, t) in weights.items():
        if name in skip:
            continue
        if t is None:
            w.add_tensor(name, v)
        else:
            w.add_tensor(name, quants.quantize(v, t), raw_dtype=gguf.GGMLQuantizationType(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {k: quants.dequantize(quants.quantize(v, t), t) if t is not None else v for k, (v, t) in weights.items()}


def test_graph_target_takes_its_weights_from_a_gguf_file(tmp_path):
    from minigraph.tools.graphio import load_target
    path = tmp_path / "ffn.gguf"
    want_w = _write_ffn(path)
    gf = load_target(FFN, FFN_PARAMS, gguf=str(path))
    leaf = {t.name: t for t in gf.leafs}
    gate = leaf["blk.1.ffn_gate.weight"]
    np.testing.assert_array_equal(gate.numpy(), want_w["blk.1.ffn_gate.weight"])   # the file's values
    base = gate.root._buf.data                                                     # over the mapped file
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert base is not None and str(base.filename) == str(path)
    mg.compute(gf)
    x = leaf["ffn_inp"].numpy().astype(np.float64).reshape(-1)
    cur = x / np.sqrt((x * x).mean() + 1e-5) * want_w["blk.1.ffn_norm.weight"]
    g = want_w["blk.1.ffn_gate.weight"] @ cur
    h = g / (1 + np.exp(-g)) * (want_w["blk.1.ffn_up.weight"] @ cur)
    want = want_w["blk.1.ffn_down.weight"] @ h + x
    got = gf.nodes[-1].numpy().reshape(-1)
    assert ((got - want) ** 2).sum() / (want ** 2).sum() < 1e-3     # src1 is quantized to q8_K / q8_0 (~1e-4)
    random = load_target(FFN, FFN_PARAMS)                            # without --gguf: the target's own weights
    assert not np.array_equal({t.name: t for t in random.leafs}["blk.1.ffn_gate.weight"].numpy(), gate.numpy())


def test_cli_dump_and_compare_take_gguf(tmp_path):
    path = tmp_path / "ffn.gguf"
    _write_ffn(path)
    params = [a for k, v in FFN_PARAMS.items() for a in ("-p", f"{k}={v}")]
    out = io.StringIO()
    assert main(["dump", FFN, *params, "--gguf", str(path)], out) == 0
    assert "blk.1.ffn_down.weight" in out.getvalue() and "q8_0" in out.getvalue()
    out = io.StringIO()
    assert main(["compare", FFN, *params, "--gguf", str(path), "--backends", "cpu,reference", "--tol", "1e-2"], out) == 0


@pytest.mark.parametrize("kw, match", [
    (dict(skip=("blk.1.ffn_down.weight",)), r"no tensor 'blk.1.ffn_down.weight'"),
    (dict(gate_type=mg.TYPE_Q8_0), r"'blk.1.ffn_gate.weight': the graph expects q4_K ne \[256, 256, 1, 1\], .* has q8_0"),
    (dict(down_ne=(256, 128)), r"'blk.1.ffn_down.weight': the graph expects q8_0 ne \[256, 256, 1, 1\], .* has q8_0 ne \[256, 128"),
])
def test_gguf_binding_refuses_missing_names_and_other_types_or_shapes(tmp_path, kw, match):
    from minigraph.tools.graphio import load_target
    path = tmp_path / "bad.gguf"
    _write_ffn(path, **kw)
    with pytest.raises(mg.MinigraphError, match=match):
        load_target(FFN, FFN_PARAMS, gguf=str(path))
    params = [a for k, v in FFN_PARAMS.items() for a in ("-p", f"{k}={v}")]
    assert main(["dump", FFN, *params, "--gguf", str(path)], io.StringIO()) == 2
