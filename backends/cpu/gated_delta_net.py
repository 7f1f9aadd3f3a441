"""CPU (Numba) kernels for GATED_DELTA_NET, ggml's fused gated delta rule.

ggml semantics (ne order): q, k [S, H_k, T, n_seqs_qk]; v [S, H_v, T, n_seqs];
g [1 or S, H_v, T, n_seqs] (scalar gate GDA, or per-key gate KDA); beta [1, H_v, T, n_seqs];
state [S, S, H_v, n_seqs] stored transposed: element [j*S + i] of a head is S[i][j]
(i = key index, j = value index). Value head h reads q/k head h % H_k (op param bcast 1:
h // (H_v / H_k), gdn_rows.qk_head), q/k sequence seq // (n_seqs / n_seqs_qk). Per token:

    S *= exp(g)                  (KDA: row i scaled by exp(g[i]))
    delta[j] = (v[j] - sum_i S[i][j] k[i]) * beta
    S[i][j] += k[i] * delta[j]
    out[j]   = sum_i S[i][j] q[i] / sqrt(S)

dst is F32 [S*H_v, T*n_seqs + K*S*n_seqs]: the output [S, H_v, T, n_seqs], then K state
snapshots [S, S, H_v, n_seqs] (slot 0 = final state, slot s = state after token T-1-s,
slots s >= T zero-filled).

Code: the decode and recurrence kernels and the shared row helpers are in gdn_rows.py; the
chunked form and the entry point here.

Kernel convention: arrays arrive as 4-D (ne3, ne2, ne1, ne0) views, possibly strided;
dst as the (1, 1, rows, S*H_v) view. Kernels copy what they need into contiguous local
buffers, so any strides work. Work is split over (seq, head) pairs with prange.

Algorithms (chosen by `gated_delta_net`):
  * T == 1: one pass over the state, read once and written once. With kg = e^g k and
    qg = e^g q, row j of the new state is e^g S_j + k delta_j and its output
    q.S_new_j = qg.S_j + (q.k) delta_j, so one read of row j gives both dots and the
    write follows while the row is in L1. States of STREAM_BYTES or more get their snapshot
    written with non-temporal stores (no read-for-ownership of lines that will not stay cached).
  * recurrent: the state lives in a local [j][i] buffer; each token makes ONE fused pass
    over it (update with the previous delta, dot with q for the output, dot with the next
    decayed key for the next delta), four rows at a time so k/q loads are shared.
  * chunked (T >= CHUNK_MIN_T, K <= CHUNK): WY/UT form over chunks of CHUNK tokens,
    its products on register-tiled micro-kernels (tiles.matmul; they replaced OpenBLAS sgemm,
    which ran these small shapes slower and needed scipy); decays only as running products of exp(g) <= 1, so nothing
    overflows; the tail chunk is just shorter (exact, no padding); the last K - 1 tokens
    run token by token so each snapshot slot is a real state. Heads go out in groups of
    HEAD_GROUP that walk their chunks in step. KDA (per-key gates) takes the same form with
    per-key decays (_chunk_step_kda): its Gram product goes through the cumulative decays and
    their inverses where these stay in range, pair by pair otherwise.

Numba notes that the speed depends on: helpers called inside hot loops are inline="always"
(a plain njit call is not inlined by LLVM here and costs a call plus NRT refcounts per
array argument); inner loops index a row view (out[j]), not dst[.., h * S + j], whose
possibly negative index defeats vectorisation; no numba.get_num_threads() in kernels (it
makes them uncacheable).
"""
import math

import numpy as np
from numba import njit, prange, types

from minigraph.backends.cpu.jit import DualKernel, Helper
from minigraph.backends.cpu.storage import load_row
from minigraph.backends.cpu.vexp import exp_row
from minigraph.backends.cpu.tiles import F32, madd, matmul
from minigraph.backends.cpu.gdn_rows import (FASTMATH, INLINE, STREAM_BYTES, _dst_row, _gdn_decode, _gdn_recurrent,
                                             _load_gate, _out_row, _scaled_copy, _snap_off, _zero_slots, qk_head)

