"""`--strategy multi_worker`: one configuration trained by K worker processes under
`tf.distribute.MultiWorkerMirroredStrategy` (MWMS), launched by Ray Train's `TensorflowTrainer`.

Nothing is trained here that `bench.loop` does not train: each worker calls
`bench.loop.run(cfg, write_row=False)` (same loop, step builder, data path and timer as
every other strategy); this module adds what only multi-worker runs need.

Driver side (`run`, called by `python -m bench.run --strategy multi_worker`):
  preflight (no TensorFlow, no Ray) -> connect to Ray (`--address`, else a local Ray
  that is stopped afterwards) -> check the request against `ray.cluster_resources()`
  (an impossible request would otherwise wait forever) -> `TensorflowTrainer.fit()` ->
  one row from the workers' reports, written once by the driver.
Worker side (`_train_worker`): MWMS built before any TensorFlow op runs
  (`setup_devices`, reached through `bench.devices.setup`), TF's multi-worker checkpoint
  rule (`WorkerCheckpoints`), the testing-only fault injection (`at_step`).

The workers talk to the driver through one small Ray actor (`_Collector`): their reports
(row, host, state digest), the chief's progress lines, the attempt count, and the
"fire once" marks of fault injection (which must survive worker-group restarts).

No TensorFlow and no Ray at import time. Every check of the configuration, the cluster request
and the worker's devices is `bench.config`'s (this module reports facts and problems to it).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

from bench import config, workers
from bench.config import ConfigError, RunConfig

CONNECT_TIMEOUT_S = 30  # an --address that does not answer fails within this
_TCP_PROBE_S = 5


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
    workers.SCRATCH.append(scratch)
    changes = {"results": os.path.join(scratch, "unused.csv")}  # rows are the driver's
    if rank != 0:
        changes.update(tensorboard_dir=None, profile_dir=os.path.join(scratch, "profile"))
    return cfg.replace(**changes)


def _train_worker(loop_config):
    """The Ray Train worker function: one `bench.loop.run` per worker, reported to the collector."""
    import ray
    import ray.train

    from bench import loop

    collector = loop_config["collector"]
    workers.attach(collector)
    rank = ray.train.get_context().get_world_rank()
    attempt = ray.get(collector.start.remote(rank))
    cfg = worker_config(config.from_dict(loop_config["cfg"]), rank)
    out = _LineForwarder(collector, sys.stdout) if rank == 0 else sys.stdout
    info = {"rank": rank, "attempt": attempt, "host": socket.gethostname()}
    try:
        outcome = loop.run(cfg, command=loop_config["command"], out=out, write_row=False)
    except ConfigError as err:
        ray.get(collector.report.remote(rank, attempt, {**info, "config_error": str(err)}))
        raise
    except BaseException as exc:
        ray.get(collector.report.remote(rank, attempt, {**info, "error": _first_line(exc)}))
        raise
    finally:
        for folder in workers.SCRATCH:
            shutil.rmtree(folder, ignore_errors=True)
    info.update(status=outcome.status, row=outcome.row, digest=dict(workers.LAST_DIGEST))
    ray.get(collector.report.remote(rank, attempt, info))
    if outcome.status == "failed":  # a failed worker fails the group: Ray restarts it or the run ends
        raise RuntimeError(outcome.row.get("error") or "failed")
    return outcome.status


def _first_line(exc):
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


class _Collector:
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
# Driver side


def _absolute(cfg: RunConfig):
    """Workers do not share the driver's working directory: make every path absolute."""
    fields = ("results", "checkpoint_dir", "cifar_dir", "tfds_dir", "tensorboard_dir", "profile_dir")
    return cfg.replace(**{f: os.path.abspath(os.path.expanduser(getattr(cfg, f)))
                          for f in fields if getattr(cfg, f)})


def _probe(address):
    """Why an explicit host:port does not answer a TCP connection within seconds, or None."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=_TCP_PROBE_S).close()
    except OSError as err:
        return f"no Ray cluster answers there ({err.strerror or err})"
    return None


def connect(address):
    """Connect this driver to Ray: (True if it started a local Ray to stop after the run, problem or None).

    Already connected (a sweep's trial, tests): uses that connection. An address
    that does not answer is a problem within CONNECT_TIMEOUT_S (`config.check_ray_connection`).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        return False, None
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if not address:
        ray.init(**kwargs)
        return True, None
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    problem = _probe(address) if address != "auto" else None
    if problem:
        return False, problem
    outcome = {}

    def attempt():
        try:
            ray.init(address=address, **kwargs)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported as one line
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, daemon=True)
    from bench import devices

    with devices.native_stderr_captured():  # Ray's C++ client logs each failed GCS attempt straight to fd 2
        thread.start()
        thread.join(max(1.0, deadline - time.monotonic()))
    if thread.is_alive():
        return False, f"no Ray cluster answered within {CONNECT_TIMEOUT_S} s"
    if "error" in outcome:
        return False, f"cannot connect to Ray ({_first_line(outcome['error'])})"
    return False, None


