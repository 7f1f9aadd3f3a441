"""llama.cpp's delta-net builders (minigraph.models.delta_net) run on REAL ggml through the bridge,
checked against the fused ggml_gated_delta_net and the float64 reference. Also pins the two
places where they differ (see the module docstring of minigraph.models.delta_net)."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("ggml")

from minigraph.models.delta_net import (build_delta_net_autoregressive,  # noqa: E402
                                        build_delta_net_chunking, build_delta_net_fused)
from minigraph.ops.gdn_reference import gated_delta_net_reference, split_gdn_output  # noqa: E402
from minigraph.testing import ggml_bridge as gb  # noqa: E402

pytestmark = pytest.mark.ggml
S = 16


def make_inputs(H_k, H_v, T, N, kda, seed=0):
    """numpy float32 arrays in ggml layout: q, k, v, g, beta, state."""
    r = np.random.default_rng(seed)
    q = r.standard_normal((N, T, H_k, S)).astype(np.float32)
    k = r.standard_normal((N, T, H_k, S))
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)   # l2-normed like the models
    v = r.standard_normal((N, T, H_v, S)).astype(np.float32)
    g = -r.uniform(0.01, 0.5, (N, T, H_v, S if kda else 1)).astype(np.float32)
    beta = r.uniform(0.1, 0.9, (N, T, H_v, 1)).astype(np.float32)
    s0 = (0.3 * r.standard_normal((N, H_v, S, S))).astype(np.float32)
    return q, k, v, g, beta, s0


def run_builder(builder, arrays, **kw):
    """(output (N, T, H_v, S), state (N, H_v, S, S)) computed by ggml."""
    ctx = gb.GgmlContext(1 << 28)
    o, s = builder(ctx, *(ctx.from_numpy(a) for a in arrays), **kw)
    return gb.compute([o, s])


def reference(arrays):
    N, T, H_v, _ = arrays[2].shape
    attn, states = split_gdn_output(gated_delta_net_reference(*arrays, K=1), S, H_v, T, N, 1)
    return attn, states[0]


def max_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max())


@pytest.mark.parametrize("kda", [False, True], ids=["gda", "kda"])
@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("T", [1, 5, 64, 65, 100])
def test_chunking_matches_fused_and_reference(T, N, kda):
    arrays = make_inputs(2, 2, T, N, kda)
    want_o, want_s = reference(arrays)
    got_o, got_s = run_builder(build_delta_net_chunking, arrays)
    fused_o, fused_s = run_builder(build_delta_net_fused, arrays)
    assert max_err(fused_o, want_o) < 1e-5 and max_err(fused_s, want_s) < 1e-5
    assert max_err(got_o.reshape(want_o.shape), want_o) < 1e-5
    assert max_err(got_s, want_s) < 1e-5


def test_chunking_chunk_size_override():
    arrays = make_inputs(2, 2, 37, 1, False)
    want_o, want_s = reference(arrays)
    got_o, got_s = run_builder(build_delta_net_chunking, arrays, chunk_size=8)
    assert max_err(got_o.reshape(want_o.shape), want_o) < 1e-4 and max_err(got_s, want_s) < 1e-4


@pytest.mark.parametrize("H_k,H_v", [(2, 2), (2, 4)], ids=["mha", "gqa"])
@pytest.mark.parametrize("N", [1, 2])
def test_autoregressive_gda_matches_fused_and_reference(N, H_k, H_v):
    arrays = make_inputs(H_k, H_v, 1, N, False)
    want_o, want_s = reference(arrays)
    got_o, got_s = run_builder(build_delta_net_autoregressive, arrays)
    fused_o, fused_s = run_builder(build_delta_net_fused, arrays)
    assert max_err(fused_o, want_o) < 1e-5 and max_err(fused_s, want_s) < 1e-5
    assert max_err(got_o.reshape(want_o.shape), want_o) < 1e-5
    assert max_err(got_s, want_s) < 1e-5


def test_autoregressive_kda_decays_value_index_unlike_fused():
    """(b): the graph reshapes g to [1, S, H_v, n_seqs], so exp(g) scales state row j (value index);
    the fused op scales by key index i. They disagree; the graph equals the value-index variant."""
    arrays = make_inputs(2, 2, 1, 2, True)
    q, k, v, g, beta, s0 = arrays
    got_o, got_s = run_builder(build_delta_net_autoregressive, arrays)
    fused_o, fused_s = run_builder(build_delta_net_fused, arrays)
    assert max_err(got_s, fused_s.astype(np.float64)) > 1e-2
    assert max_err(got_o.reshape(fused_o.shape), fused_o.astype(np.float64)) > 1e-2
    # value-index decay, one token: M[i][j] = S[i][j] * exp(g[j]); state arrays hold M transposed
    M = np.swapaxes(s0.astype(np.float64), -1, -2) * np.exp(g[:, 0])[..., None, :]
    kt, qt = k[:, 0].astype(np.float64), q[:, 0] / np.sqrt(S)
    delta = (v[:, 0] - np.einsum("nhij,nhi->nhj", M, kt)) * beta[:, 0]
    M += kt[..., :, None] * delta[..., None, :]
    assert max_err(got_s, np.swapaxes(M, -1, -2)) < 1e-5
    assert max_err(got_o.reshape(fused_o.shape)[:, 0], np.einsum("nhij,nhi->nhj", M, qt)) < 1e-5


def test_chunking_gqa_aborts_in_ggml():
    """(a): with H_v = 2*H_k the chunked graph never gets to a head mapping: ggml_mul(k, b) hits
    GGML_ASSERT(ggml_can_repeat(b, a)) and ggml aborts the process. Run it in a child process."""
    code = textwrap.dedent(f"""
        import numpy as np
        from minigraph.testing import ggml_bridge as gb
        from minigraph.models.delta_net import build_delta_net_chunking
        r = np.random.default_rng(0)
        H_k, H_v, T, N = 2, 4, 5, 1
        shapes = [(N, T, H_k, {S}), (N, T, H_k, {S}), (N, T, H_v, {S}), (N, T, H_v, 1), (N, T, H_v, 1),
                  (N, H_v, {S}, {S})]
        ctx = gb.GgmlContext(1 << 26)
        ts = [ctx.from_numpy(r.standard_normal(s).astype(np.float32)) for s in shapes]
        build_delta_net_chunking(ctx, *ts)
        print("BUILT")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "BUILT" not in res.stdout
    assert "ggml_can_repeat(b, a)" in res.stderr