# Chunk length of the WY form. Per token it does 6 S^2 flops of matrix products on the
# state plus ~10 CHUNK*S inside the chunk. On the AVX2 Zen 3 dev box (2 threads, T=4096, H_v=32,
# S=128, tiles.matmul products, alternating runs, min of 5 ms): 16: 150.6 / 158.4 / 168.3,
# 32: 164.0 / 187.2 / 190.6, 64: 203.9 (with OpenBLAS's products 32 had won: 209 vs 245 for 16;
# 24 is off the 16-column tiles: 282).
CHUNK = 16
# Heads a chunked-form worker walks together, chunk by chunk: a token's q/k/v/out rows of
# neighbouring heads are adjacent in memory, one head alone touches a 512-byte island every
# 8-16 KB. Their states (64 KB each at S=128) stay in L2. 8 and 16 measured alike (+4%).
HEAD_GROUP = 8
MIN_GROUPS = 8   # but smaller groups when there are few heads: every thread needs work (H=4: 1 a group)


# ----------------------------------------------------------------------------- chunked

# Chunked form (GDA) from this many tokens on: with its products still on OpenBLAS it beat the
# recurrence from T=16 on (T=16: 10.6k vs 8.2k tok/s per core; T=256: 18.0k vs 8.1k), and the
# register-tiled products are faster than OpenBLAS on these shapes.
CHUNK_MIN_T = CHUNK


@njit(**INLINE)
def _wy_core(M, vb, kb, x, u, y, gram, tbuf, n, S):
    """The part of a chunk both gate kinds share, given beta A in gram's rows 0..n-1 (strictly
    lower part read), P in rows n..2n-1 (lower part with the diagonal), beta V in vb, W's right
    factor in kb and the decayed Q rows in x[n:2n]:
        Tm = (I + A)^-1;  U = Tm beta V;  W = Tm kb (x[:n]);  D = U - W M (u);  y[n:2n] = Q' M + P D
    (the chunk's unscaled outputs); tbuf holds Tm, then P."""
    tm = tbuf[:n * n].reshape((n, n))
    # Tm = (I + A)^-1, forward substitution: row r = e_r - sum_{s<r} A[r, s] Tm[s]
    for r in range(n):
        for c in range(n):
            tm[r, c] = 0.0
        tm[r, r] = 1.0
        for s in range(r):
            a = gram[r, s]
            for c in range(s + 1):
                tm[r, c] -= a * tm[s, c]
    matmul(tm, vb[:n], u[:n])                        # U
    matmul(tm, kb[:n], x[:n])                        # W
    matmul(x[:2 * n], M, y[:2 * n])                  # [W M ; Q' M]
    for r in range(n):
        for j in range(S):
            u[r, j] -= y[r, j]                       # D = U - W M
    for r in range(n):
        for s in range(n):
            tm[r, s] = gram[n + r, s] if s <= r else 0.0
    matmul(tm, u[:n], y[:n])                         # P D (rows 0..n-1 of y are free now)
    for r in range(n):
        for j in range(S):
            y[n + r, j] += y[r, j]


