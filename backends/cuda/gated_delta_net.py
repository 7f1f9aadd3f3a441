"""CUDA kernel for GATED_DELTA_NET, ggml's fused gated delta rule (Qwen3-Next GDA, Kimi KDA).

Layout (ggml ne order): q, k [S, H_k, T, n_seqs_qk]; v [S, H_v, T, n_seqs]; g [1 or S, H_v, T,
n_seqs]; beta [1, H_v, T, n_seqs]; state [S, S, H_v, n_seqs] stored transposed (element
(i, j) of a head, i fastest, is S[i][j]: i key index, j value index). Value head h reads q/k
head (h // hd) % H_k (hd 1, the op's bcast 0: h % H_k; bcast 1: hd = H_v / H_k, h // hd) and q/k
sequence seq // (n_seqs / n_seqs_qk). dst F32 [S*H_v, T*n_seqs +
K*S*n_seqs]: the output [S, H_v, T, n_seqs], then K state snapshots (slot 0 = final state,
slot s = s tokens before the end, slots s >= T zeroed).

Parallel plan: one block per (value head, seq); thread j owns state column j (S[:, j], the
contiguous row j of the stored state) in a local array for all T tokens. Per token the block
stages k, q and exp(g) in shared memory, then each thread runs two fused passes over its column:

    pass 1: S[i][j] *= exp(g_i);  kv += S[i][j] k_i         (delta_j = (v_j - kv) * beta)
    pass 2: S[i][j] += k_i delta_j;  o += S[i][j] q_i       (out_j = o / sqrt(S))

so decode (T == 1) reads the state once and writes the new state once.

Which kernel runs is decided per node at plan time (`_launches`): the fast kernels of gdn_fast.py
(a warp-per-rows recurrence, or the chunked WY form for long GDA prompts) when every tensor is
contiguous, 16-byte aligned, with S <= 128 and S % 4 == 0; this generic kernel (any strides)
otherwise. `kernel_choice(node)` says which and why.
"""
from __future__ import annotations

import math
from dataclasses import replace

from numba import cuda, float32

from minigraph.core.registry import register_kernel

from minigraph.backends.cuda import gdn_fast
from minigraph.backends.cuda.common import CudaKernel, Launch, at, f32_only, ne

GDN_MAX_S = 128        # state column held per thread (local array size: a compile-time constant)
WARP = 32
MAX_GRID_YZ = 65535


@cuda.jit(device=True)
def _store(meta, dst, flat, x):
    """dst's element `flat` in row-major order (dst is [W, rows]) = x."""
    W = ne(meta, 0, 0)
    dst[at(meta, 0, flat % W, flat // W, 0, 0)] = x


@cuda.jit
def gated_delta_net(meta, dst, q, k, v, g, beta, state, K, hd):
    sk = cuda.shared.array(GDN_MAX_S, float32)
    sq = cuda.shared.array(GDN_MAX_S, float32)
    sg = cuda.shared.array(GDN_MAX_S, float32)
    col = cuda.local.array(GDN_MAX_S, float32)
    h = cuda.blockIdx.x
    seq = cuda.blockIdx.y
    j = cuda.threadIdx.x
    S = ne(meta, 3, 0)
    Hv = ne(meta, 3, 1)
    T = ne(meta, 3, 2)
    N = ne(meta, 3, 3)
    hk = (h // hd) % ne(meta, 1, 1)
    sqk = seq // (N // ne(meta, 1, 3))
    kda = ne(meta, 4, 0) != 1
    scale = float32(1.0 / math.sqrt(S))
    n_attn = S * Hv * T * N
    active = j < S
    if active:
        for i in range(S):
            col[i] = state[at(meta, 6, i, j, h, seq)]
    for t in range(T):
        if active:
            sk[j] = k[at(meta, 2, j, hk, t, sqk)]
            sq[j] = q[at(meta, 1, j, hk, t, sqk)]
            sg[j] = math.exp(g[at(meta, 4, j if kda else 0, h, t, seq)])
        cuda.syncthreads()
        if active:
            kv = float32(0.0)
            for i in range(S):
                x = col[i] * sg[i]
                col[i] = x
                kv += x * sk[i]
            delta = (v[at(meta, 3, j, h, t, seq)] - kv) * beta[at(meta, 5, 0, h, t, seq)]
            o = float32(0.0)
            for i in range(S):
                x = col[i] + sk[i] * delta
                col[i] = x
                o += x * sq[i]
            _store(meta, dst, ((seq * T + t) * Hv + h) * S + j, o * scale)
            slot = T - 1 - t
            if slot < K:
                base = n_attn + ((slot * N + seq) * Hv + h) * S * S + j * S
                for i in range(S):
                    _store(meta, dst, base + i, col[i])
        cuda.syncthreads()  # the next token's k/q/g overwrite the shared arrays
    if active:
        for slot in range(T, K):
            base = n_attn + ((slot * N + seq) * Hv + h) * S * S + j * S
            for i in range(S):
                _store(meta, dst, base + i, float32(0.0))


def kernel_choice(node) -> tuple[str, str]:
    """("chunked" | "recurrent" | "generic", why) for a GATED_DELTA_NET node."""
    refusal = gdn_fast.fast_path_refusal(node)
    if refusal is not None:
        return "generic", refusal
    S, H, T, N = node.src[2].ne
    tc = gdn_fast.tensor_cores()
    where = " (CUDA C++, tensor cores)" if tc else ""
    if gdn_fast.use_chunked(T, node.op_params["K"], node.src[3].ne[0] != 1):
        gates = "KDA" if node.src[3].ne[0] != 1 else "GDA"
        return "chunked", f"{gates}, K == 1, T={T} >= {gdn_fast.TC_MIN_T if tc else gdn_fast.CHUNKED_MIN_T}{where}"
    return "recurrent", "contiguous, S <= 128" + (" (CUDA C++ decode)" if tc and T == 1 else "")


def _launches(node):
    S, H, T, N = node.src[2].ne
    if S * H * N == 0:
        return []
    if gdn_fast.fast_path_refusal(node) is None:
        las = gdn_fast.node_launches(node)
    else:
        las = [Launch(gated_delta_net, (H, N), (max(WARP, -(-S // WARP) * WARP),), (gdn_fast.head_divisor(node),))]
    # every kernel takes K, then the head divisor hd (its first scalar), not the op's bcast flag
    K = node.op_params["K"]
    return [replace(la, scalars=(K, *la.scalars), with_params=False) for la in las]


def _supports(node):
    S, H, T, N = node.src[2].ne
    if len(node.src) > 6:   # a state destination (attach_state_dst): the fast kernels' forms that write one
        why = gdn_fast.fast_path_refusal(node) or gdn_fast.state_dst_refusal(T, node.op_params["K"],
                                                                            node.src[3].ne[0] != 1)
        if why:
            return f"GATED_DELTA_NET: no CUDA kernel here writes a state destination: {why}"
    if S > GDN_MAX_S:
        return f"GATED_DELTA_NET: CUDA kernel holds a state column per thread: S={S} > {GDN_MAX_S}"
    if N > MAX_GRID_YZ:
        return f"GATED_DELTA_NET: n_seqs={N} > {MAX_GRID_YZ} (grid y)"
    return f32_only(node)


register_kernel("GATED_DELTA_NET", "cuda", CudaKernel(_launches, "gated_delta_net"), supports=_supports)
