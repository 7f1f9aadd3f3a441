"""DeepSeek-style MLA attention as llama.cpp builds it (minigraph.models.mla): prefill a K cache,
decode one token from it, check both against a float64 non-absorbed reference, then the same
layer without flash attention (which mg.optimize fuses back into FLASH_ATTN_EXT), and the
K-cache rope shift.

Run: python examples/mla.py            (small shapes, a few seconds)
     python examples/mla.py --lite     (DeepSeek-V2-Lite's dims: 16 heads, cache rows of 576)
     python examples/mla.py --cache-type q8_0   (a Q8_0 K cache, llama.cpp's -ctk q8_0; small dims
                                                 become rows of whole blocks; no plain-path step)
"""
import argparse

import numpy as np

import minigraph as mg
from minigraph.models import mla
from minigraph.core import quants
from minigraph.models.mla_reference import mla_layer_reference, rope_shift_reference

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--lite", action="store_true", help="DeepSeek-V2-Lite dimensions")
ap.add_argument("--prefill", type=int, default=8, help="tokens in the prefill")
ap.add_argument("--kv-size", type=int, default=16, help="cells in the K cache")
ap.add_argument("--cache-type", choices=("f16", "q8_0"), default="f16", help="K cache type")
args = ap.parse_args()
q8 = args.cache_type == "q8_0"
cache_type = mg.TYPE_Q8_0 if q8 else mg.TYPE_F16
cfg = mla.DEEPSEEK_V2_LITE if args.lite else (mla.SMALL_Q8 if q8 else mla.SMALL)
n_pre, kv_size = args.prefill, args.kv_size
rng = np.random.default_rng(0)
cpu = mg.backend_cpu_init()


def nmse(got, want):
    return float(((np.asarray(got, np.float64) - want) ** 2).sum() / (want ** 2).sum())


def layer(cache: np.ndarray, x: np.ndarray, pos: np.ndarray, kv_pos: np.ndarray, flash: bool):
    """Build and run one layer step; returns (output, the cache after it, graph, optimized run)."""
    ctx = mg.Context()
    w = mla.random_weights(ctx, cfg, np.random.default_rng(1))          # the same weights every step
    k_cache = ctx.from_numpy(cache, cache_type if q8 else None).set_name("cache_k_l0")
    mask = mla.causal_mask(kv_pos, pos).reshape(1, 1, len(pos), kv_size)
    gf = ctx.new_graph()
    out = mla.build_mla_attn(ctx, gf, cfg, w, ctx.from_numpy(x), ctx.from_numpy(pos), k_cache,
                             ctx.from_numpy(pos.astype(np.int64)), ctx.from_numpy(mask), flash_attn=flash)
    run = mg.optimize(gf, cpu)
    mg.compute(gf, cpu)
    ref, ref_cache = mla_layer_reference(cfg, {n: t.numpy() for n, t in w.tensors().items()}, x, pos, cache,
                                         pos, kv_pos, kv_size, cache_dtype=None if q8 else np.float16,
                                         cache_type=cache_type)
    return out.numpy(), k_cache.numpy(), ref, ref_cache, gf, run


# 1. prefill n_pre tokens into an empty f16 cache (cells 0..n_pre-1), then decode token n_pre
cache = np.zeros((kv_size, cfg.n_embd_k_cache), np.float32 if q8 else np.float16)
x = rng.standard_normal((n_pre + 1, cfg.n_embd)).astype(np.float32)
kv_pos = np.full(kv_size, -1)
kv_pos[:n_pre] = np.arange(n_pre)
out, cache, ref, ref_cache, gf, _ = layer(cache, x[:n_pre], np.arange(n_pre, dtype=np.int32), kv_pos, True)
fa = next(n for n in gf.nodes if n.op == "FLASH_ATTN_EXT")
print(f"MLA layer: n_head={cfg.n_head}, cache rows [kv {cfg.n_lora_kv} | pe {cfg.n_rot}], V = view of K at offset 0 "
      f"(v_in_k={fa.op_params['v_in_k']}), kq_scale={cfg.kq_scale:.5f}, {len(gf)} nodes")
print(f"  prefill {n_pre} tokens: NMSE vs float64 reference {nmse(out, ref):.2e}, "
      f"cache max |diff| {np.abs(cache - ref_cache).max():.1e}")

kv_pos[n_pre] = n_pre
pos = np.array([n_pre], np.int32)
out, cache2, ref, _, _, _ = layer(cache, x[n_pre:], pos, kv_pos, True)
print(f"  decode 1 token over the prefilled {args.cache_type} cache: NMSE {nmse(out, ref):.2e}"
      + (" (q rounded to Q8_0 values for the K dots, as ggml's CPU)" if q8 else ""))
if q8:   # llama.cpp needs flash attention over a quantized cache, and ropes it through f32: done
    raise SystemExit(0)

# 2. the same step without flash attention: llama.cpp's mul_mat / soft_max_ext / mul_mat, fused back
out_plain, _, ref, _, gf, run = layer(cache, x[n_pre:], pos, kv_pos, False)
fused = [m for p, s, m in run.log.entries if p == "attention" and s == "fused"]
print(f"  without flash attention: {len(gf)} nodes -> {len(run.graph)} after mg.optimize "
      f"({fused[0] if fused else 'not fused'}); NMSE {nmse(out_plain, ref):.2e}")

# 3. the K-cache rope shift: every cell moves 4 positions on; only the pe part changes
ctx = mg.Context()
k_cache = ctx.from_numpy(cache2).set_name("cache_k_l0")
shift = np.where(kv_pos >= 0, 4, 0).astype(np.int32)
mg.compute(mla.build_rope_shift(ctx, cfg, k_cache, ctx.from_numpy(shift)), cpu)
want = rope_shift_reference(cfg, cache2.astype(np.float64), shift)
after = k_cache.numpy()
print(f"  rope shift +4: kv part unchanged: {np.array_equal(after[:, :cfg.n_lora_kv], cache2[:, :cfg.n_lora_kv])}, "
      f"pe part max |diff| vs reference {np.abs(after - want).max():.1e} (f16 cache)")
