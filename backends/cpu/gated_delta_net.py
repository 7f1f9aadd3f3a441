"""CPU (Numba) kernels for GATED_DELTA_NET, ggml's fused gated delta rule.

ggml semantics (ne order): q, k [S, H_k, T, n_seqs_qk]; v [S, H_v, T, n_seqs];
g [1 or S, H_v, T, n_seqs] (scalar gate GDA, or per-key gate KDA); beta [1, H_v, T, n_seqs];
state [S, S, H_v, n_seqs] stored transposed: element [j*S + i] of a head is S[i][j]
(i = key index, j = value index). Value head h reads q/k head h % H_k, q/k sequence
seq // (n_seqs / n_seqs_qk). Per token:

    S *= exp(g)                  (KDA: row i scaled by exp(g[i]))
    delta[j] = (v[j] - sum_i S[i][j] k[i]) * beta
    S[i][j] += k[i] * delta[j]
    out[j]   = sum_i S[i][j] q[i] / sqrt(S)

dst is F32 [S*H_v, T*n_seqs + K*S*n_seqs]: the output [S, H_v, T, n_seqs], then K state
snapshots [S, S, H_v, n_seqs] (slot 0 = final state, slot s = state after token T-1-s,
slots s >= T zero-filled).

Kernel convention: arrays arrive as 4-D (ne3, ne2, ne1, ne0) views, possibly strided;
dst as the (1, 1, rows, S*H_v) view. Kernels copy what they need into contiguous local
buffers, so any strides work. Work is split over (seq, head) pairs with prange.

Algorithms (chosen by `gated_delta_net`):
  * T == 1: one pass per state row (read once, dot with k and q, write the new row
    straight into the snapshot slot).
  * recurrent: the state lives in a local [j][i] buffer; each token makes ONE fused pass
    over it (update with the previous delta, dot with q for the output, dot with the next
    decayed key for the next delta), two rows at a time so k/q loads are shared.
  * chunked (GDA, K == 1, T >= CHUNK_MIN_T): WY/UT form over chunks of CHUNK tokens; decays
    only as masked differences g_cum[r] - g_cum[s] (r >= s) before exp, so nothing
    overflows; the tail chunk is just shorter (exact, no padding).
"""
import math

import numpy as np
from numba import njit, prange

# reassociation lets LLVM vectorise the dot-product reductions; no nnan/ninf (isfinite
# must keep working), no afn (exp stays exact).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

CHUNK = 64            # chunk length of the WY form
# Chunked form from this many tokens on. Off: on the 2-core AVX-512 dev box the chunked
# form (plain Numba loops, no BLAS) ran T=4096 at ~10k tok/s vs ~16k for the recurrence;
# at S=128 both do ~3 S^2 multiply-adds per token, chunking only pays with fast GEMMs.
CHUNK_MIN_T = 1 << 30
TOKEN_BLOCK = 16       # tokens a block of state rows runs through while it sits in L1


# ----------------------------------------------------------------------------- helpers

@njit(cache=True, nogil=True)
def _dst_row(dst, off, S):
    """The S floats of dst starting at flat element `off` (off % S == 0, so one row)."""
    W = dst.shape[3]
    r = off // W
    c = off - r * W
    return dst[0, 0, r, c:c + S]


@njit(cache=True, nogil=True)
def _snap_off(slot, seq, h, j, S, Hv, T, ns):
    """Flat offset of row j of head (seq, h) in snapshot `slot`."""
    return S * Hv * T * ns + ((slot * ns + seq) * Hv + h) * S * S + j * S


@njit(cache=True, nogil=True)
def _zero_slots(dst, seq, h, first, K, S, Hv, T, ns):
    for slot in range(first, K):
        for j in range(S):
            row = _dst_row(dst, _snap_off(slot, seq, h, j, S, Hv, T, ns), S)
            for i in range(S):
                row[i] = 0.0


