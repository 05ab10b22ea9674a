"""The run's MLPerf log: one file per run, `mlperf_logging.mllog` events that MLPerf's own checker can read.

    python -m mlperf_logging.compliance_checker --config $(python -m bench.results ruleset) results/mlperf/<run_id>.log

Written by the process that owns the run (rank 0 of a multi-worker run) as the run goes, into
`<the results table's folder>/mlperf/<run_id>.log`; the row's `mlperf_log` column names it. The
events, in order: `cache_clear`, `init_start`, the submission fields and the hyperparameters,
`init_stop` and `run_start` when training starts, then blocks of training between evaluations
(`block_start`/`block_stop` with `first_epoch_num`, `epoch_count` and `samples_count`; inference:
one block counted in samples), `eval_start`/`eval_stop`/`eval_accuracy` with `epoch_num`, and
`run_stop` with MLPerf's status: `success` when the run did what it set out to do (reached
`--target_accuracy`, or without one trained its steps), `aborted` otherwise (the harness's own
status, e.g. `interrupted`, beside it). After `run_stop`, the harness's measurements (`harness_*`).

`MLPerfLog` is a `bench.runner.loop.RunObserver`: the controller tells it of the run's events
between windows; it never runs inside a timed window. The ruleset the project ships,
`mlperf_rules/cifar_resnet.yaml` (package data; `python -m bench.results ruleset` prints its path), is MLPerf's common training rules plus what this
benchmark must log; `ruleset_path()` finds it. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from importlib import resources

from mlperf_logging.mllog import constants as mlc
from mlperf_logging.mllog import mllog

from bench.config import recipe
from bench.config.options import RunConfig
from resnet import spec

FOLDER = "mlperf"  # beside the results table
BENCHMARK = "cifar10_resnet"  # submission_benchmark
DIVISION = mlc.OPEN  # not an MLPerf closed benchmark: model, data and target are the user's
STATUS = mlc.RESEARCH  # submission_status: a measurement, not a product on sale
# The harness's own measurements, logged after run_stop as `harness_<column>` (none may contain
# "eval_accuracy", "global_batch_size" or "run_stop": MLPerf's RCP checker reads lines by substring).
MEASUREMENTS = (
    "status",
    "images_per_sec",
    "images_per_sec_stderr",
    "step_time_p50_ms",
    "step_time_p99_ms",
    "compile_s",
    "train_time_s",
    "mfu",
    "test_accuracy",
    "best_test_accuracy",
    "time_to_target_s",
    "epochs_to_target",
    "samples_to_target",
)


def ruleset_path():
    """The project's compliance-checker ruleset (`--config` of `python -m mlperf_logging.compliance_checker`)."""
    return str(resources.files("bench.results").joinpath("mlperf_rules", "cifar_resnet.yaml"))


def relative_name(run_id):
    """The log's path relative to the results table's folder (the row's `mlperf_log`)."""
    return f"{FOLDER}/{run_id}.log"


def log_path(results, run_id):
    """Where the log of run `run_id` goes: beside the results table, in `mlperf/`."""
    return os.path.join(os.path.dirname(os.path.abspath(results)), relative_name(run_id))


