"""Running across hosts: the Ray cluster side of multi-worker runs (issue #17)."""
