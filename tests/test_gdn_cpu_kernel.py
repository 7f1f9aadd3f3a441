"""GATED_DELTA_NET CPU kernel vs a float64 numpy reference, and vs ggml's CPU op."""
import numpy as np
import pytest

from minigraph.backends.cpu.gated_delta_net import GATED_DELTA_NET_KERNEL as gated_delta_net

RTOL = 2e-5  # max |err| / max |ref|: float32 rounding of the state recurrence


def reference(q, k, v, g, beta, state, K):
    """Plain float64 token-by-token rule; arrays in kernel order (ne3, ne2, ne1, ne0)."""
    q, k, v, g, beta, state = (np.asarray(a, np.float64) for a in (q, k, v, g, beta, state))
    ns, T, Hv, S = v.shape
    Hk, rep = q.shape[2], ns // q.shape[0]
    att = np.zeros((ns, T, Hv, S))
    snaps = np.zeros((K, ns, Hv, S, S))
    for s in range(ns):
        for h in range(Hv):
            M = state[s, h].T.copy()  # M[i, j] = S[i][j]
            for t in range(T):
                kk, qq = k[s // rep, t, h % Hk], q[s // rep, t, h % Hk]
                M *= np.exp(g[s, t, h])[:, None]
                delta = (v[s, t, h] - kk @ M) * beta[s, t, h, 0]
                M += np.outer(kk, delta)
                att[s, t, h] = qq @ M / np.sqrt(S)
                if T - 1 - t < K:
                    snaps[T - 1 - t, s, h] = M.T
    return np.concatenate([att.reshape(-1, Hv * S), snaps.reshape(-1, Hv * S)])


def make(rng, S, Hk, Hv, T, ns, ns_qk, gate_width, g_lo):
    def unit(shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    q, k = unit((ns_qk, T, Hk, S)), unit((ns_qk, T, Hk, S))
    v = rng.standard_normal((ns, T, Hv, S)).astype(np.float32)
    g = rng.uniform(g_lo, -1e-4, (ns, T, Hv, gate_width)).astype(np.float32)
    beta = rng.uniform(0, 1, (ns, T, Hv, 1)).astype(np.float32)
    state = rng.standard_normal((ns, Hv, S, S)).astype(np.float32)
    return q, k, v, g, beta, state


def run(arrs, K):
    ns, T, Hv, S = arrs[2].shape
    out = np.full((1, 1, T * ns + K * S * ns, S * Hv), np.nan, np.float32)
    gated_delta_net(out, *arrs, K, 0)
    return out[0, 0]


def rel_err(a, b):
    assert np.all(np.isfinite(a))
    return np.abs(a - b).max() / np.abs(b).max()


CASES = [  # (S, Hk, Hv, ns, ns_qk, kda)
    (32, 2, 2, 1, 1, False),
    (32, 2, 4, 2, 2, False),  # GQA H_v = 2 H_k, two sequences
    (16, 1, 2, 2, 1, True),   # KDA, q/k shared by both sequences
    (15, 2, 4, 2, 2, True),   # odd S: leftover rows
]


@pytest.mark.parametrize("T", [1, 4, 15, 16, 33, 63, 64, 65, 100, 127, 200, 256, 1000])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "S%d-Hk%d-Hv%d-ns%d-nsqk%d-%s" % (
    *c[:5], "kda" if c[5] else "gda"))
@pytest.mark.parametrize("g_lo", [-1.0, -20.0])
def test_vs_reference(T, case, g_lo):
    S, Hk, Hv, ns, ns_qk, kda = case
    rng = np.random.default_rng(T * 7 + S)
    arrs = make(rng, S, Hk, Hv, T, ns, ns_qk, S if kda else 1, g_lo)
    for K in (1, 3):
        assert rel_err(run(arrs, K), reference(*arrs, K)) < RTOL


def test_k_greater_than_t_zero_fills():
    rng = np.random.default_rng(1)
    arrs = make(rng, 16, 1, 2, 2, 2, 2, 1, -1.0)
    K, S, T, ns = 5, 16, 2, 2
    out = run(arrs, K)
    assert rel_err(out, reference(*arrs, K)) < RTOL
    assert np.all(out[T * ns + T * S * ns:] == 0.0)


def _strided(a):
    """`a` as a non-contiguous view (every row padded by one element in a bigger array)."""
    big = np.full(a.shape[:-1] + (a.shape[-1] + 1,), np.nan, a.dtype)
    big[..., :-1] = a
    return big[..., :-1]


def test_non_contiguous_inputs():
    """The forms a plan picks, on strided views (q permuted, g/beta/state with odd strides, v
    padded, k and dst with their values 2 apart): the same results as on contiguous arrays. Every array strided,
    so this compiles the one any_layout form the plans use."""
    from minigraph.backends.cpu.gated_delta_net import GDN_CHUNKED, GDN_DECODE, GDN_RECURRENT
    rng = np.random.default_rng(2)
    q, k, v, g, beta, state = make(rng, 32, 2, 4, 33, 2, 2, 1, -1.0)
    q_nc = np.ascontiguousarray(q.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    g_nc = np.repeat(g, 3, axis=3)[..., ::3]
    beta_nc = np.ascontiguousarray(beta.transpose(2, 1, 0, 3)).transpose(2, 1, 0, 3)
    state_nc = np.ascontiguousarray(state.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not q_nc.flags.c_contiguous and not state_nc.flags.c_contiguous
    k_el = np.repeat(k, 2, axis=3)[..., ::2]          # values 2 elements apart within a row
    for T, form in ((33, GDN_CHUNKED), (5, GDN_RECURRENT)):
        arrs = (q_nc[:, :T], k_el[:, :T], _strided(v[:, :T]), g_nc[:, :T], beta_nc[:, :T], state_nc)
        assert not any(a.flags.c_contiguous for a in arrs)
        ns, _, Hv, S = arrs[2].shape
        out = np.full((1, 1, T * ns + 2 * S * ns, 2 * S * Hv), np.nan, np.float32)[..., ::2]
        form.load_helpers()
        form.parallel(out, *arrs, 2, 0)
        assert rel_err(out[0, 0], reference(*arrs, 2)) < RTOL
    # the streaming decode path falls back to ordinary stores for a strided state
    from minigraph.backends.cpu.gdn_rows import _gdn_decode
    arrs = (q_nc[:, :1], k[:, :1], v[:, :1], g_nc[:, :1], beta_nc[:, :1], state_nc)
    out = np.full((1, 1, 2 + 2 * 32 * 2, 32 * 4), np.nan, np.float32)
    _gdn_decode(out, *arrs, arrs[5], 0, 2, 0, True)
    assert rel_err(out[0, 0], reference(*arrs, 2)) < RTOL
    assert GDN_CHUNKED.any_layout and GDN_RECURRENT.any_layout and not GDN_DECODE.any_layout


def _ggml_gdn(arrs, K):
    ggml = pytest.importorskip("ggml")
    import ggml.utils as gu
    mem = 3 * sum(a.nbytes for a in arrs) + 16 * 2**20
    ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=mem, mem_buffer=None))
    try:
        ts = [gu.from_numpy(np.ascontiguousarray(a), ctx) for a in arrs]
        node = ggml.ggml_gated_delta_net(ctx, *ts, K)
        gf = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(gf, node)
        ggml.ggml_graph_compute_with_ctx(ctx, gf, 2)
        return gu.to_numpy(node).copy()
    finally:
        ggml.ggml_free(ctx)


@pytest.mark.ggml
@pytest.mark.parametrize("T,kda,K", [(1, False, 1), (5, False, 3), (65, False, 2), (33, True, 3)])
def test_vs_ggml(T, kda, K):
    rng = np.random.default_rng(3)
    S = 32
    arrs = make(rng, S, 2, 4, T, 2, 1, S if kda else 1, -1.0)
    assert rel_err(run(arrs, K), _ggml_gdn(arrs, K)) < RTOL


@pytest.mark.parametrize("T", [1, 15, 16, 17, 33, 63, 64, 65, 100, 200, 256])
@pytest.mark.parametrize("g_lo", [-1.0, -20.0])
@pytest.mark.parametrize("kda", [False, True], ids=["gda", "kda"])
def test_chunked_form(T, g_lo, kda):
    """The WY/UT chunked kernel directly (the entry point picks it from CHUNK_MIN_T on), K = 2 so
    the token-by-token tail that feeds the snapshot slots runs too. KDA gates of -1 take the
    factored Gram, full chunks of gates down to -20 the pairwise one (test_kda_chunk_gram_paths
    checks which on one chunk)."""
    from minigraph.backends.cpu.gated_delta_net import _gdn_chunked
    rng = np.random.default_rng(T)
    arrs = make(rng, 32, 2, 4, T, 2, 1, 32 if kda else 1, g_lo)
    ns, S, Hv, K = 2, 32, 4, 2
    out = np.full((1, 1, T * ns + K * S * ns, S * Hv), np.nan, np.float32)
    _gdn_chunked(out, *arrs, K, 0)
    assert rel_err(out[0, 0], reference(*arrs, K)) < RTOL


@pytest.mark.parametrize("width", [1, 32], ids=["gda", "kda"])
def test_chunked_strong_gates_stay_finite(width):
    """Per-token gates of -60: a chunk's cumulative gate reaches -960 (exp(+960) in the naive
    k * exp(-g_cum) form); the masked differences (KDA: running products) keep every factor <= 1."""
    from minigraph.backends.cpu.gated_delta_net import _gdn_chunked
    rng = np.random.default_rng(5)
    arrs = list(make(rng, 32, 2, 4, 100, 1, 1, width, -60.0))
    ns, S, Hv = 1, 32, 4
    out = np.full((1, 1, 100 * ns + S * ns, S * Hv), np.nan, np.float32)
    _gdn_chunked(out, *arrs, 1, 0)
    assert rel_err(out[0, 0], reference(*arrs, 1)) < RTOL


@pytest.mark.parametrize("kda", [False, True])
def test_long_prefill_s128(kda):
    """T = 4096 at the model's head size S = 128 (two value heads, GQA): the entry point
    (the chunked form) against the float64 rule."""
    rng = np.random.default_rng(11)
    S = 128
    arrs = make(rng, S, 1, 2, 4096, 1, 1, S if kda else 1, -1.0)
    assert rel_err(run(arrs, 1), reference(*arrs, 1)) < RTOL


def aligned_out(rows, width, shift):
    """A NaN-filled dst (1, 1, rows, width) whose data starts `shift` floats after a 64-byte
    line: shift 0 lets the decode stream whole lines, shift 1 makes every row straddle two."""
    n = rows * width
    raw = np.full(n + 32, np.nan, np.float32)
    start = (-raw.ctypes.data % 64) // 4 + shift
    return raw[start:start + n].reshape(1, 1, rows, width)


@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("S", [15, 32, 128])
@pytest.mark.parametrize("stream,shift", [(False, 0), (True, 0), (True, 1)])
@pytest.mark.parametrize("g_lo", [-1.0, -20.0])
def test_decode_single_pass(kda, S, stream, shift, g_lo):
    """The T == 1 kernel directly, both store paths (non-temporal stores are what the entry
    point takes for big states; rows off a 64-byte line, or S % 16 != 0, fall back to
    ordinary ones): GQA, q/k shared by two sequences, K = 2 (slot 1 zero)."""
    from minigraph.backends.cpu.gdn_rows import _gdn_decode
    rng = np.random.default_rng(S + 2 * kda)
    arrs = make(rng, S, 2, 4, 1, 2, 1, S if kda else 1, g_lo)
    ns, Hv, K = 2, 4, 2
    out = aligned_out(ns + K * S * ns, S * Hv, shift)
    _gdn_decode(out, *arrs, arrs[5], 0, K, 0, stream)
    assert rel_err(out[0, 0], reference(*arrs, K)) < RTOL


@pytest.mark.parametrize("kda", [False, True])
def test_decode_strided_dst(kda):
    """A dst whose rows are padded (not one flat run): the decode writes the snapshot row by row
    instead of through the per-head (S, S) view it takes of contiguous rows."""
    from minigraph.backends.cpu.gdn_rows import _gdn_decode
    S, ns, Hv, K = 32, 2, 4, 2
    arrs = make(np.random.default_rng(7 + kda), S, 2, Hv, 1, ns, 1, S if kda else 1, -5.0)
    wide = np.full((1, 1, ns + K * S * ns, S * Hv + 4), np.nan, np.float32)
    out = wide[..., :S * Hv]
    _gdn_decode(out, *arrs, arrs[5], 0, K, 0, False)
    assert rel_err(out[0, 0], reference(*arrs, K)) < RTOL
    assert np.isnan(wide[..., S * Hv:]).all()   # the padding is not written


def test_decode_big_state_streams():
    """A state of STREAM_BYTES through the entry point (streaming stores, dst on a line)."""
    from minigraph.backends.cpu.gated_delta_net import STREAM_BYTES, gated_delta_net
    S = 128
    Hv = STREAM_BYTES // (S * S * 4)
    rng = np.random.default_rng(4)
    arrs = make(rng, S, 16, Hv, 1, 1, 1, 1, -1.0)
    assert arrs[5].nbytes >= STREAM_BYTES
    out = aligned_out(1 + S, S * Hv, 0)
    gated_delta_net(out, *arrs, 1, 0)
    assert rel_err(out[0, 0], reference(*arrs, 1)) < RTOL


def _chunk_reference(M, k, q, v, g, beta):
    """One chunk of the rule in float64 from M[i, j] = S[i][j]: (outputs q.S_t unscaled, final M)."""
    M = M.astype(np.float64)
    outs = []
    for t in range(len(k)):
        M = M * np.exp(g[t].astype(np.float64))[:, None]
        delta = (v[t] - k[t] @ M) * beta[t]
        M = M + np.outer(k[t], delta)
        outs.append(q[t] @ M)
    return np.array(outs), M


@pytest.mark.parametrize("g_lo,g_hi,factored", [(-1.0, -1e-4, True), (-4.0, -1.0, False), (-0.5, 0.3, True),
                                                (-60.0, -20.0, False)])
def test_kda_chunk_gram_paths(g_lo, g_hi, factored):
    """_chunk_step_kda on one chunk against float64, with gates that take the factored Gram (the
    smallest per-key decay over the chunk >= KDA_FACTOR_MIN; growing gates too) and the pairwise
    running products (decays down to e^-960)."""
    from minigraph.backends.cpu import gated_delta_net as gdn
    C, S = gdn.CHUNK, 32
    rng = np.random.default_rng(int(-g_lo * 10))
    unit = lambda: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.standard_normal((C, S)))
    k, q, v = unit(), unit(), rng.standard_normal((C, S))
    g = rng.uniform(g_lo, g_hi, (C, S))
    beta = rng.uniform(0, 1, C)
    M0 = rng.standard_normal((S, S))
    assert (np.exp(g.sum(0)).min() >= gdn.KDA_FACTOR_MIN) == factored
    f = lambda *s: np.zeros(s, np.float32)
    M, kq = M0.astype(np.float32), np.concatenate([k, q]).astype(np.float32)
    vb, bb = (v * beta[:, None]).astype(np.float32), beta.astype(np.float32)
    kb, x, u, y, gam, rr = f(C, S), f(2 * C, S), f(C, S), f(2 * C, S), f(C, S), f(C, S)
    gdn._chunk_step_kda(M, kq, vb, kb, x, u, y, f(2 * C * C), f(C * C), np.exp(g).astype(np.float32), gam, rr, bb,
                        C, S)
    want_o, want_m = _chunk_reference(M0, k, q, v, g, beta)
    assert rel_err(y[C:], want_o) < RTOL and rel_err(M, want_m) < RTOL


