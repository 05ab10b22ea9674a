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
import threading
import time
import traceback

from bench.config import defaults, options, setup_checks, validation
from bench.config.identity import RunIdentity
from bench.config.options import RunConfig
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
        print(f"run {identity.run_id} in {cfg.checkpoint_dir} already finished; its row is in the results",
              file=out)
        return Outcome("skipped", {}, EXIT_OK)
    cfg = autotune.settle(cfg, out)  # before TensorFlow's import (its probes may choose oneDNN); same computation
    # TensorFlow is imported here, by the device setup, which makes the oneDNN choice first (it is fixed at
    # TensorFlow's import); the modules that use TensorFlow are imported only after it.
    from bench.hardware import devices

    device_setup = devices.setup(cfg)
    from bench.runner import assembly
    from bench.training import data

    source = data.resolve(cfg)
    setup_checks.check_setup(cfg, setup_checks.SetupFacts(
        **device_setup.facts, data_kind=source.kind, data_problem=source.problem, train_images=source.train_images))
    devices.warn_if_emulated(cfg, device_setup.device_kind)
    if source.warning:
        print(source.warning, file=sys.stderr, flush=True)
    cfg = defaults.resolve(cfg, device_setup.device_kind, device_setup.num_replicas)
    identity.save(finished=False)
    controller, facts = assembly.controller_for(cfg, device_setup, source, identity.run_id, command, started, out,
                                                hooks)
    if on_eval:
        controller.on_eval = lambda step, acc: on_eval(step, acc, rows.run_row(
            cfg, facts, controller, "stopped", "stopped by the sweep's scheduler"))
    with _stop_on_signals(controller):
        status, error, code = _train(controller)
    facts = assembly.checked_peak(cfg, device_setup, facts, controller)
    row = rows.run_row(cfg, facts, controller, status, error)
    where = table.save_row(cfg.results, row) if write_row else cfg.results
    if where != cfg.results:  # the table could not take the row: it is kept where the error line says
        code = EXIT_FAILED
    if cfg.strategy != options.MULTI_WORKER:  # a worker's attempt may be retried by Ray: its driver concludes
        identity.conclude(row["run_id"], status)
    print(rows.summary_text(row, where), file=out, flush=True)
    return Outcome(status, row, code, controller.chrono)


def _train(controller):
    """(status, error, exit code) of the controller's run; a crash mid-run still gives a row saying so."""
    try:
        status, error = controller.run()
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's error
        traceback.print_exc(file=sys.stderr)
        return "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:500], EXIT_FAILED
    if status == "diverged":
        return status, error, EXIT_DIVERGED
    if status == "interrupted":
        return status, error, EXIT_SIGNAL.get(controller.stop_requested, EXIT_FAILED)
    return status, error, EXIT_OK


@contextlib.contextmanager
def _stop_on_signals(controller):
    """Ctrl-C or SIGTERM: finish the current window, then stop with a row; a second Ctrl-C exits at once.

    Signal handlers can only be installed from the main thread (not inside a Ray
    worker's training thread, where Ray handles termination itself).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        name = signal.Signals(signum).name
        if controller.stop_requested:  # the second one: leave now, writing nothing
            os.write(2, f"\n{name} again: exiting now\n".encode())
            os._exit(EXIT_SIGNAL.get(name, EXIT_FAILED))
        controller.stop_requested = name
        print(f"\n{name}: stopping after the current window (again to exit at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
