"""CPU kernel of the attention family: FLASH_ATTN_EXT (online softmax, flash-decoding split).

Arrays are (ne3, ne2, ne1, ne0) views with any strides, each in its storage type (f16/bf16 as raw
16 bits, see backends/cpu/storage.py): q (n3, n_head, n_q, DK) f32, k (nk3, n_head_kv, n_kv, DK),
v (nv3, n_head_v, n_kv, DV), mask (m3, m2, >= n_q, >= n_kv) f16/f32, sinks (1, 1, 1, n_head) f32,
dst (n3, n_q, n_head, DV) f32.

Work split. A task owns one kv head g of one batch i3 and a few query positions, so its R query
rows (positions x the n_head / n_head_kv heads of the group) all read the same K rows: per block
of KV_BLOCK kv positions it converts those K rows once into a contiguous f32 tile and scores
every query row of the group against it (GQA/MQA share each K row read). When V is a view of K
(param v_in_k >= 0: V's row sits at that element offset inside K's row), V's values come from the
very same tile instead of a second read and conversion.
The two products per block run through BLAS sgemm when scipy is there (backends/cpu/blas.py),
else through plain loops. Both keep the query rows as the short side, in the order OpenBLAS
runs fastest with (measured: 16 rows x 64 kv as scores^T = K Q^T, 54 GFLOP/s a core, against 32
for scores = Q K^T): scores st [kv, R] = K Q^T, output ot [DV, R] += V^T P^T.
A block where the mask is -inf for every row of the task is skipped (causal prefill skips about
half the work, as ggml skips each -inf logit). When there are fewer than MIN_TASKS tasks
(decode: n_q = 1) the kv range is also split into chunks (flash-decoding); each chunk leaves its
running max, sum and unnormalised output, and a second pass combines them (and the sinks).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from minigraph.core import dtypes
from minigraph.core.registry import register_kernel

from minigraph.backends.cpu.blas import HAVE_BLAS, blas_threads, gemm_nt, gemm_tn
from minigraph.backends.cpu.jit import kernel
from minigraph.backends.cpu.storage import data_ptr, load_row, to_f32

F32 = dtypes.TYPE_F32

KV_BLOCK = 128         # kv positions per tile: 128 rows of K (576 f32 = 295 KiB) stay in L2
Q_TARGET_ROWS = 64     # query rows (heads x positions) a task aims for; more share each K tile
# Below this many tasks the kv range is split too (flash-decoding). A fixed count, not the thread
# count: numba.get_num_threads() inside a kernel defeats its disk cache; 16 tasks keep up to
# 16 threads busy and cost a merge of 16 partial rows each.
MIN_TASKS = 16
# The loop products are compiled on their own (not inlined at Numba IR level) so that their
# float flags hold: reassociation lets LLVM vectorise the dot reductions. No nnan/ninf: masked
# logits are -inf, and those never reach these helpers.
_FAST = dict(fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True, nogil=True, error_model="numpy")


@numba.njit(**_FAST)
def _dots_loops(a, na, b, nb_, dk, s):
    """s[i, j] = a[i, :dk] . b[j, :dk] for i < na, j < nb_; 4 x 2 register tiles."""
    i = 0
    while i + 4 <= na:
        j = 0
        while j + 2 <= nb_:
            a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = np.float32(0.0)
            for d in range(dk):
                b0 = b[j, d]
                b1 = b[j + 1, d]
                x0 = a[i, d]
                x1 = a[i + 1, d]
                x2 = a[i + 2, d]
                x3 = a[i + 3, d]
                a00 += x0 * b0
                a01 += x0 * b1
                a10 += x1 * b0
                a11 += x1 * b1
                a20 += x2 * b0
                a21 += x2 * b1
                a30 += x3 * b0
                a31 += x3 * b1
            s[i, j] = a00
            s[i, j + 1] = a01
            s[i + 1, j] = a10
            s[i + 1, j + 1] = a11
            s[i + 2, j] = a20
            s[i + 2, j + 1] = a21
            s[i + 3, j] = a30
            s[i + 3, j + 1] = a31
            j += 2
        if j < nb_:
            for ii in range(i, i + 4):
                acc = np.float32(0.0)
                for d in range(dk):
                    acc += a[ii, d] * b[j, d]
                s[ii, j] = acc
        i += 4
    for ii in range(i, na):
        for j in range(nb_):
            acc = np.float32(0.0)
            for d in range(dk):
                acc += a[ii, d] * b[j, d]
            s[ii, j] = acc


@numba.njit(**_FAST)
def _pv_loops(p, nr, vb, voff, nj, dv, ot):
    """ot[d, r] += sum_j vb[j, voff + d] * p[j, r] for r < nr: the rows of a V row update the
    R accumulators of their d at once (a short contiguous loop over r)."""
    for j in range(nj):
        pj = p[j]
        vrow = vb[j, voff:voff + dv]
        for d in range(dv):
            x = vrow[d]
            orow = ot[d]
            for r in range(nr):
                orow[r] += x * pj[r]


@numba.njit(inline="always", cache=True, nogil=True)
def _scores(kb, nj, qt, nr, dk, st, ab):
    """st[j, r] = kb[j, :dk] . qt[r, :dk] for j < nj, r < nr (ab = [1, 0]: BLAS alpha, beta)."""
    if HAVE_BLAS:
        gemm_nt(nj, nr, dk, data_ptr(kb), kb.shape[1], data_ptr(qt), qt.shape[1], data_ptr(st), st.shape[1],
                data_ptr(ab), data_ptr(ab[1:]))
    else:
        _dots_loops(kb, nj, qt, nr, dk, st)


@numba.njit(inline="always", cache=True, nogil=True)
def _add_pv(st, nr, vb, voff, nj, dv, ot, ab):
    """ot[d, r] += sum_j vb[j, voff + d] * st[j, r] for d < dv, r < nr (ab[0] = 1: alpha and beta)."""
    if HAVE_BLAS:
        gemm_tn(dv, nr, nj, data_ptr(vb[0, voff:]), vb.shape[1], data_ptr(st), st.shape[1], data_ptr(ot),
                ot.shape[1], data_ptr(ab), data_ptr(ab))
    else:
        _pv_loops(st, nr, vb, voff, nj, dv, ot)


@numba.njit(inline="always", cache=True, nogil=True)
def _slope(h, n_head, max_bias):
    """ggml's ALiBi slope of head h (1 when max_bias <= 0)."""
    if max_bias <= 0.0:
        return np.float32(1.0)
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    return np.float32(m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1))


