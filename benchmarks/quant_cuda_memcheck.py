"""A small run of the quantized mat-vec with its dot kernel as a programmatic dependent launch
after quantize_q8 (quant_mmvq CONFIG PDL, for every type here), for compute-sanitizer, on odd
shapes: rows at 2-byte offsets, K = 14336, several src1 columns, two ne2 batches broadcast over
one src0 plane, the K-quants' tiles; each against the CPU backend (relative max error printed),
computed twice (the second replays the captured CUDA graph). Q4_0 runs over its reordered copy
(quant_reorder: reorder_q4_0, then the Q4_0R dot kernel).

    compute-sanitizer --tool memcheck python3 benchmarks/quant_cuda_memcheck.py [KEY=V ...]

KEY=V: quant_mmvq.CONFIG settings for the run (e.g. K2=4356 R2=4356: two warps splitting each
row's units, two rows a warp, for Q4_0, Q8_0 and Q4_K).
"""
import sys

import numpy as np

import minigraph as mg
from minigraph.backends.cuda import quant_mmvq as qm
from minigraph.backends.cuda.backend import CudaBackend
from minigraph.core import dtypes as D

qm.CONFIG["PDL"] = sum(1 << t for t in (D.TYPE_Q4_0, D.TYPE_Q4_1, D.TYPE_Q5_0, D.TYPE_Q5_1, D.TYPE_Q8_0,
                                        D.TYPE_Q4_K, D.TYPE_Q5_K, D.TYPE_Q6_K, qm.Q4_0R))
for kv in sys.argv[1:]:
    key, _, value = kv.partition("=")
    assert key in qm.CONFIG, f"not a quant_mmvq.CONFIG key: {key}"
    qm.CONFIG[key] = int(value)
be, cpu = CudaBackend(0), mg.backend_cpu_init(1)
rng = np.random.default_rng(0)
# (type, K, M, src0 view at a row's offset, src1 columns, ne2)
cases = [(D.TYPE_Q4_0, 4128, 37, True, 1, 1), (D.TYPE_Q4_0, 4384, 41, True, 3, 2), (D.TYPE_Q8_0, 14336, 9, False, 1, 1),
         (D.TYPE_Q4_K, 4096, 300, False, 1, 2), (D.TYPE_Q6_K, 4352, 21, False, 3, 1),
         (D.TYPE_Q5_1, 4128, 140, True, 1, 1), (D.TYPE_Q8_0, 4096, 133, True, 5, 2),
         (D.TYPE_Q5_K, 4352, 19, False, 1, 1)]
worst = 0.0
for t, k, m, offset, n, n2 in cases:
    w = rng.standard_normal((m + 1, k)).astype(np.float32)
    x = rng.standard_normal((n2, n, k)).astype(np.float32)
    res = []
    for backend in (be, cpu):
        ctx = mg.Context()
        big = ctx.from_numpy(w, t)
        wv = ctx.view_2d(big, k, m, big.nb[1], big.nb[1] if offset else 0)
        mm = ctx.mul_mat(wv, ctx.from_numpy(x))
        if backend is be:
            assert qm.refusal(mm) is None and qm.pdl_on(t)
        gf = mg.Graph()
        gf.build_forward_expand(mm)
        backend.graph_compute(gf)
        backend.graph_compute(gf)
        res.append(mm.numpy().copy())
    err = float(np.abs(res[0] - res[1]).max() / np.abs(res[1]).max())
    worst = max(worst, err)
    print(D.type_name(t), k, m, n, n2, "offset" if offset else "", "rel err", err, flush=True)
assert worst < 1e-5, worst
print("memcheck script done, worst rel err", worst)
