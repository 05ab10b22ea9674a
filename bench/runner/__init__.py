"""One run from a checked config to its row: `loop.run(cfg)` (setup, signals, exit codes), `assembly`
(trainer, outputs, restored progress and controller put together, and the row's facts), `controller`
(owns the window loop, cadence and progress), `timing` (the `Chrono`: the only clock reader), `outputs`
(checkpoints, TensorBoard, profiler), `autotune` (`--autotune`: probes before the run) and `processes`
(`bench.run` as a child process, for the autotuner's probes and `sweeps.compare`'s arms).

May import `bench.training` and everything below it; nothing of multi-worker runs (their
worker side hands its rules in as `controller.RunHooks`). `loop` imports TensorFlow only
after the checks that need none.
"""
