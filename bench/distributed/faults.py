"""Testing only: `--fail_worker_at_step RANK:STEP[:stall]` makes one worker exit (or stall) at a window boundary.

"Once" is per run, not per process: the collector (a client of it: `bench.distributed.collector`)
outlives worker-group restarts and says whether the fault already fired, so a restarted worker passes
the step.
"""

from __future__ import annotations

import os
import sys
import time

from bench.config import identity, options
from bench.config.options import RunConfig


def fault_marks(cfg: RunConfig):
    """Window boundaries the fault injection needs (the step it fires at)."""
    if cfg.fail_worker_at_step is None:
        return set()
    return {options.parse_worker_fault(cfg.fail_worker_at_step)[1]}


class FaultInjection:
    """The fault of `cfg.fail_worker_at_step` in one worker's run, asked after every window (`at_step`)."""

    def __init__(self, cfg: RunConfig, collector):  # collector: a client (ActorClient, FileCollector)
        self._spec, self._collector = cfg.fail_worker_at_step, collector
        self._done = False

    def at_step(self, step):
        """The worker named by the spec exits (or stalls) the first time the run reaches its STEP."""
        if self._spec is None or self._done:
            return
        rank, fault_step, mode = options.parse_worker_fault(self._spec)
        if identity.task_index() != rank or step < fault_step:
            return
        self._done = True
        if not self._collector.fire_once(self._spec):
            return
        print(
            f"fault injection: worker {rank} {'exits' if mode == 'exit' else 'stalls'} at step {step}",
            file=sys.stderr,
            flush=True,
        )
        if mode == "exit":
            os._exit(17)
        while True:  # stall: stop responding until the worker group is ended (by Ray, or the plain driver)
            time.sleep(3600)
