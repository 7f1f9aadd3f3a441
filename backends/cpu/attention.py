"""CPU kernel of the attention family: FLASH_ATTN_EXT (online softmax, flash-decoding split).

Arrays are (ne3, ne2, ne1, ne0) f32 views with any strides (the backend hands f16/bf16 K/V over
as f32 copies): q (n3, n_head, n_q, DK), k (nk3, n_head_kv, n_kv, DK), v (nv3, n_head_v, n_kv, DV),
mask (m3, m2, >= n_q, >= n_kv), sinks (1, 1, 1, n_head), dst (n3, n_q, n_head, DV).

Work split. A task owns one kv head g of one batch i3 and Q_ROWS query rows, so its R = Q_ROWS *
(n_head / n_head_kv) query rows all read the same K rows: per block of KV_BLOCK kv positions it
copies those K rows once into a contiguous tile and scores every query row of the group against
them (GQA/MQA share the load). When V is a view of K (param v_in_k >= 0: V's row sits at that
element offset inside K's row), V's values come from the very same K tile instead of a second read.
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

from minigraph.core.registry import register_kernel

from minigraph.backends.cpu.jit import kernel

KV_BLOCK = 64          # kv positions per tile: 64 rows of K (576 f32 = 147 KiB) stay in L2
Q_TARGET_ROWS = 32     # query rows (heads x positions) a task aims for; more share each K tile
# Below this many tasks the kv range is split too (flash-decoding). A fixed count, not the thread
# count: numba.get_num_threads() inside a kernel defeats its disk cache; 16 tasks keep up to
# 16 threads busy and cost a merge of 16 partial rows each.
MIN_TASKS = 16
# The dot products and the V update are compiled on their own (not inlined at Numba IR level)
# so that their float flags hold: reassociation lets LLVM vectorise the dot reductions. No
# nnan/ninf: masked logits are -inf, and those never reach these helpers.
_FAST = dict(fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True, nogil=True, error_model="numpy")


@numba.njit(**_FAST)
def _scores(qt, nr, kb, nj, dk, s):
    """s[r, j] = qt[r, :dk] . kb[j, :dk] for r < nr, j < nj; 4 x 2 register tiles."""
    r = 0
    while r + 4 <= nr:
        j = 0
        while j + 2 <= nj:
            a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = np.float32(0.0)
            for d in range(dk):
                k0 = kb[j, d]
                k1 = kb[j + 1, d]
                q0 = qt[r, d]
                q1 = qt[r + 1, d]
                q2 = qt[r + 2, d]
                q3 = qt[r + 3, d]
                a00 += q0 * k0
                a01 += q0 * k1
                a10 += q1 * k0
                a11 += q1 * k1
                a20 += q2 * k0
                a21 += q2 * k1
                a30 += q3 * k0
                a31 += q3 * k1
            s[r, j] = a00
            s[r, j + 1] = a01
            s[r + 1, j] = a10
            s[r + 1, j + 1] = a11
            s[r + 2, j] = a20
            s[r + 2, j + 1] = a21
            s[r + 3, j] = a30
            s[r + 3, j + 1] = a31
            j += 2
        if j < nj:
            for rr in range(r, r + 4):
                a = np.float32(0.0)
                for d in range(dk):
                    a += qt[rr, d] * kb[j, d]
                s[rr, j] = a
        r += 4
    for rr in range(r, nr):
        for j in range(nj):
            a = np.float32(0.0)
            for d in range(dk):
                a += qt[rr, d] * kb[j, d]
            s[rr, j] = a


@numba.njit(**_FAST)
def _accumulate_rows(p, r0, r1, vb, voff, nj, dv, o):
    """o[r, :dv] += sum_j p[r, j] * vb[j, voff:voff + dv] for r0 <= r < r1, one row at a time."""
    for r in range(r0, r1):
        orow = o[r]
        for j in range(nj):
            pj = p[r, j]
            if pj != 0.0:
                vrow = vb[j, voff:voff + dv]   # a contiguous 1-D slice: the loop vectorises
                for d in range(dv):
                    orow[d] += pj * vrow[d]


@numba.njit(**_FAST)
def _accumulate(p, nr, vb, voff, nj, dv, o):
    """o[r, :dv] += sum_j p[r, j] * vb[j, voff:voff + dv]: four rows of o kept in contiguous
    scratch rows while two kv rows at a time stream past (each V value loaded once per 4 rows)."""
    t0 = np.empty(dv, np.float32)
    t1 = np.empty(dv, np.float32)
    t2 = np.empty(dv, np.float32)
    t3 = np.empty(dv, np.float32)
    r = 0
    while r + 4 <= nr:
        for d in range(dv):
            t0[d] = o[r, d]
            t1[d] = o[r + 1, d]
            t2[d] = o[r + 2, d]
            t3[d] = o[r + 3, d]
        j = 0
        while j + 2 <= nj:
            v0 = vb[j, voff:voff + dv]
            v1 = vb[j + 1, voff:voff + dv]
            a0, b0 = p[r, j], p[r, j + 1]
            a1, b1 = p[r + 1, j], p[r + 1, j + 1]
            a2, b2 = p[r + 2, j], p[r + 2, j + 1]
            a3, b3 = p[r + 3, j], p[r + 3, j + 1]
            for d in range(dv):
                x = v0[d]
                y = v1[d]
                t0[d] += a0 * x + b0 * y
                t1[d] += a1 * x + b1 * y
                t2[d] += a2 * x + b2 * y
                t3[d] += a3 * x + b3 * y
            j += 2
        for d in range(dv):
            o[r, d] = t0[d]
            o[r + 1, d] = t1[d]
            o[r + 2, d] = t2[d]
            o[r + 3, d] = t3[d]
        if j < nj:   # odd block length: the last kv row for these four rows
            _accumulate_rows(p[:, j:], r, r + 4, vb[j:], voff, 1, dv, o)
        r += 4
    _accumulate_rows(p, r, nr, vb, voff, nj, dv, o)


@numba.njit(inline="always", cache=True, nogil=True)
def _slope(h, n_head, max_bias):
    """ggml's ALiBi slope of head h (1 when max_bias <= 0)."""
    if max_bias <= 0.0:
        return np.float32(1.0)
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    return np.float32(m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _chunk(q, k, v, mask, i3, g, iq0, nq_rows, c0, c1, scale, max_bias, softcap, v_in_k, has_mask,
           o, m_run, l_run):
    """Attend query rows iq0..iq0+nq_rows of every head of kv head g (batch i3) to kv c0..c1.

    Leaves o [R, DV] (unnormalised), m_run [R] (running max), l_run [R] (running sum); row
    r = qi * G + hh is query row iq0 + qi of head g * G + hh."""
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
        iq1 = iq0 + r // G
        slope[r] = _slope(h, n_head, max_bias)
        for d in range(dk):
            qt[r, d] = q[i3, h, iq1, d]
        m_run[r] = -np.inf
        l_run[r] = 0.0
        for d in range(dv):
            o[r, d] = 0.0
    kb = np.empty((KV_BLOCK, dk), np.float32)
    vb = np.empty((KV_BLOCK, dv if v_in_k < 0 else 1), np.float32)
    s = np.empty((nr, KV_BLOCK), np.float32)
    bias = np.zeros((nr, KV_BLOCK), np.float32)
    for j0 in range(c0, c1, KV_BLOCK):
        nj = min(KV_BLOCK, c1 - j0)
        live = not has_mask
        if has_mask:
            for r in range(nr):
                h = g * G + r % G
                mrow = mask[i3 % mask.shape[0], h % mask.shape[1], iq0 + r // G]
                for j in range(nj):
                    b = slope[r] * mrow[j0 + j]
                    bias[r, j] = b
                    if b != -np.inf:
                        live = True
        if not live:
            continue   # every logit of the block is -inf: nothing to add
        for j in range(nj):
            for d in range(dk):
                kb[j, d] = k[ik3, g, j0 + j, d]
        if v_in_k < 0 and v_shared:
            for j in range(nj):
                for d in range(dv):
                    vb[j, d] = v[iv3, g, j0 + j, d]
        _scores(qt, nr, kb, nj, dk, s)
        for r in range(nr):
            m_new = m_run[r]
            for j in range(nj):
                x = s[r, j] * scale
                if softcap != 0.0:
                    x = softcap * math.tanh(x)
                x += bias[r, j]
                s[r, j] = x
                if x > m_new:
                    m_new = x
            if m_new == -np.inf:
                for j in range(nj):
                    s[r, j] = 0.0
                continue
            if m_new > m_run[r]:
                f = math.exp(m_run[r] - m_new)
                l_run[r] *= f
                for d in range(dv):
                    o[r, d] *= f
                m_run[r] = m_new
            acc = np.float32(0.0)
            for j in range(nj):
                e = np.float32(math.exp(s[r, j] - m_new))
                s[r, j] = e
                acc += e
            l_run[r] += acc
        if v_in_k >= 0:
            _accumulate(s, nr, kb, v_in_k, nj, dv, o)
        elif v_shared:
            _accumulate(s, nr, vb, 0, nj, dv, o)
        else:   # V has its own head grouping: each row reads its V head directly
            for r in range(nr):
                iv2 = (g * G + r % G) // (n_head // v_heads)
                for j in range(nj):
                    pj = s[r, j]
                    for d in range(dv):
                        o[r, d] += pj * v[iv3, iv2, j0 + j, d]


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
def flash_attn_ext(dst, q, k, v, mask, sinks, scale, max_bias, logit_softcap, prec, v_in_k,
                   has_mask, has_sinks):
    """dst[i3, iq1, h, :] = softmax_j(scale*q.k_j (softcapped) + slope_h*mask[iq1, j]) v_j (see
    minigraph.ops.attention); prec is ggml's, both precisions accumulate in f32."""
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
        _chunk(q, k, v, mask, i3, g, iq0, nq_rows, c0, c1, sc, max_bias, cap, v_in_k, has_mask,
               part_o[t], part_m[t], part_l[t])
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


register_kernel("FLASH_ATTN_EXT", "cpu", flash_attn_ext)
