"""A run's row: the columns known from the configuration, the setup's facts and the controller's measurements.

No TensorFlow here: the sweep driver writes rows of trials that failed before
any TensorFlow ran.
"""

from __future__ import annotations

import dataclasses

from bench.config import identity, tuning
from bench.config.options import RunConfig
from bench.results import conditions, loadgen, metrics, table
from resnet import cost
from resnet.spec import COMPUTE_DTYPE


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
    host: str = ""  # where the process ran (for the per-host memory column)
    system: str = ""  # the machine's system description (bench.results.systems): its name
    system_description: dict = None  # ... and the description itself, written beside the results table
    test_images: int = 0  # images in the test set (0: none, synthetic data)


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
    "system",
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
        "data": cfg.data if cfg.data != "auto" else "",  # what auto found is the setup's (the row's facts)
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
        **loadgen.config_columns(cfg),
        "lr_scale": cfg.lr_scale,
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
    steps_to_target: int | None  # the global step of the evaluation that first reached the target
    skipped_steps: int | None  # mixed_float16 steps skipped by loss scaling (None: not counted)
    xla_scope: str
    windows: tuple = ()  # (steps, seconds) of the timed windows
    warmup: tuple = ()  # ... of the warm-up windows
    untimed: tuple = ()  # ... of windows left out on purpose (profiling)
    scenario_result: loadgen.Result | None = (
        None  # a --scenario run: LoadGen's result (its numbers are also in `timed`)
    )
    machine: conditions.MachineState | None = None  # memory and the machine's state (bench.hardware.machine)

    @classmethod
    def nothing(cls, status, error, steps):
        """A record of no measurement: a failure whose own record could not be made (the row still comes)."""
        none = dict.fromkeys(("timed", "compile_s", "first_step_at", "train_time_s", "final_loss", "last_accuracy"))
        none.update(dict.fromkeys(("best_accuracy", "time_to_target_s", "steps_to_target", "skipped_steps")))
        return cls(status=status, error=error, steps=steps, xla_scope="", **none)


def peak_origin(cfg: RunConfig, facts: RunFacts):
    """Where MFU's peak came from: measured (the compute dtype, when, over how many readings, under what load)."""
    if not facts.peak_gflops:
        return ""
    dtype = "tf32" if facts.tf32 else COMPUTE_DTYPE[cfg.precision]
    load = f", load {facts.peak_load:g}/core" if facts.peak_load is not None else ""
    return f"measured: {dtype} matmuls, {facts.peak_measured_at or 'date unknown'} (best of {facts.peak_readings or '?'}{load})"


def _images(cfg: RunConfig, measured: Measured):
    """Images the run computed: a step is a batch, but a LoadGen run counts the samples its system answered."""
    return measured.steps if measured.scenario_result is not None else measured.steps * cfg.batch_size


def to_target(steps, batch_size, train_images):
    """The epochs and training images a run needed to reach its target (empty when it never did)."""
    if steps is None:
        return {"epochs_to_target": None, "samples_to_target": None}
    return {"epochs_to_target": steps * batch_size / train_images, "samples_to_target": steps * batch_size}


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
        **to_target(measured.steps_to_target, cfg.batch_size, facts.train_images),
        "skipped_steps": measured.skipped_steps,
        "xla_scope": measured.xla_scope,
        "peak_scope": "one process",
        **loadgen.result_columns(measured.scenario_result),
        "total_flops": flops_per_image(cfg) * _images(cfg, measured),
        "peak_origin": peak_origin(cfg, facts),
        **conditions.stability_columns(measured.windows, cfg.batch_size),
        **conditions.state_columns([(facts.host, "", measured.machine)]),
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
