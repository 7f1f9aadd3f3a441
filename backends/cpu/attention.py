"""CPU kernel of the attention family: FLASH_ATTN_EXT (online softmax, flash-decoding split).

Arrays are (ne3, ne2, ne1, ne0) views with any strides, each in its storage type (f16/bf16 as raw
16 bits, see backends/cpu/storage.py): q (n3, n_head, n_q, DK) f32, k (nk3, n_head_kv, n_kv, DK),
v (nv3, n_head_v, n_kv, DV), mask (m3, m2, >= n_q, >= n_kv) f16/f32, sinks (1, 1, 1, n_head) f32,
dst (n3, n_q, n_head, DV) f32.

A quantized K or V (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: a quantized KV cache) comes as its rows' raw
bytes, (nk3, n_head_kv, n_kv, row bytes) uint8, and each row is dequantized as it is loaded into
the tile (ggml's to_float, the same floats). ggml's CPU kernel scores a quantized K by quantizing
q to K's vec_dot type (Q8_0, or Q8_1 for Q4_1/Q5_1: the same quants and scale) and taking the
type's integer dot product; here each q row is rounded to those Q8_0 values once (`_round_q8`)
and dotted in f32 with the dequantized K rows: the same exact products, summed in another f32
order (measured against ggml-python: NMSE ~1e-13; Q8_1's block sum, which ggml keeps in f16,
adds ~1e-10 for Q4_1/Q5_1).

Work split. A task owns one kv head g of one batch i3 and a few query positions, so its R query
rows (positions x the n_head / n_head_kv heads of the group) all read the same K rows: per block
of KV_BLOCK kv positions it scores every query row of the group against those rows (GQA/MQA
share each K row read). f32, bf16 and f16 rows (F16C) whose values are contiguous are read where
they are stored and converted in registers by the micro-kernels; other K/V rows (quantized, or
values at a stride) are converted once into a contiguous f32 tile. When V is a view of K (param
v_in_k >= 0: V's row sits at that element offset inside K's row), V's values come from the same
rows, already in cache, instead of a second read and conversion. Only the block's columns between its
first and last live (not -inf) logit are loaded and computed: causal prefill skips the blocks
above the diagonal and most of the diagonal ones' dead half, as ggml skips each -inf logit.
When there are fewer than MIN_TASKS tasks (decode: n_q = 1) the kv range is also split into
chunks (flash-decoding); each chunk leaves its running max, sum and unnormalised output, and a
second pass combines them (and the sinks). The prange lanes take tasks from an atomic counter,
the longest (last causal query blocks) first, so uneven tasks or a core busy with another
process do not leave a thread idle.

Speed (2-core Zen 3 dev box): both products are the register-tiled micro-kernels of tile_ir.py
(through tiles.dots / tiles.madd). One core, side by side with a large OpenBLAS sgemm (~80 GFLOP/s)
in one process: the scores 66-78 GFLOP/s and the output update 61-74, where the Numba loops they
replaced ran 50-69 and 52-60; OpenBLAS itself on these small tiles measured 45-67 with its
operand packing. MLA prefill on both cores: 112-132 GFLOP/s, 82-88% of the sgemm's. exp is a
vectorisable polynomial (libm's expf is scalar and cost ~15% of prefill). On AVX-512 (2-core
Zen 5) the micro-kernels take 16-lane vectors and 8-row tiles: MLA decode n_kv=4096 on both cores
173-178 -> 289-320 GFLOP/s, prefill 166-258 -> 281-314 (BENCHMARKS.md).
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from minigraph.core import dtypes
from minigraph.core.registry import OPS, register_kernel, register_quant_kernel

from minigraph.backends.cpu.jit import fetch_add, kernel
from minigraph.backends.cpu.quant_ir import NATIVE_HALF
from minigraph.backends.cpu.tiles import dots, madd
from minigraph.backends.cpu.storage import (BF16, F16, KV_QUANT_TYPES, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, f16_to_f32,
                                            f32_to_f16, load_row, to_f32)
from minigraph.backends.cpu.vexp import exp_nonpos

F32 = dtypes.TYPE_F32

KV_BLOCK = 128         # kv positions per tile: 128 rows of K (576 f32 = 295 KiB) stay in L2
Q_TARGET_ROWS = 64     # query rows (heads x positions) a task aims for; more share each K tile
# Below this many tasks the kv range is split too (flash-decoding). A fixed count, not the thread
# count: numba.get_num_threads() inside a kernel defeats its disk cache; 16 tasks keep up to
# 16 threads busy and cost a merge of 16 partial rows each.
MIN_TASKS = 16
MAX_LANES = 64         # prange lanes taking tasks from the queue (idle lanes cost nothing)
# The products are compiled on their own (not inlined at Numba IR level) so that their float
# flags hold: reassociation lets LLVM vectorise the dot reductions. No nnan/ninf: masked logits
# are -inf. The softmax must not reassociate (exp's range reduction depends on its order).
_FAST = dict(fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True, nogil=True, error_model="numpy")
_EXACT_ORDER = dict(fastmath={"contract", "nsz", "arcp"}, cache=True, nogil=True, error_model="numpy")


def _cache_rows(t, i3, h, j0, n):
    """Rows j0 .. j0+n-1 of head h of a K/V cache, as stored (f32 / uint16 bits), 2-D."""


@overload(_cache_rows, inline="always")
def _cache_rows_impl(t, i3, h, j0, n):
    if t.dtype == types.uint8:   # quantized rows are never read in place (see _in_place)
        return lambda t, i3, h, j0, n: np.empty((0, 0), np.float32)
    return lambda t, i3, h, j0, n: t[i3, h, j0:j0 + n]


@numba.njit(inline="always", cache=True, nogil=True)
def _in_place(t, type_):
    """Whether the micro-kernels can read this cache's rows where they are stored: f32, bf16, or
    f16 where the CPU converts halves itself, with each row's values contiguous."""
    ok = type_ == F32 or type_ == BF16 or (type_ == F16 and NATIVE_HALF)
    return ok and t.strides[3] == t.itemsize


