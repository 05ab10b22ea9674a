"""One benchmark run, from a validated config to its row: `run(cfg)`.

Order: `validation.validate` (no TensorFlow; bad input raises ConfigError and
nothing is written) → devices → data → `setup_checks.check_setup` (what only they can
tell) → trainer → `Controller.run` → one row appended to the results table.

TensorFlow is imported only once the checks that need none have passed, so bad input is
refused in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import threading
import time
import traceback

from bench.config import defaults, options, setup_checks, validation
from bench.config.identity import RunIdentity
from bench.config.options import ConfigError, RunConfig
from bench.results import rows, table
from bench.runner import autotune

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


@dataclasses.dataclass
class Outcome:
    status: str  # ok | diverged | interrupted | failed | skipped (a resumed run that had already finished)
    row: dict
    exit_code: int
    chrono: object = None  # the run's bench.runner.timing.Chrono (for inspection)


def run(cfg: RunConfig, command="", out=sys.stdout, write_row=True, on_eval=None, hooks=None) -> Outcome:
    """One benchmark run. Raises ConfigError for bad input before any work is done.

    A run that got past the up-front checks (`validate`, the results path) ends in exactly
    one row: ok, diverged, interrupted or failed, whatever went wrong while setting it up (a checkpoint
    that does not restore, a corrupted data file, memory) or training it; only what the devices and the
    data tell `check_setup` is still bad input (ConfigError, nothing written).

    `write_row=False` leaves the row to the caller (a sweep's driver writes every
    trial's row itself). `on_eval(step, accuracy, partial_row)` is called after each
    evaluation (a sweep reports it to its scheduler). `hooks`: a
    `bench.runner.controller.RunHooks` from the caller (a multi-worker worker's checkpoint
    rule and fault injection); this module knows nothing of multi-worker runs.
    """
    started = time.perf_counter()
    cfg = validation.validate(cfg)
    table.check_results_path(cfg.results)
    identity = RunIdentity(cfg)
    if identity.finished:
        print(identity.finished_line(cfg), file=out)
        return Outcome("skipped", {}, EXIT_OK)
    try:
        with _on_signals(_interrupt):  # until the controller can stop between windows
            # autotune before TensorFlow's import (its probes may choose oneDNN); the same computation
            cfg = autotune.settle(cfg, out)
            cfg, controller, device_setup, facts = _set_up(cfg, identity, command, started, out, on_eval, hooks)
    except ConfigError:
        raise
    except Interrupted as stop:
        return _ended_in_setup(
            cfg,
            identity,
            command,
            out,
            write_row,
            "interrupted",
            f"stopped by {stop.name} while setting up",
            EXIT_SIGNAL[stop.name],
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's error
        error = first_line(exc)
        log = save_traceback(exc, cfg.results, identity.run_id)
        print(
            f"error: run {identity.run_id} failed while setting up: {error} (traceback: {log})",
            file=sys.stderr,
            flush=True,
        )
        return _ended_in_setup(cfg, identity, command, out, write_row, "failed", error, EXIT_FAILED)
    from bench.runner import assembly  # imported by the setup already (it needs TensorFlow)

    if controller.step >= controller.plan.total_steps:  # killed after its last checkpoint, before its row
        print(
            f"the checkpoint in {cfg.checkpoint_dir} is at step {controller.step} of {controller.plan.total_steps}: "
            f"nothing is left to train or time, so no row is written (a row that measured nothing would read as "
            f"a measurement); use a new --checkpoint_dir to measure again",
            file=out,
            flush=True,
        )
        identity.save(finished=True)
        return Outcome("skipped", {}, EXIT_OK)

    with _on_signals(_request_stop(controller)):
        status, error, code = _train(controller, cfg, identity.run_id)
    late = _Deferred()
    with _on_signals(late):  # a signal now waits for the row: it is never lost to a late Ctrl-C or SIGTERM
        if status != "interrupted":  # a stopped run's row comes first: no peak re-measurement (~20 s)
            facts = assembly.checked_peak(cfg, device_setup, facts, controller)
        row = rows.run_row(cfg, facts, controller, status, error)
        where, code = _conclude(cfg, identity, row, write_row, code)
        print(rows.summary_text(row, where), file=out, flush=True)
    if late.name and code == EXIT_OK:
        code = EXIT_SIGNAL[late.name]
    return Outcome(status, row, code, controller.chrono)


def _set_up(cfg, identity, command, started, out, on_eval, hooks):
    """(resolved cfg, controller, device setup, row facts): devices, data, `check_setup`, model, restore."""
    # TensorFlow is imported here, by the device setup, which makes the oneDNN choice first (it is fixed at
    # TensorFlow's import); the modules that use TensorFlow are imported only after it.
    from bench.hardware import devices

    device_setup = devices.setup(cfg)
    from bench.runner import assembly
    from bench.training import data

    source = data.resolve(cfg)
    setup_checks.check_setup(
        cfg,
        setup_checks.SetupFacts(
            **device_setup.facts, data_kind=source.kind, data_problem=source.problem, train_images=source.train_images
        ),
    )
    devices.warn_if_emulated(cfg, device_setup.device_kind)
    if source.warning:
        print(source.warning, file=sys.stderr, flush=True)
    cfg = defaults.resolve(cfg, device_setup.device_kind, device_setup.num_replicas)
    identity.save(finished=False)
    controller, facts = assembly.controller_for(
        cfg, device_setup, source, identity.run_id, command, started, out, hooks
    )
    if on_eval:
        controller.on_eval = lambda step, acc: on_eval(
            step, acc, rows.run_row(cfg, facts, controller, "stopped", "stopped by the sweep's scheduler")
        )
    return cfg, controller, device_setup, facts


def _ended_in_setup(cfg, identity, command, out, write_row, status, error, code):
    """The row of a run that ended before training: what the configuration says, and why."""
    row = {**rows.config_row(cfg, status, error), "run_id": identity.run_id, "command": command}
    where, code = _conclude(cfg, identity, row, write_row, code)
    print(
        f"status  {status} ({error}); row in {where}" if write_row else f"status  {status} ({error})",
        file=out,
        flush=True,
    )
    return Outcome(status, row, code)


def _conclude(cfg, identity, row, write_row, code):
    """(where the row is, exit code): the row appended, or kept beside a table that cannot take it (exit 1)."""
    where = table.save_row(cfg.results, row) if write_row else cfg.results
    if where != cfg.results:  # the error line says where it is
        code = EXIT_FAILED
    if (
        cfg.strategy != options.MULTI_WORKER and identity.saved
    ):  # a worker's attempt may be retried: its driver concludes
        identity.conclude(row["run_id"], row["status"], where if where != cfg.results else None)
    return where, code


def first_line(exc):
    """An exception as one line (a row's `error`): its type and the first non-empty line of its message."""
    line = next((ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()), "")
    return (f"{type(exc).__name__}: {line}" if line else type(exc).__name__)[:500]


def save_traceback(exc, results_path=None, name=None):
    """Write `exc`'s traceback to `<results folder>/tracebacks/<name>.txt` (else the temp folder); return the path.

    Failures are one line on stderr; the whole traceback is kept here for whoever debugs them.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = name or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folders = [os.path.join(os.path.dirname(os.path.abspath(results_path)), "tracebacks")] if results_path else []
    for folder in folders + [tempfile.gettempdir()]:
        path = os.path.join(folder, f"{name}.txt" if folder != tempfile.gettempdir() else f"bench-{name}.txt")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path, "w", encoding="utf-8", errors="replace") as fh:
                fh.write(text)
            return path
        except OSError:
            continue
    return "not saved (no writable folder)"


def _train(controller, cfg, run_id):
    """(status, error, exit code) of the controller's run; a crash mid-run still gives a row saying so."""
    try:
        status, error = controller.run()
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's error
        error = first_line(exc)
        log = save_traceback(exc, cfg.results, run_id)
        print(
            f"error: run {run_id} failed at step {controller.step}: {error} (traceback: {log})",
            file=sys.stderr,
            flush=True,
        )
        return "failed", error, EXIT_FAILED
    if status == "diverged":
        return status, error, EXIT_DIVERGED
    if status == "interrupted":
        return status, error, EXIT_SIGNAL.get(controller.stop_requested, EXIT_FAILED)
    return status, error, EXIT_OK


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM while a run was being set up (before the controller could stop it between windows)."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _request_stop(controller):
    """Ctrl-C or SIGTERM while training: finish the current window, then stop with a row; a second one exits
    at once, writing nothing."""

    def request_stop(signum, frame):
        name = signal.Signals(signum).name
        if controller.stop_requested:  # the second one: leave now, writing nothing
            os.write(2, f"\n{name} again: exiting now\n".encode())
            os._exit(EXIT_SIGNAL.get(name, EXIT_FAILED))
        controller.stop_requested = name
        print(f"\n{name}: stopping after the current window (again to exit at once)", file=sys.stderr, flush=True)

    return request_stop


class _Deferred:
    """A handler for Ctrl-C / SIGTERM that only notes the signal (the row is being written)."""

    def __init__(self):
        self.name = None

    def __call__(self, signum, frame):
        self.name = signal.Signals(signum).name
        os.write(2, f"\n{self.name}: writing the row first\n".encode())


@contextlib.contextmanager
def _on_signals(handler):
    """`handler` for Ctrl-C and SIGTERM inside the block, the previous handlers after it.

    Signal handlers can only be installed from the main thread (not inside a Ray
    worker's training thread, where Ray handles termination itself).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
