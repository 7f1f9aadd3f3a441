"""GATED_DELTA_NET's q/k head map (gated_delta_net_set_bcast, planned in ggml.h as TAG_GGML_GDN_BCAST):
tiled (value head h reads q/k head h % H_k, ggml's op) or interleaved (h // (H_v / H_k), what
llama.cpp's Qwen3-Next repeat builds)."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.ops.gdn_reference import gated_delta_net_reference
from minigraph.tools.graphio import graph_from_dict, graph_to_dict


def _arrays(rng, S=8, Hk=2, Hv=6, T=5, N=2, kda=False):
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    return (unit(rng.standard_normal((N, T, Hk, S))), unit(rng.standard_normal((N, T, Hk, S))),
            rng.standard_normal((N, T, Hv, S)), rng.uniform(-2, -0.01, (N, T, Hv, S if kda else 1)),
            rng.uniform(0, 1, (N, T, Hv, 1)), rng.standard_normal((N, Hv, S, S)))


@pytest.mark.parametrize("kda", [False, True])
def test_interleaved_map_is_the_op_on_interleaved_repeated_heads(kda):
    q, k, *rest = _arrays(np.random.default_rng(1), kda=kda)
    r = rest[0].shape[2] // q.shape[2]
    want = gated_delta_net_reference(np.repeat(q, r, axis=2), np.repeat(k, r, axis=2), *rest, 2)  # head h <- h // r
    np.testing.assert_allclose(gated_delta_net_reference(q, k, *rest, 2, bcast=1), want, rtol=0, atol=1e-12)
    assert not np.allclose(gated_delta_net_reference(q, k, *rest, 2, bcast=0), want)   # the tiled map differs


def _node(ctx, rng, T=5):
    ts = [ctx.from_numpy(a.astype(np.float32)) for a in _arrays(rng, T=T)]
    return ctx.gated_delta_net(*ts, 1)


def test_set_and_get_and_the_refusals():
    ctx = mg.Context()
    out = _node(ctx, np.random.default_rng(2))
    assert mg.gated_delta_net_get_bcast(out) == mg.GDN_BCAST_TILED
    mg.gated_delta_net_set_bcast(out, mg.GDN_BCAST_INTERLEAVED)
    assert out.op_params["bcast"] == 1 and mg.gated_delta_net_get_bcast(out) == 1
    for bad in (2, -1, True, "1", 1.0):
        with pytest.raises(mg.MinigraphError, match="gated_delta_net_set_bcast: bcast must be"):
            mg.gated_delta_net_set_bcast(out, bad)
    with pytest.raises(mg.MinigraphError, match="expects a GATED_DELTA_NET node"):
        mg.gated_delta_net_set_bcast(ctx.add(out, out), 1)


def test_cpu_runs_it_and_a_graph_file_keeps_it():
    ctx = mg.Context()
    out = _node(ctx, np.random.default_rng(3), T=70)    # the chunked form
    mg.gated_delta_net_set_bcast(out, 1)
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    want = mg.reference_compute(gf)[out]
    mg.backend_cpu_init(1).graph_compute(gf)
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=2e-6 * np.abs(want).max())
    again = graph_from_dict(graph_to_dict(gf))
    assert mg.gated_delta_net_get_bcast(again.nodes[-1]) == 1
    old = graph_to_dict(gf)                 # a file written before the param existed: the tiled map
    rec = next(r for r in old["tensors"] if r["op"] == "GATED_DELTA_NET")
    del rec["op_params"]["bcast"]
    assert mg.gated_delta_net_get_bcast(graph_from_dict(old).nodes[-1]) == 0


@pytest.mark.parametrize("T", [1, 5])
def test_cuda_runs_the_interleaved_map(T):
    """Decode and the recurrence here (the simulator in CI); the GPU run adds the chunked and the
    tensor-core kernels (tests/test_gdn_cuda_fast.py's gpu cases, the conformance cases)."""
    from test_cuda_backend import SKIP
    if SKIP is not None:   # no numba-cuda: neither a GPU nor the simulator to run it on (SKIP says which)
        pytest.skip(SKIP)
    ctx = mg.Context()
    out = _node(ctx, np.random.default_rng(4), T=T)
    mg.gated_delta_net_set_bcast(out, 1)
    cuda = mg.backend_cuda_init(0)
    assert cuda.supports_op(out)
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    want = mg.reference_compute(gf)[out]
    cuda.graph_compute(gf)
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=2e-6 * np.abs(want).max())
