"""The schedule stage: place nodes on backends, split the graph, copy between backends."""
