"""Row kernels of GATED_DELTA_NET on the CPU: the one-pass decode (T == 1), the fused token
recurrence (short prompts, more than CHUNK snapshots) and the helpers they share with the chunked form
(snapshot rows, output rows, gates, non-temporal row stores). Layout, semantics and Numba notes:
backends/cpu/gated_delta_net.py, which picks the algorithm."""
import math

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

from minigraph.backends.cpu.storage import VEC16, data_ptr, store_fence, store_nt16, vec16_ptr

# reassociation lets LLVM vectorise the dot-product reductions; no nnan/ninf (isfinite
# must keep working), no afn (exp stays exact).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
INLINE = dict(cache=True, nogil=True, fastmath=FASTMATH, inline="always")

TOKEN_BLOCK = 16       # tokens a block of state rows runs through while it sits in L1
# Decode states at least this big get their snapshot written with non-temporal stores:
# skipping the read-for-ownership of lines that will not stay cached cuts the traffic from
# 3 to 2 passes over the state. Measured on the dev box (32 MB L3, 2 threads, S=128,
# H_v=32): n_seqs=16 (32 MB) ordinary stores 25% faster; 24 (48 MB) streaming 2-7% faster,
# 32 (64 MB) 4-10%, 64 (128 MB) 10%.
STREAM_BYTES = 40 << 20


# ----------------------------------------------------------------------------- helpers

@njit(**INLINE)
def _dst_row(dst, off, S):
    """The S floats of dst starting at flat element `off` (off % S == 0, so one row)."""
    W = dst.shape[3]
    r = off // W
    c = off - r * W
    return dst[0, 0, r, c:c + S]


@njit(**INLINE)
def qk_head(h, Hv, Hk, bcast):
    """The q/k head value head h reads: h % H_k (tiled, ggml's op), or h // (H_v / H_k) with
    bcast 1 (interleaved, what llama.cpp's Qwen3-Next repeat builds; gated_delta_net_set_bcast)."""
    return h // (Hv // Hk) if bcast else h % Hk


@njit(**INLINE)
def _snap_off(slot, seq, h, j, S, Hv, T, ns):
    """Flat offset of row j of head (seq, h) in snapshot `slot`."""
    return S * Hv * T * ns + ((slot * ns + seq) * Hv + h) * S * S + j * S


@njit(**INLINE)
def _out_row(dst, row, h, S):
    """Head h's S outputs in output row `row` (a view: its loops index from 0)."""
    return dst[0, 0, row, h * S:(h + 1) * S]


@njit(**INLINE)
def _scaled_copy(out, src, x):
    """out[:n] = x * src[:n] (n = len(out)) for 1-D float32 views of any stride: storage.load_row's
    counterpart for writing into a strided destination. Unit-stride views are written as
    contiguous arrays: through a strided ('A' layout) view, as the any-layout forms get dst, the
    loop stays scalar (the chunked prefill's row copies took ~1/3 of its non-product time that
    way, before they went through load_row and this)."""
    n = out.shape[0]
    if out.strides[0] == 4 and src.strides[0] == 4:
        o = carray(data_ptr(out), n)
        c = carray(data_ptr(src), n)
        for i in range(n):
            o[i] = x * c[i]
    else:
        for i in range(n):
            out[i] = x * src[i]


@njit(cache=True, nogil=True)
def _zero_slots(dst, seq, h, first, K, S, Hv, T, ns):
    for slot in range(first, K):
        for j in range(S):
            row = _dst_row(dst, _snap_off(slot, seq, h, j, S, Hv, T, ns), S)
            for i in range(S):
                row[i] = 0.0


@njit(**INLINE)
def _store_rows(dst, buf, j0, j1, slot, seq, h, S, Hv, T, ns):
    """Rows j0 .. j1-1 of the local state buffer into snapshot `slot`."""
    for j in range(j0, j1):
        row = _dst_row(dst, _snap_off(slot, seq, h, j, S, Hv, T, ns), S)
        for i in range(S):
            row[i] = buf[j, i]


@njit(**INLINE)
def _store_state(sd, buf, j0, j1, seq, h, S):
    """Rows j0 .. j1-1 of the local state buffer into the state destination sd (n_seqs, H_v, S, S)."""
    for j in range(j0, j1):
        row = sd[seq, h, j]
        for i in range(S):
            row[i] = buf[j, i]