@numba.njit(inline="always", cache=True, nogil=True)
def _online_softmax(st, bias, nj, nr, scale, softcap, m_run, l_run, mx, fac, ot):
    """Turn the block's scores st[j, r] into exp(logit - running max) in place, rescaling the
    running sums and outputs ot[:, r] of rows whose max grew. Loops run along r (contiguous)."""
    for r in range(nr):
        mx[r] = m_run[r]
    for j in range(nj):
        srow = st[j]
        brow = bias[j]
        for r in range(nr):
            x = srow[r] * scale
            if softcap != 0.0:
                x = softcap * math.tanh(x)
            x += brow[r]
            srow[r] = x
            mx[r] = max(mx[r], x)
    grew = False
    for r in range(nr):
        fac[r] = 1.0
        if mx[r] > m_run[r]:
            fac[r] = math.exp(m_run[r] - mx[r])   # 0 when the row had nothing yet (-inf)
            l_run[r] *= fac[r]
            m_run[r] = mx[r]
            grew = True
    if grew:
        for d in range(ot.shape[0]):
            orow = ot[d]
            for r in range(nr):
                orow[r] *= fac[r]
    for j in range(nj):
        srow = st[j]
        for r in range(nr):
            # a row with every logit -inf so far stays empty (exp(-inf - -inf) would be NaN)
            e = np.float32(math.exp(srow[r] - m_run[r])) if m_run[r] != -np.inf else np.float32(0.0)
            srow[r] = e
            l_run[r] += e


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _chunk(q, k, v, mask, i3, g, iq0, nq_rows, c0, c1, scale, max_bias, softcap, v_in_k, has_mask,
           k_type, v_type, mask_type, o, m_run, l_run):
    """Attend query rows iq0..iq0+nq_rows of every head of kv head g (batch i3) to kv c0..c1.

    Leaves o [R, DV] (unnormalised), m_run [R] (running max), l_run [R] (running sum); row
    r = qi * G + hh is query row iq0 + qi of head g * G + hh. K, V and the mask are read in
    their storage types (k_type, v_type, mask_type), converted as each block is loaded."""
    n3 = q.shape[0]
    n_head = q.shape[1]
    dk = q.shape[3]
    dv = o.shape[1]
    G = n_head // k.shape[1]
    ik3 = i3 // (n3 // k.shape[0])
    nr = nq_rows * G
    v_heads = v.shape[1]
    v_shared = v_heads == k.shape[1] and v.shape[0] == k.shape[0]
    iv3 = i3 // (n3 // v.shape[0])
    qt = np.empty((nr, dk), np.float32)
    slope = np.empty(nr, np.float32)
    for r in range(nr):
        h = g * G + r % G
        slope[r] = _slope(h, n_head, max_bias)
        load_row(q[i3, h, iq0 + r // G], qt[r], F32)
        m_run[r] = -np.inf
        l_run[r] = 0.0
    # BLAS alpha / beta; pointers are taken at each call: an array is freed after its last use
    ab = np.array([1.0, 0.0], np.float32)
    kb = np.empty((KV_BLOCK, dk), np.float32)
    vb = np.empty((KV_BLOCK, dv if v_in_k < 0 else 1), np.float32)
    st = np.empty((KV_BLOCK, nr), np.float32)
    bias = np.zeros((KV_BLOCK, nr), np.float32)
    ot = np.zeros((dv, nr), np.float32)
    mrow = np.empty(KV_BLOCK, np.float32)
    mx = np.empty(nr, np.float32)
    fac = np.empty(nr, np.float32)
    for j0 in range(c0, c1, KV_BLOCK):
        nj = min(KV_BLOCK, c1 - j0)
        live = not has_mask
        if has_mask:
            for r in range(nr):
                h = g * G + r % G
                load_row(mask[i3 % mask.shape[0], h % mask.shape[1], iq0 + r // G, j0:j0 + nj], mrow[:nj], mask_type)
                for j in range(nj):
                    b = slope[r] * mrow[j]
                    bias[j, r] = b
                    if b != -np.inf:
                        live = True
        if not live:
            continue   # every logit of the block is -inf: nothing to add
        for j in range(nj):   # each K row converted once, for every query row of the group
            load_row(k[ik3, g, j0 + j], kb[j], k_type)
        if v_in_k < 0 and v_shared:
            for j in range(nj):
                load_row(v[iv3, g, j0 + j], vb[j], v_type)
        _scores(kb, nj, qt, nr, dk, st, ab)
        _online_softmax(st, bias, nj, nr, scale, softcap, m_run, l_run, mx, fac, ot)
        if v_in_k >= 0:   # V's rows sit inside the K rows just converted
            _add_pv(st, nr, kb, v_in_k, nj, dv, ot, ab)
        elif v_shared:
            _add_pv(st, nr, vb, 0, nj, dv, ot, ab)
        else:   # V has its own head grouping: each row reads its V head directly
            for r in range(nr):
                iv2 = (g * G + r % G) // (n_head // v_heads)
                for j in range(nj):
                    pj = st[j, r]
                    vrow = v[iv3, iv2, j0 + j]
                    for d in range(dv):
                        ot[d, r] += pj * to_f32(vrow[d], v_type)
    for r in range(nr):
        for d in range(dv):
            o[r, d] = ot[d, r]


@numba.njit(inline="always", cache=True, nogil=True)
def _merge(m_a, l_a, o_a, m_b, l_b, o_b, dv):
    """Fold partial (m_b, l_b, o_b) into (m_a, l_a, o_a) in place; returns the new (m, l)."""
    if m_b == -np.inf:
        return m_a, l_a
    m = max(m_a, m_b)
    fa = math.exp(m_a - m) if m_a != -np.inf else 0.0
    fb = math.exp(m_b - m)
    for d in range(dv):
        o_a[d] = o_a[d] * fa + o_b[d] * fb
    return m, l_a * fa + l_b * fb


@numba.njit(inline="always", cache=True, nogil=True)
def _finish(out_row, o_row, m, l, sink, has_sinks, dv):
    """dst row = o / l after the sink's exp(sink - m) joins the denominator (0 when l == 0)."""
    if has_sinks:
        if sink > m:
            f = math.exp(m - sink) if m != -np.inf else 0.0
            l = l * f + 1.0
            for d in range(dv):
                o_row[d] *= f
        else:
            l += math.exp(sink - m)
    inv = 1.0 / l if l != 0.0 else 0.0
    for d in range(dv):
        out_row[d] = o_row[d] * inv


@kernel
def flash_attn_ext(dst, q, k, v, mask, sinks, scale, max_bias, logit_softcap, prec, v_in_k, has_mask,
                   has_sinks, dst_type, q_type, k_type, v_type, mask_type, sinks_type):
    """dst[i3, iq1, h, :] = softmax_j(scale*q.k_j (softcapped) + slope_h*mask[iq1, j]) v_j (see
    minigraph.ops.attention); prec is ggml's, both precisions accumulate in f32. Every slot comes
    in its storage type with its type code (*_type; dst, q, sinks are f32)."""
    n3, n_q, n_head, dv = dst.shape
    n_kv = k.shape[2]
    n_kvh = k.shape[1]
    G = n_head // n_kvh
    qb = max(1, min(n_q, Q_TARGET_ROWS // G))
    n_qblk = (n_q + qb - 1) // qb
    base = n3 * n_kvh * n_qblk
    n_split = 1
    want = MIN_TASKS
    if base < want and n_kv >= 2 * KV_BLOCK:
        n_split = min((want + base - 1) // base, n_kv // KV_BLOCK)
    chunk = ((n_kv + n_split - 1) // n_split + KV_BLOCK - 1) // KV_BLOCK * KV_BLOCK
    sc = np.float32(scale / logit_softcap if logit_softcap != 0.0 else scale)
    cap = np.float32(logit_softcap)
    R = qb * G
    part_o = np.empty((base * n_split, R, dv), np.float32)
    part_m = np.empty((base * n_split, R), np.float32)
    part_l = np.empty((base * n_split, R), np.float32)
    for t in prange(base * n_split):
        b = t // n_split
        c0 = min(n_kv, (t % n_split) * chunk)
        c1 = min(n_kv, c0 + chunk)
        i3 = b // (n_kvh * n_qblk)
        g = (b // n_qblk) % n_kvh
        iq0 = (b % n_qblk) * qb
        nq_rows = min(qb, n_q - iq0)
        blas_prev = blas_threads(1)   # this worker's products on this worker only
        _chunk(q, k, v, mask, i3, g, iq0, nq_rows, c0, c1, sc, max_bias, cap, v_in_k, has_mask,
               k_type, v_type, mask_type, part_o[t], part_m[t], part_l[t])
        blas_threads(blas_prev)
    for b in prange(base):
        i3 = b // (n_kvh * n_qblk)
        g = (b // n_qblk) % n_kvh
        iq0 = (b % n_qblk) * qb
        nr = min(qb, n_q - iq0) * G
        t0 = b * n_split
        for r in range(nr):
            m = part_m[t0, r]
            l_ = part_l[t0, r]
            for sp in range(1, n_split):
                m, l_ = _merge(m, l_, part_o[t0, r], part_m[t0 + sp, r], part_l[t0 + sp, r],
                               part_o[t0 + sp, r], dv)
            h = g * G + r % G
            _finish(dst[i3, iq0 + r // G, h], part_o[t0, r], m, l_, sinks[0, 0, 0, h] if has_sinks else 0.0,
                    has_sinks, dv)


# every slot in its storage type, as a strided view: one compiled variant per KV/mask type
register_kernel("FLASH_ATTN_EXT", "cpu", flash_attn_ext, storage_slots=(0, 1, 2, 3, 4, 5))