@njit(cache=True, nogil=True)
def _store_rows(dst, buf, j0, j1, slot, seq, h, S, Hv, T, ns):
    """Rows j0 .. j1-1 of the local state buffer into snapshot `slot`."""
    for j in range(j0, j1):
        row = _dst_row(dst, _snap_off(slot, seq, h, j, S, Hv, T, ns), S)
        for i in range(S):
            row[i] = buf[j, i]


@njit(cache=True, nogil=True)
def _load_gate(out, g, seq, t, h, S):
    """exp of the gate of token t as an S-vector (GDA broadcasts its scalar)."""
    if g.shape[3] == 1:
        e = np.float32(math.exp(np.float64(g[seq, t, h, 0])))
        for i in range(S):
            out[i] = e
    else:
        for i in range(S):
            out[i] = np.float32(math.exp(np.float64(g[seq, t, h, i])))


# ----------------------------------------------------------------------------- T == 1

@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_decode(dst, q, k, v, g, beta, state, K):
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    kda = g.shape[3] != 1
    for p in prange(ns * Hv):
        seq = p // Hv
        h = p - seq * Hv
        sq = seq // rep
        hk = h % Hk
        kb = np.empty(S, np.float32)
        qb = np.empty(S, np.float32)
        gd = np.empty(S, np.float32)
        row = np.empty(S, np.float32)
        for i in range(S):
            kb[i] = k[sq, 0, hk, i]
            qb[i] = q[sq, 0, hk, i]
        _load_gate(gd, g, seq, 0, h, S)
        b = np.float32(beta[seq, 0, h, 0])
        kq = np.float32(0.0)
        for i in range(S):
            kq += kb[i] * qb[i]
        for j in range(S):
            src = state[seq, h, j]
            kd = np.float32(0.0)
            qd = np.float32(0.0)
            for i in range(S):
                x = src[i] * gd[i]
                row[i] = x
                kd += x * kb[i]
                qd += x * qb[i]
            delta = (np.float32(v[seq, 0, h, j]) - kd) * b
            out = _dst_row(dst, _snap_off(0, seq, h, j, S, Hv, T, ns), S)
            for i in range(S):
                out[i] = row[i] + kb[i] * delta
            dst[0, 0, seq, h * S + j] = (qd + delta * kq) * scale
        _zero_slots(dst, seq, h, 1, K, S, Hv, T, ns)


# ----------------------------------------------------------------------------- recurrent

@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _row_quad_step_scalar(r0, r1, r2, r3, e, kt, qt, kn, d0, d1, d2, d3):
    """Token step for four state rows r0..r3 (S[:, j..j+3]) with scalar decay e (GDA):
    r = r * e + kt * delta_r; returns the rows' dots with qt (outputs) and with kn (the
    next token's decayed key, i.e. its S^T k), so the state is read and written once."""
    o0 = np.float32(0.0)
    o1 = np.float32(0.0)
    o2 = np.float32(0.0)
    o3 = np.float32(0.0)
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    for i in range(r0.shape[0]):
        ki = kt[i]
        qi = qt[i]
        ni = kn[i]
        x0 = r0[i] * e + ki * d0
        x1 = r1[i] * e + ki * d1
        x2 = r2[i] * e + ki * d2
        x3 = r3[i] * e + ki * d3
        r0[i] = x0
        r1[i] = x1
        r2[i] = x2
        r3[i] = x3
        o0 += x0 * qi
        o1 += x1 * qi
        o2 += x2 * qi
        o3 += x3 * qi
        a0 += x0 * ni
        a1 += x1 * ni
        a2 += x2 * ni
        a3 += x3 * ni
    return o0, o1, o2, o3, a0, a1, a2, a3


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _row_step(r0, d, kt, qt, kn, d0):
    """_row_quad_step for one row (S % 4 leftovers)."""
    o0 = np.float32(0.0)
    a0 = np.float32(0.0)
    for i in range(r0.shape[0]):
        x0 = r0[i] * d[i] + kt[i] * d0
        r0[i] = x0
        o0 += x0 * qt[i]
        a0 += x0 * kn[i]
    return o0, a0


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _row_quad_step(r0, r1, r2, r3, d, kt, qt, kn, d0, d1, d2, d3):
    """_row_quad_step_scalar with a per-key decay vector d (KDA)."""
    o0 = np.float32(0.0)
    o1 = np.float32(0.0)
    o2 = np.float32(0.0)
    o3 = np.float32(0.0)
    a0 = np.float32(0.0)
    a1 = np.float32(0.0)
    a2 = np.float32(0.0)
    a3 = np.float32(0.0)
    for i in range(r0.shape[0]):
        ki = kt[i]
        qi = qt[i]
        ni = kn[i]
        di = d[i]
        x0 = r0[i] * di + ki * d0
        x1 = r1[i] * di + ki * d1
        x2 = r2[i] * di + ki * d2
        x3 = r3[i] * di + ki * d3
        r0[i] = x0
        r1[i] = x1
        r2[i] = x2
        r3[i] = x3
        o0 += x0 * qi
        o1 += x1 * qi
        o2 += x2 * qi
        o3 += x3 * qi
        a0 += x0 * ni
        a1 += x1 * ni
        a2 += x2 * ni
        a3 += x3 * ni
    return o0, o1, o2, o3, a0, a1, a2, a3


