"""`--launcher tf_config` (issue #26, item 6): a multi-worker run's workers as plain processes with TF_CONFIG on
127.0.0.1, no Ray; the same worker code path (`bench.distributed.worker.run_worker`), the same row.

Fast tests: the flag's checks, TF_CONFIG and the workers' environment, the collector kept in a file (the
actor's rules, across processes), the failure line, the workers' warnings relayed, the worker entry's own
bad arguments. End to end (`-m e2e`, each ~1 min on the 2-core VM; ResNet-8, batch 16): bad input (one line,
exit 2, nothing written, no worker started), a 2-worker run of a dozen steps whose loss is the 2-replica
mirrored run's, Ctrl-C and SIGTERM relayed to the workers (the interrupted row, 130 / 143, no worker left
running), a worker that dies.
"""

import functools
import glob
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from helpers import mirrored_loss, python

from bench.config import exits, setup_checks, validation
from bench.config.options import ConfigError, RunConfig
from bench.distributed import aggregate, plain, plain_worker
from bench.distributed.collector import Collector, FileCollector
from bench.results import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MW = dict(strategy="multi_worker", workers=2, n=1, batch_size=16, launcher="tf_config")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"launcher": "tf_config"}, "--launcher: only with --strategy=multi_worker"),
        ({**MW, "address": "auto"}, "--address: Ray Train's"),
        ({**MW, "max_failures": 1}, "--max_failures: Ray Train's"),
        ({**MW, "restart_timeout_s": 30.0}, "--restart_timeout_s: Ray Train's"),
        ({**MW, "sweep": "s", "trial_key": "k"}, "a sweep's trials run under Ray Tune"),
        ({**MW, "launcher": "slurm"}, "--launcher='slurm' is not allowed; choose one of: ray, tf_config"),
    ],
)
def test_the_launcher_flag_is_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        validation.validate(RunConfig(**changes))


def test_the_request_must_fit_this_machine():
    setup_checks.check_machine_request(RunConfig(**MW), cpus=2, gpus=0)
    with pytest.raises(ConfigError, match="need 4 CPUs and 0 GPUs; this machine has 2 CPUs"):
        setup_checks.check_machine_request(RunConfig(**MW, cpus_per_worker=2.0), cpus=2, gpus=0)
    with pytest.raises(ConfigError, match="need 2 CPUs and 2 GPUs; this machine has 8 CPUs and 1 GPUs"):
        setup_checks.check_machine_request(RunConfig(**MW, gpus_per_worker=1), cpus=8, gpus=1)


def test_each_worker_gets_tf_config_and_ray_trains_environment():
    ports = plain.free_ports(3)
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)
    addresses = ["127.0.0.1:1001", "127.0.0.1:1002"]
    cfg = RunConfig(**MW, cpus_per_worker=1.5, gpus_per_worker=2)
    env = plain.worker_env(
        cfg, addresses, 1, {"PATH": "/bin", "KEEP": "x"}, {"TF_ENABLE_ONEDNN_OPTS": "1"}, [4, 5, 6, 7]
    )
    assert json.loads(env["TF_CONFIG"]) == {
        "cluster": {"worker": addresses},
        "task": {"type": "worker", "index": 1},
    }
    assert env["OMP_NUM_THREADS"] == "1" and env["TF_USE_LEGACY_KERAS"] == "1"  # as Ray Train's workers have them
    assert env["CUDA_VISIBLE_DEVICES"] == "6,7" and env["TF_ENABLE_ONEDNN_OPTS"] == "1" and env["KEEP"] == "x"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == ROOT


def test_the_file_collector_keeps_the_actors_rules_across_processes(tmp_path):
    folder = str(tmp_path)
    driver = FileCollector.create(folder, workers=2)
    assert driver.start(0, {"host": "vm"}) == 1 and FileCollector(folder).start(1, {"host": "vm"}) == 1
    for rank in (0, 1):  # both workers go on from step 4, each asking from a process of its own
        code = f"from bench.distributed.collector import FileCollector; print(FileCollector({folder!r}).poll({rank}, 1, 4))"
        asked = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True
        )
        assert asked.stdout.strip() == "None", asked.stderr
    driver.request_stop("SIGINT")
    # every worker stops at the first boundary beyond every step a worker was told to go on from (the actor's rule)
    assert driver.poll(0, 1, 4) is None and driver.poll(1, 1, 6) == "SIGINT" and driver.poll(0, 1, 6) == "SIGINT"
    driver.log("step 6/10")
    driver.report(0, 1, {"rank": 0, "row": {"status": "interrupted"}})
    assert driver.fire_once("1:3") and not FileCollector(folder).fire_once("1:3")
    state = driver.state()
    reference = Collector(2)
    reference.start(0, {"host": "vm"})
    reference.start(1, {"host": "vm"})
    assert state["starts"] == reference.state()["starts"] and state["reports"][0]["row"]["status"] == "interrupted"
    assert driver.news(0, 0)[0] == ["step 6/10"]


