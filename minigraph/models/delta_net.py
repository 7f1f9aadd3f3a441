"""llama.cpp's delta-net layer builders (src/models/delta-net-base.cpp) on a ggml-style context.

Each builder takes a context that follows the transcription rule (ggml_X(ctx, ...) is ctx.X(...)):
a minigraph Context, or minigraph.testing.ggml_bridge.GgmlContext to run on the real ggml. Inputs
(ggml ne order): q, k [S_k, H_k, n_tokens, n_seqs], v [S_v, H_v, n_tokens, n_seqs], g (log-decay)
[1 or S_v, H_v, n_tokens, n_seqs], b (beta) [1, H_v, n_tokens, n_seqs], s [S_v, S_v, H_v, n_seqs]
(transposed: element [j*S + i] is S[i][j]). Each returns (output [S_v, H_v, n_tokens, n_seqs],
new_state [S_v, S_v, H_v, n_seqs]).

  build_delta_net_chunking        chunks of 64 tokens (GDA) / 16 (KDA), padded; solve_tri per chunk
  build_delta_net_autoregressive  n_tokens == 1, broadcast mul + sum_rows
  build_delta_net_fused           the GATED_DELTA_NET op and two views of its packed result

Verified on the real ggml (ggml-python 0.0.45 CPU, tests/test_delta_net_ggml.py, S = 16, H = 2):
  * chunking, H_v == H_k, GDA and KDA, n_tokens 1/5/64/65/100, n_seqs 1/2: matches the fused op and
    the float64 reference (ops/gdn_reference.py) to <= 7.2e-7 max abs error (output and state).
  * autoregressive GDA (H_v == H_k and H_v == 2*H_k), n_seqs 1/2: <= 1.4e-7.
  * fused: <= 2.8e-7; its K-slot result equals the reference on the written slots.

(a) GQA (H_v = 2*H_k) in the chunked graph: there is no disagreement to measure, because the graph
    cannot be built on ggml. Its first head-mixing op, k_b = ggml_mul(k, b) with k [S, T, H_k, n]
    and b [1, T, H_v, n], fails GGML_ASSERT(ggml_can_repeat(b, a)) and ggml ABORTS the process
    (H_k % H_v != 0). Later ops would broadcast through mul_mat, which maps value head h to k head
    h / r (block), while the fused op and the autoregressive graph (ggml_mul / ggml_repeat
    broadcasting) tile, h % H_k. llama.cpp's callers repeat q/k up to H_v heads before calling the
    builders. Measured: repeating q/k in tiled order (ggml_repeat_4d) makes the chunked graph equal
    the fused op on the H_k-head inputs (7.2e-7); an interleaved repeat (h // r) differs by ~1.9.
    The autoregressive graph takes H_k heads directly and agrees with the fused op (tiled).
(b) KDA in the autoregressive graph: confirmed wrong w.r.t. the fused op. g is reshaped to
    [1, S_k, H_v, n_seqs] and multiplied into s [S_v, S_v, H_v, n_seqs], so exp(g) scales along ne1,
    the VALUE index j, while ggml_gated_delta_net (and the chunked graph) decay along the key index
    i. One token, n_seqs 2: state differs by up to 0.21, output by 0.13; the graph matches a
    value-index-decay recurrence to 1e-7. GDA (scalar gate) is unaffected. The chunked graph's KDA
    path agrees with the fused op (<= 4.2e-7).
Note: the chunked graph detects KDA as g->ne[0] == S_k && g->ne[1] == H_k (as llama.cpp does).
"""
from __future__ import annotations

import math
from typing import Any

Tensor = Any    # a minigraph Tensor or a ggml_bridge.GgmlTensor: anything with ne, nb, type
Context = Any   # a minigraph Context or a ggml_bridge.GgmlContext: ctx.X(...) is ggml_X(ctx, ...)

# ggml's enum values (GGML_TRI_TYPE_*), so the builders need no import of either library
TRI_TYPE_LOWER_DIAG = 2
TRI_TYPE_LOWER = 3
CHUNK_SIZE_GDA = 64
CHUNK_SIZE_KDA = 16

