"""The outer loop of one benchmark run: windows, evaluation, checkpoints, the result row.

`run(cfg)` checks everything it can before any work (bad input raises
ConfigError and writes nothing), trains in windows of `steps_per_loop` steps
timed by `bench.timing.Chrono`, evaluates between windows, checkpoints between
windows, and appends exactly one row to the results table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import traceback

from bench import config, data, devices, results
from bench.config import ConfigError, RunConfig

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
_UNFINGERPRINTED = ("results", "tensorboard_dir", "profile_steps", "profile_dir", "checkpoint_every_steps")


@dataclasses.dataclass
class Outcome:
    status: str  # ok | diverged | failed | skipped (a resumed run that had already finished)
    row: dict
    exit_code: int
    chrono: object = None  # the run's bench.timing.Chrono (for inspection)


class RunIdentity:
    """`run.json` in the checkpoint folder: one run id for all restarts of the same configuration."""

    def __init__(self, cfg: RunConfig):
        self.path = os.path.join(cfg.checkpoint_dir, "run.json") if cfg.checkpoint_dir else None
        self.fingerprint = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _UNFINGERPRINTED}
        self.fingerprint = json.loads(json.dumps(self.fingerprint))
        # A sweep's trial keeps one id over driver restarts, so its row is written once.
        self.run_id = stable_run_id(cfg) if cfg.trial_key else results.new_run_id()
        self.finished = False
        self.resumed = False
        if self.path and os.path.exists(self.path):
            with open(self.path) as fh:
                saved = json.load(fh)
            if saved.get("config") != self.fingerprint:
                changed = sorted(k for k in self.fingerprint if saved.get("config", {}).get(k) != self.fingerprint[k])
                raise ConfigError(
                    f"--checkpoint_dir={cfg.checkpoint_dir} holds a run with another configuration "
                    f"(differs in: {', '.join(changed) or 'format'}); use a new folder"
                )
            self.run_id = saved["run_id"]
            self.finished = bool(saved.get("finished"))
            self.resumed = True

    def save(self, finished=False):
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"run_id": self.run_id, "config": self.fingerprint, "finished": finished}, fh, indent=1)
        os.replace(tmp, self.path)


def stable_run_id(cfg: RunConfig):
    return hashlib.sha1(f"{cfg.sweep}|{cfg.trial_key}".encode()).hexdigest()[:12]


def config_row(cfg: RunConfig, status, error=""):
    """The row's columns known from the configuration alone (a trial that failed before running)."""
    from resnet import cost

    return {
        **results.base_provenance(),
        "run_id": stable_run_id(cfg) if cfg.trial_key else results.new_run_id(),
        "timestamp_utc": results.utc_now(),
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
        "flops_per_image": cost.cost(cfg.n, cfg.block, cfg.shortcut).train_flops,
        "precision": config.canonical_precision(cfg.precision),
        "xla": cfg.xla,
        "global_batch_size": cfg.batch_size,
        "steps_per_loop": cfg.steps_per_loop,
        "warmup_steps": cfg.warmup_steps,
        "recipe": cfg.recipe,
        "target_accuracy": cfg.target_accuracy,
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
    }


def preflight(cfg: RunConfig) -> RunConfig:
    """Every check that needs no TensorFlow. Raises ConfigError; writes nothing."""
    cfg = config.validate(cfg)
    if cfg.steps is not None:
        config.check_steps(cfg, cfg.steps)
    try:
        results.check_results_path(cfg.results)
    except results.ResultsError as err:
        raise ConfigError(str(err)) from None
    if cfg.cifar_dir and cfg.data in ("files", "auto"):
        data.find_cifar_files(cfg.cifar_dir)
    for flag in ("checkpoint_dir", "tensorboard_dir", "profile_dir"):
        _check_output_dir(flag, getattr(cfg, flag))
    return cfg


def _check_output_dir(flag, path):
    """A folder the run may create or write into: it, or its nearest existing ancestor, is a writable folder."""
    if not path:
        return
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise ConfigError(f"--{flag}={path} is not a writable folder")


def run(cfg: RunConfig, command="", out=sys.stdout, write_row=True, on_eval=None) -> Outcome:
    """One benchmark run. Raises ConfigError for bad input before any work is done.

    `write_row=False` leaves the row to the caller (a sweep's driver writes every
    trial's row itself). `on_eval(step, accuracy, partial_row)` is called after each
    evaluation (a sweep reports it to its scheduler).
    """
    started = time.perf_counter()
    cfg = preflight(cfg)
    identity = RunIdentity(cfg)
    if identity.finished:
        print(f"run {identity.run_id} in {cfg.checkpoint_dir} already finished; its row is in the results",
              file=out)
        return Outcome("skipped", {}, EXIT_OK)
    dev = devices.setup(cfg)
    if cfg.loop == "fit":
        from bench.fitloop import FitSession as session_class
    else:
        session_class = _Session
    session = session_class(cfg, dev, identity, command, started, out, write_row, on_eval)
    return session.execute()


