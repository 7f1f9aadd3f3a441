"""CUDA kernels of the attention family: FLASH_ATTN_EXT (split-KV flash decoding, any strides).

Slots (common.py convention): 0 dst [DV, n_head, n_q, ne3] f32, 1 q [DK, n_q, n_head, ne3] f32,
2 k [DK, n_kv, n_head_kv, nk3], 3 v [DV, n_kv, n_head_v, nv3] (f32, f16, or bf16 as raw bits: read
in place, converted per element in registers), 4 mask [>= n_kv, >= n_q, m2, m3] f16 or f32,
5 sinks [n_head] f32. Every tensor is read through its strides: permuted cache views, padded rows
and odd element offsets work as they are.

Two launches per node (flash decoding):
  fa_split   grid (kv chunk, kv head x row group, ne3), NW warps a block. The rows of a block are
             RW (query row, head) pairs that read the same K head: the G = n_head / n_head_kv heads
             of a GQA/MQA group times the query rows, so each K row is read once for all of them
             (MLA: 16 heads share every latent row). Each warp is its own stream over every NW-th
             kv row of the block's chunk: lane l holds elements l, l+32, .. of the K row and of each
             row's (pre-scaled) q, dots are warp sums, and an online softmax per row updates the
             lane's output elements. When V is a view of K at offset 0 (MLA) V's values are the K
             values already in registers: V costs no memory traffic at all. The warp writes its
             partial (unnormalised output, running max m, running sum l) to a workspace.
  fa_combine one block per (head, query row, batch): merges the partials of all chunks and warps
             (weights exp(m_t - M)), adds the sink's exp(sink - M) to the denominator, writes dst.
The chunk count is chosen at plan time so that few queries over a long cache (decode) still fill
the GPU. A row whose every score is -inf (and no sink) gives 0, as ggml. On a real GPU, f16 K/V
run faster chunk kernels with the same partials (`kernel_path(node)` says which): first the CUDA
C++ kernels of attention_mma.cu (cp.async pipeline, tensor cores; `attention_mma.refusal(node)`
says when not), else the Numba tensor-core kernel of attention_tc.py (`tc_refusal(node)`).

A quantized K or V (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 cache; registered as the op's quantized kernel)
comes as raw bytes, meta in bytes (nb0 = a block's bytes). On a GPU, Q8_0 and Q4_0 K/V whose raw
rows a cp.async fits run attention_mma.cu (blocks decoded in shared memory, q rounded to Q8_0
values; `attention_mma.refusal(node)` says when not); the rest runs fa_split: lane l's element
l + 32 i of a row is element l of block i, so each lane decodes one value of each block in
registers (`qvalue`, ggml's dequantize_row_* arithmetic: the same floats). As on ggml's CPU, a
quantized K is scored against q rounded to Q8_0 values (`round_q8`: the per-block max is a warp
max over the lanes), so CUDA and CPU agree with ggml-python's CPU backend. Speed (H200, MLA decode
n_kv=32768, ne3=8): fa_split 18.3 ms over Q8_0 (8.7 GB/s of cache); attention_mma.cu 232-249 us
over Q8_0 (0.64-0.69 TB/s) and 255 us over Q4_0, against 134 us for the f16 cache (2.26 TB/s):
the decode pass and its extra barrier, not the bytes, set the pace (Q4_0 reads half of Q8_0's
bytes in the same time).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from numba import cuda, float32, int32, int64

from minigraph.core import dtypes
from minigraph.core.buffer import tensor_start
from minigraph.core.registry import register_kernel, register_quant_kernel
from minigraph.ops.attention import KV_QUANT_TYPES

from minigraph.backends.cuda import attention_mma, attention_tc
from minigraph.backends.cuda.common import SIM, SLOT_W, CudaKernel, Launch, at, ne, nelem
from minigraph.backends.cuda.convert import to_f32
from minigraph.backends.cuda.gdn_device import warp_sums  # block-uniform calls only (the simulator syncs)
from minigraph.backends.cuda.quant_blocks import f16_at

WARP = 32
NW = 2 if SIM else 4                 # warps a block of fa_split (each an independent kv stream)
MAX_HEAD = 1024                      # DK and DV a lane group covers (32 lanes x 32 registers)
MAX_RW = 8                           # (query row, head) pairs a warp carries
REG_BUDGET = 160                     # floats a lane holds for its rows: RW * (DK/32 + DV/32) <= this
MAX_PARTS = 256                      # partial results a row's combine merges (chunks x NW)
TARGET_BLOCKS = 4 if SIM else 1056   # fa_split blocks to aim for (8 per SM of a 132-SM H200)
MIN_CHUNK = 4 if SIM else 256        # kv rows a chunk has at least
COMBINE_THREADS = 32 if SIM else 128
MAX_GRID_YZ = 65535
USE_MMA = True                       # f16 K/V on a GPU: the CUDA C++ kernels (attention_mma.cu)
USE_TC = True                        # else the Numba tensor-core chunk kernel (attention_tc.py)
TC_TARGET_BLOCKS = 528               # 2 blocks of 4 warps an SM (254 registers a thread), 2 waves

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (dtypes.TYPE_Q4_0, dtypes.TYPE_Q4_1, dtypes.TYPE_Q5_0, dtypes.TYPE_Q5_1,
                                dtypes.TYPE_Q8_0)


def kv_code(t) -> int:
    """A K/V slot's read mode for fa_split: 0 f32/f16 values, 1 bf16 bits, else its quantized
    ggml type (>= 2: raw block bytes)."""
    if dtypes.is_quantized(t.type):
        return int(t.type)
    return int(t.type == dtypes.TYPE_BF16)


@cuda.jit(device=True)
def qvalue(buf, blk, j, t):
    """Element j (< 32) of the quantized block at byte blk, type t: ggml's dequantize_row_*."""
    d = f16_at(buf, blk)
    if t == Q8_0:
        q = int32(buf[blk + 2 + j])
        return float32(q - 256 if q > 127 else q) * d
    if t == Q4_0 or t == Q4_1:
        b = int32(buf[blk + (2 if t == Q4_0 else 4) + (j & 15)])
        q = (b & 15) if j < 16 else (b >> 4)
        if t == Q4_0:
            return float32(q - 8) * d
        return float32(q) * d + f16_at(buf, blk + 2)
    qh = blk + (4 if t == Q5_1 else 2)
    b = int32(buf[qh + 4 + (j & 15)])
    q = ((b & 15) if j < 16 else (b >> 4)) | (((int32(buf[qh + (j >> 3)]) >> (j & 7)) & 1) << 4)
    if t == Q5_0:
        return float32(q - 16) * d
    return float32(q) * d + f16_at(buf, blk + 2)


