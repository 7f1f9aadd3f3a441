"""The core: tensor model, dtypes, errors, graph, context, buffers and the op registry types. Imports nothing above it."""