class _Session:
    """State of one run between setup and the row."""

    def __init__(self, cfg, dev, identity, command, started, out, write_row=True, on_eval=None):
        self.cfg, self.dev, self.identity, self.command = cfg, dev, identity, command
        self.started, self.out = started, out
        self.write_row, self.on_eval = write_row, on_eval
        self.row = {}

    # -- setup (bad input still possible: ConfigError) -------------------------

    def _setup(self):
        import keras
        import tensorflow as tf

        from bench import peak
        from bench.step import Trainer, make_optimizer
        from resnet import cost
        from resnet.model import build_resnet

        cfg, dev = self.cfg, self.dev
        keras.utils.set_random_seed(cfg.seed)
        self.source = data.resolve(cfg)
        if cfg.target_accuracy is not None and self.source.kind == "synthetic":
            raise ConfigError("--target_accuracy needs real data, but only synthetic data is available")
        self.total_steps = config.train_steps(cfg, self.source.train_images)
        config.check_steps(cfg, self.total_steps)
        self.schedule = config.lr_schedule(cfg, self.total_steps)
        self.cost = cost.cost(cfg.n, cfg.block, cfg.shortcut)
        self.identity.save(finished=False)
        with dev.strategy.scope():
            self.batch_norm = config.resolve_batch_norm(cfg, dev.device_kind)
            model = build_resnet(cfg.n, cfg.block, cfg.shortcut, precision=cfg.precision, sync_bn=cfg.sync_bn,
                                 batch_norm=self.batch_norm)
            # The fit baseline uses Keras's optimizer weight decay; the custom loop adds L2 to its loss.
            optimizer = make_optimizer(self.schedule, cfg.precision,
                                       weight_decay=1e-4 if cfg.loop == "fit" else None)
        self.model, self.optimizer = model, optimizer
        self.trainer = self._make_trainer(Trainer)
        self.params = int(sum(math.prod(v.shape) for v in model.trainable_variables))
        key = f"{dev.device_kind}:{dev.device_name}|tf{tf.__version__}" + (
            "|onednn" if dev.onednn and dev.device_kind == "CPU" else "")
        self.peak_gflops = peak.peak_gflops(dev.first_device, key, cfg.precision) * dev.physical_devices
        # Progress survives restarts through the checkpoint.
        self.train_seconds_before = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.time_to_target = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.manager = None
        if cfg.checkpoint_dir:
            ckpt = tf.train.Checkpoint(
                model=model, optimizer=optimizer, step=self.trainer.step,
                train_seconds=self.train_seconds_before, best_accuracy=self.best_accuracy,
                time_to_target=self.time_to_target,
            )
            self.manager = tf.train.CheckpointManager(ckpt, cfg.checkpoint_dir, max_to_keep=2)
            if self.manager.latest_checkpoint:
                ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        self.start_step = int(self.trainer.step.numpy()) if self.trainer else 0
        self.seconds_at_start = float(self.train_seconds_before.numpy())
        self.eval_ds = None
        if self.source.test is not None and self.source.test_images > 0:
            self.eval_ds, self.eval_batches = data.distribute_eval(dev.strategy, self.source, cfg.batch_size)
        self.writer = tf.summary.create_file_writer(cfg.tensorboard_dir) if cfg.tensorboard_dir else None

    def _make_trainer(self, trainer_class):
        cfg = self.cfg
        return trainer_class(
            self.model, self.optimizer, self.dev.strategy, cfg.batch_size, weight_decay=1e-4, xla=cfg.xla,
            sync_bn=cfg.sync_bn, inject_nan_at_step=cfg.inject_nan_at_step,
            inject_inf_grad_at_step=cfg.inject_inf_grad_at_step,
        )

    def _train_iterator(self):
        """The custom loop's input (created only when it trains: an iterator starts prefetching)."""
        cfg, strategy = self.cfg, self.dev.strategy
        if self.source.kind == "synthetic":
            return data.SyntheticIterator(data.synthetic_batches(strategy, cfg.batch_size, cfg.seed))
        # After a restart the order is reshuffled from a seed tied to the step reached.
        seed = cfg.seed + self.start_step
        return iter(data.distribute_train(strategy, self.source, cfg.batch_size, seed))

    # -- the run -------------------------------------------------------------

    def execute(self) -> Outcome:
        self._setup()
        status, error, code = "ok", "", EXIT_OK
        try:
            status, error = self._train()
            if status == "diverged":
                code = EXIT_DIVERGED
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a crash mid-run still leaves a row saying so
            traceback.print_exc(file=sys.stderr)
            status, error, code = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:500], EXIT_FAILED
        row = self._row(status, error)
        if self.write_row:
            results.append_row(self.cfg.results, row)
        self.identity.save(finished=True)
        self._print_summary(row)
        return Outcome(status, row, code, getattr(self, "chrono", None))

    def _eval_every(self):
        cfg = self.cfg
        every = cfg.eval_every_epochs
        if every is None and cfg.target_accuracy is not None:
            every = 1.0
        if every is None or self.eval_ds is None:
            return None
        return max(1, round(every * self.source.train_images / cfg.batch_size))

    def _boundaries(self):
        """Steps at which a window must end (warm-up end, evals, checkpoints, profile edges, the end)."""
        cfg, total = self.cfg, self.total_steps
        marks = {total, min(total, self.start_step + max(cfg.warmup_steps, 1))}
        for every in (self._eval_every(), self._checkpoint_every()):
            if every:
                marks.update(range(every, total, every))
        if cfg.profile_steps:
            first, last = cfg.profile_steps
            marks.update({first - 1, last})
        marks.add(self.start_step + 1)  # the first call is a single step (trace + compile)
        return sorted(m for m in marks if self.start_step < m <= total)

    def _checkpoint_every(self):
        if not self.manager:
            return None
        return self.cfg.checkpoint_every_steps or self._eval_every() or max(self.cfg.steps_per_loop, 50)

    def _train(self):
        import tensorflow as tf

        from bench.timing import Chrono

        cfg, trainer = self.cfg, self.trainer
        iterator = self._train_iterator()
        self.chrono = chrono = Chrono()
        self.final_loss = None
        self.last_accuracy = None
        step = self.steps_done = self.start_step
        if step:
            print(f"resumed from step {step} of {self.total_steps} ({cfg.checkpoint_dir})", file=self.out, flush=True)
        warm_end = min(self.total_steps, step + max(cfg.warmup_steps, 1))
        marks = self._boundaries()
        eval_every, ckpt_every = self._eval_every(), self._checkpoint_every()
        profiling = False
        last_print = 0.0
        while step < self.total_steps:
            next_mark = next(m for m in marks if m > step)
            n = min(cfg.steps_per_loop, next_mark - step)
            if cfg.profile_steps and step + 1 == cfg.profile_steps[0]:
                tf.profiler.experimental.start(cfg.profile_dir or os.path.join(cfg.tensorboard_dir or "results", "profile"))
                profiling = True
            if step == self.start_step:
                kind = "first"
            elif step < warm_end:
                kind = "warmup"
            else:
                kind = "untimed" if profiling else "timed"
            loss, seconds = chrono.call(trainer.train, iterator, tf.constant(n, tf.int32), steps=n, kind=kind)
            step += n
            self.steps_done = step
            if kind == "first":
                self.first_step_at = time.perf_counter()
            if profiling and step >= cfg.profile_steps[1]:
                tf.profiler.experimental.stop()
                profiling = False
            loss = float(loss)
            if not math.isfinite(loss):
                self.final_loss = loss
                return "diverged", f"non-finite training loss ({loss}) in steps {step - n + 1}-{step}"
            self.final_loss = loss
            if self.writer:
                with self.writer.as_default(step=step):
                    tf.summary.scalar("train/loss", loss)
                    tf.summary.scalar("train/images_per_sec", n * cfg.batch_size / seconds)
            now = time.perf_counter()
            if now - last_print > 5 or step == self.total_steps:
                self._progress(step, loss, n * cfg.batch_size / seconds)
                last_print = now
            reached = False
            if eval_every and (step % eval_every == 0 or step == self.total_steps):
                reached = self._evaluate(step)
            if self.manager and (step % ckpt_every == 0 or step == self.total_steps or reached):
                self._save(step)
            if reached:
                break
        if self.eval_ds is not None and self.last_accuracy is None:
            self._evaluate(step)
        return "ok", ""

    def _evaluate(self, step):
        """Test accuracy now; True when the target accuracy is reached for the first time."""
        import tensorflow as tf

        correct, loss_sum, count = self.trainer.eval_loop(iter(self.eval_ds), tf.constant(self.eval_batches))
        acc = float(correct) / float(count)
        self.last_accuracy = acc
        self.best_accuracy.assign(max(float(self.best_accuracy.numpy()), acc))
        print(f"  eval at step {step}: test accuracy {acc:.4f} (loss {float(loss_sum) / float(count):.4f}, "
              f"{int(count)} images)", file=self.out, flush=True)
        if self.writer:
            with self.writer.as_default(step=step):
                tf.summary.scalar("eval/accuracy", acc)
        if self.on_eval:
            self.on_eval(step, acc, self._row("stopped", "stopped by the sweep's scheduler"))
        target = self.cfg.target_accuracy
        if target is not None and acc >= target and self.time_to_target.numpy() < 0:
            self.time_to_target.assign(self._train_seconds())
            print(f"  target accuracy {target} reached after {self._train_seconds():.1f} s of training",
                  file=self.out, flush=True)
            return True
        return False

    def _train_seconds(self):
        """Training time over all restarts of this run (compile included, eval and checkpoints not)."""
        return self.seconds_at_start + self.chrono.train_seconds

    def _save(self, step):
        self.train_seconds_before.assign(self._train_seconds())
        self.manager.save(checkpoint_number=step)

    def _progress(self, step, loss, rate):
        done = step - self.start_step
        left = self.total_steps - step
        per_step = self.chrono.train_seconds / max(done, 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(left * per_step))
        print(f"step {step:>6}/{self.total_steps} | loss {loss:7.4f} | {rate:8.1f} img/s | ETA {eta}",
              file=self.out, flush=True)

    # -- the row -------------------------------------------------------------

    def _row(self, status, error):
        import keras
        import tensorflow as tf

        from bench import metrics

        cfg, dev = self.cfg, self.dev
        chrono = getattr(self, "chrono", None)
        thr = chrono.throughput(cfg.batch_size) if chrono else None
        best = float(self.best_accuracy.numpy())
        ttt = float(self.time_to_target.numpy())
        row = {
            **config_row(cfg, status, error),
            "run_id": self.identity.run_id,
            "tf_version": tf.__version__,
            "keras_version": keras.__version__,
            "device": f"{dev.device_kind}: {dev.device_name}",
            "onednn": dev.onednn,
            "batch_norm": getattr(self, "batch_norm", None),
            "num_replicas": dev.num_replicas,
            "params": self.params,
            "timed_steps": thr.timed_steps if thr else 0,
            "total_steps": getattr(self, "steps_done", self.total_steps),
            "epochs": getattr(self, "steps_done", self.total_steps) * cfg.batch_size / self.source.train_images,
            "data": self.source.kind,
            "compile_s": chrono.compile_seconds() if chrono else None,
            "time_to_first_step_s": (self.first_step_at - self.started) if hasattr(self, "first_step_at") else None,
            "train_time_s": self._train_seconds() if chrono else None,
            "peak_gflops": self.peak_gflops,
            "final_train_loss": self.final_loss if chrono else None,
            "test_accuracy": self.last_accuracy if chrono else None,
            "best_test_accuracy": best if best >= 0 else None,
            "time_to_target_s": ttt if ttt >= 0 else None,
            "command": self.command,
        }
        if thr:
            row.update(
                images_per_sec=thr.images_per_sec,
                images_per_sec_stderr=thr.images_per_sec_stderr,
                jitter=thr.jitter,
                step_time_p50_ms=thr.step_time_p50_ms,
                step_time_p90_ms=thr.step_time_p90_ms,
                step_time_p99_ms=thr.step_time_p99_ms,
                mfu=metrics.mfu(self.cost.train_flops, thr.images_per_sec, self.peak_gflops * 1e9),
            )
        return row

    def _print_summary(self, row):
        def fmt(key, spec=""):
            v = row.get(key)
            return "-" if v in (None, "") else format(v, spec)

        lines = [
            ("status", fmt("status") + (f" ({row['error']})" if row.get("error") else "")),
            ("model", f"ResNet-{row['depth']} {row['block']}/{row['shortcut']}, {row['params']:,} params, "
                      f"{row['batch_norm']} BN"),
            ("devices", f"{row['num_replicas']} x {row['device']} ({row['strategy']}, {row['precision']}"
                        f"{', XLA' if row['xla'] else ''}{', oneDNN' if row['onednn'] else ''})"),
            ("images/sec", f"{fmt('images_per_sec', '.1f')} ± {fmt('images_per_sec_stderr', '.1f')} "
                           f"(jitter {fmt('jitter', '.1f')}, {row['timed_steps']} timed steps)"),
            ("step time", f"p50 {fmt('step_time_p50_ms', '.1f')} / p90 {fmt('step_time_p90_ms', '.1f')} / "
                          f"p99 {fmt('step_time_p99_ms', '.1f')} ms"),
            ("compile", f"{fmt('compile_s', '.1f')} s (first step at {fmt('time_to_first_step_s', '.1f')} s)"),
            ("MFU", f"{fmt('mfu', '.1%')} of {fmt('peak_gflops', '.0f')} GFLOP/s measured peak"),
            ("test accuracy", f"{fmt('test_accuracy', '.4f')} (best {fmt('best_test_accuracy', '.4f')}, "
                              f"data {row['data']})"),
            ("results", f"{self.cfg.results} (run {row['run_id']})"),
        ]
        width = max(len(k) for k, _ in lines)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in lines), file=self.out, flush=True)
