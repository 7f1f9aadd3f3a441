"""The CUDA C++ quantized mat-vec kernels (backends/cuda/quant_mmvq.cu) without a GPU: run through
tests/cuda_emu_mmvq.py (every thread an OS thread, shared memory starting stale) on the grids,
shared memory and fields quant_mmvq.launches gives them, against the CPU backend.

K = 4352 = 136 units: lanes with 5 units and lanes with 4, an uneven split of src1's quantization
over the fused kernel's warps, and for the K-quants (read in 64-unit tiles) two full tiles (the
16-byte loads, the second in flight while the first is used) and a partial one (the 16-bit copy);
M = 5 leaves warps past the last row.
The fused kernel (src1 quantized in shared memory) must give the two-launch kernel's floats bit
for bit: the same integer sums scaled in the same order. Tolerance against the CPU as in
test_quant_cuda.py (|diff| <= 1e-5 * max |cpu|).
"""
import numpy as np
import pytest

import minigraph as mg
from minigraph.core import dtypes as D
from minigraph.core import quants

import cuda_emu
import cuda_emu_mmvq

pytestmark = pytest.mark.skipif(cuda_emu_mmvq.available() is not None,
                                reason=f"emulator: {cuda_emu_mmvq.available()}")

K = 4352
MM_TOL = 1e-5
FUSED_TYPES = [D.TYPE_Q8_0, D.TYPE_Q4_1, D.TYPE_Q4_K, D.TYPE_Q6_K]
UNALIGNED_TYPES = [D.TYPE_Q4_0, D.TYPE_Q5_0, D.TYPE_Q6_K, D.TYPE_Q8_0]   # 2-byte aligned blocks (Q8_0: W32)
# one emulator build for the whole file
KERNELS = tuple(f"mmvq_{t}_{s}" for t in FUSED_TYPES for s in "f1") + tuple(f"mmvq_{t}_4" for t in UNALIGNED_TYPES)


