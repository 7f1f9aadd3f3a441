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
  * T == 1: one pass over the state, read once and written once. With kg = e^g k and
    qg = e^g q, row j of the new state is e^g S_j + k delta_j and its output
    q.S_new_j = qg.S_j + (q.k) delta_j, so one read of row j gives both dots and the
    write follows while the row is in L1. States of STREAM_BYTES or more get their snapshot
    written with non-temporal stores (no read-for-ownership of lines that will not stay cached).
  * recurrent: the state lives in a local [j][i] buffer; each token makes ONE fused pass
    over it (update with the previous delta, dot with q for the output, dot with the next
    decayed key for the next delta), four rows at a time so k/q loads are shared.
  * chunked (GDA, T >= CHUNK_MIN_T, K <= CHUNK): WY/UT form over chunks of CHUNK tokens,
    its products through BLAS sgemm (Numba's np.dot; scipy present, else plain loops and
    the form stays off); decays only as running products of exp(g) <= 1, so nothing
    overflows; the tail chunk is just shorter (exact, no padding); the last K - 1 tokens
    run token by token so each snapshot slot is a real state. Heads go out in groups of
    HEAD_GROUP that walk their chunks in step.

Numba notes that the speed depends on: helpers called inside hot loops are inline="always"
(a plain njit call is not inlined by LLVM here and costs a call plus NRT refcounts per
array argument); inner loops index a row view (out[j]), not dst[.., h * S + j], whose
possibly negative index defeats vectorisation; no numba.get_num_threads() in kernels (it
makes them uncacheable).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# reassociation lets LLVM vectorise the dot-product reductions; no nnan/ninf (isfinite
# must keep working), no afn (exp stays exact).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
INLINE = dict(cache=True, nogil=True, fastmath=FASTMATH, inline="always")

# Chunk length of the WY form. Per token it does 6 S^2 flops of matrix products on the
# state plus ~10 CHUNK*S inside the chunk; measured on the 2-core AVX-512 dev box
# (1 thread, T=1024, H_v=32, S=128): 8: 17.5k, 16: 18.3k, 32: 14.6k tok/s per core.
CHUNK = 16
# Heads a chunked-form worker walks together, chunk by chunk: a token's q/k/v/out rows of
# neighbouring heads are adjacent in memory, one head alone touches a 512-byte island every
# 8-16 KB. Their states (64 KB each at S=128) stay in L2. 8 and 16 measured alike (+4%).
HEAD_GROUP = 8
MIN_GROUPS = 8   # but smaller groups when there are few heads: every thread needs work (H=4: 1 a group)
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
def _snap_off(slot, seq, h, j, S, Hv, T, ns):
    """Flat offset of row j of head (seq, h) in snapshot `slot`."""
    return S * Hv * T * ns + ((slot * ns + seq) * Hv + h) * S * S + j * S