@njit(**INLINE)
def _load_gate(out, g, seq, t, h, S):
    """exp of the gate of token t as an S-vector (GDA broadcasts its scalar)."""
    if g.shape[3] == 1:
        e = np.float32(math.exp(np.float64(g[seq, t, h, 0])))
        for i in range(S):
            out[i] = e
    else:
        for i in range(S):
            out[i] = np.float32(math.exp(np.float64(g[seq, t, h, i])))


# ----------------------------------------------------------------------------- streaming stores

@intrinsic
def _nt_update16(typingctx, out, i, s, e, kb, d):
    """out[i:i+16] = s[i:i+16] * e[i:i+16] + kb[i:i+16] * d as ONE non-temporal 64-byte
    store (a loop of scalar nontemporal stores stays scalar: the vectoriser cannot prove the
    alignment a vector one needs, so the vector is explicit here). The caller guarantees
    contiguous 1-D operands and out + i 64-byte aligned."""
    sig = types.void(out, i, s, e, kb, d)

    def codegen(context, builder, signature, args):
        vs, ve, vk = (builder.load(vec16_ptr(context, builder, signature, args, k), align=4) for k in (2, 3, 4))
        dv = builder.insert_element(ir.Constant(VEC16, ir.Undefined), args[5], ir.IntType(32)(0))
        dv = builder.shuffle_vector(dv, dv, ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        fma = builder.module.declare_intrinsic("llvm.fma.v16f32", fnty=ir.FunctionType(VEC16, [VEC16] * 3))
        store_nt16(builder, builder.call(fma, [vk, dv, builder.fmul(vs, ve)]),
                   vec16_ptr(context, builder, signature, args, 0))
        return context.get_dummy_value()
    return sig, codegen


@njit(**INLINE)
def _update_row(out, s, e, kb, d):
    """out = s * e + kb * d: one state row, per-key decay e (KDA)."""
    for c in range(s.shape[0]):
        out[c] = s[c] * e[c] + kb[c] * d


@njit(**INLINE)
def _update_row_gda(out, s, e, kb, d):
    """_update_row with a scalar decay (GDA): one load less per element, 5-8% on decode."""
    for c in range(s.shape[0]):
        out[c] = s[c] * e + kb[c] * d


@njit(**INLINE)
def _stream_row(out, s, e, kb, d):
    """_update_row with non-temporal stores, for a row (contiguous) of whole 64-byte lines.
    A row sharing its first and last lines with its neighbours streamed at half the speed
    of ordinary stores, so such rows get ordinary ones. (No loop here starts at a variable:
    LLVM then cannot rule out negative indices and leaves the loop scalar, 5-8x slower.)"""
    if out.ctypes.data % 64 or s.shape[0] % 16:
        _update_row(out, s, e, kb, d)
    else:
        for i in range(0, s.shape[0], 16):
            _nt_update16(out, i, s, e, kb, d)


# ----------------------------------------------------------------------------- T == 1

@njit(**INLINE)
def _new_row(row, s, gd, kb, delta, stream, kda):
    """Row j of the new state, e^g s + k delta, into `row` (non-temporal stores when `stream`)."""
    if stream:
        _stream_row(row, s, gd, kb, delta)
    elif kda:
        _update_row(row, s, gd, kb, delta)
    else:
        _update_row_gda(row, s, gd[0], kb, delta)


@njit(**INLINE)
def _dots2(s, a, b):
    """(s.a, s.b) for one state row: a single read of s."""
    x = np.float32(0.0)
    y = np.float32(0.0)
    for i in range(s.shape[0]):
        x += s[i] * a[i]
        y += s[i] * b[i]
    return x, y


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_decode(dst, q, k, v, g, beta, state, sd, to_sd, K, bcast, stream):
    """T == 1, one pass: row j of head (seq, h) is read once (its dots with the decayed
    key and query), then its new value written once, while it is in L1. Rows go in
    order: reading several rows interleaved halved the prefetchers' DRAM throughput.
    to_sd: the new state goes to sd (n_seqs, H_v, S, S), the node's state destination, not to
    dst's snapshot slot (sd may be `state` itself: each row is read before it is written)."""
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    stream = (stream and dst.strides[3] == 4 and state.strides[3] == 4   # _stream_row needs unit strides
              and sd.strides[3] == 4)
    kda = g.shape[3] != 1
    inplace = to_sd and sd.ctypes.data == state.ctypes.data   # the pass allows exactly that overlap or none
    for p in prange(ns * Hv):
        seq = p // Hv
        h = p - seq * Hv
        sq = seq // rep
        hk = qk_head(h, Hv, Hk, bcast)
        buf = np.empty((5, S), np.float32)     # one allocation per head, not five
        kb = buf[0]
        kg = buf[1]                            # e^g k: S_j . kg = k . (decayed row j)
        qg = buf[2]                            # e^g q
        gd = buf[3]
        tmp = buf[4]                           # the new row, when it goes over the row it came from
        _load_gate(gd, g, seq, 0, h, S)
        kr = k[sq, 0, hk]
        qr = q[sq, 0, hk]
        kq = np.float32(0.0)
        for i in range(S):
            kb[i] = kr[i]
            kg[i] = kr[i] * gd[i]
            qg[i] = qr[i] * gd[i]
            kq += kr[i] * qr[i]
        b = np.float32(beta[seq, 0, h, 0])
        vr = v[seq, 0, h]
        out = _out_row(dst, seq, h, S)
        st = state[seq, h]
        sdh = sd[seq, h]
        # the head's rows of snapshot slot 0 as one (S, S) array where dst's rows are contiguous: a
        # view a head, not a 4-D slice and a division a row (the same floats; kernel alone in
        # gdn_decode_ab.py N=1 5-11% faster, within the noise in benchmarks/gdn.py)
        flat = dst.strides[3] == 4 and dst.strides[2] == 4 * dst.shape[3]
        dh = carray(data_ptr(_dst_row(dst, _snap_off(0, seq, h, 0, S, Hv, T, ns), S)), (S, S)) if flat else st
        for j in range(S):
            a, c = _dots2(st[j], kg, qg)
            delta = (vr[j] - a) * b
            out[j] = (c + delta * kq) * scale  # q . (e^g S_j + k delta)
            if inplace and not stream:
                # written over the row it reads, the update loop would take LLVM's scalar fallback
                # for overlapping arrays (2.2x slower at S=128): a local row, then a copy
                _new_row(tmp, st[j], gd, kb, delta, False, kda)
                row = sdh[j]
                for i in range(S):
                    row[i] = tmp[i]
            elif to_sd:
                _new_row(sdh[j], st[j], gd, kb, delta, stream, kda)
            elif flat:
                _new_row(dh[j], st[j], gd, kb, delta, stream, kda)
            else:
                _new_row(_dst_row(dst, _snap_off(0, seq, h, j, S, Hv, T, ns), S), st[j], gd, kb, delta, stream, kda)
        if stream:
            store_fence()
        if K > 1:
            _zero_slots(dst, seq, h, 1, K, S, Hv, T, ns)


# ----------------------------------------------------------------------------- recurrent

@njit(**INLINE)
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


@njit(**INLINE)
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


@njit(**INLINE)
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


@njit(**INLINE)
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
def _gdn_recurrent(dst, q, k, v, g, beta, state, sd, to_sd, K, bcast):
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
        hk = qk_head(h, Hv, Hk, bcast)
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
                    if slot == 0 and to_sd:
                        _store_state(sd, buf, j, j + 4, seq, h, S)
                    elif slot < K:
                        _store_rows(dst, buf, j, j + 4, slot, seq, h, S, Hv, T, ns)
                kd[j], kd[j + 1], kd[j + 2], kd[j + 3] = c0, c1, c2, c3
            for j in range(S4, S):  # S % 4 leftover rows, one at a time
                c0 = kd[j]
                for t in range(nb):
                    e0 = (vb[t, j] - c0) * bb[t]
                    o0, c0 = _row_step(buf[j], dd[t], kk[t], qq[t], kn[t], e0)
                    ob[t, j] = o0 * scale
                    slot = T - 1 - (t0 + t)
                    if slot == 0 and to_sd:
                        _store_state(sd, buf, j, j + 1, seq, h, S)
                    elif slot < K:
                        _store_rows(dst, buf, j, j + 1, slot, seq, h, S, Hv, T, ns)
                kd[j] = c0
            for t in range(nb):
                out = _out_row(dst, seq * T + t0 + t, h, S)
                for j in range(S):
                    out[j] = ob[t, j]
        _zero_slots(dst, seq, h, T, K, S, Hv, T, ns)