def test_the_failure_line_names_each_failed_worker_dead_processes_first():
    reports = {0: {"rank": 0, "error": "UnavailableError: peer gone"}}
    line = plain.failure_line({0: 1, 1: -9}, reports)
    assert line == (
        "worker 1: its process was killed by SIGKILL before it reported; worker 0: UnavailableError: peer gone (exit 1)"
    )
    assert plain.failure_line({0: 1, 1: 17}, reports).startswith("worker 1: exit 17 before it reported; worker 0:")
    assert plain.failure_line({0: 0, 1: 0}, {}) is None


def test_the_workers_warnings_reach_the_drivers_stderr_once(tmp_path):
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    workers = [plain.Worker(rank, None, str(log)) for rank, log in enumerate(logs)]
    err = io.StringIO()
    relay = plain.Relay(err)
    relay.poll(workers)  # no log yet: nothing, no error
    logs[0].write_bytes(
        b"2026-01-01 W tensorflow: noise\nwarning: the cache /c cannot be written (read-only)\nnote: par"
    )
    logs[1].write_bytes(b"warning: the cache /c cannot be written (read-only)\n")
    relay.poll(workers)
    with open(logs[0], "ab") as fh:  # the rest of a line written in two pieces
        fh.write(b"tial line\nstep 2/12\n")
    relay.poll(workers)
    relay.poll(workers)
    assert err.getvalue().splitlines() == [
        "warning: worker 0: the cache /c cannot be written (read-only)",  # worker 1's same text is not repeated
        "note: worker 0: partial line",
    ]


