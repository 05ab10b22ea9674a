"""The worker side of `--strategy multi_worker`: what runs inside each Ray Train worker process.

`train_worker` is the function Ray Train runs in every worker: one `bench.runner.benchmark.run`
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
from bench.config.exits import first_line
from bench.config.options import ConfigError, RunConfig
from bench.runner import benchmark
from bench.runner.loop import RunHooks

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


SCRATCH_PREFIX = "bench-worker-"  # + "<pid>-": a folder whose process is gone is removed by the next worker


def scratch_folder():
    """A temporary folder of this worker process, removed when its run ends. A worker that was killed
    (its node lost, a fault injected) cannot remove its own: each new worker removes those of dead processes."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        pid = name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if name.startswith(SCRATCH_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    SCRATCH.append(folder)
    return folder


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_config(cfg: RunConfig, rank):
    """The configuration one worker runs: only the chief keeps the run's own outputs."""
    scratch = scratch_folder()
    changes = {"results": os.path.join(scratch, "unused.csv")}  # rows are the driver's
    if rank != 0:
        changes.update(tensorboard_dir=None, profile_dir=os.path.join(scratch, "profile"))
    return cfg.replace(**changes)


def train_worker(loop_config):
    """The Ray Train worker function: one `bench.runner.benchmark.run` per worker, reported to the collector."""
    import ray
    import ray.train

    global _COLLECTOR
    collector = _COLLECTOR = loop_config["collector"]
    rank = ray.train.get_context().get_world_rank()
    where = {
        "host": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "machine": machine_id(),
    }
    attempt = ray.get(collector.start.remote(rank, where))
    cfg = worker_config(options.from_dict(loop_config["cfg"]), rank)
    out = _LineForwarder(collector, sys.stdout) if rank == 0 else sys.stdout
    info = {"rank": rank, "attempt": attempt, "host": where["host"], "ip": where["ip"]}
    try:
        outcome = benchmark.run(
            cfg, command=loop_config["command"], out=out, write_row=False, hooks=_hooks(cfg, rank, attempt)
        )
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


def _hooks(cfg: RunConfig, rank=0, attempt=1):
    """What the single-run path needs from the worker side: TF's multi-worker checkpoint rule, fault
    injection, and the driver's stop request (asked after every window)."""

    def on_step(step):
        at_step(cfg, step)
        return stop_request(rank, attempt, step)

    return RunHooks(
        checkpoint_manager=lambda checkpoint, strategy: WorkerCheckpoints(checkpoint, cfg, strategy),
        on_step=on_step,
        extra_marks=fault_marks(cfg),
    )


def machine_id():
    """This kernel's boot id: "hosts" that are namespaces of one machine (the local cluster) share it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def stop_request(rank, attempt, step):
    """The driver's stop reason ("SIGINT", "SIGTERM") if this worker must stop after `step`, else None."""
    if _COLLECTOR is None:
        return None
    import ray

    try:
        return ray.get(_COLLECTOR.poll.remote(rank, attempt, step), timeout=30)
    except Exception:  # noqa: BLE001 - the driver is gone or slow: training goes on (Ray ends an orphaned job)
        return None


class Collector:
    """One per run (a Ray actor on the driver's node): what the workers tell the driver, kept across
    worker-group restarts, and the driver's stop request.

    A stop request must end every worker after the same window (a worker that trains one more
    window waits in its all-reduce for peers that stopped). Every worker asks after each window
    (`poll`) and all end at the same window boundaries, so the rule is: the request stops a
    worker at the first boundary beyond every step a worker of the attempt was told to go on from.
    """

    def __init__(self, workers=0):
        self._workers = workers  # the group's size: a "started" event once every rank of an attempt started
        self.starts = {}  # rank -> how many times its training function started
        self.where = {}  # rank -> {host, ip, node_id, pid, attempt} of its latest start
        self.reports = {}  # rank -> the latest attempt's report
        self.lines = []  # the chief's progress lines
        self.events = []  # ("started", attempt, where) and ("failed", attempt, {rank: error}, step), in order
        self.fired = {}  # fault-injection key -> when it fired (time.time() on the worker's node)
        self.stop_reason = None
        self._go_on_from = {}  # attempt -> the highest step a worker was told to go on from
        self.last_step = {}  # attempt -> the highest step a worker reached

    def start(self, rank, where=None):
        self.starts[rank] = self.starts.get(rank, 0) + 1
        attempt = self.starts[rank]
        self.where[rank] = {**(where or {}), "attempt": attempt}
        started = {r: w for r, w in self.where.items() if w["attempt"] == attempt}
        if len(started) == self._workers and not any(e[0] == "started" and e[1] == attempt for e in self.events):
            self.events.append(("started", attempt, started))
        return attempt

    def poll(self, rank, attempt, step):
        self.last_step[attempt] = max(self.last_step.get(attempt, 0), step)
        if self.stop_reason is None:
            self._go_on_from[attempt] = max(self._go_on_from.get(attempt, -1), step)
            return None
        return self.stop_reason if step > self._go_on_from.get(attempt, -1) else None

    def request_stop(self, reason):
        self.stop_reason = self.stop_reason or reason

    def group_failed(self, failures):
        """From the Ray Train controller (`failure_listener`): {rank: error line} of a failed attempt."""
        attempt = max(self.starts.values(), default=1)
        self.events.append(("failed", attempt, failures, self.last_step.get(attempt, 0)))

    def report(self, rank, attempt, info):
        self.reports[rank] = info

    def log(self, line):
        self.lines.append(line)

    def news(self, lines_seen, events_seen):
        return self.lines[lines_seen:], self.events[events_seen:]

    def fire_once(self, key):
        if key in self.fired:
            return False
        self.fired[key] = time.time()
        return True

    def state(self):
        attempt = max(self.starts.values(), default=1)
        return {
            "starts": dict(self.starts),
            "reports": dict(self.reports),
            "fired": dict(self.fired),
            "where": dict(self.where),
            "events": list(self.events),
            "last_step": self.last_step.get(attempt),
        }


def failure_listener(collector):
    """A Ray Train callback (it runs in the Train controller) that tells the collector of every failed attempt."""
    import ray.train

    class FailureListener(ray.train.UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            collector.group_failed.remote({rank: first_line(err) for rank, err in worker_exceptions.items()})

    return FailureListener()


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
    return {
        "trainable": sha(model.trainable_variables),
        "bn_moving": sha(model.non_trainable_variables),
        "optimizer": sha(optimizer.variables),
    }


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
        self._dir = cfg.checkpoint_dir if self.chief else scratch_folder()
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
    print(
        f"fault injection: worker {rank} {'exits' if mode == 'exit' else 'stalls'} at step {step}",
        file=sys.stderr,
        flush=True,
    )
    if mode == "exit":
        os._exit(17)
    while True:  # stall: stop responding until Ray ends the worker group
        time.sleep(3600)