@pytest.mark.parametrize("kind", ["tiled", "interleaved"])
def test_chunking_gqa_with_repeated_heads(kind):
    """(a) continued: callers repeat q/k up to H_v heads first. A tiled repeat (ggml_repeat_4d,
    value head h <- k head h % H_k) reproduces the fused op on the H_k-head inputs; an interleaved
    repeat (h <- h // r, the block mapping of mul_mat broadcast) does not."""
    H_k, H_v = 2, 4
    arrays = make_inputs(H_k, H_v, 70, 1, False)
    fused_o, fused_s = run_builder(build_delta_net_fused, arrays)
    q, k = arrays[0], arrays[1]
    heads = np.arange(H_v) % H_k if kind == "tiled" else np.arange(H_v) // (H_v // H_k)
    rep = (q[:, :, heads], k[:, :, heads]) + arrays[2:]
    got_o, got_s = run_builder(build_delta_net_chunking, rep)
    err = max(max_err(got_o.reshape(fused_o.shape), fused_o), max_err(got_s, fused_s))
    assert (err < 1e-4) if kind == "tiled" else (err > 1e-2)


def test_fused_snapshots_and_views():
    arrays = make_inputs(2, 2, 5, 2, True)
    want = gated_delta_net_reference(*arrays, K=3)
    ctx = gb.GgmlContext(1 << 26)
    ts = [ctx.from_numpy(a) for a in arrays]
    o, s = build_delta_net_fused(ctx, *ts, K=3)
    raw = ctx.gated_delta_net(*ts, 3)
    got_o, got_s, got_raw = gb.compute([o, s, raw])
    w_attn, w_states = split_gdn_output(want, S, 2, 5, 2, 3)
    assert max_err(got_raw, want) < 1e-5
    assert max_err(got_o, w_attn) < 1e-5 and max_err(got_s, w_states[0]) < 1e-5


# (S, H_k, H_v, T, n_seqs, n_seqs_qk, kda, K): GDA, KDA, GQA, two sequences, q/k sequence
# broadcast, snapshot slots with K <= T and K > T
GDN_CASES = [(8, 2, 2, 5, 1, 1, False, 1), (8, 2, 2, 5, 1, 1, True, 1), (8, 2, 4, 5, 1, 1, False, 1),
             (8, 2, 4, 5, 2, 2, True, 3), (8, 2, 2, 5, 2, 2, False, 3), (8, 2, 2, 5, 4, 2, True, 2),
             (8, 2, 2, 5, 2, 1, False, 1), (8, 2, 2, 2, 2, 2, False, 3), (16, 1, 3, 1, 2, 2, True, 3)]


@pytest.mark.parametrize("case", GDN_CASES, ids=lambda c: "S{}_Hk{}_Hv{}_T{}_N{}_Nqk{}_kda{}_K{}".format(*c))
def test_reference_matches_ggml_gated_delta_net(case):
    """gated_delta_net_reference == ggml_gated_delta_net on every written element; slots s >= T
    are left untouched by ggml (a NaN sentinel survives) while the reference zeroes them."""
    S_, H_k, H_v, T, N, Nqk, kda, K = case
    r = np.random.default_rng(1)
    q = r.standard_normal((Nqk, T, H_k, S_)).astype(np.float32)
    k = r.standard_normal((Nqk, T, H_k, S_))
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)
    v = r.standard_normal((N, T, H_v, S_)).astype(np.float32)
    g = -r.uniform(0.01, 1.0, (N, T, H_v, S_ if kda else 1)).astype(np.float32)
    beta = r.uniform(0.1, 0.9, (N, T, H_v, 1)).astype(np.float32)
    s0 = (0.3 * r.standard_normal((N, H_v, S_, S_))).astype(np.float32)
    ctx = gb.GgmlContext(1 << 26)
    out = ctx.gated_delta_net(*(ctx.from_numpy(a) for a in (q, k, v, g, beta, s0)), K)
    out.set_data(np.full(out.numpy().shape, np.nan, np.float32))
    got = gb.compute(out)[0]
    want = gated_delta_net_reference(q, k, v, g, beta, s0, K)
    assert got.shape == want.shape == (T * N + K * S_ * N, S_ * H_v)
    g_attn, g_states = split_gdn_output(got, S_, H_v, T, N, K)
    w_attn, w_states = split_gdn_output(want, S_, H_v, T, N, K)
    assert max_err(g_attn, w_attn) < 1e-5
    for slot in range(K):
        if slot < T:
            assert max_err(g_states[slot], w_states[slot]) < 1e-5
        else:
            assert np.isnan(g_states[slot]).all() and not w_states[slot].any()
