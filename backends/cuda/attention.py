"""CUDA kernel of the attention family: FLASH_ATTN_EXT (f32 q/k/v/mask/sinks, any strides).

Slots (common.py convention): 0 dst [DV, n_head, n_q, ne3], 1 q [DK, n_q, n_head, ne3],
2 k [DK, n_kv, n_head_kv, nk3], 3 v [DV, n_kv, n_head_v, nv3], 4 mask [>= n_kv, >= n_q, m2, m3],
5 sinks [n_head]. One block per (head, query row, batch) walks the kv range with an online
softmax: per kv position its threads load the K row into shared memory while each sums its
share of q.k, the block reduces the dot, and each thread updates its own output elements. When
V is a view of K (v_in_k >= 0) V's values are read from that shared K row, not from memory
again. Plain and correct first; not tuned (no tensor cores, one kv row per step).
"""
from __future__ import annotations

import math
from typing import Optional

from numba import cuda, float32, float64

from minigraph.core.registry import register_kernel

from minigraph.backends.cuda.common import SIM, CudaKernel, Launch, at, block_sum, f32_only, ne, nelem

FA_BLOCK = 32 if SIM else 128   # threads per block (a power of two: block_sum)
MAX_HEAD = 1024                 # DK and DV a block keeps in shared memory (f32)


@cuda.jit
def flash_attn_ext(meta, dst, q, k, v, mask, sinks, scale, max_bias, softcap, prec, v_in_k, has_mask,
                   has_sinks, m0, m1, n_log2):
    sh_q = cuda.shared.array(MAX_HEAD, float32)
    sh_k = cuda.shared.array(MAX_HEAD, float32)
    sh_o = cuda.shared.array(MAX_HEAD, float32)
    sh_r = cuda.shared.array(FA_BLOCK, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n_head = ne(meta, 0, 1)
    n_q = ne(meta, 0, 2)
    b = cuda.blockIdx.x
    h = b % n_head
    iq1 = (b // n_head) % n_q
    i3 = b // (n_head * n_q)
    dk = ne(meta, 1, 0)
    dv = ne(meta, 0, 0)
    n_kv = ne(meta, 2, 1)
    ik2 = h // (n_head // ne(meta, 2, 2))
    ik3 = i3 // (ne(meta, 0, 3) // ne(meta, 2, 3))
    iv2 = h // (n_head // ne(meta, 3, 2))
    iv3 = i3 // (ne(meta, 0, 3) // ne(meta, 3, 3))
    sc = scale / softcap if softcap != 0.0 else scale
    slope = 1.0
    if max_bias > 0.0:
        slope = m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1)
    for d in range(tid, dk, nt):
        sh_q[d] = q[at(meta, 1, d, iq1, h, i3)]
    for d in range(tid, dv, nt):
        sh_o[d] = 0.0
    cuda.syncthreads()
    m_run = -math.inf
    l_run = 0.0
    for j in range(n_kv):
        mv = 0.0
        if has_mask:
            mv = slope * mask[at(meta, 4, j, iq1, h % ne(meta, 4, 2), i3 % ne(meta, 4, 3))]
            if mv == -math.inf:
                continue   # the same for every thread of the block
        part = 0.0
        for d in range(tid, dk, nt):
            kd = k[at(meta, 2, d, j, ik2, ik3)]
            sh_k[d] = kd
            part += sh_q[d] * kd
        s = block_sum(sh_r, part) * sc   # block_sum's barriers also publish sh_k
        if softcap != 0.0:
            s = softcap * math.tanh(s)
        s += mv
        f = 1.0
        e = 1.0
        if s > m_run:
            f = math.exp(m_run - s)
            m_run = s
        else:
            e = math.exp(s - m_run)
        l_run = l_run * f + e
        for d in range(tid, dv, nt):
            vd = sh_k[v_in_k + d] if v_in_k >= 0 else v[at(meta, 3, d, j, iv2, iv3)]
            sh_o[d] = sh_o[d] * f + e * vd
        cuda.syncthreads()   # sh_k is rewritten by the next kv row
    f = 1.0
    if has_sinks:
        sk = sinks[at(meta, 5, h, 0, 0, 0)]
        if sk > m_run:
            f = math.exp(m_run - sk)
            l_run = l_run * f + 1.0
        else:
            l_run += math.exp(sk - m_run)
    inv = f / l_run if l_run != 0.0 else 0.0
    for d in range(tid, dv, nt):
        dst[at(meta, 0, d, h, iq1, i3)] = sh_o[d] * inv


def _launches(node) -> list:
    if nelem(node.ne) == 0:
        return []
    n_head = node.src[0].ne[2]
    max_bias = float(node.op_params["max_bias"])
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    n_rows = node.ne[1] * node.ne[2] * node.ne[3]
    return [Launch(flash_attn_ext, (n_rows,), (FA_BLOCK,), (m0, m1, n_log2))]


def _supports(node) -> Optional[str]:
    reason = f32_only(node)
    if reason:
        return reason
    dk, dv = node.src[1].ne[0], node.src[2].ne[0]
    if max(dk, dv) > MAX_HEAD:
        return f"FLASH_ATTN_EXT: CUDA kernel keeps head sizes <= {MAX_HEAD} in shared memory (DK={dk}, DV={dv})"
    return None


register_kernel("FLASH_ATTN_EXT", "cuda", CudaKernel(_launches, "flash_attn_ext"), supports=_supports)
