"""`--launcher tf_config`: a multi-worker run's workers as plain processes on this machine, without Ray.

The driver (`bench.distributed.driver.run`, which checks, writes the row and concludes as for Ray)
calls `launch`: it checks the request against this machine's CPUs and GPUs, picks K free ports on
127.0.0.1, and starts K `python -m bench.distributed.plain_worker` processes, each with
`TF_CONFIG = {"cluster": {"worker": [127.0.0.1:p0, ...]}, "task": {"type": "worker", "index": i}}`
and the environment Ray Train gives its workers (oneDNN, TensorFlow's log level, `OMP_NUM_THREADS`,
`TF_USE_LEGACY_KERAS`), so the two launchers differ only by Ray. Each worker runs
`bench.distributed.worker.run_worker`, the code path of a Ray Train worker, and talks to the driver
through the run's collector kept in a file (`collector.FileCollector`): reports, the chief's
progress lines (printed here), the stop request. A Ctrl-C or SIGTERM is relayed through it (the
workers run in process groups of their own, so a terminal's Ctrl-C reaches only the driver); a
second one exits at once and the workers follow (they die with their parent). A worker that exits with
an error ends the group: the others get `FAILED_GRACE_S` to fail by themselves (a peer's
all-reduce notices within seconds), then are killed. No restarts (`--max_failures` is Ray's).

Each worker's output goes to `worker-<rank>.log` in the run's temporary folder, kept (and named)
when the run failed; its `warning:` and `note:` lines (a cache that cannot be written, an emulated
precision) are relayed to the driver's stderr as they appear, once per text (`Relay`), so a user sees
them as a single process shows them. No TensorFlow and no Ray here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench.config import exits, setup_checks
from bench.config.options import RunConfig
from bench.distributed.collector import FileCollector
from bench.hardware import nvml

FAILED_GRACE_S = 30.0  # after a worker failed, how long the others may take to end by themselves
POLL_S = 0.5
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_ports(count, host="127.0.0.1"):
    """`count` TCP ports free on `host` now (held open together while picked, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses, index):
    """TF_CONFIG of worker `index` in a cluster of `addresses` (what Ray Train sets, with its own addresses)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def worker_env(cfg: RunConfig, addresses, rank, base_env, run_env, visible_gpus=None):
    """The environment of worker `rank`: this process's, the run's (`run_env`: oneDNN and TensorFlow's log
    level, as the Ray launcher hands them to its workers), TF_CONFIG, and what Ray Train's workers get."""
    env = {**base_env, **run_env}
    env["TF_CONFIG"] = tf_config(addresses, rank)
    env.setdefault("OMP_NUM_THREADS", str(max(1, math.floor(cfg.cpus_per_worker))))  # Ray: its CPUs, floored
    env["TF_USE_LEGACY_KERAS"] = "1"  # Ray Train sets it; the harness imports keras, never tf.keras
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    gpus = cfg.gpus_per_worker or 0
    if gpus and visible_gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in visible_gpus[rank * gpus : (rank + 1) * gpus])
    return env


def _visible_gpus():
    """This machine's GPUs the driver may hand out (CUDA_VISIBLE_DEVICES, else every NVIDIA GPU)."""
    visible = nvml.cuda_visible()
    if visible is not None:
        return visible
    gpus = nvml.Gpus.open()
    try:
        return list(range(len(gpus.handles)))
    finally:
        gpus.close()


@dataclasses.dataclass
class Worker:
    rank: int
    process: subprocess.Popen
    log: str

    def code(self):
        return self.process.poll()


class Relay:
    """The workers' `warning:` / `note:` lines, read from their logs as they grow and printed on `err` as
    `warning: worker <rank>: ...`; a text another worker already said is not repeated."""

    PREFIXES = ("warning: ", "note: ")

    def __init__(self, err=None):
        self.err = err
        self._read = {}  # log path -> bytes read
        self._partial = {}  # log path -> an unfinished last line
        self._said = set()

    def poll(self, workers):
        for w in workers:
            try:
                with open(w.log, "rb") as fh:
                    fh.seek(self._read.get(w.log, 0))
                    data = fh.read()
            except OSError:
                continue
            self._read[w.log] = self._read.get(w.log, 0) + len(data)
            *lines, self._partial[w.log] = (self._partial.get(w.log, b"") + data).split(b"\n")
            for raw in lines:
                self._say(w.rank, raw.decode("utf-8", errors="replace").rstrip())

    def _say(self, rank, line):
        prefix = next((p for p in self.PREFIXES if line.startswith(p)), None)
        if prefix is None or line in self._said:
            return
        self._said.add(line)
        print(f"{prefix}worker {rank}: {line[len(prefix) :]}", file=self.err or sys.stderr, flush=True)


