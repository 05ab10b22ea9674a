"""Ray Tune sweeps: rows from the driver, failures recorded, SIGKILL + --resume, bad flags, the report."""

import csv
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import python

from bench.config import options
from bench.config.options import ConfigError
from bench.results import table
from sweeps import report, space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = [
    "--data=synthetic",
    "--steps=6",
    "--warmup_steps=2",
    "--steps_per_loop=2",
    "--batch_size=16",
    "--block=preact",
    "--noreport",
]


sweep_cli = functools.partial(python, "-m", "sweeps.tune")


FIELDS = {f.name: f for f in options.flag_fields()}


def test_space_is_the_product_with_stable_keys():
    axes = {
        "n": options.axis_values(FIELDS["n"], "3,5"),
        "shortcut": options.axis_values(FIELDS["shortcut"], "A,B"),
        "steps": [20],
    }
    trials = space.build_trials(axes, repeats=2, sweep_name="s")
    assert len(trials) == 8 and len({t.key for t in trials}) == 8
    assert (
        trials[0].key == "n=3,block=preact,shortcut=A,precision=float32,xla=auto,batch_size=128,strategy=default,seed=0"
    )
    assert {t.config.seed for t in trials} == {0, 1} and all(t.config.sweep == "s" for t in trials)
    with pytest.raises(ConfigError, match="shortcut"):
        space.build_trials({"shortcut": ["D"]}, 1, "s")
    with pytest.raises(ConfigError, match="repeats"):
        space.build_trials(axes, 0, "s")
    with pytest.raises(ConfigError, match="--n"):
        options.axis_values(FIELDS["n"], "3,x")
    # output folders: one per trial, never shared
    folders = space.build_trials({**axes, "tensorboard_dir": ["/tmp/tb"]}, 1, "s")
    assert len({t.config.tensorboard_dir for t in folders}) == 4


@pytest.mark.e2e
def test_a_diverging_trial_gets_its_row_and_the_others_finish(tmp_path):
    from sweeps import tune as sweep

    axes = {
        "n": [1],
        "shortcut": ["A", "B", "C"],
        "data": ["synthetic"],
        "steps": [6],
        "warmup_steps": [2],
        "steps_per_loop": [2],
        "batch_size": [16],
    }
    trials = space.build_trials(axes, 1, "faulty")
    bad = trials[1]
    trials[1] = space.Trial(bad.key, bad.config.replace(inject_nan_at_step=4))
    opts = sweep.SweepOptions(name="faulty", storage=str(tmp_path / "ray"), results=str(tmp_path / "s.csv"))
    rows = sweep.run_sweep(trials, opts)
    by_key = {r["trial_key"]: r for r in rows}
    assert len(rows) == 3
    assert by_key[bad.key]["status"] == "diverged" and "non-finite" in by_key[bad.key]["error"]
    assert [by_key[t.key]["status"] for t in (trials[0], trials[2])] == ["ok", "ok"]


def _rows_in(path):
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


@pytest.mark.e2e
def test_a_killed_two_by_two_sweep_resumes_to_four_ok_rows(tmp_path):
    """SIGKILL to the driver after its first row (no handler runs), then --resume: one row per trial. Any
    RunConfig field is an axis: steps_per_loop reaches the rows as the architecture does."""
    path = str(tmp_path / "summary.csv")
    fast = [a for a in FAST if not a.startswith("--steps_per_loop")]
    grid = ["--n=1,2", "--steps_per_loop=2,3", "--shortcut=A", *fast]
    args = [*grid, "--name=killme", f"--storage={tmp_path}/ray", f"--results={path}"]
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.tune", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and _rows_in(path) < 1 and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done_before = _rows_in(path)
    assert 1 <= done_before < 4
    again = sweep_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    rows = table.read_rows(path)
    assert len(rows) == 4 and len({r["trial_key"] for r in rows}) == 4
    assert sorted((r["n"], r["steps_per_loop"]) for r in rows) == [("1", "2"), ("1", "3"), ("2", "2"), ("2", "3")]
    assert all("steps_per_loop=" in r["trial_key"] for r in rows) and {r["depth"] for r in rows} == {"8", "14"}
    assert all(r["status"] == "ok" and r["sweep"] == "killme" and float(r["images_per_sec"]) > 0 for r in rows)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args,message",
    [
        (["--shortcut=A,Z"], "shortcut"),
        (["--repeats=0"], "repeats"),
        (["--num_gpus=1", "--strategy=mirrored"], "GPU"),
        (["--strategy=default", "--cpu_replicas=2"], "needs --strategy=mirrored"),
        (["--xla=maybe"], "true/false"),
        (["--n=3,x"], "--n"),
        (["--resume", "--name=never_ran"], "no sweep named"),
        (["--cpus_per_trial=0"], "cpus_per_trial"),
        (["--cpus_per_trial=4096"], "--cpus_per_trial asks for 4096 CPU(s)"),  # Ray would wait for it forever
        (["--max_concurrent=0"], "max_concurrent"),
        (["--name=a/b"], "plain folder name"),
        (["--seed=0,1", "--repeats=2"], "--seed takes one value with --repeats > 1"),  # seeds would repeat
    ],
)
def test_bad_flags_are_one_line_exit_2_nothing_started(tmp_path, args, message):
    proc = sweep_cli(*args, *FAST, f"--storage={tmp_path}/ray", f"--results={tmp_path}/s.csv")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "s.csv")
    assert not os.path.exists(tmp_path / "ray" / "cifar_resnet")