from minigraph.core.tensor import row_size as _row_size  # noqa: E402  (ggml_row_size)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, g: Tensor, b: Tensor, s: Tensor, ar: bool) -> None:
    """The GGML_ASSERTs shared by the three builders, as ValueErrors."""
    S_k, H_k, T, N = q.ne
    S_v, H_v = v.ne[0], v.ne[1]
    ok = (S_k == S_v and H_v % H_k == 0 and k.ne == q.ne and v.ne == (S_v, H_v, T, N)
          and g.ne[0] in (1, S_v) and g.ne[1:] == (H_v, T, N) and b.ne == (1, H_v, T, N)
          and s.ne == (S_v, S_v, H_v, N) and (T == 1 or not ar))
    if not ok:
        raise ValueError(f"delta_net: bad shapes q{q.ne} k{k.ne} v{v.ne} g{g.ne} b{b.ne} s{s.ne}"
                         + (" (autoregressive needs n_tokens == 1)" if ar else ""))


def _slice_2d(ctx: Context, t: Tensor, c: int) -> Tensor:
    """[x, y, c, b] -> [x, y, 1, b]: slice c of the third dimension (llama.cpp's get_slice_2d)."""
    return ctx.view_4d(t, t.ne[0], t.ne[1], 1, t.ne[3], t.nb[1], t.nb[2], t.nb[3], t.nb[2] * c)


