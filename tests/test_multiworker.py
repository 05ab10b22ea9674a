"""--strategy multi_worker: MWMS over Ray Train workers, the same loop, one row from the driver.

Fast tests check the pure parts (config checks, resource check, row assembly, CLI bad input).
The Ray tests launch real 2-worker runs (1 CPU each) against one Ray cluster started once for
this module: a crash with a restart from the checkpoint, a stalled worker under a short collective
timeout (compared step for step with the 2-replica MirroredStrategy run), and a crash with no
restarts allowed through the CLI. Each Ray launch costs 35-55 s on the 2-core development VM.
"""

import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
from cifar_files import write_cifar
from helpers import mirrored_loss, python

from bench.config import exits, options, setup_checks, validation
from bench.config.options import ConfigError, RunConfig
from bench.distributed import aggregate, driver, faults, scratch
from bench.results import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MW = dict(strategy="multi_worker", workers=2, n=1, batch_size=16)


# ---------------------------------------------------------------------------
# Without Ray


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"strategy": "multi_worker", "workers": 0}, "--workers must be >= 1"),
        ({"workers": 2}, "only with --strategy=multi_worker"),
        ({"strategy": "mirrored", "gpus_per_worker": 1}, "only with --strategy=multi_worker"),
        ({"address": "auto"}, "only with --strategy=multi_worker"),
        ({**MW, "batch_size": 15}, "divide evenly over 2 replicas"),
        ({**MW, "gpus_per_worker": 2, "batch_size": 6}, "divide evenly over 4 replicas"),
        ({**MW, "cpus_per_worker": 0}, "cpus_per_worker"),
        ({**MW, "max_failures": -1}, "max_failures"),
        ({**MW, "collective_timeout_s": 0}, "collective_timeout_s"),
        ({**MW, "restart_timeout_s": 0}, "restart_timeout_s"),
        ({"restart_timeout_s": 30.0}, "only with --strategy=multi_worker"),
        ({**MW, "num_gpus": 1}, "--gpus_per_worker"),
        ({**MW, "address": "nohostport"}, "give auto, ray://host:port or host:port"),
        ({**MW, "loop": "fit"}, "custom loop only"),
        ({**MW, "fail_worker_at_step": "1"}, "RANK:STEP"),
        ({**MW, "fail_worker_at_step": "1:3:explode"}, "RANK:STEP"),
        ({**MW, "fail_worker_at_step": "2:3"}, "rank 2 but there are 2 workers"),
    ],
)
def test_multi_worker_fields_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        validation.validate(RunConfig(**changes))


def test_fault_spec_parses():
    assert options.parse_worker_fault("1:6") == (1, 6, "exit")
    assert options.parse_worker_fault("0:2:stall") == (0, 2, "stall")
    assert faults.fault_marks(RunConfig(**MW, fail_worker_at_step="1:7")) == {7}


def test_resource_check_refuses_what_the_cluster_cannot_hold():
    cfg = RunConfig(**MW, cpus_per_worker=2)
    setup_checks.check_ray_request(cfg, {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}])
    with pytest.raises(ConfigError, match="need 4 CPUs and 0 GPUs; the Ray cluster has 2 CPUs"):
        setup_checks.check_ray_request(cfg, {"CPU": 2.0}, [{"CPU": 2.0}])
    with pytest.raises(ConfigError, match="need 2 CPUs and 2 GPUs"):
        setup_checks.check_ray_request(RunConfig(**MW, gpus_per_worker=1), {"CPU": 8.0, "GPU": 1.0})
    with pytest.raises(ConfigError, match="each worker must fit on one node"):  # 3 + 1 CPUs, 2 per worker
        setup_checks.check_ray_request(cfg, {"CPU": 4.0}, [{"CPU": 3.0}, {"CPU": 1.0}])


def _report(rank, host, peak, attempt=1, **row):
    base = {
        "run_id": "abc123abc123",
        "status": "ok",
        "error": "",
        "num_replicas": 2,
        "flops_per_image": 1e9,
        "images_per_sec": 50.0,
        "peak_gflops": peak,
        "host": host,
    }
    return {"rank": rank, "attempt": attempt, "host": host, "row": {**base, **row}}


