"""Fast CUDA kernels for GATED_DELTA_NET: a warp-per-rows recurrence and a chunked (WY / UT) prefill.

They follow the backend's kernel convention (backends/cuda/common.py): flat float32 arrays plus a
meta row of element offsets and ne per slot (0 dst, 1 q, 2 k, 3 v, 4 g, 5 beta, 6 state), and
signature kernel(meta, dst, q, k, v, g, beta, state, K[, workspace arrays]). Unlike the generic
kernel (gated_delta_net.py) they need the CONTIGUOUS layout, S <= 128, S % 4 == 0 and 16-byte
aligned tensor starts (float4 loads); `fast_path_refusal(node)` says when a node misses that.
Layout (ggml ne): q, k [S, H_k, T, n_seqs_qk]; v [S, H_v, T, n_seqs]; g [1 or S, H_v, T, n_seqs];
beta [1, H_v, T, n_seqs]; state [S, S, H_v, n_seqs] (row j of a head is S[:, j]); dst [S*H_v,
T*n_seqs + K*S*n_seqs] (output, then K snapshots: slot 0 final, slot s s tokens back, s >= T zero).
Value head h reads q/k head h % H_k and q/k sequence seq // (n_seqs / n_seqs_qk).

  decode (T == 1, GDA and KDA, any K): a lane holds 4 consecutive i of a state row j (one float4),
      a warp streams groups of DEC_RPW rows with the next group's loads in flight while the
      current one is reduced (warp shuffles) and stored; ld/st.global.cs since the state is read
      once and written once. Fewer groups a warp when the grid is small (B=1: latency).
  recurrent (T > 1 when not chunked: KDA, K > 1, short prompts): the same lanes, RPW rows a warp
      in registers for all T tokens, per token one batch of warp reductions.
  chunked (GDA, K == 1, T >= CHUNKED_MIN_T; KDA too on the tensor-core path): CHUNK tokens a chunk, fla's algorithm in three
      kernels (prep, sequential state pass, out): gdn_chunked.py.
On a real GPU (sm_80+, MINIGRAPH_CUDA_TENSOR_CORES not 0) decode and the chunked form run the
linked CUDA C++ kernels of gdn_tc.py instead (3xTF32 tensor cores, 64-token chunks, chunked from
TC_MIN_T tokens on); these Numba kernels stay the simulator's (CI's) path and the fallback.
Shared device helpers (float4 PTX loads/stores, warp sums): gdn_device.py.
Standalone use (numpy-shaped C-contiguous device arrays): standalone(...) / gated_delta_net_fast(...).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from numba import cuda, float32

from minigraph.core.buffer import tensor_start
from minigraph.core.tensor import is_contiguous
from minigraph.backends.cuda import gdn_tc
from minigraph.backends.cuda.common import META_W, SIM, SLOT_W, Launch, ne
from minigraph.backends.cuda.gdn_chunked import BV, chunk_kernels
from minigraph.backends.cuda.gdn_device import MAX_S, WARP, dims, ld4, ld4cs, st4, st4cs, warp_sums

REC_WARPS = 1 if SIM else 4      # warps per block of the recurrence (the simulator: one)
RPW = 8                          # state rows per warp: 8 float4 loads in flight per lane
DEC_RPW = 4                      # decode (T == 1): rows per group, groups per warp
DEC_GROUPS = 2 if SIM else 4
DEC_MAX_REGS = 96                # 5 blocks an SM
STREAM_HINT = True               # decode: ld/st.global.cs (the state is touched once)
CHUNK = 64                       # tokens per chunk of the WY form (16, 32 or 64)
CHUNKED_MIN_T = 160              # chunked form from this many tokens on (GDA, K == 1; H100, B=1:
                                 # recurrence 208 us / chunked 224 us at T=128, 405 / 215 at T=256)
DEC_MIN_BLOCKS = 1 if SIM else 528   # decode: halve the row groups a warp until the grid has this many
TC_MIN_T = 64                    # tensor-core chunked form from this many tokens on (GDA, K == 1)
TENSOR_CORES: Optional[bool] = None  # None: gdn_tc.available(), decided at the first plan


def tensor_cores() -> bool:
    """Whether plans use the CUDA C++ kernels of gdn_tc.py (decided once, then cached)."""
    global TENSOR_CORES
    if TENSOR_CORES is None:
        TENSOR_CORES = gdn_tc.available()
    return TENSOR_CORES

# ----------------------------------------------------------------------------- recurrence

_RECURRENT: dict = {}


def recurrent_kernel(rpw: int = RPW, hint: bool = STREAM_HINT) -> Any:
    """The recurrence with `rpw` rows per warp (and .cs state loads/stores when `hint`)."""
    key = (rpw, hint)
    if key in _RECURRENT:
        return _RECURRENT[key]
    lds, sts = (ld4cs, st4cs) if hint else (ld4, st4)
    R2 = 2 * rpw
    NRED = R2 + 1                # x.k and x.q per row, then k.q
    R4 = 4 * rpw
    SCR = REC_WARPS * WARP * NRED if SIM else 1

    @cuda.jit
    def recurrent(meta, dst, q, k, v, g, beta, state, K, hd):
        scr = cuda.shared.array(SCR, float32)
        row = cuda.local.array(R4, float32)
        red = cuda.local.array(NRED, float32)
        S, Hv, T, N, Hk, rep = dims(meta)
        kda = ne(meta, 4, 0) != 1
        lane = cuda.threadIdx.x % WARP
        j0 = (cuda.blockIdx.x * REC_WARPS + cuda.threadIdx.x // WARP) * rpw
        h = cuda.blockIdx.y
        seq = cuda.blockIdx.z
        sq = seq // rep
        hk = (h // hd) % Hk
        i0 = 4 * lane
        act = i0 < S
        od, oq, ok, ov = meta[0], meta[SLOT_W], meta[2 * SLOT_W], meta[3 * SLOT_W]
        og, ob, osb = meta[4 * SLOT_W], meta[5 * SLOT_W], meta[6 * SLOT_W]
        scale = float32(1.0) / math.sqrt(float32(S))
        n_attn = S * Hv * T * N
        sbase = osb + (seq * Hv + h) * S * S
        for r in range(rpw):             # every row's load issued before any is used
            x0 = x1 = x2 = x3 = float32(0.0)
            if act and j0 + r < S:
                x0, x1, x2, x3 = lds(state, sbase + (j0 + r) * S + i0)
            row[4 * r] = x0
            row[4 * r + 1] = x1
            row[4 * r + 2] = x2
            row[4 * r + 3] = x3
        for t in range(T):
            vt = (seq * T + t) * Hv + h
            k0 = k1 = k2 = k3 = q0 = q1 = q2 = q3 = float32(0.0)
            if act:
                qk = ((sq * T + t) * Hk + hk) * S + i0
                k0, k1, k2, k3 = ld4(k, ok + qk)
                q0, q1, q2, q3 = ld4(q, oq + qk)
            if kda:
                e0 = e1 = e2 = e3 = float32(1.0)
                if act:
                    e0, e1, e2, e3 = ld4(g, og + vt * S + i0)
                    e0, e1, e2, e3 = math.exp(e0), math.exp(e1), math.exp(e2), math.exp(e3)
            else:
                e0 = e1 = e2 = e3 = math.exp(g[og + vt])
            bt = beta[ob + vt]
            red[R2] = k0 * q0 + k1 * q1 + k2 * q2 + k3 * q3
            for r in range(rpw):
                x0 = row[4 * r] * e0
                x1 = row[4 * r + 1] * e1
                x2 = row[4 * r + 2] * e2
                x3 = row[4 * r + 3] * e3
                row[4 * r] = x0
                row[4 * r + 1] = x1
                row[4 * r + 2] = x2
                row[4 * r + 3] = x3
                red[2 * r] = x0 * k0 + x1 * k1 + x2 * k2 + x3 * k3
                red[2 * r + 1] = x0 * q0 + x1 * q1 + x2 * q2 + x3 * q3
            warp_sums(scr, red, NRED)
            kq = red[R2]
            slot = T - 1 - t
            for r in range(rpw):
                j = j0 + r
                if j < S:
                    delta = (v[ov + vt * S + j] - red[2 * r]) * bt
                    x0 = row[4 * r] + k0 * delta
                    x1 = row[4 * r + 1] + k1 * delta
                    x2 = row[4 * r + 2] + k2 * delta
                    x3 = row[4 * r + 3] + k3 * delta
                    row[4 * r] = x0
                    row[4 * r + 1] = x1
                    row[4 * r + 2] = x2
                    row[4 * r + 3] = x3
                    if lane == r % WARP:
                        dst[od + vt * S + j] = (red[2 * r + 1] + delta * kq) * scale
                    if slot < K and act:
                        sts(dst, od + n_attn + ((slot * N + seq) * Hv + h) * S * S + j * S + i0, x0, x1, x2, x3)
        for slot in range(T, K):
            for r in range(rpw):
                if act and j0 + r < S:
                    z = float32(0.0)
                    st4(dst, od + n_attn + ((slot * N + seq) * Hv + h) * S * S + (j0 + r) * S + i0, z, z, z, z)

    _RECURRENT[key] = recurrent
    return recurrent


_DECODE: dict = {}


def decode_kernel(rpw: int = DEC_RPW, groups: int = DEC_GROUPS, warps: int = REC_WARPS,
                  hint: bool = STREAM_HINT, max_registers: int = DEC_MAX_REGS, sd: bool = False) -> Any:
    """T == 1: each warp streams `groups` groups of `rpw` rows, the next group's loads in flight
    while the current one is reduced and stored (.cs loads / stores when `hint`). sd: the node's
    state destination (its 7th source, K == 1) takes the new state, not dst's snapshot slot."""
    key = (rpw, groups, warps, hint, max_registers, sd)
    if key in _DECODE:
        return _DECODE[key]
    lds, sts = (ld4cs, st4cs) if hint else (ld4, st4)
    R2 = 2 * rpw
    NRED = R2 + 1
    R4 = 4 * rpw
    SCR = warps * WARP * NRED if SIM else 1

    @cuda.jit(device=True)
    def body(meta, dst, q, k, v, g, beta, state, out, so, K, hd):
        """The kernel with the new state going to out[so + ...] (so: slot 0's first element)."""
        scr = cuda.shared.array(SCR, float32)
        cur = cuda.local.array(R4, float32)
        nxt = cuda.local.array(R4, float32)
        red = cuda.local.array(NRED, float32)
        S, Hv, T, N, Hk, rep = dims(meta)
        lane = cuda.threadIdx.x % WARP
        jw = (cuda.blockIdx.x * warps + cuda.threadIdx.x // WARP) * (rpw * groups)
        h = cuda.blockIdx.y
        seq = cuda.blockIdx.z
        i0 = 4 * lane
        act = i0 < S
        od, oq, ok, ov = meta[0], meta[SLOT_W], meta[2 * SLOT_W], meta[3 * SLOT_W]
        og, ob, osb = meta[4 * SLOT_W], meta[5 * SLOT_W], meta[6 * SLOT_W]
        sbase = osb + (seq * Hv + h) * S * S + i0
        for r in range(rpw):
            x0 = x1 = x2 = x3 = float32(0.0)
            if act and jw + r < S:
                x0, x1, x2, x3 = lds(state, sbase + (jw + r) * S)
            cur[4 * r] = x0
            cur[4 * r + 1] = x1
            cur[4 * r + 2] = x2
            cur[4 * r + 3] = x3
        vt = seq * Hv + h
        k0 = k1 = k2 = k3 = q0 = q1 = q2 = q3 = float32(0.0)
        e0 = e1 = e2 = e3 = float32(1.0)
        if act:
            qk = ((seq // rep) * Hk + (h // hd) % Hk) * S + i0
            k0, k1, k2, k3 = ld4(k, ok + qk)
            q0, q1, q2, q3 = ld4(q, oq + qk)
            if ne(meta, 4, 0) != 1:
                e0, e1, e2, e3 = ld4(g, og + vt * S + i0)
                e0, e1, e2, e3 = math.exp(e0), math.exp(e1), math.exp(e2), math.exp(e3)
            else:
                e0 = e1 = e2 = e3 = math.exp(g[og + vt])
        bt = beta[ob + vt]
        scale = float32(1.0) / math.sqrt(float32(S))
        obase = so + (seq * Hv + h) * S * S + i0                  # snapshot slot 0 (or the destination)
        ng = min(groups, (S - jw + rpw - 1) // rpw)     # a runtime trip count: not unrolled
        for gi in range(ng):
            j0 = jw + gi * rpw
            if gi + 1 < ng:
                for r in range(rpw):
                    x0 = x1 = x2 = x3 = float32(0.0)
                    if act and j0 + rpw + r < S:
                        x0, x1, x2, x3 = lds(state, sbase + (j0 + rpw + r) * S)
                    nxt[4 * r] = x0
                    nxt[4 * r + 1] = x1
                    nxt[4 * r + 2] = x2
                    nxt[4 * r + 3] = x3
            for r in range(rpw):
                x0 = cur[4 * r] * e0
                x1 = cur[4 * r + 1] * e1
                x2 = cur[4 * r + 2] * e2
                x3 = cur[4 * r + 3] * e3
                cur[4 * r] = x0
                cur[4 * r + 1] = x1
                cur[4 * r + 2] = x2
                cur[4 * r + 3] = x3
                red[2 * r] = x0 * k0 + x1 * k1 + x2 * k2 + x3 * k3
                red[2 * r + 1] = x0 * q0 + x1 * q1 + x2 * q2 + x3 * q3
            red[R2] = k0 * q0 + k1 * q1 + k2 * q2 + k3 * q3
            warp_sums(scr, red, NRED)
            for r in range(rpw):
                j = j0 + r
                if j < S:
                    delta = (v[ov + vt * S + j] - red[2 * r]) * bt
                    if lane == r % WARP:
                        dst[od + vt * S + j] = (red[2 * r + 1] + delta * red[R2]) * scale
                    if act:
                        sts(out, obase + j * S, cur[4 * r] + k0 * delta, cur[4 * r + 1] + k1 * delta,
                            cur[4 * r + 2] + k2 * delta, cur[4 * r + 3] + k3 * delta)
            for m in range(R4):
                cur[m] = nxt[m]
        for slot in range(1, K):                                   # T == 1: slots >= 1 are zero
            for r in range(rpw * groups):
                if act and jw + r < S:
                    z = float32(0.0)
                    st4(dst, obase + slot * S * S * Hv * N + (jw + r) * S, z, z, z, z)

    jit = cuda.jit(**({} if SIM or not max_registers else {"max_registers": max_registers}))
    if sd:
        @jit
        def decode(meta, dst, q, k, v, g, beta, state, sdst, K, hd):
            body(meta, dst, q, k, v, g, beta, state, sdst, meta[7 * SLOT_W], K, hd)
    else:
        @jit
        def decode(meta, dst, q, k, v, g, beta, state, K, hd):
            body(meta, dst, q, k, v, g, beta, state, dst,
                 meta[0] + ne(meta, 3, 0) * ne(meta, 3, 1) * ne(meta, 3, 3), K, hd)

    _DECODE[key] = decode
    return decode


# ----------------------------------------------------------------------------- planning

def use_chunked(T: int, K: int, kda: bool) -> bool:
    """Whether the plan takes the chunked form (K == 1; KDA only on the tensor-core path)."""
    tc = tensor_cores()
    return T >= (TC_MIN_T if tc else CHUNKED_MIN_T) and K == 1 and (tc or not kda)


def workspace(S: int, Hv: int, T: int, N: int, L: int = CHUNK, kda: bool = False) -> tuple:
    """Device scratch of the chunked form: U/D [hs, Tp, S], W^T per chunk, P^T, gc, H_c (the
    tensor-core kernels' own layout when they run: gdn_tc.workspace)."""
    if tensor_cores():
        return gdn_tc.workspace(S, Hv, T, N, kda)
    nc = -(-T // L)
    hs = Hv * N
    sizes = (hs * nc * L * S, hs * nc * S * L, hs * nc * L * L, hs * nc * L, hs * nc * S * S)
    return tuple(cuda.device_array(max(n, 4), np.float32) for n in sizes)


def state_dst_refusal(T: int, K: int, kda: bool) -> Optional[str]:
    """None when the form a node takes can write a state destination (attach_state_dst), else why not:
    the decode kernels and the tensor-core chunked form can; the Numba recurrence and chunked form
    (the simulator's prefill) cannot."""
    if T == 1 or (tensor_cores() and use_chunked(T, K, kda)):
        return None
    return (f"a state destination is written by the decode kernels and the tensor-core chunked form "
            f"(T={T} takes the {'chunked' if use_chunked(T, K, kda) else 'recurrent'} Numba kernels here)")


def plan(S: int, Hv: int, T: int, N: int, K: int, kda: bool, ws: Optional[tuple] = None,
         chunked: Optional[bool] = None, hd: int = 1, sd: bool = False) -> list[Launch]:
    """The launches of one GATED_DELTA_NET (workspace allocated here unless given); `chunked`
    None picks the form by use_chunked. hd: value head h reads q/k head (h // hd) % H_k (1 tiled,
    H_v / H_k interleaved: the op's bcast 1); every kernel takes it as its first scalar. sd: the
    node has a state destination (state_dst_refusal says which forms take one)."""
    if sd and state_dst_refusal(T, K, kda):
        raise ValueError(f"GATED_DELTA_NET (cuda): {state_dst_refusal(T, K, kda)}")
    if chunked if chunked is not None else use_chunked(T, K, kda):
        if K != 1 or (kda and not tensor_cores()):
            raise ValueError("GATED_DELTA_NET (cuda): the chunked form takes K == 1 (and GDA gates "
                             "without the tensor-core kernels)")
        if tensor_cores():
            return gdn_tc.chunked_launches(S, Hv, T, N, kda, ws, hd=hd, sd=sd)
        ck = chunk_kernels(CHUNK)
        nc = -(-T // ck.L)
        ws = ws if ws is not None else workspace(S, Hv, T, N, ck.L)
        return [Launch(ck.prep, (nc, Hv, N), (ck.prep_threads,), (hd, *ws)),
                Launch(ck.state, (-(-S // BV), Hv, N), (ck.state_threads,), (hd, *ws)),
                Launch(ck.out, (nc, Hv, N), (ck.out_threads,), (hd, *ws))]
    if T == 1 and tensor_cores():
        return [gdn_tc.decode_launch(S, Hv, N, kda, hd=hd, sd=sd)]
    if T == 1:          # long row streams per warp when the grid is big, short when small (B=1)
        groups = DEC_GROUPS
        while groups > 1 and -(-S // (REC_WARPS * DEC_RPW * groups)) * Hv * N < DEC_MIN_BLOCKS:
            groups //= 2
        rows = REC_WARPS * DEC_RPW * groups
        return [Launch(decode_kernel(groups=groups, sd=sd), (-(-S // rows), Hv, N), (REC_WARPS * WARP,), (hd,))]
    rows = REC_WARPS * RPW
    return [Launch(recurrent_kernel(), (-(-S // rows), Hv, N), (REC_WARPS * WARP,), (hd,))]


def fast_path_refusal(node: Any) -> Optional[str]:
    """None when the fast kernels can run this node, else why the generic kernel runs it."""
    S = node.src[2].ne[0]
    if S > MAX_S or S % 4:
        return f"S={S}: the fast kernels take S <= {MAX_S} with S % 4 == 0"
    for s, t in enumerate([node, *node.src]):
        role = "dst" if s == 0 else f"src[{s - 1}]"
        if not is_contiguous(t):
            return f"{role} is not contiguous"
        if tensor_start(t) % 16:
            return f"{role} does not start 16-byte aligned (float4 loads)"
        owner = getattr(t.root._buf, "owner", None)
        if owner is not None and not SIM and t.root._buf.dev.device_ctypes_pointer.value % 16:
            return f"{role}'s device array is not 16-byte aligned"
    return None


def head_divisor(node: Any) -> int:
    """hd of a GATED_DELTA_NET node: 1 for the tiled q/k head map, H_v / H_k for the interleaved one."""
    return node.src[2].ne[1] // node.src[0].ne[1] if node.op_params.get("bcast", 0) else 1


def node_launches(node: Any) -> list[Launch]:
    S, Hv, T, N = node.src[2].ne
    return plan(S, Hv, T, N, node.op_params["K"], node.src[3].ne[0] != 1, hd=head_divisor(node),
                sd=len(node.src) > 6)


# ----------------------------------------------------------------------------- standalone

def contiguous_meta(dst_size: int, *arrays: Any) -> np.ndarray:
    """The meta row for C-contiguous arrays (q, k, v, g, beta, state; numpy shapes) at offset 0."""
    meta = np.zeros(META_W, np.int64)
    meta[1:5] = [dst_size, 1, 1, 1]
    meta[5:9] = [1, dst_size, dst_size, dst_size]
    for s, a in enumerate(arrays, start=1):
        n = list(reversed(a.shape)) + [1] * (4 - a.ndim)
        nb = np.cumprod([1] + n[:3])
        meta[s * SLOT_W] = 0
        meta[s * SLOT_W + 1:s * SLOT_W + 5] = n
        meta[s * SLOT_W + 5:s * SLOT_W + 9] = nb
    return meta


def standalone(dst, q, k, v, g, beta, state, K, workspace=None, chunked=None, hd=1):
    """A callable run(stream=0) doing GATED_DELTA_NET on numpy-shaped C-contiguous device
    arrays: q, k (n_seqs_qk, T, H_k, S); v (n_seqs, T, H_v, S); g (n_seqs, T, H_v, 1 or S);
    beta (n_seqs, T, H_v, 1); state (n_seqs, H_v, S, S); dst flat float32 of
    S*H_v*(T*n_seqs + K*S*n_seqs). Meta row and workspace are made here, once; calls only
    launch (capturable into a CUDA graph). run.launches / run.args time kernels one by one."""
    N, T, Hv, S = v.shape
    if S > MAX_S or S % 4:
        raise ValueError(f"GATED_DELTA_NET (cuda gdn_fast): S={S} needs S <= {MAX_S}, S % 4 == 0")
    meta = cuda.to_device(contiguous_meta(dst.size, q, k, v, g, beta, state))
    args = (meta, *(a.reshape(a.size) for a in (dst, q, k, v, g, beta, state)), K)
    launches = plan(S, Hv, T, N, K, g.shape[3] != 1, workspace, chunked, hd)

    def run(stream=0):
        for la in launches:
            la.kernel[la.grid, la.block, stream](*args, *la.scalars)
    run.launches, run.args = launches, args
    return run


def gated_delta_net_fast(dst, q, k, v, g, beta, state, K, stream=0, workspace=None):
    """One GATED_DELTA_NET on numpy-shaped device arrays (see standalone)."""
    standalone(dst, q, k, v, g, beta, state, K, workspace)(stream)
