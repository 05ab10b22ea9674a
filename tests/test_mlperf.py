"""Every run's MLPerf log, checked by MLPerf's own compliance checker with the project's ruleset (issue #24).

In-process runs on tiny models (ResNet-8, batch 16): a default (synthetic) run, a run to a target on
CIFAR-format files a tiny model learns (tests/cifar_files.py), an inference run, a run stopped by
Ctrl-C; logs with an event missing or out of order are rejected. The multi-worker run, Ctrl-C sent to
a `bench.run` process and the checker's own command line are end to end (`-m e2e`).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from cifar_files import write_learnable_cifar

from bench.config.options import RunConfig
from bench.results import mlperf_log, table
from bench.runner import benchmark
from bench.runner.loop import RunHooks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n=1, batch_size=16, steps_per_loop=4, warmup_steps=2)


def check(path):
    """(accepted, messages) from MLPerf's compliance checker with the project's ruleset (its own code, in process)."""
    from mlperf_logging.compliance_checker import mlp_compliance

    checker = mlp_compliance.make_checker("training", "4.1.0", quiet=False, werror=False)
    logging.disable(logging.WARNING)  # the checker logs its findings; they are returned here instead
    try:
        accepted = checker.check_file(str(path), mlperf_log.ruleset_path())
    finally:
        logging.disable(logging.NOTSET)
    return accepted, [*checker.overwritable.values(), *checker.not_overwritable]


def events(path):
    """[(key, value, metadata)] of a log, in order."""
    out = []
    with open(path) as fh:
        for line in fh:
            record = json.loads(line.split(":::MLLOG ", 1)[1])
            out.append((record["key"], record["value"], record["metadata"]))
    return out


def one(path, key):
    [found] = [(v, m) for k, v, m in events(path) if k == key]
    return found


def logged_run(tmp_path, name, hooks=None, **fields):
    """One in-process run writing to `tmp_path/name/s.csv`: (outcome, its row, its log's path)."""
    results = tmp_path / name / "s.csv"
    out = benchmark.run(RunConfig(results=str(results), **{**SMALL, **fields}), command="test", hooks=hooks)
    [row] = table.read_rows(str(results))
    return out, row, results.parent / row["mlperf_log"] if row["mlperf_log"] else None


@pytest.fixture(scope="module")
def target_run(tmp_path_factory):
    """A run to a target on files a tiny ResNet learns: (row, log path, train images)."""
    tmp = tmp_path_factory.mktemp("target")
    folder = write_learnable_cifar(str(tmp / "cifar"), train=128, test=64)
    _, row, log = logged_run(
        tmp, "run", data="files", cifar_dir=folder, epochs=8, target_accuracy=0.9, eval_every_epochs=1.0
    )
    return row, log, 128


def test_a_default_run_names_its_log_and_the_checker_accepts_it(tmp_path):
    out, row, log = logged_run(tmp_path, "default", data="synthetic", steps=12)
    assert out.status == "ok" and row["mlperf_log"] == f"mlperf/{row['run_id']}.log" and log.is_file()
    accepted, messages = check(log)
    assert accepted, messages
    keys = [k for k, _, _ in events(log)]
    assert keys[:2] == ["cache_clear", "init_start"] and keys.index("init_stop") + 1 == keys.index("run_start")
    assert keys.index("run_stop") > max(i for i, k in enumerate(keys) if k in ("block_start", "block_stop"))
    assert "eval_accuracy" not in keys  # synthetic data: no test set
    value, meta = one(log, "run_stop")
    assert meta["status"] == "success" and meta["harness_status"] == "ok" and meta["samples_count"] == 12 * 16
    assert one(log, "seed")[0] == 0 and one(log, "global_batch_size")[0] == 16
    assert one(log, "submission_org")[0] == "unaffiliated" and one(log, "submission_platform")[0].startswith("1xCPU")
    assert one(log, "opt_base_learning_rate")[0] == pytest.approx(0.1 * 16 / 128)
    assert one(log, "harness_images_per_sec")[0] == pytest.approx(float(row["images_per_sec"]), rel=1e-5)  # 6 digits


def test_a_run_to_its_target_logs_the_epochs_mlperf_reads_and_the_row_has_them(target_run):
    from mlperf_logging.rcp_checker import rcp_checker

    row, log, train_images = target_run
    accepted, messages = check(log)
    assert accepted, messages
    assert row["status"] == "ok" and row["time_to_target_s"] != ""
    epochs, samples = float(row["epochs_to_target"]), int(row["samples_to_target"])
    assert samples == round(epochs * train_images) and 0 < epochs < 8
    assert one(log, "run_stop")[1]["status"] == "success"
    # MLPerf's RCP checker reads the epochs to converge from the log: they are the row's
    not_converged, rcp_epochs, batch, benchmark_name = rcp_checker.read_submission_file(str(log), "4.1.0", False)
    assert not_converged == 0 and rcp_epochs == pytest.approx(epochs, abs=1e-3) and batch == 16
    accuracies = [(v, m["epoch_num"]) for k, v, m in events(log) if k == "eval_accuracy"]
    assert accuracies[-1] == (pytest.approx(float(row["test_accuracy"])), pytest.approx(epochs))
    assert accuracies[-1][0] >= 0.9 and all(a < 0.9 for a, _ in accuracies[:-1])


def test_an_inference_run_leaves_a_log_the_checker_accepts(tmp_path):
    out, row, log = logged_run(tmp_path, "inference", mode="inference", data="synthetic", steps=12)
    assert out.status == "ok"
    accepted, messages = check(log)
    assert accepted, messages
    keys = {k for k, _, _ in events(log)}
    assert "opt_name" not in keys and one(log, "benchmark_mode")[0] == "inference"
    assert one(log, "block_stop")[1]["samples_count"] == 12 * 16


def test_a_run_stopped_by_ctrl_c_ends_its_log_aborted_and_the_checker_accepts_it(tmp_path):
    sent = []

    def ctrl_c_once(step):
        if step >= 6 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    out, row, log = logged_run(tmp_path, "stopped", RunHooks(on_step=ctrl_c_once), data="synthetic", steps=400)
    assert out.status == "interrupted" and out.exit_code == 130
    _, meta = one(log, "run_stop")
    assert meta["status"] == "aborted" and meta["harness_status"] == "interrupted" and "SIGINT" in meta["error"]
    accepted, messages = check(log)
    assert accepted, messages


def rewritten(log, tmp_path, edit):
    """A copy of `log` with its lines passed through `edit(lines) -> lines`."""
    with open(log) as fh:
        lines = fh.readlines()
    copy = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.log"
    copy.write_text("".join(edit(lines)))
    return copy


def _key(line):
    return json.loads(line.split(":::MLLOG ", 1)[1])["key"]


def _swap(first, second):
    def edit(lines):
        i = next(n for n, line in enumerate(lines) if _key(line) == first)
        j = next(n for n, line in enumerate(lines) if _key(line) == second)
        lines[i], lines[j] = lines[j], lines[i]
        return lines

    return edit


def _without(key):
    return lambda lines: [line for line in lines if _key(line) != key]


def _claims_success_below_target(lines):
    """Every evaluation's accuracy lowered below the target, run_stop still saying success."""
    out = []
    for line in lines:
        record = json.loads(line.split(":::MLLOG ", 1)[1])
        if record["key"] == "eval_accuracy":
            record["value"] = 0.5
            line = ":::MLLOG " + json.dumps(record) + "\n"
        out.append(line)
    return out


@pytest.mark.parametrize(
    "name,edit",
    [
        ("run_stop removed", _without("run_stop")),
        ("run_start before init_stop", _swap("init_stop", "run_start")),
        ("a block closed before it opened", _swap("block_start", "block_stop")),
        ("an evaluation before the run started", _swap("run_start", "eval_accuracy")),
        ("the optimizer's base lr missing", _without("opt_base_learning_rate")),
        ("the seed missing", _without("seed")),
        ("success claimed below the target", _claims_success_below_target),
    ],
)
def test_the_checker_rejects_a_log_with_an_event_missing_or_out_of_order(target_run, tmp_path, name, edit):
    _, log, _ = target_run
    edited = rewritten(log, tmp_path, edit)
    assert edited.read_text() != log.read_text(), name  # the edit changed something
    accepted, messages = check(edited)
    assert not accepted and messages, name


def test_a_run_that_ends_in_setup_says_so_and_its_log_holds_no_result(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("the data vanished")

    monkeypatch.setattr(benchmark, "_build", broken)
    out, row, log = logged_run(tmp_path, "setup", data="synthetic", steps=12)
    assert out.status == "failed" and row["mlperf_log"]
    value, meta = one(log, "harness_setup_ended")
    assert value == "failed" and "the data vanished" in meta["error"]
    accepted, messages = check(log)
    assert not accepted and any("run_stop" in m for m in messages)


def test_a_process_that_is_not_the_chief_writes_no_log(tmp_path):
    out, row, log = logged_run(tmp_path, "worker", RunHooks(mlperf_log=False), data="synthetic", steps=8)
    assert out.status == "ok" and row["mlperf_log"] == "" and log is None
    assert not (tmp_path / "worker" / "mlperf").exists()
    assert not mlperf_log.begin(RunConfig(), "x", enabled=False)  # NoLog: falsy, writes nothing


def test_a_log_that_cannot_be_created_is_one_warning_and_the_run_goes_on(tmp_path, capsys):
    (tmp_path / "mlperf").write_text("a file where the logs' folder would go")
    log = mlperf_log.begin(RunConfig(results=str(tmp_path / "s.csv")), "abc")
    assert not log and "no MLPerf log for run abc" in capsys.readouterr().err
    assert log.finish({"status": "ok"}) == {"status": "ok"}


# ---- end to end -----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_checkers_command_line_accepts_a_log_and_rejects_one_without_run_stop(target_run, tmp_path):
    _, log, _ = target_run
    ruleset = subprocess.run(
        [sys.executable, "-m", "bench.results", "ruleset"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert ruleset == mlperf_log.ruleset_path() and os.path.isfile(ruleset)

    def checker(path):
        return subprocess.run(
            [sys.executable, "-m", "mlperf_logging.compliance_checker", "--config", ruleset, str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    good = checker(log)
    assert good.returncode == 0 and "SUCCESS" in good.stderr, good.stderr[-2000:]
    bad = checker(rewritten(log, tmp_path, _without("run_stop")))
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "run_stop" in bad.stderr


@pytest.mark.e2e
def test_ctrl_c_to_a_bench_run_process_leaves_an_aborted_log_the_checker_accepts(tmp_path):
    results = tmp_path / "s.csv"
    args = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=100000", "--steps_per_loop=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args, "--warmup_steps=2", f"--results={results}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            logs = list((tmp_path / "mlperf").glob("*.log")) if (tmp_path / "mlperf").exists() else []
            if logs and "block_start" in logs[0].read_text():
                break
            time.sleep(0.5)
        time.sleep(2)  # a few windows into the block
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    [row] = table.read_rows(str(results))
    log = tmp_path / row["mlperf_log"]
    assert one(log, "run_stop")[1]["status"] == "aborted"
    accepted, messages = check(log)
    assert accepted, messages


@pytest.mark.e2e
def test_a_multi_worker_run_leaves_one_log_the_chiefs_that_the_checker_accepts(tmp_path):
    from helpers import seed_peak_cache

    cache = tmp_path / "cache"
    seed_peak_cache(str(cache), intra=1)
    results = tmp_path / "s.csv"
    args = ["--strategy=multi_worker", "--workers=2", "--data=synthetic", "--n=1", "--batch_size=16"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--steps=12", "--warmup_steps=2", f"--results={results}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled", "RESNET_BENCH_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = table.read_rows(str(results))
    assert row["num_workers"] == "2" and row["mlperf_log"] == f"mlperf/{row['run_id']}.log"
    assert os.listdir(tmp_path / "mlperf") == [f"{row['run_id']}.log"]  # one log per run
    log = tmp_path / row["mlperf_log"]
    assert one(log, "harness_run_id")[0] == row["run_id"] and one(log, "num_replicas")[0] == 2
    assert one(log, "run_stop")[1]["status"] == "success"
    accepted, messages = check(log)
    assert accepted, messages
