"""Test setup: without an NVIDIA GPU, CUDA kernels run on numba-cuda's simulator (small shapes).

Numba reads NUMBA_ENABLE_CUDASIM when it is first imported, so this runs before any test module
imports minigraph or numba."""
import os

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

# pytest-xdist already runs a worker a core: each worker's plans compile in that worker alone
# unless a test asks for compile workers (MINIGRAPH_COMPILE_JOBS in its subprocess's env)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("MINIGRAPH_COMPILE_JOBS", "1")