@njit(cache=True, nogil=True)
def _load_block(kk, qq, dd, kn, vb, bb, q, k, v, g, beta, sq, seq, hk, h, t0, nb, T, S):
    """Tokens t0 .. t0+nb-1 into contiguous buffers; kn[t] is the decayed key of the token
    after t (zero after the last token), vb/bb the values and betas."""
    for t in range(nb):
        for i in range(S):
            kk[t, i] = k[sq, t0 + t, hk, i]
            qq[t, i] = q[sq, t0 + t, hk, i]
            vb[t, i] = v[seq, t0 + t, h, i]
        _load_gate(dd[t], g, seq, t0 + t, h, S)
        bb[t] = beta[seq, t0 + t, h, 0]
    for t in range(nb - 1):
        for i in range(S):
            kn[t, i] = kk[t + 1, i] * dd[t + 1, i]
    tl = t0 + nb
    if tl < T:
        _load_gate(kn[nb - 1], g, seq, tl, h, S)
        for i in range(S):
            kn[nb - 1, i] *= k[sq, tl, hk, i]
    else:
        kn[nb - 1, :] = 0.0


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_recurrent(dst, q, k, v, g, beta, state, K):
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    kda = g.shape[3] != 1
    S4 = S - S % 4
    TB = TOKEN_BLOCK
    for p in prange(ns * Hv):
        seq = p // Hv
        h = p - seq * Hv
        sq = seq // rep
        hk = h % Hk
        buf = np.empty((S, S), np.float32)     # buf[j, i] = S[i][j]
        kk = np.empty((TB, S), np.float32)
        qq = np.empty((TB, S), np.float32)
        dd = np.empty((TB, S), np.float32)
        kn = np.empty((TB, S), np.float32)
        vb = np.empty((TB, S), np.float32)
        ob = np.empty((TB, S), np.float32)
        bb = np.empty(TB, np.float32)
        kd = np.empty(S, np.float32)           # row j . (decayed key) of the next token
        for j in range(S):
            for i in range(S):
                buf[j, i] = state[seq, h, j, i]
        # kd for token 0: k0 * exp(g0) dotted with every row
        _load_gate(kn[0], g, seq, 0, h, S)
        for i in range(S):
            kn[0, i] *= k[sq, 0, hk, i]
        for j in range(S):
            a = np.float32(0.0)
            for i in range(S):
                a += buf[j, i] * kn[0, i]
            kd[j] = a
        # Rows are independent (each value column j has its own recurrence), so a block of
        # four rows stays in L1 while it runs through a block of TB tokens.
        for t0 in range(0, T, TB):
            nb = min(TB, T - t0)
            _load_block(kk, qq, dd, kn, vb, bb, q, k, v, g, beta, sq, seq, hk, h, t0, nb, T, S)
            for j in range(0, S4, 4):
                c0, c1, c2, c3 = kd[j], kd[j + 1], kd[j + 2], kd[j + 3]
                for t in range(nb):
                    b = bb[t]
                    e0 = (vb[t, j] - c0) * b
                    e1 = (vb[t, j + 1] - c1) * b
                    e2 = (vb[t, j + 2] - c2) * b
                    e3 = (vb[t, j + 3] - c3) * b
                    if kda:
                        o0, o1, o2, o3, c0, c1, c2, c3 = _row_quad_step(
                            buf[j], buf[j + 1], buf[j + 2], buf[j + 3], dd[t], kk[t], qq[t],
                            kn[t], e0, e1, e2, e3)
                    else:
                        o0, o1, o2, o3, c0, c1, c2, c3 = _row_quad_step_scalar(
                            buf[j], buf[j + 1], buf[j + 2], buf[j + 3], dd[t, 0], kk[t], qq[t],
                            kn[t], e0, e1, e2, e3)
                    ob[t, j] = o0 * scale
                    ob[t, j + 1] = o1 * scale
                    ob[t, j + 2] = o2 * scale
                    ob[t, j + 3] = o3 * scale
                    slot = T - 1 - (t0 + t)
                    if slot < K:
                        _store_rows(dst, buf, j, j + 4, slot, seq, h, S, Hv, T, ns)
                kd[j], kd[j + 1], kd[j + 2], kd[j + 3] = c0, c1, c2, c3
            for j in range(S4, S):  # S % 4 leftover rows, one at a time
                c0 = kd[j]
                for t in range(nb):
                    e0 = (vb[t, j] - c0) * bb[t]
                    o0, c0 = _row_step(buf[j], dd[t], kk[t], qq[t], kn[t], e0)
                    ob[t, j] = o0 * scale
                    slot = T - 1 - (t0 + t)
                    if slot < K:
                        _store_rows(dst, buf, j, j + 1, slot, seq, h, S, Hv, T, ns)
                kd[j] = c0
            for t in range(nb):
                orow = seq * T + t0 + t
                for j in range(S):
                    dst[0, 0, orow, h * S + j] = ob[t, j]
        _zero_slots(dst, seq, h, T, K, S, Hv, T, ns)