def test_row_assembly_sums_peaks_and_names_the_hosts():
    cfg = RunConfig(**MW)
    state = {"starts": {0: 2, 1: 2}, "reports": {0: _report(0, "node1", 100.0, 2), 1: _report(1, "node2", 60.0, 2)}}
    row = aggregate.multi_worker_row(cfg, "cmd", state)
    assert row["peak_gflops"] == 160.0 and row["mfu"] == pytest.approx(1e9 * 50 / 160e9)
    assert row["host"] == "node1 (+1 host)" and row["num_workers"] == 2 and row["restarts"] == 1
    assert row["command"] == "cmd" and row["num_replicas"] == 2 and row["num_hosts"] == 2
    assert row["peak_scope"] == "sum over 2 workers on 2 hosts (1 per host)"
    table.format_row(row)  # every column is in the schema
    # a report left from an earlier attempt does not count
    stale = {"starts": {0: 2, 1: 2}, "reports": {0: _report(0, "node1", 100.0, 2), 1: _report(1, "node2", 60.0, 1)}}
    assert aggregate.multi_worker_row(cfg, "", stale)["peak_gflops"] is None
    one_host = {"starts": {0: 1}, "reports": {0: _report(0, "vm", 100.0), 1: _report(1, "vm", 100.0)}}
    shared = aggregate.multi_worker_row(cfg, "", one_host)
    assert shared["host"] == "vm (1 host)" and shared["num_hosts"] == 1 and "sharing" in shared["peak_scope"]
    # the chief finished but the worker group failed: the row says failed
    failed = aggregate.multi_worker_row(cfg, "", one_host, error="worker 1: died")
    assert failed["status"] == "failed" and failed["error"] == "worker 1: died"
    # no report at all: a failed row from the configuration
    empty = aggregate.multi_worker_row(cfg, "", {"starts": {}, "reports": {}}, error="worker 0: gone")
    assert empty["status"] == "failed" and empty["num_replicas"] == 2 and empty["peak_gflops"] is None
    table.format_row(empty)


def test_older_results_files_take_the_new_columns(tmp_path):
    path = tmp_path / "summary.csv"
    old = [c for c in table.SCHEMA if c not in ("num_workers", "restarts", "num_hosts", "peak_scope")]
    path.write_text(",".join(old) + "\nold1,t,ok" + "," * (len(old) - 3) + "\n")
    table.upgrade(str(path))  # on request only: an append alone refuses the older file
    assert table.append_row(str(path), {"run_id": "new1", "status": "ok", "num_workers": 2, "restarts": 0})
    rows = table.read_rows(str(path))
    assert tuple(rows[0]) == table.SCHEMA and rows[0]["num_workers"] == "" and rows[1]["num_workers"] == "2"


cli = functools.partial(python, "-m", "bench.run", timeout=120)


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never says anything (not a Ray cluster)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_bad_multi_worker_input_is_one_line_exit_2_nothing_written(tmp_path, silent_port):
    results_file = tmp_path / "summary.csv"
    mw = ["--strategy=multi_worker", "--data=synthetic", f"--results={results_file}"]
    cases = {
        "no workers": (mw + ["--workers=0"], "--workers must be >= 1", 10),
        "workers with another strategy": (["--workers=2", "--data=synthetic"], "only with --strategy=multi_worker", 10),
        "GPUs per worker with another strategy": (
            ["--strategy=mirrored", "--gpus_per_worker=1"],
            "only with --strategy=multi_worker",
            10,
        ),
        # a local Ray starts (about 10 s here) and the request is refused before any worker starts
        "more than the cluster has": (
            mw + ["--workers=2", "--cpus_per_worker=4", "--gpus_per_worker=1"],
            "need 8 CPUs and 2 GPUs; the Ray cluster has",
            60,
        ),
        "nothing listens at the address": (mw + ["--workers=2", "--address=127.0.0.1:1"], "no Ray cluster answers", 30),
        "bad address": (mw + ["--workers=2", "--address=nowhere"], "host:port", 10),
        # the port answers but no Ray speaks there: Ray's own retries are cut off at 30 s
        "not a Ray cluster": (mw + ["--workers=2", f"--address=127.0.0.1:{silent_port}"], "--address=", 40),
    }
    failures = []
    for name, (args, expected, limit) in cases.items():
        start = time.perf_counter()
        proc = cli(*args)
        took = time.perf_counter() - start
        lines = proc.stderr.strip().splitlines()
        if proc.returncode != 2 or len(lines) != 1 or expected not in lines[0] or took > limit:
            failures.append((name, proc.returncode, round(took, 1), proc.stderr[-800:]))
    assert not failures, failures
    assert not results_file.exists()


