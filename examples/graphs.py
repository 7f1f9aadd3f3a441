"""Targets for the `minigraph` command: each function takes a Context and keyword parameters
(given on the command line as `-p name=value`) and returns the output tensor or tensors.

    minigraph dump examples/graphs.py:mlp -p n_tokens=8
    minigraph dump examples/graphs.py:ffn_quant --profile
    minigraph dump examples/graphs.py:ffn_quant -p n_embd=4096 -p n_ff=14336 -p layer=3 --gguf model.gguf --profile
    minigraph compare examples/graphs.py:ffn_quant --gguf model.gguf --backends cpu,reference
    minigraph dump examples/graphs.py:delta_net -p n_tokens=70 --format dot > dn.dot
    minigraph dump examples/graphs.py:delta_net --profile --top 5
    minigraph compare examples/graphs.py:mlp --backends cpu,reference
    minigraph dump examples/graphs.py:mla_decode -p config=lite -p n_past=4095
    minigraph dump examples/graphs.py:mla_decode -p config=lite -p cache_type=q8_0
    minigraph compare examples/graphs.py:mla_prefill -p flash_attn=0 --fused-vs-unfused
    minigraph dump examples/graphs.py:mla_rope_shift --format dot > shift.dot
"""
from __future__ import annotations

import numpy as np

import minigraph as mg
from minigraph.models import mla
from minigraph.models.delta_net import build_delta_net_autoregressive, build_delta_net_chunking, build_delta_net_fused

MLA_CONFIGS = {"small": mla.SMALL, "q_lora": mla.SMALL_Q_LORA, "lite": mla.DEEPSEEK_V2_LITE}
TYPES = {"f16": mg.TYPE_F16, "f32": mg.TYPE_F32, "q8_0": mg.TYPE_Q8_0, "i32": mg.TYPE_I32, "i64": mg.TYPE_I64}
MLA_CONFIGS["small_q8"] = mla.SMALL_Q8     # cache rows of whole Q8_0 blocks (-p cache_type=q8_0)


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


WEIGHT_TYPES = {mg.type_name(t): t for t in (mg.TYPE_Q4_0, mg.TYPE_Q4_1, mg.TYPE_Q5_0, mg.TYPE_Q5_1, mg.TYPE_Q8_0,
                                               mg.TYPE_Q4_K, mg.TYPE_Q5_K, mg.TYPE_Q6_K, mg.TYPE_F16, mg.TYPE_F32)}


def ffn_quant(ctx: mg.Context, n_embd: int = 256, n_ff: int = 512, n_tokens: int = 1, layer: int = 0,
              gate_up: str = "q4_K", down: str = "q8_0", seed: int = 0) -> mg.Tensor:
    """llama.cpp's feed-forward block of layer `layer` on quantized weights (llm_graph_context::
    build_ffn, LLM_FFN_SILU, parallel gate): ffn_norm, then (silu(W_gate x) * W_up x) W_down and
    the residual. The weights are leaves named as llama.cpp's GGUF files name them
    (blk.{layer}.ffn_norm.weight [n_embd], ffn_gate / ffn_up [n_embd, n_ff] of type gate_up,
    ffn_down [n_ff, n_embd] of type down), with random values unless --gguf FILE gives the
    file's; the input x (ffn_inp [n_embd, n_tokens]) stays random."""
    rng = np.random.default_rng(seed)
    blk = f"blk.{layer}."

    def weight(name: str, ne: list[int], type_: str) -> mg.Tensor:
        w = rng.uniform(-0.1, 0.1, size=tuple(reversed(ne))).astype(np.float32)
        return ctx.from_numpy(w, _pick(WEIGHT_TYPES, type_, "weight type")).set_name(blk + name)

    x = _input(ctx, rng, "ffn_inp", [n_embd, n_tokens])
    norm_w = _input(ctx, rng, blk + "ffn_norm.weight", [n_embd], 0.5, 1.5)
    cur = ctx.mul(ctx.rms_norm(x, 1e-5), norm_w).set_name("ffn_norm")
    gate = ctx.silu(ctx.mul_mat(weight("ffn_gate.weight", [n_embd, n_ff], gate_up), cur)).set_name("ffn_gate_par")
    up = ctx.mul_mat(weight("ffn_up.weight", [n_embd, n_ff], gate_up), cur).set_name("ffn_up")
    down = ctx.mul_mat(weight("ffn_down.weight", [n_ff, n_embd], down), ctx.mul(gate, up)).set_name("ffn_down")
    return ctx.add(down, x).set_name("ffn_out")


def _delta_net_inputs(ctx: mg.Context, rng: np.random.Generator, S: int, H: int, T: int, N: int) -> tuple:
    """q, k (l2-normalised), v [S, H, T, N], g (GDA gates in [-2, -0.01]) and beta [1, H, T, N]."""
    q = ctx.l2_norm(_input(ctx, rng, "q", [S, H, T, N]), 1e-6)
    k = ctx.l2_norm(_input(ctx, rng, "k", [S, H, T, N]), 1e-6)
    v = _input(ctx, rng, "v", [S, H, T, N])
    g = _input(ctx, rng, "g", [1, H, T, N], -2.0, -0.01)
    b = _input(ctx, rng, "beta", [1, H, T, N], 0.0, 1.0)
    return q, k, v, g, b