def test_the_worker_entry_refuses_arguments_that_are_not_a_runs(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    for argv in ([], [str(tmp_path), "0"], [str(tmp_path / "none"), "0", "1"], [str(tmp_path), "zero", "1"]):
        assert plain_worker.main(["plain_worker", *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: usage: python -m bench.distributed.plain_worker FOLDER")
    assert plain_worker.arguments(["plain_worker", str(tmp_path), "1", "42"]) == (str(tmp_path), 1, 42)


def test_the_row_names_its_launcher():
    report = {"rank": 0, "attempt": 1, "host": "vm", "row": {"run_id": "r", "status": "ok", "flops_per_image": 1}}
    row = aggregate.multi_worker_row(RunConfig(**MW), "cmd", {"starts": {0: 1}, "reports": {0: report}})
    assert row["launcher"] == "tf_config" and row["num_workers"] == 2
    ray_row = aggregate.multi_worker_row(RunConfig(**{**MW, "launcher": "ray"}), "", {"reports": {0: report}})
    assert ray_row["launcher"] == "ray"
    table.format_row(row)


# ---------------------------------------------------------------------------
# End to end: real worker processes


def cli_args(path, *extra):
    return [
        "--strategy=multi_worker",
        "--workers=2",
        "--launcher=tf_config",
        "--data=synthetic",
        "--n=1",
        "--batch_size=16",
        f"--results={path}",
        *extra,
    ]


run_cli = functools.partial(python, "-m", "bench.run")


def plain_workers_of(pid):
    """The plain worker processes a driver started (alive or zombie), by their command line."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "bench.distributed.plain_worker" in " ".join(c.cmdline())]


def still_running(processes, within_s=10.0):
    """Those of `processes` still running (a zombie has ended) after waiting up to `within_s` for them."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def run_folders():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "bench-tf-config-*")))


@pytest.mark.e2e
def test_bad_launcher_input_is_one_line_exit_2(tmp_path):
    path = tmp_path / "summary.csv"
    folders = run_folders()
    for args, message in (
        (["--launcher=tf_config", "--data=synthetic", f"--results={path}"], "only with --strategy=multi_worker"),
        (cli_args(path, "--launcher=slurm"), "--launcher=slurm: value should be one of <ray|tf_config>"),
        (cli_args(path, "--max_failures=1"), "--max_failures: Ray Train's"),
        (cli_args(path, "--address=auto"), "--address: Ray Train's"),
        (cli_args(path, "--workers=0"), "--workers"),
        (cli_args(path, "--cpus_per_worker=8"), "this machine has"),  # known only to the launcher: still no worker
    ):
        proc = run_cli(*args, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, proc.stderr)
        assert message in lines[0] and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert os.listdir(tmp_path) == []  # no table, no systems/ or tracebacks/ beside it
    assert run_folders() <= folders  # no worker was started (each run's folder is made before its workers)


@pytest.mark.e2e
def test_two_plain_workers_train_as_the_two_replica_mirrored_run(tmp_path):
    path = tmp_path / "summary.csv"
    proc = run_cli(*cli_args(path, "--steps=12", "--steps_per_loop=1", "--warmup_steps=1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row = table.read_rows(str(path))[0]
    assert row["status"] == "ok" and row["launcher"] == "tf_config" and row["num_workers"] == "2"
    assert row["num_replicas"] == "2" and row["host"].endswith("(1 host)") and row["restarts"] == "0"
    assert float(row["peak_rss_mb"]) > 2 * 200 and row["peak_rss_by_host"].startswith(os.uname().nodename)
    assert row["contended"] in ("true", "false") and os.path.isfile(tmp_path / "systems" / f"{row['system']}.json")
    assert "plain processes on this machine (TF_CONFIG: 127.0.0.1:" in proc.stdout
    # the same computation as one process with two replicas: same seed, same global batch
    assert float(row["final_train_loss"]) == pytest.approx(mirrored_loss(str(tmp_path), 12), rel=1e-4)


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_reaches_the_workers_through_the_driver(sig, tmp_path):
    """Ctrl-C (a terminal's SIGINT reaches the driver only: the workers have process groups of their own) or
    SIGTERM: every worker stops after the same window, one interrupted row, 130 / 143, no worker left running.
    Many steps are asked for so that the signal finds the run training (it stops after a few)."""
    path = tmp_path / "summary.csv"
    env = {**os.environ, "PYTHONPATH": ROOT}
    driver = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *cli_args(path, "--steps=4000", "--steps_per_loop=2")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = None
    try:
        for line in driver.stdout:  # the chief's first progress line: training has started in every worker
            if line.startswith("workers: ") and "their output: " in line:
                folder = os.path.dirname(line.split("their output: ")[1].strip())
            if line.startswith("step "):
                break
        workers = plain_workers_of(driver.pid)
        assert len(workers) == 2 and folder
        driver.send_signal(sig)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 128 + sig and "Traceback" not in err, err[-2000:]
    assert f"{signal.Signals(sig).name}: stopping the workers after the current window" in err
    rows = table.read_rows(str(path))
    assert len(rows) == 1 and rows[0]["status"] == "interrupted" and rows[0]["launcher"] == "tf_config"
    assert rows[0]["error"].startswith(f"stopped by {signal.Signals(sig).name} at step "), rows[0]["error"]
    assert 0 < int(rows[0]["total_steps"]) < 4000
    # no orphans: the workers have ended, nothing runs from the run's folder, which is removed (not a failure)
    assert still_running(workers) == []
    assert not [p.pid for p in psutil.process_iter(["cmdline"]) if folder in " ".join(p.info["cmdline"] or ())]
    assert not os.path.exists(folder)


@pytest.mark.e2e
def test_a_worker_that_dies_fails_the_run_with_a_row(tmp_path):
    path = tmp_path / "summary.csv"
    start = time.perf_counter()
    proc = run_cli(*cli_args(path, "--steps=12", "--steps_per_loop=1", "--warmup_steps=1", "--fail_worker_at_step=1:3"))
    assert proc.returncode == exits.EXIT_FAILED, proc.stderr[-3000:]
    rows = table.read_rows(str(path))
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["launcher"] == "tf_config"
    error = rows[0]["error"]
    assert error.startswith("worker 1: exit 17 before it reported") and "worker output: /" in error, error
    log_folder = error.split("worker output: ")[1].split("worker-<rank>.log")[0]
    assert os.path.isfile(os.path.join(log_folder, "worker-1.log"))  # kept for a failed run
    assert time.perf_counter() - start < 300
