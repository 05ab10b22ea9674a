"""The worker side of `--strategy multi_worker`: what runs inside each Ray Train worker process.

`train_worker` is the function Ray Train runs in every worker: one `bench.runner.loop.run`
(the same loop, step functions, data path and timer as every other strategy), handed the
worker's own rules through `RunHooks`: checkpoints by TF's multi-worker rule
(`WorkerCheckpoints`) and the testing-only fault injection (`at_step`). The
MultiWorkerMirroredStrategy itself is a branch of `bench.hardware.devices.setup`.
The workers talk to the driver through one small Ray actor (`Collector`).

The driver imports this module to hand `train_worker` to Ray, and has no TensorFlow (nor
needs Ray before it connects): TensorFlow, numpy and Ray are imported inside the functions
that run in the worker.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import sys
import tempfile
import time

from bench.config import identity, options
from bench.config.options import ConfigError, RunConfig
from bench.runner import loop
from bench.runner.loop import first_line
from bench.runner.controller import RunHooks

_COLLECTOR = None  # the run's collector actor handle, inside a Ray Train worker
SCRATCH = []  # this worker's temporary folders, removed when its run ends
LAST_DIGEST = {}  # the state digest of this worker's last checkpoint save
_FAULT_DONE = False


class _LineForwarder(io.TextIOBase):
    """The chief's progress output: echoed to its own stdout and sent line by line to the driver.

    Forwarding stops at the run summary ("status ..."): the driver prints its own for the whole run.
    """

    def __init__(self, collector, echo):
        self._collector, self._echo = collector, echo
        self._buffer = ""
        self._forward = True

    def writable(self):
        return True

    def write(self, text):
        self._echo.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.startswith("status "):
                self._forward = False
            if self._forward:
                self._collector.log.remote(line)
        return len(text)

    def flush(self):
        self._echo.flush()


def worker_config(cfg: RunConfig, rank):
    """The configuration one worker runs: only the chief keeps the run's own outputs."""
    scratch = tempfile.mkdtemp(prefix=f"bench-worker{rank}-")
    SCRATCH.append(scratch)
    changes = {"results": os.path.join(scratch, "unused.csv")}  # rows are the driver's
    if rank != 0:
        changes.update(tensorboard_dir=None, profile_dir=os.path.join(scratch, "profile"))
    return cfg.replace(**changes)


def train_worker(loop_config):
    """The Ray Train worker function: one `bench.runner.loop.run` per worker, reported to the collector."""
    import ray
    import ray.train

    global _COLLECTOR
    collector = _COLLECTOR = loop_config["collector"]
    rank = ray.train.get_context().get_world_rank()
    attempt = ray.get(collector.start.remote(rank))
    cfg = worker_config(options.from_dict(loop_config["cfg"]), rank)
    out = _LineForwarder(collector, sys.stdout) if rank == 0 else sys.stdout
    info = {"rank": rank, "attempt": attempt, "host": socket.gethostname()}
    try:
        outcome = loop.run(cfg, command=loop_config["command"], out=out, write_row=False, hooks=_hooks(cfg))
    except ConfigError as err:
        ray.get(collector.report.remote(rank, attempt, {**info, "config_error": str(err)}))
        raise
    except BaseException as exc:
        ray.get(collector.report.remote(rank, attempt, {**info, "error": first_line(exc)}))
        raise
    finally:
        for folder in SCRATCH:
            shutil.rmtree(folder, ignore_errors=True)
    info.update(status=outcome.status, row=outcome.row, digest=dict(LAST_DIGEST))
    ray.get(collector.report.remote(rank, attempt, info))
    if outcome.status == "failed":  # a failed worker fails the group: Ray restarts it or the run ends
        raise RuntimeError(outcome.row.get("error") or "failed")
    return outcome.status


def _hooks(cfg: RunConfig):
    """What the single-run path needs from the worker side: TF's multi-worker checkpoint rule, fault injection."""
    return RunHooks(
        checkpoint_manager=lambda checkpoint, strategy: WorkerCheckpoints(checkpoint, cfg, strategy),
        on_step=(lambda step: at_step(cfg, step)) if cfg.fail_worker_at_step else None,
        extra_marks=fault_marks(cfg))


