"""The tools: the CLI, graph dump, compare, profile, graph files and the conformance runner."""
