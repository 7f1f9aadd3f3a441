"""A small stack of gated delta-net layers, named as llama.cpp names a model's tensors, for the
multi-device tests, example and benchmark (a toy: not one of llama.cpp's architectures).

Layer il (ggml ne order, T tokens, D = n_embd, H heads of size S):
    xn = rms_norm(x) * blk.il.attn_norm.weight                    [D, T]
    q, k = l2_norm(blk.il.attn_q/k.weight @ xn)  as [S, H, T, 1]
    v = blk.il.attn_v.weight @ xn                as [S, H, T, 1]
    g = blk.il.ssm_g [1, H, T, 1] (log decay, an input), b = sigmoid(blk.il.ssm_beta @ xn)
    o, s' = build_delta_net_chunking(q, k, v, g, b, blk.il.ssm_state)     (models/delta_net.py)
    x = x + blk.il.attn_output.weight @ o        [D, T]
then the output layer: result_output = output.weight @ (rms_norm(x) * output_norm.weight) [V, T].
No two elementwise ops follow each other, so the elementwise fusion (a kernel generated and
compiled per pattern) never fires: the tests built on it stay cheap on a cold cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from minigraph.core.context import Context
from minigraph.core.graph import Graph
from minigraph.models.delta_net import build_delta_net_autoregressive, build_delta_net_chunking

EPS = 1e-6


@dataclass
class ToyModel:
    ctx: Context
    graph: Graph
    logits: Any                                   # [V, T] (result_output)
    states: list = field(default_factory=list)    # new state per layer [S, S, H, 1]
    weights: dict = field(default_factory=dict)   # name -> leaf


def delta_net_stack(n_layer: int = 2, n_embd: int = 16, n_head: int = 2, head_dim: int = 8, n_tokens: int = 5,
                    n_vocab: int = 12, seed: int = 0, output_layer: bool = True,
                    ctx: Optional[Context] = None) -> ToyModel:
    """Build the stack with random weights (host leafs); returns the graph and its tensors."""
    rng = np.random.default_rng(seed)
    ctx = ctx or Context()
    D, H, S, T = n_embd, n_head, head_dim, n_tokens
    w: dict = {}

    def leaf(name: str, *shape: int, scale: float = 1.0) -> Any:
        t = ctx.from_numpy((scale * rng.standard_normal(shape)).astype(np.float32)).set_name(name)
        w[name] = t
        return t

    x = leaf("inp_embd", T, D)                              # ne [D, T]
    states = []
    for il in range(n_layer):
        p = f"blk.{il}."
        xn = ctx.mul(ctx.rms_norm(x, EPS), leaf(p + "attn_norm.weight", D))
        q = ctx.l2_norm(ctx.reshape_4d(ctx.mul_mat(leaf(p + "attn_q.weight", H * S, D, scale=D ** -0.5), xn),
                                       S, H, T, 1), EPS)
        k = ctx.l2_norm(ctx.reshape_4d(ctx.mul_mat(leaf(p + "attn_k.weight", H * S, D, scale=D ** -0.5), xn),
                                       S, H, T, 1), EPS)
        v = ctx.reshape_4d(ctx.mul_mat(leaf(p + "attn_v.weight", H * S, D, scale=D ** -0.5), xn), S, H, T, 1)
        g = ctx.from_numpy(rng.uniform(-1.0, -0.05, (1, T, H, 1)).astype(np.float32)).set_name(p + "ssm_g")
        w[g.name] = g
        b = ctx.reshape_4d(ctx.sigmoid(ctx.mul_mat(leaf(p + "ssm_beta", H, D, scale=D ** -0.5), xn)), 1, H, T, 1)
        s = leaf(p + "ssm_state", 1, H, S, S, scale=0.1)     # ne [S, S, H, 1]
        build = build_delta_net_autoregressive if T == 1 else build_delta_net_chunking
        o, s_new = build(ctx, q, k, v, g, b, s)
        o = ctx.reshape_2d(ctx.cont(o), S * H, T)
        y = ctx.mul_mat(leaf(p + "attn_output.weight", D, H * S, scale=(H * S) ** -0.5), o)
        x = ctx.add(x, y)
        states.append(s_new)
    if output_layer:
        xn = ctx.mul(ctx.rms_norm(x, EPS), leaf("output_norm.weight", D))
        logits = ctx.mul_mat(leaf("output.weight", n_vocab, D, scale=D ** -0.5), xn).set_name("result_output")
    else:
        logits = x.set_name("l_out")
    gf = ctx.new_graph()
    gf.build_forward_expand(logits)
    for s in states:
        gf.build_forward_expand(s)
    return ToyModel(ctx, gf, logits, states, w)
