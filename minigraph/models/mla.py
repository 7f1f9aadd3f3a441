"""llama.cpp's absorbed MLA attention (src/models/deepseek2.cpp with src/llama-graph.cpp's
build_attn for a K-only cache and build_attn_mha) and the KV-cache rope shift
(src/llama-kv-cache.cpp build_graph_shift / build_rope_shift), on a ggml-style context.

Shapes (ggml ne order; n_embd_head_k = nope + n_rot, one KV head: MLA absorbed is MQA):
    cur      [n_embd, n_tokens] f32                the attn_norm output
    inp_pos  [n_tokens] i32                        positions
    k_cache  [n_lora_kv + n_rot, kv_size] f16/f32/q8_0  one latent row per cell: [kv 512 | pe 64]
    k_idxs   [n_tokens] i64 or i32                 the cell each token is written to (set_rows)
    kq_mask  [n_kv, n_tokens, 1, 1] f32            0 / -inf, n_kv <= kv_size cells attended
    weights  (llama.cpp's tensor names)
      attn_q         [n_embd, n_head * n_embd_head_k]         (n_lora_q == 0, DeepSeek-V2-Lite)
      attn_q_a       [n_embd, n_lora_q], attn_q_a_norm [n_lora_q], attn_q_b [n_lora_q, n_head * n_embd_head_k]
      attn_kv_a_mqa  [n_embd, n_lora_kv + n_rot],  attn_kv_a_norm [n_lora_kv]
      attn_k_b       [nope, n_lora_kv, n_head]                q_nope is absorbed through it
      attn_v_b       [n_lora_kv, n_embd_head_v, n_head]       "decompresses" the latent output
      attn_output    [n_head * n_embd_head_v, n_embd]
    result   [n_embd, n_tokens] f32

The layer (build_mla_attn): q = wq(cur) split per head into q_nope [nope] and q_pe [n_rot]
(strided views); kv_cmpr_pe = wkv_a_mqa(cur) split into kv_cmpr [n_lora_kv] and k_pe [n_rot];
q_pe and k_pe roped (YaRN as configured); kv_cmpr rms-normed; q_nope absorbed:
wk_b x permute(q_nope) -> [n_lora_kv, n_tokens, n_head]; Qcur = concat(q_nope_absorbed, q_pe, 0)
[n_lora_kv + n_rot, n_head, n_tokens]; Kcur = concat(kv_cmpr, k_pe, 0) written into the cache
rows k_idxs with set_rows; K = the first n_kv cells of the cache, V = ggml_view_4d(K, n_lora_kv,
..., K's strides, offset 0) (seed #18986: the [kv | pe] layout makes V a view at offset 0); then
flash_attn_ext with the f16 mask, or (flash_attn=False) mul_mat / soft_max_ext / mul_mat on a
cont(transpose(V)); then wv_b per head and wo.

The cache write and the attention read the same leaf without an edge between them (as in ggml),
so node order decides: the builders take the graph and expand in llama.cpp's order (Qcur, Vcur,
Kcur, the set_rows, then the attention), so the write runs first.

Differences from llama.cpp, on purpose: minigraph has no ggml_mul_mat_set_prec (its mul_mat
accumulates in f32 anyway); ggml_cast(x, F16) is written as ctx.cpy(x, a new f16 tensor), which is
what ggml_cast builds. With cast_f16=False the f32 mask (and an f32 cache) go to flash_attn_ext
uncast (minigraph's FLASH_ATTN_EXT takes f32 too; the CUDA kernel needs it).

A Q8_0 cache (llama.cpp's -ctk q8_0; `make_inputs(..., cache_type=TYPE_Q8_0)`): set_rows quantizes
the new rows as they are written, K and V stay views of the quantized rows (V on a block boundary:
n_lora_kv and n_rot multiples of 32, as DeepSeek's 512 | 64), and flash_attn_ext reads the blocks
(ggml's CPU and minigraph's round q to Q8_0 values for the K dots). As in llama.cpp a quantized
cache needs flash attention (the plain path would transpose V).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from minigraph.core import quants
from minigraph.core.dtypes import TYPE_F16, TYPE_F32, TYPE_I64, TYPE_Q8_0, is_quantized, type_name
from minigraph.core.errors import MinigraphError
from minigraph.core.tensor import row_size
from minigraph.ops.attention import PREC_F32, flash_attn_ext_add_sinks, flash_attn_ext_set_prec
from minigraph.ops.reduce import soft_max_add_sinks

Tensor = Any    # a minigraph Tensor (anything with ne, nb, type)
Context = Any   # a minigraph Context: ctx.X(...) is ggml_X(ctx, ...)
Graph = Any

ROPE_TYPE_NORM = 0   # deepseek2's rope type (LLAMA_ROPE_TYPE_NORM)


@dataclass(frozen=True)
class MlaConfig:
    """The hparams deepseek2.cpp reads. attn_factor is the value llama.cpp hands rope_ext (already
    divided by YaRN's 1 + 0.1 ln(1/freq_scale), llama_hparams::yarn_attn_factor_adjust, so the roped
    magnitude is the original attn factor); the defaults are DeepSeek-V2's YaRN (factor 40)."""

    n_embd: int = 32
    n_head: int = 4
    n_lora_q: int = 0              # 0: one wq (DeepSeek-V2-Lite); > 0: wq_a, q_a_norm, wq_b
    n_lora_kv: int = 16            # kv_lora_rank (512 in DeepSeek V2/V3)
    n_embd_head_qk_nope: int = 8   # 128
    n_rot: int = 8                 # n_embd_head_qk_rope, 64
    n_embd_head_v: int = 8         # 128
    n_ctx_orig: int = 4096
    freq_base: float = 10000.0
    freq_scale: float = 1.0 / 40.0
    ext_factor: float = 1.0
    attn_factor: float = 1.0 / (1.0 + 0.1 * math.log(40.0))
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    rope_yarn_log_mul: float = 0.707   # mscale_all_dim (llama.cpp divides the GGUF's 0.0707 by 0.1 on load)
    norm_eps: float = 1e-6
    rope_type: int = ROPE_TYPE_NORM

    @property
    def n_embd_head_k(self) -> int:
        """Per-head q/k size after decompression (nope + rope): 192 in DeepSeek V2."""
        return self.n_embd_head_qk_nope + self.n_rot

    @property
    def n_embd_k_cache(self) -> int:
        """One cache row: the latent kv then the roped pe (576 in DeepSeek V2)."""
        return self.n_lora_kv + self.n_rot

    @property
    def kq_scale(self) -> float:
        """deepseek2.cpp's pre-scaled softmax scale: mscale^2 / sqrt(n_embd_head_k), with mscale
        from the original attn factor and rope_yarn_log_mul (TAG_DEEPSEEK2_YARN_LOG_MUL_FIX)."""
        attn_factor_org = self.attn_factor * (1.0 + 0.1 * math.log(1.0 / self.freq_scale))
        mscale = attn_factor_org * (1.0 + 0.1 * self.rope_yarn_log_mul * math.log(1.0 / self.freq_scale))
        return mscale * mscale / math.sqrt(self.n_embd_head_k)

    def rope_args(self) -> tuple:
        """(n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow)."""
        return (self.n_rot, self.rope_type, self.n_ctx_orig, self.freq_base, self.freq_scale, self.ext_factor,
                self.attn_factor, self.beta_fast, self.beta_slow)