@njit(**INLINE)
def _chunk_step(M, kq, vb, kb, x, u, y, pbuf, tbuf, dk, gt, bb, n, S):
    """One chunk of n tokens of the WY/UT form on the state M[i, j] = S[i][j], in place.

    In: kq rows 0..n-1 = k, rows n..2n-1 = q; vb = beta v; bb = beta; gt = the gates
    (float64). Out: y rows n..2n-1 = the chunk's outputs (unscaled). With gc the cumulative
    gate, A[r, s] = beta_r exp(gc_r - gc_s) k_r.k_s (s < r) and Tm = (I + A)^-1:
        U = Tm beta V;  W = Tm (beta e^gc K);  D = U - W M
        O = e^gc Q M + P D,  P[r, s] = exp(gc_r - gc_s) q_r.k_s (s <= r)
        M <- e^gc_last M + (e^(gc_last - gc) K)^T D
    The decays exp(gc_r - gc_s) (r >= s) are running products of the per-token factors
    exp(g_t) <= 1 (n exps, not n^2), so for g <= 0 no factor exceeds 1 and nothing
    overflows. The products are tiles.matmul / tiles.madd calls (register-tiled micro-kernels)
    on 2-D float32 operands with contiguous rows (the left one may be a transposed view); the
    state update runs inside its product (madd's beta = e^gc_last); x holds K^T for the Gram
    product before it holds W."""
    eg = 1.0
    for r in range(n):                               # dk[r, s] = exp(gc_r - gc_s), s <= r
        a = math.exp(gt[r])
        eg *= a
        gt[r] = eg                                   # gt now holds exp(gc)
        for s in range(r):
            dk[r, s] = dk[r - 1, s] * a
        dk[r, r] = 1.0
    gram = pbuf[:2 * n * n].reshape((2 * n, n))      # [K; Q] K^T
    kt = x.reshape(x.size)[:S * n].reshape((S, n))  # K^T (x is free until W)
    for i in range(S):
        for s in range(n):
            kt[i, s] = kq[s, i]
    matmul(kq[:2 * n], kt, gram)
    for r in range(n):                               # beta A (rows 0..n-1) and P (rows n..2n-1)
        br = bb[r]
        for s in range(r):
            gram[r, s] = br * np.float32(dk[r, s]) * gram[r, s]
        for s in range(r + 1):
            gram[n + r, s] = np.float32(dk[r, s]) * gram[n + r, s]
    for r in range(n):
        e = np.float32(gt[r])
        be = bb[r] * e
        for i in range(S):
            kb[r, i] = be * kq[r, i]
            x[n + r, i] = e * kq[n + r, i]           # e^gc Q below W
    _wy_core(M, vb, kb, x, u, y, gram, tbuf, n, S)
    for s in range(n):
        e = np.float32(dk[n - 1, s])
        for i in range(S):
            kb[s, i] = e * kq[s, i]
    madd(kb[:n].T, S, u[:n], 0, n, S, M, F32, gt[n - 1])   # M = e^gl M + (e^(gl - gc) K)^T D


# A KDA chunk takes the Gram product through Gamma_r / Gamma_s (the per-key cumulative decays
# from the chunk start) when every key decays by at least this factor over the chunk; below it
# 1 / Gamma would lose precision or overflow (gates down to -20 a token reach e^-320), and the
# chunk takes the exact pairwise form (running products, ~3x the Gram's work).
KDA_FACTOR_MIN = np.float32(1e-12)


