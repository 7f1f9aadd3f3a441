"""minigraph's ops: each family module registers its OpDefs and builders on import."""
from minigraph.ops import layout, elementwise, reduce, linalg, write, gated_delta_net  # noqa: F401
from minigraph.ops import cases  # noqa: F401  (the families' conformance cases)
from minigraph.ops import fused  # noqa: F401
from minigraph.ops.linalg import TRI_TYPE_LOWER, TRI_TYPE_LOWER_DIAG, TRI_TYPE_UPPER, TRI_TYPE_UPPER_DIAG  # noqa: F401

from minigraph.core.registry import OPS as _OPS

# every op can be read back from a graph file through its builder (OpDef.rebuild)
_missing = sorted(name for name, op in _OPS.items() if op.rebuild is None)
if _missing:
    raise RuntimeError(f"ops without a graph-file rebuild hook (OpDef.rebuild): {', '.join(_missing)}")
