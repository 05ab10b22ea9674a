"""The worker side of `--strategy multi_worker`: what runs inside each worker process, whoever launched it.

`run_worker` is one worker's run under either launcher: one single run (the same loop, step
functions, data path and timer as every other strategy), handed the worker's own rules
(`WorkerRules`, as `RunHooks`): checkpoints by TF's multi-worker rule
(`checkpoints.WorkerCheckpoints`), the testing-only fault injection (`faults`) and the driver's
stop request. `train_worker` is the function Ray Train runs in every worker (it calls `run_worker`);
`bench.distributed.plain_worker` is the entry of a plain process (`--launcher tf_config`). The
MultiWorkerMirroredStrategy itself is a branch of `bench.hardware.devices.setup`, which TF_CONFIG
configures (set by Ray Train, or by the plain launcher). The workers talk to the driver through the
run's collector (`collector.Collector`), by a client (`ActorClient` or `FileCollector`).

The driver imports this module to hand `train_worker` to Ray, and has no TensorFlow (nor
needs Ray before it connects): TensorFlow and Ray are imported inside the functions that run
in the worker.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys

from bench.config import options
from bench.config.exits import first_line
from bench.config.options import ConfigError, RunConfig
from bench.distributed import faults
from bench.distributed.checkpoints import WorkerCheckpoints
from bench.distributed.collector import ActorClient, LineForwarder
from bench.distributed.scratch import ScratchFolders
from bench.results import mlperf_log
from bench.runner.benchmark import run as single_run
from bench.runner.loop import RunHooks


def train_worker(loop_config):
    """The Ray Train worker function: one single run per worker, reported to the collector actor."""
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    where = {
        "host": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "machine": machine_id(),
    }
    outcome = run_worker(
        options.from_dict(loop_config["cfg"]),
        loop_config["command"],
        rank,
        where,
        ActorClient(loop_config["collector"]),
    )
    if outcome.status == "failed":  # a failed worker fails the group: Ray restarts it or the run ends
        raise RuntimeError(outcome.row.get("error") or "failed")
    return outcome.status


def run_worker(cfg: RunConfig, command, rank, where, collector):
    """One worker of any launcher: the single run with the worker's rules, reported to `collector` (a client:
    `collector.ActorClient` under Ray Train, `collector.FileCollector` for plain processes). Returns the single
    run's `Outcome`; bad input and crashes are reported, then raised."""
    attempt = collector.start(rank, where)
    scratch = ScratchFolders()
    cfg = worker_config(cfg, rank, scratch)
    rules = WorkerRules(cfg, collector, rank, attempt, scratch)
    out = LineForwarder(collector, sys.stdout) if rank == 0 else sys.stdout
    info = {"rank": rank, "attempt": attempt, "host": where["host"], "ip": where["ip"]}
    try:
        outcome = single_run(cfg, command=command, out=out, write_row=False, hooks=rules.hooks())
    except ConfigError as err:
        collector.report(rank, attempt, {**info, "config_error": str(err)})
        raise
    except BaseException as exc:
        collector.report(rank, attempt, {**info, "error": first_line(exc)})
        raise
    else:
        info["mlperf_log"] = chief_log(cfg, outcome.row) if rank == 0 else ""
    finally:
        scratch.remove_all()
    machine = outcome.measured.machine if outcome.measured else None  # memory and CPU state, summed by the driver
    info.update(
        status=outcome.status,
        row=outcome.row,
        digest=rules.last_digest(),
        machine=dataclasses.asdict(machine) if machine else None,
        system=outcome.systems[0] if outcome.systems else None,
    )
    collector.report(rank, attempt, info)
    return outcome


def worker_config(cfg: RunConfig, rank, scratch: ScratchFolders):
    """The configuration one worker runs: only the chief keeps the run's own outputs."""
    folder = scratch.new()
    changes = {"results": os.path.join(folder, "unused.csv")}  # rows are the driver's
    if rank != 0:
        changes.update(tensorboard_dir=None, profile_dir=os.path.join(folder, "profile"))
    return cfg.replace(**changes)


def chief_log(cfg: RunConfig, row):
    """The text of the MLPerf log the chief wrote in its scratch folder (the driver puts it beside the results)."""
    if not row.get("mlperf_log"):
        return ""
    try:
        with open(mlperf_log.log_path(cfg.results, row["run_id"]), encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def machine_id():
    """This kernel's boot id: "hosts" that are namespaces of one machine (the local cluster) share it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class WorkerRules:
    """What the single-run path needs from the worker side, as `RunHooks`: TF's multi-worker checkpoint
    rule, fault injection, and the driver's stop request (asked after every window). Keeps the
    checkpoint manager the run built, for the state digest of its last save."""

    def __init__(self, cfg: RunConfig, collector, rank, attempt, scratch: ScratchFolders):
        self._cfg, self._collector, self._rank, self._attempt = cfg, collector, rank, attempt
        self._scratch = scratch
        self._fault = faults.FaultInjection(cfg, collector)
        self._checkpoints = None

    def hooks(self):
        return RunHooks(
            checkpoint_manager=self._checkpoint_manager,
            on_step=self._on_step,
            extra_marks=faults.fault_marks(self._cfg),
            mlperf_log=self._rank == 0,  # one log per run, the chief's
        )

    def last_digest(self):
        """The state digest of this worker's last checkpoint save ({} if it saved none)."""
        return dict(self._checkpoints.last_digest) if self._checkpoints else {}

    def _checkpoint_manager(self, checkpoint, strategy):
        self._checkpoints = WorkerCheckpoints(checkpoint, self._cfg, strategy, self._scratch)
        return self._checkpoints

    def _on_step(self, step):
        self._fault.at_step(step)
        return self._stop_request(step)

    def _stop_request(self, step):
        """The driver's stop reason ("SIGINT", "SIGTERM") if this worker must stop after `step`, else None."""
        return self._collector.poll(self._rank, self._attempt, step)
