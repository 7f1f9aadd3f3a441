"""A float64 numpy MLA layer written the other way round: non-absorbed (DeepSeek's paper form),
as an independent check of minigraph.models.mla (absorbed MLA is the same math regrouped).

Per head h, from the latent cache row [c_j | pe_j] of each cell j:
    k_j = [W_kb[h]^T c_j | pe_j]  (nope + n_rot),   v_j = W_vb[h] c_j  (n_embd_head_v)
    q   = [q_nope | rope(q_pe)],   s_j = kq_scale * q.k_j   (masked: cell empty or in the future)
    o_h = softmax(s) v,   out = W_o [o_0 | ... | o_{H-1}]
The rotary embedding (rope_yarn here) is written from YaRN's formulas, not taken from ops/rope.py.
Arrays are numpy-ordered (shape = reversed ne).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from minigraph.core import quants
from minigraph.core.dtypes import is_quantized

from minigraph.models.mla import MlaConfig, MlaInputs, MlaWeights


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def rope_yarn(x: np.ndarray, pos: np.ndarray, cfg: MlaConfig) -> np.ndarray:
    """Rotate adjacent pairs (rope type NORM) of x [..., n_tokens, n_rot] by the YaRN angle of
    pos[t]: theta_i = p * base^(-2i/n) scaled by freq_scale, blended back towards the unscaled
    angle by YaRN's ramp over the correction dims, cos/sin scaled by the magnitude factor."""
    n = cfg.n_rot
    i = np.arange(n // 2, dtype=np.float64)
    theta_extrap = np.asarray(pos, np.float64)[:, None] * cfg.freq_base ** (-2.0 * i / n)
    theta = cfg.freq_scale * theta_extrap
    mscale = cfg.attn_factor
    if cfg.ext_factor != 0.0:
        def corr_dim(beta: float) -> float:   # the pair index whose wavelength fits n_ctx_orig / beta turns
            return n * math.log(cfg.n_ctx_orig / (beta * 2.0 * math.pi)) / (2.0 * math.log(cfg.freq_base))
        low = max(0.0, math.floor(corr_dim(cfg.beta_fast)))
        high = min(n - 1.0, math.ceil(corr_dim(cfg.beta_slow)))
        ramp = (1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)) * cfg.ext_factor
        theta = theta * (1.0 - ramp) + theta_extrap * ramp
        mscale *= 1.0 + 0.1 * math.log(1.0 / cfg.freq_scale)
    c, s = np.cos(theta) * mscale, np.sin(theta) * mscale
    out = np.array(x, np.float64)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def mla_layer_reference(cfg: MlaConfig, weights: dict[str, np.ndarray], x: np.ndarray, pos: np.ndarray,
                        k_cache: np.ndarray, k_idxs: np.ndarray, kv_pos: np.ndarray, n_kv: int,
                        cache_dtype: Optional[type] = None, cache_type: Optional[int] = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One MLA attention layer in float64. Returns (output [n_tokens, n_embd], the cache after the
    write [kv_size, n_lora_kv + n_rot]).

    weights: llama.cpp names -> numpy arrays (minigraph.models.mla.weight_shapes, reversed);
    x [n_tokens, n_embd]; pos [n_tokens]; k_cache [kv_size, n_lora_kv + n_rot] before the write;
    k_idxs [n_tokens] the cells written; kv_pos [>= n_kv] the position each cell holds after the
    write (-1: empty); the first n_kv cells are attended. cache_dtype (np.float16) rounds the
    written rows as a cache of that type stores them; cache_type (a ggml type, e.g. TYPE_Q8_0) does
    the same for a quantized cache (quantized and dequantized again)."""
    W = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    x = np.asarray(x, np.float64)
    H, nope, n_rot, L = cfg.n_head, cfg.n_embd_head_qk_nope, cfg.n_rot, cfg.n_lora_kv
    T = x.shape[0]

    if cfg.n_lora_q:
        q = _rms_norm(x @ W["attn_q_a"].T, W["attn_q_a_norm"], cfg.norm_eps) @ W["attn_q_b"].T
    else:
        q = x @ W["attn_q"].T
    q = q.reshape(T, H, nope + n_rot)
    q_nope, q_pe = q[..., :nope], rope_yarn(q[..., nope:].transpose(1, 0, 2), pos, cfg).transpose(1, 0, 2)

    kv = x @ W["attn_kv_a_mqa"].T                                  # [T, L + n_rot]
    c_new = _rms_norm(kv[:, :L], W["attn_kv_a_norm"], cfg.norm_eps)
    pe_new = rope_yarn(kv[:, L:], pos, cfg)
    cache = np.array(k_cache, np.float64)
    rows = np.concatenate([c_new, pe_new], axis=1)
    if cache_dtype is not None:
        rows = rows.astype(cache_dtype).astype(np.float64)
    if cache_type is not None and is_quantized(cache_type):
        rows = quants.roundtrip(rows, cache_type)
    for t, j in enumerate(np.asarray(k_idxs)):
        cache[int(j)] = rows[t]

    c, pe = cache[:n_kv, :L], cache[:n_kv, L:]                     # [n_kv, L], [n_kv, n_rot]
    k_nope = np.einsum("hrd,jr->hjd", W["attn_k_b"], c)           # attn_k_b numpy (H, L, nope)
    v = np.einsum("hvr,jr->hjv", W["attn_v_b"], c)                 # attn_v_b numpy (H, v, L)
    s = (np.einsum("thd,hjd->htj", q_nope, k_nope) + np.einsum("thd,jd->htj", q_pe, pe)) * cfg.kq_scale
    kvp = np.asarray(kv_pos)[:n_kv]
    allowed = (kvp[None, :] >= 0) & (kvp[None, :] <= np.asarray(pos)[:, None])   # [T, n_kv]
    s = np.where(allowed[None], s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    o = np.einsum("htj,hjv->thv", p, v).reshape(T, H * cfg.n_embd_head_v)
    return o @ W["attn_output"].T, cache


def layer_reference(cfg: MlaConfig, w: MlaWeights, inp: MlaInputs) -> tuple[np.ndarray, np.ndarray]:
    """mla_layer_reference on the data of minigraph tensors and make_inputs' arrays."""
    weights = {name: t.numpy() for name, t in w.tensors().items()}
    return mla_layer_reference(cfg, weights, inp.x, inp.pos, inp.cache0, inp.idxs, inp.kv_pos, inp.n_kv,
                               cache_dtype=inp.cache0.dtype.type, cache_type=inp.cache_type)


def rope_shift_reference(cfg: MlaConfig, k_cache: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The cache after llama.cpp's K-shift: the last n_rot values of row j roped by shift[j]."""
    out = np.array(k_cache, np.float64)
    out[:, cfg.n_lora_kv:] = rope_yarn(out[:, cfg.n_lora_kv:], shift, cfg)
    return out