def build_delta_net_chunking(ctx: Context, q: Tensor, k: Tensor, v: Tensor, g: Tensor, b: Tensor,
                             s: Tensor, *, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Chunked gated delta rule from plain ops. Returns (output, new_state).

    q, k [S_k, H_k, n_tokens, n_seqs], v [S_v, H_v, n_tokens, n_seqs], g [1 or S_v, H_v, n_tokens, n_seqs],
    b [1, H_v, n_tokens, n_seqs], s [S_v, S_v, H_v, n_seqs] -> output [S_v, H_v, n_tokens, n_seqs],
    new_state [S_v, S_v, H_v, n_seqs]. Chunks of 64 tokens (GDA) or 16 (KDA) unless `chunk_size`.
    """
    _check_shapes(q, k, v, g, b, s, ar=False)
    S_k, H_k, n_tokens, n_seqs = q.ne
    S_v, H_v = v.ne[0], v.ne[1]
    kda = g.ne[0] == S_k and g.ne[1] == H_k

    q = ctx.scale(q, 1.0 / math.sqrt(S_k))
    q, k, v, g, b = (ctx.permute(t, 0, 2, 1, 3) for t in (q, k, v, g, b))  # [x, n_tokens, H, n_seqs]

    CS = chunk_size or (CHUNK_SIZE_KDA if kda else CHUNK_SIZE_GDA)
    pad = (CS - n_tokens % CS) % CS
    n_chunks = (n_tokens + pad) // CS
    q, k, v, g, b = (ctx.pad(t, 0, pad, 0, 0) for t in (q, k, v, g, b))

    v_b = ctx.mul(v, b)
    k_b = ctx.mul(k, b)

    q = ctx.reshape_4d(q, S_k, CS, n_chunks, H_k * n_seqs)
    k = ctx.reshape_4d(k, S_k, CS, n_chunks, H_k * n_seqs)
    k_b = ctx.reshape_4d(k_b, S_k, CS, n_chunks, H_v * n_seqs)
    v = ctx.reshape_4d(v, S_v, CS, n_chunks, H_v * n_seqs)
    v_b = ctx.reshape_4d(v_b, S_v, CS, n_chunks, H_v * n_seqs)
    g = ctx.reshape_4d(g, g.ne[0], CS, n_chunks, H_v * n_seqs)
    b = ctx.reshape_4d(b, 1, CS, n_chunks, H_v * n_seqs)

    g_cs = ctx.cumsum(ctx.cont(ctx.transpose(g)))                   # [CS, g_0, n_chunks, H_v*n_seqs]

    if kda:
        CHB = n_chunks * H_k * n_seqs
        g_cs_i = ctx.reshape_4d(g_cs, CS, 1, S_k, CHB)
        g_cs_j = ctx.repeat_4d(ctx.reshape_4d(g_cs, 1, CS, S_k, CHB), CS, CS, S_k, CHB)
        decay_mask = ctx.exp(ctx.tri(ctx.sub(g_cs_j, g_cs_i), TRI_TYPE_LOWER_DIAG))
        # [S_k, CS_j, CS_i, CHB]: the two chunk axes swap places
        decay_mask = ctx.cont_4d(ctx.permute(decay_mask, 2, 1, 0, 3), S_k, CS, CS, CHB)

        k_b_i = ctx.reshape_4d(k_b, S_k, CS, 1, CHB)
        k_j = ctx.reshape_4d(k, S_k, 1, CS, CHB)
        q_i = ctx.reshape_4d(q, S_k, CS, 1, CHB)
        kb = ctx.mul_mat(ctx.mul(decay_mask, k_b_i), k_j)            # [CS, 1, CS, CHB]
        kq = ctx.mul_mat(ctx.mul(decay_mask, q_i), k_j)
        kb = ctx.cont(ctx.transpose(ctx.reshape_4d(kb, CS, CS, n_chunks, H_v * n_seqs)))
        kq = ctx.cont(ctx.transpose(ctx.reshape_4d(kq, CS, CS, n_chunks, H_v * n_seqs)))
    else:
        g_cs_j = ctx.repeat_4d(ctx.reshape_4d(g_cs, 1, CS, n_chunks, H_v * n_seqs), CS, CS, n_chunks, H_v * n_seqs)
        decay_mask = ctx.exp(ctx.tri(ctx.sub(g_cs_j, g_cs), TRI_TYPE_LOWER_DIAG))
        kb = ctx.mul(ctx.mul_mat(k, k_b), decay_mask)                # [CS, CS, n_chunks, H*n_seqs]
        kq = ctx.mul(ctx.mul_mat(k, q), decay_mask)

    kq = ctx.tri(kq, TRI_TYPE_LOWER_DIAG)
    attn = ctx.tri(kb, TRI_TYPE_LOWER)                               # strictly lower part

    identity = ctx.diag(ctx.fill(ctx.view_1d(attn, CS, 0), 1.0))
    lhs = ctx.add(attn, identity)
    lin_solve = ctx.solve_tri(lhs, ctx.neg(attn), True, True, False)
    attn = ctx.add(lin_solve, identity)                              # (I + A)^-1, [CS, CS, n_chunks, H*n_seqs]

    v = ctx.mul_mat(ctx.cont(ctx.transpose(v_b)), attn)              # [S_v, CS, n_chunks, H_v*n_seqs]
    g_exp = ctx.exp(g_cs)                                            # [CS, g_0, n_chunks, H_v*n_seqs]
    k_b = ctx.cont(ctx.transpose(k_b))
    k_cd = ctx.mul_mat(ctx.mul(k_b, g_exp), attn)                    # [S_k, CS, n_chunks, H*n_seqs]
    q_g_exp = ctx.mul(q, ctx.cont(ctx.transpose(g_exp)))

    # last cumulative gate of each chunk: [1, g_0, n_chunks, H_v*n_seqs]
    g_last = ctx.view_4d(g_cs, 1, g_cs.ne[1], g_cs.ne[2], g_cs.ne[3], g_cs.nb[1], g_cs.nb[2], g_cs.nb[3],
                         _row_size(g_cs.type, g_cs.ne[0] - 1))
    g_last = ctx.cont(g_last)
    g_last_exp_t = ctx.transpose(ctx.exp(g_last))                    # [g_0, 1, n_chunks, H_v*n_seqs]
    g_diff = ctx.neg(ctx.sub(g_cs, g_last))
    g_diff_exp_t = ctx.cont(ctx.transpose(ctx.exp(g_diff)))
    kg_t = ctx.cont(ctx.transpose(ctx.mul(k, g_diff_exp_t)))         # [CS, S_k, n_chunks, H_v*n_seqs]

    s = ctx.reshape_4d(s, S_v, S_v, 1, H_v * n_seqs)
    v_t = ctx.cont(ctx.transpose(v))                                 # [CS, S_v, n_chunks, H_v*n_seqs]

    for chunk in range(n_chunks):
        ch_k_cd = _slice_2d(ctx, k_cd, chunk)
        ch_v_t = _slice_2d(ctx, v_t, chunk)
        ch_kq = _slice_2d(ctx, kq, chunk)
        ch_q_g_exp = _slice_2d(ctx, q_g_exp, chunk)
        ch_kg_t = _slice_2d(ctx, kg_t, chunk)

        v_t_new = ctx.sub(ch_v_t, ctx.mul_mat(ch_k_cd, s))           # [CS, S_v, 1, H_v*n_seqs]
        v_attn = ctx.mul_mat(v_t_new, ch_kq)                         # [S_v, CS, 1, H_v*n_seqs]
        attn_inter = ctx.mul_mat(s, ch_q_g_exp)
        o_ch = ctx.add(attn_inter, v_attn)
        v = ctx.set_inplace(v, o_ch, v.nb[1], v.nb[2], v.nb[3], chunk * v.nb[2])

        kgv = ctx.mul_mat(ch_kg_t, v_t_new)                          # [S_k, S_v, 1, H*n_seqs]
        s = ctx.add(ctx.mul(s, _slice_2d(ctx, g_last_exp_t, chunk)), kgv)

    rs = _row_size(v.type, S_v)
    o = ctx.view_4d(v, S_v, n_tokens, H_v, n_seqs, rs, rs * CS * n_chunks, rs * CS * n_chunks * H_v, 0)
    o = ctx.permute(o, 0, 2, 1, 3)                                   # [S_v, H_v, n_tokens, n_seqs]
    s = ctx.reshape_4d(s, S_v, S_v, H_v, n_seqs)
    return o, s


def build_delta_net_autoregressive(ctx: Context, q: Tensor, k: Tensor, v: Tensor, g: Tensor, b: Tensor,
                                   s: Tensor) -> tuple[Tensor, Tensor]:
    """One-token gated delta rule from broadcast ops (n_tokens must be 1). Returns (output, new_state).

    Shapes as build_delta_net_chunking; output [S_v, H_v, 1, n_seqs], new_state [S_v, S_v, H_v, n_seqs].
    """
    _check_shapes(q, k, v, g, b, s, ar=True)
    S_k, H_k, n_tokens, n_seqs = q.ne
    H_v = v.ne[1]

    q = ctx.scale(q, 1.0 / math.sqrt(S_k))
    q, k, v = (ctx.permute(t, 0, 2, 1, 3) for t in (q, k, v))         # [S, 1, H, n_seqs]

    g = ctx.reshape_4d(g, 1, g.ne[0], H_v, n_seqs)                   # GDA [1, 1, ...], KDA [1, S_k, ...]
    b = ctx.reshape_4d(b, 1, 1, H_v, n_seqs)

    s = ctx.mul(s, ctx.exp(g))                                       # [S_v, S_v, H_v, n_seqs]
    sk = ctx.sum_rows(ctx.mul(s, k))                                 # [1, S_v, H_v, n_seqs]
    d = ctx.mul(ctx.sub(v, ctx.transpose(sk)), b)                    # [S_v, 1, H_v, n_seqs]
    kd = ctx.mul(ctx.repeat(k, s), ctx.transpose(d))
    s = ctx.add(s, kd)

    o = ctx.sum_rows(ctx.mul(s, q))                                  # [1, S_v, H_v, n_seqs]
    o = ctx.permute(o, 2, 0, 1, 3)                                   # [S_v, H_v, 1, n_seqs]
    return o, s


def build_delta_net_fused(ctx: Context, q: Tensor, k: Tensor, v: Tensor, g: Tensor, b: Tensor, s: Tensor,
                          K: int = 1) -> tuple[Tensor, Tensor]:
    """The fused GATED_DELTA_NET op and views of its packed result. Returns (output, new_state).

    Shapes as build_delta_net_chunking; new_state is snapshot slot 0 (the final state).
    """
    _check_shapes(q, k, v, g, b, s, ar=False)
    n_tokens, n_seqs = q.ne[2], q.ne[3]
    S_v, H_v = v.ne[0], v.ne[1]

    result = ctx.gated_delta_net(q, k, v, g, b, s, K)
    rs = _row_size(result.type, S_v)
    output = ctx.view_4d(result, S_v, H_v, n_tokens, n_seqs, rs, rs * H_v, rs * H_v * n_tokens, 0)
    new_state = ctx.view_4d(result, S_v, S_v, H_v, n_seqs, rs, rs * S_v, rs * S_v * H_v,
                            rs * H_v * n_tokens * n_seqs)
    return output, new_state
