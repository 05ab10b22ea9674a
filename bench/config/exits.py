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
import select
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


class announce_and_raise:  # noqa: N801 - used as a function that makes a handler
    """A signal handler that says on stderr what happens now (`announce`), then raises `Interrupted`; `.name`
    keeps the signal's name, for an `Interrupted` that some native code turned into another exception on its
    way out (an `ImportError` from inside TensorFlow's import)."""

    def __init__(self, announce):
        self.announce, self.name = announce, None

    def __call__(self, signum, frame):
        self.name = signal_name(signum)
        raw_stderr(f"\n{self.name}: {self.announce}\n")
        raise Interrupted(self.name)


@contextlib.contextmanager
def on_signals(handler):
    """`handler` for Ctrl-C and SIGTERM inside the block, the previous handlers after it.

    Signal handlers can only be installed from the main thread (not inside a Ray worker's training
    thread, where Ray handles termination itself): elsewhere the block runs unchanged. A `StopRequest`
    also gets a watcher thread (see there), so its lines and its second signal do not wait for the
    main thread to come back from a long TensorFlow call.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        with handler._watched() if isinstance(handler, StopRequest) else contextlib.nullcontext():
            yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def leave_on_signals(what):
    """Ctrl-C or SIGTERM inside the block (a slow import at start-up, before anything is written): one line
    and the signal's exit status at once, no traceback. Inside another such block (a command's module importing
    another command's) the outer one's words stand."""
    if _LEAVING:
        yield
        return

    def leave(signum, frame):
        name = signal_name(signum)
        raw_stderr(f"error: {what} was stopped by {name}; nothing done\n")
        os._exit(EXIT_SIGNAL.get(name, EXIT_FAILED))

    _LEAVING.append(what)
    try:
        with on_signals(leave):
            yield
    finally:
        _LEAVING.pop()


_LEAVING = []  # the leave_on_signals block in force (at most one)


class Deferred:
    """A handler that only notes the signal: the command is writing what must not be lost (a row)."""

    def __init__(self, what="writing the row first"):
        self.name, self.what = None, what

    def __call__(self, signum, frame):
        self.name = signal_name(signum)
        raw_stderr(f"\n{self.name}: {self.what}\n")


class StopRequest:
    """The first Ctrl-C or SIGTERM asks the work to stop at its next safe point (`.name` is set, `on_request(name)`
    is called and `announce` says what happens); a second one exits at once with the signal's code, writing
    nothing. `console`: where its lines go (a file descriptor or a stream; default: file descriptor 2).

    Python runs a signal's handler in the main thread only, between bytecodes: while TensorFlow runs one long
    C++ call (a window of many steps, an evaluation) it would wait, and two signals in that time would reach it
    as one. So, inside `on_signals`, the C-level handler also writes each signal's number to a pipe
    (`signal.set_wakeup_fd`; no signal mask, which child processes and Ray would inherit) and a daemon thread
    counts them as they arrive: the first line is printed and the request noted at once, a second signal
    exits at once. Each signal is counted once, by whichever of that thread and the main thread's handler
    sees it first (the count is the larger of the bytes read and the handler's calls); the previous wakeup
    file descriptor is restored when the block ends.
    """

    def __init__(self, announce="stopping after the current window", on_request=None, console=None, on_exit=None):
        self.name, self.announce, self.on_request, self.console = None, announce, on_request, console
        self.on_exit = on_exit  # called before the second signal's exit (stop what would outlive the process)
        self._lock = threading.RLock()
        self._bytes = self._calls = self._counted = 0  # signals read from the pipe, handler calls, signals acted on
        self._pipe = None  # (read end, write end) while watched

    def __call__(self, signum, frame):
        """The main thread's handler: what the watcher has not read yet is read and counted here."""
        with self._lock:
            self._read_pipe()
            self._calls += 1
            if self._calls > self._counted:  # a signal no byte told of (the pipe's byte may still be on its way)
                self._act(signum)

    def _act(self, signum):
        """One more signal: the first is a request, the second exits now."""
        self._counted += 1
        name = signal_name(signum)
        if self.name:  # the second one: leave now
            self._say(f"\n{name} again: exiting now\n")
            if self.on_exit:
                with contextlib.suppress(Exception):
                    self.on_exit()
            os._exit(EXIT_SIGNAL.get(name, EXIT_FAILED))
        self.name = name
        self._say(f"\n{name}: {self.announce} (again to exit at once)\n")
        if self.on_request:
            self.on_request(name)

    def _say(self, text):
        console = self.console
        if console is None:
            raw_stderr(text)
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(console if isinstance(console, int) else console.fileno(), text.encode())

    def _read_pipe(self):
        """Count the signals the pipe holds (never blocks). Call with the lock held."""
        if self._pipe is None:
            return
        while True:
            try:
                data = os.read(self._pipe[0], 512)
            except OSError:  # empty (BlockingIOError), or closed
                return
            for signum in data:
                if signum in STOP_SIGNALS:  # others (a 0 that ends the watcher, other handled signals) are not ours
                    self._bytes += 1
                    if self._bytes > self._counted:
                        self._act(signum)
            if not data:
                return

    def _watch(self, read_end, done):
        while not done.is_set():
            with contextlib.suppress(OSError, ValueError):
                select.select([read_end], [], [], 1.0)
            with self._lock:
                self._read_pipe()

    @contextlib.contextmanager
    def _watched(self):
        """The wakeup pipe and its watcher thread for the block (see the class docstring); without a pipe
        (no free file descriptor) the main thread's handler alone counts."""
        try:
            read_end, write_end = os.pipe()
        except OSError:
            yield
            return
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        done = threading.Event()
        self._pipe = (read_end, write_end)
        watcher = threading.Thread(target=self._watch, args=(read_end, done), name="stop-request-watcher", daemon=True)
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        watcher.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)  # no more bytes: what is in the pipe was sent while this block ran
            done.set()
            with contextlib.suppress(OSError):
                os.write(write_end, b"\0")  # wake the watcher: it reads what is left, then ends
            watcher.join()
            with self._lock:
                self._read_pipe()
                self._pipe = None
            os.close(read_end)
            os.close(write_end)