SMALL = MlaConfig()                                        # tests: 4 heads, cache rows of 24
SMALL_Q_LORA = replace(SMALL, n_lora_q=12)                 # the wq_a / q_a_norm / wq_b path
SMALL_Q8 = replace(SMALL, n_lora_kv=32, n_rot=32)          # cache rows of whole Q8_0 blocks: [kv 32 | pe 32]
CACHE_TYPES = (TYPE_F16, TYPE_F32, TYPE_Q8_0)              # the K-cache types make_inputs builds
DEEPSEEK_V2_LITE = MlaConfig(n_embd=2048, n_head=16, n_lora_q=0, n_lora_kv=512, n_embd_head_qk_nope=128,
                             n_rot=64, n_embd_head_v=128)  # benchmarks: cache rows of 576, V 512


@dataclass
class MlaWeights:
    """One layer's attention tensors, named as llama.cpp's GGUF tensors (see the module doc)."""

    wkv_a_mqa: Tensor
    attn_kv_a_norm: Tensor
    wk_b: Tensor
    wv_b: Tensor
    wo: Tensor
    wq: Optional[Tensor] = None
    wq_a: Optional[Tensor] = None
    attn_q_a_norm: Optional[Tensor] = None
    wq_b: Optional[Tensor] = None
    names: dict = field(default_factory=dict)

    def tensors(self) -> dict[str, Tensor]:
        """llama.cpp name -> tensor, the present ones."""
        return {n: t for n, t in self.names.items() if t is not None}