@cuda.jit(device=True)
def f16_round(x):
    """x >= 0 rounded to the nearest f16 value, ties to even (GGML_FP32_TO_FP16 of a block scale)."""
    if x == 0.0:
        return float32(0.0)
    m, e = math.frexp(x)                  # x = m 2^e, 0.5 <= m < 1
    bits = 11 if e >= -13 else e + 24     # an f16 keeps 11 significant bits, down to 2^-24
    if bits <= 0:
        return float32(0.0) if bits < 0 or m <= 0.5 else float32(math.ldexp(1.0, int(-24)))
    y = float32(math.ldexp(m, int(bits)))
    r = float32(math.floor(y))
    f = y - r
    if f > 0.5 or (f == 0.5 and r % 2 == 1):
        r += 1
    v = float32(math.ldexp(r, int(e - bits)))
    return v if v <= 65504.0 else float32(math.inf)


if SIM:
    @cuda.jit(device=True)
    def warp_max(scr, red, n):
        """red[:n] maxed over the warp, every lane gets them (the simulator: shared memory)."""
        tid = cuda.threadIdx.x
        w0 = tid - tid % WARP
        cuda.syncthreads()
        for m in range(n):
            scr[tid * n + m] = red[m]
        cuda.syncthreads()
        for m in range(n):
            x = red[m]
            for lane in range(WARP):
                x = max(x, scr[(w0 + lane) * n + m])
            red[m] = x
else:
    @cuda.jit(device=True)
    def warp_max(scr, red, n):
        """red[:n] maxed over the warp by xor butterflies: every lane gets them."""
        for off in (16, 8, 4, 2, 1):
            for m in range(n):
                red[m] = max(red[m], cuda.shfl_xor_sync(0xFFFFFFFF, red[m], off))


