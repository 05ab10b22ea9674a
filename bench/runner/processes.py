"""`python -m bench.run` as a child process: the one way a command runs one (`run_bench`), its row read back.

Used where a setting must be measured in a fresh process (oneDNN and the thread pools are fixed
when TensorFlow is imported): the autotuner's probes and `sweeps.compare`'s arms. The child runs
this checkout's code (its folder first on PYTHONPATH), whatever the current directory.

What the parent owes its child, so that no row is lost and no process outlives its command:

- Ctrl-C and SIGTERM are relayed: the child, a run like any other, finishes its current window and
  writes its `interrupted` row (exit 130 / 143); the parent waits for it (at most `stop_grace`
  seconds, then it is killed) and raises `Stopped`, which carries the finished child. A second signal
  is relayed too (the child then exits at once, as a run does) and the parent stops waiting.
- The child runs in a session of its own, so a Ctrl-C typed on the terminal reaches the parent alone
  and the child is told once, by the parent (a second, direct delivery would make it exit at once,
  without its row).
- It never outlives the parent: if the parent leaves the wait for any reason (an exception, a
  timeout) the child is sent SIGTERM, then SIGKILL after `KILL_GRACE_S`; if the parent dies without a
  word (SIGKILL), the child's parent-death signal is SIGTERM (`follow_parent`, which `bench.run` calls).
- Its output goes to temporary files, not pipes: a parent that stops reading can never break the child.
- `Finished.where` says where its row went: the table, the file kept beside it when the table could
  not take it, stderr, or "" (no row: it was stopped or failed before it started).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench.config import exits
from bench.results import table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARENT_ENV = "BENCH_PARENT_PID"  # set for the child: the process that waits for it (`follow_parent`)
STOP_GRACE_S = 300.0  # after a relayed Ctrl-C / SIGTERM (or a timeout): time to finish the window and write the row
KILL_GRACE_S = 10.0  # after SIGTERM that asks a child to end at once: then SIGKILL
POLL_S = 0.2


@dataclasses.dataclass(frozen=True)
class Finished:
    command: list
    returncode: int
    rows: list  # the rows this process added to the table (normally one)
    stdout: str
    stderr: str
    where: str = ""  # where its row went: the table, a file beside it, "stderr", or "" (no row)
    stopped: str | None = None  # SIGINT / SIGTERM relayed to it, or "timeout"

    def last_line(self):
        """The last non-empty line of stderr, at most 300 characters."""
        lines = [x for x in (self.stderr or "").strip().splitlines() if x.strip()]
        return lines[-1][:300] if lines else "no output"

    def error_line(self):
        """The child's own error line, whole and without its `error: ` (a refusal's hint is never cut);
        else `last_line()`."""
        errors = [x.strip() for x in (self.stderr or "").splitlines() if x.startswith("error: ")]
        return errors[-1][len("error: ") :] if errors else self.last_line()


class Stopped(exits.Interrupted):
    """Ctrl-C or SIGTERM came while a child ran: it was relayed, the child has ended (`finished`: its
    rows and where they went; None if it had not started)."""

    def __init__(self, name, finished=None):
        super().__init__(name)
        self.finished = finished


def child_env(extra=None):
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env[PARENT_ENV] = str(os.getpid())
    return env


def run_bench(args, results_path, timeout=None, env=None, stop_grace=STOP_GRACE_S, out=None, what="the run"):
    """Run `python -m bench.run ARGS`; its new rows in `results_path` are those with run ids not there before.

    Returns `Finished`. `timeout`: seconds, then the child is asked to stop (SIGTERM: its window, its
    row), killed `stop_grace` later. Raises `Stopped` if Ctrl-C or SIGTERM came meanwhile (relayed; see
    the module docstring). `what` names the child in the lines a signal prints ("the probe").
    """
    return run_child([sys.executable, "-m", "bench.run", *args], results_path, timeout, env, stop_grace, out, what)


def run_child(command, results_path, timeout=None, env=None, stop_grace=STOP_GRACE_S, out=None, what="the run"):
    """`run_bench` for any command that writes rows to `results_path` (tests use small scripts)."""
    out = out or sys.stderr
    before = _run_ids(results_path)
    kept_before = set(_kept_beside(results_path))
    relay = _Relay(stop_grace, what)
    with contextlib.ExitStack() as stack:
        stdout = stack.enter_context(tempfile.TemporaryFile())
        stderr = stack.enter_context(tempfile.TemporaryFile())
        stack.enter_context(exits.on_signals(relay))
        if relay.name:  # pragma: no cover - a signal between the handler's install and here: do not start it
            raise Stopped(relay.name)
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=child_env(env),
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent only; the parent relays it
        )
        try:
            relay.attach(proc)
            stopped = _wait(proc, relay, timeout, stop_grace, out)
        finally:
            _end(proc)  # whatever happened, the child does not outlive this call
        texts = []
        for fh in (stdout, stderr):
            fh.seek(0)
            texts.append(fh.read().decode("utf-8", errors="replace"))
    rows, where = _new_rows(results_path, before, kept_before, texts[1])
    finished = Finished(list(command), proc.returncode, rows, texts[0], texts[1], where, relay.name or stopped)
    if relay.name:
        raise Stopped(relay.name, finished)
    return finished


class _Relay:
    """The parent's handler while a child runs: pass each Ctrl-C / SIGTERM on to the child."""

    def __init__(self, stop_grace, what="the run"):
        self.stop_grace, self.proc, self.what = stop_grace, None, what
        self.name, self.count, self.last_at = None, 0, None

    def __call__(self, signum, frame):
        self.count += 1
        self.last_at = time.monotonic()
        name = exits.signal_name(signum)
        self.name = self.name or name
        if self.proc is not None:
            if self.count == 1:
                exits.raw_stderr(
                    f"\n{name}: passed to {self.what} (pid {self.proc.pid}); waiting up to {self.stop_grace:.0f} s for "
                    f"it to finish its window and write its row (again to stop it at once)\n"
                )
            else:
                exits.raw_stderr(f"\n{name} again: passed on; {self.what} stops at once\n")
            _signal(self.proc, signum)

    def attach(self, proc):
        self.proc = proc
        if self.name:  # came while it was being started: it is told now
            _signal(proc, signal.Signals[self.name])


