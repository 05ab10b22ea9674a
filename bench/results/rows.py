"""A run's row: the columns known from the configuration, the setup's facts and the controller's measurements.

No TensorFlow here: the sweep driver writes rows of trials that failed before
any TensorFlow ran.
"""

from __future__ import annotations

import dataclasses
import socket

from bench.config import identity, tuning
from bench.config.options import RunConfig, global_replicas
from bench.results import metrics, table
from resnet import cost


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the setup of a run found, as plain values."""

    run_id: str
    command: str
    tf_version: str
    keras_version: str
    device: str  # "GPU: <name>" or "CPU: <model>"
    num_replicas: int
    onednn: bool
    batch_norm: str
    params: int
    data: str
    train_images: int
    peak_gflops: float
    started: float  # perf_counter at the start of the run
    augment: str = ""  # device | host | none
    tf32: bool = False
    physical_devices: int = 1
    intra_op_threads: int = 0  # in effect (0: TensorFlow's default)
    inter_op_threads: int = 0
    peak_source: str = ""  # where the datasheet peak comes from, or why there is none
    datasheet_tflops: float = None  # dense datasheet peak of the devices used, for the run's precision
    peak_measured_at: str = ""  # when the measured peak's best reading was taken (UTC)
    peak_readings: int = None  # how many readings that best is over
    peak_load: float = None  # 1-minute load average per core during that reading
    autotune_s: float = None  # seconds --autotune took before the run (None: not asked for); not in the time to
    # the first step, which is counted from `started` less these


FACT_COLUMNS = (
    "run_id",
    "command",
    "tf_version",
    "keras_version",
    "device",
    "num_replicas",
    "onednn",
    "batch_norm",
    "params",
    "data",
    "peak_gflops",
    "augment",
    "tf32",
    "intra_op_threads",
    "inter_op_threads",
    "peak_source",
    "datasheet_tflops",
    "peak_measured_at",
    "peak_readings",
    "peak_load",
    "autotune_s",
)


def flops_per_image(cfg: RunConfig):
    """Training FLOPs per image (forward + backward ≈ 3 × forward), or the forward pass's in inference mode."""
    model_cost = cost.cost(cfg.n, cfg.block, cfg.shortcut)
    return model_cost.forward_flops if cfg.mode == "inference" else model_cost.train_flops


def config_row(cfg: RunConfig, status, error="", run_id=None):
    """The row's columns known from the configuration alone (a trial that failed before running).

    `run_id`: the run's own (made once, by its `RunIdentity`); without one, a new id for this row."""
    return {
        **table.base_provenance(),
        "run_id": run_id or identity.run_id_for(cfg),
        "timestamp_utc": table.utc_now(),
        "status": status,
        "error": error,
        "sweep": cfg.sweep,
        "trial_key": cfg.trial_key,
        "strategy": cfg.strategy,
        "loop": cfg.loop,
        "n": cfg.n,
        "depth": cfg.depth,
        "block": cfg.block,
        "shortcut": cfg.shortcut,
        "sync_bn": cfg.sync_bn,
        "flops_per_image": flops_per_image(cfg),
        "mode": cfg.mode,
        "precision": cfg.precision,
        "xla": cfg.xla,
        "global_batch_size": cfg.batch_size,
        "steps_per_loop": cfg.steps_per_loop,
        "warmup_steps": cfg.warmup_steps,
        "recipe": cfg.recipe,
        "target_accuracy": cfg.target_accuracy,
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "comparison": cfg.comparison,
        "arm": cfg.arm,
        "sweep_position": cfg.sweep_position or None,
        "tuned": cfg.tuned or tuning.origin(cfg),
    }


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a run measured, as plain values: the controller's record, from which the row is built."""

    status: str  # ok | diverged | interrupted
    error: str
    steps: int  # the global step reached
    timed: metrics.Throughput | None  # the timed windows' throughput (None: no window was timed)
    compile_s: float | None  # the first call minus one typical step
    first_step_at: float | None  # perf_counter when the first (compiling) call ended
    train_time_s: float | None  # training seconds over every restart (None: nothing trained)
    final_loss: float | None  # the last window's value (inference: the mean logit)
    last_accuracy: float | None
    best_accuracy: float | None
    time_to_target_s: float | None
    skipped_steps: int | None  # mixed_float16 steps skipped by loss scaling (None: not counted)
    xla_scope: str
    windows: tuple = ()  # (steps, seconds) of the timed windows
    warmup: tuple = ()  # ... of the warm-up windows
    untimed: tuple = ()  # ... of windows left out on purpose (profiling)


