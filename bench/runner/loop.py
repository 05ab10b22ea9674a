"""The loop of a run, like orbit's Controller: windows, cadence, progress, and the record of what was measured.

The controller owns the loop: it calls `workload.run_steps(num_steps)` window after window and
decides which window comes next and whether it is timed (the first, compiling call and the warm-up
never are), when to evaluate, checkpoint and profile, when to stop (end, target accuracy, a stop
request from a signal), and what the progress line says. Workloads (`bench.training.trainers`: the
custom loop, Keras fit, forward passes) own only the step and its input; `Workload` below is what the
controller calls on them. One exception, as in Keras itself: `model.fit` cannot be called window by
window, so a workload that `drives_own_loop` (the fit baseline) runs once and calls the controller
back around each chunk. The controller holds no framework state and no global state, so the same
object runs in one process or in each worker of a multi-worker job. `Controller.run` returns a
frozen `bench.results.rows.Measured`: the row is built from it, never from the controller.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from typing import Protocol

from bench.results.rows import Measured
from bench.runner.timing import Chrono


@dataclasses.dataclass(frozen=True)
class RunHooks:
    """What a caller of `bench.runner.benchmark.run` adds to a run (a multi-worker worker's own rules)."""

    checkpoint_manager: Callable | None = None  # (tf.train.Checkpoint, strategy) -> manager
    on_step: Callable | None = None  # on_step(step) after each window; a returned reason stops the run
    extra_marks: tuple = ()  # more steps a window must end at
    mlperf_log: bool = True  # this process writes the run's MLPerf log (a multi-worker run: the chief only)


class RunObserver(Protocol):
    """What the controller tells an observer of the run (the MLPerf log, `bench.results.mlperf_log`).

    Plain values, called between windows (never between a window's clock start and its sync), so an
    observer cannot disturb what is timed; it is told, it decides nothing.
    """

    def started(self, step: int) -> None:
        """Training begins (or resumes, from a checkpoint) at `step`."""

    def window_begins(self, step: int) -> None:
        """A training window starting after `step` is about to run (its clock has not started)."""

    def evaluation_begins(self, step: int) -> None:
        """The test set is about to be evaluated after `step`."""

    def evaluated(self, step: int, accuracy: float, images: int) -> None:
        """The test accuracy after `step`, over `images` test images."""

    def evaluation_abandoned(self, step: int) -> None:
        """The evaluation begun after `step` was abandoned (a stop request): no accuracy."""


class Workload(Protocol):
    """What the controller calls on a trainer (or on inference's forward passes)."""

    can_evaluate: bool  # there is a test set to evaluate on
    fixed_window: int | None  # every window has exactly this many steps (Keras fit), or None
    drives_own_loop: bool  # True: `drive(controller)` runs the loop and calls the controller back
    value_name: str  # what a window's value is ("loss"; inference: "mean logit")
    xla_scope: str  # what XLA compiles: step | forward_backward | forward | none

    def run_steps(self, num_steps: int):
        """`num_steps` steps in one call; returns the window's value (a tensor)."""

    def drive(self, controller: Controller) -> None:
        """Run the whole loop, calling back `controller.begin_window`/`end_window`/`window_done`."""

    def evaluate(self, should_stop: Callable[[], bool] | None = None) -> tuple[float, float, int] | None:
        """(test accuracy, mean test loss, images evaluated); None when `should_stop()` became true first
        (asked between chunks of the test set)."""

    def steps_done(self) -> int:
        """Steps already trained (restored from a checkpoint)."""

    def skipped_steps(self) -> int | None:
        """Steps skipped by mixed_float16 loss scaling so far (None: not counted)."""

    def learning_rate(self) -> float | None:
        """The learning rate the last step applied (None: not known)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The run's shape in steps (all counts are global optimizer steps)."""

    total_steps: int
    start_step: int = 0  # steps already trained (a resumed run)
    warmup_steps: int = 10
    steps_per_loop: int = 10
    eval_every: int | None = None
    checkpoint_every: int | None = None
    profile_steps: tuple | None = None  # (first, last)
    fixed_window: int | None = None  # every window has exactly this many steps (Keras fit's steps_per_execution)
    extra_marks: tuple = ()  # more steps a window must end at (multi-worker fault injection)

    def next_mark(self, step):
        """The first step after `step` at which a window must end (warm-up end, evals, checkpoints, profile
        edges, extra marks, the end). Computed from the cadences, never from a list of every mark: a long
        run with a short cadence would hold millions of them."""
        total, start = self.total_steps, self.start_step
        candidates = [total, min(total, start + max(self.warmup_steps, 1)), start + 1, *self.extra_marks]
        for every in (self.eval_every, self.checkpoint_every):
            if every:
                candidates.append((step // every + 1) * every)
        if self.profile_steps:
            candidates.extend((self.profile_steps[0] - 1, self.profile_steps[1]))
        return min(m for m in candidates if step < m and start < m <= total)


@dataclasses.dataclass(frozen=True)
class Window:
    start: int  # steps done before it
    steps: int
    kind: str  # first | warmup | timed | untimed (see bench.runner.timing.Chrono)

    @property
    def end(self):
        return self.start + self.steps


@dataclasses.dataclass
class Progress:
    """What survives restarts of a checkpointed run."""

    train_seconds: float = 0.0  # training seconds of earlier processes
    best_accuracy: float = -1.0
    time_to_target: float = -1.0
    target_step: int = -1  # the global step of the evaluation that first reached the target (-1: not yet)


class Controller:
    """Drives one run's windows through a trainer; see the module docstring."""

    def __init__(
        self,
        plan: Plan,
        workload: Workload,
        batch_size,
        *,
        out=None,
        target_accuracy=None,
        checkpointer=None,
        summaries=None,
        profiler=None,
        on_eval=None,
        progress=None,
        on_step=None,
        observer: RunObserver | None = None,
        clock=time.perf_counter,
        monitor=None,
    ):
        self.plan, self.workload, self.batch_size = plan, workload, batch_size
        # sys.stdout looked up now, not when this module was imported: the command's guarded stream
        self.out, self.target_accuracy = out or sys.stdout, target_accuracy
        self.checkpointer, self.summaries, self.profiler = checkpointer, summaries, profiler
        self.on_eval = on_eval  # on_eval(step, accuracy): a sweep reports to its scheduler
        # on_step(step) after each window (a multi-worker worker: fault injection, the driver's stop
        # request); a truthy return is a stop reason ("SIGINT"), as if a signal had come here
        self.on_step = on_step
        # monitor: reads the machine's state between windows (bench.hardware.machine.MachineMonitor): its
        # before/after calls bracket the chrono's, so no reading falls inside a window's device work
        self.monitor = monitor
        self.observer = observer  # told of the run's events between windows (the MLPerf log)
        self.progress = progress or Progress()
        self.chrono = Chrono()
        self.clock = clock
        self.step = plan.start_step
        self.final_loss = None
        self.last_accuracy = None
        self.first_step_at = None
        self.stop_requested = None  # a reason (e.g. "SIGINT") set from a signal handler
        self.status, self.error = "ok", ""
        self.display = ProgressLine(self.out, plan.total_steps, batch_size, workload.value_name)
        self._profiling = False
        self._saved_at = None
        self._last_seconds = None
        self._skipped_seen = None

    # -- the loop -------------------------------------------------------------

    def run(self) -> Measured:
        """Train to the end (or a stop); return what was measured (status: ok | diverged | interrupted)."""
        if self.step:
            print(f"resumed from step {self.step} of {self.plan.total_steps}", file=self.out, flush=True)
        self._skipped_seen = self.workload.skipped_steps()  # a resumed run restored its count
        if self.monitor:
            self.monitor.start()
        if self.observer:
            self.observer.started(self.step)
        if self.workload.drives_own_loop:  # Keras fit: the workload calls back (see the module docstring)
            self.workload.drive(self)
        else:
            for window in self.windows():
                if self.window_done(window, self.train_window(window)):
                    break
        self.display.close()
        # An interrupted run skips the final evaluation: its row must land within a preemption's grace
        # period (Kubernetes gives 30 s); it keeps the accuracy of its last scheduled evaluation, if any.
        # A stop that arrives during the final evaluation ends it at its next chunk: the run is interrupted.
        when = ""
        if (
            self.status == "ok"
            and not self.stop_requested
            and self.last_accuracy is None
            and self.workload.can_evaluate
        ):
            self.evaluate()
            when = ", during the final evaluation"
        if self.status == "ok" and self.stop_requested:
            self.status, self.error = "interrupted", f"stopped by {self.stop_requested} at step {self.step}{when}"
        if self.checkpointer and self.status != "diverged" and self._saved_at != self.step:
            self.save()
        return self.measured()

    def measured(self, status=None, error=None) -> Measured:
        """The record of what was measured so far (`status`/`error` override the run's own: a sweep's
        scheduler reads a partial record after each evaluation)."""
        chrono, progress = self.chrono, self.progress
        return Measured(
            status=status or self.status,
            error=self.error if error is None else error,
            steps=self.step,
            timed=chrono.throughput(self.batch_size),
            compile_s=chrono.compile_seconds(),
            first_step_at=self.first_step_at,
            train_time_s=self.train_seconds() if chrono.first_call_s is not None else None,
            final_loss=self.final_loss,
            last_accuracy=self.last_accuracy,
            best_accuracy=progress.best_accuracy if progress.best_accuracy >= 0 else None,
            time_to_target_s=progress.time_to_target if progress.time_to_target >= 0 else None,
            steps_to_target=progress.target_step if progress.target_step >= 0 else None,
            skipped_steps=self.workload.skipped_steps(),
            xla_scope=self.workload.xla_scope,
            windows=tuple(chrono.windows),
            warmup=tuple(chrono.warmup),
            untimed=tuple(chrono.untimed),
            machine=self.monitor.state() if self.monitor else None,
        )

    def windows(self):
        """The windows still to train, computed one at a time from the step reached."""
        plan = self.plan
        warm_end = min(plan.total_steps, plan.start_step + max(plan.warmup_steps, 1))
        while self.step < self._last_step() and not self.stop_requested:
            yield self._next_window(warm_end)

    def _last_step(self):
        q = self.plan.fixed_window or 1
        return self.plan.total_steps // q * q

    def _next_window(self, warm_end):
        plan, step = self.plan, self.step
        if plan.fixed_window:  # Keras fit: whole steps_per_execution chunks, no marks inside
            steps = plan.fixed_window
        else:
            steps = min(plan.steps_per_loop, plan.next_mark(step) - step)
        if step == plan.start_step:
            kind = "first"
        elif step < warm_end:
            kind = "warmup"
        else:
            kind = "untimed" if self._profiling or self._profile_starts(step) else "timed"
        return Window(step, steps, kind)

    def _profile_starts(self, step):
        return bool(self.plan.profile_steps) and step + 1 == self.plan.profile_steps[0]

    def train_window(self, window: Window):
        """One training call of `window.steps` steps, timed by the chrono; return its loss."""
        self.begin_window(window)
        loss = self.workload.run_steps(window.steps)
        return self.end_window(window, loss)

    def begin_window(self, window: Window):
        """Open a window (for trainers that are called back, such as Keras fit)."""
        if self.observer:
            self.observer.window_begins(window.start)
        if self._profile_starts(window.start) and self.profiler:
            self.profiler.start()
            self._profiling = True
        if self.monitor:
            self.monitor.before(window.kind)
        self.chrono.begin()

    def end_window(self, window: Window, loss):
        """Sync and close `window`; return its loss as a float."""
        seconds = self.chrono.end(window.steps, window.kind, loss)
        if self.monitor:
            self.monitor.after(window.kind)
        if window.kind == "first":
            self.first_step_at = self.clock()
        self._last_seconds = seconds
        return float(loss)

    def window_done(self, window: Window, loss):
        """Bookkeeping after a window; True when training must end (diverged, target reached)."""
        self.step = window.end
        stop = self.on_step(self.step) if self.on_step else None
        if stop and not self.stop_requested:
            self.stop_requested = stop
        if self._profiling and self.step >= self.plan.profile_steps[1]:
            self.profiler.stop()
            self._profiling = False
        self.final_loss = loss
        if not math.isfinite(loss):
            self.status = "diverged"
            self.error = f"non-finite training loss ({loss}) in steps {window.start + 1}-{window.end}"
            return True
        rate = window.steps * self.batch_size / self._last_seconds
        if self.summaries:
            values = {"train/loss": loss, "train/images_per_sec": rate}
            lr = self.workload.learning_rate()  # the custom loop: the lr its last step used
            if lr is not None:
                values["train/learning_rate"] = lr
            self.summaries.scalars(self.step, values)
        self.display.update(self.step, loss, self.chrono)
        self._report_skipped()
        reached = self._maybe_evaluate()
        if self.checkpointer and (self._due(self.plan.checkpoint_every) or reached):
            self.save()
        return reached

    def _report_skipped(self):
        """A log line when mixed_float16's loss scaling skipped steps in the window (read after it closed)."""
        skipped = self.workload.skipped_steps()
        if skipped is not None and skipped > self._skipped_seen:
            self.display.message(
                f"by step {self.step}: {skipped - self._skipped_seen} step(s) skipped "
                f"(non-finite gradients on a replica; loss scale lowered)"
            )
            self._skipped_seen = skipped

    def _due(self, every):
        return bool(every) and (self.step % every == 0 or self.step == self.plan.total_steps)

    # -- evaluation and checkpoints -------------------------------------------

    def _maybe_evaluate(self):
        if not self._due(self.plan.eval_every) or not self.workload.can_evaluate:
            return False
        return self.evaluate()

    def evaluate(self):
        """Test accuracy now; True when the target accuracy is reached for the first time. A stop request
        ends the evaluation between its chunks (nothing is recorded)."""
        if self.observer:
            self.observer.evaluation_begins(self.step)
        result = self.workload.evaluate(should_stop=lambda: bool(self.stop_requested))
        if result is None:
            if self.observer:
                self.observer.evaluation_abandoned(self.step)
            self.display.message(f"eval at step {self.step}: abandoned ({self.stop_requested})")
            return False
        accuracy, loss, count = result
        if self.observer:
            self.observer.evaluated(self.step, accuracy, count)
        self.last_accuracy = accuracy
        self.progress.best_accuracy = max(self.progress.best_accuracy, accuracy)
        self.display.message(
            f"eval at step {self.step}: test accuracy {accuracy:.4f} (loss {loss:.4f}, {count} images)"
        )
        if self.summaries:
            self.summaries.scalars(self.step, {"eval/accuracy": accuracy})
        if self.on_eval:
            self.on_eval(self.step, accuracy)
        target = self.target_accuracy
        if target is not None and accuracy >= target and self.progress.time_to_target < 0:
            self.progress.time_to_target = self.train_seconds()
            self.progress.target_step = self.step
            self.display.message(f"target accuracy {target} reached after {self.train_seconds():.1f} s of training")
            return True
        return False

    def save(self):
        self.checkpointer.save(self.step, dataclasses.replace(self.progress, train_seconds=self.train_seconds()))
        self._saved_at = self.step

    def train_seconds(self):
        """Training time over all restarts of this run (compile included, eval and checkpoints not)."""
        return self.progress.train_seconds + self.chrono.train_seconds


def _clock_text(seconds):
    """H:MM:SS, hours unbounded (a paper-recipe run on a CPU takes days)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


class ProgressLine:
    """Progress on the console: a line rewritten after every window on a terminal, a few lines otherwise.

    The ETA counts only windows after the first (compiling) call, so it is honest
    from the first warm-up or timed window on.
    """

    def __init__(self, out, total_steps, batch_size, label="loss", every_seconds=30.0):
        self.out, self.total, self.batch_size, self.label = out, total_steps, batch_size, label
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.every = every_seconds
        self._last = None
        self._dirty = False

    def update(self, step, loss, chrono: Chrono):
        parts = chrono.warmup + chrono.windows + chrono.untimed
        steps, seconds = sum(s for s, _ in parts), sum(t for _, t in parts)
        rate = f"{steps * self.batch_size / seconds:8.1f} img/s" if seconds else "      -- img/s"
        eta = _clock_text((self.total - step) * seconds / steps) if steps else "--:--:--"
        width = len(str(self.total))
        bar = "#" * int(20 * step / self.total)
        text = f"step {step:>{width}}/{self.total} [{bar:<20}] {self.label} {loss:7.4f} | {rate} | ETA {eta}"
        now = time.monotonic()
        if self.tty:
            self.out.write("\r" + text)
            self._dirty = True
        elif self._last is None or now - self._last >= self.every or step == self.total:
            self.out.write(text + "\n")
            self._last = now
        self.out.flush()

    def message(self, text):
        self.close()
        print(f"  {text}", file=self.out, flush=True)

    def close(self):
        if self._dirty:
            self.out.write("\n")
            self.out.flush()
            self._dirty = False
