"""MLA decode on the CPU over a quantized cache, side by side in one run: minigraph with an f16, Q8_0
and Q4_0 cache (V a view of K; 16 q heads, 1 KV head, 576/512, n_kv=4096) and ggml-python's CPU
backend on Q8_0 and f16, 2 threads, 5 alternating rounds (median, min, max in ms).

    python benchmarks/attention_quant_cpu.py
"""
import math, time, statistics, os
import numpy as np
import minigraph as mg
from minigraph.testing import ggml_bridge as gb
n_kv, DK, DV, H = 4096, 576, 512, 16
rng = np.random.default_rng(0)
kc = rng.uniform(-1, 1, (1, 1, n_kv, DK)).astype(np.float32)
qa = rng.uniform(-1, 1, (1, H, 1, DK)).astype(np.float32)
cpu = mg.backend_cpu_init(2)
def build(ctx, t):
    k = ctx.from_numpy(kc.astype(np.float16)) if t == mg.TYPE_F16 else ctx.from_numpy(kc, t)
    v = ctx.view_4d(k, DV, n_kv, 1, 1, k.nb[1], k.nb[2], k.nb[3], 0)
    m = ctx.from_numpy(np.zeros((1, 1, 1, n_kv), np.float16))
    return ctx.flash_attn_ext(ctx.from_numpy(qa), k, v, m, 1 / math.sqrt(192), 0.0, 0.0)
runs = {}
for name, t in (("f16", mg.TYPE_F16), ("q8_0", mg.TYPE_Q8_0), ("q4_0", mg.TYPE_Q4_0)):
    ctx = mg.Context(); out = build(ctx, t); gf = ctx.new_graph(); gf.build_forward_expand(out)
    cpu.graph_compute(gf)
    runs[name] = (cpu, gf)
g = {}
for name, t in (("ggml q8_0", mg.TYPE_Q8_0), ("ggml f16", mg.TYPE_F16)):
    gc = gb.GgmlContext(1 << 28); g[name] = (gc, build(gc, t))
ts = {k: [] for k in list(runs) + list(g)}
for rep in range(5):
    for name, (be, gf) in runs.items():
        t0 = time.perf_counter()
        for _ in range(5): be.graph_compute(gf)
        ts[name].append((time.perf_counter() - t0) / 5 * 1e3)
    for name, (gc, out) in g.items():
        ts[name].append(gb.time_compute(out, n_threads=2, repeat=3) * 1e3)
print("load", os.getloadavg())
for k, v in ts.items():
    print(f"{k:10s} median {statistics.median(v):7.2f} ms (min {min(v):.2f}, max {max(v):.2f})")
