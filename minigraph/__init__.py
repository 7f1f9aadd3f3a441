"""minigraph: a small tensor-graph compiler in Python that mirrors ggml.

The transcription rule: ggml_X(ctx, ...) is ctx.X(...); ggml functions without a context are
module functions here (mg.nbytes(t), mg.build_forward_expand(gf, t)); GGML_ constants drop
their prefix (mg.TYPE_F32, mg.TRI_TYPE_LOWER_DIAG) and keep ggml's values.

The package is a pipeline whose folders import downwards only (docs/design.md):
core -> ops -> models -> passes | schedule -> memory -> device -> backends -> run -> tools.
This file is the public surface and may import from every layer.
"""
from minigraph import ops as _ops  # noqa: F401  (registers every op)
from minigraph.backends import cpu as _cpu  # noqa: F401  (registers the CPU kernels)
from minigraph.backends.reference import reference_compute
from minigraph.core.buffer import Buffer, HostBuffer
from minigraph.core.context import Context, init
from minigraph.core.dtypes import (TYPE_BF16, TYPE_F16, TYPE_F32, TYPE_I32, TYPE_I64, TYPE_Q4_0, TYPE_Q4_1,
                                   TYPE_Q4_K, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q5_K, TYPE_Q6_K, TYPE_Q8_0, TYPE_Q8_1,
                                   TYPE_Q8_K, blck_size, is_quantized, type_name, type_size)
from minigraph.core.gguf_io import gguf_bind, gguf_info, gguf_load, gguf_save
from minigraph.core.quants import dequantize, quantize
from minigraph.core.errors import MinigraphError
from minigraph.core.graph import Graph, build_forward_expand, graph_n_nodes, graph_node
from minigraph.core.version import __version__
from minigraph.core.tensor import (Tensor, are_same_shape, are_same_stride, can_repeat, element_size,
                                   format_name, get_name, is_contiguous, is_contiguous_1, is_contiguous_2,
                                   is_contiguous_rows, is_empty, is_matrix, is_permuted, is_scalar,
                                   is_transposed, is_vector, n_dims, nbytes, nelements, nrows, row_size,
                                   set_input, set_name, set_output, set_param)
from minigraph.device.backend import Backend, Support
from minigraph.device.buffers import (backend_alloc_ctx_tensors, backend_tensor_alloc, backend_tensor_get,
                                      backend_tensor_set, tensor_buffer)
from minigraph.device.split_buffer import SplitBufferType, split_buffer_type
from minigraph.ops import (GDN_BCAST_INTERLEAVED, GDN_BCAST_TILED, PREC_DEFAULT, PREC_F32, ROPE_TYPE_IMROPE, ROPE_TYPE_MROPE, ROPE_TYPE_NEOX,
                           ROPE_TYPE_NORM, ROPE_TYPE_NORMAL, ROPE_TYPE_VISION, TRI_TYPE_LOWER, TRI_TYPE_LOWER_DIAG, TRI_TYPE_UPPER,
                           TRI_TYPE_UPPER_DIAG, flash_attn_ext_add_sinks, flash_attn_ext_get_prec,
                           flash_attn_ext_set_prec, gated_delta_net_get_bcast, gated_delta_net_set_bcast,
                           soft_max_add_sinks)
from minigraph.passes import Optimized
from minigraph.run import backend_cpu_init, backend_cuda_init, backend_sched_new, compute, optimize
from minigraph.schedule.scheduler import BackendSched
from minigraph.tools.graphio import load_graph, save_graph

__all__ = [n for n in dir() if not n.startswith("_")] + ["__version__"]
