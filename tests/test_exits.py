"""bench.config.exits: closed outputs never cost a row; Ctrl-C / SIGTERM are counted while the main thread is
inside a long native call (TensorFlow's windows), so the first is said at once and a second exits at once."""

import ast
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bench.config import exits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAMS = {"sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__"}


def test_no_function_binds_a_console_stream_when_its_module_is_imported():
    """`def f(out=sys.stdout)` keeps the stream of import time, before `exits.guard_streams` wraps it: a reader
    that went away (`| head -c1`) or a closed output would then fail the run. Streams are looked up when called."""
    found = []
    for package in ("bench", "sweeps", "resnet"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                        defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                        if any(ast.unparse(d) in STREAMS for d in defaults):
                            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not found


def test_an_output_closed_before_the_command_writes_nowhere(monkeypatch):
    """`>&-`: Python starts without sys.stdout; after the guard, writing to it is harmless."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # restored after the test (the guard replaces both)
    monkeypatch.setattr(sys, "stdout", None)
    exits.guard_streams()
    sys.stdout.write("step 1/100\n")
    sys.stdout.flush()
    print("summary", file=sys.stdout, flush=True)
    assert sys.stdout.isatty() is False


def _native_iterations(seconds):
    """pbkdf2 iterations that keep this thread in C (no Python signal handler can run) for about `seconds`."""
    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"k", b"s", 50_000)
    return max(50_000, int(50_000 * seconds / (time.perf_counter() - start)))


def test_a_stop_request_is_noted_while_the_main_thread_is_in_native_code():
    """The first signal is noted and said while the main thread is still inside a long native call (a window),
    counted once (no exit when the main thread's own handler runs after it), and the previous wakeup file
    descriptor is back after the block."""
    iterations = _native_iterations(6.0)
    noted = []
    stop = exits.StopRequest(on_request=lambda name: noted.append(time.monotonic()))
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    with exits.on_signals(stop):
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        began = time.monotonic()
        hashlib.pbkdf2_hmac("sha256", b"k", b"s", iterations)
        ended = time.monotonic()
    assert stop.name == "SIGINT" and len(noted) == 1
    assert noted[0] - began < 0.5 * (ended - began), "the request waited for the native call to end"
    assert signal.set_wakeup_fd(before) == before
    # a signal the main thread sends itself is handled before its next line, as with a plain handler; the
    # line goes to the console given (the multi-worker driver's, while Ray holds file descriptor 2)
    read_end, write_end = os.pipe()
    own = exits.StopRequest(announce="stopping the workers", console=write_end)
    with exits.on_signals(own):
        os.kill(os.getpid(), signal.SIGTERM)
        seen = own.name
    os.close(write_end)
    with os.fdopen(read_end) as console:
        assert seen == "SIGTERM" and console.read() == "\nSIGTERM: stopping the workers (again to exit at once)\n"


SECOND_SIGNAL = """
import hashlib, os, signal, threading
from bench.config import exits

with exits.on_signals(exits.StopRequest()):
    for delay in (0.3, 0.8):
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIG{name})).start()
    hashlib.pbkdf2_hmac("sha256", b"k", b"s", {iterations})  # a long TensorFlow call, as far as signals go
print("the native call ended", flush=True)
"""


@pytest.mark.parametrize("name,code", [("INT", 130), ("TERM", 143)])
def test_a_second_signal_exits_at_once_even_inside_a_long_native_call(name, code):
    iterations = _native_iterations(20.0)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL.format(name=name, iterations=iterations)],
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert f"SIG{name} again: exiting now" in proc.stderr and "the native call ended" not in proc.stdout
    assert took < 10.0, f"exited {took:.1f} s after start: it waited for the native call"


LATE_SIGNAL = """
import os, signal, time
from bench.config import exits
try:
    exits.program(lambda: 5)
finally:  # while the process exits with its status, a second Ctrl-C arrives
    os.kill(os.getpid(), signal.SIG{name})
    time.sleep(10)
