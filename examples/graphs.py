"""Targets for the `minigraph` command: each function takes a Context and keyword parameters
(given on the command line as `-p name=value`) and returns the output tensor or tensors.

    minigraph dump examples/graphs.py:mlp -p n_tokens=8
    minigraph dump examples/graphs.py:delta_net -p n_tokens=70 --format dot > dn.dot
    minigraph dump examples/graphs.py:delta_net --profile --top 5
    minigraph compare examples/graphs.py:mlp --backends cpu,reference
"""
from __future__ import annotations

import numpy as np

import minigraph as mg
from minigraph.models.delta_net import build_delta_net_chunking, build_delta_net_fused


def _input(ctx: mg.Context, rng: np.random.Generator, name: str, ne: list[int],
           lo: float = -1.0, hi: float = 1.0) -> mg.Tensor:
    """A named f32 leaf of ggml shape ne (numpy shape reversed(ne)) with uniform values."""
    return ctx.from_numpy(rng.uniform(lo, hi, size=tuple(reversed(ne))).astype(np.float32)).set_name(name)


def mlp(ctx: mg.Context, n_embd: int = 64, n_ff: int = 128, n_tokens: int = 8, seed: int = 0) -> mg.Tensor:
    """A llama-style feed-forward block: rms_norm -> (silu(x W_gate) * x W_up) W_down + residual."""
    rng = np.random.default_rng(seed)
    x = _input(ctx, rng, "x", [n_embd, n_tokens])
    norm_w = _input(ctx, rng, "ffn_norm", [n_embd], 0.5, 1.5)
    w_gate = _input(ctx, rng, "ffn_gate", [n_embd, n_ff], -0.1, 0.1)
    w_up = _input(ctx, rng, "ffn_up", [n_embd, n_ff], -0.1, 0.1)
    w_down = _input(ctx, rng, "ffn_down", [n_ff, n_embd], -0.1, 0.1)
    cur = ctx.mul(ctx.rms_norm(x, 1e-6), norm_w).set_name("attn_norm")
    gate = ctx.silu(ctx.mul_mat(w_gate, cur)).set_name("ffn_gate_act")
    up = ctx.mul_mat(w_up, cur).set_name("ffn_up_out")
    down = ctx.mul_mat(w_down, ctx.mul(gate, up)).set_name("ffn_down_out")
    return ctx.add(down, x).set_name("ffn_out")


def delta_net(ctx: mg.Context, n_tokens: int = 70, head_dim: int = 16, n_heads: int = 2, n_seqs: int = 1,
              fused: bool = False, seed: int = 0) -> tuple[mg.Tensor, mg.Tensor]:
    """A gated delta-net layer as llama.cpp builds it (chunked, minigraph.models.delta_net), or
    the fused GATED_DELTA_NET op with fused=True. Returns (output, new_state)."""
    rng = np.random.default_rng(seed)
    S, H, T, N = head_dim, n_heads, n_tokens, n_seqs
    q = ctx.l2_norm(_input(ctx, rng, "q", [S, H, T, N]), 1e-6)
    k = ctx.l2_norm(_input(ctx, rng, "k", [S, H, T, N]), 1e-6)
    v = _input(ctx, rng, "v", [S, H, T, N])
    g = _input(ctx, rng, "g", [1, H, T, N], -2.0, -0.01)
    b = _input(ctx, rng, "beta", [1, H, T, N], 0.0, 1.0)
    s = _input(ctx, rng, "state", [S, S, H, N])
    build = build_delta_net_fused if fused else build_delta_net_chunking
    out, state = build(ctx, q, k, v, g, b, s)
    return out.set_name("dn_out"), state.set_name("dn_state")