def weight_shapes(cfg: MlaConfig) -> dict[str, list[int]]:
    """llama.cpp's tensor name -> ne of one layer's attention weights."""
    qk = cfg.n_head * cfg.n_embd_head_k
    shapes = {"attn_kv_a_mqa": [cfg.n_embd, cfg.n_embd_k_cache], "attn_kv_a_norm": [cfg.n_lora_kv],
              "attn_k_b": [cfg.n_embd_head_qk_nope, cfg.n_lora_kv, cfg.n_head],
              "attn_v_b": [cfg.n_lora_kv, cfg.n_embd_head_v, cfg.n_head],
              "attn_output": [cfg.n_head * cfg.n_embd_head_v, cfg.n_embd]}
    if cfg.n_lora_q:
        shapes.update({"attn_q_a": [cfg.n_embd, cfg.n_lora_q], "attn_q_a_norm": [cfg.n_lora_q],
                       "attn_q_b": [cfg.n_lora_q, qk]})
    else:
        shapes["attn_q"] = [cfg.n_embd, qk]
    return shapes


def random_weights(ctx: Context, cfg: MlaConfig, rng: np.random.Generator) -> MlaWeights:
    """Named f32 leaves with values of a trained layer's scale (norm weights near 1, matrices
    ~ U(-1, 1) / sqrt(fan-in))."""
    ts = {}
    for name, ne in weight_shapes(cfg).items():
        shape = tuple(reversed(ne))
        if name.endswith("norm"):
            a = rng.uniform(0.5, 1.5, size=shape)
        else:
            a = rng.uniform(-1.0, 1.0, size=shape) * math.sqrt(3.0 / ne[0])
        ts[name] = ctx.from_numpy(a.astype(np.float32)).set_name(f"blk.0.{name}.weight")
    return MlaWeights(wkv_a_mqa=ts["attn_kv_a_mqa"], attn_kv_a_norm=ts["attn_kv_a_norm"], wk_b=ts["attn_k_b"],
                      wv_b=ts["attn_v_b"], wo=ts["attn_output"], wq=ts.get("attn_q"), wq_a=ts.get("attn_q_a"),
                      attn_q_a_norm=ts.get("attn_q_a_norm"), wq_b=ts.get("attn_q_b"), names=ts)


@dataclass
class MlaInputs:
    """A layer's graph inputs (tensors) and the numpy data behind them (for a reference)."""

    cur: Tensor        # [n_embd, n_tokens] f32
    inp_pos: Tensor    # [n_tokens] i32
    k_cache: Tensor    # [n_embd_k_cache, kv_size] f16/f32, the cache before the write
    k_idxs: Tensor     # [n_tokens] i64/i32
    kq_mask: Tensor    # [n_kv, n_tokens, 1, 1] f32
    x: np.ndarray      # [n_tokens, n_embd]
    pos: np.ndarray    # [n_tokens]
    cache0: np.ndarray  # [kv_size, n_embd_k_cache], the values as stored (f16 or f32; q8_0: dequantized f32)
    idxs: np.ndarray   # [n_tokens]
    kv_pos: np.ndarray  # [kv_size] the position of each cell after the write, -1 = empty
    n_kv: int
    cache_type: int = TYPE_F16


