"""Start one run of either kind: `launch(cfg)`, the one dispatch `bench.run` and `sweeps.tune` share.

A single-process run is `bench.runner.benchmark.run`; `--strategy multi_worker` is the driver of
`bench.distributed`, which starts the same run in every Ray Train worker and writes the one row.
"""

from __future__ import annotations

from bench.config import options
from bench.config.options import RunConfig
from bench.runner import benchmark


def launch(cfg: RunConfig, command="", out=None, write_row=True, on_eval=None):
    """The run's outcome (`status`, `row`, `exit_code`); raises ConfigError for bad input, nothing written."""
    if cfg.strategy == options.MULTI_WORKER:
        from bench.distributed import driver  # Ray loads only for a multi-worker run (about a second)

        return driver.run(cfg, command=command, out=out, write_row=write_row, on_eval=on_eval)
    return benchmark.run(cfg, command=command, out=out, write_row=write_row, on_eval=on_eval)
