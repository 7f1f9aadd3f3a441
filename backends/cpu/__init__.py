"""The Numba CPU backend: one kernel file per op family, registered with the op registry."""
from . import jit  # noqa: F401
from . import elementwise  # noqa: F401
from . import reduce, linalg  # noqa: F401
from . import layout, write  # noqa: F401
from . import gated_delta_net  # noqa: F401
from . import fused  # noqa: F401