# ---------------------------------------------------------------------------
# Real 2-worker runs on one Ray cluster


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray cluster (2 CPUs) for this module's runs; its GCS address for CLI drivers."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_killed_worker_restarts_from_the_checkpoint_and_workers_agree(ray_address, tmp_path):
    folder, _ = write_cifar(str(tmp_path / "cifar"), train_per_file=(64, 64), test=30)
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(
        **MW,
        data="files",
        cifar_dir=folder,
        steps=12,
        steps_per_loop=2,
        warmup_steps=2,
        eval_every_epochs=0.5,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_every_steps=4,
        max_failures=1,
        fail_worker_at_step="1:6",
        results=path,
    )
    out = io.StringIO()
    outcome = driver.run(cfg, command="test", out=out)
    text = out.getvalue()
    rows = table.read_rows(path)
    assert outcome.status == "ok" and outcome.exit_code == 0, text
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok" and row["strategy"] == "multi_worker" and row["data"] == "files"
    assert (row["num_workers"], row["num_replicas"], row["restarts"], row["total_steps"]) == ("2", "2", "1", "12")
    assert "1:6" in outcome.fired  # worker 1 exited at step 6 once; the restarted group passed it
    assert "resumed from step 4 of 12" in text  # the checkpoint before the crash
    # evaluation covers the 30 test images exactly once over both workers (fillers masked)
    evals = [line for line in text.splitlines() if "eval at step" in line]
    assert len(evals) >= 2 and all(line.rstrip().endswith(", 30 images)") for line in evals), evals
    # weights, BN moving statistics and optimizer state identical on both workers at the last save
    digests = [outcome.reports[r]["digest"] for r in (0, 1)]
    assert digests[0] and digests[0] == digests[1], digests
    assert set(digests[0]) == {"trainable", "bn_moving", "optimizer"}
    # peak: every worker's own measured peak, summed; timing from the chief's windows
    peaks = [float(outcome.reports[r]["row"]["peak_gflops"]) for r in (0, 1)]
    assert float(row["peak_gflops"]) == pytest.approx(sum(peaks), rel=1e-5)
    assert row["host"].endswith("(1 host)") and float(row["images_per_sec"]) > 0
    assert json.load(open(tmp_path / "ckpt" / "run.json"))["finished"] is True
    # one MLPerf log, the chief's of the attempt that finished (resumed from the checkpoint), accepted by MLPerf's checker
    from test_mlperf import check, one

    log = tmp_path / row["mlperf_log"]
    assert one(log, "run_start")[1]["resumed_from_step"] == 4 and one(log, "run_stop")[1]["status"] == "success"
    assert check(log)[0], check(log)[1]
    again = driver.run(cfg, out=io.StringIO())  # the same command again: nothing runs, nothing written
    assert again.status == "skipped" and len(table.read_rows(path)) == 1


@pytest.mark.slow
def test_stalled_worker_fails_within_the_timeout_and_matches_mirrored(ray_address, tmp_path, monkeypatch):
    from bench.hardware import devices, peak

    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(cache))
    key = (
        f"CPU:{devices.cpu_model_name()}|tf{devices.import_tensorflow().__version__}"
        + ("|onednn" if devices.onednn_enabled() else "")
        + "|intra1"
        + f"|float32|{peak.METHOD}"
    )  # a worker's key
    os.makedirs(cache)
    (cache / "peak.json").write_text(json.dumps({key: {"gflops": 100.0, "measured_at": table.utc_now(), "load": 0}}))
    assert os.path.dirname(peak.cache_path()) == str(cache)
    path = str(tmp_path / "summary.csv")
    timeout = 15
    cfg = RunConfig(
        **MW,
        data="synthetic",
        steps=6,
        steps_per_loop=1,
        warmup_steps=1,
        collective_timeout_s=timeout,
        fail_worker_at_step="1:2:stall",
        results=path,
    )
    outcome = driver.run(cfg, out=io.StringIO())
    rows = table.read_rows(path)
    assert outcome.status == "failed" and outcome.exit_code == exits.EXIT_FAILED
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["error"], rows
    stalled_for = outcome.ended_at - outcome.fired["1:2:stall"]
    assert stalled_for < timeout + 30, stalled_for
    # The chief's loss over steps 1-2 (its last window before the stall) is the 2-replica mirrored run's:
    # same seed, same global batch, synthetic batches seeded by the global replica id.
    assert rows[0]["total_steps"] == "2"
    assert rows[0]["peak_gflops"] == ""  # the stalled worker never reported its peak: no partial sum
    assert float(rows[0]["final_train_loss"]) == pytest.approx(mirrored_loss(str(tmp_path), 2), rel=1e-4)