@numba.njit(inline="always", cache=True, nogil=True)
def _slope(h, n_head, max_bias):
    """ggml's ALiBi slope of head h (1 when max_bias <= 0)."""
    if max_bias <= 0.0:
        return np.float32(1.0)
    n_log2 = 1 << int(math.floor(math.log2(n_head)))
    m0 = 2.0 ** (-max_bias / n_log2)
    m1 = 2.0 ** (-(max_bias / 2.0) / n_log2)
    return np.float32(m0 ** (h + 1) if h < n_log2 else m1 ** (2 * (h - n_log2) + 1))


@numba.njit(**_FAST)
def _row_sum(x, n):
    acc = np.float32(0.0)
    for i in range(n):
        acc += x[i]
    return acc


@numba.njit(**_EXACT_ORDER)
def _row_max(x, n, m):
    """max(m, x[:n]) through 8 running maxima (a max is exact in any order; written out so that
    LLVM vectorises it without being allowed to reassociate the float arithmetic around it)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = m
    n8 = n - n % 8
    for j in range(0, n8, 8):
        m0 = max(m0, x[j])
        m1 = max(m1, x[j + 1])
        m2 = max(m2, x[j + 2])
        m3 = max(m3, x[j + 3])
        m4 = max(m4, x[j + 4])
        m5 = max(m5, x[j + 5])
        m6 = max(m6, x[j + 6])
        m7 = max(m7, x[j + 7])
    for j in range(n8, n):
        m0 = max(m0, x[j])
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@numba.njit(**_EXACT_ORDER)
def _softmax_rows(s, bias, jlo, nr, nj, scale, softcap, slope, G, shared_mask, m_run, l_run, o):
    """Turn scores s[r, :nj] into exp(logit - running max) in place (logit = scale * s, softcapped,
    + slope[r] * mask value); rows whose max grew get their running sum and output o[r] rescaled.
    The mask values of row r sit in bias[r], or in bias[r - r % G] when every head of the group
    shares the mask (shared_mask); bias is zero without a mask."""
    for r in range(nr):
        srow = s[r]
        # a view from jlo: an index with a variable start (brow[jlo + j]) keeps LLVM from
        # vectorising the loop (it cannot rule out a negative, wrapping index)
        brow = (bias[r - r % G] if shared_mask else bias[r])[jlo:jlo + nj]
        sl = slope[r]
        if softcap != 0.0:
            for j in range(nj):
                srow[j] = softcap * math.tanh(srow[j] * scale) + sl * brow[j]
        else:
            for j in range(nj):
                srow[j] = srow[j] * scale + sl * brow[j]
        m_new = _row_max(srow, nj, m_run[r])
        if m_new == -np.inf:   # nothing live in this row yet: its weights are 0
            for j in range(nj):
                srow[j] = 0.0
            continue
        if m_new > m_run[r]:
            if m_run[r] != -np.inf:   # a row with nothing yet has o = 0 and l = 0: no rescale
                f = np.float32(math.exp(m_run[r] - m_new))
                l_run[r] *= f
                orow = o[r]
                for d in range(orow.shape[0]):
                    orow[d] *= f
            m_run[r] = m_new
        for j in range(nj):
            srow[j] = exp_nonpos(srow[j] - m_new)
        l_run[r] += _row_sum(srow, nj)


@numba.njit(inline="always", cache=True, nogil=True)
def _is_quant(type_):
    return type_ == Q8_0 or type_ == Q4_0 or type_ == Q4_1 or type_ == Q5_0 or type_ == Q5_1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _round_q8(x):
    """x (a q row, len % 32 == 0) in place -> its Q8_0 values, as quantize_row_q8_0_ref makes them
    (d = amax / 127 stored as f16, quants roundf(x / d), halves away from zero); Q8_1's quants and
    scale are the same. What ggml's CPU dots with a quantized K row."""
    for b in range(x.shape[0] // 32):
        xb = x[32 * b: 32 * b + 32]
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(xb[j]))
        d = amax / np.float32(127.0)
        idv = np.float32(1.0) / d if d != 0 else np.float32(0.0)
        dh = f16_to_f32(f32_to_f16(d))
        for j in range(32):
            v = xb[j] * idv
            r = np.trunc(v)
            if abs(v - r) >= np.float32(0.5):
                r += np.float32(1.0) if v > 0 else np.float32(-1.0)
            xb[j] = r * dh


