"""GATED_DELTA_NET: the gated delta rule of Qwen3-Next / Qwen3.5 (GDA) and Kimi Linear (KDA).

Inputs (ggml ne order):
  q, k   [S, H_k, T, n_seqs_qk]   value head h reads q/k head h % H_k; q/k seq = seq // (n_seqs // n_seqs_qk)
  v      [S, H_v, T, n_seqs]
  g      [1 or S, H_v, T, n_seqs] log-decay: scalar per head (GDA) or per key row (KDA)
  beta   [1, H_v, T, n_seqs]
  state  [S, S, H_v, n_seqs]      transposed: element [j*S + i] is S[i][j] (i key, j value)
Output: F32 [S*H_v, T*n_seqs + K*S*n_seqs]: the attention output [S, H_v, T, n_seqs], then K state
snapshots [S, S, H_v, n_seqs] (slot 0 = final state, slot s = the state s tokens before the end).

A node may also carry a 7th source, the state destination (the gdn_state_write pass attaches it,
attach_state_dst; ggml-cuda's #23940 and ik_llama #2251 do the same inside their backends): the
final state then goes straight there, typically the recurrent-cache slot llama.cpp would `cpy` it
into, and the result's snapshot slot is left unwritten. Only with K == 1.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from minigraph.core.errors import MinigraphError, expect
from minigraph.core.tensor import Tensor, is_contiguous, row_size

from minigraph.ops.common import F32, check_int, check_tensor
from minigraph.ops.gdn_reference import gated_delta_net_reference
from minigraph.core.registry import WRITTEN_BY, OpDef, builder, register


def _ref(node, q, k, v, g, beta, state, state_dst=None, K=1, bcast=0):
    # sources arrive as (ne3, ne2, ne1, ne0) arrays: exactly the layout the reference takes. The
    # reference keeps the packed result whole: with a state destination its copy (the CPY the pass
    # marked written_by) still reads the final state from here
    out = gated_delta_net_reference(q, k, v, g, beta, state, K, bcast)
    return out.reshape(tuple(reversed(node.ne)))


def _flops(node) -> float:
    S, H, T, N = node.src[2].ne
    return 8.0 * S * S * H * T * N


def _sample(node, i: int, rng: np.random.Generator):
    """q, k unit rows (as l2_norm leaves them: beta |k|^2 < 2 keeps the delta rule stable), gates
    in [-20, -1e-4], beta in [0, 1]; v and the state the default."""
    shape = tuple(reversed(node.src[i].ne))
    if i in (0, 1):
        x = rng.standard_normal(shape)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    if i == 3:
        return rng.uniform(-20.0, -1e-4, size=shape)
    if i == 4:
        return rng.uniform(0.0, 1.0, size=shape)
    return None


def snapshot_offset(node: Tensor, slot: int = 0) -> int:
    """Byte offset of state snapshot `slot` in a GATED_DELTA_NET result (after the output
    [S, H_v, T, n_seqs]; each snapshot [S, S, H_v, n_seqs] f32)."""
    S, H, T, N = node.src[2].ne
    return 4 * S * H * (T * N + slot * S * N)


def _rebuild(ctx, spec, *srcs) -> Tensor:
    t = ctx.gated_delta_net(*srcs[:6], spec.params.get("K"))
    if spec.params.get("bcast"):
        gated_delta_net_set_bcast(t, spec.params["bcast"])
    if len(srcs) > 6:
        attach_state_dst(t, srcs[6])
    return t


# bcast: the q/k head map, set by gated_delta_net_set_bcast (0 tiled, 1 interleaved); source 6,
# when present, is written, never read (attach_state_dst)
GATED_DELTA_NET = register(OpDef("GATED_DELTA_NET", "gated_delta_net", _ref, params=("K", "bcast"), flops=_flops,
                                 sample=_sample, rebuild=_rebuild, param_defaults={"bcast": 0},
                                 shape_only=(6,), written_srcs=(6,), written_at=lambda node, slot: snapshot_offset(node)))

GDN_BCAST_TILED = 0         # value head h reads q/k head h % H_k (ggml_repeat's order; ggml's op)
GDN_BCAST_INTERLEAVED = 1   # value head h reads q/k head h // (H_v / H_k) (llama.cpp's Qwen3-Next repeat)


def gated_delta_net_set_bcast(a: Tensor, bcast: int) -> None:
    """How a GATED_DELTA_NET node maps value heads to q/k heads when H_v > H_k (no context, like
    ggml_flash_attn_ext_set_prec): GDN_BCAST_TILED (0, the default: head h reads h % H_k, what
    ggml_repeat builds) or GDN_BCAST_INTERLEAVED (1: h // (H_v / H_k), what llama.cpp's Qwen3-Next
    builds with reshape / repeat_4d / reshape). ggml.h plans this as
    ggml_gated_delta_net_set_bcast (TODO TAG_GGML_GDN_BCAST); minigraph has it now, so the
    fusion passes can drop either repeat."""
    expect(isinstance(a, Tensor) and a.op == "GATED_DELTA_NET", "gated_delta_net_set_bcast",
           "expects a GATED_DELTA_NET node", *([a] if isinstance(a, Tensor) else []))
    if (not isinstance(bcast, (int, np.integer)) or isinstance(bcast, bool)
            or bcast not in (GDN_BCAST_TILED, GDN_BCAST_INTERLEAVED)):
        raise MinigraphError(f"gated_delta_net_set_bcast: bcast must be GDN_BCAST_TILED (0) or "
                             f"GDN_BCAST_INTERLEAVED (1), got {bcast!r} for '{a.name or '<unnamed>'}'")
    a.op_params["bcast"] = int(bcast)


def gated_delta_net_get_bcast(a: Tensor) -> int:
    """The q/k head map of a GATED_DELTA_NET node (gated_delta_net_set_bcast)."""
    expect(isinstance(a, Tensor) and a.op == "GATED_DELTA_NET", "gated_delta_net_get_bcast",
           "expects a GATED_DELTA_NET node", *([a] if isinstance(a, Tensor) else []))
    return int(a.op_params.get("bcast", 0))


def attach_state_dst(node: Tensor, dst: Tensor) -> None:
    """Make GATED_DELTA_NET `node` write its final state into `dst` (its 7th source) instead of
    its result's snapshot slot, which stays unwritten. dst: f32, [S, S, H_v, n_seqs] contiguous,
    the layout of the input state (element [j*S + i] of a head is S[i][j]); it may be the input
    state's own memory (an in-place update: every kernel reads a head's rows before it writes
    them). K must be 1. What else may read or write dst, and when, is the caller's to check: the
    gdn_state_write pass does, and is what attaches it."""
    expect(isinstance(node, Tensor) and node.op == "GATED_DELTA_NET" and len(node.src) == 6,
           "gated_delta_net", "a state destination goes on a minigraph GATED_DELTA_NET node without one "
           "(ggml's op has none)",
           *([node] if isinstance(node, Tensor) else []))
    check_tensor("gated_delta_net", dst)
    S, H, T, N, K = gdn_dims(node)
    expect(K == 1, "gated_delta_net", f"a state destination needs K == 1 (one snapshot), got K={K}", node)
    expect(dst.type == F32 and dst.ne == (S, S, H, N) and is_contiguous(dst), "gated_delta_net",
           f"the state destination must be a contiguous f32 [{S}, {S}, {H}, {N}]", node, dst)
    node.src.append(dst)


def mark_state_written(c: Tensor) -> None:
    """Mark CPY node c written_by its source's GATED_DELTA_NET (backends then skip it): c must copy
    that node's whole final state into exactly the node's state destination. How a graph file's
    mark is checked; the gdn_state_write pass sets it where it attaches the destination."""
    a, b = (c.src + [None, None])[:2] if isinstance(c, Tensor) else (None, None)
    gdn = a.root if isinstance(a, Tensor) else None
    sd = state_dst(gdn) if gdn is not None and gdn.op == "GATED_DELTA_NET" else None
    ok = (c.op == "CPY" and sd is not None and b is not None and b.root is sd.root and b.view_offs == sd.view_offs
          and is_contiguous(b) and is_contiguous(a) and a.view_offs == snapshot_offset(gdn)
          and a.ne[0] * a.ne[1] * a.ne[2] * a.ne[3] == sd.ne[0] * sd.ne[1] * sd.ne[2] * sd.ne[3])
    expect(ok, "cpy", "written_by GATED_DELTA_NET marks only the copy of such a node's final state into its "
           "state destination", *[t for t in (c, a, b) if isinstance(t, Tensor)])
    c.op_params[WRITTEN_BY] = "GATED_DELTA_NET"


def state_dst(node: Tensor) -> Optional[Tensor]:
    """The state destination of a GATED_DELTA_NET node (attach_state_dst), or None."""
    return node.src[6] if len(node.src) > 6 else None


def gdn_dims(node: Tensor) -> tuple[int, int, int, int, int]:
    """(S, H_v, T, n_seqs, K) of a GATED_DELTA_NET node."""
    S, H, T, N = node.src[2].ne
    return S, H, T, N, node.op_params["K"]


@builder("gated_delta_net")
def gated_delta_net(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                    K: int = 1) -> Tensor:
    """The gated delta rule over T tokens, every head and sequence in one node (ggml_gated_delta_net).

    Per value head h (reading q/k head h % H_k; gated_delta_net_set_bcast switches to
    h // (H_v / H_k)) and token t: S = exp(g_t) * S (g per head for GDA, per key row for KDA);
    delta = beta_t * (v_t - S^T k_t); S += k_t delta^T; and o_t = S^T q_t / sqrt(S). The caller
    l2-normalises q and k (ctx.l2_norm), as llama.cpp does.

    q:      [S, H_k, T, n_seqs_qk] f32, contiguous rows; H_v % H_k == 0 (GQA), n_seqs % n_seqs_qk == 0.
    k:      [S, H_k, T, n_seqs_qk] f32, q's shape.
    v:      [S, H_v, T, n_seqs] f32, contiguous rows.
    g:      [1, H_v, T, n_seqs] (scalar log-decay per head, GDA) or [S, H_v, T, n_seqs] (per key
            row, KDA) f32.
    beta:   [1, H_v, T, n_seqs] f32, the write strength.
    state:  [S, S, H_v, n_seqs] f32, the initial state, transposed: element [j*S + i] is S[i][j]
            (i key row, j value column).
    K:      state snapshot slots kept, most recent first (speculative-decoding rollback). ggml's
            argument has no default; 1 (the final state only) is what llama.cpp passes.
    result: [S*H_v, T*n_seqs + K*S*n_seqs] f32: the output [S, H_v, T, n_seqs] then K snapshots
            [S, S, H_v, n_seqs] (slot 0 = final state, slot s = s tokens before the end); read
            them with ctx.gated_delta_net_attn and ctx.gated_delta_net_state.
    """
    op = "gated_delta_net"
    check_tensor(op, q, k, v, g, beta, state)
    srcs = (q, k, v, g, beta, state)
    K = check_int(op, "K", K)
    expect(all(t.type == F32 for t in srcs), op, "all inputs must be f32", *srcs)
    S, H, T, N = v.ne
    expect(K >= 1, op, f"K (snapshot slots) must be >= 1, got {K}", *srcs)
    expect(q.ne == k.ne, op, "q and k need the same shape", *srcs)
    expect(q.ne[0] == S and q.ne[2] == T, op, f"q/k must be [S={S}, H_k, T={T}, n_seqs]", *srcs)
    expect(q.ne[1] > 0 and H % q.ne[1] == 0, op, f"H_v={H} must be a multiple of H_k={q.ne[1]}", *srcs)
    expect(q.ne[3] > 0 and N % q.ne[3] == 0, op, f"n_seqs={N} must be a multiple of q/k's {q.ne[3]}", *srcs)
    expect(g.ne[0] in (1, S) and g.ne[1:] == (H, T, N), op, f"g must be [1 or {S}, {H}, {T}, {N}]", *srcs)
    expect(beta.ne == (1, H, T, N), op, f"beta must be [1, {H}, {T}, {N}]", *srcs)
    expect(state.ne == (S, S, H, N), op, f"state must be [{S}, {S}, {H}, {N}]", *srcs)
    return ctx.new_node(GATED_DELTA_NET, F32, [S * H, T * N + K * S * N, 1, 1], list(srcs),
                        params={"K": K, "bcast": GDN_BCAST_TILED})


@builder("gated_delta_net_attn", op="VIEW")
def gated_delta_net_attn(ctx, out: Tensor) -> Tensor:
    """The attention output inside a gated_delta_net result, as a view (no ggml twin).

    llama.cpp takes the same view by hand (ggml_view_4d at offset 0).

    out:    a GATED_DELTA_NET node, [S*H_v, T*n_seqs + K*S*n_seqs] f32.
    result: [S, H_v, T, n_seqs] f32, a contiguous view of out.
    """
    expect(isinstance(out, Tensor) and out.op == "GATED_DELTA_NET", "gated_delta_net_attn",
           "expects the result of gated_delta_net", *([out] if isinstance(out, Tensor) else []))
    S, H, T, N, _ = gdn_dims(out)
    rs = row_size(F32, S)
    return ctx.view_4d(out, S, H, T, N, rs, rs * H, rs * H * T, 0)


@builder("gated_delta_net_state", op="VIEW")
def gated_delta_net_state(ctx, out: Tensor, slot: int = 0) -> Tensor:
    """One state snapshot inside a gated_delta_net result, as a view (no ggml twin).

    out:    a GATED_DELTA_NET node, [S*H_v, T*n_seqs + K*S*n_seqs] f32.
    slot:   0 (the default) = the final state, s = the state s tokens before the end; < K.
    result: [S, S, H_v, n_seqs] f32 (transposed like the input state), a contiguous view of out.
    """
    expect(isinstance(out, Tensor) and out.op == "GATED_DELTA_NET", "gated_delta_net_state",
           "expects the result of gated_delta_net", *([out] if isinstance(out, Tensor) else []))
    S, H, T, N, K = gdn_dims(out)
    slot = check_int("gated_delta_net_state", "slot", slot)
    expect(0 <= slot < K, "gated_delta_net_state", f"slot {slot} must be in 0..{K - 1}", out)
    rs = row_size(F32, S)
    return ctx.view_4d(out, S, S, H, N, rs, rs * S, rs * S * H, snapshot_offset(out, slot))