def run_row(cfg: RunConfig, facts: RunFacts, measured: Measured):
    """The whole row of a run that set up: configuration, setup facts, and what the run measured."""
    timed = measured.timed
    row = {
        **config_row(cfg, measured.status, measured.error, run_id=facts.run_id),
        **{k: getattr(facts, k) for k in FACT_COLUMNS},
        "timed_steps": timed.timed_steps if timed else 0,
        "total_steps": measured.steps,
        "epochs": measured.steps * cfg.batch_size / facts.train_images,
        "compile_s": measured.compile_s,
        "time_to_first_step_s": (
            measured.first_step_at - facts.started - (facts.autotune_s or 0.0) if measured.first_step_at else None
        ),
        "train_time_s": measured.train_time_s,
        "final_train_loss": measured.final_loss if cfg.mode == "train" else None,
        "test_accuracy": measured.last_accuracy,
        "best_test_accuracy": measured.best_accuracy,
        "time_to_target_s": measured.time_to_target_s,
        "skipped_steps": measured.skipped_steps,
        "xla_scope": measured.xla_scope,
        "peak_scope": "one process",
    }
    if timed:
        row.update(
            images_per_sec=timed.images_per_sec,
            images_per_sec_stderr=timed.images_per_sec_stderr,
            jitter=timed.jitter,
            step_time_p50_ms=timed.step_time_p50_ms,
            step_time_p90_ms=timed.step_time_p90_ms,
            step_time_p99_ms=timed.step_time_p99_ms,
            mfu=metrics.mfu(row["flops_per_image"], timed.images_per_sec, facts.peak_gflops * 1e9),
            mfu_datasheet=metrics.mfu(
                row["flops_per_image"], timed.images_per_sec, (row["datasheet_tflops"] or 0) * 1e12
            ),
        )
    return row


def host_label(hosts, chief_host):
    """`node1 (1 host)`, `node1 (+1 host)`, `node1 (+3 hosts)`: the chief and how many hosts ran the workers."""
    others = len(set(hosts) - {chief_host})
    if not others:
        return f"{chief_host} (1 host)"
    return f"{chief_host} (+{others} host{'s' if others > 1 else ''})"


def peak_scope(workers, hosts, machines=None):
    """How a multi-worker row's peak was summed: over workers and hosts, and whether workers shared hardware.

    `machines`: distinct machines (kernels) under the hosts, if known: the local cluster's hosts are
    namespaces of one machine, whose CPUs they share."""
    if workers <= 1:
        return "1 worker: its own devices"
    if hosts >= workers:
        one = (", all on 1 machine (one kernel): they share its CPUs and the sum reads above its real peak"
               if machines == 1 and hosts > 1 else "")
        return f"sum over {workers} workers on {hosts} hosts (1 per host){one}"
    shared = "sharing its devices" if hosts == 1 else f"{workers / hosts:g} per host on average, sharing them"
    return (f"sum over {workers} workers on {hosts} host{'s' if hosts > 1 else ''} ({shared}: each measured "
            f"while the others waited, so the sum reads above the hosts' real peak)")


