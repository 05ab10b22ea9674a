"""`python -m bench.run` as a child process, its rows read back from the results table.

Used where a setting must be measured in a fresh process (oneDNN and the thread pools are fixed
when TensorFlow is imported): the autotuner's probes and `sweeps.compare`'s arms. The child runs
this checkout's code (its folder first on PYTHONPATH), whatever the current directory.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from bench.results import table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Finished:
    command: list
    returncode: int
    rows: list  # the rows this process added to the table (normally one)
    stdout: str
    stderr: str

    def last_line(self):
        """The last non-empty line of stderr (the error), at most 300 characters."""
        lines = [x for x in (self.stderr or "").strip().splitlines() if x.strip()]
        return lines[-1][:300] if lines else "no output"


def child_env(extra=None):
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_bench(args, results_path, timeout=None, env=None):
    """Run `python -m bench.run ARGS`; its new rows in `results_path` are those with run ids not there before."""
    before = {r["run_id"] for r in table.read_rows(results_path)} if os.path.exists(results_path) else set()
    command = [sys.executable, "-m", "bench.run", *args]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(env))
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        stdout, stderr = (
            s.decode(errors="replace") if isinstance(s, bytes) else s or "" for s in (err.stdout, err.stderr)
        )
        code, stderr = -1, f"{stderr}\ntimed out after {timeout:.0f} s"
    rows = (
        [r for r in table.read_rows(results_path) if r["run_id"] not in before] if os.path.exists(results_path) else []
    )
    return Finished(command, code, rows, stdout, stderr)


def number(text):
    """A row's numeric cell as a float, None when empty or not a number."""
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