def make_inputs(ctx: Context, cfg: MlaConfig, rng: np.random.Generator, n_tokens: int, n_past: int = 0,
                kv_size: int = 0, n_kv: int = 0, cache_type: int = TYPE_F16, idx_type: int = TYPE_I64,
                scatter: bool = False) -> MlaInputs:
    """Random inputs for one layer: a cache whose cells hold positions 0..n_past-1 (random rows)
    and the n_tokens new tokens at positions n_past.. written to the next cells (scatter=True: to
    cells in random order, as a fragmented cache holds them). kv_size defaults to n_past +
    n_tokens and n_kv (the cells attended, the mask's ne0) to kv_size. cache_type: one of
    CACHE_TYPES (TYPE_Q8_0 needs cache rows and V of whole 32-value blocks, e.g. SMALL_Q8)."""
    kv_size = kv_size or n_past + n_tokens
    n_kv = n_kv or kv_size
    if cache_type not in CACHE_TYPES:
        raise MinigraphError(f"make_inputs: cache_type {type_name(cache_type)} is not one of "
                             f"{', '.join(type_name(t) for t in CACHE_TYPES)}")
    if is_quantized(cache_type) and (cfg.n_lora_kv % 32 or cfg.n_rot % 32):
        raise MinigraphError(f"make_inputs: a {type_name(cache_type)} cache needs n_lora_kv and n_rot in whole "
                             f"32-value blocks (V is a view of the rows' first n_lora_kv values), got "
                             f"n_lora_kv={cfg.n_lora_kv}, n_rot={cfg.n_rot}")
    if not (0 <= n_past and 1 <= n_tokens and n_past + n_tokens <= n_kv <= kv_size):
        raise MinigraphError(f"make_inputs: need n_past + n_tokens <= n_kv <= kv_size, got n_past={n_past}, "
                             f"n_tokens={n_tokens}, n_kv={n_kv}, kv_size={kv_size}")
    cells = rng.permutation(n_kv) if scatter else np.arange(n_kv)
    kv_pos = np.full(kv_size, -1, np.int64)
    kv_pos[cells[:n_past + n_tokens]] = np.arange(n_past + n_tokens)
    cache = np.zeros((kv_size, cfg.n_embd_k_cache), np.float32)
    cache[cells[:n_past]] = rng.standard_normal((n_past, cfg.n_embd_k_cache))
    if is_quantized(cache_type):
        k_cache = ctx.from_numpy(cache, cache_type)              # quantized as ggml's reference quantizer does
        cache = quants.roundtrip(cache, cache_type).astype(np.float32)
    else:
        cache = cache.astype(np.float16 if cache_type == TYPE_F16 else np.float32)
        k_cache = ctx.from_numpy(cache)
    x = rng.standard_normal((n_tokens, cfg.n_embd)).astype(np.float32)
    pos = np.arange(n_past, n_past + n_tokens, dtype=np.int32)
    idxs = cells[n_past:n_past + n_tokens].astype(np.int64 if idx_type == TYPE_I64 else np.int32)
    mask = causal_mask(kv_pos[:n_kv], pos).reshape(1, 1, n_tokens, n_kv)
    return MlaInputs(cur=ctx.from_numpy(x).set_name("attn_norm"), inp_pos=ctx.from_numpy(pos).set_name("inp_pos"),
                     k_cache=k_cache.set_name("cache_k_l0"),
                     k_idxs=ctx.from_numpy(idxs).set_name("attn_inp_k_idxs"),
                     kq_mask=ctx.from_numpy(mask).set_name("attn_inp_kq_mask"),
                     x=x, pos=pos, cache0=cache, idxs=idxs, kv_pos=kv_pos, n_kv=n_kv, cache_type=cache_type)