def delta_net(ctx: mg.Context, n_tokens: int = 70, head_dim: int = 16, n_heads: int = 2, n_seqs: int = 1,
              fused: bool = False, seed: int = 0) -> tuple[mg.Tensor, mg.Tensor]:
    """A gated delta-net layer as llama.cpp builds it (chunked, minigraph.models.delta_net), or
    the fused GATED_DELTA_NET op with fused=True. Returns (output, new_state)."""
    rng = np.random.default_rng(seed)
    S, H, T, N = head_dim, n_heads, n_tokens, n_seqs
    q, k, v, g, b = _delta_net_inputs(ctx, rng, S, H, T, N)
    s = _input(ctx, rng, "state", [S, S, H, N])
    build = build_delta_net_fused if fused else build_delta_net_chunking
    out, state = build(ctx, q, k, v, g, b, s)
    return out.set_name("dn_out"), state.set_name("dn_state")


def delta_net_cache(ctx: mg.Context, n_tokens: int = 1, head_dim: int = 16, n_heads: int = 2, n_seqs: int = 2,
                    n_slots: int = 4, slot: int = 1, seed: int = 0) -> tuple[mg.Tensor, mg.Tensor]:
    """A delta-net step over a recurrent cache as llama.cpp runs it: the state read from cache slot
    `slot` (n_seqs states a slot), the one-token (or, n_tokens > 1, chunked) graph, and the new
    state written back with ggml_cpy. mg.optimize fuses the graph, then lets the op write the slot
    itself (the gdn_state_write pass). Returns (output, the copy into the cache)."""
    rng = np.random.default_rng(seed)
    S, H, T, N = head_dim, n_heads, n_tokens, n_seqs
    q, k, v, g, b = _delta_net_inputs(ctx, rng, S, H, T, N)
    n = S * S * H * N
    cache = _input(ctx, rng, "ssm_states", [n * n_slots], -0.5, 0.5)
    s = ctx.reshape_4d(ctx.view_1d(cache, n, 4 * n * slot), S, S, H, N)
    build = build_delta_net_autoregressive if T == 1 else build_delta_net_chunking
    out, state = build(ctx, q, k, v, g, b, s)
    write = ctx.cpy(state, ctx.view_1d(cache, n, 4 * n * slot))
    return out.set_name("dn_out"), write.set_name("dn_state_write")


def _pick(table: dict, key: str, what: str):
    if key not in table:
        raise ValueError(f"unknown {what} {key!r} (known: {', '.join(table)})")
    return table[key]


def _mla(ctx: mg.Context, n_tokens: int, n_past: int, kv_size: int, config: str, flash_attn: bool,
         cache_type: str, idx_type: str, seed: int) -> mg.Graph:
    cfg = _pick(MLA_CONFIGS, config, "config")
    rng = np.random.default_rng(seed)
    w = mla.random_weights(ctx, cfg, rng)
    inp = mla.make_inputs(ctx, cfg, rng, n_tokens, n_past, kv_size, cache_type=_pick(TYPES, cache_type, "cache_type"),
                          idx_type=_pick(TYPES, idx_type, "idx_type"))
    gf = ctx.new_graph()
    mla.build_mla_attn(ctx, gf, cfg, w, inp.cur, inp.inp_pos, inp.k_cache, inp.k_idxs, inp.kq_mask,
                       flash_attn=bool(flash_attn))
    return gf


def mla_decode(ctx: mg.Context, n_past: int = 15, kv_size: int = 0, config: str = "small", flash_attn: bool = True,
               cache_type: str = "f16", idx_type: str = "i64", seed: int = 0) -> mg.Graph:
    """One token of llama.cpp's absorbed MLA attention (deepseek2, minigraph.models.mla) over a cache
    of n_past tokens: set_rows into the [kv | pe] cache rows, flash_attn_ext with V a view of K
    (flash_attn=0: mul_mat / soft_max_ext / mul_mat, which the attention pass fuses). config: small,
    q_lora, small_q8 or lite (DeepSeek-V2-Lite: 16 heads, cache rows of 576, V 512). cache_type:
    f16, f32 or q8_0 (llama.cpp's -ctk q8_0; rows of whole blocks: config=lite or small_q8)."""
    return _mla(ctx, 1, n_past, kv_size, config, flash_attn, cache_type, idx_type, seed)


def mla_prefill(ctx: mg.Context, n_tokens: int = 8, n_past: int = 0, kv_size: int = 0, config: str = "small",
                flash_attn: bool = True, cache_type: str = "f16", idx_type: str = "i64", seed: int = 0) -> mg.Graph:
    """n_tokens of the MLA layer at once (causal mask), after n_past cached tokens; see mla_decode."""
    return _mla(ctx, n_tokens, n_past, kv_size, config, flash_attn, cache_type, idx_type, seed)


def mla_rope_shift(ctx: mg.Context, kv_size: int = 16, config: str = "small", cache_type: str = "f16",
                   seed: int = 0) -> mg.Tensor:
    """llama.cpp's K-shift of an MLA cache: the pe part of every row (a strided view at byte offset
    n_lora_kv * element size) roped in place by its cell's shift."""
    cfg = _pick(MLA_CONFIGS, config, "config")
    rng = np.random.default_rng(seed)
    cache = rng.standard_normal((kv_size, cfg.n_embd_k_cache)).astype(
        np.float16 if _pick(TYPES, cache_type, "cache_type") == mg.TYPE_F16 else np.float32)
    k_cache = ctx.from_numpy(cache).set_name("cache_k_l0")
    k_shift = ctx.from_numpy(rng.integers(-8, 8, size=kv_size).astype(np.int32)).set_name("inp_k_shift")
    return mla.build_rope_shift(ctx, cfg, k_cache, k_shift)