@pytest.mark.e2e
@pytest.mark.slow
def test_crash_without_restarts_is_a_failed_row_exit_1_through_the_cli(ray_address, tmp_path):
    path = tmp_path / "summary.csv"
    start = time.perf_counter()
    proc = cli(
        "--strategy=multi_worker",
        "--workers=2",
        f"--address={ray_address}",
        "--data=synthetic",
        "--n=1",
        "--batch_size=16",
        "--steps=8",
        "--steps_per_loop=1",
        "--warmup_steps=1",
        "--fail_worker_at_step=1:3",
        f"--results={path}",
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = table.read_rows(str(path))
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["restarts"] == "0"
    assert rows[0]["num_workers"] == "2" and rows[0]["command"].endswith(f"--results={path}")
    assert time.perf_counter() - start < 240


# ---------------------------------------------------------------------------
# Sweeps: each multi_worker trial is one multi-worker run


def test_sweep_space_gives_multi_worker_trials_their_own_keys_and_resources():
    from sweeps import multiworker_trials, space

    axes = {
        "strategy": ["default", "multi_worker"],
        "workers": [1, 2],
        "steps": [20],
        "batch_size": [16],
        "cpus_per_worker": [1.0],
        "max_failures": [1],
    }
    trials = space.build_trials(axes, 1, "s")
    keys = [t.key for t in trials]
    assert len(trials) == 3 and "strategy=default,seed=0,workers=none" in keys[0]  # the workers axis collapsed
    assert [t.config.workers for t in trials] == [None, 1, 2] and trials[0].config.max_failures == 0
    assert keys[2].endswith("strategy=multi_worker,seed=0,workers=2") and trials[2].config.max_failures == 1
    runs = {t.key: json.loads(json.dumps(t.config.__dict__)) for t in trials}
    resources = multiworker_trials.trial_resources(runs, {"cpu": 2, "gpu": 0})
    assert resources({"trial": keys[0]}).required_resources == {"CPU": 2.0}
    assert resources({"trial": keys[2]}).required_resources == {"memory": float(multiworker_trials.DRIVER_MEMORY)}

    class FakeRay:
        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 1.0}}]

        @staticmethod
        def cluster_resources():
            return {"CPU": 1.0}

    with pytest.raises(ConfigError, match="need 2 CPUs"):
        multiworker_trials.check_workers_fit(runs, FakeRay)


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_of_worker_counts_writes_one_row_per_trial(tmp_path):
    path = tmp_path / "summary.csv"
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.tune",
            "--strategy=multi_worker",
            "--workers=2",
            "--scheduler=asha",
            "--name=bad",
            f"--storage={tmp_path}/ray",
            f"--results={path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "multi_worker" in lines[0], bad.stderr[-2000:]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeps.tune",
            "--strategy=multi_worker",
            "--workers=1,2",
            "--n=1",
            "--shortcut=B",
            "--block=preact",
            "--data=synthetic",
            "--steps=6",
            "--warmup_steps=2",
            "--steps_per_loop=2",
            "--batch_size=16",
            "--name=mw",
            f"--storage={tmp_path}/ray",
            f"--results={path}",
            "--noreport",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table.read_rows(str(path))
    assert sorted((r["num_workers"], r["num_replicas"]) for r in rows) == [("1", "1"), ("2", "2")]
    assert all(r["status"] == "ok" and r["sweep"] == "mw" and r["strategy"] == "multi_worker" for r in rows)


@pytest.mark.e2e
def test_a_killed_workers_scratch_folders_are_removed_by_the_next_worker(tmp_path, monkeypatch):
    """A worker killed mid-run (a lost node, os._exit) leaves its temporary folder; the next one removes it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{scratch.PREFIX}{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "unused.csv").write_text("x")
    folders = scratch.ScratchFolders()
    mine = folders.new()
    try:
        assert not stale.exists() and os.path.isdir(mine)
        assert os.path.basename(mine).startswith(f"{scratch.PREFIX}{os.getpid()}-")
        again = folders.new()  # a live process's folder is kept
        assert os.path.isdir(mine) and os.path.isdir(again)
    finally:
        folders.remove_all()
    assert not os.path.exists(mine) and not os.path.exists(again) and folders.folders == []
