"""The memory stage: plan compute buffers, bind tensors to memory, the planning scaffold every backend shares."""