@cuda.jit(device=True)
def round_q8(scr, qr, o, am, n):
    """qr[o:o + n] (a lane's q values: register i holds element `lane` of block i) -> their Q8_0
    values as quantize_row_q8_0_ref makes them: d = amax / 127 kept as f16, quants roundf(x / d),
    halves away from zero. am: n floats of scratch. Called block-uniformly (warp_max)."""
    for i in range(n):
        am[i] = abs(qr[o + i])
    warp_max(scr, am, n)
    for i in range(n):
        d = am[i] / float32(127.0)
        idv = float32(1.0) / d if d != 0.0 else float32(0.0)
        x = qr[o + i] * idv
        a = abs(x)
        r = float32(math.floor(a))
        if a - r >= 0.5:
            r += float32(1.0)
        qr[o + i] = (r if x >= 0 else -r) * f16_round(d)


@cuda.jit(device=True)
def alibi(h, max_bias, m0, m1, n_log2):
    if max_bias <= 0.0:
        return float32(1.0)
    return float32(m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1))


_SPLIT: dict = {}


def split_kernel(RW: int, DKL: int, DVL: int):
    """fa_split for RW rows a warp and heads of up to 32*DKL (K) and 32*DVL (V) elements."""
    key = (RW, DKL, DVL)
    if key in _SPLIT:
        return _SPLIT[key]
    QN, AN = RW * DKL, RW * DVL
    SCR = NW * WARP * max(RW, DKL) if SIM else 1

    @cuda.jit
    def fa_split(meta, dst, q, k, v, mask, sinks, scale, max_bias, softcap, prec, v_in_k, has_mask, has_sinks,
                 m0, m1, n_log2, kbf, vbf, chunk, n_parts, part):
        scr = cuda.shared.array(SCR, float32)
        qr = cuda.local.array(QN, float32)      # q rows, lane's elements, times the score scale
        acc = cuda.local.array(AN, float32)     # unnormalised outputs, lane's elements
        kr = cuda.local.array(DKL, float32)     # the current K row, lane's elements
        sr = cuda.local.array(RW, float32)      # scores of the current kv row
        mr = cuda.local.array(RW, float32)      # running max
        lr = cuda.local.array(RW, float32)      # running sum of exp(s - m)
        fr = cuda.local.array(RW, float32)      # rescale of acc for this kv row
        er = cuda.local.array(RW, float32)      # weight of this kv row
        sl = cuda.local.array(RW, float32)      # ALiBi slope
        mo = cuda.local.array(RW, int64)        # the row's mask element at kv 0 (its stride: mask_j)
        am = cuda.local.array(DKL, float32)     # per-block |q| maxima (a quantized K)
        tid = cuda.threadIdx.x
        lane = tid % WARP
        w = tid // WARP
        dk = ne(meta, 1, 0)
        dv = ne(meta, 0, 0)
        n_head = ne(meta, 0, 1)
        n_q = ne(meta, 0, 2)
        n3 = ne(meta, 0, 3)
        n_kv = ne(meta, 2, 1)
        G = n_head // ne(meta, 2, 2)
        n_rows = G * n_q
        n_rg = (n_rows + RW - 1) // RW
        ik2 = cuda.blockIdx.y // n_rg
        r0 = (cuda.blockIdx.y % n_rg) * RW
        i3 = cuda.blockIdx.z
        iv2 = (ik2 * G + r0 % G) // (n_head // ne(meta, 3, 2))   # RW == 1 when V's heads differ from K's
        # row bases and element strides of K and V (meta read once, not per element)
        kb = meta[2 * SLOT_W] + ik2 * meta[2 * SLOT_W + 7] + (i3 // (n3 // ne(meta, 2, 3))) * meta[2 * SLOT_W + 8]
        k0 = meta[2 * SLOT_W + 5]
        k1 = meta[2 * SLOT_W + 6]
        vb = meta[3 * SLOT_W] + iv2 * meta[3 * SLOT_W + 7] + (i3 // (n3 // ne(meta, 3, 3))) * meta[3 * SLOT_W + 8]
        v0 = meta[3 * SLOT_W + 5]
        v1 = meta[3 * SLOT_W + 6]
        sc = scale / softcap if softcap != 0.0 else scale
        for rr in range(RW):
            r = r0 + rr
            h = ik2 * G + r % G
            rq = r // G
            for i in range(DKL):
                d = lane + WARP * i
                x = float32(0.0)
                if r < n_rows and d < dk:
                    x = q[at(meta, 1, d, rq, h, i3)]
                qr[rr * DKL + i] = x
            if kbf >= 2:   # a quantized K is dotted with q's Q8_0 values, as on ggml's CPU
                round_q8(scr, qr, rr * DKL, am, DKL)
            for i in range(DKL):
                qr[rr * DKL + i] *= sc
            for i in range(DVL):
                acc[rr * DVL + i] = float32(0.0)
            mr[rr] = -math.inf
            lr[rr] = float32(0.0)
            sl[rr] = alibi(h, max_bias, m0, m1, n_log2)
            # where the row's mask values start, found once: in the kv loop the four divisions
            # and modulos would cost more than the row's dot product
            mo[rr] = at(meta, 4, 0, r // G, h % ne(meta, 4, 2), i3 % ne(meta, 4, 3)) if has_mask and r < n_rows else 0
        mask_j = meta[4 * SLOT_W + 5]
        share = v_in_k == 0            # V = the first DV values of the K row: take them from kr
        j_lo = cuda.blockIdx.x * chunk
        j_hi = min(n_kv, j_lo + chunk)
        for it in range((j_hi - j_lo + NW - 1) // NW):   # the same count for every warp (warp_sums)
            j = j_lo + it * NW + w
            live = j < j_hi
            jj = j if live else j_lo
            for i in range(DKL):
                d = lane + WARP * i
                x = float32(0.0)
                if kbf >= 2:   # element lane of block i (k0: a block's bytes)
                    x = qvalue(k, kb + jj * k1 + i * k0, lane, kbf)
                elif d < dk:
                    x = to_f32(k[kb + jj * k1 + d * k0], kbf)
                kr[i] = x
            for rr in range(RW):
                p = float32(0.0)
                for i in range(DKL):
                    p += qr[rr * DKL + i] * kr[i]
                sr[rr] = p
            warp_sums(scr, sr, RW)
            for rr in range(RW):
                r = r0 + rr
                s = sr[rr]
                if softcap != 0.0:
                    s = softcap * math.tanh(s)
                if has_mask and r < n_rows:
                    s += sl[rr] * float32(mask[mo[rr] + jj * mask_j])
                f = float32(1.0)
                e = float32(0.0)
                if live and r < n_rows and s != -math.inf:
                    if s > mr[rr]:
                        f = math.exp(mr[rr] - s)      # 0 while nothing was seen (m = -inf)
                        mr[rr] = s
                        e = float32(1.0)
                    else:
                        e = math.exp(s - mr[rr])
                    lr[rr] = lr[rr] * f + e
                fr[rr] = f
                er[rr] = e
            for i in range(DVL):
                d = lane + WARP * i
                x = float32(0.0)
                if share:
                    x = kr[i]
                elif vbf >= 2:
                    x = qvalue(v, vb + jj * v1 + i * v0, lane, vbf)
                elif d < dv:
                    x = to_f32(v[vb + jj * v1 + d * v0], vbf)
                for rr in range(RW):
                    acc[rr * DVL + i] = acc[rr * DVL + i] * fr[rr] + er[rr] * x
        pid = cuda.blockIdx.x * NW + w
        for rr in range(RW):
            r = r0 + rr
            if r < n_rows:
                h = ik2 * G + r % G
                base = (((i3 * n_head + h) * n_q + r // G) * n_parts + pid) * (dv + 2)
                for i in range(DVL):
                    d = lane + WARP * i
                    if d < dv:
                        part[base + d] = acc[rr * DVL + i]
                if lane == 0:
                    part[base + dv] = mr[rr]
                    part[base + dv + 1] = lr[rr]

    _SPLIT[key] = fa_split
    return fa_split


@cuda.jit
def fa_combine(meta, dst, q, k, v, mask, sinks, scale, max_bias, softcap, prec, v_in_k, has_mask, has_sinks,
               m0, m1, n_log2, kbf, vbf, chunk, n_parts, part):
    """dst row (h, iq, i3) = sum_t exp(m_t - M) o_t / (sum_t exp(m_t - M) l_t + exp(sink - M))."""
    wts = cuda.shared.array(MAX_PARTS, float32)
    inv = cuda.shared.array(1, float32)
    tid = cuda.threadIdx.x
    n_head = ne(meta, 0, 1)
    n_q = ne(meta, 0, 2)
    dv = ne(meta, 0, 0)
    row = cuda.blockIdx.x
    h = row % n_head
    iq = (row // n_head) % n_q
    i3 = row // (n_head * n_q)
    base = ((i3 * n_head + h) * n_q + iq) * n_parts * (dv + 2)
    if tid == 0:
        top = -math.inf
        for t in range(n_parts):
            top = max(top, part[base + t * (dv + 2) + dv])
        sk = -math.inf
        if has_sinks:
            sk = sinks[at(meta, 5, h, 0, 0, 0)]
            top = max(top, sk)
        den = float32(0.0)
        for t in range(n_parts):
            mt = part[base + t * (dv + 2) + dv]
            wt = float32(0.0)
            if mt != -math.inf:
                wt = math.exp(mt - top)
            wts[t] = wt
            den += wt * part[base + t * (dv + 2) + dv + 1]
        if sk != -math.inf:
            den += math.exp(sk - top)
        inv[0] = float32(1.0) / den if den > 0.0 else float32(0.0)
    cuda.syncthreads()
    for d in range(tid, dv, cuda.blockDim.x):
        o = float32(0.0)
        for t in range(n_parts):
            o += wts[t] * part[base + t * (dv + 2) + d]
        dst[at(meta, 0, d, h, iq, i3)] = o * inv[0]


# -- planning ---------------------------------------------------------------------------------

def rows_per_warp(node) -> int:
    q, k, v = node.src[0], node.src[1], node.src[2]
    if v.ne[2] != k.ne[2]:
        return 1          # rows of a warp would read different V heads
    dkl, dvl = -(-k.ne[0] // WARP), -(-v.ne[0] // WARP)
    rows = (q.ne[2] // k.ne[2]) * q.ne[1]
    return max(1, min(MAX_RW, rows, REG_BUDGET // (dkl + dvl)))


def plan_split(node) -> tuple[int, int, int]:
    """(RW, chunk, n_chunks): rows a warp, kv rows a chunk, chunks, so the grid fills the GPU."""
    q, k = node.src[0], node.src[1]
    n_kv = k.ne[1]
    rw = rows_per_warp(node)
    n_rg = -(-(q.ne[2] // k.ne[2]) * q.ne[1] // rw)
    base = n_rg * k.ne[2] * q.ne[3]
    want = -(-TARGET_BLOCKS // base)
    n_chunks = max(1, min(want, MAX_PARTS // NW, -(-n_kv // MIN_CHUNK)))
    chunk = max(1, -(-n_kv // n_chunks))
    return rw, chunk, max(1, -(-n_kv // chunk))


def tc_refusal(node) -> Optional[str]:
    """None when the tensor-core chunk kernel (attention_tc.py) runs this node, else why not."""
    q, k, v = node.src[0], node.src[1], node.src[2]
    if SIM or not USE_TC:
        return "the simulator has no tensor cores" if SIM else "USE_TC is off"
    if k.type != dtypes.TYPE_F16 or v.type != dtypes.TYPE_F16:
        return "K and V must be f16"
    if k.ne[0] % 64 or v.ne[0] % 32:
        return f"DK % 64 == 0 and DV % 32 == 0 needed (DK={k.ne[0]}, DV={v.ne[0]})"
    if v.ne[2] != k.ne[2]:
        return "V needs K's head count"
    if k.nb[0] != 2 or tensor_start(k) % 4 or any(x % 4 for x in k.nb[1:]):
        return "K rows must be contiguous and start 4-byte aligned (32-bit loads of f16 pairs)"
    return None


def kernel_path(node) -> str:
    """Which chunk kernel runs the node: "mma" (attention_mma.cu), "tc" (attention_tc.py) or "plain"."""
    if USE_MMA and attention_mma.refusal(node) is None:
        return "mma"
    return "tc" if tc_refusal(node) is None else "plain"


def plan_tc(node) -> tuple[int, int]:
    """(chunk, n_chunks) of the tensor-core kernel: 16 rows a block, TC_TARGET_BLOCKS in all."""
    q, k = node.src[0], node.src[1]
    n_kv = k.ne[1]
    base = -(-(q.ne[2] // k.ne[2]) * q.ne[1] // attention_tc.TILE) * k.ne[2] * q.ne[3]
    n_chunks = max(1, min(-(-TC_TARGET_BLOCKS // base), MAX_PARTS, -(-n_kv // MIN_CHUNK)))
    chunk = -(-n_kv // n_chunks)
    return chunk, -(-n_kv // chunk)


def _launches(node) -> list:
    if nelem(node.ne) == 0:
        return []
    q, k, v = node.src[0], node.src[1], node.src[2]
    n_head, n_q, n3 = q.ne[2], q.ne[1], q.ne[3]
    max_bias = float(node.op_params["max_bias"])
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    dv = v.ne[0]
    path = kernel_path(node)
    if path == "mma":
        return [Launch(kern, grid, block, extra) for kern, grid, block, extra in attention_mma.launches(node, m0, m1, n_log2)]
    if path == "tc":
        chunk, n_chunks = plan_tc(node)
        n_parts = n_chunks
        n_rg = -(-(n_head // k.ne[2]) * n_q // attention_tc.TILE)
        kern, block = attention_tc.tc_kernel(k.ne[0], dv), attention_tc.TC_WARPS * WARP
    else:
        rw, chunk, n_chunks = plan_split(node)
        n_parts = n_chunks * NW
        n_rg = -(-(n_head // k.ne[2]) * n_q // rw)
        kern, block = split_kernel(rw, -(-k.ne[0] // WARP), -(-dv // WARP)), NW * WARP
    part = cuda.device_array(max(1, n_head * n_q * n3 * n_parts * (dv + 2)), np.float32)
    extra = (m0, m1, n_log2, kv_code(k), kv_code(v), chunk, n_parts, part)
    return [Launch(kern, (n_chunks, n_rg * k.ne[2], n3), (block,), extra),
            Launch(fa_combine, (n_head * n_q * n3,), (COMBINE_THREADS,), extra)]


def _supports(node) -> Optional[str]:
    q, k, v, mask, sinks = node.src
    for role, t in (("k", k), ("v", v)):
        if t.type not in dtypes.FLOAT_TYPES and t.type not in KV_QUANT_TYPES:
            return (f"FLASH_ATTN_EXT: CUDA reads {role} as f32/f16/bf16 or q8_0/q4_0/q4_1/q5_0/q5_1, "
                    f"got {dtypes.type_name(t.type)}")
    if q.type != dtypes.TYPE_F32 or node.type != dtypes.TYPE_F32 or (sinks is not None and sinks.type != dtypes.TYPE_F32):
        return "FLASH_ATTN_EXT: CUDA takes f32 q, sinks and dst"
    if mask is not None and mask.type not in (dtypes.TYPE_F32, dtypes.TYPE_F16):
        return f"FLASH_ATTN_EXT: CUDA reads the mask as f16/f32, got {dtypes.type_name(mask.type)}"
    dk, dv = k.ne[0], v.ne[0]
    if max(dk, dv) > MAX_HEAD:
        return f"FLASH_ATTN_EXT: CUDA kernel keeps head sizes <= {MAX_HEAD} in registers (DK={dk}, DV={dv})"
    rw = rows_per_warp(node)
    n_rg = -(-(q.ne[2] // k.ne[2]) * q.ne[1] // rw)
    if n_rg * k.ne[2] > MAX_GRID_YZ or q.ne[3] > MAX_GRID_YZ:
        return (f"FLASH_ATTN_EXT: CUDA grid needs n_head * n_q / {rw} <= {MAX_GRID_YZ} and ne3 <= {MAX_GRID_YZ} "
                f"(n_head={q.ne[2]}, n_q={q.ne[1]}, ne3={q.ne[3]})")
    return None


register_kernel("FLASH_ATTN_EXT", "cuda", CudaKernel(_launches, "flash_attn_ext"), supports=_supports)
# a quantized cache: the same launches (fa_split decodes the blocks; the f16 fast paths refuse it)
register_quant_kernel("FLASH_ATTN_EXT", "cuda", CudaKernel(_launches, "flash_attn_ext"), supports=_supports)