def _wait(proc, relay, timeout, stop_grace, out):
    """Wait for the child; returns "timeout" if it had to be stopped for overrunning `timeout`, else None."""
    started, asked_at, why = time.monotonic(), None, None
    while proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=POLL_S)
            break
        now = time.monotonic()
        if relay.count >= 2 and now - relay.last_at > KILL_GRACE_S:
            _kill(proc)
        elif relay.name and now - relay.last_at > stop_grace:
            print(f"the run (pid {proc.pid}) did not end {stop_grace:.0f} s after {relay.name}: killed", file=out)
            _kill(proc)
        elif timeout is not None and asked_at is None and now - started > timeout:
            why, asked_at = "timeout", now
            print(f"the run (pid {proc.pid}) overran {timeout:.0f} s: asked to stop (SIGTERM)", file=out, flush=True)
            _signal(proc, signal.SIGTERM)
        elif asked_at is not None and not relay.name and now - asked_at > stop_grace:
            print(f"the run (pid {proc.pid}) did not stop {stop_grace:.0f} s after SIGTERM: killed", file=out)
            _kill(proc)
    return why


def _signal(proc, signum):
    with contextlib.suppress(ProcessLookupError, OSError):
        if proc.poll() is None:
            proc.send_signal(signum)


def _kill(proc):
    """SIGKILL the child and whatever it started in its session (not its own sessions: those follow it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, OSError):
        proc.kill()
    proc.wait()


def _end(proc):
    """A child still running when the parent leaves: SIGTERM (its row), SIGKILL `KILL_GRACE_S` later."""
    if proc.poll() is not None:
        return
    _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
    except BaseException:  # a signal's exception meanwhile: still no orphan
        _kill(proc)
        raise


def follow_parent():
    """In a child of `run_bench`: end with SIGTERM (the window, the row) when the parent dies, even by SIGKILL.

    Linux's parent-death signal; a parent already gone (it died while this process started) is
    followed at once. Elsewhere, or outside `run_bench`, nothing happens.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if str(os.getppid()) != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _run_ids(path):
    return {r.get("run_id") for r in _rows(path)}


def _rows(path):
    try:
        return table.read_rows(path) if os.path.isfile(path) else []
    except (OSError, ValueError, csv.Error):  # not a table (the child refused it): no rows of its
        return []


def _kept_beside(results_path):
    """The one-row tables `table.save_row` keeps beside a table that could not take a row."""
    return glob.glob(glob.escape(os.path.abspath(results_path)) + ".unsaved-*.csv")


def _new_rows(results_path, before, kept_before, stderr):
    """(the child's rows, where they are)."""
    rows = [r for r in _rows(results_path) if r.get("run_id") not in before]
    if rows:
        return rows, results_path
    for path in sorted(set(_kept_beside(results_path)) - kept_before):
        kept = _rows(path)
        if kept:
            return kept, path
    if "here it is, with the header" in stderr:
        return [], "stderr"
    return [], ""


def number(text):
    """A row's numeric cell as a float, None when empty or not a number."""
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
