"""The optimize stage: graph passes (each takes a Graph and returns rewrites, never edits it) and
the pipeline that runs them (pipeline.py). DEFAULT_PIPELINE is what mg.compute, mg.optimize and
the schedulers of mg.backend_sched_new run."""
from minigraph.passes import attention, delta_net, elementwise, gdn_repeat, gdn_state_write
from minigraph.passes.pipeline import Optimized, Pipeline

DEFAULT_PIPELINE = Pipeline([delta_net.chunked_pass, delta_net.autoregressive_pass, gdn_repeat.gdn_repeat_pass,
                             gdn_state_write.gdn_state_write_pass,
                             attention.attention_pass,
                             elementwise.elementwise_pass])

__all__ = ["DEFAULT_PIPELINE", "Optimized", "Pipeline"]