def _node(type_, n, offset_rows=False, seed=0):
    rng = np.random.default_rng(seed + type_)
    w = rng.standard_normal((6, K)).astype(np.float32)
    w[0, :32] = 0                                        # a zero block
    x = rng.standard_normal((n, K)).astype(np.float32)
    x[0, 256:512] = 0                                    # a zero src1 block / super-block
    ctx = mg.Context()
    wq = ctx.from_numpy(w, type_)
    if offset_rows:   # rows 1..5 of a tensor whose nb1 is 2 mod 4 (a block more where K's is not)
        bs, ts = D.blck_size(type_), D.type_size(type_)
        pad = 0 if (K // bs * ts) % 4 == 2 else bs
        wide = quants.quantize(np.pad(w, ((0, 0), (0, pad))), type_)
        big = ctx.from_numpy(wide, type_)
        wq = ctx.view_2d(big, K, 5, big.nb[1], big.nb[1])
    else:
        wq = ctx.view_2d(wq, K, 5, wq.nb[1], 0)
    return ctx.mul_mat(wq, ctx.from_numpy(x)), ctx


def _cpu(node):
    gf = mg.Graph()
    gf.build_forward_expand(node)
    mg.backend_cpu_init(1).graph_compute(gf)
    return node.numpy()


def _close(got, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    assert np.isfinite(got).all()
    assert float(np.abs(got - want).max()) <= MM_TOL * scale, (float(np.abs(got - want).max()), scale)


def _one_row_a_warp(monkeypatch):
    """quant_mmvq's settings with one warp a row slot and one row a warp for every type."""
    from minigraph.backends.cuda import quant_mmvq as qm

    for key, value in qm.ONE_ROW.items():
        monkeypatch.setitem(qm.CONFIG, key, value)


@pytest.mark.parametrize("type_", FUSED_TYPES, ids=D.type_name)
def test_fused_and_two_launch_kernels_match_cpu(type_, monkeypatch):
    """One src1 column: mmvq_T_f against quantize_q8 + mmvq_T_1 (bit for bit: one warp a row, as
    the fused kernel has) and the CPU."""
    _one_row_a_warp(monkeypatch)
    node, _ = _node(type_, 1)
    fused, _, bad_f = cuda_emu_mmvq.run_mul_mat(node, fuse=True, kernels=KERNELS)
    plain, (yq, yd, ys), bad_p = cuda_emu_mmvq.run_mul_mat(node, fuse=False, kernels=KERNELS)
    assert bad_f == 0 and bad_p == 0
    np.testing.assert_array_equal(fused, plain)
    _close(fused, _cpu(node).reshape(fused.shape))
    ref = quants.quantize(node.src[1].numpy().reshape(-1, K), D.VEC_DOT_TYPE[type_]).reshape(-1)
    ref = ref.view(D.BLOCK_DTYPES[D.VEC_DOT_TYPE[type_]])
    np.testing.assert_array_equal(yq.reshape(ref["qs"].shape), ref["qs"])
    np.testing.assert_array_equal(yd, ref["d"].astype(np.float32))


@pytest.mark.parametrize("type_", UNALIGNED_TYPES, ids=D.type_name)
def test_columns_and_unaligned_rows_match_cpu(type_):
    """Three src1 columns (mmvq_T_4, one column idle) over rows at 2-byte aligned offsets (the
    16-bit loads of the 2-byte aligned types)."""
    node, _ = _node(type_, 3, offset_rows=True)
    assert node.src[0].nb[1] % 4 == 2
    got, _, bad = cuda_emu_mmvq.run_mul_mat(node, kernels=KERNELS)
    assert bad == 0
    _close(got, _cpu(node).reshape(got.shape))


@pytest.mark.skipif(not cuda_emu.nvrtc_available(), reason="NVRTC is not installed")
def test_nvrtc_builds_without_spills():
    """Every kernel of quant_mmvq.cu compiles for sm_90 and keeps its unit words and sums in
    registers (a spill would be local-memory traffic in the loop over the row)."""
    from minigraph.backends.cuda import quant_mmvq

    _, log = quant_mmvq.nvrtc_compile("sm_90", ("--ptxas-options=-v",))
    if "spill stores" not in log:  # NVRTC builds that print no ptxas statistics (seen with NVRTC 13)
        pytest.skip("this NVRTC returns no ptxas statistics for --ptxas-options=-v")
    spills = [line for line in log.splitlines() if "spill" in line and not line.strip().startswith("0 bytes spill")
              and " 0 bytes spill stores, 0 bytes spill loads" not in line]
    assert not spills, log


@pytest.mark.parametrize("rows", ["R2", "R4"])
def test_rows_a_warp_give_the_same_floats(rows, monkeypatch):
    """Several src0 rows a warp (R2 / R4: each src1 unit read once for them) give each row's
    floats of one row a warp bit for bit; M = 5 leaves a warp with rows past the last one (they
    read the last row again and store nothing). Q4_K's rows are 16-byte aligned (the tiles'
    16-byte loads), Q6_K's and the 32-block types' at 2-byte aligned offsets (the 16-bit copies)."""
    from minigraph.backends.cuda import quant_mmvq as qm

    _one_row_a_warp(monkeypatch)
    types = [D.TYPE_Q4_0, D.TYPE_Q8_0, D.TYPE_Q5_1, D.TYPE_Q4_K, D.TYPE_Q6_K]   # Q4_K, Q6_K: a tile a row
    kernels = tuple(f"mmvq_{t}_{s}" for t in types for s in "12")
    plain = {}
    for t in types:
        node, _ = _node(t, 2, offset_rows=t not in (D.TYPE_Q5_1, D.TYPE_Q4_K))
        plain[t] = (node, cuda_emu_mmvq.run_mul_mat(node, kernels=kernels))
    monkeypatch.setitem(qm.CONFIG, rows, sum(1 << t for t in types))
    for t, (node, (want, _, bad_w)) in plain.items():
        assert qm.rows_of(t) == (2 if rows == "R2" else 4)
        got, _, bad = cuda_emu_mmvq.run_mul_mat(node, kernels=kernels)
        assert bad == 0 and bad_w == 0
        np.testing.assert_array_equal(got, want)
        _close(got, _cpu(node).reshape(got.shape))


@pytest.mark.parametrize("split", [2, 4])
def test_split_rows_match_cpu(split, monkeypatch):
    """S warps sharing each row slot (K2 / K4) and splitting its units: K = 4352 leaves a warp with
    fewer units (32-block types) or tiles (K-quants: 2 full and a partial one; at S = 4 a warp
    with none), M = 5 warps past the last row that still reach the block's barrier; with R2 too."""
    from minigraph.backends.cuda import quant_mmvq as qm

    types = [D.TYPE_Q4_0, D.TYPE_Q8_0, D.TYPE_Q4_K, D.TYPE_Q6_K]
    kernels = tuple(f"mmvq_{t}_1k{split}" for t in types)
    bits = sum(1 << t for t in types)
    monkeypatch.setitem(qm.CONFIG, "K4" if split == 4 else "K2", bits)
    monkeypatch.setitem(qm.CONFIG, "K2" if split == 4 else "K4", 0)
    for rows in (0, bits):
        monkeypatch.setitem(qm.CONFIG, "R2", rows)
        for t in types:
            node, _ = _node(t, 1, offset_rows=t in (D.TYPE_Q4_0, D.TYPE_Q6_K))
            assert qm.dot_name(node) == f"mmvq_{t}_1k{split}"
            got, _, bad = cuda_emu_mmvq.run_mul_mat(node, fuse=False, kernels=kernels)
            assert bad == 0
            _close(got, _cpu(node).reshape(got.shape))


def test_split_choice(monkeypatch):
    """K4 / K2 bits pick the split for one src1 column over rows of >= 64 units, else none."""
    from minigraph.backends.cuda import quant_mmvq as qm

    monkeypatch.setitem(qm.CONFIG, "K2", 1 << D.TYPE_Q4_0)
    monkeypatch.setitem(qm.CONFIG, "K4", 1 << D.TYPE_Q8_0)
    ctx = mg.Context()

    def mm(type_, k, n):
        return ctx.mul_mat(ctx.new_tensor_2d(type_, k, 8), ctx.from_numpy(np.zeros((n, k), np.float32)))
    assert [qm.splitk_of(mm(t, 4096, 1)) for t in (D.TYPE_Q4_0, D.TYPE_Q8_0, D.TYPE_Q4_K)] == [2, 4, 1]
    assert qm.splitk_of(mm(D.TYPE_Q4_0, 4096, 2)) == 1          # two columns: mmvq_T_2, no split
    assert qm.splitk_of(mm(D.TYPE_Q8_0, 1024, 1)) == 1          # 32 units a row



def _reorder_batch(type_, k, n, seed=1):
    """MUL_MAT of Q4_0 / Q4_K rows [k, 5, 2] (rows 1..5 of each batch of a [k, 6, 2] tensor: Q4_0's
    only 2-byte aligned) by src1 [k, n, 4] (src0 broadcast over dim 2)."""
    rng = np.random.default_rng(seed)
    ctx = mg.Context()
    w = rng.standard_normal((2, 6, k)).astype(np.float32)
    big = ctx.from_numpy(w, type_)
    a = ctx.view_3d(big, k, 5, 2, big.nb[1], big.nb[2], big.nb[1])
    x = ctx.from_numpy(rng.standard_normal((4, n, k)).astype(np.float32))
    return ctx.mul_mat(a, x), ctx


def _raw_rows(a):
    """The ggml bytes of a quantized view's rows, (ne3 * ne2 * ne1, row bytes), in dense order."""
    from minigraph.core.buffer import tensor_start

    raw = a.root._buf.data
    rb = a.ne[0] // D.blck_size(a.type) * D.type_size(a.type)
    out = [raw[tensor_start(a) + i1 * a.nb[1] + i2 * a.nb[2] + i3 * a.nb[3]:][:rb]
           for i3 in range(a.ne[3]) for i2 in range(a.ne[2]) for i1 in range(a.ne[1])]
    return np.stack(out)


REORDER_CASES = [(D.TYPE_Q4_0, 4352), (D.TYPE_Q4_0, 4384), (D.TYPE_Q4_K, 4352)]


@pytest.mark.parametrize("type_,k", REORDER_CASES, ids=lambda v: D.type_name(v) if v < 100 else str(v))
def test_reorder_kernel_writes_the_reordered_rows(type_, k):
    """reorder_q4_0 / reorder_q4_k over a strided view (two batches; Q4_0 rows at 2-byte aligned
    offsets) write each row as quant_reorder.reorder_host does (units' quants as 16 contiguous
    bytes, then the scales), in dense row order; Q4_0 with K = 4384 (137 blocks) leaves the
    padding to the row's 16 bytes untouched."""
    from minigraph.backends.cuda import quant_reorder as qr

    node, _ = _reorder_batch(type_, k, 1)
    got = cuda_emu_mmvq.reorder_rows(node)
    want = qr.reorder_host(_raw_rows(node.src[0]), type_, k // 32)
    used = 18 * (k // 32) + (k // 64 if type_ == D.TYPE_Q4_K else 0)
    np.testing.assert_array_equal(got[:, :used], want[:, :used])
    assert (got[:, used:] == 0xA5).all()                 # the padding is never written
    assert got.shape[1] == qr.row_bytes(type_, k // 32) and got.shape[1] % 16 == 0


def test_reorder_host_layouts_dequantize_as_ggml():
    """reorder_host's layouts dequantize to ggml's values: Q4_0 unit u = d[u] * (nibbles of qs[u]
    - 8); Q4_K unit u = d * sc[u] * nibbles - dmin * mn[u] with its super-block's d, dmin."""
    from minigraph.backends.cuda import quant_reorder as qr

    rng = np.random.default_rng(3)
    for type_ in (D.TYPE_Q4_0, D.TYPE_Q4_K):
        raw = quants.quantize(rng.standard_normal((3, 512)).astype(np.float32), type_)
        r = qr.reorder_host(raw, type_, 16)
        q = r[:, :256].reshape(3, 16, 16)
        nib = np.concatenate([q & 15, q >> 4], axis=2).astype(np.float64)       # (rows, unit, 32)
        want = quants.dequantize(raw, type_).reshape(3, 16, 32).astype(np.float64)
        if type_ == D.TYPE_Q4_0:
            d = r[:, 256:288].copy().view(np.float16).astype(np.float64)
            np.testing.assert_array_equal(d[:, :, None] * (nib - 8), want)
        else:
            scm = r[:, 256:288].reshape(3, 16, 2).astype(np.float32)
            dd = r[:, 288:296].copy().view(np.float16).astype(np.float32).reshape(3, 2, 2)
            d, dm = np.repeat(dd[:, :, 0], 8, axis=1), np.repeat(dd[:, :, 1], 8, axis=1)
            vals = (d * scm[:, :, 0])[..., None] * nib.astype(np.float32) - (dm * scm[:, :, 1])[..., None]
            np.testing.assert_array_equal(vals, want.astype(np.float32))


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("type_,k", REORDER_CASES, ids=lambda v: D.type_name(v) if v < 100 else str(v))
def test_reordered_rows_give_the_same_floats(type_, k, n, monkeypatch):
    """The dot kernel over the reordered copy (Q4_0R / Q4_KR: one 16-byte load of quants a unit,
    Q4_0R two units in flight a lane, one with eight columns) gives the floats of the kernel over
    ggml's bytes with the same rows a warp and split (quant_reorder.same_order: Q4_0's own, Q4_K's
    tiled kernel given Q4_KR's) bit for bit: one src1 column (two warps splitting a row slot, two
    rows a warp), three (mmvq_T_4) and eight (mmvq_T_8), Q4_0 with an odd block count (137: lanes
    with unequal units, a second unit past the row's end), src0 broadcast over dim 2; no misaligned
    load (the copy's rows are 16-byte aligned)."""
    from minigraph.backends.cuda import quant_mmvq as qm
    from minigraph.backends.cuda import quant_reorder as qr

    node, _ = _reorder_batch(type_, k, n)
    code = qr.KINDS[type_][0]
    for key, bits in qr.same_order(type_).items():
        monkeypatch.setitem(qm.CONFIG, key, bits)
    names = (qm.dot_name(node), qm.dot_name(node, code))
    assert names[1] == names[0].replace(f"mmvq_{type_}_", f"mmvq_{code}_")
    plain, _, bad_p = cuda_emu_mmvq.run_mul_mat(node, fuse=False, kernels=names)
    got, _, bad = cuda_emu_mmvq.run_mul_mat(node, fuse=False, kernels=names, reordered=True)
    assert bad == 0 and bad_p == 0
    np.testing.assert_array_equal(got, plain)
    _close(got, _cpu(node).reshape(got.shape))


def test_launcher_takes_the_alternative_launch_once_it_is_ready():
    """quant_mmvq._Launcher: when it is configured, the reordered copy's launch (an _Alt) replaces
    the plain one, with its own function, name, grid and block, where its readiness test holds
    (the plan binds the copy first); else the plain launch stays. Nothing is launched here."""
    from minigraph.backends.cuda import quant_mmvq as qm

    ready = [False]
    alt = qm._Alt("fn_r", False, 64, lambda: ready[0], "mmvq_28_1k2", (7, 1, 1), 128)
    la = qm._Launcher("fn", None, "mmvq_12_1", 0, True, alt)
    plain = la[(5,), (128,), None]
    assert (plain.kernel_name, plain.grid, plain.block, plain.smem) == ("mmvq_12_1", (5, 1, 1), (128, 1, 1), 0)
    ready[0] = True
    launch = la[(5,), (128,), None]
    assert launch.kernel_name == "mmvq_28_1k2"
    assert (launch.grid, launch.block, launch.smem) == ((7, 1, 1), (128, 1, 1), 64)