@numba.njit(inline="always", cache=True, nogil=True)
def _scratch(R, dk, dv, v_in_k):
    """A lane's tiles: q rows, slopes, K and V blocks (f32, for rows not read in place), scores,
    the block's mask values (zero: what an absent mask adds)."""
    vb = np.empty((KV_BLOCK, dv if v_in_k < 0 else 1), np.float32)
    return (np.empty((R, dk), np.float32), np.empty(R, np.float32), np.empty((KV_BLOCK, dk), np.float32), vb,
            np.empty((R, KV_BLOCK), np.float32), np.zeros((R, KV_BLOCK), np.float32))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _chunk(q, k, v, mask, i3, g, iq0, nq_rows, c0, c1, scale, max_bias, softcap, v_in_k, has_mask,
           k_type, v_type, mask_type, o, m_run, l_run, qt, slope, kb, vb, s, bias):
    """Attend query rows iq0..iq0+nq_rows of every head of kv head g (batch i3) to kv c0..c1.

    Leaves o [R, DV] (unnormalised), m_run [R] (running max), l_run [R] (running sum); row
    r = qi * G + hh is query row iq0 + qi of head g * G + hh. K, V and the mask are read in
    their storage types (k_type, v_type, mask_type), converted as each block is loaded.
    qt .. bias: the lane's scratch (see _scratch); bias must start zero."""
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
    q8 = _is_quant(k_type)
    k_direct = _in_place(k, k_type)
    shared_mask = has_mask and mask.shape[1] == 1
    v_direct = _in_place(v, v_type)
    for r in range(nr):
        h = g * G + r % G
        slope[r] = _slope(h, n_head, max_bias)
        load_row(q[i3, h, iq0 + r // G], qt[r], F32)
        if q8:   # ggml dots a quantized K with q quantized to K's vec_dot type
            _round_q8(qt[r])
        m_run[r] = -np.inf
        l_run[r] = 0.0
        for d in range(dv):
            o[r, d] = 0.0
    for b0 in range(c0, c1, KV_BLOCK):
        jlo, jhi = 0, min(KV_BLOCK, c1 - b0)
        if has_mask:   # the block's live columns: [jlo, jhi) holds every logit that is not -inf
            jlo, jhi = jhi, 0
            n = min(KV_BLOCK, c1 - b0)
            for r in range(nr):
                if shared_mask and r % G:
                    continue   # the group's heads read one mask row per query position
                h = g * G + r % G
                load_row(mask[i3 % mask.shape[0], h % mask.shape[1], iq0 + r // G, b0:b0 + n], bias[r, :n], mask_type)
                for j in range(n):
                    if slope[r] * bias[r, j] != -np.inf:
                        jlo = min(jlo, j)
                        jhi = max(jhi, j + 1)
        if jhi <= jlo:
            continue   # every logit of the block is -inf: nothing to add
        j0, nj = b0 + jlo, jhi - jlo
        if k_direct:   # K rows read where they are stored, converted in registers
            krows = _cache_rows(k, ik3, g, j0, nj)
            dots(qt, nr, krows, nj, dk, s, k_type)
        else:          # each K row converted once into the tile, for every query row of the group
            for j in range(nj):
                load_row(k[ik3, g, j0 + j], kb[j], k_type)
            dots(qt, nr, kb, nj, dk, s, F32)
        _softmax_rows(s, bias, jlo, nr, nj, scale, softcap, slope, G, shared_mask, m_run, l_run, o)
        if v_in_k >= 0:   # V's rows sit inside the K rows just read
            if k_direct:
                madd(s, nr, _cache_rows(k, ik3, g, j0, nj), v_in_k, nj, dv, o, k_type, 1.0)
            else:
                madd(s, nr, kb, v_in_k, nj, dv, o, F32, 1.0)
        elif v_shared and v_direct:
            madd(s, nr, _cache_rows(v, iv3, g, j0, nj), 0, nj, dv, o, v_type, 1.0)
        elif v_shared:
            for j in range(nj):
                load_row(v[iv3, g, j0 + j], vb[j], v_type)
            madd(s, nr, vb, 0, nj, dv, o, F32, 1.0)
        else:   # V has its own head grouping: each row reads its V head directly (vb[0]: one row)
            for r in range(nr):
                iv2 = (g * G + r % G) // (n_head // v_heads)
                for j in range(nj):
                    pj = s[r, j]
                    load_row(v[iv3, iv2, j0 + j], vb[0], v_type)
                    for d in range(dv):
                        o[r, d] += pj * vb[0, d]


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
def flash_attn_ext(dst, q, k, v, mask, sinks, scale, max_bias, logit_softcap, prec, v_in_k, has_mask,
                   has_sinks, dst_type, q_type, k_type, v_type, mask_type, sinks_type):
    """dst[i3, iq1, h, :] = softmax_j(scale*q.k_j (softcapped) + slope_h*mask[iq1, j]) v_j (see
    minigraph.ops.attention); prec is ggml's, both precisions accumulate in f32. Every slot comes
    in its storage type with its type code (*_type; dst, q, sinks are f32)."""
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
    n_tasks = base * n_split
    queue = np.empty(1, np.int64)   # not np.zeros: a parallel loop of its own under parallel=True
    queue[0] = 0
    for lane in prange(min(n_tasks, MAX_LANES)):
        qt, slope, kb, vb, s, bias = _scratch(R, q.shape[3], dv, v_in_k)
        t = fetch_add(queue, 1)
        while t < n_tasks:
            b = t // n_split
            c0 = min(n_kv, (t % n_split) * chunk)
            c1 = min(n_kv, c0 + chunk)
            i3 = b // (n_kvh * n_qblk)
            g = (b // n_qblk) % n_kvh
            # the last query blocks first: under a causal mask they see the most kv positions,
            # and taking the longest tasks first evens out the lanes' ends
            iq0 = (n_qblk - 1 - b % n_qblk) * qb
            _chunk(q, k, v, mask, i3, g, iq0, min(qb, n_q - iq0), c0, c1, sc, max_bias, cap, v_in_k, has_mask,
                   k_type, v_type, mask_type, part_o[t], part_m[t], part_l[t], qt, slope, kb, vb, s, bias)
            t = fetch_add(queue, 1)
    for b in prange(base):
        i3 = b // (n_kvh * n_qblk)
        g = (b // n_qblk) % n_kvh
        iq0 = (n_qblk - 1 - b % n_qblk) * qb
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


_NO_MASK = np.zeros((1, 1, 1, 1), np.uint16)   # an absent mask, typed as the usual f16 one
_QUANT_ENTRIES: dict = {}
_QUANT_LOCK = threading.Lock()


def _quant_entry(arrays: tuple) -> object:
    """The parallel build compiled for these slot dtypes with every array typed as a strided
    (layout 'A') view, and its entry point, which takes any layout: contiguous, permuted and
    padded caches share one compiled form (each costs ~20 s to compile), as in the program."""
    key = tuple(a.dtype for a in arrays)
    entry = _QUANT_ENTRIES.get(key)
    if entry is None:
        with _QUANT_LOCK:
            sig = tuple(numba.types.Array(numba.from_dtype(d), 4, "A") for d in key)
            sig += (numba.types.float64,) * 3 + (numba.types.int64,) * (4 + 6)
            flash_attn_ext.parallel.compile(sig)
            entry = _QUANT_ENTRIES[key] = flash_attn_ext.parallel.overloads[sig].entry_point
    return entry


def _flash_attn_ext_quant(node, build, dst, q, k, v, mask, sinks) -> None:
    """A node with a quantized K and/or V (backends/cpu/quant.py's convention: quantized tensors as
    raw row bytes, the others in their storage types): the same kernel, which dequantizes rows as
    it loads them. The parallel build always, an absent mask as an f16 one, so every quantized
    cache with an f16 mask (or none) runs one compiled form (a pool launch costs ~1 us)."""
    codes = [t.type if t is not None else F32 for t in (node, *node.src)]
    if node.src[3] is None:
        mask, codes[4] = _NO_MASK, dtypes.TYPE_F16
    arrays = (dst, q, k, v, mask, sinks)
    p = OPS["FLASH_ATTN_EXT"].param_values(node)
    _quant_entry(arrays)(*arrays, *p, *codes)


def _quant_supports(node):
    for role, t in (("k", node.src[1]), ("v", node.src[2])):
        if t.type not in dtypes.FLOAT_TYPES and t.type not in KV_QUANT_TYPES:
            return f"FLASH_ATTN_EXT: CPU reads {role} as f32/f16/bf16 or q8_0/q4_0/q4_1/q5_0/q5_1, got {dtypes.type_name(t.type)}"
    return None


# every slot in its storage type, as a strided view: one compiled variant per KV/mask type
register_kernel("FLASH_ATTN_EXT", "cpu", flash_attn_ext, storage_slots=(0, 1, 2, 3, 4, 5))
register_quant_kernel("FLASH_ATTN_EXT", "cpu", _flash_attn_ext_quant, supports=_quant_supports)