@njit(**INLINE)
def _chunk_step_kda(M, kq, vb, kb, x, u, y, pbuf, tbuf, eg, gam, rr, bb, n, S):
    """_chunk_step for per-key gates (KDA), same buffers and outputs; eg rows 0..n-1 = e^g of
    each token (per key), gam [C, S] and rr [C, S] scratch. With Gamma_r = prod_{t<=r} e^g_t
    (per key) and E_rs = Gamma_r / Gamma_s = e^(gc_r - gc_s) <= 1 (s <= r):
        A[r, s] = beta_r sum_i k_ri k_si E_rs,i (s < r),  P[r, s] = sum_i q_ri k_si E_rs,i (s <= r)
        W = Tm (beta K Gamma);  U = Tm beta V;  D = U - W M;  O = (Q Gamma) M + P D
        M <- diag(Gamma_last) M + (K E_last,s)^T D
    A and P come from one product [beta K Gamma; Q Gamma] (K / Gamma)^T when Gamma_last >=
    KDA_FACTOR_MIN for every key, else pair by pair with E kept as running products (rr[s] =
    E_rs for the current r, so nothing overflows for any gate). Either way rr ends as E_last,s."""
    for i in range(S):
        gam[0, i] = eg[0, i]
    for r in range(1, n):
        for i in range(S):
            gam[r, i] = gam[r - 1, i] * eg[r, i]
    lo = np.float32(1.0)
    for i in range(S):
        lo = min(lo, gam[n - 1, i])
    for r in range(n):
        br = bb[r]
        for i in range(S):
            kb[r, i] = br * gam[r, i] * kq[r, i]          # beta K Gamma
            x[n + r, i] = gam[r, i] * kq[n + r, i]        # Q Gamma below W
    gram = pbuf[:2 * n * n].reshape((2 * n, n))           # rows 0..n-1: beta A, n..2n-1: P
    factored = lo >= KDA_FACTOR_MIN
    if factored:
        for s in range(n):                                # rr = 1 / Gamma, row by row (vectorised)
            for i in range(S):
                rr[s, i] = np.float32(1.0) / gam[s, i]
        kt = x.reshape(x.size)[:S * n].reshape((S, n))    # (K / Gamma)^T (x's rows 0..n-1 are free)
        for i in range(S):
            for s in range(n):
                kt[i, s] = kq[s, i] * rr[s, i]
        matmul(kb[:n], kt, gram[:n])
        matmul(x[n:2 * n], kt, gram[n:2 * n])
        for s in range(n):                                # rr = E_last,s, as the pairwise form leaves it
            for i in range(S):
                rr[s, i] *= gam[n - 1, i]
    else:
        for r in range(n):
            br = bb[r]
            for s in range(r):
                ak = np.float32(0.0)
                aq = np.float32(0.0)
                for i in range(S):
                    e = rr[s, i] * eg[r, i]
                    rr[s, i] = e
                    w = kq[s, i] * e
                    ak += kq[r, i] * w
                    aq += kq[n + r, i] * w
                gram[r, s] = br * ak
                gram[n + r, s] = aq
            aq = np.float32(0.0)
            for i in range(S):
                rr[r, i] = 1.0
                aq += kq[n + r, i] * kq[r, i]
            gram[n + r, r] = aq
    _wy_core(M, vb, kb, x, u, y, gram, tbuf, n, S)
    for s in range(n):                                    # K e^(gc_last - gc_s)
        for i in range(S):
            kb[s, i] = rr[s, i] * kq[s, i]
    for i in range(S):
        e = gam[n - 1, i]
        for j in range(S):
            M[i, j] *= e
    madd(kb[:n].T, S, u[:n], 0, n, S, M, F32, 1.0)       # M = diag(Gamma_last) M + (K E)^T D


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _token_step_m(M, kt, qt, vt, e, b, out, S):
    """One token of the plain rule on M[i, j] = S[i][j] (row i decays by e[i] = exp(g_i); GDA's
    e is its gate broadcast); out = S^T q."""
    for j in range(S):
        out[j] = 0.0
    for i in range(S):
        ki = kt[i]
        ei = e[i]
        for j in range(S):
            M[i, j] *= ei
            out[j] += ki * M[i, j]
    for j in range(S):
        out[j] = (vt[j] - out[j]) * b                # delta
    for i in range(S):
        ki = kt[i]
        for j in range(S):
            M[i, j] += ki * out[j]
    for j in range(S):
        out[j] = 0.0
    for i in range(S):
        qi = qt[i]
        for j in range(S):
            out[j] += qi * M[i, j]


@njit(**INLINE)
def _load_chunk(q, k, v, beta, seq, sq, h, hk, t0, n, kq, vb, bb):
    """A chunk's input rows: kq rows 0..n-1 = k, n..2n-1 = q, vb = beta v, bb = beta (contiguous
    source rows are read as such)."""
    for r in range(n):
        t = t0 + r
        b = np.float32(beta[seq, t, h, 0])
        bb[r] = b
        load_row(k[sq, t, hk], kq[r], F32)
        load_row(q[sq, t, hk], kq[n + r], F32)
        load_row(v[seq, t, h], vb[r], F32)
        for i in range(vb.shape[1]):
            vb[r, i] *= b


@njit(**INLINE)
def _store_outputs(dst, y, seq, h, t0, n, T, scale):
    """The chunk's outputs (y rows n..2n-1, unscaled) into dst's output rows."""
    for r in range(n):
        _scaled_copy(_out_row(dst, seq * T + t0 + r, h, y.shape[1]), y[n + r], scale)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _chunk_head(M, dst, q, k, v, g, beta, seq, sq, h, hk, t0, n, scale,
                kq, vb, kb, x, u, y, pbuf, tbuf, dk, gt, bb):
    """Tokens t0 .. t0+n-1 of head (seq, h) on its state M: inputs in, _chunk_step,
    outputs out. Called by address (CHUNK_HEAD), not inlined: one call per head and chunk
    costs nothing next to its work, and keeps this body out of _gdn_chunked's code."""
    _load_chunk(q, k, v, beta, seq, sq, h, hk, t0, n, kq, vb, bb)
    for r in range(n):
        gt[r] = np.float64(g[seq, t0 + r, h, 0])
    _chunk_step(M, kq, vb, kb, x, u, y, pbuf, tbuf, dk, gt, bb, n, v.shape[3])
    _store_outputs(dst, y, seq, h, t0, n, v.shape[1], scale)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _chunk_head_kda(M, dst, q, k, v, g, beta, seq, sq, h, hk, t0, n, scale,
                    kq, vb, kb, x, u, y, pbuf, tbuf, eg, gam, rr, bb):
    """_chunk_head for per-key gates: the gate rows go in as e^g (vexp.exp_row: libm's expf would be
    2048 scalar calls a chunk), then _chunk_step_kda."""
    _load_chunk(q, k, v, beta, seq, sq, h, hk, t0, n, kq, vb, bb)
    for r in range(n):
        load_row(g[seq, t0 + r, h], eg[r], F32)
        exp_row(eg[r])
    _chunk_step_kda(M, kq, vb, kb, x, u, y, pbuf, tbuf, eg, gam, rr, bb, n, v.shape[3])
    _store_outputs(dst, y, seq, h, t0, n, v.shape[1], scale)


