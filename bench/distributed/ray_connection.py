"""The connection to a Ray cluster, shared by multi-worker runs (`bench.distributed.driver`) and sweeps.

`connect(address)` attaches this process to `--address` (or starts a local Ray) within a
bounded time: an address that does not answer is bad input, never a hang. Ray is imported
inside the functions: importing this module costs nothing (a sweep's `--help`, bad input).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time

from bench.config import exits
from bench.config.exits import first_line
from bench.config.options import ConfigError
from bench.hardware.devices import native_stderr_captured

CONNECT_TIMEOUT_S = 30  # an --address that does not answer fails within this
_TCP_PROBE_S = 5


def _probe(address):
    """Why an explicit host:port does not answer a TCP connection within seconds, or None."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=_TCP_PROBE_S).close()
    except OSError as err:
        return f"no Ray cluster answers there ({err.strerror or err})"
    return None


def connect(address):
    """Connect this process to Ray; True if it started a local Ray, to stop after the run (`ray.shutdown()`).

    Already connected (a sweep's trial, tests): uses that connection. An address that
    does not answer is bad input (ConfigError) within CONNECT_TIMEOUT_S.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray = _import_ray_for_a_driver()

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if not address:
        _init_keeping_handlers(ray, kwargs)
        _quiet_ray_driver_logs()
        return True
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    problem = _probe(address) if address != "auto" else None
    if problem:
        raise ConfigError(f"--address={address}: {problem}")
    outcome = {}

    def attempt():
        try:
            ray.init(address=address, **kwargs)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported as one line
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, daemon=True)
    with native_stderr_captured():  # Ray's C++ client logs each failed GCS attempt straight to fd 2
        thread.start()
        thread.join(max(1.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise ConfigError(f"--address={address}: no Ray cluster answered within {CONNECT_TIMEOUT_S} s")
    if "error" in outcome:
        raise ConfigError(f"--address={address}: cannot connect to Ray ({first_line(outcome['error'])})")
    _quiet_ray_driver_logs()
    return False


def _import_ray_for_a_driver():
    """Ray, imported with its C++ failure-signal handler off in this process (Ray's documented
    RAY_DISABLE_FAILURE_SIGNAL_HANDLER, read when Ray is imported): in a command's process it takes a SIGTERM
    that arrives while `ray.init` runs (a stack dump, the command's own handler, then death by SIGABRT). The
    variable is set for the import only: the processes Ray starts (trials, workers) keep Ray's handler. A
    value the user set stands."""
    if "ray" in sys.modules:
        import ray

        return ray
    mine = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER" not in os.environ
    if mine:
        os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    try:
        import ray
    finally:
        if mine:
            os.environ.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    return ray


def _init_keeping_handlers(ray, kwargs):
    """`ray.init` in the main thread, the command's Ctrl-C and SIGTERM handlers in force again after it: Ray
    installs its own SIGTERM handler there (`sys.exit(15)`). A signal that stopped `ray.init` half-way (through
    Ray's handler or one of the command's that raises) is `exits.Interrupted`: what Ray had started is
    stopped, and the command's process ends with its status without the interpreter's shutdown
    (`exits.left_running`), which a Ray stopped half-way makes crash."""
    kept = {s: signal.getsignal(s) for s in exits.STOP_SIGNALS}
    try:
        ray.init(**kwargs)
    except (SystemExit, KeyboardInterrupt, exits.Interrupted) as exc:  # Ray's handler, Python's, or the command's
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        name = "SIGTERM" if isinstance(exc, SystemExit) else getattr(exc, "name", "SIGINT")
        with contextlib.suppress(Exception):
            ray.shutdown()
        kill_started_processes()  # what the half-started Ray had started
        exits.left_running("Ray, stopped while it started")  # its half-made core crashes the interpreter's exit
        raise exits.Interrupted(name) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for s, handler in kept.items():
                if handler is not None:
                    signal.signal(s, handler)


def _quiet_ray_driver_logs():
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def kill_started_processes():
    """SIGKILL every process this one started, and theirs: on a second Ctrl-C the driver exits at once, and Ray's
    local head (GCS, raylet, the dashboard and its agents, Tune's and Train's workers) must not outlive it (the
    hostile review found a dashboard agent and a runtime-env agent orphaned). A cluster reached through
    `--address` runs on processes this one did not start: untouched."""
    import psutil

    try:
        started = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.kill()
