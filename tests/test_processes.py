"""bench.runner.processes: the one way a command runs a child run (signals relayed, the row awaited, no orphan).

The child here is a small script that behaves as a run does to the parent (it finishes a "window" on
Ctrl-C / SIGTERM and appends its row), so these tests take seconds; `tests/test_compare.py` runs the
real `sweeps.compare` and `bench.run` processes.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from bench.results import table
from bench.runner import processes

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from bench.results import table
    from bench.runner import processes

    processes.follow_parent()
    results, mode, seconds, pidfile = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    stop = []
    if mode == "deaf":  # a child that ignores being asked
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    else:  # a run: the first signal finishes the window, the second exits at once
        def handler(signum, frame):
            if stop:
                os._exit(128 + signum)
            stop.append(signal.Signals(signum).name)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, handler)
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {os.getsid(0)}")
    os.replace(pidfile + ".tmp", pidfile)
    deadline = time.time() + seconds
    while time.time() < deadline and not stop:
        time.sleep(0.02)
    if stop:
        time.sleep(1.0)  # the rest of its window
    row = {"run_id": f"child{os.getpid()}", "status": "interrupted" if stop else "ok",
           "error": f"stopped by {stop[0]}" if stop else ""}
    if mode == "foreign":
        table.save_row(results, row)
    else:
        table.append_row(results, row)
    print("error: " + "a long refusal, " * 30 + "and its hint: python -m bench.results upgrade FILE", file=sys.stderr)
    sys.exit({"SIGINT": 130, "SIGTERM": 143}.get(stop[0]) if stop else 0)
    """
)


@pytest.fixture
def child(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    results, pidfile = str(tmp_path / "summary.csv"), str(tmp_path / "child.pid")

    def command(mode="run", seconds=60):
        return [sys.executable, str(script), results, mode, str(seconds), pidfile]

    return command, results, pidfile


def wait_for(pidfile, timeout=30):
    deadline = time.time() + timeout
    while not os.path.exists(pidfile):
        assert time.time() < deadline, "the child did not start"
        time.sleep(0.02)
    pid, sid = (int(x) for x in open(pidfile).read().split())
    return pid, sid


def gone(pid):
    """The process has ended (it may linger as a zombie of a parent that has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def signal_self_when_started(pidfile, *signums, gap=0.3):
    """Send this process the signals (as a terminal or a scheduler would) once the child has started."""

    def send():
        wait_for(pidfile)
        for s in signums:
            time.sleep(gap)
            os.kill(os.getpid(), s)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_is_relayed_and_the_childs_row_awaited(child, signum):
    command, results, pidfile = child
    before = signal.getsignal(signum)
    signal_self_when_started(pidfile, signum)
    with pytest.raises(processes.Stopped) as stopped:
        processes.run_child(command(), results)
    name = signal.Signals(signum).name
    done = stopped.value.finished
    assert stopped.value.name == name and done.stopped == name
    assert done.returncode == {"SIGINT": 130, "SIGTERM": 143}[name]
    assert [(r["status"], r["error"]) for r in done.rows] == [("interrupted", f"stopped by {name}")]
    assert done.where == results
    assert gone(wait_for(pidfile)[0])
    assert signal.getsignal(signum) is before  # the parent's own handler is back


def test_a_second_signal_stops_the_child_at_once_without_its_row(child):
    command, results, pidfile = child
    signal_self_when_started(pidfile, signal.SIGINT, signal.SIGINT, gap=0.2)
    with pytest.raises(processes.Stopped) as stopped:
        processes.run_child(command(), results)
    assert stopped.value.finished.returncode == 128 + signal.SIGINT and stopped.value.finished.rows == []
    assert stopped.value.finished.where == ""


def test_the_child_runs_in_a_session_of_its_own(child):
    """A terminal's Ctrl-C goes to its foreground process group: the child must not get it too."""
    command, results, pidfile = child
    done = processes.run_child(command(seconds=0.1), results)
    _, sid = wait_for(pidfile)
    assert sid != os.getsid(0) and done.returncode == 0 and done.where == results and len(done.rows) == 1


def test_a_child_that_overruns_is_asked_to_stop_then_killed(child):
    command, results, pidfile = child
    done = processes.run_child(command(), results, timeout=0.5)  # a run: it stops after its window
    assert done.stopped == "timeout" and done.returncode == 143 and done.rows[0]["status"] == "interrupted"
    os.remove(pidfile)
    started = time.monotonic()
    deaf = processes.run_child(command("deaf"), results, timeout=0.5, stop_grace=0.5)
    assert deaf.stopped == "timeout" and deaf.returncode == -signal.SIGKILL and deaf.rows == []
    assert time.monotonic() - started < 10 and gone(wait_for(pidfile)[0])


def test_a_child_whose_parent_is_killed_ends_too_and_writes_its_row(child, tmp_path):
    command, results, pidfile = child
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from bench.runner import processes; processes.run_child({command()!r}, {results!r})",
        ],
        env=processes.child_env(),
    )
    pid, _ = wait_for(pidfile)
    parent.kill()  # SIGKILL: the parent can relay nothing
    parent.wait()
    deadline = time.time() + 30
    while not gone(pid):
        assert time.time() < deadline, "the child outlived its parent"
        time.sleep(0.1)
    assert [r["status"] for r in table.read_rows(results)] == ["interrupted"]


def test_where_the_row_went_when_the_table_could_not_take_it(child):
    command, results, pidfile = child
    with open(results, "w") as fh:
        fh.write("a,b\n1,2\n")  # someone else's CSV
    done = processes.run_child(command("foreign", 0.1), results)
    assert done.where.startswith(results + ".unsaved-child") and done.where.endswith(".csv")
    assert [r["status"] for r in done.rows] == ["ok"]


def test_the_error_line_is_whole_and_without_its_prefix(child):
    command, results, _ = child
    done = processes.run_child(command(seconds=0.1), results)
    assert done.error_line().startswith("a long refusal, ")
    assert done.error_line().endswith("and its hint: python -m bench.results upgrade FILE")