@njit(**INLINE)
def _out_row(dst, row, h, S):
    """Head h's S outputs in output row `row` (a view: its loops index from 0)."""
    return dst[0, 0, row, h * S:(h + 1) * S]


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
        vec = ir.VectorType(ir.FloatType(), 16)

        def ptr(k):
            data = context.make_array(signature.args[k])(context, builder, args[k]).data
            return builder.bitcast(builder.gep(data, [args[1]]), vec.as_pointer())

        vs, ve, vk = (builder.load(ptr(k), align=4) for k in (2, 3, 4))
        dv = builder.insert_element(ir.Constant(vec, ir.Undefined), args[5], ir.IntType(32)(0))
        dv = builder.shuffle_vector(dv, dv, ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        fma = builder.module.declare_intrinsic("llvm.fma.v16f32", fnty=ir.FunctionType(vec, [vec] * 3))
        st = builder.store(builder.call(fma, [vk, dv, builder.fmul(vs, ve)]), ptr(0), align=64)
        st.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _store_fence(typingctx):
    """A full fence: orders this thread's non-temporal stores before whatever follows
    (x86 mfence; they are weakly ordered, and other threads read dst after the kernel)."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


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
def _dots2(s, a, b):
    """(s.a, s.b) for one state row: a single read of s."""
    x = np.float32(0.0)
    y = np.float32(0.0)
    for i in range(s.shape[0]):
        x += s[i] * a[i]
        y += s[i] * b[i]
    return x, y


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_decode(dst, q, k, v, g, beta, state, K, stream):
    """T == 1, one pass: row j of head (seq, h) is read once (its dots with the decayed
    key and query), then its new value written once, while it is in L1. Rows go in
    order: reading several rows interleaved halved the prefetchers' DRAM throughput."""
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    stream = stream and dst.strides[3] == 4 and state.strides[3] == 4   # _stream_row needs unit strides
    kda = g.shape[3] != 1
    for p in prange(ns * Hv):
        seq = p // Hv
        h = p - seq * Hv
        sq = seq // rep
        hk = h % Hk
        buf = np.empty((4, S), np.float32)     # one allocation per head, not four
        kb = buf[0]
        kg = buf[1]                            # e^g k: S_j . kg = k . (decayed row j)
        qg = buf[2]                            # e^g q
        gd = buf[3]
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
        for j in range(S):
            a, c = _dots2(st[j], kg, qg)
            delta = (vr[j] - a) * b
            out[j] = (c + delta * kq) * scale  # q . (e^g S_j + k delta)
            row = _dst_row(dst, _snap_off(0, seq, h, j, S, Hv, T, ns), S)
            if stream:
                _stream_row(row, st[j], gd, kb, delta)
            elif kda:
                _update_row(row, st[j], gd, kb, delta)
            else:
                _update_row_gda(row, st[j], gd[0], kb, delta)
        if stream:
            _store_fence()
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
                out = _out_row(dst, seq * T + t0 + t, h, S)
                for j in range(S):
                    out[j] = ob[t, j]
        _zero_slots(dst, seq, h, T, K, S, Hv, T, ns)


# ----------------------------------------------------------------------------- chunked

@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _mm_loops(a, b, out):
    """out = a @ b for 2-D float32 arrays: i-k-j loops so the inner loop runs along rows of b
    and out (the fallback when Numba's BLAS binding is not there)."""
    m, p = a.shape
    n = b.shape[1]
    for r in range(m):
        for c in range(n):
            out[r, c] = 0.0
        for t in range(p):
            x = a[r, t]
            for c in range(n):
                out[r, c] += x * b[t, c]


@njit(cache=True, nogil=True)
def _mm_blas(a, b, out):
    """out = a @ b through BLAS sgemm (Numba's np.dot binding; needs scipy at run time)."""
    np.dot(a, b, out)


def _have_blas() -> bool:
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (Numba's np.dot calls sgemm from here)
        return True
    except ImportError:
        return False


def _openblas_local_threads():
    """openblas_set_num_threads_local of the OpenBLAS that scipy bundles, as a Numba external
    function (bound by symbol name, so kernels calling it stay cacheable), or None. Each
    worker sets 1 BLAS thread for itself around its products: OpenBLAS's own pool, entered
    from two Numba workers at once, serialised them (0.1k tok/s instead of 7k)."""
    import ctypes
    import glob
    import os

    import scipy
    libs = glob.glob(os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "*openblas*"))
    for lib in libs:
        try:
            if hasattr(ctypes.CDLL(lib), "openblas_set_num_threads_local"):
                import llvmlite.binding as llb
                from numba import types
                llb.load_library_permanently(lib)
                return types.ExternalFunction("openblas_set_num_threads_local", types.int32(types.int32))
        except OSError:
            pass
    return None


@njit(cache=True, nogil=True)
def _no_blas_threads(n):
    return np.int32(1)


HAVE_BLAS = _have_blas()
_mm = _mm_blas if HAVE_BLAS else _mm_loops   # chosen at import: scipy is optional
_blas_threads = (_openblas_local_threads() if HAVE_BLAS else None) or _no_blas_threads
# Chunked form (GDA) from this many tokens on: with BLAS it beat the recurrence from T=16 on
# (T=16: 10.6k vs 8.2k tok/s per core; T=256: 18.0k vs 8.1k). Without BLAS its plain-loop
# products lose (6.6k vs 8.0k at T=1024), so the recurrence keeps every length.
CHUNK_MIN_T = CHUNK if HAVE_BLAS else 1 << 30


@njit(**INLINE)
def _chunk_step(M, kq, vb, kb, x, u, y, z, pbuf, tbuf, dk, gt, bb, n, S):
    """One chunk of n tokens of the WY/UT form on the state M[i, j] = S[i][j], in place.

    In: kq rows 0..n-1 = k, rows n..2n-1 = q; vb = beta v; bb = beta; gt = the gates
    (float64). Out: y rows n..2n-1 = the chunk's outputs (unscaled). With gc the cumulative
    gate, A[r, s] = beta_r exp(gc_r - gc_s) k_r.k_s (s < r) and Tm = (I + A)^-1:
        U = Tm beta V;  W = Tm (beta e^gc K);  D = U - W M
        O = e^gc Q M + P D,  P[r, s] = exp(gc_r - gc_s) q_r.k_s (s <= r)
        M <- e^gc_last M + (e^(gc_last - gc) K)^T D
    The decays exp(gc_r - gc_s) (r >= s) are running products of the per-token factors
    exp(g_t) <= 1 (n exps, not n^2), so for g <= 0 no factor exceeds 1 and nothing
    overflows. All products go through _mm on contiguous (or transposed-contiguous) 2-D
    float32 operands."""
    eg = 1.0
    for r in range(n):                               # dk[r, s] = exp(gc_r - gc_s), s <= r
        a = math.exp(gt[r])
        eg *= a
        gt[r] = eg                                   # gt now holds exp(gc)
        for s in range(r):
            dk[r, s] = dk[r - 1, s] * a
        dk[r, r] = 1.0
    gram = pbuf[:2 * n * n].reshape((2 * n, n))      # [K; Q] K^T
    _mm(kq[:2 * n], kq[:n].T, gram)
    tm = tbuf[:n * n].reshape((n, n))
    # Tm = (I + A)^-1, forward substitution: row r = e_r - sum_{s<r} A[r, s] Tm[s]
    for r in range(n):
        br = bb[r]
        for c in range(n):
            tm[r, c] = 0.0
        tm[r, r] = 1.0
        for s in range(r):
            a = br * np.float32(dk[r, s]) * gram[r, s]
            for c in range(s + 1):
                tm[r, c] -= a * tm[s, c]
    for r in range(n):
        e = np.float32(gt[r])
        be = bb[r] * e
        for i in range(S):
            kb[r, i] = be * kq[r, i]
            x[n + r, i] = e * kq[n + r, i]           # e^gc Q below W
    _mm(tm, vb[:n], u[:n])                           # U
    _mm(tm, kb[:n], x[:n])                           # W
    _mm(x[:2 * n], M, y[:2 * n])                     # [W M ; e^gc Q M]
    for r in range(n):
        for j in range(S):
            u[r, j] -= y[r, j]                       # D = U - W M
    for r in range(n):
        for s in range(n):
            tm[r, s] = np.float32(dk[r, s]) * gram[n + r, s] if s <= r else 0.0
    _mm(tm, u[:n], y[:n])                            # P D (rows 0..n-1 of y are free now)
    for r in range(n):
        for j in range(S):
            y[n + r, j] += y[r, j]
    for s in range(n):
        e = np.float32(dk[n - 1, s])
        for i in range(S):
            kb[s, i] = e * kq[s, i]
    _mm(kb[:n].T, u[:n], z)                          # (e^(gl - gc) K)^T D
    egl = np.float32(gt[n - 1])
    for i in range(S):
        for j in range(S):
            M[i, j] = M[i, j] * egl + z[i, j]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _token_step_m(M, kt, qt, vt, e, b, out, S):
    """One token of the plain rule on M[i, j] = S[i][j] (GDA gate e = exp(g)); out = S^T q."""
    for j in range(S):
        out[j] = 0.0
    for i in range(S):
        ki = kt[i]
        for j in range(S):
            M[i, j] *= e
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
def _chunk_head(M, dst, q, k, v, g, beta, seq, sq, h, hk, t0, n, scale,
                kq, vb, kb, x, u, y, z, pbuf, tbuf, dk, gt, bb):
    """Tokens t0 .. t0+n-1 of head (seq, h) on its state M: inputs in, _chunk_step,
    outputs out."""
    T = v.shape[1]
    S = v.shape[3]
    for r in range(n):
        t = t0 + r
        gt[r] = np.float64(g[seq, t, h, 0])
        b = np.float32(beta[seq, t, h, 0])
        bb[r] = b
        kr = k[sq, t, hk]
        qr = q[sq, t, hk]
        vr = v[seq, t, h]
        for i in range(S):
            kq[r, i] = kr[i]
            kq[n + r, i] = qr[i]
            vb[r, i] = b * vr[i]
    _chunk_step(M, kq, vb, kb, x, u, y, z, pbuf, tbuf, dk, gt, bb, n, S)
    for r in range(n):
        out = _out_row(dst, seq * T + t0 + r, h, S)
        yr = y[n + r]
        for j in range(S):
            out[j] = yr[j] * scale


@njit(cache=True, nogil=True, parallel=True, fastmath=FASTMATH)
def _gdn_chunked(dst, q, k, v, g, beta, state, K):
    """GDA (scalar gates): the first T - K + 1 tokens in chunks of CHUNK (_chunk_step), the
    last K - 1 token by token so every snapshot slot is a state the rule passes through.
    Work goes out in groups of HEAD_GROUP (seq, head) pairs; a group walks its chunks in
    step, all its heads per chunk."""
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    scale = np.float32(1.0 / math.sqrt(S))
    C = CHUNK
    P = ns * Hv
    G = -(-P // max(-(-P // HEAD_GROUP), min(P, MIN_GROUPS)))   # <= HEAD_GROUP, >= MIN_GROUPS groups
    Tc = T - min(K, T) + 1                           # tokens done in chunks
    for grp in prange((P + G - 1) // G):
        p0 = grp * G
        p1 = min(p0 + G, P)
        Ms = np.empty((p1 - p0, S, S), np.float32)   # Ms[p - p0, i, j] = S[i][j] of pair p
        kq = np.empty((2 * C, S), np.float32)
        vb = np.empty((C, S), np.float32)
        kb = np.empty((C, S), np.float32)
        x = np.empty((2 * C, S), np.float32)
        u = np.empty((C, S), np.float32)
        y = np.empty((2 * C, S), np.float32)
        z = np.empty((S, S), np.float32)
        pbuf = np.empty(2 * C * C, np.float32)
        tbuf = np.empty(C * C, np.float32)
        gt = np.empty(C, np.float64)
        dk = np.empty((C, C), np.float64)
        bb = np.empty(C, np.float32)
        blas_prev = _blas_threads(1)
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
                _chunk_head(Ms[p - p0], dst, q, k, v, g, beta, seq, seq // rep, h, h % Hk, t0, n, scale,
                            kq, vb, kb, x, u, y, z, pbuf, tbuf, dk, gt, bb)
        for p in range(p0, p1):
            seq = p // Hv
            h = p - seq * Hv
            sq = seq // rep
            hk = h % Hk
            M = Ms[p - p0]
            for t in range(Tc, T + 1):               # snapshot of the state after token t-1
                slot = T - t
                if slot < K:
                    for j in range(S):
                        row = _dst_row(dst, _snap_off(slot, seq, h, j, S, Hv, T, ns), S)
                        for i in range(S):
                            row[i] = M[i, j]
                if t < T:
                    for i in range(S):
                        kq[0, i] = k[sq, t, hk, i]
                        kq[1, i] = q[sq, t, hk, i]
                        vb[0, i] = v[seq, t, h, i]
                    e = np.float32(math.exp(np.float64(g[seq, t, h, 0])))
                    _token_step_m(M, kq[0], kq[1], vb[0], e, np.float32(beta[seq, t, h, 0]), y[0], S)
                    out = _out_row(dst, seq * T + t, h, S)
                    for j in range(S):
                        out[j] = y[0, j] * scale
            _zero_slots(dst, seq, h, T, K, S, Hv, T, ns)
        _blas_threads(blas_prev)


# ----------------------------------------------------------------------------- entry

@njit(cache=True, nogil=True)
def gated_delta_net(dst, q, k, v, g, beta, state, K):
    """GATED_DELTA_NET kernel: dst (1, 1, T*n_seqs + K*S*n_seqs, S*H_v) from q, k
    (n_seqs_qk, T, H_k, S), v (n_seqs, T, H_v, S), g (n_seqs, T, H_v, 1 or S),
    beta (n_seqs, T, H_v, 1), state (n_seqs, H_v, S, S); K snapshot slots."""
    T = v.shape[1]
    if T == 1:
        _gdn_decode(dst, q, k, v, g, beta, state, K, state.size * 4 >= STREAM_BYTES)
    elif T >= CHUNK_MIN_T and g.shape[3] == 1 and K <= CHUNK:
        _gdn_chunked(dst, q, k, v, g, beta, state, K)
    else:
        _gdn_recurrent(dst, q, k, v, g, beta, state, K)


# the op picks its own parallelism inside, so both builds are the same entry point
from minigraph.ops.registry import register_kernel  # noqa: E402

from .jit import DualKernel  # noqa: E402

GATED_DELTA_NET_KERNEL = DualKernel(gated_delta_net, gated_delta_net, "gated_delta_net")
register_kernel("GATED_DELTA_NET", "cpu", GATED_DELTA_NET_KERNEL)
