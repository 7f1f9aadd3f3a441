"""Fast CUDA kernels for GATED_DELTA_NET (numba-cuda): a warp-per-row recurrence and a chunked
(WY / UT-transform) prefill.

Arrays are device arrays in the CPU kernel order, C-contiguous, float32 (numpy shape = reversed
ggml ne): q, k (n_seqs_qk, T, H_k, S); v (n_seqs, T, H_v, S); g (n_seqs, T, H_v, 1 or S);
beta (n_seqs, T, H_v, 1); state (n_seqs, H_v, S, S) with state[n, h, j, i] = S[i][j]; dst a flat
float32 array of S*H_v*(T*n_seqs + K*S*n_seqs) elements: the output [S, H_v, T, n_seqs], then K
snapshots [S, S, H_v, n_seqs] (slot 0 = final state, slot s = s tokens back, slots s >= T zero).
Value head h reads q/k head h % H_k and q/k sequence seq // (n_seqs / n_seqs_qk). S <= 128.

  recurrent (any T, GDA and KDA, any K): one warp per RPW state rows j (S[:, j], contiguous in
      the stored state), the rows in registers (4 floats a lane each), each token one batch of
      warp reductions; for T == 1 the state is read once and written once.
  chunked (GDA, K == 1, long T): CHUNK tokens per chunk.
      _chunk_prep, parallel over (chunk, head, seq): A = strictly lower beta_r e^(gc_r - gc_s)
          k_r.k_s, Tm = (I + A)^-1 by forward substitution in shared memory, U = Tm beta V,
          W = Tm beta e^gc K, P = masked e^(gc_r - gc_s) q_r.k_s / sqrt(S), into a workspace.
      _chunk_state, parallel over (block of JB value columns, head, seq), sequential over
          chunks: D = U - W M, O = e^gc Q M / sqrt(S) + P D, M <- e^gc_last M +
          (e^(gc_last - gc) K)^T D, M kept in shared memory.
      Every exponent is a masked difference (r >= s) or a cumulative gate, so nothing
      overflows for g <= 0; the tail chunk is padded with k = q = 0, beta = 0, g = 0.

Entry points: gdn_recurrent(...), gdn_chunked(...), gated_delta_net_fast(...) (picks by shape);
all take (dst, q, k, v, g, beta, state, K, stream=0[, workspace]).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

WARP = 32
ROWS = 4               # warps per block of the recurrent kernel
RPW = 4                # state rows per warp (loaded together: more bytes in flight, fewer blocks)
PER_LANE = 4           # S <= WARP * PER_LANE
MAX_S = WARP * PER_LANE
RPW_LANE = RPW * PER_LANE
RPW2 = 2 * RPW
CHUNK = 64             # tokens per chunk of the WY form
PREP_THREADS = 256
IB = 32                # key columns staged per step of the Gram products
CHUNK_PAD = CHUNK + 1  # padded shared rows (no bank conflicts down a column)
IB_PAD = IB + 1
JB = 32                # value columns per block of the state pass
STATE_THREADS = 256
RPT = CHUNK * JB // STATE_THREADS   # chunk rows per thread in the state pass (8)
CHUNKED_MIN_T = 64     # chunked form from this many tokens on (GDA, K == 1)


# ----------------------------------------------------------------------------- recurrent

@cuda.jit
def _recurrent(dst, q, k, v, g, beta, state, K):
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    lane = cuda.threadIdx.x % WARP
    j0 = (cuda.blockIdx.x * ROWS + cuda.threadIdx.x // WARP) * RPW
    h = cuda.blockIdx.y
    seq = cuda.blockIdx.z
    if j0 >= S:
        return
    sq = seq // rep
    hk = h % Hk
    kda = g.shape[3] != 1
    scale = float32(1.0) / math.sqrt(float32(S))
    n_attn = S * Hv * T * ns
    # RPW rows per warp, all loaded before any is used: 4x the bytes in flight of one row
    row = cuda.local.array(RPW_LANE, float32)
    kv = cuda.local.array(PER_LANE, float32)
    qv = cuda.local.array(PER_LANE, float32)
    ev = cuda.local.array(PER_LANE, float32)
    red = cuda.local.array(RPW2, float32)
    for r in range(RPW):
        for c in range(PER_LANE):
            i = lane + WARP * c
            row[r * PER_LANE + c] = state[seq, h, j0 + r, i] if i < S and j0 + r < S else float32(0.0)
    for t in range(T):
        e = math.exp(g[seq, t, h, 0])
        kq = float32(0.0)
        for c in range(PER_LANE):
            i = lane + WARP * c
            ki = float32(0.0)
            qi = float32(0.0)
            ei = e
            if i < S:
                ki = k[sq, t, hk, i]
                qi = q[sq, t, hk, i]
                if kda:
                    ei = math.exp(g[seq, t, h, i])
            kv[c] = ki
            qv[c] = qi
            ev[c] = ei
            kq += ki * qi
        for r in range(RPW):
            kd = float32(0.0)
            qd = float32(0.0)
            for c in range(PER_LANE):
                x = row[r * PER_LANE + c] * ev[c]
                row[r * PER_LANE + c] = x
                kd += x * kv[c]
                qd += x * qv[c]
            red[2 * r] = kd
            red[2 * r + 1] = qd
        for off in (16, 8, 4, 2, 1):
            kq += cuda.shfl_xor_sync(0xFFFFFFFF, kq, off)
            for m in range(RPW2):
                red[m] += cuda.shfl_xor_sync(0xFFFFFFFF, red[m], off)
        slot = T - 1 - t
        for r in range(RPW):
            j = j0 + r
            if j < S:
                delta = (v[seq, t, h, j] - red[2 * r]) * beta[seq, t, h, 0]
                for c in range(PER_LANE):
                    row[r * PER_LANE + c] += kv[c] * delta
                if lane == 0:
                    dst[((seq * T + t) * Hv + h) * S + j] = (red[2 * r + 1] + delta * kq) * scale
                if slot < K:
                    base = n_attn + ((slot * ns + seq) * Hv + h) * S * S + j * S
                    for c in range(PER_LANE):
                        i = lane + WARP * c
                        if i < S:
                            dst[base + i] = row[r * PER_LANE + c]
    for slot in range(T, K):
        for r in range(RPW):
            j = j0 + r
            if j < S:
                base = n_attn + ((slot * ns + seq) * Hv + h) * S * S + j * S
                for c in range(PER_LANE):
                    i = lane + WARP * c
                    if i < S:
                        dst[base + i] = float32(0.0)


def gdn_recurrent(dst, q, k, v, g, beta, state, K, stream=0):
    """Warp-per-row recurrence (any T, GDA/KDA, any K)."""
    ns, T, Hv, S = v.shape
    if S > MAX_S:
        raise ValueError(f"GATED_DELTA_NET (cuda gdn_fast): S={S} > {MAX_S}")
    grid = ((S + ROWS * RPW - 1) // (ROWS * RPW), Hv, ns)
    _recurrent[grid, ROWS * WARP, stream](dst, q, k, v, g, beta, state, K)


# ----------------------------------------------------------------------------- chunked: prep

@cuda.jit
def _chunk_prep(q, k, v, g, beta, U, W, P, GC):
    """One chunk of one (head, seq): U, W [CHUNK, S] and P [CHUNK, CHUNK], GC [CHUNK]."""
    ns, T, Hv, S = v.shape
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    c = cuda.blockIdx.x
    h = cuda.blockIdx.y
    seq = cuda.blockIdx.z
    sq = seq // rep
    hk = h % Hk
    hs = seq * Hv + h
    t0 = c * CHUNK
    tid = cuda.threadIdx.x
    scale = float32(1.0) / math.sqrt(float32(S))
    gc = cuda.shared.array(CHUNK, float32)
    bb = cuda.shared.array(CHUNK, float32)
    A = cuda.shared.array((CHUNK, CHUNK_PAD), float32)
    Ks = cuda.shared.array((CHUNK, IB_PAD), float32)
    Qs = cuda.shared.array((CHUNK, IB_PAD), float32)
    if tid < CHUNK:
        t = t0 + tid
        gc[tid] = g[seq, t, h, 0] if t < T else float32(0.0)
        bb[tid] = beta[seq, t, h, 0] if t < T else float32(0.0)
    cuda.syncthreads()
    if tid == 0:                                   # cumulative gate (64 adds)
        acc = float32(0.0)
        for r in range(CHUNK):
            acc += gc[r]
            gc[r] = acc
    # Gram products: thread -> row r, 16 columns s0..s0+15 of K K^T and Q K^T
    r = tid // 4
    s0 = (tid % 4) * 16
    aK = cuda.local.array(16, float32)
    aQ = cuda.local.array(16, float32)
    for m in range(16):
        aK[m] = float32(0.0)
        aQ[m] = float32(0.0)
    for i0 in range(0, S, IB):
        for e in range(tid, CHUNK * IB, PREP_THREADS):
            rr = e // IB
            ii = e % IB
            t = t0 + rr
            inside = t < T and i0 + ii < S
            Ks[rr, ii] = k[sq, t, hk, i0 + ii] if inside else float32(0.0)
            Qs[rr, ii] = q[sq, t, hk, i0 + ii] if inside else float32(0.0)
        cuda.syncthreads()
        for ii in range(IB):
            kr = Ks[r, ii]
            qr = Qs[r, ii]
            for m in range(16):
                ks = Ks[s0 + m, ii]
                aK[m] += kr * ks
                aQ[m] += qr * ks
        cuda.syncthreads()
    gr = gc[r]
    br = bb[r]
    pbase = (hs * ((T + CHUNK - 1) // CHUNK) + c) * CHUNK * CHUNK + r * CHUNK
    for m in range(16):
        s = s0 + m
        d = math.exp(gr - gc[s]) if s <= r else float32(0.0)
        A[r, s] = br * d * aK[m] if s < r else float32(0.0)
        P[pbase + s] = d * aQ[m] * scale
    if tid < CHUNK:
        GC[hs * U.shape[1] + t0 + tid] = gc[tid]
    cuda.syncthreads()
    # Tm = (I + A)^-1 in place, row by row: Tm[r, c] = -A[r, c] - sum_{c<s<r} A[r, s] Tm[s, c]
    for rr in range(1, CHUNK):
        x = float32(0.0)
        if tid < rr:
            x = -A[rr, tid]
            for s in range(tid + 1, rr):
                x -= A[rr, s] * A[s, tid]
        cuda.syncthreads()
        if tid < rr:
            A[rr, tid] = x
        cuda.syncthreads()
    # U = Tm beta V, W = Tm beta e^gc K: thread -> rows wr + 8a (a < 8), columns lane + 32b
    lane = tid % WARP
    wr = tid // WARP
    for b in range(PER_LANE):
        j = lane + WARP * b
        if j < S:
            accU = cuda.local.array(8, float32)
            accW = cuda.local.array(8, float32)
            for a in range(8):
                accU[a] = float32(0.0)
                accW[a] = float32(0.0)
            for s in range(CHUNK):
                t = t0 + s
                if t < T:
                    bs = bb[s]
                    vv = v[seq, t, h, j] * bs
                    kk = k[sq, t, hk, j] * bs * math.exp(gc[s])
                    for a in range(8):
                        rr = wr + 8 * a
                        tm = A[rr, s] if s < rr else (float32(1.0) if s == rr else float32(0.0))
                        accU[a] += tm * vv
                        accW[a] += tm * kk
            for a in range(8):
                rr = wr + 8 * a
                U[hs, t0 + rr, j] = accU[a]
                W[hs, t0 + rr, j] = accW[a]


# ----------------------------------------------------------------------------- chunked: state

@cuda.jit
def _chunk_state(dst, q, k, state, U, W, P, GC):
    """Value columns j0..j0+JB-1 of one (head, seq), all chunks in order; K == 1."""
    ns = state.shape[0]
    Hv = state.shape[1]
    S = state.shape[2]
    T = q.shape[1]
    Hk = q.shape[2]
    rep = ns // q.shape[0]
    j0 = cuda.blockIdx.x * JB
    h = cuda.blockIdx.y
    seq = cuda.blockIdx.z
    sq = seq // rep
    hk = h % Hk
    hs = seq * Hv + h
    n_chunks = (T + CHUNK - 1) // CHUNK
    scale = float32(1.0) / math.sqrt(float32(S))
    tid = cuda.threadIdx.x
    lane = tid % JB
    wr = tid // JB                                 # 0 .. STATE_THREADS/JB - 1
    NR = STATE_THREADS // JB                       # 8 row groups
    j = j0 + lane
    jin = j < S
    M = cuda.shared.array((MAX_S, JB), float32)
    D = cuda.shared.array((CHUNK, JB), float32)
    dec = cuda.shared.array(CHUNK, float32)
    for i in range(wr, S, NR):
        M[i, lane] = state[seq, h, j, i] if jin else float32(0.0)
    cuda.syncthreads()
    for c in range(n_chunks):
        t0 = c * CHUNK
        # D = U - W M and O1 = Q M, rows wr + NR*a
        accD = cuda.local.array(RPT, float32)
        accO = cuda.local.array(RPT, float32)
        for a in range(RPT):
            accD[a] = float32(0.0)
            accO[a] = float32(0.0)
        for i in range(S):
            mij = M[i, lane]
            for a in range(RPT):
                r = wr + NR * a
                t = t0 + r
                accD[a] += W[hs, t, i] * mij
                if t < T:
                    accO[a] += q[sq, t, hk, i] * mij
        for a in range(RPT):
            r = wr + NR * a
            D[r, lane] = (U[hs, t0 + r, j] - accD[a]) if jin else float32(0.0)
        gl = GC[hs * U.shape[1] + min(t0 + CHUNK, T) - 1]
        if tid < CHUNK:
            t = t0 + tid
            dec[tid] = math.exp(gl - GC[hs * U.shape[1] + t]) if t < T else float32(0.0)
        cuda.syncthreads()
        # O = e^gc Q M / sqrt(S) + P D
        pbase = (hs * n_chunks + c) * CHUNK * CHUNK
        for a in range(RPT):
            r = wr + NR * a
            t = t0 + r
            if t < T:
                o = accO[a] * math.exp(GC[hs * U.shape[1] + t]) * scale
                for s in range(r + 1):
                    o += P[pbase + r * CHUNK + s] * D[s, lane]
                if jin:
                    dst[((seq * T + t) * Hv + h) * S + j] = o
        # M <- e^gl M + (e^(gl - gc) K)^T D
        egl = math.exp(gl)
        ns_c = min(CHUNK, T - t0)
        for i in range(wr, S, NR):
            acc = M[i, lane] * egl
            for s in range(ns_c):
                acc += dec[s] * k[sq, t0 + s, hk, i] * D[s, lane]
            M[i, lane] = acc
        cuda.syncthreads()
    if jin:
        base = S * Hv * T * ns + (seq * Hv + h) * S * S + j * S
        for i in range(wr, S, NR):
            dst[base + i] = M[i, lane]


def gdn_workspace(ns, Hv, T, S):
    """Device scratch of the chunked form: U, W [ns*Hv, Tpad, S], P, GC."""
    nc = (T + CHUNK - 1) // CHUNK
    Tp = nc * CHUNK
    return (cuda.device_array((ns * Hv, Tp, S), np.float32), cuda.device_array((ns * Hv, Tp, S), np.float32),
            cuda.device_array(ns * Hv * nc * CHUNK * CHUNK, np.float32), cuda.device_array(ns * Hv * Tp, np.float32))


def gdn_chunked(dst, q, k, v, g, beta, state, K, stream=0, workspace=None):
    """Chunked WY form: GDA (g.shape[3] == 1), K == 1."""
    ns, T, Hv, S = v.shape
    if g.shape[3] != 1 or K != 1 or S > MAX_S:
        raise ValueError("GATED_DELTA_NET (cuda gdn_chunked): needs scalar gates, K == 1, S <= 128")
    U, W, P, GC = workspace if workspace is not None else gdn_workspace(ns, Hv, T, S)
    nc = (T + CHUNK - 1) // CHUNK
    _chunk_prep[(nc, Hv, ns), PREP_THREADS, stream](q, k, v, g, beta, U, W, P, GC)
    _chunk_state[((S + JB - 1) // JB, Hv, ns), STATE_THREADS, stream](dst, q, k, state, U, W, P, GC)


def gated_delta_net_fast(dst, q, k, v, g, beta, state, K, stream=0, workspace=None):
    """GATED_DELTA_NET: chunked for long GDA prompts with K == 1, else the recurrence."""
    T = v.shape[1]
    if T >= CHUNKED_MIN_T and g.shape[3] == 1 and K == 1:
        gdn_chunked(dst, q, k, v, g, beta, state, K, stream, workspace)
    else:
        gdn_recurrent(dst, q, k, v, g, beta, state, K, stream)