def stop_requested():
    """The signal the `StopRequest` handling Ctrl-C here has noted, or None (none, or no StopRequest installed).

    For code the handler cannot reach (a Ray Tune callback, which Ray pickles)."""
    handler = signal.getsignal(signal.SIGINT)
    return handler.name if isinstance(handler, StopRequest) else None


_STDERR_FD = [2]  # where raw_stderr writes: descriptor 2, or its copy while 2 captures a native library's output


@contextlib.contextmanager
def stderr_kept_at(fd):
    """Inside the block descriptor 2 is pointed elsewhere (a native library's chatter captured) and `fd` is
    the console's stderr: a signal handler's line goes there, not into the capture."""
    _STDERR_FD.append(fd)
    try:
        yield
    finally:
        _STDERR_FD.pop()


def raw_stderr(text):
    """Write from a signal handler: straight to the console's stderr descriptor, never raising (it may be closed)."""
    with contextlib.suppress(OSError):
        os.write(_STDERR_FD[-1], text.encode())


# -- closed output ------------------------------------------------------------------------------------------


class _Guarded(io.TextIOBase):
    """A console stream whose reader may go away (`| head`, a closed terminal): once a write fails with
    a broken pipe or a closed descriptor, it writes nothing more and never raises. A run's row is
    never lost to its console. `failed_write` keeps a failure that was not the reader leaving (a full disk
    behind `>/dev/full`): for a command whose output is its answer."""

    def __init__(self, stream):
        self._stream, self.closed_by_reader, self.failed_write = stream, False, None

    def write(self, text):
        if not self.closed_by_reader:
            try:
                self._stream.write(text)
            except (ValueError, OSError) as exc:
                self._lost(exc)
        return len(text)

    def flush(self):
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except (ValueError, OSError) as exc:
                self._lost(exc)

    def _lost(self, exc):
        self.closed_by_reader = True
        if not isinstance(exc, BrokenPipeError):
            self.failed_write = exc
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


_LEFT_RUNNING = []  # native work a stop left running on purpose: the process ends as soon as its status is known


def left_running(what):
    """Say that `what` (native work that cannot be cancelled, in a thread of its own: LoadGen's test) was left
    running after a stop request: `command` then ends the process with its exit status as soon as it has one,
    the streams flushed, without waiting for it or running the interpreter's shutdown beside it."""
    _LEFT_RUNNING.append(what)


def command(main, *args, what="the command", stopped=""):
    """Run a command's `main(*args)` and return its exit status (`_command`); if a stop left native work running
    (`left_running`), end the process with that status here instead."""
    code = _command(main, *args, what=what, stopped=stopped)
    if _LEFT_RUNNING:
        _flushed_exit(code)
    return code


def _flushed_exit(code):
    """End the process now with `code`, what the console streams hold written first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what it held is lost either way
            pass
    os._exit(code)


def program(main, *args, what="the command", stopped=""):
    """A command as the process's program (its `entry`): `command`, then exit with its status. Once the status
    is known a stop signal only ends the process at once with it: a second Ctrl-C arriving while Python shuts
    down would otherwise meet Python's own handler and kill the process by SIGINT, not exit 130."""
    code = command(main, *args, what=what, stopped=stopped)
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, lambda signum, frame: _flushed_exit(code))
    sys.exit(code)


def _command(main, *args, what="the command", stopped=""):
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