# ----------------------------------------------------------------------------- chunked

@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_chunked(dst, q, k, v, g, beta, state, K):
    """WY/UT form for GDA (scalar gates), K == 1. Per chunk of n <= CHUNK tokens, with
    gc = cumulative gate inside the chunk and M the state at chunk start (M[i, j]):
      A[r, s] = beta_r exp(gc_r - gc_s) k_r.k_s (s < r);  (I + A) [U | W] = beta [V | e^gc K]
      D = U - W M;  O_r = e^gc_r q_r M + sum_{s<=r} exp(gc_r - gc_s) q_r.k_s D_s
      M <- e^gc_last M + sum_s exp(gc_last - gc_s) k_s D_s^T
    Every exponent is a masked difference (<= 0) or a cumulative gate (<= 0 for g <= 0)."""
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    C = CHUNK
    for p in prange(ns * Hv):
        seq = p // Hv
        h = p - seq * Hv
        sq = seq // rep
        hk = h % Hk
        M = np.empty((S, S), np.float32)       # M[i, j] = S[i][j]
        kc = np.empty((C, S), np.float32)
        qc = np.empty((C, S), np.float32)
        u = np.empty((C, S), np.float32)       # U, then D
        w = np.empty((C, S), np.float32)
        o = np.empty((C, S), np.float32)
        a = np.zeros((C, C), np.float32)
        gc = np.empty(C, np.float64)
        for j in range(S):
            for i in range(S):
                M[i, j] = state[seq, h, j, i]
        for t0 in range(0, T, C):
            n = min(C, T - t0)
            acc = 0.0
            for r in range(n):
                acc += np.float64(g[seq, t0 + r, h, 0])
                gc[r] = acc
                b = np.float32(beta[seq, t0 + r, h, 0])
                eg = np.float32(math.exp(acc))
                for i in range(S):
                    kc[r, i] = k[sq, t0 + r, hk, i]
                    qc[r, i] = q[sq, t0 + r, hk, i]
                    u[r, i] = b * v[seq, t0 + r, h, i]
                    w[r, i] = b * eg * kc[r, i]
            # forward substitution, row r uses rows s < r already solved
            for r in range(n):
                br = np.float32(beta[seq, t0 + r, h, 0])
                for s in range(r):
                    dot = np.float32(0.0)
                    for i in range(S):
                        dot += kc[r, i] * kc[s, i]
                    c = br * np.float32(math.exp(gc[r] - gc[s])) * dot
                    for i in range(S):
                        u[r, i] -= c * u[s, i]
                        w[r, i] -= c * w[s, i]
            # D = U - W M and O = e^gc Q M (axpy over the contiguous value index)
            for r in range(n):
                egr = np.float32(math.exp(gc[r]))
                for j in range(S):
                    o[r, j] = 0.0
                for i in range(S):
                    wi = w[r, i]
                    qi = qc[r, i] * egr
                    for j in range(S):
                        u[r, j] -= wi * M[i, j]
                        o[r, j] += qi * M[i, j]
            for r in range(n):
                for s in range(r + 1):
                    dot = np.float32(0.0)
                    for i in range(S):
                        dot += qc[r, i] * kc[s, i]
                    a[r, s] = np.float32(math.exp(gc[r] - gc[s])) * dot
                orow = seq * T + t0 + r
                for j in range(S):
                    acc32 = o[r, j]
                    for s in range(r + 1):
                        acc32 += a[r, s] * u[s, j]
                    dst[0, 0, orow, h * S + j] = acc32 * scale
            gl = gc[n - 1]
            egl = np.float32(math.exp(gl))
            for s in range(n):
                a[0, s] = np.float32(math.exp(gl - gc[s]))
            for i in range(S):
                for j in range(S):
                    M[i, j] *= egl
                for s in range(n):
                    c = a[0, s] * kc[s, i]
                    for j in range(S):
                        M[i, j] += c * u[s, j]
        for j in range(S):
            row = _dst_row(dst, _snap_off(0, seq, h, j, S, Hv, T, ns), S)
            for i in range(S):
                row[i] = M[i, j]
        _zero_slots(dst, seq, h, 1, K, S, Hv, T, ns)


