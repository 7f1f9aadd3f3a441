"""ggml's block-quantized types: enum values (ggml.h), block structs (ggml-common.h) and the
vec_dot type each one's MUL_MAT quantizes src1 to (ggml-cpu's type_traits_cpu).

A block holds `blck_size` consecutive elements of a row (along ne0) in `type_size` bytes, laid
out exactly as ggml's `block_q*` struct; BLOCK_DTYPES spells each struct as a numpy structured
dtype (ggml_half as float16). minigraph.core.dtypes re-exports everything here.
"""
from __future__ import annotations

import numpy as np

TYPE_F32 = 0
TYPE_Q4_0 = 2
TYPE_Q4_1 = 3
TYPE_Q5_0 = 6
TYPE_Q5_1 = 7
TYPE_Q8_0 = 8
TYPE_Q8_1 = 9
TYPE_Q4_K = 12
TYPE_Q5_K = 13
TYPE_Q6_K = 14
TYPE_Q8_K = 15
TYPE_I32 = 26
TYPE_I64 = 27
TYPE_BF16 = 30

QK = 32      # ggml's QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1
QK_K = 256   # the K-quants' super-block
K_SCALE_SIZE = 12

# ggml-common.h's block structs, field for field (ggml_half is stored as float16)
BLOCK_DTYPES: dict[int, np.dtype] = {
    TYPE_Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", QK // 2)]),
    TYPE_Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", QK // 2)]),
    TYPE_Q5_0: np.dtype([("d", "<f2"), ("qh", "u1", 4), ("qs", "u1", QK // 2)]),
    TYPE_Q5_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qh", "u1", 4), ("qs", "u1", QK // 2)]),
    TYPE_Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", QK)]),
    TYPE_Q8_1: np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", QK)]),
    TYPE_Q4_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", K_SCALE_SIZE), ("qs", "u1", QK_K // 2)]),
    TYPE_Q5_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", K_SCALE_SIZE), ("qh", "u1", QK_K // 8),
                         ("qs", "u1", QK_K // 2)]),
    TYPE_Q6_K: np.dtype([("ql", "u1", QK_K // 2), ("qh", "u1", QK_K // 4), ("scales", "i1", QK_K // 16), ("d", "<f2")]),
    TYPE_Q8_K: np.dtype([("d", "<f4"), ("qs", "i1", QK_K), ("bsums", "<i2", QK_K // 16)]),
}
BLCK = {t: (QK_K if t in (TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K, TYPE_Q8_K) else QK) for t in BLOCK_DTYPES}
QUANT_TYPES = tuple(BLOCK_DTYPES)
QUANT_NAMES = {TYPE_Q4_0: "q4_0", TYPE_Q4_1: "q4_1", TYPE_Q5_0: "q5_0", TYPE_Q5_1: "q5_1", TYPE_Q8_0: "q8_0",
               TYPE_Q8_1: "q8_1", TYPE_Q4_K: "q4_K", TYPE_Q5_K: "q5_K", TYPE_Q6_K: "q6_K", TYPE_Q8_K: "q8_K"}
# ggml-cpu's type_traits_cpu[t].vec_dot_type: what MUL_MAT quantizes src1 to before the dot products
VEC_DOT_TYPE = {TYPE_Q4_0: TYPE_Q8_0, TYPE_Q4_1: TYPE_Q8_1, TYPE_Q5_0: TYPE_Q8_0, TYPE_Q5_1: TYPE_Q8_1,
                TYPE_Q8_0: TYPE_Q8_0, TYPE_Q8_1: TYPE_Q8_1, TYPE_Q4_K: TYPE_Q8_K, TYPE_Q5_K: TYPE_Q8_K,
                TYPE_Q6_K: TYPE_Q8_K, TYPE_Q8_K: TYPE_F32}