def causal_mask(kv_pos: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """llama.cpp's set_input_kq_mask for one sequence: [n_tokens, n_kv] f32 (numpy order), 0 where
    cell j holds a position <= the token's (kv_pos[j] >= 0), -inf elsewhere (empty or future)."""
    kv_pos = np.asarray(kv_pos)[None, :]
    ok = (kv_pos >= 0) & (kv_pos <= np.asarray(pos)[:, None])
    return np.where(ok, 0.0, -np.inf).astype(np.float32)


# -- the layer ---------------------------------------------------------------------------------

def _norm(ctx: Context, x: Tensor, w: Tensor, eps: float) -> Tensor:
    """build_norm(x, w, NULL, LLM_NORM_RMS)."""
    return ctx.mul(ctx.rms_norm(x, eps), w)


def _cast_f16(ctx: Context, t: Tensor) -> Tensor:
    """ggml_cast(t, GGML_TYPE_F16): a cpy into a new f16 tensor of t's shape (named as ggml does)."""
    return ctx.cpy(t, ctx.new_tensor_4d(TYPE_F16, *t.ne).set_name(f"{t.name} (copy)"))


def build_attn_mha(ctx: Context, q: Tensor, k: Tensor, v: Tensor, kq_b: Optional[Tensor],
                   kq_mask: Optional[Tensor], sinks: Optional[Tensor], v_mla: Optional[Tensor], kq_scale: float,
                   *, flash_attn: bool = True, max_bias: float = 0.0, softcap: float = 0.0,
                   cast_f16: bool = True) -> Tensor:
    """llama.cpp's llm_graph_context::build_attn_mha.

    q [D_k, n_head, n_tokens], k [D_k, n_head_kv, n_kv, n_stream], v [D_v, n_head_kv, n_kv, n_stream]
    (or, transposed cache, v [n_kv, n_head_kv, D_v, n_stream]); kq_mask [n_kv, n_tokens/n_stream, 1,
    n_stream] f32 (cast to f16 for flash attention when cast_f16); v_mla [D_v, D_v', n_head] or None.
    softcap != 0 is llama.cpp's attn_soft_cap (scale, tanh, scale before the softmax).
    Returns [D_v' * n_head, n_tokens].
    """
    v_trans = v.nb[1] > v.nb[2]
    n_stream = k.ne[3]
    q = ctx.view_4d(q, q.ne[0], q.ne[1], q.ne[2] // n_stream, n_stream, q.nb[1], q.nb[2], q.nb[3] // n_stream, 0)
    q = ctx.permute(q, 0, 2, 1, 3)
    k = ctx.permute(k, 0, 2, 1, 3)
    v = ctx.permute(v, 0, 2, 1, 3)

    if flash_attn and kq_b is None:
        if v_trans:
            v = ctx.transpose(v)
        if cast_f16:
            # this can happen when the KV cache is not used (e.g. an embedding model)
            if k.type == TYPE_F32:
                k = _cast_f16(ctx, k)
            if v.type == TYPE_F32:
                v = _cast_f16(ctx, v)
            if kq_mask is not None and kq_mask.type == TYPE_F32:
                kq_mask = _cast_f16(ctx, kq_mask)   # llama.cpp's self_kq_mask_cnv
        cur = ctx.flash_attn_ext(q, k, v, kq_mask, kq_scale, max_bias, softcap).set_name("__fattn__")
        if sinks is not None:
            flash_attn_ext_add_sinks(cur, sinks)
        flash_attn_ext_set_prec(cur, PREC_F32)
        if v_mla is not None:
            # the permutes are no-ops on the data: n_tokens goes to dim 1 for a matrix-matrix product
            cur = ctx.permute(cur, 0, 2, 1, 3)
            cur = ctx.mul_mat(v_mla, cur).set_name("fattn_mla")
            cur = ctx.permute(cur, 0, 2, 1, 3)
            cur = ctx.cont(cur)
        return ctx.reshape_2d(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])

    kq = ctx.mul_mat(k, q).set_name("kq")
    if softcap != 0.0:
        kq = ctx.scale(kq, 1.0 / softcap).set_name("kq_scaled_1")
        kq = ctx.tanh(kq).set_name("kq_tanh")
        kq = ctx.scale(kq, softcap).set_name("kq_scaled_2")
    if kq_b is not None:
        kq = ctx.add(kq, kq_b).set_name("kq_plus_kq_b")
    kq = ctx.soft_max_ext(kq, kq_mask, kq_scale, max_bias).set_name("kq_soft_max")
    soft_max_add_sinks(kq, sinks)
    if not v_trans:
        v = ctx.cont(ctx.transpose(v)).set_name("v_cont")   # llama.cpp: "note: avoid this branch"
    kqv = ctx.mul_mat(v, kq).set_name("kqv")
    if v_mla is not None:
        kqv = ctx.mul_mat(v_mla, kqv).set_name("kqv_mla")
    cur = ctx.permute(kqv, 0, 2, 1, 3)
    return ctx.cont_2d(cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])


