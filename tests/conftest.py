"""Test setup: without an NVIDIA GPU, CUDA kernels run on numba-cuda's simulator (small shapes).

Numba reads NUMBA_ENABLE_CUDASIM when it is first imported, so this runs before any test module
imports minigraph or numba."""
import os

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