# ----------------------------------------------------------------------------- entry

@njit(cache=True, nogil=True)
def gated_delta_net(dst, q, k, v, g, beta, state, K):
    """GATED_DELTA_NET kernel: dst (1, 1, T*n_seqs + K*S*n_seqs, S*H_v) from q, k
    (n_seqs_qk, T, H_k, S), v (n_seqs, T, H_v, S), g (n_seqs, T, H_v, 1 or S),
    beta (n_seqs, T, H_v, 1), state (n_seqs, H_v, S, S); K snapshot slots."""
    T = v.shape[1]
    if T == 1:
        _gdn_decode(dst, q, k, v, g, beta, state, K)
    elif T >= CHUNK_MIN_T and g.shape[3] == 1 and K == 1:
        _gdn_chunked(dst, q, k, v, g, beta, state, K)
    else:
        _gdn_recurrent(dst, q, k, v, g, beta, state, K)


# the op picks its own parallelism inside, so both builds are the same entry point
from minigraph.ops.registry import register_kernel  # noqa: E402

from .jit import DualKernel  # noqa: E402

GATED_DELTA_NET_KERNEL = DualKernel(gated_delta_net, gated_delta_net, "gated_delta_net")
register_kernel("GATED_DELTA_NET", "cpu", GATED_DELTA_NET_KERNEL)