def _worker_env(cfg: RunConfig):
    """Environment of the workers: TensorFlow reads these at import, which Ray does before our code runs."""
    from bench import devices

    onednn = {"on": "1", "off": "0"}.get(cfg.onednn, os.environ.get(devices.ONEDNN_ENV, "1"))
    env = {devices.ONEDNN_ENV: onednn}
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get("_BENCH_QUIET_TF"):
        env.update(TF_CPP_MIN_LOG_LEVEL="2", _BENCH_QUIET_TF="1")
    else:
        env["TF_CPP_MIN_LOG_LEVEL"] = os.environ["TF_CPP_MIN_LOG_LEVEL"]
    for name in ("RESNET_BENCH_CACHE", "PYTHONPATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def _quiet_ray_driver_logs():
    import logging

    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclasses.dataclass
class MultiWorkerOutcome:
    """What `bench.loop.Outcome` holds, plus what the workers reported (for inspection and tests)."""

    status: str
    row: dict
    exit_code: int
    chrono: object = None  # the chief's timer stays in the chief's process
    reports: dict = dataclasses.field(default_factory=dict)  # rank -> {host, status, row, digest, ...}
    fired: dict = dataclasses.field(default_factory=dict)  # fault injections -> time.time() when they fired
    ended_at: float = None  # time.time() when the worker group ended


def run(cfg: RunConfig, command="", out=sys.stdout, write_row=True, on_eval=None):
    """One multi-worker run from the driver; returns a MultiWorkerOutcome. Bad input raises ConfigError.

    The same contract as `bench.loop.run`: exactly one row (written here unless
    `write_row=False`), statuses ok / failed / diverged, exit codes 0 / 1 / 3.
    `on_eval` is not supported here (the workers evaluate; the driver sees the result).
    """
    from bench import loop, results, rows

    del on_eval
    started = time.perf_counter()
    cfg = config.validate(_absolute(cfg))
    identity = loop.RunIdentity(cfg)
    if identity.finished:
        print(f"run {identity.run_id} in {cfg.checkpoint_dir} already finished; its row is in the results", file=out)
        return MultiWorkerOutcome("skipped", {}, loop.EXIT_OK)
    owned, problem = connect(cfg.address)
    config.check_ray_connection(cfg.address, problem)
    try:
        import ray

        _quiet_ray_driver_logs()
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        config.check_ray_request(cfg, ray.cluster_resources(), alive)
        state, error = _launch(cfg, command, out)
        ended_at = time.time()
    finally:
        if owned:
            import ray

            ray.shutdown()
    reports = state.get("reports", {})
    bad_input = [r["config_error"] for r in reports.values() if r.get("config_error")]
    config.check_worker_setup(bad_input[0] if bad_input else None)
    row = assemble_row(cfg, command, state, error)
    print(f"workers: {row['num_workers']} ({row['host']}), restarts {row['restarts']}, "
          f"{time.perf_counter() - started:.0f} s in all", file=out, flush=True)
    where = results.save_row(cfg.results, row) if write_row else cfg.results
    if row.get("run_id"):  # the chief's run.json: the same command again says "finished", or resumes
        loop.RunIdentity(cfg).conclude(row["run_id"], row["status"])
    print(rows.summary_text(row, where), file=out, flush=True)
    code = {"ok": loop.EXIT_OK, "diverged": loop.EXIT_DIVERGED}.get(row["status"], loop.EXIT_FAILED)
    if where != cfg.results:  # the table could not take the row: it is kept where the error line says
        code = loop.EXIT_FAILED
    return MultiWorkerOutcome(row["status"], row, code, reports=reports, fired=state.get("fired", {}),
                              ended_at=ended_at)


def _launch(cfg: RunConfig, command, out):
    """TensorflowTrainer.fit() with the chief's progress printed meanwhile; returns (collector state, error line)."""
    import ray

    from bench import devices

    with devices._native_stderr_quieted():
        from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer
    collector = ray.remote(num_cpus=0)(_Collector).remote()
    storage = tempfile.mkdtemp(prefix="bench-ray-train-")
    resources = {"CPU": cfg.cpus_per_worker}
    if workers.gpus(cfg):
        resources["GPU"] = workers.gpus(cfg)
    trainer = TensorflowTrainer(
        _train_worker,
        train_loop_config={"cfg": json.loads(json.dumps(dataclasses.asdict(cfg))), "collector": collector,
                           "command": command},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=bool(workers.gpus(cfg)),
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=f"bench-multi-worker-{os.getpid()}", storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": _worker_env(cfg)},
        ),
    )
    done = threading.Event()
    printer = threading.Thread(target=_print_progress, args=(collector, out, done), daemon=True)
    printer.start()
    error = None
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - ray.train.TrainingFailedError and kin: the run failed
        error = _failure_line(exc, cfg)
    finally:
        done.set()
        printer.join(10)
        shutil.rmtree(storage, ignore_errors=True)
    try:
        state = ray.get(collector.state.remote(), timeout=60)
        ray.kill(collector)
    except Exception as exc:  # noqa: BLE001 - the cluster itself went away
        state = {}
        error = error or f"lost contact with the Ray cluster ({_first_line(exc)})"
    return state, error


