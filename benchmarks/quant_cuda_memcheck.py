"""A small run of the chunked quantized mat-vec (quant_mmvq CHUNK: mmvq_T_cR) and of the
programmatic dependent launch after quantize_q8 (CONFIG PDL), for compute-sanitizer, on odd
shapes: rows < R in a warp's last rows, more rows than lanes' chunks, K = 14336 (several chunks a
lane), two ne2 batches broadcast over one src0 plane, and the plain kernels under PDL (a 2-byte
offset view, Q6_K's tiles); each against the CPU backend (relative max error printed).

    compute-sanitizer --tool memcheck python3 benchmarks/quant_cuda_memcheck.py
"""
import numpy as np

import minigraph as mg
from minigraph.backends.cuda import quant_mmvq as qm
from minigraph.backends.cuda.backend import CudaBackend
from minigraph.core import dtypes as D

be, cpu = CudaBackend(0), mg.backend_cpu_init(1)
rng = np.random.default_rng(0)
# (type, K, M, src0 view at a row's offset, ne2 of src1, CHUNK_R, kernel expected)
cases = [(D.TYPE_Q4_0, 4352, 37, False, 1, 0, "c8"), (D.TYPE_Q8_0, 14336, 9, False, 1, 0, "c4"),
         (D.TYPE_Q4_K, 4096, 300, False, 2, 0, "c2"), (D.TYPE_Q4_0, 4096, 133, False, 1, 1, "c1"),
         (D.TYPE_Q5_K, 4352, 21, False, 1, 0, "c8"), (D.TYPE_Q4_0, 4128, 37, True, 1, 0, "_1"),
         (D.TYPE_Q6_K, 4352, 21, False, 1, 0, "_1"), (D.TYPE_Q8_0, 4096, 5, False, 3, 0, "c2")]
qm.CHUNK = True
worst = 0.0
for t, k, m, offset, n2, r, want in cases:
    qm.CHUNK_R = r
    w = rng.standard_normal((m + 1, k)).astype(np.float32)
    x = rng.standard_normal((n2, 1, k)).astype(np.float32)
    res = []
    for backend in (be, cpu):
        ctx = mg.Context()
        big = ctx.from_numpy(w, t)
        wv = ctx.view_2d(big, k, m, big.nb[1], big.nb[1] if offset else 0)
        mm = ctx.mul_mat(wv, ctx.from_numpy(x))
        if backend is be:
            names = list(qm.grids(mm))
            assert names[-1].endswith(want), (names, want)
        gf = mg.Graph()
        gf.build_forward_expand(mm)
        backend.graph_compute(gf)
        backend.graph_compute(gf)             # the second compute replays the captured CUDA graph
        res.append(mm.numpy().copy())
    err = float(np.abs(res[0] - res[1]).max() / np.abs(res[1]).max())
    worst = max(worst, err)
    print(D.type_name(t), k, m, n2, "offset" if offset else "", names, "PDL", qm.pdl_on(), "rel err", err, flush=True)
assert worst < 1e-5, worst
print("memcheck script done, worst rel err", worst)
