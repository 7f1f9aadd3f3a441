"""Model-level graph builders written against the ggml-mirroring context API."""
