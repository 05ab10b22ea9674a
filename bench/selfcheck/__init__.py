"""The self-check (`python -m bench.check`): numerics and devices compared as a run uses them.

May import `bench.training`, `bench.hardware`, `bench.results` and `bench.config`; nothing imports it but the entry point.
"""