def build_mla_attn(ctx: Context, gf: Graph, cfg: MlaConfig, w: MlaWeights, cur: Tensor, inp_pos: Tensor,
                   k_cache: Tensor, k_idxs: Tensor, kq_mask: Tensor, *, flash_attn: bool = True,
                   cast_f16: bool = True) -> Tensor:
    """deepseek2.cpp's absorbed (is_mla) attention block of one layer; see the module doc for the
    shapes. The set_rows into k_cache is expanded into gf before the attention that reads it.
    Returns the attention output after wo, [n_embd, n_tokens] (expanded into gf too)."""
    n_tokens = cur.ne[1]
    n_head, nope, n_rot, n_lora_kv = cfg.n_head, cfg.n_embd_head_qk_nope, cfg.n_rot, cfg.n_lora_kv
    n_embd_head_k = cfg.n_embd_head_k
    if cur.ne[0] != cfg.n_embd or k_cache.ne[0] != cfg.n_embd_k_cache or kq_mask.ne[1] < n_tokens:
        raise MinigraphError(f"build_mla_attn: cur {cur.ne}, k_cache {k_cache.ne}, kq_mask {kq_mask.ne} do not fit "
                         f"n_embd = {cfg.n_embd}, cache rows of {cfg.n_embd_k_cache}, {n_tokens} tokens")
    if is_quantized(k_cache.type) and not flash_attn:
        raise MinigraphError(f"build_mla_attn: a {type_name(k_cache.type)} cache {k_cache.name!r} needs flash "
                             f"attention (as llama.cpp: the plain path would transpose the quantized V)")

    if cfg.n_lora_q:
        q = ctx.mul_mat(w.wq_a, cur).set_name("q")
        q = _norm(ctx, q, w.attn_q_a_norm, cfg.norm_eps).set_name("q")
        q = ctx.mul_mat(w.wq_b, q).set_name("q")
    else:
        q = ctx.mul_mat(w.wq, cur).set_name("q")
    rs = row_size(q.type, n_embd_head_k)
    q_nope = ctx.view_3d(q, nope, n_head, n_tokens, rs, rs * n_head, 0).set_name("q_nope")
    q_pe = ctx.view_3d(q, n_rot, n_head, n_tokens, rs, rs * n_head, row_size(q.type, nope)).set_name("q_pe")

    kv_cmpr_pe = ctx.mul_mat(w.wkv_a_mqa, cur).set_name("kv_cmpr_pe")
    rs = row_size(kv_cmpr_pe.type, n_lora_kv + n_rot)
    kv_cmpr = ctx.view_2d(kv_cmpr_pe, n_lora_kv, n_tokens, rs, 0).set_name("kv_cmpr")
    k_pe = ctx.view_3d(kv_cmpr_pe, n_rot, 1, n_tokens, rs, rs, row_size(kv_cmpr_pe.type, n_lora_kv)).set_name("k_pe")

    q_pe = ctx.rope_ext(q_pe, inp_pos, None, *cfg.rope_args()).set_name("q_pe")
    k_pe = ctx.rope_ext(k_pe, inp_pos, None, *cfg.rope_args()).set_name("k_pe")
    kv_cmpr = _norm(ctx, kv_cmpr, w.attn_kv_a_norm, cfg.norm_eps).set_name("kv_cmpr")

    q_nope = ctx.permute(q_nope, 0, 2, 1, 3).set_name("q_nope_perm")                    # [nope, n_tokens, n_head]
    q_nope_absorbed = ctx.mul_mat(w.wk_b, q_nope).set_name("q_nope_absorbed")          # [n_lora_kv, n_tokens, n_head]
    q_nope_absorbed = ctx.permute(q_nope_absorbed, 0, 2, 1, 3).set_name("q_nope_absorbed_perm")
    # note (llama.cpp): rope goes last in the row, so the cache rope shift can take a view at an offset
    q_cur = ctx.concat(q_nope_absorbed, q_pe, 0).set_name("Qcur")                     # [n_lora_kv + n_rot, n_head, n_tokens]
    kv_cmpr = ctx.reshape_3d(kv_cmpr, n_lora_kv, 1, n_tokens).set_name("kv_cmpr_reshape")
    k_cur = ctx.concat(kv_cmpr, k_pe, 0).set_name("Kcur")                             # [n_lora_kv + n_rot, 1, n_tokens]
    v_cur = kv_cmpr.set_name("Vcur")

    return build_attn_k(ctx, gf, w.wo, q_cur, k_cur, v_cur, w.wv_b, cfg.kq_scale, k_cache, k_idxs, kq_mask,
                        flash_attn=flash_attn, cast_f16=cast_f16)