_A4 = types.Array(types.float32, 4, "A")
_C2, _C1 = types.Array(types.float32, 2, "C"), types.Array(types.float32, 1, "C")
# _chunk_head(M, dst, q, k, v, g, beta, seq, sq, h, hk, t0, n, scale, kq, vb, kb, x, u, y, pbuf, tbuf,
# dk, gt, bb), called by address from the chunked form's parallel loop (jit.Helper: 3.4 s less to compile)
CHUNK_HEAD = Helper(_chunk_head, (_C2,) + (_A4,) * 6 + (types.int64,) * 6 + (types.float32,) + (_C2,) * 6
                    + (_C1, _C1, types.Array(types.float64, 2, "C"), types.Array(types.float64, 1, "C"), _C1))
_call_chunk_head = CHUNK_HEAD.call
# _chunk_head_kda: the same arguments with (eg, gam, rr, bb) for (dk, gt, bb)
CHUNK_HEAD_KDA = Helper(_chunk_head_kda, (_C2,) + (_A4,) * 6 + (types.int64,) * 6 + (types.float32,) + (_C2,) * 6
                        + (_C1, _C1, _C2, _C2, _C2, _C1))
_call_chunk_head_kda = CHUNK_HEAD_KDA.call


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _chunked_group(dst, q, k, v, g, beta, state, sd, to_sd, K, bcast, grp, G):
    """Group `grp` of _gdn_chunked: (seq, head) pairs grp*G .. grp*G+G-1 from their states to
    their outputs and snapshots (to_sd: the final state into sd, the state destination)."""
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    C = CHUNK
    P = ns * Hv
    Tc = T - min(K, T) + 1                           # tokens done in chunks
    p0 = grp * G
    p1 = min(p0 + G, P)
    Ms = np.empty((p1 - p0, S, S), np.float32)       # Ms[p - p0, i, j] = S[i][j] of pair p
    kq = np.empty((2 * C, S), np.float32)
    vb = np.empty((C, S), np.float32)
    kb = np.empty((C, S), np.float32)
    x = np.empty((2 * C, S), np.float32)
    u = np.empty((C, S), np.float32)
    y = np.empty((2 * C, S), np.float32)
    pbuf = np.empty(2 * C * C, np.float32)
    tbuf = np.empty(C * C, np.float32)
    gt = np.empty(C, np.float64)
    dk = np.empty((C, C), np.float64)
    bb = np.empty(C, np.float32)
    kda = g.shape[3] != 1
    eg = np.empty((C if kda else 1, S), np.float32)      # KDA: e^g rows, Gamma rows, pairwise decays
    gam = np.empty((C if kda else 1, S), np.float32)
    rr = np.empty((C if kda else 1, S), np.float32)
    for p in range(p0, p1):
        seq = p // Hv
        h = p - seq * Hv
        M = Ms[p - p0]
        for j in range(S):
            for i in range(S):
                M[i, j] = state[seq, h, j, i]
    for t0 in range(0, Tc, C):
        n = min(C, Tc - t0)
        for p in range(p0, p1):
            seq = p // Hv
            h = p - seq * Hv
            hk = qk_head(h, Hv, Hk, bcast)
            if kda:
                _call_chunk_head_kda(Ms[p - p0], dst, q, k, v, g, beta, seq, seq // rep, h, hk, t0, n, scale,
                                     kq, vb, kb, x, u, y, pbuf, tbuf, eg, gam, rr, bb)
            else:
                _call_chunk_head(Ms[p - p0], dst, q, k, v, g, beta, seq, seq // rep, h, hk, t0, n, scale,
                                 kq, vb, kb, x, u, y, pbuf, tbuf, dk, gt, bb)
    for p in range(p0, p1):
        seq = p // Hv
        h = p - seq * Hv
        sq = seq // rep
        hk = qk_head(h, Hv, Hk, bcast)
        M = Ms[p - p0]
        for t in range(Tc, T + 1):                   # snapshot of the state after token t-1
            slot = T - t
            if slot == 0 and to_sd:
                for j in range(S):
                    row = sd[seq, h, j]
                    for i in range(S):
                        row[i] = M[i, j]
            elif slot < K:
                for j in range(S):
                    row = _dst_row(dst, _snap_off(slot, seq, h, j, S, Hv, T, ns), S)
                    for i in range(S):
                        row[i] = M[i, j]
            if t < T:
                for i in range(S):
                    kq[0, i] = k[sq, t, hk, i]
                    kq[1, i] = q[sq, t, hk, i]
                    vb[0, i] = v[seq, t, h, i]
                _load_gate(kb[0], g, seq, t, h, S)
                _token_step_m(M, kq[0], kq[1], vb[0], kb[0], np.float32(beta[seq, t, h, 0]), y[0], S)
                out = _out_row(dst, seq * T + t, h, S)
                for j in range(S):
                    out[j] = y[0, j] * scale
        _zero_slots(dst, seq, h, T, K, S, Hv, T, ns)


