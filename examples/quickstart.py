"""minigraph quickstart: build a ggml-style graph, compute it on the CPU, check it against numpy.

Run: python examples/quickstart.py
"""
import numpy as np

import minigraph as mg
from minigraph.models.delta_net import build_delta_net_chunking, build_delta_net_fused

rng = np.random.default_rng(0)

# 1. ggml's API, transcribed: ggml_X(ctx, ...) is ctx.X(...); numpy shape (d, c, b, a) is ne [a, b, c, d]
ctx = mg.Context()
x = ctx.from_numpy(rng.standard_normal((4, 8)).astype(np.float32)).set_name("x")   # ne [8, 4]
w = ctx.from_numpy(rng.standard_normal((3, 8)).astype(np.float32)).set_name("w")   # ne [8, 3]
y = ctx.mul_mat(w, x)                       # ne [3, 4]: y[n][m] = sum_k w[m][k] x[n][k]
c = ctx.cumsum(ctx.transpose(y), dim=1)     # cumsum along ne1 of a transposed view (an extension)
mask = ctx.tri(ctx.fill(ctx.new_tensor_2d(mg.TYPE_F32, 4, 4), 1.0), mg.TRI_TYPE_LOWER_DIAG)
gf = ctx.new_graph()
mg.build_forward_expand(gf, c)
mg.build_forward_expand(gf, mask)
cpu = mg.backend_cpu_init()
cpu.graph_compute(gf)

want = np.cumsum((x.numpy() @ w.numpy().T).T, axis=0)
print(f"graph: {len(gf)} nodes, {len(gf.leafs)} leafs, compute buffer {cpu.reserve(gf)} bytes")
print("cumsum(transpose(mul_mat)) matches numpy:", np.allclose(c.numpy(), want, atol=1e-5))
print("tri(fill(1), LOWER_DIAG):\n", mask.numpy())

# 2. a gated delta-net layer as llama.cpp builds it (chunked, ~100 nodes) against the fused op
S, H, T = 16, 2, 70   # 70 tokens: chunk size 64 plus a padded tail
ctx = mg.Context()
def inp(ne, lo=-1.0, hi=1.0):
    return ctx.from_numpy(rng.uniform(lo, hi, size=ne[::-1]).astype(np.float32))
q = ctx.l2_norm(inp([S, H, T, 1]), 1e-6)
k = ctx.l2_norm(inp([S, H, T, 1]), 1e-6)
v, g, b, s = inp([S, H, T, 1]), inp([1, H, T, 1], -2.0, -0.01), inp([1, H, T, 1], 0.0, 1.0), inp([S, S, H, 1])
o_chunked, s_chunked = build_delta_net_chunking(ctx, q, k, v, g, b, s)
o_fused, s_fused = build_delta_net_fused(ctx, q, k, v, g, b, s)
gf = ctx.new_graph()
for t in (o_chunked, s_chunked, o_fused, s_fused):
    mg.build_forward_expand(gf, t)
cpu.graph_compute(gf)
print(f"delta net: {len(gf)} nodes; chunked vs fused output max |diff| = "
      f"{np.abs(o_chunked.numpy() - o_fused.numpy()).max():.2e}, state {np.abs(s_chunked.numpy() - s_fused.numpy()).max():.2e}")