@pytest.mark.parametrize("Hv,ns,ns_qk", [(12, 1, 1), (4, 3, 1), (6, 3, 3)])
def test_chunked_head_groups(Hv, ns, ns_qk):
    """(seq, head) pairs that do not fill whole HEAD_GROUPs, and groups spanning sequences."""
    from minigraph.backends.cpu.gated_delta_net import HEAD_GROUP, _gdn_chunked
    S, T, K = 32, 40, 2
    assert ns * Hv > HEAD_GROUP                      # two groups at least
    rng = np.random.default_rng(Hv * ns)
    arrs = make(rng, S, 2, Hv, T, ns, ns_qk, 1, -1.0)
    out = np.full((1, 1, T * ns + K * S * ns, S * Hv), np.nan, np.float32)
    _gdn_chunked(out, *arrs, K, 0)
    assert rel_err(out[0, 0], reference(*arrs, K)) < RTOL


def test_chunk_products_and_form_choice():
    """The chunked form's products (tiles.matmul, a transposed left operand as _chunk_step passes
    it) against float64, and the entry point taking the chunked form for GDA prefill."""
    from minigraph.backends.cpu import gated_delta_net as gdn
    from minigraph.backends.cpu.tiles import matmul
    rng = np.random.default_rng(21)
    for m, k, n in ((2 * gdn.CHUNK, 24, gdn.CHUNK), (7, 5, 21), (128, 32, 128)):
        a = rng.standard_normal((k, m)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.full((m, n), np.nan, np.float32)
        matmul(a.T, b, out)
        assert np.abs(out - a.T.astype(np.float64) @ b.astype(np.float64)).max() < 1e-4
    with pytest.raises(ValueError, match="matmul"):
        matmul(a.T, np.asfortranarray(b), out)    # b's rows not contiguous: refused, not misread
    T, K = 3 * gdn.CHUNK + 5, 2
    assert gdn.uses_chunked(T, 1, K) and gdn.uses_chunked(T, 16, K)            # GDA and KDA
    assert not gdn.uses_chunked(T, 1, gdn.CHUNK + 1) and not gdn.uses_chunked(1, 1, 1)
    arrs = make(rng, 16, 2, 4, T, 2, 1, 1, -1.0)
    assert rel_err(run(arrs, K), reference(*arrs, K)) < RTOL


_BLOCK_SCIPY = '''
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Block())
'''

_PREFILL_WITHOUT_SCIPY = '''
import sys
import numpy as np
import minigraph as mg
from minigraph.backends.cpu import gated_delta_net as gdn
from minigraph.ops.gdn_reference import gated_delta_net_reference
rng = np.random.default_rng(0)
S, H, T = 16, 2, 3 * gdn.CHUNK + 3
unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(rng.standard_normal(s).astype(np.float32))
arrs = [unit(1, T, H, S), unit(1, T, H, S), rng.standard_normal((1, T, H, S)).astype(np.float32),
        rng.uniform(-1, -1e-4, (1, T, H, 1)).astype(np.float32), rng.uniform(0, 1, (1, T, H, 1)).astype(np.float32),
        rng.standard_normal((1, H, S, S)).astype(np.float32)]
ctx = mg.Context()
out = ctx.gated_delta_net(*[ctx.from_numpy(a) for a in arrs], 1)
gf = ctx.new_graph()
gf.build_forward_expand(out)
cpu = mg.backend_cpu_init(1)
cpu.graph_compute(gf)
assert gdn.pick_form(out) is gdn.GDN_CHUNKED
ref = gated_delta_net_reference(*arrs, 1).reshape(out.numpy().shape)
err = np.abs(out.numpy() - ref).max() / np.abs(ref).max()
assert err < 2e-5, err
assert not any(m == "scipy" or m.startswith("scipy.") for m in sys.modules)
print("ok", err)
'''


def test_chunked_prefill_without_scipy(tmp_path):
    """The install the README gives has no scipy (no kernel calls BLAS): with scipy's import
    blocked, a GDA prefill still takes the chunked form and matches float64."""
    import os
    import subprocess
    import sys
    (tmp_path / "sitecustomize.py").write_text(_BLOCK_SCIPY)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + [p for p in sys.path if p]))
    proc = subprocess.run([sys.executable, "-c", _PREFILL_WITHOUT_SCIPY], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr
