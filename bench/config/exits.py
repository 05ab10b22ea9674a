"""How every command enters and leaves: exit codes, the one error line, tracebacks kept in a file, Ctrl-C and
SIGTERM, and closed output streams. No TensorFlow: every command (`bench.run`, `bench.check`, `sweeps.tune`,
`sweeps.compare`, `sweeps.report`, `bench.results`, the local cluster) enters through `command`.

Exit status, the same for every command:
    0 ok; 1 failed (for a run: its row says why) or a bug (one line, the traceback in a file);
    2 bad input (one line, nothing written); 3 a run diverged; 130 / 143 stopped by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import tempfile
import threading
import time
import traceback

from bench.config.options import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


def error(message):
    """The one line a command prints when it refuses or fails."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def signal_name(signum):
    return signal.Signals(signum).name


# -- signals ------------------------------------------------------------------------------------------------


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM where the command cannot stop between windows (setting up, waiting on a child)."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def raise_interrupted(signum, frame):
    """A signal handler: raise `Interrupted` where the main thread is."""
    raise Interrupted(signal_name(signum))


@contextlib.contextmanager
def on_signals(handler):
    """`handler` for Ctrl-C and SIGTERM inside the block, the previous handlers after it.

    Signal handlers can only be installed from the main thread (not inside a Ray worker's training
    thread, where Ray handles termination itself): elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class Deferred:
    """A handler that only notes the signal: the command is writing what must not be lost (a row)."""

    def __init__(self, what="writing the row first"):
        self.name, self.what = None, what

    def __call__(self, signum, frame):
        self.name = signal_name(signum)
        _raw_stderr(f"\n{self.name}: {self.what}\n")


class StopRequest:
    """The first Ctrl-C or SIGTERM asks the work to stop at its next safe point (`.name` is set and
    `announce` says what happens); a second one exits at once with the signal's code, writing nothing."""

    def __init__(self, announce="stopping after the current window", on_request=None):
        self.name, self.announce, self.on_request = None, announce, on_request

    def __call__(self, signum, frame):
        name = signal_name(signum)
        if self.name:  # the second one: leave now
            _raw_stderr(f"\n{name} again: exiting now\n")
            os._exit(EXIT_SIGNAL.get(name, EXIT_FAILED))
        self.name = name
        _raw_stderr(f"\n{name}: {self.announce} (again to exit at once)\n")
        if self.on_request:
            self.on_request(name)


def _raw_stderr(text):
    """Write from a signal handler: straight to the file descriptor, never raising (it may be closed)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


# -- closed output ------------------------------------------------------------------------------------------


class _Guarded(io.TextIOBase):
    """A console stream whose reader may go away (`| head`, a closed terminal): once a write fails with
    a broken pipe or a closed descriptor, it writes nothing more and never raises. A run's row is
    never lost to its console."""

    def __init__(self, stream):
        self._stream, self.closed_by_reader = stream, False

    def write(self, text):
        if not self.closed_by_reader:
            try:
                self._stream.write(text)
            except (BrokenPipeError, ValueError, OSError):
                self._lost()
        return len(text)

    def flush(self):
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._lost()

    def _lost(self):
        self.closed_by_reader = True
        with contextlib.suppress(OSError, ValueError):  # the interpreter's own flush at exit must not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def isatty(self):
        try:
            return self._stream.isatty()
        except (ValueError, OSError):
            return False

    def fileno(self):
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    def writable(self):
        return True


def guard_streams():
    """Make sys.stdout and sys.stderr survive a reader that goes away (idempotent).

    An output closed before the command started (`>&-`, `2>&-`: Python then has no sys.stdout or
    sys.stderr) writes nowhere, and its file descriptor is pointed at /dev/null: otherwise the next file
    opened would take that number, and whatever a native library prints would land in it (a results table).
    """
    for fd in (1, 2):
        _keep_open(fd)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, _Guarded(open(os.devnull, "w", encoding="utf-8")))
        elif not isinstance(stream, _Guarded):
            setattr(sys, name, _Guarded(stream))


def _keep_open(fd):
    """Point a closed file descriptor (1 or 2) at /dev/null."""
    try:
        os.fstat(fd)
        return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull == fd:
            os.set_inheritable(fd, True)  # what the process starts sees it as its own output
        else:
            os.dup2(devnull, fd)
            os.close(devnull)


# -- the entry ------------------------------------------------------------------------------------------------


def command(main, *args, what="the command", stopped=""):
    """Run a command's `main(*args)` and return its exit status; the one place exceptions become exit codes.

    Bad input (`ConfigError`, including an unusable results table) is one line and 2; Ctrl-C or SIGTERM
    that reached here (before the command installed a handler of its own) is one line and 130 / 143
    (`stopped` adds what that means, e.g. "nothing written"); any other exception is a bug: one line
    naming the file that keeps its traceback, and 1.
    """
    guard_streams()
    try:
        with on_signals(raise_interrupted):
            return main(*args)
    except ConfigError as err:
        error(err)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted) as stop:
        name = stop.name if isinstance(stop, Interrupted) else "SIGINT"
        error(f"{what} was stopped by {name}" + (f"; {stopped}" if stopped else ""))
        return EXIT_SIGNAL[name]
    except Exception as exc:  # noqa: BLE001 - a bug included: one line, the traceback kept in a file
        error(f"{first_line(exc)} (unexpected; traceback: {save_traceback(exc)})")
        return EXIT_FAILED
