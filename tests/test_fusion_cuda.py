"""Elementwise fusion on the CUDA backend (backends/cuda/fused.py): FUSED_ELEMENTWISE's conformance
cases against the float64 reference, fused vs unfused CUDA graphs bit for bit (gate chain,
permuted and odd-offset inputs, the contiguous fast path and the generic one), and refusals.

Runs on a real GPU or on numba-cuda's simulator (tests/conftest.py), so shapes stay small."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.core.cases import cases_for, make_input
from minigraph.tools.conformance import check_case
from minigraph.ops.fused import GATE_PROGRAM
from test_cuda_backend import SKIP, be  # noqa: F401 - `be`: that module's backend fixture
from test_fusion import gate_chain, ops_of, run_both

pytestmark = [pytest.mark.skipif(SKIP is not None, reason=SKIP or ""),
              pytest.mark.filterwarnings("ignore:Grid size:Warning")]

FUSED_CASES = cases_for("FUSED_ELEMENTWISE")


@pytest.mark.parametrize("case", FUSED_CASES, ids=[c.name for c in FUSED_CASES])
def test_conformance_cases(be, case):
    assert be.supports_op_name("FUSED_ELEMENTWISE")
    err = check_case(case, be, seed=1)
    assert err is None, f"{case.name}: {err}"


def test_gate_chain_fuses_and_is_bit_identical(be):
    ctx = mg.Context()
    decay, beta = gate_chain(ctx, np.random.default_rng(3), H=4, T=6, N=2)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, decay)
    mg.build_forward_expand(gf, beta)
    run = mg.optimize(gf, be)
    assert ops_of(run) == ["FUSED_ELEMENTWISE", "FUSED_ELEMENTWISE"]
    want = [["ADD", "SOFTPLUS", "MUL", "EXP"], ["SCALE", "SIGMOID"]]
    assert sorted(n.op_params["fused_from"] for n in run.nodes) == want
    plain, fused = run_both(gf, (decay, beta), be)
    for a, b in zip(plain, fused):
        np.testing.assert_array_equal(a, b)
    ref = mg.reference_compute(gf)
    np.testing.assert_allclose(decay.numpy(), ref[decay], rtol=1e-5)


def test_compute_by_name_and_scheduler_run_fused(be):
    ctx = mg.Context()
    decay, beta = gate_chain(ctx, np.random.default_rng(4), H=4, T=5, N=1)
    want = mg.compute(decay, "cuda", fuse=False).copy()
    np.testing.assert_array_equal(mg.compute(decay, "cuda"), want)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, beta)
    cpu = mg.backend_cpu_init(1)
    sched = mg.backend_sched_new([be, cpu])
    run = mg.optimize(gf, sched)
    assert ops_of(run) == ["FUSED_ELEMENTWISE"]
    sched.graph_compute(gf)
    assert sched.get_tensor_backend(beta) is be
    got = mg.backend_tensor_get(beta)
    mg.compute(gf, be, fuse=False)
    np.testing.assert_array_equal(got, mg.backend_tensor_get(beta))


def _chain(ctx, a, b, c):
    """MUL then ADD across op boundaries (an FMA there would round once), SQR, NEG, SILU, GELU, DIV."""
    x = ctx.add(ctx.mul(a, b), c)
    x = ctx.sub(ctx.sqr(x), c)
    x = ctx.add(ctx.neg(ctx.mul(x, b)), c)
    x = ctx.div(ctx.add(ctx.silu(x), ctx.gelu(x)), ctx.scale_bias(ctx.sqr(b), 1.0, 0.5))
    return ctx.scale_bias(x, 0.75, -0.125)


@pytest.mark.parametrize("layout", ["cont", "perm", "offs"])
def test_layouts_are_bit_identical(be, layout):
    """Permuted and odd-offset (unaligned) inputs take the generic kernel, contiguous ones the flat one;
    b repeats along rows (ne [7,1,1]), c along dim 0 (ne [1,4,3])."""
    rng = np.random.default_rng(5)
    ctx = mg.Context()
    a = make_input(ctx, rng, [7, 4, 3], layout)
    b = make_input(ctx, rng, [7, 1, 1])
    c = make_input(ctx, rng, [1, 4, 3])
    out = _chain(ctx, a, b, c)
    gf = ctx.new_graph()
    mg.build_forward_expand(gf, out)
    run = mg.optimize(gf, be)
    assert [op for op in ops_of(run) if op not in ("PERMUTE", "VIEW")] == ["FUSED_ELEMENTWISE"] * 2
    assert len(run.nodes[-1].op_params["fused_from"]) == 12    # and SQR+SCALE of b, over b's shape
    plain, fused = run_both(gf, (out,), be)
    np.testing.assert_array_equal(plain[0], fused[0])
    np.testing.assert_allclose(fused[0], mg.reference_compute(gf)[out], rtol=1e-4, atol=1e-5)


def test_hand_built_program_reads_views(be):
    """The conformance gate program with a permuted a and odd-offset dt and A (unaligned)."""
    rng = np.random.default_rng(6)
    ctx = mg.Context()
    out = ctx.fused_elementwise(GATE_PROGRAM, [make_input(ctx, rng, [5, 3, 2], "perm", -3.0, 3.0),
                                               make_input(ctx, rng, [5, 1, 1], "offs"),
                                               make_input(ctx, rng, [1, 3, 2], "offs", -1.0, -0.1)])
    gf = ctx.new_graph()
    gf.build_forward_expand(out)
    be.graph_compute(gf)
    np.testing.assert_allclose(out.numpy(), mg.reference_compute(gf)[out], rtol=1e-5)


def test_refusals_name_the_op(be):
    ctx = mg.Context()
    h = ctx.new_tensor_2d(mg.TYPE_F16, 4, 3)
    f = ctx.new_tensor_2d(mg.TYPE_F32, 4, 3)
    node = ctx.fused_elementwise((("EXP", (("in", 0),), ()), ("ADD", (("t", 0), ("in", 1)), ())), [f, h])
    s = be.supports_op(node)
    assert not s and "FUSED_ELEMENTWISE" in s.reason and "f32" in s.reason
    ok = ctx.fused_elementwise((("EXP", (("in", 0),), ()), ("ADD", (("t", 0), ("in", 1)), ())), [f, f])
    assert be.supports_op(ok)
    ok.op_params = {k: v for k, v in ok.op_params.items() if k != "program"}
    s = be.supports_op(ok)
    assert not s and "FUSED_ELEMENTWISE" in s.reason
