"""minigraph's ops: each family module registers its OpDefs and builders on import."""
from . import registry  # noqa: F401
from . import layout, elementwise, reduce, linalg, write, gated_delta_net  # noqa: F401
from . import fused  # noqa: F401
from .linalg import TRI_TYPE_LOWER, TRI_TYPE_LOWER_DIAG, TRI_TYPE_UPPER, TRI_TYPE_UPPER_DIAG  # noqa: F401