def build_attn_k(ctx: Context, gf: Graph, wo: Optional[Tensor], q_cur: Tensor, k_cur: Tensor, v_cur: Tensor,
                 v_mla: Optional[Tensor], kq_scale: float, k_cache: Tensor, k_idxs: Tensor, kq_mask: Tensor, *,
                 flash_attn: bool = True, cast_f16: bool = True) -> Tensor:
    """llama.cpp's build_attn(llm_graph_input_attn_k *): store k_cur into the K-only cache
    (llama_kv_cache::cpy_k, one stream), read K back as get_k does and V as the first v_cur->ne[0]
    values of each K row (ggml_view_4d at offset 0), attend, then wo.

    k_cache [n_embd_k_gqa, kv_size], k_cur [n_embd_head_k, n_head_kv, n_tokens], k_idxs [n_tokens];
    the first n_kv = kq_mask->ne[0] cells are attended."""
    gf.build_forward_expand(q_cur)
    gf.build_forward_expand(v_cur)
    gf.build_forward_expand(k_cur)

    # cpy_k: the rows of k_cur (dims 0 and 1 merged) into cells k_idxs
    n_embd_head, n_head_kv, n_tokens = k_cur.ne[0], k_cur.ne[1], k_cur.ne[2]
    if row_size(k_cur.type, n_embd_head) != k_cur.nb[1] or n_embd_head * n_head_kv != k_cache.ne[0]:
        raise MinigraphError(f"build_attn_k: k_cur {k_cur.ne} does not fill cache rows of {k_cache.ne[0]}")
    k_rows = ctx.view_2d(k_cur, n_embd_head * n_head_kv, n_tokens, k_cur.nb[2], 0)
    gf.build_forward_expand(ctx.set_rows(k_cache, k_rows, k_idxs).set_name("k_cache_write"))

    # get_k: [n_embd_head_k, n_head_kv, n_kv, 1] over the first n_kv cells
    n_kv, kv_size = kq_mask.ne[0], k_cache.ne[1]
    n_embd_k_gqa = k_cache.ne[0]
    k = ctx.view_4d(k_cache, n_embd_head, n_head_kv, n_kv, 1, row_size(k_cache.type, n_embd_head),
                    row_size(k_cache.type, n_embd_k_gqa), row_size(k_cache.type, n_embd_k_gqa * kv_size), 0)
    v = ctx.view_4d(k, v_cur.ne[0], k.ne[1], k.ne[2], k.ne[3], k.nb[1], k.nb[2], k.nb[3], 0)

    cur = build_attn_mha(ctx, q_cur, k, v, None, kq_mask, None, v_mla, kq_scale, flash_attn=flash_attn,
                         cast_f16=cast_f16).set_name("kqv_out")
    if wo is not None:
        cur = ctx.mul_mat(wo, cur).set_name("attn_out")
    gf.build_forward_expand(cur)
    return cur


def build_rope_shift(ctx: Context, cfg: MlaConfig, k_cache: Tensor, k_shift: Tensor,
                     rope_factors: Optional[Tensor] = None) -> Tensor:
    """llama_kv_cache::build_graph_shift for one MLA layer: the pe part of every cache row (a
    strided view_3d [n_rot, n_head_kv = 1, kv_size] at byte offset n_lora_kv * element size) is
    roped in place by its cell's shift (build_rope_shift's rope_ext_inplace; f16/f32 caches).

    k_cache [n_lora_kv + n_rot, kv_size]; k_shift [kv_size] i32. Returns the roped view."""
    n_embd_head_k = cfg.n_embd_k_cache
    n_embd_nope = n_embd_head_k - cfg.n_rot          # hparams.n_lora_kv > 0: the latent part stays
    n_embd_k_gqa = k_cache.ne[0]                      # one KV head
    k = ctx.view_3d(k_cache, cfg.n_rot, 1, k_cache.ne[1], row_size(k_cache.type, n_embd_head_k),
                    row_size(k_cache.type, n_embd_k_gqa), row_size(k_cache.type, n_embd_nope))
    return ctx.rope_ext_inplace(k, k_shift, rope_factors, *cfg.rope_args()).set_name("k_shifted")