def launch(cfg: RunConfig, command, out, run_env):
    """Start the workers, print the chief's progress, relay a stop; return (collector state, error line, signal).

    `run_env`: what the workers' environment must add (the driver's `_worker_env`)."""
    gpus = _visible_gpus() if cfg.gpus_per_worker else []
    setup_checks.check_machine_request(cfg, os.cpu_count() or 1, len(gpus))
    folder = tempfile.mkdtemp(prefix="bench-tf-config-")
    collector = FileCollector.create(folder, cfg.workers)
    with open(os.path.join(folder, "run.json"), "w") as fh:
        json.dump({"cfg": dataclasses.asdict(cfg), "command": command}, fh)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(cfg.workers)]
    workers = []
    stop = exits.StopRequest(announce="stopping the workers after the current window")
    try:
        for rank in range(cfg.workers):
            workers.append(_start(cfg, folder, rank, worker_env(cfg, addresses, rank, os.environ, run_env, gpus)))
        print(
            f"workers: {cfg.workers} plain processes on this machine (TF_CONFIG: {', '.join(addresses)}); "
            f"their output: {os.path.join(folder, 'worker-<rank>.log')}",
            file=out,
            flush=True,
        )
        with exits.on_signals(stop):
            _watch(workers, collector, stop, out)
    finally:
        _end(workers)
    state = collector.state()
    error = failure_line({w.rank: w.code() for w in workers}, state.get("reports", {}))
    if error:
        error += f" (worker output: {os.path.join(folder, 'worker-<rank>.log')})"
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return state, error, stop.name


def _start(cfg, folder, rank, env):
    log = os.path.join(folder, f"worker-{rank}.log")
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.distributed.plain_worker", folder, str(rank), str(os.getpid())],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            **_own_process_group(),
        )
    return Worker(rank, process, log)


def _own_process_group():
    """Popen arguments: the worker in a process group of its own, so a terminal's Ctrl-C reaches the driver only
    (which relays the stop), but in the driver's session, as Ray's workers are: Linux schedules sessions against
    each other (autogroups), and a session per worker gave these workers another share of a busy CPU than
    Ray's (WORKSPACE.md, "Multi-worker runs", Without Ray)."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # before Python 3.11 (the driver starts no threads before this)


def _watch(workers, collector, stop, out):
    """Until every worker has ended: the chief's progress lines, the workers' warnings, the stop request
    relayed once, and after a failure the others ended once they had FAILED_GRACE_S to fail by themselves."""
    seen, relayed, failed_at = 0, False, None
    relay = Relay()
    while True:
        if stop.name and not relayed:
            collector.request_stop(stop.name)
            relayed = True
        codes = [w.code() for w in workers]  # before the news: what a worker said before it ended is read below
        lines, _ = collector.news(seen, 0)
        for line in lines:
            print(line, file=out, flush=True)
        seen += len(lines)
        relay.poll(workers)
        if all(c is not None for c in codes):
            return
        if failed_at is None and any(c not in (None, 0) for c in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > FAILED_GRACE_S:
            _end(workers)
        time.sleep(POLL_S)


def _end(workers, grace_s=10.0):
    """Every worker still running: SIGTERM (it stops after its window), then SIGKILL after `grace_s`."""
    alive = [w for w in workers if w.code() is None]
    for w in alive:
        _signal(w.process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for w in alive:
        try:
            w.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(w.process, signal.SIGKILL)
            w.process.wait()


def _signal(process, sig):
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass


def failure_line(codes, reports):
    """The run's error when some worker process failed (None when every one exited 0): each failed worker,
    the ones whose process ended without a report first (the cause; the others' errors follow from it),
    with what it reported."""
    failed = sorted((rank for rank, code in codes.items() if code), key=lambda r: (r in reports, r))
    parts = []
    for rank in failed:
        report = reports.get(rank, {})
        said = report.get("error") or report.get("config_error") or (report.get("row") or {}).get("error")
        code = codes[rank]
        how = f"its process was killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        parts.append(f"worker {rank}: {said} ({how})" if said else f"worker {rank}: {how} before it reported")
    return "; ".join(parts) or None
