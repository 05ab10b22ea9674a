"""`--strategy multi_worker` from the driver: one configuration trained by K worker processes under
`tf.distribute.MultiWorkerMirroredStrategy` (MWMS), launched by Ray Train's `TensorflowTrainer`.

Nothing is trained here: each worker runs `bench.distributed.worker.train_worker`, which is
`bench.runner.loop.run` with the worker's rules. The driver: checks before work (no TensorFlow,
no Ray) -> connects to Ray (`bench.distributed.ray_connection`: `--address`, else a local Ray
stopped afterwards) -> checks the request against the cluster's resources (an impossible
request would otherwise wait forever) -> `TensorflowTrainer.fit()` -> one row from the
workers' reports (`bench.results.rows.multi_worker_row`), written once, here.

No TensorFlow and no Ray at import time (Ray is imported inside the functions that use it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from bench.config import setup_checks, validation
from bench.config.identity import RunIdentity
from bench.config.options import ConfigError, RunConfig
from bench.distributed import ray_connection
from bench.distributed.worker import Collector, first_line, train_worker
from bench.hardware import devices
from bench.results import rows, table
from bench.runner.loop import EXIT_DIVERGED, EXIT_FAILED, EXIT_OK


def _absolute(cfg: RunConfig):
    """Workers do not share the driver's working directory: make every path absolute."""
    fields = ("results", "checkpoint_dir", "cifar_dir", "tfds_dir", "tensorboard_dir", "profile_dir")
    return cfg.replace(**{f: os.path.abspath(os.path.expanduser(getattr(cfg, f)))
                          for f in fields if getattr(cfg, f)})


def _worker_env(cfg: RunConfig):
    """Environment of the workers: TensorFlow reads these at import, which Ray does before our code runs."""
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


@dataclasses.dataclass
class MultiWorkerOutcome:
    """What `bench.runner.loop.Outcome` holds, plus what the workers reported (for inspection and tests)."""

    status: str
    row: dict
    exit_code: int
    chrono: object = None  # the chief's timer stays in the chief's process
    reports: dict = dataclasses.field(default_factory=dict)  # rank -> {host, status, row, digest, ...}
    fired: dict = dataclasses.field(default_factory=dict)  # fault injections -> time.time() when they fired
    ended_at: float = None  # time.time() when the worker group ended


def run(cfg: RunConfig, command="", out=sys.stdout, write_row=True, on_eval=None):
    """One multi-worker run from the driver; returns a MultiWorkerOutcome. Bad input raises ConfigError.

    The same contract as `bench.runner.loop.run`: exactly one row (written here unless
    `write_row=False`), statuses ok / failed / diverged, exit codes 0 / 1 / 3.
    `on_eval` is not supported here (the workers evaluate; the driver sees the result).
    """
    del on_eval
    started = time.perf_counter()
    cfg = validation.validate(_absolute(cfg))
    table.check_results_path(cfg.results)
    identity = RunIdentity(cfg)
    if identity.finished:
        print(f"run {identity.run_id} in {cfg.checkpoint_dir} already finished; its row is in the results", file=out)
        return MultiWorkerOutcome("skipped", {}, EXIT_OK)
    owned = ray_connection.connect(cfg.address)
    try:
        import ray

        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        setup_checks.check_ray_request(cfg, ray.cluster_resources(), alive)
        state, error = _launch(cfg, command, out)
        ended_at = time.time()
    finally:
        if owned:
            import ray

            ray.shutdown()
    reports = state.get("reports", {})
    bad_input = [r["config_error"] for r in reports.values() if r.get("config_error")]
    if bad_input:  # the workers' own setup checks refused the run: bad input, as in one process
        raise ConfigError(bad_input[0])
    row = rows.multi_worker_row(cfg, command, state, error)
    print(f"workers: {row['num_workers']} ({row['host']}), restarts {row['restarts']}, "
          f"{time.perf_counter() - started:.0f} s in all", file=out, flush=True)
    where = table.save_row(cfg.results, row) if write_row else cfg.results
    if row.get("run_id"):  # the chief's run.json: the same command again says "finished", or resumes
        RunIdentity(cfg).conclude(row["run_id"], row["status"])
    print(rows.summary_text(row, where), file=out, flush=True)
    code = {"ok": EXIT_OK, "diverged": EXIT_DIVERGED}.get(row["status"], EXIT_FAILED)
    if where != cfg.results:  # the table could not take the row: it is kept where the error line says
        code = EXIT_FAILED
    return MultiWorkerOutcome(row["status"], row, code, reports=reports, fired=state.get("fired", {}),
                              ended_at=ended_at)


def _launch(cfg: RunConfig, command, out):
    """TensorflowTrainer.fit() with the chief's progress printed meanwhile; returns (collector state, error line)."""
    import ray

    with devices.native_stderr_quieted():
        from ray.train import FailureConfig, RunConfig as RayRunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer
    collector = ray.remote(num_cpus=0)(Collector).remote()
    storage = tempfile.mkdtemp(prefix="bench-ray-train-")
    gpus = cfg.gpus_per_worker or 0
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    trainer = TensorflowTrainer(
        train_worker,
        train_loop_config={"cfg": json.loads(json.dumps(dataclasses.asdict(cfg))), "collector": collector,
                           "command": command},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=bool(gpus),
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
        error = error or f"lost contact with the Ray cluster ({first_line(exc)})"
    return state, error


def _failure_line(exc, cfg: RunConfig):
    """One line for a failed worker group: every failed worker, root causes (dead processes) first."""
    failures = getattr(exc, "worker_failures", None) or {}
    if not failures:
        return first_line(exc)[:500]
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
            parts.append((0, f"worker {rank}: {first_line(err)}"))
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