class Collector:
    """One per run (a Ray actor): what the workers tell the driver, kept across worker-group restarts."""

    def __init__(self):
        self.starts = {}  # rank -> how many times its training function started
        self.reports = {}  # rank -> the latest attempt's report
        self.lines = []  # the chief's progress lines
        self.fired = {}  # fault-injection key -> when it fired (time.time() on the worker's node)

    def start(self, rank):
        self.starts[rank] = self.starts.get(rank, 0) + 1
        return self.starts[rank]

    def report(self, rank, attempt, info):
        self.reports[rank] = info

    def log(self, line):
        self.lines.append(line)

    def lines_since(self, n):
        return self.lines[n:]

    def fire_once(self, key):
        if key in self.fired:
            return False
        self.fired[key] = time.time()
        return True

    def state(self):
        return {"starts": dict(self.starts), "reports": dict(self.reports), "fired": dict(self.fired)}


# ---------------------------------------------------------------------------


def _barrier(strategy):
    """Every worker reaches this point before any goes on (a tiny all-reduce)."""
    import tensorflow as tf

    one = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(1.0))
    strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None).numpy()


def state_digest(checkpoint):
    """sha256 (12 hex digits) of this worker's local copy of the weights, BN moving statistics and optimizer state."""
    import numpy as np

    def sha(variables):
        h = hashlib.sha256()
        for v in variables:
            h.update(np.ascontiguousarray(np.asarray(v.numpy())).tobytes())
        return h.hexdigest()[:12]

    model, optimizer = checkpoint.model, checkpoint.optimizer
    return {"trainable": sha(model.trainable_variables), "bn_moving": sha(model.non_trainable_variables),
            "optimizer": sha(optimizer.variables)}


class WorkerCheckpoints:
    """TF's multi-worker checkpoint rule, with a CheckpointManager's `latest_checkpoint` and `save`.

    Every worker saves (saving reads variables, which may start collectives that every
    worker must join): the chief into --checkpoint_dir, the others into a temporary folder
    emptied after each save. Every worker restores the chief's latest checkpoint, after a
    barrier. With workers on several nodes, --checkpoint_dir must be storage they all see.
    """

    def __init__(self, checkpoint, cfg: RunConfig, strategy, max_to_keep=2):
        import tensorflow as tf

        self._checkpoint, self._strategy = checkpoint, strategy
        self.chief = identity.is_chief(cfg)
        self._dir = cfg.checkpoint_dir if self.chief else tempfile.mkdtemp(prefix="bench-worker-ckpt-")
        if not self.chief:
            SCRATCH.append(self._dir)
        self._manager = tf.train.CheckpointManager(checkpoint, self._dir, max_to_keep=max_to_keep if self.chief else 1)
        _barrier(strategy)  # the chief's files of an earlier attempt are what everyone reads
        self.latest_checkpoint = tf.train.latest_checkpoint(cfg.checkpoint_dir)

    def save(self, checkpoint_number=None):
        path = self._manager.save(checkpoint_number=checkpoint_number)
        LAST_DIGEST.clear()
        LAST_DIGEST.update(state_digest(self._checkpoint))
        if not self.chief:
            shutil.rmtree(self._dir, ignore_errors=True)
            os.makedirs(self._dir, exist_ok=True)
        _barrier(self._strategy)  # nobody reads or moves on before the chief's files are complete
        return path


def fault_marks(cfg: RunConfig):
    """Window boundaries the fault injection needs (the step it fires at)."""
    if cfg.fail_worker_at_step is None:
        return set()
    return {options.parse_worker_fault(cfg.fail_worker_at_step)[1]}


def fault_injection(cfg: RunConfig):
    """The controller's `on_step` hook for --fail_worker_at_step, or None."""
    if cfg.fail_worker_at_step is None:
        return None
    return lambda step: at_step(cfg, step)


def at_step(cfg: RunConfig, step):
    """Testing only: the worker named by --fail_worker_at_step exits (or stalls) the first time it reaches STEP.

    "The first time" is per run, not per process: the collector actor outlives
    worker-group restarts, so a restarted worker passes the step.
    """
    global _FAULT_DONE
    if cfg.fail_worker_at_step is None or _FAULT_DONE or _COLLECTOR is None:
        return
    rank, fault_step, mode = options.parse_worker_fault(cfg.fail_worker_at_step)
    if identity.task_index() != rank or step < fault_step:
        return
    import ray

    _FAULT_DONE = True
    if not ray.get(_COLLECTOR.fire_once.remote(cfg.fail_worker_at_step)):
        return
    print(f"fault injection: worker {rank} {'exits' if mode == 'exit' else 'stalls'} at step {step}",
          file=sys.stderr, flush=True)
    if mode == "exit":
        os._exit(17)
    while True:  # stall: stop responding until Ray ends the worker group
        time.sleep(3600)
