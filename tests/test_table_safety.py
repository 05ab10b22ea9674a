"""The results table is the user's property (#16): nothing lost, nothing overwritten, nothing silently wrong.

Through the real commands (`bench.run`, `sweeps.report`, `bench.results upgrade`) in subprocesses;
the concurrency test uses processes and no TensorFlow.
"""

import csv
import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from bench.config import identity
from bench.config.options import RunConfig
from bench.results import rows, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=12", "--warmup_steps=2"]


def command(module, *args, timeout=300, wait=True):
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if not wait:
        return popen
    out, err = popen.communicate(timeout=timeout)
    return subprocess.CompletedProcess(popen.args, popen.returncode, out, err)


def one_line_exit_2(proc, *expected):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def a_row(i, **extra):
    return {
        "run_id": f"r{i:05d}",
        "status": "ok",
        "n": 3,
        "images_per_sec": 100.0 + i,
        "command": 'python -m bench.run --note "a, b"\nsecond line',
        **extra,
    }


def _appender(path, start, count):
    for i in range(start, start + count):
        assert table.append_row(path, a_row(i))


def test_eight_concurrent_appenders_through_a_link_and_the_target(tmp_path):
    target = tmp_path / "data" / "table.csv"
    target.parent.mkdir()
    seed = (table.format_header() + table.format_row(a_row(99999, error="kept\r\nas it was"))).encode()
    target.write_bytes(seed)
    os.chmod(target, 0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    ctx = multiprocessing.get_context("spawn")
    # half the writers name the link, half the target: they must share one lock and one file
    procs = [ctx.Process(target=_appender, args=(str(link if k % 2 else target), k * 1000, 25)) for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * 8
    assert link.is_symlink() and os.readlink(link) == str(target)
    data = target.read_bytes()
    assert data.startswith(seed)  # the earlier bytes, byte for byte
    assert os.stat(target).st_mode & 0o777 == 0o640
    got = table.read_rows(str(target))
    ids = [r["run_id"] for r in got]
    expected = ["r99999"] + [f"r{k * 1000 + i:05d}" for k in range(8) for i in range(25)]
    assert sorted(ids) == sorted(expected) and len(ids) == 201  # all 200 rows, each exactly once
    with open(target, newline="") as fh:
        assert all(len(r) == len(table.SCHEMA) for r in csv.reader(fh))
    assert all(r["command"] == 'python -m bench.run --note "a, b"\nsecond line' for r in got[1:])
    assert not [f for f in os.listdir(target.parent) if f.endswith(".tmp")]


@pytest.mark.e2e
def test_files_that_are_not_our_table_are_refused_untouched(tmp_path):
    older = ",".join(c for c in table.SCHEMA if c != "onednn") + "\nold1,t,ok" + "," * (len(table.SCHEMA) - 4)
    cases = {  # name: (bytes, what the one line must say)
        "blank first line": (b"\nname,score\nalice,3\n", ["not a results table", "first line is empty"]),
        "binary": (bytes(range(256)) * 4 + b"\x89PNG\r\n\x1a\n\xff\xfe", ["not a results table", "binary"]),
        "byte-order mark": (
            ("\ufeff" + table.format_header()).encode(),
            ["not a results table", "column 1 is '\\ufeffrun_id', expected 'run_id'"],
        ),
        "comma and space": (
            (", ".join(table.SCHEMA) + "\n").encode(),
            ["not a results table", "column 2 is ' timestamp_utc'"],
        ),
        "older schema": ((older + "\n").encode(), ["older version", "onednn", "upgrade"]),
    }
    for i, (name, (content, expected)) in enumerate(cases.items()):
        path = tmp_path / f"f{i}.csv"
        path.write_bytes(content)
        proc = command("bench.run", *B, f"--results={path}")
        one_line_exit_2(proc, *expected)
        assert path.read_bytes() == content, name
        assert sorted(os.listdir(tmp_path)) == sorted(f"f{j}.csv" for j in range(i + 1)), name


@pytest.mark.e2e
def test_a_symlinked_table_gives_the_row_to_its_target(tmp_path):
    target = tmp_path / "real.csv"
    seed = (table.format_header() + table.format_row(a_row(1))).encode()
    target.write_bytes(seed)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    proc = command("bench.run", *B, f"--results={link}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert link.is_symlink()
    assert target.read_bytes().startswith(seed)
    assert [r["run_id"] for r in table.read_rows(str(target))][0] == "r00001"
    assert len(table.read_rows(str(target))) == 2


@pytest.mark.e2e
def test_a_table_that_became_unwritable_mid_run_keeps_the_row_beside_it(tmp_path):
    mid = tmp_path / "mid.csv"
    ckpt = tmp_path / "ckpt"
    args = [*B, "--steps=60", f"--checkpoint_dir={ckpt}", f"--results={mid}"]
    proc = command("bench.run", *args, wait=False)
    deadline = time.time() + 240
    while not (ckpt / identity.RUN_FILE).exists():  # validated, set up, about to train
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    mid.mkdir()  # the table's path is now a folder
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    assert "images/sec" in out  # the summary is printed
    [line] = [x for x in err.splitlines() if "was not added" in x]
    [fallback] = [f for f in os.listdir(tmp_path) if f.startswith("mid.csv.unsaved-")]
    assert str(tmp_path / fallback) in line and str(tmp_path / fallback) in out
    [row] = table.read_rows(str(tmp_path / fallback))
    assert row["status"] == "ok" and float(row["images_per_sec"]) > 0 and row["total_steps"] == "60"
    assert os.listdir(mid) == []
    # the same command again (the table's path a file again): the run is finished and says where its row is
    mid.rmdir()
    again = command("bench.run", *args)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]
    assert str(tmp_path / fallback) in again.stdout and not mid.exists()


@pytest.mark.e2e
def test_a_checkpoint_at_the_last_step_writes_no_row_that_measured_nothing(tmp_path):
    """A run killed after its last checkpoint but before its row (run.json not yet 'finished'): the same
    command again has nothing left to train or time, and says so instead of writing an empty ok row."""
    path, ckpt = tmp_path / "r.csv", tmp_path / "ckpt"
    args = [*B, f"--checkpoint_dir={ckpt}", "--checkpoint_every_steps=6", f"--results={path}"]
    first = command("bench.run", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = json.loads((ckpt / identity.RUN_FILE).read_text())
    (ckpt / identity.RUN_FILE).write_text(json.dumps({**saved, "finished": False}))  # the kill's moment
    again = command("bench.run", *args)
    assert again.returncode == 0 and "nothing is left to train or time" in again.stdout, again.stderr[-2000:]
    assert len(table.read_rows(str(path))) == 1


def failed_trial_row():
    cfg = RunConfig(n=3, data="synthetic", sweep="s", trial_key="n=3")
    return {**rows.config_row(cfg, "failed", "RuntimeError: boom"), "command": "python -m sweeps.tune"}


@pytest.mark.e2e
def test_report_counts_failed_rows_and_replaces_the_report_whole(tmp_path):
    path = tmp_path / "summary.csv"
    ok = {
        **a_row(1),
        "device": "CPU: x",
        "data": "synthetic",
        "strategy": "default",
        "num_replicas": 1,
        "block": "preact",
        "shortcut": "B",
        "depth": 20,
        "precision": "float32",
        "xla": False,
        "global_batch_size": 128,
        "sweep": "s",
    }
    table.append_row(str(path), ok)
    table.append_row(str(path), failed_trial_row())
    (tmp_path / "summary.md").write_text("the previous report\n")
    proc = command("sweeps.report", f"--results={path}")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    md = (tmp_path / "summary.md").read_text()
    assert "2 rows" in md and "1 not ok" in md and "1 (0) failed" in md and "1 (1)" in md
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.e2e
def test_report_of_an_empty_table_says_so(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    proc = command("sweeps.report", f"--results={path}")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    md = (tmp_path / "summary.md").read_text()
    assert "0 rows" in md and "No rows" in md
    assert path.read_bytes() == b""


@pytest.mark.e2e
def test_report_bad_paths_are_one_line_exit_2(tmp_path):
    csv_path = tmp_path / "t.csv"
    table.append_row(str(csv_path), a_row(1))
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\x00\xff" * 100)
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufeff" + table.format_header())
    before = sorted(os.listdir(tmp_path))
    one_line_exit_2(command("sweeps.report", f"--results={csv_path}", "--out_dir=/proc/rep"), "/proc/rep")
    one_line_exit_2(
        command("sweeps.report", f"--results={tmp_path}", f"--out_dir={tmp_path / 'o'}"),
        "is a folder, not a results file",
    )
    one_line_exit_2(command("sweeps.report", f"--results={binary}"), "binary")
    one_line_exit_2(command("sweeps.report", f"--results={bom}"), "column 1 is '\\ufeffrun_id'")
    assert not os.path.exists("/proc/rep")
    assert sorted(f for f in os.listdir(tmp_path) if f != "o") == before


@pytest.mark.e2e
def test_an_older_table_is_upgraded_only_on_request(tmp_path):
    path = tmp_path / "old.csv"
    old_schema = [c for c in table.SCHEMA if c != "onednn"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, old_schema, lineterminator="\n")
        writer.writeheader()
        writer.writerow({"run_id": "old1", "status": "ok", "xla": "true", "command": "python -m bench.run --x, y"})
    original = path.read_bytes()
    proc = command("bench.results", "upgrade", str(path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "old.csv.before-upgrade").read_bytes() == original
    assert table.append_row(str(path), a_row(2, onednn=True))
    got = table.read_rows(str(path))
    assert tuple(got[0]) == table.SCHEMA and [r["run_id"] for r in got] == ["old1", "r00002"]
    assert got[0]["command"] == "python -m bench.run --x, y" and got[0]["onednn"] == ""
    one_line_exit_2(command("bench.results", "upgrade", str(path)), "already")


@pytest.mark.e2e
def test_an_upgrade_of_an_immutable_file_can_be_retried_and_leaves_nothing(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text(
        ",".join(c for c in table.SCHEMA if c != "onednn") + "\nold1,t,ok" + "," * (len(table.SCHEMA) - 4) + "\n"
    )
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (needs root and a file system that has it)")
    try:
        for _ in range(2):
            one_line_exit_2(command("bench.results", "upgrade", str(path)), "cannot upgrade", "not permitted")
            assert os.listdir(tmp_path) == ["old.csv"]
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert command("bench.results", "upgrade", str(path)).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["old.csv", "old.csv.before-upgrade", "old.csv.lock"]
    one_line_exit_2(command("bench.results", "upgrade", str(tmp_path / "missing.csv")), "no results file")
    assert not (tmp_path / "missing.csv.lock").exists()
