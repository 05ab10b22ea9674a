"""One run from a checked config to its row.

`benchmark.run(cfg)` is the whole run, top to bottom in sections (check, settle, devices and data,
build, train, row); `loop` holds the `Controller` (the window loop, cadence, progress; it returns a
frozen `Measured` record) and the `Workload` protocol it calls; `timing` the `Chrono` (the only clock
reader); `outputs` checkpoints, TensorBoard and the profiler; `autotune` (`--autotune`: probes before
the run) and `processes` (`bench.run` as a child process, for the autotuner's probes and
`sweeps.compare`'s arms).

May import `bench.training` and everything below it; nothing of multi-worker runs (their worker
side hands its rules in as `loop.RunHooks`). `benchmark` imports TensorFlow only after the checks
that need none, inside the section that sets up the devices.
"""
