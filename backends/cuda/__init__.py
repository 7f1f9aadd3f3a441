"""The Numba CUDA backend: one kernel file per op family, registered with the op registry.

Importing this package registers the "cuda" kernels (numba-cuda must be installed; set
NUMBA_ENABLE_CUDASIM=1 before numba is imported to run them on the CPU simulator).
"""
from minigraph.backends.cuda import common  # noqa: F401
from minigraph.backends.cuda import elementwise, fused, layout, reduce, linalg, write, gated_delta_net  # noqa: F401
from minigraph.backends.cuda import attention  # noqa: F401
from minigraph.backends.cuda import rope, rows  # noqa: F401
from minigraph.backends.cuda import quant_rows, quant_matmul  # noqa: F401 - block-quantized tensors
from minigraph.backends.cuda.backend import CudaBackend, CudaBuffer  # noqa: F401
