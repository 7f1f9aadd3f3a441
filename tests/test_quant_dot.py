"""The CPU's quantized dot products (backends/cpu/quant_dot.py, quant_ir.py) and their src1
quantizer: the Numba quantizer against the reference bytes, the AVX2 and portable vector forms
against each other, the executor's form against the per-node path. tests/test_quant.py checks
the results against the float64 reference and ggml's CPU backend."""
import numpy as np
import pytest

import minigraph as mg
from minigraph.core import dtypes as D
from minigraph.core import quants
from test_quant import _rows  # the same edge-case rows the quantizer tests use


@pytest.mark.parametrize("src0", [D.TYPE_Q8_0, D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q4_K], ids=["q8_0", "q4_0", "q4_1", "q4_K"])
def test_src1_quantizer_is_the_reference(src0):
    """MUL_MAT quantizes src1 in Numba: the same quants, scales and sums as the reference
    quantizer (ggml's bytes), for rows with zero blocks, subnormal scales and exact halves."""
    from minigraph.backends.cpu import quant as Q
    vt = D.VEC_DOT_TYPE[src0]
    rng = np.random.default_rng(8)
    x = np.concatenate([_rows(vt, n_rows=5, blocks=512 // D.blck_size(vt), seed=9),
                        rng.integers(-127, 128, (1, 512)) / 2.0, rng.standard_normal((1, 512)) * 1e-7]).astype(np.float32)
    yq, yd, ys, ys_row = Q.quantize_src1(x, src0)
    rec = quants.quantize(x, vt).reshape(-1).view(D.BLOCK_DTYPES[vt])
    np.testing.assert_array_equal(yq, rec["qs"].reshape(-1))
    np.testing.assert_array_equal(yd, rec["d"].astype(np.float32).reshape(-1))
    if vt == D.TYPE_Q8_1:
        np.testing.assert_array_equal(ys.view(np.float32), rec["s"].astype(np.float32).reshape(-1))
    if vt == D.TYPE_Q8_K:
        np.testing.assert_array_equal(ys.view(np.int16), rec["bsums"].reshape(-1))
        assert ys_row == 2 * 512 // 16
    if src0 == D.TYPE_Q4_0:   # -8 x the sums of each 4 quants (where Q4_0's unsigned dots start)
        np.testing.assert_array_equal(ys.view(np.int32), -8 * rec["qs"].reshape(-1, 4).astype(np.int32).sum(axis=1))


def test_portable_dot_products_equal_the_avx2_ones():
    """The vector IR has an AVX2 form (ggml's instructions), a VNNI form (vpdpbusd, where the host
    has it) and a portable form (other x86, ARM): on arbitrary block bytes (any scale, q8_0 quants
    of -128, negative q6_K scales) all give the same float32 results, bit for bit. Recompiles the
    dot products with VNNI off, then with the portable form."""
    import numba
    from minigraph.backends.cpu import quant as Q, quant_dot, quant_ir
    rng = np.random.default_rng(10)
    k, rows = 512, 3
    y = rng.standard_normal((1, k)).astype(np.float32)
    cases = {}
    for t in quant_dot.SPECS:
        raw = rng.integers(0, 256, rows * k // D.blck_size(t) * D.type_size(t), dtype=np.uint8)
        halves = raw.reshape(-1, D.type_size(t))            # keep the float16 scales finite
        for off in ((208,) if t == D.TYPE_Q6_K else (0, 2) if t in (D.TYPE_Q4_1, D.TYPE_Q5_1, D.TYPE_Q4_K, D.TYPE_Q5_K)
                    else (0,)):
            halves[:, off + 1] &= 0x3B
        cases[t] = (raw, *Q.quantize_src1(y, t))

    def run(fn):
        out = {}
        for t, (raw, yq, yd, ys, _) in cases.items():
            out[t] = np.array([fn(t, raw, m * raw.size // rows, yq, 0, yd, 0, ys, 0, k // D.blck_size(t), Q.F16_TABLE)
                               for m in range(rows)], np.float32)
        return out
    native = run(numba.njit(Q._vec_dot.py_func))
    saved = quant_ir.AVX2, quant_ir.NATIVE_HALF, quant_ir.VNNI
    try:
        quant_ir.VNNI = False       # the AVX2 sequence where the host has VNNI (else: native again)
        no_vnni = run(numba.njit(Q._vec_dot.py_func))
        quant_ir.AVX2 = quant_ir.NATIVE_HALF = False
        portable = run(numba.njit(Q._vec_dot.py_func))
    finally:
        quant_ir.AVX2, quant_ir.NATIVE_HALF, quant_ir.VNNI = saved
    for t in cases:
        assert np.isfinite(native[t]).all(), D.type_name(t)
        np.testing.assert_array_equal(portable[t], native[t], err_msg=D.type_name(t))
        np.testing.assert_array_equal(no_vnni[t], native[t], err_msg=D.type_name(t))


def test_row_group_dots_equal_the_single_row_ones():
    """Every quantized type takes quant_dot.ROWS src0 rows a call (four accumulator chains sharing
    src1's loads): each row's float is the single-row dot's, bit for bit, on arbitrary block
    bytes with rows at odd byte strides."""
    import numba
    from minigraph.backends.cpu import quant as Q, quant_dot
    rng = np.random.default_rng(14)
    k, rows = 512, quant_dot.ROWS
    y = rng.standard_normal((1, k)).astype(np.float32)

    @numba.njit
    def both(t, raw, step, yq, yd, ys, nblk, f16):
        group = Q._vec_dot_rows(t, raw, 3, step, yq, 0, yd, 0, ys, 0, nblk, f16)
        one = np.empty((2, len(group)), np.float32)
        for j in range(len(group)):
            one[0, j] = group[j]
            one[1, j] = Q._vec_dot(t, raw, 3 + j * step, yq, 0, yd, 0, ys, 0, nblk, f16)
        return one
    assert set(quant_dot.ROW_KINDS) == set(quant_dot.SPECS)   # every type with a dot
    # the float16 scales of each block: byte offsets of their high bytes
    f16_high = {D.TYPE_Q4_1: (1, 3), D.TYPE_Q5_1: (1, 3), D.TYPE_Q4_K: (1, 3), D.TYPE_Q5_K: (1, 3),
                D.TYPE_Q6_K: (209,)}
    for t in quant_dot.ROW_KINDS:
        row = k // D.blck_size(t) * D.type_size(t)
        step = row + 5
        raw = rng.integers(0, 256, 3 + rows * step, dtype=np.uint8)
        for r in range(rows):   # finite float16 scales: the high byte of d (and m) below 0x3C
            blocks = raw[3 + r * step: 3 + r * step + row].reshape(-1, D.type_size(t))
            for hi in f16_high.get(t, (1,)):
                blocks[:, hi] &= 0x3B
        yq, yd, ys, _ = Q.quantize_src1(y, t)
        got = both(t, raw, step, yq, yd, ys, k // D.blck_size(t), Q.F16_TABLE)
        assert np.isfinite(got).all(), D.type_name(t)
        np.testing.assert_array_equal(got[0], got[1], err_msg=D.type_name(t))


def test_mul_mat_in_the_program_equals_the_per_node_path(monkeypatch):
    """Quantized MUL_MAT runs inside the compiled executor (src0 as a raw-byte slot); the
    per-node path (from Python, for nodes the program cannot take) gives the same bits,
    on a strided src1 with broadcast dims."""
    from minigraph.backends.cpu.backend import CpuPlan
    rng = np.random.default_rng(12)
    w = rng.standard_normal((1, 2, 5, 256)).astype(np.float32)
    xt = rng.standard_normal((2, 4, 256, 3)).astype(np.float32)

    def run(type_):
        ctx = mg.Context()
        x = ctx.permute(ctx.from_numpy(xt), 1, 0, 2, 3)          # src1 ne [256, 3, 4, 2], strided
        out = ctx.mul_mat(ctx.from_numpy(w, type_), x)
        gf = mg.Graph()
        gf.build_forward_expand(out)
        be = mg.backend_cpu_init(2)
        be.graph_compute(gf)
        return be.plan(gf), out.numpy()

    for t in (D.TYPE_Q4_0, D.TYPE_Q5_1, D.TYPE_Q4_K):
        plan, in_program = run(t)
        assert [s[0] for s in plan.steps] == ["prog"], D.type_name(t)
        with monkeypatch.context() as m:
            m.setattr(CpuPlan, "_node_variant", staticmethod(lambda kern, n, build: None))
            plan, per_node = run(t)
        assert [s[0] for s in plan.steps] == ["node"]
        np.testing.assert_array_equal(in_program, per_node, err_msg=D.type_name(t))