def write_text(results, run_id, text):
    """A log written elsewhere (a multi-worker run's chief) put in its place; returns the row's `mlperf_log`."""
    path = log_path(results, run_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return relative_name(run_id)


def platform_name(cfg: RunConfig, device, replicas):
    """submission_platform: the flag, else `<replicas>x<device>` (e.g. `2xCPU: AMD EPYC`)."""
    return cfg.submission_platform or f"{replicas}x{device}"


class MLPerfLog:
    """One run's MLPerf log, written as the run goes (see the module docstring); a `RunObserver`."""

    def __init__(self, cfg: RunConfig, run_id, path):
        self.cfg, self.run_id, self.path = cfg, run_id, path
        self.name = relative_name(run_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._logger = logging.getLogger(f"bench.mlperf.{run_id}.{id(self)}")  # one per run: no shared state
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(path, mode="w", encoding="utf-8")  # a resumed attempt starts it anew
        self._logger.addHandler(self._handler)
        self._ml = mllog.MLLogger(logger=self._logger, root_dir=_root())
        self._train_images = 1
        self._eval_every = None
        self._total = None
        self._block_from = None  # the step the open block started at (None: no block open)
        self._run_started = False

    # -- before training --------------------------------------------------------------------------

    def init_started(self):
        """`cache_clear` (the harness drops no OS cache: said, not claimed), `init_start`, who and what."""
        cfg = self.cfg
        self._event(mlc.CACHE_CLEAR, False, {"note": "the harness does not drop the OS page cache"})
        self._ml.start(mlc.INIT_START)
        for key, value in (
            (mlc.SUBMISSION_ORG, cfg.submission_org),
            (mlc.SUBMISSION_DIVISION, DIVISION),
            (mlc.SUBMISSION_STATUS, STATUS),
            (mlc.SUBMISSION_BENCHMARK, BENCHMARK),
            ("benchmark_mode", cfg.mode),
            (mlc.SEED, cfg.seed),
            (mlc.GLOBAL_BATCH_SIZE, cfg.batch_size),
            (mlc.GRADIENT_ACCUMULATION_STEPS, 1),
            ("model_name", f"ResNet-{cfg.depth} {cfg.block}/{cfg.shortcut}"),
            ("model_depth", cfg.depth),
            ("model_block", cfg.block),
            ("model_shortcut", cfg.shortcut),
            ("precision", cfg.precision),
            ("harness_run_id", self.run_id),
        ):
            self._event(key, value)

    def configured(self, cfg: RunConfig, facts, total_steps, eval_every_steps):
        """What the setup found (platform, data sizes) and the training hyperparameters, before `init_stop`;
        `cfg` with its defaults resolved by the setup (the strategy, the batch norm), as the run uses it."""
        self.cfg = cfg
        self._train_images, self._total, self._eval_every = max(facts.train_images, 1), total_steps, eval_every_steps
        self._event(mlc.SUBMISSION_PLATFORM, platform_name(cfg, facts.device, facts.num_replicas))
        self._event(mlc.TRAIN_SAMPLES, facts.train_images)
        self._event(mlc.EVAL_SAMPLES, facts.test_images)
        for key, value in (
            ("data", facts.data),
            ("strategy", cfg.strategy),
            ("num_replicas", facts.num_replicas),
            ("device", facts.device),
            ("tf_version", facts.tf_version),
            ("target_accuracy", cfg.target_accuracy),
        ):
            self._event(key, value)
        if cfg.mode == "train":
            for key, value in self._hyperparameters(facts).items():
                self._event(key, value)

    def _hyperparameters(self, facts):
        """The optimizer and schedule as `bench.config.recipe` makes them (MLPerf's names where it has them)."""
        cfg, total = self.cfg, self._total
        schedule = recipe.lr_schedule(cfg, total)
        warm = schedule.starts[1] if len(schedule.values) > 1 and schedule.values[1] > schedule.values[0] else 0
        drops = [s for s in schedule.starts[1:] if s != warm]
        return {
            mlc.OPT_NAME: mlc.SGD,
            mlc.OPT_BASE_LR: max(schedule.values),
            "sgd_opt_momentum": recipe.MOMENTUM,
            mlc.OPT_WEIGHT_DECAY: spec.DEFAULT_WEIGHT_DECAY,
            mlc.OPT_LR_DECAY_SCHEDULE: "piecewise constant: "
            + ", ".join(f"{v:g} from step {s}" for s, v in zip(schedule.starts, schedule.values)),
            mlc.OPT_LR_DECAY_BOUNDARY_STEPS: drops,
            mlc.OPT_LR_DECAY_BOUNDARY_EPOCHS: [s * cfg.batch_size / self._train_images for s in drops],
            mlc.OPT_LR_DECAY_FACTOR: recipe.LR_DROP_FACTOR,
            mlc.OPT_LR_WARMUP_STEPS: warm,
            mlc.OPT_LR_TRAINING_STEPS: total,
            "lr_scale": cfg.lr_scale,
            mlc.MODEL_BN_SPAN: cfg.batch_size if cfg.sync_bn else cfg.batch_size // max(facts.num_replicas, 1),
            "eval_period_steps": self._eval_every,
        }

    # -- the controller's events (RunObserver) ------------------------------------------------------

    def started(self, step):
        """Training starts: `init_stop` and `run_start` (a resumed run says from which step)."""
        self._ml.end(mlc.INIT_STOP)
        self._ml.start(mlc.RUN_START, metadata={"resumed_from_step": step} if step else None)
        self._run_started = True

    def window_begins(self, step):
        if self._block_from is None:
            self._block_from = step
            self._ml.start(mlc.BLOCK_START, metadata=self._block_metadata(step, opening=True))

    def evaluation_begins(self, step):
        self._close_block(step)
        self._ml.start(mlc.EVAL_START, metadata=self._at(step))

    def evaluated(self, step, accuracy, images):
        self._ml.end(mlc.EVAL_STOP, metadata=self._at(step))
        self._event(mlc.EVAL_ACCURACY, accuracy, {**self._at(step), "images": images})

    def evaluation_abandoned(self, step):
        """A stop request ended the evaluation: closed, with no accuracy."""
        self._ml.end(mlc.EVAL_STOP, metadata={**self._at(step), "abandoned": True})

    # -- the end --------------------------------------------------------------------------------------

    def stopped(self, measured, target_accuracy):
        """`run_stop` when training ended (before the row: the row's slow parts are not the run's time)."""
        if not self._run_started:
            return
        self._close_block(measured.steps)
        reached = measured.steps_to_target is not None
        ok = measured.status == "ok" and (reached if target_accuracy is not None else True)
        metadata = {mlc.STATUS: mlc.SUCCESS if ok else mlc.ABORTED, "harness_status": measured.status}
        if measured.error:
            metadata["error"] = measured.error
        self._ml.end(mlc.RUN_STOP, metadata={**metadata, **self._at(measured.steps)})

    def finish(self, row):
        """The harness's measurements after `run_stop`; the file is closed. Returns `row` naming the log."""
        for column in MEASUREMENTS:
            if row.get(column) not in (None, ""):
                self._event(f"harness_{column}", row[column])
        self.close()
        return {**row, "mlperf_log": self.name}

    def ended_in_setup(self, row):
        """A run that ended before training: said in the log, which then holds no result (no `run_stop`)."""
        self._event("harness_setup_ended", row.get("status"), {"error": row.get("error") or ""})
        self.close()
        return {**row, "mlperf_log": self.name}

    def close(self):
        self._logger.removeHandler(self._handler)
        self._handler.close()

    def discard(self):
        """No run after all (a resumed run that had nothing left to train): no log either."""
        self.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)

    # -- helpers -------------------------------------------------------------------------------------

    def _event(self, key, value, metadata=None):
        self._ml.event(key, value, metadata=metadata, stack_offset=2)  # mllog records our caller's line

    def _epochs(self, step):
        return step * self.cfg.batch_size / self._train_images

    def _at(self, step):
        """Where the run is: MLPerf's `epoch_num` (training) and `samples_count`."""
        where = {mlc.SAMPLES_COUNT: step * self.cfg.batch_size}
        if self.cfg.mode == "train":
            where[mlc.EPOCH_NUM] = self._epochs(step)
        return where

    def _block_metadata(self, start, opening=False):
        meta = {mlc.SAMPLES_COUNT: start * self.cfg.batch_size}
        if self.cfg.mode != "train":
            return meta
        meta[mlc.FIRST_EPOCH_NUM] = self._epochs(start)
        if opening:  # until the next evaluation, or the end
            end = self._total
            if self._eval_every:
                end = min(end, (start // self._eval_every + 1) * self._eval_every)
            meta[mlc.EPOCH_COUNT] = self._epochs(max(end - start, 1))
        return meta

    def _close_block(self, step):
        if self._block_from is None:
            return
        meta = self._block_metadata(self._block_from)
        meta[mlc.SAMPLES_COUNT] = step * self.cfg.batch_size
        self._ml.end(mlc.BLOCK_STOP, metadata=meta)
        self._block_from = None


class NoLog:
    """The log of a process that writes none (a multi-worker run's other workers): nothing is written."""

    name = ""

    def __bool__(self):
        return False

    def configured(self, cfg, facts, total_steps, eval_every_steps):
        pass

    def stopped(self, measured, target_accuracy):
        pass

    def discard(self):
        pass

    def finish(self, row):
        return row

    def ended_in_setup(self, row):
        return row


def begin(cfg: RunConfig, run_id, enabled=True):
    """The run's log, opened with its first events (`init_start`); `NoLog` when this process writes none,
    or when the log cannot be created (said on stderr: the run itself goes on, its row without a log)."""
    if not enabled:
        return NoLog()
    path = log_path(cfg.results, run_id)
    try:
        log = MLPerfLog(cfg, run_id, path)
    except OSError as err:
        print(f"warning: no MLPerf log for run {run_id}: cannot create {path} ({err.strerror or err})", file=sys.stderr)
        return NoLog()
    log.init_started()
    return log


def _root():
    """The project's folder: trimmed from the file names mllog records for each event."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