def _failure_line(exc, cfg: RunConfig):
    """One line for a failed worker group: every failed worker, root causes (dead processes) first."""
    failures = getattr(exc, "worker_failures", None) or {}
    if not failures:
        return _first_line(exc)[:500]
    parts = []
    for rank, err in sorted(failures.items()):
        text = str(err).strip()
        if isinstance(err, RuntimeError) and type(err) is RuntimeError:  # a worker's own failed run (relayed)
            line = text.splitlines()[0] if text else "failed"
            if "DeadlineExceeded" in line:
                line += f" (a collective waited longer than --collective_timeout_s={cfg.collective_timeout_s:g})"
            parts.append((1, f"worker {rank}: {line}"))
        elif "actor died" in text or "worker process has died" in text:
            parts.append((0, f"worker {rank}: its process died ({type(err).__name__})"))
        else:
            parts.append((0, f"worker {rank}: {_first_line(err)}"))
    return "; ".join(p for _, p in sorted(parts))[:500]


def _print_progress(collector, out, done):
    import ray

    seen = 0
    while True:
        finished = done.wait(0.5)
        try:
            lines = ray.get(collector.lines_since.remote(seen), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort
            lines = []
        for line in lines:
            print(line, file=out, flush=True)
        seen += len(lines)
        if finished:
            return


def host_label(hosts, chief_host):
    """`node1 (1 host)`, `node1 (+1 host)`, `node1 (+3 hosts)`: the chief and how many hosts ran the workers."""
    others = len(set(hosts) - {chief_host})
    if not others:
        return f"{chief_host} (1 host)"
    return f"{chief_host} (+{others} host{'s' if others > 1 else ''})"


def assemble_row(cfg: RunConfig, command, state, error=None):
    """The run's one row from the workers' reports (pure: no Ray, no TensorFlow).

    The chief's row carries the timing (its windows: the all-reduce keeps workers in
    step) and the global replica count; the driver adds the number of workers, the
    restarts, the hosts, and the peak summed over every worker's devices.
    """
    from bench import loop, metrics, results, rows

    starts = state.get("starts", {})
    # only the last attempt counts: a rank that did not report in it has no report
    reports = {rank: r for rank, r in state.get("reports", {}).items() if r.get("attempt", 1) == starts.get(rank, 1)}
    chief = reports.get(0, {})
    if chief.get("row"):
        row = dict(chief["row"])
    else:
        failure = error or chief.get("error") or next(
            (r.get("error") for r in reports.values() if r.get("error")), "the workers reported no result")
        row = rows.config_row(cfg, "failed", failure)
        row["num_replicas"] = config.global_replicas(cfg)
        if cfg.checkpoint_dir:
            row["run_id"] = loop.RunIdentity(cfg).run_id
    if error:  # the group failed: its line names every failed worker (the chief's own row only itself)
        row.update(status="failed", error=error)
    worker_rows = [r.get("row") for r in reports.values() if r.get("row")]
    peaks = [r.get("peak_gflops") for r in worker_rows]
    if len(worker_rows) == cfg.workers and all(p not in (None, "") for p in peaks):
        row["peak_gflops"] = float(sum(peaks))
        ips = row.get("images_per_sec")
        row["mfu"] = metrics.mfu(row["flops_per_image"], ips, row["peak_gflops"] * 1e9) if ips else None
    if row.get("datasheet_tflops"):  # the chief's figure covers its own devices: every worker has as many
        row["datasheet_tflops"] = float(row["datasheet_tflops"]) * cfg.workers
        ips = row.get("images_per_sec")
        row["mfu_datasheet"] = metrics.mfu(row["flops_per_image"], ips, row["datasheet_tflops"] * 1e12) if ips else None
    if not (len(worker_rows) == cfg.workers and all(p not in (None, "") for p in peaks)):
        row["peak_gflops"], row["mfu"] = None, None  # some worker never reported its peak
    chief_host = chief.get("host") or row.get("host") or socket.gethostname()
    row["host"] = host_label([r["host"] for r in reports.values() if r.get("host")], chief_host)
    row["num_workers"] = cfg.workers
    row["restarts"] = max(0, starts.get(0, 1) - 1)
    row["timestamp_utc"] = results.utc_now()
    row["command"] = command
    return row
