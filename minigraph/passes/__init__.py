"""Graph passes run by minigraph.optimize: each takes a Graph and returns rewrites (never edits it)."""
