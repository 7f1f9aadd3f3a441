"""GATED_DELTA_NET on the CUDA backend: the fast kernels (backends/cuda/gdn_fast.py) against the
float64 reference, in both forms (recurrent, chunked), and the per-node choice of kernel.

On the simulator the chunked form runs with small chunks (gdn_fast.CHUNK 16 or 32, lowered
CHUNKED_MIN_T) so a T of 20-40 crosses chunk boundaries and a padded tail; shapes stay tiny.
On a real GPU the same tests run the Numba kernels where they ask for small chunks, and the CUDA
C++ ones (gdn_tc.py: 3xTF32 tensor-core chunked form, decode) everywhere else; the gpu-marked
tests at the end aim at those.
"""
import numpy as np
import pytest

import minigraph as mg
from test_cuda_backend import SIM, SKIP, be, check, randn, strided  # noqa: F401 (be: fixture)

pytestmark = [pytest.mark.skipif(SKIP is not None, reason=SKIP or ""),
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]


def gdn(ctx, S, Hk, Hv, T, N, Nqk, kda, K, g_lo=-1.0, wrap=None):
    """A GATED_DELTA_NET node over random inputs (unit q/k rows, gates in [g_lo, 0))."""
    rng = np.random.default_rng(S * 1000 + T * 10 + Hv + N)

    def unit(shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    arrays = [unit((Nqk, T, Hk, S)), unit((Nqk, T, Hk, S)),
              rng.standard_normal((N, T, Hv, S)).astype(np.float32),
              rng.uniform(g_lo, -1e-3, (N, T, Hv, S if kda else 1)).astype(np.float32),
              rng.uniform(0.1, 1.0, (N, T, Hv, 1)).astype(np.float32),
              (0.1 * rng.standard_normal((N, Hv, S, S))).astype(np.float32)]
    ts = [ctx.from_numpy(a) for a in arrays]
    if wrap is not None:
        ts[wrap] = strided(ctx, arrays[wrap])
    return ctx.gated_delta_net(*ts, K)


def choice(node):
    from minigraph.backends.cuda.gated_delta_net import kernel_choice

    return kernel_choice(node)[0]            # "chunked", "recurrent" (T == 1: decode) or "generic"


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunked form from 16 tokens on, 16-token chunks (set CHUNK again for other sizes)."""
    from minigraph.backends.cuda import gdn_fast

    monkeypatch.setattr(gdn_fast, "CHUNK", 16)
    monkeypatch.setattr(gdn_fast, "CHUNKED_MIN_T", 16)
    monkeypatch.setattr(gdn_fast, "TENSOR_CORES", False)   # the Numba kernels, on a GPU too
    return gdn_fast


# -- recurrent --------------------------------------------------------------------------------

@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("T,K", [(1, 1), (1, 3), (4, 2), (2, 4)])
def test_recurrent_gqa_seq_broadcast_snapshots(be, kda, T, K):
    ctx = mg.Context()
    out = gdn(ctx, 8, 1, 2, T, 2, 1, kda, K)           # H_v = 2 H_k, n_seqs 2 reading q/k seq 0
    assert choice(out) == "recurrent"
    check(be, out, max_nmse=1e-10)


def test_recurrent_negative_gates_and_wide_state(be):
    ctx = mg.Context()
    out = gdn(ctx, 12, 2, 4, 3, 1, 1, True, 2, g_lo=-20.0)   # S=12: 3 float4 lanes, KDA
    assert choice(out) == "recurrent"
    check(be, out, max_nmse=1e-10)
    out = gdn(ctx, 8, 1, 3, 5, 2, 2, False, 1, g_lo=-20.0)   # H_v = 3 H_k, GDA
    check(be, out, max_nmse=1e-10)
    out = gdn(ctx, 12, 1, 2, 1, 1, 1, False, 2, g_lo=-20.0)  # decode: a partial last row group
    check(be, out, max_nmse=1e-10)


def test_recurrent_long_kda_stays_recurrent(be, small_chunks):
    ctx = mg.Context()
    out = gdn(ctx, 8, 1, 1, 20, 1, 1, True, 1)
    assert choice(out) == "recurrent"                  # the Numba chunked form is GDA only
    check(be, out, max_nmse=1e-10)


# -- chunked ----------------------------------------------------------------------------------

@pytest.mark.parametrize("L,T", [(16, 20), (16, 32), (32, 40)])
def test_chunked_gda(be, small_chunks, L, T):
    small_chunks.CHUNK = L
    ctx = mg.Context()
    out = gdn(ctx, 8, 1, 2, T, 2, 1, False, 1)         # GQA, n_seqs 2 broadcasting q/k seq 0
    assert choice(out) == "chunked"
    check(be, out, max_nmse=1e-10)


def test_chunked_negative_gates_seqs(be, small_chunks):
    ctx = mg.Context()
    out = gdn(ctx, 8, 2, 2, 20, 2, 2, False, 1, g_lo=-20.0)
    assert choice(out) == "chunked"
    check(be, out, max_nmse=1e-10)


@pytest.mark.skipif(SIM, reason="64-token chunks: real GPU only (slow on the simulator)")
@pytest.mark.parametrize("T,min_t", [(64, 64), (100, 64), (300, None)])
def test_chunked_default_chunk(be, monkeypatch, T, min_t):
    from minigraph.backends.cuda import gdn_fast

    if min_t is not None:
        monkeypatch.setattr(gdn_fast, "CHUNKED_MIN_T", min_t)
    ctx = mg.Context()
    out = gdn(ctx, 128, 2, 4, T, 2, 1, False, 1, g_lo=-5.0)
    assert choice(out) == "chunked"
    check(be, out, max_nmse=1e-9)


@pytest.mark.skipif(SIM, reason="real GPU only")
@pytest.mark.parametrize("kda", [False, True])
def test_recurrent_big(be, kda):
    ctx = mg.Context()
    out = gdn(ctx, 128, 2, 4, 7, 2, 1, kda, 3, g_lo=-20.0)
    assert choice(out) == "recurrent"
    check(be, out, max_nmse=1e-9)


# -- the per-node choice ----------------------------------------------------------------------

def test_plan_picks_kernels(be, small_chunks):
    from minigraph.backends.cuda import gated_delta_net as generic

    ctx = mg.Context()
    dec = gdn(ctx, 8, 1, 2, 1, 2, 1, False, 1)
    pre = gdn(ctx, 8, 1, 2, 20, 1, 1, False, 1)
    snap = gdn(ctx, 8, 1, 2, 20, 1, 1, False, 2)       # K > 1: snapshots need the recurrence
    odd = gdn(ctx, 6, 1, 2, 3, 1, 1, False, 1)          # S % 4 != 0
    kernel = lambda n: [la.kernel for la in be.kernels["GATED_DELTA_NET"].fn.launches(n)]  # noqa: E731
    assert len(kernel(dec)) == 1 and kernel(dec)[0] in small_chunks._DECODE.values()
    ck = small_chunks.chunk_kernels(16)
    assert kernel(pre) == [ck.prep, ck.state, ck.out]
    assert kernel(snap) == [small_chunks.recurrent_kernel()]
    assert kernel(odd) == [generic.gated_delta_net] and choice(odd) == "generic"
    # K, the q/k head divisor, then the workspace (device arrays) travel as the launches' scalars
    assert all(la.scalars[:2] == (1, 1) and len(la.scalars) == 7 and not la.with_params
               for la in be.kernels["GATED_DELTA_NET"].fn.launches(pre))


@pytest.mark.parametrize("T", [3, 20])
@pytest.mark.parametrize("slot", [1, 2, 3])
def test_strided_inputs_take_the_generic_kernel(be, small_chunks, T, slot):
    ctx = mg.Context()
    out = gdn(ctx, 8, 1, 2, T, 1, 1, False, 1, wrap=slot)   # k, v or g as a row-strided view
    assert choice(out) == "generic"
    check(be, out, max_nmse=1e-10)


def test_odd_offset_view_takes_the_generic_kernel(be):
    ctx = mg.Context()
    S, H, T = 8, 2, 2
    rng = np.random.default_rng(3)
    big = ctx.from_numpy(rng.standard_normal(1 + S * H * T).astype(np.float32) * 0.3)
    q = ctx.view_4d(big, S, H, T, 1, 4 * S, 4 * S * H, 4 * S * H * T, 4)   # contiguous, 4-byte offset
    k = ctx.from_numpy(randn(1, T, H, S, scale=0.3))
    v = ctx.from_numpy(randn(1, T, H, S))
    g = ctx.from_numpy(-np.abs(randn(1, T, H, 1)))
    beta = ctx.from_numpy(np.full((1, T, H, 1), 0.5, np.float32))
    state = ctx.from_numpy(randn(1, H, S, S, scale=0.1))
    out = ctx.gated_delta_net(q, k, v, g, beta, state, 1)
    assert choice(out) == "generic"
    check(be, out, max_nmse=1e-10)


@pytest.mark.skipif(SIM, reason="CUDA graphs: real GPU only")
@pytest.mark.parametrize("T", [1, 200])
def test_cuda_graph_replay_with_workspace(T):
    """The chunked form's workspace rides in the launches' scalars: captured and replayed."""
    from minigraph.backends.cuda.backend import CudaBackend
    from minigraph.ops.gdn_reference import gated_delta_net_reference

    gb = CudaBackend(0, use_graphs=True)
    ctx = mg.Context()
    out = gdn(ctx, 128, 2, 4, T, 2, 1, False, 1)
    srcs = list(out.src)
    gf = mg.Graph()
    gf.build_forward_expand(out)
    rng = np.random.default_rng(7)
    for _ in range(3):                                  # run, capture + replay, replay
        arrays = [s.numpy().reshape(tuple(reversed(s.ne))).copy() for s in srcs]
        arrays[2] = rng.standard_normal(arrays[2].shape).astype(np.float32)
        srcs[2].set_data(arrays[2])
        gb.graph_compute(gf)
        want = gated_delta_net_reference(*arrays, 1)
        got = out.numpy().reshape(want.shape)
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    plan = gb.plan(gf)
    assert plan.graph_error is None and plan.graph_exec is not None


# -- the CUDA C++ kernels (real GPU, sm_80+) ------------------------------------------------------

def tensor_cores():
    from minigraph.backends.cuda import gdn_fast

    return gdn_fast.tensor_cores()


tc_only = pytest.mark.skipif(SIM or not tensor_cores(), reason="CUDA C++ kernels: a real sm_80+ GPU only")


def max_rel(be, out):
    """max |got - ref| / max |ref| against the float64 reference, every element finite."""
    gf = mg.Graph()
    gf.build_forward_expand(out)
    ref = np.asarray(mg.reference_compute(gf)[out], np.float64)
    be.graph_compute(gf)
    got = np.asarray(out.numpy(), np.float64)
    assert np.isfinite(got).all()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_tc_state_pass_refuses_layouts_it_has_no_room_for():
    """Warps a column tile other than 2, 4, 8, or more shared memory than a block gets: refused
    before anything compiles (also on the simulator)."""
    from minigraph.backends.cuda import gdn_tc

    for nj, ks in ((2, 1), (2, 3), (4, 4)):
        with pytest.raises(ValueError, match="no state pass"):
            gdn_tc.state_kernel(128, nj=nj, ks=ks)


@pytest.mark.gpu
@tc_only
@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("S,Hk,Hv,T,N,Nqk,g_lo", [
    (128, 2, 4, 200, 2, 1, -20.0),     # GQA, q/k sequence broadcast, padded tail
    (128, 1, 2, 64, 1, 1, -1.0),       # exactly one chunk
    (84, 2, 2, 130, 2, 2, -2.0),       # S % 8 == 4: zero-padded k-steps and columns
    (64, 1, 3, 257, 1, 1, -60.0),      # gates down to -60: cumsums of -1000s, one-token tail
    (32, 2, 2, 1000, 1, 1, -1.0),
])
def test_tc_chunked_matches_float64(be, kda, S, Hk, Hv, T, N, Nqk, g_lo):
    ctx = mg.Context()
    out = gdn(ctx, S, Hk, Hv, T, N, Nqk, kda, 1, g_lo=g_lo)
    assert choice(out) == "chunked"
    assert max_rel(be, out) < 2e-6


@pytest.mark.gpu
@tc_only
@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("T", [1, 130])
def test_tc_kernels_take_the_interleaved_head_map(be, kda, T):
    """bcast 1 (value head h reads q/k head h // (H_v / H_k)): the chunked form and the decode."""
    ctx = mg.Context()
    out = gdn(ctx, 128, 2, 6, T, 2, 1, kda, 1, g_lo=-5.0)
    mg.gated_delta_net_set_bcast(out, 1)
    assert choice(out) == ("recurrent" if T == 1 else "chunked")
    assert max_rel(be, out) < 2e-6


@pytest.mark.gpu
@tc_only
@pytest.mark.parametrize("kda", [False, True])
@pytest.mark.parametrize("S,N,K", [(128, 5, 1), (128, 2, 3), (84, 3, 2), (8, 2, 1)])
def test_tc_decode_matches_float64(be, kda, S, N, K):
    ctx = mg.Context()
    out = gdn(ctx, S, 2, 4, 1, N, 1, kda, K, g_lo=-20.0)
    assert choice(out) == "recurrent"
    assert max_rel(be, out) < 2e-6


@pytest.mark.gpu
@tc_only
def test_tc_plan_picks_the_cuda_cpp_kernels(be):
    from minigraph.backends.cuda import gdn_tc

    ctx = mg.Context()
    kernel = lambda n: [la.kernel for la in be.kernels["GATED_DELTA_NET"].fn.launches(n)]  # noqa: E731
    pre = gdn(ctx, 128, 2, 4, 100, 1, 1, False, 1)
    kda = gdn(ctx, 64, 2, 4, 100, 1, 1, True, 1)
    dec = gdn(ctx, 128, 2, 4, 1, 2, 1, True, 1)
    assert kernel(pre) == [gdn_tc.prep_kernel(128), gdn_tc.state_kernel(128)]
    assert kernel(kda) == [gdn_tc.prep_kernel(64, True), gdn_tc.state_kernel(64, True)]
    assert kernel(dec) == [gdn_tc.decode_kernel(True, 128)]
    assert all(la.scalars[:2] == (1, 1) and len(la.scalars) == 2 + gdn_tc.NWS
               for la in be.kernels["GATED_DELTA_NET"].fn.launches(pre))
    short = gdn(ctx, 128, 2, 4, 63, 1, 1, False, 1)     # below TC_MIN_T: the recurrence
    assert choice(short) == "recurrent"


@pytest.mark.gpu
@tc_only
@pytest.mark.parametrize("S,N,Nqk,K,kda", [(128, 3, 3, 1, False), (128, 2, 1, 2, True), (84, 2, 2, 1, False),
                                          (84, 3, 1, 3, True)])
def test_tc_decode_nvrtc_equals_the_linked_kernel(S, N, Nqk, K, kda):
    """The decode compiled by NVRTC as its own kernel (gdn_tc.DEC_NVRTC, what plans take) and the
    Numba kernel linking the same C function write the same floats, snapshots and padding too."""
    from numba import cuda

    from minigraph.backends.cuda import gdn_fast, gdn_tc
    from minigraph.backends.cuda.driver import RawKernel

    rng = np.random.default_rng(7)
    Hk, Hv = 2, 4
    unit = lambda shape: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(  # noqa: E731
        rng.standard_normal(shape).astype(np.float32))
    arrs = (unit((Nqk, 1, Hk, S)), unit((Nqk, 1, Hk, S)), rng.standard_normal((N, 1, Hv, S)).astype(np.float32),
            rng.uniform(-5.0, -1e-3, (N, 1, Hv, S if kda else 1)).astype(np.float32),
            rng.uniform(0.1, 1, (N, 1, Hv, 1)).astype(np.float32),
            (0.1 * rng.standard_normal((N, Hv, S, S))).astype(np.float32))
    outs = []
    for nvrtc in (True, False):
        out = cuda.to_device(np.full(S * Hv * (N + K * S * N), np.nan, np.float32))
        args = (cuda.to_device(gdn_fast.contiguous_meta(out.size, *arrs)), out,
                *(cuda.to_device(a).reshape(a.size) for a in arrs), K)
        la = gdn_tc.decode_launch(S, Hv, N, kda, nvrtc=nvrtc)
        assert isinstance(la.kernel, RawKernel) == nvrtc
        la.kernel[la.grid, la.block](*args, *la.scalars)
        cuda.synchronize()
        outs.append(out.copy_to_host())
    assert not np.isnan(outs[0]).any()
    np.testing.assert_array_equal(outs[0], outs[1])