# the group body, called by address from the parallel loop (compiled once, not again inside it)
CHUNKED_GROUP = Helper(_chunked_group, (_A4,) * 8 + (types.int64,) * 5)
_call_chunked_group = CHUNKED_GROUP.call


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_chunked_to(dst, q, k, v, g, beta, state, sd, to_sd, K, bcast):
    """The first T - K + 1 tokens in chunks of CHUNK (_chunk_step; KDA: _chunk_step_kda), the
    last K - 1 token by token so every snapshot slot is a state the rule passes through.
    Work goes out in groups of HEAD_GROUP (seq, head) pairs (_chunked_group); a group walks its
    chunks in step, all its heads per chunk."""
    P = v.shape[0] * v.shape[2]
    G = -(-P // max(-(-P // HEAD_GROUP), min(P, MIN_GROUPS)))   # <= HEAD_GROUP, >= MIN_GROUPS groups
    for grp in prange((P + G - 1) // G):
        _call_chunked_group(dst, q, k, v, g, beta, state, sd, to_sd, K, bcast, grp, G)


@njit(cache=True, nogil=True)
def _gdn_chunked(dst, q, k, v, g, beta, state, K, bcast):
    _gdn_chunked_to(dst, q, k, v, g, beta, state, state, 0, K, bcast)


@njit(cache=True, nogil=True)
def _gdn_chunked_sd(dst, q, k, v, g, beta, state, sd, K, bcast):
    _gdn_chunked_to(dst, q, k, v, g, beta, state, sd, 1, K, bcast)


# ----------------------------------------------------------------------------- entry

@njit(cache=True, nogil=True)
def uses_chunked(T, g_width, K):
    """Whether the entry point runs the chunked WY form for T tokens, gates of width g_width
    (1: GDA, S: KDA) and K snapshot slots; else the decode pass or the recurrence."""
    return T > 1 and T >= CHUNK_MIN_T and K <= CHUNK


@njit(cache=True, nogil=True)
def gated_delta_net(dst, q, k, v, g, beta, state, K, bcast):
    """GATED_DELTA_NET kernel: dst (1, 1, T*n_seqs + K*S*n_seqs, S*H_v) from q, k
    (n_seqs_qk, T, H_k, S), v (n_seqs, T, H_v, S), g (n_seqs, T, H_v, 1 or S),
    beta (n_seqs, T, H_v, 1), state (n_seqs, H_v, S, S); K snapshot slots; bcast: the q/k head
    map (qk_head)."""
    T = v.shape[1]
    if T == 1:
        _gdn_decode(dst, q, k, v, g, beta, state, state, 0, K, bcast, state.size * 4 >= STREAM_BYTES)
    elif uses_chunked(T, g.shape[3], K):
        _gdn_chunked_to(dst, q, k, v, g, beta, state, state, 0, K, bcast)
    else:
        _gdn_recurrent(dst, q, k, v, g, beta, state, state, 0, K, bcast)


@njit(cache=True, nogil=True)
def gated_delta_net_decode(dst, q, k, v, g, beta, state, K, bcast):
    """The T == 1 form alone (the entry point's first branch), for plans that run only it."""
    _gdn_decode(dst, q, k, v, g, beta, state, state, 0, K, bcast, state.size * 4 >= STREAM_BYTES)


# the forms of a node with a state destination (ops/gated_delta_net.attach_state_dst, K == 1): its
# 7th source sd (n_seqs, H_v, S, S) takes the final state, dst's snapshot slot stays unwritten
@njit(cache=True, nogil=True)
def gated_delta_net_decode_sd(dst, q, k, v, g, beta, state, sd, K, bcast):
    _gdn_decode(dst, q, k, v, g, beta, state, sd, 1, K, bcast, state.size * 4 >= STREAM_BYTES)


@njit(cache=True, nogil=True)
def _gdn_recurrent_sd(dst, q, k, v, g, beta, state, sd, K, bcast):
    _gdn_recurrent(dst, q, k, v, g, beta, state, sd, 1, K, bcast)


@njit(cache=True, nogil=True)
def _gdn_recurrent_plain(dst, q, k, v, g, beta, state, K, bcast):
    _gdn_recurrent(dst, q, k, v, g, beta, state, state, 0, K, bcast)


# the op picks its own parallelism inside, so both builds are the same entry point
from minigraph.core.registry import register_kernel  # noqa: E402

GATED_DELTA_NET_KERNEL = DualKernel(gated_delta_net, gated_delta_net, "gated_delta_net",
                                    helpers=(CHUNK_HEAD, CHUNK_HEAD_KDA, CHUNKED_GROUP))
GDN_DECODE = DualKernel(gated_delta_net_decode, gated_delta_net_decode, "gated_delta_net decode")
# the chunked form and the recurrence copy every row they read into local tiles, so they gain
# nothing from C-contiguous arrays: one compiled form each serves every layout (any_layout)
GDN_CHUNKED = DualKernel(_gdn_chunked, _gdn_chunked, "gated_delta_net chunked", any_layout=True,
                         helpers=(CHUNK_HEAD, CHUNK_HEAD_KDA, CHUNKED_GROUP))
GDN_RECURRENT = DualKernel(_gdn_recurrent_plain, _gdn_recurrent_plain, "gated_delta_net recurrent", any_layout=True)
GDN_DECODE_SD = DualKernel(gated_delta_net_decode_sd, gated_delta_net_decode_sd, "gated_delta_net decode, state dst")
GDN_CHUNKED_SD = DualKernel(_gdn_chunked_sd, _gdn_chunked_sd, "gated_delta_net chunked, state dst", any_layout=True,
                            helpers=(CHUNK_HEAD, CHUNK_HEAD_KDA, CHUNKED_GROUP))
GDN_RECURRENT_SD = DualKernel(_gdn_recurrent_sd, _gdn_recurrent_sd, "gated_delta_net recurrent, state dst",
                              any_layout=True)


def pick_form(node) -> DualKernel:
    """The form `gated_delta_net` would branch to for this node (same tests, from the node's ne:
    v [S, H_v, T, n_seqs], g [1 or S, ...], param K), so a plan compiles only that one; a node
    with a state destination (7 sources) takes that form's variant writing it."""
    T = node.src[2].ne[2]
    sd = len(node.src) > 6
    if T == 1:
        return GDN_DECODE_SD if sd else GDN_DECODE
    if T >= CHUNK_MIN_T and node.op_params["K"] <= CHUNK:
        return GDN_CHUNKED_SD if sd else GDN_CHUNKED
    return GDN_RECURRENT_SD if sd else GDN_RECURRENT


register_kernel("GATED_DELTA_NET", "cpu", GATED_DELTA_NET_KERNEL, pick=pick_form)
