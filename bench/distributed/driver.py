"""`--strategy multi_worker` from the driver: one configuration trained by K worker processes under
`tf.distribute.MultiWorkerMirroredStrategy` (MWMS), launched by Ray Train's `TensorflowTrainer`
(`--launcher ray`) or as plain processes with TF_CONFIG on this machine (`--launcher tf_config`,
`bench.distributed.plain`): the same workers, checks, row and exit codes, with or without Ray.

Nothing is trained here: each worker runs `bench.distributed.worker.train_worker`, which is
`bench.runner.benchmark.run` with the worker's rules. The driver: checks before work (no TensorFlow,
no Ray) -> connects to Ray (`bench.distributed.ray_connection`: `--address`, else a local Ray
stopped afterwards) -> checks the request against the cluster's resources (an impossible
request would otherwise wait forever) -> `TensorflowTrainer.fit()` -> one row from the
workers' reports (`bench.distributed.aggregate.multi_worker_row`), written once, here.

No TensorFlow and no Ray at import time (Ray is imported inside the functions that use it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from bench.config import defaults, exits, setup_checks, validation
from bench.config.exits import EXIT_DIVERGED, EXIT_FAILED, EXIT_OK, EXIT_SIGNAL, first_line
from bench.config.identity import RunIdentity
from bench.config.options import ConfigError, RunConfig
from bench.distributed import aggregate, hosts, plain, ray_connection
from bench.distributed.collector import Collector, failure_listener
from bench.distributed.events import EventLog
from bench.distributed.worker import train_worker
from bench.hardware import devices
from bench.results import console, mlperf_log, systems, table

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # how long Ray Train waits to place a worker group


def _absolute(cfg: RunConfig):
    """Workers do not share the driver's working directory: make every path absolute."""
    fields = ("results", "checkpoint_dir", "cifar_dir", "tfds_dir", "tensorboard_dir", "profile_dir")
    return cfg.replace(**{f: os.path.abspath(os.path.expanduser(getattr(cfg, f))) for f in fields if getattr(cfg, f)})


