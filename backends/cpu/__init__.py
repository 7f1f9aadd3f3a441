"""The Numba CPU backend: one kernel file per op family, registered with the op registry."""
from minigraph.backends.cpu import vector_width  # noqa: F401  (first: 512-bit vectors before anything compiles)
from minigraph.backends.cpu import threads  # noqa: F401  (OpenMP wait defaults before Numba's threads start)
from minigraph.backends.cpu import jit  # noqa: F401
from minigraph.backends.cpu import elementwise  # noqa: F401
from minigraph.backends.cpu import reduce, linalg  # noqa: F401
from minigraph.backends.cpu import layout, write  # noqa: F401
from minigraph.backends.cpu import rope, rows  # noqa: F401
from minigraph.backends.cpu import gated_delta_net  # noqa: F401
from minigraph.backends.cpu import fused  # noqa: F401
from minigraph.backends.cpu import attention  # noqa: F401
from minigraph.backends.cpu import quant  # noqa: F401
