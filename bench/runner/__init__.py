"""One run from a checked config to its row: `loop.run(cfg)` (signals, exit codes), `assembly`
(devices, data, trainer, outputs and controller put together), `controller` (owns the window
loop, cadence and progress), `timing` (the `Chrono`: the only clock reader), `outputs`
(checkpoints, TensorBoard, profiler).

May import `bench.training` and everything below it; nothing of multi-worker runs (their
worker side hands its rules in as `controller.RunHooks`). `loop` imports TensorFlow only
after the checks that need none.
"""