def write_mixed_results(path):
    base = {
        "timestamp_utc": "t",
        "device": "CPU: test",
        "strategy": "default",
        "num_replicas": 1,
        "precision": "float32",
        "xla": False,
        "global_batch_size": 128,
        "block": "preact",
        "sweep": "s",
    }
    rows = []
    for i, (depth, shortcut, data, status, ips, acc) in enumerate(
        [
            (20, "A", "files", "ok", 900.0, 0.91),
            (20, "A", "files", "ok", 880.0, 0.915),
            (56, "A", "files", "ok", 330.0, 0.93),
            (20, "B", "tfds", "ok", 870.0, 0.92),
            (56, "B", "synthetic", "ok", 320.0, None),
            (110, "B", "files", "failed", None, None),
            (110, "C", "files", "diverged", None, None),
        ]
    ):
        rows.append(
            {
                **base,
                "run_id": f"r{i}",
                "depth": depth,
                "n": (depth - 2) // 6,
                "shortcut": shortcut,
                "data": data,
                "status": status,
                "images_per_sec": ips,
                "test_accuracy": acc,
            }
        )
    for r in rows:
        table.append_row(path, r)
    return rows


def test_report_from_mixed_rows(tmp_path):
    path = str(tmp_path / "summary.csv")
    write_mixed_results(path)
    md, pngs = report.build(path, str(tmp_path / "out"))
    text = open(md).read()
    table = [line for line in text.splitlines() if line.startswith("| s |")]
    assert len(table) == 6  # configurations: (20,A,files) twice -> one line
    line20a = next(line for line in table if "| A | 20 |" in line and "files" in line)
    assert "2 (2)" in line20a and "890.0 ±" in line20a and "0.9125 ±" in line20a
    synthetic = next(line for line in table if "synthetic" in line)
    assert synthetic.split("|")[-3].strip() == "–"  # no accuracy from synthetic data (the column before setup)
    assert any("failed" in line for line in table) and any("diverged" in line for line in table)
    assert len(pngs) == 4 and pngs[-1].endswith("peak_memory_vs_depth.png")
    for png in pngs:
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(png) > 5000


@pytest.mark.e2e
def test_report_never_averages_runs_that_measured_different_things(tmp_path):
    path = str(tmp_path / "summary.csv")
    rows = write_mixed_results(path)
    twin = {**rows[0], "run_id": "fit", "loop": "fit"}  # same configuration as r0/r1, through Keras fit
    table.append_row(path, twin)
    table.append_row(path, {**rows[0], "run_id": "old", "onednn": False})
    table.append_row(path, {**rows[0], "run_id": "infer", "mode": "inference"})
    summary = report.per_configuration(report.load(path))
    same = summary[(summary["depth"] == 20) & (summary["shortcut"] == "A") & (summary["data"] == "files")]
    assert sorted(same["runs"]) == [1, 1, 1, 2] and set(same["loop"]) == {"", "fit"}
    assert set(same["mode"]) == {"", "inference"}
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sweeps.report", f"--results={foreign}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "header" in proc.stderr


def test_report_accuracy_excludes_synthetic():
    import pandas as pd

    df = pd.DataFrame(
        [
            {
                "sweep": "",
                "device": "d",
                "data": "synthetic",
                "strategy": "default",
                "num_replicas": 1,
                "block": "preact",
                "shortcut": "A",
                "depth": 20,
                "precision": "float32",
                "xla": "false",
                "global_batch_size": 128,
                "status": "ok",
                "images_per_sec": 10.0,
                "test_accuracy": 0.99,
                "mfu": 0.1,
            },
        ]
    )
    summary = report.per_configuration(df)
    assert summary.loc[0, "acc"] is None and summary.loc[0, "ips"] == 10.0


def test_pareto_front():
    pts = [(100, 0.90), (50, 0.95), (80, 0.85), (40, 0.93), (120, 0.80)]
    assert report.pareto_front(pts) == [(50, 0.95), (100, 0.90), (120, 0.80)]