"""


@pytest.mark.parametrize("name", ["INT", "TERM"])
def test_a_signal_after_a_commands_status_is_known_exits_with_that_status_at_once(name):
    """Not Python's own handler (SIGINT: KeyboardInterrupt, the process killed by SIGINT), not a hang."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", LATE_SIGNAL.format(name=name)],
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 5 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    assert time.monotonic() - started < 8


def test_a_signal_handlers_line_reaches_the_console_while_native_output_is_captured(capfd):
    # bench.check's SIGTERM during TensorFlow's import exited 143 with nothing said: its line went into the
    # capture of TensorFlow's own start-up chatter (the hostile review)
    from bench.hardware import devices

    with devices.native_stderr_captured():
        os.write(2, b"native chatter\n")
        exits.raw_stderr("error: stopped by SIGTERM\n")
    err = capfd.readouterr().err
    assert "error: stopped by SIGTERM" in err and "native chatter" not in err


LEFT_BEHIND = """
import os, signal, subprocess, sys, threading, time
from bench.config import exits
from bench.distributed import ray_connection

child = subprocess.Popen(["sleep", "300"], start_new_session=True)  # as Ray's head: a session of its own
print(child.pid, flush=True)
with exits.on_signals(exits.StopRequest(on_exit=ray_connection.kill_started_processes)):
    for delay in (0.3, 0.8):
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
    time.sleep(30)
"""


def test_a_second_signal_to_a_ray_driver_takes_the_processes_it_started_with_it():
    # sweeps.tune's second SIGTERM left Ray's dashboard and runtime-env agents running (the hostile review)
    proc = subprocess.run(
        [sys.executable, "-c", LEFT_BEHIND],
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=60,
    )
    child = int(proc.stdout.split()[0])
    assert proc.returncode == 143 and "again: exiting now" in proc.stderr, proc.stderr
    time.sleep(0.5)
    stat = f"/proc/{child}/stat"
    state = open(stat).read().split()[2] if os.path.exists(stat) else "gone"
    assert state in ("gone", "Z"), f"the child {child} still runs (state {state})"


class _RayThatTakesSigterm:
    """What `ray.init` does to a process's SIGTERM: installs its own handler (`sys.exit(15)`). `signal`: one
    that arrives while it starts (SIGTERM meets Ray's handler; SIGINT the command's)."""

    def __init__(self, signal_to_send):
        self.signal_to_send, self.shut_down = signal_to_send, False

    def init(self, **kwargs):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        if self.signal_to_send:
            os.kill(os.getpid(), self.signal_to_send)
            time.sleep(1)  # the handler runs between bytecodes

    def shutdown(self):
        self.shut_down = True


@pytest.mark.parametrize(
    "signal_to_send,commands_handler",
    [(None, exits.Deferred()), (signal.SIGTERM, exits.Deferred()), (signal.SIGINT, exits.raise_interrupted)],
    ids=["started", "SIGTERM to Ray's handler", "SIGINT to the command's raising handler"],
)
def test_starting_ray_keeps_the_commands_signal_handlers(signal_to_send, commands_handler, monkeypatch):
    """A sweep's SIGTERM while Ray started met Ray's handler and the sweep exited 15 with nothing said: the
    command's handlers are in force again after `ray.init`, and a signal that stopped it half-way is
    `Interrupted`, what Ray started stopped and the process left to end without the interpreter's shutdown."""
    from bench.distributed import ray_connection

    killed, left = [], []
    monkeypatch.setattr(ray_connection, "kill_started_processes", lambda: killed.append(True))
    monkeypatch.setattr(exits, "_LEFT_RUNNING", left)
    ray = _RayThatTakesSigterm(signal_to_send)
    before = {s: signal.signal(s, commands_handler) for s in exits.STOP_SIGNALS}
    try:
        if signal_to_send:
            with pytest.raises(exits.Interrupted) as stopped:
                ray_connection._init_keeping_handlers(ray, {})
            assert stopped.value.name == exits.signal_name(signal_to_send)
            assert ray.shut_down and killed and left
        else:
            ray_connection._init_keeping_handlers(ray, {})
            assert not ray.shut_down and not killed and not left
        assert all(signal.getsignal(s) is commands_handler for s in exits.STOP_SIGNALS)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
