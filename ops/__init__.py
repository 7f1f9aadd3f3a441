"""minigraph's ops: each family module registers its OpDefs and builders on import."""
from minigraph.ops import layout, elementwise, reduce, linalg, write, gated_delta_net  # noqa: F401
from minigraph.ops import rope, rows  # noqa: F401
from minigraph.ops import cases  # noqa: F401  (the families' conformance cases)
from minigraph.ops import rope_cases  # noqa: F401  (ROPE and SET_ROWS cases)
from minigraph.ops import fused  # noqa: F401
from minigraph.ops.linalg import TRI_TYPE_LOWER, TRI_TYPE_LOWER_DIAG, TRI_TYPE_UPPER, TRI_TYPE_UPPER_DIAG  # noqa: F401
from minigraph.ops import attention, attention_cases  # noqa: F401
from minigraph.ops import quant_cases  # noqa: F401  (CPY, GET_ROWS, SET_ROWS, MUL_MAT on Q4_0 ... Q6_K)
from minigraph.ops.attention import (PREC_DEFAULT, PREC_F32, flash_attn_ext_add_sinks,  # noqa: F401
                                     flash_attn_ext_get_prec, flash_attn_ext_set_prec)
from minigraph.ops.reduce import soft_max_add_sinks  # noqa: F401
from minigraph.ops.gated_delta_net import (GDN_BCAST_INTERLEAVED, GDN_BCAST_TILED,  # noqa: F401
                                           gated_delta_net_get_bcast, gated_delta_net_set_bcast)
from minigraph.ops.rope import (ROPE_TYPE_IMROPE, ROPE_TYPE_MROPE, ROPE_TYPE_NEOX, ROPE_TYPE_NORM,  # noqa: F401
                                ROPE_TYPE_NORMAL, ROPE_TYPE_VISION)

from minigraph.core.registry import OPS as _OPS

# every op can be read back from a graph file through its builder (OpDef.rebuild)
_missing = sorted(name for name, op in _OPS.items() if op.rebuild is None)
if _missing:
    raise RuntimeError(f"ops without a graph-file rebuild hook (OpDef.rebuild): {', '.join(_missing)}")
