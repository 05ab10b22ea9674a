"""The benchmark harness: one configuration trained, timed and recorded as one row.

Packages, top down (a package imports only from those below it; `lint-imports` checks it):

    bench.run, bench.check   entry points: flags -> config -> one call
    bench.launch             launch(cfg): a single-process run or a multi-worker one, the one dispatch
    bench.distributed        --strategy multi_worker: the driver, the worker side, the Ray connection
    bench.runner             benchmark.run(cfg): one run in sections; loop (the controller), timing, outputs
    bench.selfcheck          the checks of `python -m bench.check`
    bench.training           data, augmentation, compiled step functions, trainers
    bench.hardware           devices and strategies, CPU features, measured peak, datasheet
    bench.results            the row, the results table, statistics
    bench.config             options, defaults, validation, recipe, run identity, flags, exits (no TensorFlow)
"""