def multi_worker_row(cfg: RunConfig, command, state, error=None):
    """The run's one row from the workers' reports (pure: no Ray, no TensorFlow).

    The chief's row carries the timing (its windows: the all-reduce keeps workers in
    step) and the global replica count; the driver adds the number of workers, the
    restarts, the hosts, and the peak summed over every worker's devices. `state`: the
    collector's (`starts`: rank -> attempts, `reports`, `where`: rank -> the host it started on,
    `last_step`: the step the workers reached).
    """
    starts = state.get("starts", {})
    # only the last attempt counts: a rank that did not report in it has no report
    reports = {rank: r for rank, r in state.get("reports", {}).items() if r.get("attempt", 1) == starts.get(rank, 1)}
    where = {rank: w for rank, w in state.get("where", {}).items() if w.get("attempt", 1) == starts.get(rank, 1)}
    chief = reports.get(0, {})
    if chief.get("row"):
        row = dict(chief["row"])
    else:
        failure = error or chief.get("error") or next(
            (r.get("error") for r in reports.values() if r.get("error")), "the workers reported no result")
        row = config_row(cfg, "failed", failure)
        row["num_replicas"] = global_replicas(cfg)
        row["total_steps"] = state.get("last_step")
        if cfg.checkpoint_dir:
            row["run_id"] = identity.RunIdentity(cfg).run_id
    if error:  # the group failed: its line names every failed worker (the chief's own row only itself)
        row.update(status="failed", error=error)
    hosts = {r["host"] for r in list(reports.values()) + list(where.values()) if r.get("host")}
    worker_rows = [r.get("row") for r in reports.values() if r.get("row")]
    peaks = [r.get("peak_gflops") for r in worker_rows]
    every_peak = len(worker_rows) == cfg.workers and all(p not in (None, "") for p in peaks)
    ips = row.get("images_per_sec")
    if every_peak:
        row["peak_gflops"] = float(sum(peaks))
        row["mfu"] = metrics.mfu(row["flops_per_image"], ips, row["peak_gflops"] * 1e9) if ips else None
    else:
        row["peak_gflops"], row["mfu"] = None, None  # some worker never reported its peak: no partial sum
    machines = {r["machine"] for r in where.values() if r.get("machine")}
    row["peak_scope"] = peak_scope(cfg.workers, len(hosts) or 1, len(machines) or None) if every_peak else ""
    if row.get("datasheet_tflops"):  # the chief's figure covers its own devices: every worker has as many
        row["datasheet_tflops"] = float(row["datasheet_tflops"]) * cfg.workers
        row["mfu_datasheet"] = metrics.mfu(row["flops_per_image"], ips, row["datasheet_tflops"] * 1e12) if ips else None
    chief_host = chief.get("host") or where.get(0, {}).get("host") or row.get("host") or socket.gethostname()
    row["host"] = host_label(hosts, chief_host)
    row["num_hosts"] = len(hosts) or None
    row["num_workers"] = cfg.workers
    row["restarts"] = max(0, starts.get(0, 1) - 1)
    row["timestamp_utc"] = table.utc_now()
    row["command"] = command
    return row


def summary_text(row, results_path):
    """The console summary of a row, one aligned line per topic."""
    def fmt(key, spec=""):
        v = row.get(key)
        return "-" if v in (None, "") else format(v, spec)

    workers = (f", {row['num_workers']} workers on {row.get('host')}, restarts {fmt('restarts')}"
               if row.get("num_workers") else "")
    lines = [
        ("status", fmt("status") + (f" ({row['error']})" if row.get("error") else "")),
        ("model", f"ResNet-{row['depth']} {row['block']}/{row['shortcut']}, {fmt('params', ',')} params, "
                  f"{fmt('batch_norm')} BN"),
        ("devices", f"{fmt('num_replicas')} x {fmt('device')} ({row['strategy']}, {row['precision']}"
                    f"{', XLA' if row['xla'] else ''}{', oneDNN' if row.get('onednn') else ''}{workers})"),
        ("images/sec", f"{fmt('images_per_sec', '.1f')} ± {fmt('images_per_sec_stderr', '.1f')} "
                       f"(jitter {fmt('jitter', '.1f')}, {fmt('timed_steps')} timed steps"
                       f"{', the chief' + chr(39) + 's windows' if workers else ''})"),
        ("latency" if row.get("mode") == "inference" else "step time", f"p50 {fmt('step_time_p50_ms', '.1f')} / p90 {fmt('step_time_p90_ms', '.1f')} / "
                      f"p99 {fmt('step_time_p99_ms', '.1f')} ms"),
        ("compile", f"{fmt('compile_s', '.1f')} s (first step at {fmt('time_to_first_step_s', '.1f')} s)"),
        ("MFU", f"{fmt('mfu', '.1%')} of {fmt('peak_gflops', '.0f')} GFLOP/s measured peak" + (
            f" ({row['peak_scope']})" if workers and row.get("peak_scope") else "") + (
            f"; {fmt('mfu_datasheet', '.1%')} of the datasheet's {fmt('datasheet_tflops', '.1f')} TFLOP/s"
            f"{' (TF32)' if row.get('tf32') else ''}" if row.get("datasheet_tflops") else "")),
        *([("augment", f"{fmt('augment')}; skipped steps (fp16 overflow): {fmt('skipped_steps')}")]
          if row.get("mode") != "inference" else []),
        ("test accuracy", f"{fmt('test_accuracy', '.4f')} (best {fmt('best_test_accuracy', '.4f')}, "
                          f"data {fmt('data')})"),
        ("results", f"{results_path} (run {row['run_id']})"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