@pytest.mark.e2e
def test_report_bad_input_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    for args, message in (
        (["--sweep"], "sweep"),
        ([f"--results={tmp_path}/none.csv"], "no results file"),
        (["stray"], "unexpected arguments"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sweeps.report", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.e2e
def test_a_results_file_that_is_not_a_table_is_refused_before_anything_starts(tmp_path):
    """As `bench.run` checks its table: no Ray, no trial, no sweep folder (a rerun needs no new name)."""
    from sweeps import tune as sweep

    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    trials = space.build_trials({"n": [1], "data": ["synthetic"], "steps": [6], "warmup_steps": [2]}, 1, "foreign")
    opts = sweep.SweepOptions(name="foreign", storage=str(tmp_path / "ray"), results=str(foreign))
    with pytest.raises(ConfigError, match="not a results table"):
        sweep.run_sweep(trials, opts)
    assert foreign.read_text() == "a,b\n1,2\n" and os.listdir(tmp_path) == ["foreign.csv"]


@pytest.mark.e2e
def test_the_command_refuses_a_results_file_that_is_not_a_table_exit_2(tmp_path):
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    proc = sweep_cli(*FAST, "--n=1", "--shortcut=A", f"--storage={tmp_path}/ray", f"--results={foreign}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "not a results table" in lines[0], proc.stderr[-2000:]
    assert os.listdir(tmp_path) == ["foreign.csv"] and foreign.read_text() == "a,b\n1,2\n"


class _Trial:
    """What the row writer reads of a Ray Tune trial."""

    def __init__(self, key, status="PENDING", row=None):
        self.config = {"trial": key}
        self.status = status
        self.last_result = {"row": json.dumps(row), "final": True} if row else None


def test_a_resumed_sweep_shows_its_own_clock_and_counts(tmp_path, monkeypatch, capsys):
    """Ray restores the row writer it pickled when the sweep was created: the resumed run's lines count its own
    trials from 1 and its own time, not the first run's (which ended an hour ago here)."""
    from ray import cloudpickle

    from bench.results import rows as result_rows
    from sweeps import tune as sweep

    axes = {"n": [1], "shortcut": ["A", "B", "C"], "data": ["synthetic"], "steps": [6], "batch_size": [16]}
    trials = space.build_trials({**axes, "warmup_steps": [2]}, 1, "again")
    runs = {t.key: json.loads(json.dumps(dataclasses.asdict(t.config))) for t in trials}
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    path = str(tmp_path / "s.csv")
    pickled = cloudpickle.dumps(sweep._make_row_writer(path, runs))  # as Tuner saves it, when the sweep starts
    now[0] += 3600  # the first run finished trial A, was killed, and is resumed an hour later
    writer = cloudpickle.loads(pickled)
    writer.setup(total_num_samples=3)
    a, b, c = (t.key for t in trials)
    writer.on_step_begin(0, [_Trial(a, "TERMINATED"), _Trial(b), _Trial(c)])
    for key in (b, c):
        now[0] += 5
        row = {**result_rows.config_row(options.from_dict(runs[key]), "ok", ""), "images_per_sec": 100.0}
        writer.on_trial_complete(1, [], _Trial(key, row=row))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("trial ")]
    assert len(lines) == 2
    assert lines[0].startswith("trial 1/2 n1-preact-B-") and lines[0].endswith("5s elapsed, ETA 5s"), lines
    assert lines[1].startswith("trial 2/2 n1-preact-C-") and lines[1].endswith("10s elapsed, done"), lines


def _stop_after_rows(args, path, rows, signum):
    """Start the sweep, send `signum` once the table has `rows` rows; (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.tune", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _rows_in(path) < rows and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the sweep ended before it could be stopped"
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.mark.e2e
@pytest.mark.slow
def test_a_stopped_sweep_says_what_is_missing_and_how_to_resume(tmp_path):
    """Ctrl-C: exit 130 and one line naming the trials without a row and the command that runs them (the
    running trial writes no row); SIGTERM to the resumed sweep: exit 143 (not Ray's stack dump); the last
    --resume runs the rest, counting its own trials."""
    path = str(tmp_path / "summary.csv")
    args = ["--n=1,2", "--shortcut=A,B", *FAST, "--name=stopme", f"--storage={tmp_path}/ray", f"--results={path}"]
    code, _, err = _stop_after_rows(args, path, 1, signal.SIGINT)
    assert code == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    rows = table.read_rows(path)
    assert 1 <= len(rows) < 4 and all(r["status"] == "ok" for r in rows), rows
    assert last.startswith(f"error: sweep stopme was stopped by SIGINT: {4 - len(rows)} of 4 trials have no row")
    assert last.endswith(" --resume") and "python -m sweeps.tune" in last and "Traceback" not in err
    code, _, err = _stop_after_rows([*args, "--resume"], path, len(rows) + 1, signal.SIGTERM)
    resumed = table.read_rows(path)
    assert code == 143, err[-3000:]
    assert "SIGTERM received" not in err and "stopped by SIGTERM" in err.strip().splitlines()[-1]
    assert len(resumed) < 4 and all(r["status"] == "ok" for r in resumed), resumed
    again = sweep_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    final = table.read_rows(path)
    assert len(final) == 4 and len({r["trial_key"] for r in final}) == 4 and all(r["status"] == "ok" for r in final)
    left = 4 - len(resumed)
    progress = [x for x in again.stdout.splitlines() if x.startswith("trial ")]
    assert progress[0].startswith(f"trial 1/{left} ") and progress[-1].startswith(f"trial {left}/{left} ")
    assert progress[-1].endswith("elapsed, done"), progress