def _worker_env(cfg: RunConfig):
    """Environment of the workers: TensorFlow reads these at import, which Ray does before our code runs."""
    env = {defaults.ONEDNN_ENV: "1" if defaults.onednn_request(cfg) == "on" else "0"}
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ or os.environ.get("_BENCH_QUIET_TF"):
        env.update(TF_CPP_MIN_LOG_LEVEL="2", _BENCH_QUIET_TF="1")
    else:
        env["TF_CPP_MIN_LOG_LEVEL"] = os.environ["TF_CPP_MIN_LOG_LEVEL"]
    for name in ("RESNET_BENCH_CACHE", "PYTHONPATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@dataclasses.dataclass
class MultiWorkerOutcome:
    """What a single run's `Outcome` holds but its timer (which stays in the chief's process), plus what the
    workers reported (for inspection and tests)."""

    status: str
    row: dict
    exit_code: int
    reports: dict = dataclasses.field(default_factory=dict)  # rank -> {host, status, row, digest, ...}
    fired: dict = dataclasses.field(default_factory=dict)  # fault injections -> time.time() when they fired
    ended_at: float = None  # time.time() when the worker group ended
    systems: tuple = ()  # the system descriptions of the workers' machines (written with the row)


def run(cfg: RunConfig, command="", out=None, write_row=True, on_eval=None):
    """One multi-worker run from the driver; returns a MultiWorkerOutcome. Bad input raises ConfigError.

    The same contract as `bench.runner.benchmark.run`: exactly one row (written here unless
    `write_row=False`), statuses ok / failed / diverged / interrupted, exit codes 0 / 1 / 3 / 130 / 143.
    `on_eval` is not supported here (the workers evaluate; the driver sees the result).
    """
    out = out or sys.stdout
    del on_eval
    started = time.perf_counter()
    cfg = validation.validate(_absolute(cfg))
    table.check_results_path(cfg.results)
    identity = RunIdentity(cfg)
    if identity.finished:
        print(identity.finished_line(cfg), file=out)
        return MultiWorkerOutcome("skipped", {}, EXIT_OK)
    if cfg.launcher == "tf_config":  # plain processes on this machine: no Ray
        state, error, stopped = plain.launch(cfg, command, out, _worker_env(cfg))
    else:
        state, error, stopped = _ray_launch(cfg, command, out)
    ended_at = time.time()
    reports = state.get("reports", {})
    bad_input = [r["config_error"] for r in reports.values() if r.get("config_error")]
    if bad_input:  # the workers' own setup checks refused the run: bad input, as in one process
        raise ConfigError(bad_input[0])
    row = aggregate.multi_worker_row(cfg, command, state, error)
    row["mlperf_log"] = _chief_log(cfg, row, state)
    print(
        f"workers: {row['num_workers']} ({row['host']}), restarts {row['restarts']}, "
        f"{time.perf_counter() - started:.0f} s in all",
        file=out,
        flush=True,
    )
    descriptions = tuple(r["system"] for _, r in sorted(reports.items()) if r.get("system"))
    if write_row:
        systems.save_all(cfg.results, descriptions)
    where = table.save_row(cfg.results, row) if write_row else cfg.results
    if row.get("run_id"):  # the chief's run.json: the same command again says "finished", or resumes
        RunIdentity(cfg).conclude(row["run_id"], row["status"], where if where != cfg.results else None)
    print(console.summary_text(row, where), file=out, flush=True)
    code = {"ok": EXIT_OK, "diverged": EXIT_DIVERGED}.get(row["status"], EXIT_FAILED)
    if row["status"] == "interrupted":
        code = EXIT_SIGNAL.get(stopped, EXIT_FAILED)
    if where != cfg.results:  # the table could not take the row: it is kept where the error line says
        code = EXIT_FAILED
    return MultiWorkerOutcome(
        row["status"],
        row,
        code,
        reports=reports,
        fired=state.get("fired", {}),
        ended_at=ended_at,
        systems=descriptions,
    )


def _ray_launch(cfg: RunConfig, command, out):
    """Connect to Ray, check the request and the paths on every host, run the Ray Train group; return
    (collector state, error line, signal name)."""
    with _console(out) as console_err:
        owned = ray_connection.connect(cfg.address)
        try:
            import ray

            alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
            setup_checks.check_ray_request(cfg, ray.cluster_resources(), alive)
            hosts.check_paths(cfg, out)
            return _launch(cfg, command, out, console_err)
        finally:
            if owned:
                import ray

                ray.shutdown()


def _chief_log(cfg: RunConfig, row, state):
    """The chief's MLPerf log (of its last attempt), written beside the results; the row's `mlperf_log` ('': none)."""
    chief = state.get("reports", {}).get(0, {})
    last = chief.get("attempt", 1) == state.get("starts", {}).get(0, 1)
    text = chief.get("mlperf_log") if last else ""
    if not text or not row.get("run_id"):
        return ""
    try:
        return mlperf_log.write_text(cfg.results, row["run_id"], text)
    except OSError as err:
        exits.error(f"the MLPerf log of run {row['run_id']} could not be written ({err.strerror or err})")
        return ""


@contextlib.contextmanager
def _console(out):
    """In a command's main thread, Ray's own output goes to a log file named on `out`; yields the console's stderr."""
    if threading.current_thread() is not threading.main_thread():  # a sweep's trial: its output is Tune's
        yield sys.stderr
        return
    with hosts.ray_console_to_file() as (path, console_err):
        print(f"Ray's own messages: {path}", file=out, flush=True)
        yield console_err


def _trainer(cfg: RunConfig, command, collector, storage):
    with devices.native_stderr_quieted():
        from ray.train import FailureConfig, ScalingConfig
        from ray.train import RunConfig as RayRunConfig
        from ray.train.tensorflow import TensorflowTrainer
    gpus = cfg.gpus_per_worker or 0
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    # A restart that cannot place the workers fails the run after --restart_timeout_s instead of being
    # retried forever (Ray Train counts it as a controller failure, unlimited by default).
    failures = FailureConfig(
        max_failures=cfg.max_failures, max_preemption_failures=cfg.max_failures, controller_failure_limit=0
    )
    return TensorflowTrainer(
        train_worker,
        train_loop_config={
            "cfg": json.loads(json.dumps(dataclasses.asdict(cfg))),
            "collector": collector,
            "command": command,
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=bool(gpus), resources_per_worker=resources),
        run_config=RayRunConfig(
            name=f"bench-multi-worker-{os.getpid()}",
            storage_path=storage,
            failure_config=failures,
            callbacks=[failure_listener(collector)],
            worker_runtime_env={"env_vars": _worker_env(cfg)},
        ),
    )


def _launch(cfg: RunConfig, command, out, console_err):
    """TensorflowTrainer.fit() in a thread while this one prints the chief's progress and one line per
    event, and relays a Ctrl-C / SIGTERM to the workers; returns (collector state, error line, signal name)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    collector = ray.remote(num_cpus=0)(Collector).options(scheduling_strategy=here).remote(cfg.workers)
    previous_timeout = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = f"{cfg.restart_timeout_s:g}"  # read by Ray Train's controller
    storage = tempfile.mkdtemp(prefix="bench-ray-train-")
    trainer = _trainer(cfg, command, collector, storage)
    outcome = {}

    def fit():
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - ray.train.TrainingFailedError and kin: the run failed
            outcome["error"] = exc

    events = EventLog(cfg)
    stop = exits.StopRequest(
        announce="stopping the workers after the current window", on_exit=ray_connection.kill_started_processes
    )
    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    try:
        thread.start()
        with exits.on_signals(_on_console(stop, console_err)):
            _watch(thread, collector, events, stop, out)
    finally:
        _restore_env(START_TIMEOUT_ENV, previous_timeout)
        shutil.rmtree(storage, ignore_errors=True)
    error = events.failure_line(outcome["error"]) if "error" in outcome else None
    try:
        state = ray.get(collector.state.remote(), timeout=60)
        ray.kill(collector)
    except Exception as exc:  # noqa: BLE001 - the cluster itself went away
        state = {}
        error = error or f"lost contact with the Ray cluster ({first_line(exc)})"
    return state, error, stop.name


def _watch(thread, collector, events, stop, out):
    """Until fit() ends: print the chief's progress lines and one line per event; relay a stop request
    (here, not in the signal handler: a handler must not call into Ray, which the main thread may be in)."""
    import ray

    seen_lines = seen_events = 0
    relayed = False
    while True:
        thread.join(0.5)
        finished = not thread.is_alive()
        if stop.name and not relayed:
            collector.request_stop.remote(stop.name)
            relayed = True
        try:
            lines, news = ray.get(collector.news.remote(seen_lines, seen_events), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort
            lines, news = [], []
        for line in lines:
            print(line, file=out, flush=True)
        for event in news:
            print(events.line(event), file=out, flush=True)
        seen_lines, seen_events = seen_lines + len(lines), seen_events + len(news)
        if finished:
            return


def _on_console(handler, console):
    """A signal handler whose lines reach the console: `exits` writes them to file descriptor 2, which
    points at Ray's log file while the driver holds Ray's console (`hosts.ray_console_to_file`)."""

    def on_console(signum, frame):
        saved = os.dup(2)
        os.dup2(console.fileno(), 2)
        try:
            handler(signum, frame)  # a second signal exits from here
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    return on_console


def _restore_env(name, value):
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
