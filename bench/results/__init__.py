"""What a run leaves: the row (`rows`), the results table (`table`: schema, provenance, locked
append) and the statistics over timed windows (`metrics`).

Imports only `bench.config` and `resnet`'s cost model; no TensorFlow, Keras or Ray (the Ray
driver, the report and the sweeps write and read rows without them).
"""
