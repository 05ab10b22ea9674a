"""bench.run end to end: rows, timing, evaluation, divergence, bad input, checkpoint/resume after SIGKILL."""

import math
import os
import signal
import subprocess
import sys
import time

import helpers
import pytest
from cifar_files import write_cifar

from bench.config import exits
from bench.config.options import ConfigError, RunConfig
from bench.hardware import devices
from bench.results import table
from bench.runner import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n=1, batch_size=16, steps_per_loop=3, warmup_steps=2)


def test_mirrored_synthetic_run_writes_one_true_row(tmp_path):
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(strategy="mirrored", cpu_replicas=2, data="synthetic", steps=14, results=path, **SMALL)
    out = benchmark.run(cfg, command="test")
    assert out.status == "ok" and out.exit_code == 0
    rows = table.read_rows(path)
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok" and row["num_replicas"] == "2" and row["strategy"] == "mirrored"
    assert row["data"] == "synthetic" and row["test_accuracy"] == ""
    assert row["depth"] == "8" and int(row["params"]) > 0 and int(row["flops_per_image"]) > 0
    assert row["device"].startswith("CPU") and row["tf_version"] and row["python_version"]
    # timing: the first (compiling) step and the warm-up are outside the timed windows
    measured = out.measured
    assert int(row["timed_steps"]) == 14 - 2 == sum(s for s, _ in measured.windows)
    assert measured.compile_s is not None and sum(s for s, _ in measured.warmup) == 1
    clock_rate = sum(s for s, _ in measured.windows) * 16 / sum(t for _, t in measured.windows)
    assert float(row["images_per_sec"]) == pytest.approx(clock_rate, rel=1e-4)
    assert float(row["compile_s"]) > 0
    assert float(row["train_time_s"]) >= sum(t for _, t in measured.windows) + measured.compile_s - 1e-6
    assert 0 < float(row["mfu"]) < 1.5
    assert float(row["peak_gflops"]) > 0
    assert row["onednn"] == str(devices.onednn_enabled()).lower()
    assert row["batch_norm"] == "fused"  # auto, on a CPU


def test_files_run_evaluates_and_stops_at_the_target(tmp_path):
    folder, _ = write_cifar(str(tmp_path / "cifar"), train_per_file=(64, 64), test=40)
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(
        data="files",
        cifar_dir=folder,
        steps=40,
        results=path,
        target_accuracy=0.01,
        eval_every_epochs=1.0,
        tensorboard_dir=str(tmp_path / "tb"),
        **SMALL,
    )
    out = benchmark.run(cfg)
    row = table.read_rows(path)[0]
    assert out.status == "ok" and row["data"] == "files"
    acc = float(row["test_accuracy"])
    assert 0.01 <= acc <= 1 and float(row["best_test_accuracy"]) >= acc
    assert float(row["time_to_target_s"]) > 0
    # the target is met at the first eval (one epoch = 8 steps), so the run stops early
    assert sum(s for s, _ in out.measured.windows + out.measured.warmup) + 1 == 8
    assert row["total_steps"] == "8" and float(row["epochs"]) == 1.0
    assert os.listdir(tmp_path / "tb")


def test_non_finite_loss_is_recorded_as_diverged(tmp_path):
    path = str(tmp_path / "summary.csv")
    out = benchmark.run(RunConfig(data="synthetic", steps=12, results=path, inject_nan_at_step=6, **SMALL))
    assert out.status == "diverged" and out.exit_code == exits.EXIT_DIVERGED
    row = table.read_rows(path)[0]
    assert row["status"] == "diverged" and "non-finite" in row["error"]


@pytest.mark.slow  # two runs and a peak measured: end to end
def test_a_cached_peak_below_the_achieved_rate_is_measured_again(tmp_path, monkeypatch):
    import json

    from bench.hardware import peak

    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path / "cache"))
    key = (
        f"CPU:{devices.cpu_model_name()}|tf{devices.import_tensorflow().__version__}"
        + ("|onednn" if devices.onednn_enabled() else "")
        + f"|float32|{peak.METHOD}"
    )  # bench.hardware.peak.device_key's
    os.makedirs(tmp_path / "cache")
    recent = {"gflops": 1.0, "measured_at": table.utc_now(), "load": 0.1}  # a fresh, quiet, but low reading
    (tmp_path / "cache" / "peak.json").write_text(json.dumps({key: recent}))
    out = benchmark.run(RunConfig(data="synthetic", steps=8, results=str(tmp_path / "s.csv"), **SMALL))
    assert 0 < float(out.row["mfu"]) <= 1 and out.row["peak_gflops"] > 1.0
    entry = json.loads((tmp_path / "cache" / "peak.json").read_text())[key]
    assert entry["gflops"] == out.row["peak_gflops"] and entry["readings"] == 2
    assert out.row["peak_readings"] == 2 and out.row["peak_measured_at"] == entry["measured_at"]


def test_mixed_float16_on_cpu_warns(capsys):
    devices.warn_if_emulated(RunConfig(precision="mixed_float16"), "CPU")
    assert "mixed_float16 is emulated on x86 CPUs" in capsys.readouterr().err
    from bench.hardware import cpu_features

    devices.warn_if_emulated(RunConfig(precision="mixed_bfloat16"), "CPU")  # warned exactly when the CPU lacks bf16
    warned = "mixed_bfloat16 is emulated" in capsys.readouterr().err
    assert warned == (cpu_features.emulated_precision("mixed_bfloat16") is not None)


def cli(*args, timeout=300, cwd=ROOT, program=("-m", "bench.run")):
    return helpers.python(*program, *args, env={"TF_CPP_MIN_LOG_LEVEL": None}, cwd=cwd, timeout=timeout)


def bad_inputs(tmp):
    folder, _ = write_cifar(os.path.join(tmp, "corrupt"), train_per_file=(4,), test=2)
    with open(os.path.join(folder, "test_batch.bin"), "ab") as fh:
        fh.write(b"xyz")
    foreign = os.path.join(tmp, "foreign.csv")
    with open(foreign, "w") as fh:
        fh.write("a,b\n1,2\n")
    blocker = os.path.join(tmp, "blocker")
    open(blocker, "w").close()
    not_utf8 = os.path.join(tmp, "flags.txt")
    with open(not_utf8, "wb") as fh:
        fh.write(b"--n=1\n--seed=\xff\xfe\n")
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    binary = os.path.join(tmp, "binary.csv")
    with open(binary, "wb") as fh:
        fh.write(bytes(range(128, 256)))
    run_files = {}
    for name, text in (("not_json", "{not json"), ("not_an_object", "[1,2]")):
        os.makedirs(os.path.join(tmp, name))
        with open(os.path.join(tmp, name, "run.json"), "w") as fh:
            fh.write(text)
        run_files[name] = os.path.join(tmp, name)
    return {
        "unknown strategy": (["--strategy=tpu"], "strategy"),
        "multi_worker without --workers": (["--strategy=multi_worker"], "needs --workers"),
        "unknown block": (["--block=wide"], "block"),
        "unknown precision": (["--precision=fp64"], "precision"),
        "n < 1": (["--n=0"], "--n must be >= 1"),
        "batch not divisible": (["--strategy=mirrored", "--cpu_replicas=2", "--batch_size=15"], "divide evenly"),
        "more GPUs than visible": (["--strategy=mirrored", "--num_gpus=2"], "only 0 GPU"),
        "cpu_replicas < 1": (["--cpu_replicas=0"], "cpu_replicas"),
        "cpu_replicas without mirrored": (["--cpu_replicas=2"], "needs --strategy=mirrored"),
        "steps <= warm-up": (["--steps=5", "--warmup_steps=10"], "warm-up"),
        "missing CIFAR folder": (["--data=files", f"--cifar_dir={tmp}/nope"], "not a folder"),
        "corrupt CIFAR file": (["--data=files", f"--cifar_dir={folder}"], "test_batch.bin"),
        "unwritable results": ([f"--results={blocker}/summary.csv"], "not a writable folder"),
        "foreign header": ([f"--results={foreign}"], "not a results table"),
        "stray argument": (["extra"], "unexpected arguments"),
        "bad profile steps": (["--profile_steps=9"], "profile_steps"),
        "unknown oneDNN setting": (["--onednn=maybe"], "onednn"),
        "fused BN with sync BN": (["--batch_norm=fused", "--sync_bn"], "cannot synchronize"),
        "unwritable tensorboard dir": ([f"--tensorboard_dir={blocker}/tb"], "not a writable folder"),
        "checkpoint dir is a file": ([f"--checkpoint_dir={blocker}"], "not a writable folder"),
        "fit with XLA over replicas": (
            ["--loop=fit", "--xla", "--strategy=mirrored", "--cpu_replicas=2"],
            "needs one replica",
        ),
        "results under a missing folder of /proc": (["--results=/proc/no/such/dir/s.csv"], "not a writable folder"),
        "results in /proc (root may 'access' it)": (["--results=/proc/newcomer.csv"], "not a writable folder"),
        "tfds not prepared, offline": (["--data=tfds", f"--tfds_dir={tmp}/tfds"], "cannot be downloaded"),
        "not a number": (["--steps=ten"], "steps"),
        "fault on a replica that does not exist": (["--inject_inf_grad_at_step=5:3"], "only 1 replicas"),
        "device augmentation with fit": (["--loop=fit", "--augment=device"], "--loop=ctl only"),
        "inference with a training option": (["--mode=inference", "--loop=fit"], "not for --mode=inference"),
        "negative thread count": (["--intra_op_threads=-1"], "intra_op_threads"),
        "fit whose chunks leave nothing to time": (["--loop=fit", "--steps=15"], "none to time"),
        "NaN injection where nothing would inject it": (
            ["--mode=inference", "--inject_nan_at_step=3"],
            "not for --mode=inference",
        ),
        # issue #16: each of these used to run, hang or end in a traceback
        "profile window past the last step": (["--profile_steps=3,100"], "the profiler would never stop"),
        "profile window over every timed step": (
            ["--steps=12", "--warmup_steps=2", "--profile_steps=3,12"],
            "nothing would be timed",
        ),
        "negative seed": (["--seed=-1"], "--seed must be in [0, 4294967295]"),
        "seed past NumPy's range": (["--seed=4294967296"], "--seed must be in [0, 4294967295]"),
        "infinite epochs": (["--epochs=inf"], "--epochs must be a finite number"),
        "infinite eval cadence": (["--eval_every_epochs=inf"], "--eval_every_epochs must be a finite number"),
        "epochs making an absurd length": (["--epochs=1e300"], "makes more than"),
        "steps past int64": (["--steps=100000000000000000000"], "--steps must be <= 1000000000"),
        "absurd length with checkpoints": (
            ["--steps=1000000000000", f"--checkpoint_dir={tmp}/ckpt"],
            "--steps must be <= 1000000000",
        ),
        "flag file not UTF-8": ([f"--flagfile={not_utf8}"], f"cannot read --flagfile={not_utf8}"),
        "flag file a FIFO": ([f"--flagfile={fifo}"], "is not a file"),
        "run.json not JSON": ([f"--checkpoint_dir={run_files['not_json']}"], "run.json is not a readable run file"),
        "run.json not an object": (
            [f"--checkpoint_dir={run_files['not_an_object']}"],
            "run.json is not a run file of this harness",
        ),
        "results a FIFO": ([f"--results={fifo}"], "not a regular file"),
        # issue #24: the MLPerf log's labels, the lr factor, the testing-only forced divergence
        "lr_scale zero": (["--lr_scale=0"], "--lr_scale must be in (0, 100]"),
        "lr_scale past the bound": (["--lr_scale=1000"], "--lr_scale must be in (0, 100]"),
        "empty submission org": (["--submission_org="], "--submission_org must not be empty"),
        "platform name of two lines": (["--submission_platform=a\tb"], "--submission_platform must be one printable"),
        "diverge seeds not numbers": (["--diverge_seeds=one"], "--diverge_seeds takes SEED[,SEED...]"),
        "diverge seeds in inference": (["--mode=inference", "--diverge_seeds=0"], "--loop=ctl --mode=train only"),
        "results a binary file": ([f"--results={binary}"], "is not a results table (not UTF-8 text"),
    }


@pytest.mark.e2e
def test_every_bad_input_is_one_line_exit_2_nothing_written(tmp_path):
    cases = bad_inputs(str(tmp_path))
    results_file = tmp_path / "summary.csv"
    failures = []
    for name, (args, expected) in cases.items():
        extra = [] if any(a.startswith("--results") for a in args) else [f"--results={results_file}"]
        data = [] if any(a.startswith("--data") for a in args) else ["--data=synthetic"]
        steps = [] if any(a.startswith("--steps=") for a in args) else ["--steps=20"]
        proc = cli(*args, *extra, *data, *steps)
        lines = proc.stderr.strip().splitlines()
        if proc.returncode != 2 or len(lines) != 1 or expected not in lines[0] or "Traceback" in proc.stderr:
            failures.append((name, proc.returncode, proc.stderr[-800:]))
    assert not failures, failures
    assert not results_file.exists()
    assert (tmp_path / "foreign.csv").read_text() == "a,b\n1,2\n"


@pytest.mark.e2e
def test_onednn_setting_takes_effect_and_is_recorded(tmp_path):
    path = str(tmp_path / "summary.csv")
    args = [
        "--data=synthetic",
        "--n=1",
        "--batch_size=16",
        "--steps=4",
        "--warmup_steps=2",
        "--steps_per_loop=1",
        f"--results={path}",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT, devices.ONEDNN_ENV: "1"}  # the flag wins over the variable
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--onednn=off"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "oneDNN" not in proc.stdout.split("devices", 1)[1].splitlines()[0]
    assert [r["onednn"] for r in table.read_rows(path)] == ["false"]
    # In this process TensorFlow is loaded already: the other setting is refused, nothing written.
    other = "off" if devices.onednn_enabled() else "on"
    cfg = RunConfig(data="synthetic", steps=4, onednn=other, results=path, **SMALL)
    with pytest.raises(ConfigError, match="cannot take effect"):
        benchmark.run(cfg)
    assert len(table.read_rows(path)) == 1


def wait_for_checkpoint(folder, at_least, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        index = os.path.join(folder, "checkpoint")
        if os.path.exists(index):
            with open(index) as fh:
                text = fh.read()
            steps = [int(x.split("ckpt-")[1].split('"')[0]) for x in text.splitlines() if "ckpt-" in x]
            if steps and max(steps) >= at_least:
                return True
        time.sleep(0.2)
    return False


@pytest.mark.e2e
def test_sigkilled_run_resumes_and_writes_exactly_one_row(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    path = str(tmp_path / "summary.csv")
    args = [
        "--data=synthetic",
        "--n=1",
        "--batch_size=16",
        "--steps=60",
        "--steps_per_loop=2",
        "--warmup_steps=2",
        "--checkpoint_every_steps=4",
        f"--checkpoint_dir={ckpt}",
        f"--results={path}",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert wait_for_checkpoint(ckpt, 8, proc), proc.communicate()[1][-2000:] if proc.poll() is not None else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(path)  # the killed run wrote no row
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step" in again.stdout
    resumed_at = int(again.stdout.split("resumed from step ")[1].split()[0])
    assert 8 <= resumed_at < 60
    rows = table.read_rows(path)
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["total_steps"] == "60"
    third = cli(*args)
    assert third.returncode == 0 and "already finished" in third.stdout
    assert len(table.read_rows(path)) == 1


@pytest.mark.e2e
@pytest.mark.parametrize("xla", [False, True], ids=["plain", "xla"])
def test_fp16_overflow_on_one_replica_is_skipped_everywhere_through_the_cli(tmp_path, xla):
    path = str(tmp_path / "summary.csv")
    proc = cli(
        "--strategy=mirrored",
        "--cpu_replicas=2",
        "--precision=mixed_float16",
        "--inject_inf_grad_at_step=5:1",
        "--steps=12",
        "--data=synthetic",
        "--n=1",
        "--batch_size=16",
        "--steps_per_loop=2",
        "--warmup_steps=2",
        f"--results={path}",
        *(["--xla"] if xla else []),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = table.read_rows(path)
    assert row["status"] == "ok" and row["skipped_steps"] == "1" and row["augment"] == "none"
    assert math.isfinite(float(row["final_train_loss"]))
    assert "1 step(s) skipped" in proc.stdout


@pytest.mark.e2e
def test_inference_mode_times_each_batch_with_threads_as_asked(tmp_path):
    from resnet import cost

    path = str(tmp_path / "summary.csv")
    proc = cli(
        "--mode=inference",
        "--batch_size=1",
        "--steps=30",
        "--warmup_steps=5",
        "--n=1",
        "--data=synthetic",
        "--intra_op_threads=1",
        "--inter_op_threads=1",
        f"--results={path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = table.read_rows(path)
    assert row["mode"] == "inference" and row["global_batch_size"] == "1"
    assert row["intra_op_threads"] == "1" and row["inter_op_threads"] == "1"
    assert int(row["timed_steps"]) == 30 - 5 and row["steps_per_loop"] == "1"  # one batch per window: latency
    assert 0 < float(row["step_time_p50_ms"]) <= float(row["step_time_p99_ms"])
    assert float(row["images_per_sec"]) == pytest.approx(1000 / float(row["step_time_p50_ms"]), rel=0.5)
    assert int(row["flops_per_image"]) == cost.cost(1).forward_flops and row["final_train_loss"] == ""
    assert row["command"].startswith("python -m bench.run --mode=inference")


@pytest.mark.e2e
def test_ctrl_c_stops_at_the_next_window_with_a_row_and_a_checkpoint(tmp_path):
    ckpt, path = str(tmp_path / "ckpt"), str(tmp_path / "summary.csv")
    args = [
        "--data=synthetic",
        "--n=1",
        "--batch_size=16",
        "--steps=100000",
        "--steps_per_loop=2",
        "--warmup_steps=2",
        "--checkpoint_every_steps=6",
        f"--checkpoint_dir={ckpt}",
        f"--results={path}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_checkpoint(ckpt, 6, proc), proc.communicate()[1][-2000:] if proc.poll() is not None else ""
        os.kill(proc.pid, signal.SIGINT)
        sent = time.time()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert time.time() - sent < 30 and "Traceback" not in stderr
    [row] = table.read_rows(path)
    steps = int(row["total_steps"])
    assert row["status"] == "interrupted" and "SIGINT" in row["error"] and 6 <= steps < 100000
    assert int(row["timed_steps"]) > 0 and float(row["images_per_sec"]) > 0
    assert "status" in stdout and "interrupted" in stdout  # the summary was printed
    with open(os.path.join(ckpt, "checkpoint")) as fh:
        assert f"ckpt-{steps}" in fh.read()  # saved where it stopped
    # SIGTERM (a preempted job) the same way, exit 143; the run resumes from the checkpoint and is a new row
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_checkpoint(ckpt, steps + 6, proc)
        os.kill(proc.pid, signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and f"resumed from step {steps}" in stdout
    second = table.read_rows(path)
    assert len(second) == 2 and second[1]["status"] == "interrupted" and second[1]["run_id"] != row["run_id"]
    assert int(second[1]["total_steps"]) > steps


@pytest.mark.parametrize("replicas", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2 replicas: end to end
def test_fit_baseline_writes_a_fit_row(tmp_path, replicas):
    folder, _ = write_cifar(str(tmp_path / "cifar"), train_per_file=(64,), test=20)
    path = str(tmp_path / "summary.csv")
    strategy = "mirrored" if replicas == 2 else "default"
    cfg = RunConfig(
        loop="fit",
        strategy=strategy,
        cpu_replicas=replicas,
        data="files",
        cifar_dir=folder,
        steps=12,
        results=path,
        n=1,
        batch_size=16,
        steps_per_loop=3,
        warmup_steps=3,
    )
    out = benchmark.run(cfg)
    row = table.read_rows(path)[0]
    assert out.status == "ok" and row["loop"] == "fit" and row["num_replicas"] == str(replicas)
    assert int(row["timed_steps"]) > 0 and float(row["images_per_sec"]) > 0
    hits = float(row["test_accuracy"]) * 20  # over the 20 test images; the batch-filling fillers do not count
    assert 0 <= hits <= 20 and hits == pytest.approx(round(hits), abs=1e-4)
    from test_mlperf import check  # Keras fit calls the controller back: its MLPerf log is as good

    assert check(tmp_path / row["mlperf_log"])[0]


def test_fit_refuses_what_only_the_custom_loop_does(tmp_path):
    from bench.config.options import ConfigError

    with pytest.raises(ConfigError, match="--loop=ctl only"):
        benchmark.run(RunConfig(loop="fit", checkpoint_dir=str(tmp_path), results=str(tmp_path / "s.csv")))


def test_profiled_steps_are_traced_and_not_timed(tmp_path):
    cfg = RunConfig(
        data="synthetic",
        steps=10,
        results=str(tmp_path / "s.csv"),
        profile_steps=(4, 5),
        profile_dir=str(tmp_path / "profile"),
        **SMALL,
    )
    out = benchmark.run(cfg)
    assert out.status == "ok"
    assert sum(s for s, _ in out.measured.untimed) == 2  # steps 4-5
    assert sum(s for s, _ in out.measured.windows) == 10 - 2 - 2  # minus first+warm-up, minus profiled
    traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files if f.endswith(".xplane.pb")]
    assert traces


# ---- issue #16: nothing lost, nothing overwritten, nothing silently wrong; one place decides the exit ----
TINY = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=12", "--warmup_steps=2"]


@pytest.mark.e2e
def test_a_checkpoint_folder_spelled_another_way_is_the_same_run(tmp_path):
    """Exit 3 through the CLI, and `D`, `$PWD/D`, `D/`, `./D` name one run (paths compared normalised)."""
    path = str(tmp_path / "r.csv")
    args = [*TINY, "--inject_nan_at_step=6", f"--results={path}"]
    first = cli(*args, "--checkpoint_dir=D", cwd=tmp_path)
    assert first.returncode == 3, first.stderr[-2000:]
    [row] = table.read_rows(path)
    assert row["status"] == "diverged" and "non-finite" in row["error"]
    for spelling in (str(tmp_path / "D"), "D/", "./D"):
        again = cli(*args, f"--checkpoint_dir={spelling}", cwd=tmp_path)
        assert again.returncode == 0 and "already finished" in again.stdout, (spelling, again.stderr[-2000:])
    assert len(table.read_rows(path)) == 1


@pytest.mark.e2e
def test_a_checkpoint_that_does_not_restore_ends_in_a_failed_row_exit_1(tmp_path):
    ckpt, path = tmp_path / "ckpt", str(tmp_path / "r.csv")
    ckpt.mkdir()
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
    (ckpt / "ckpt-4.index").write_bytes(b"not a checkpoint index")
    (ckpt / "ckpt-4.data-00000-of-00001").write_bytes(b"\0" * 64)
    proc = cli(*TINY, f"--checkpoint_dir={ckpt}", f"--results={path}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    [row] = table.read_rows(path)
    assert row["status"] == "failed" and row["error"] and row["command"].startswith("python -m bench.run")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr and row["error"] in errors[0]
    log = errors[0].split("(traceback: ")[1].rstrip(")")
    assert os.path.isfile(log) and "Traceback" in open(log).read()
    again = cli(*TINY, f"--checkpoint_dir={ckpt}", f"--results={path}")  # not finished: tried again, a new row
    assert again.returncode == 1 and len({r["run_id"] for r in table.read_rows(path)}) == 2


PATCHED = "import sys, bench.run as r; {patch}; sys.argv[0] = 'bench.run'; r.entry()"


@pytest.mark.e2e
def test_an_unexpected_error_before_the_run_is_one_line_exit_1_nothing_written(tmp_path):
    path = tmp_path / "r.csv"
    patch = "import bench.config.validation as v; v.validate = lambda cfg: {}['a bug']"
    proc = cli(*TINY, f"--results={path}", program=("-c", PATCHED.format(patch=patch)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "KeyError: 'a bug'" in lines[0], proc.stderr[-2000:]
    log = lines[0].split("traceback: ")[1].rstrip(")")
    assert "Traceback" in open(log).read()
    os.remove(log)
    assert not path.exists()
    patch = "import bench.config.validation as v; v.validate = lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt)"
    proc = cli(*TINY, f"--results={path}", program=("-c", PATCHED.format(patch=patch)))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "nothing written" in lines[0], proc.stderr[-2000:]
    assert not path.exists()


@pytest.mark.e2e
def test_sigterm_while_setting_up_writes_an_interrupted_row_exit_143(tmp_path):
    path = str(tmp_path / "r.csv")
    patch = (
        "import os, signal, time, bench.hardware.devices as d; "
        "d.setup = lambda cfg: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(60))"
    )
    proc = cli(*TINY, f"--results={path}", program=("-c", PATCHED.format(patch=patch)))
    assert proc.returncode == 143, proc.stderr[-2000:]
    [row] = table.read_rows(path)
    assert row["status"] == "interrupted" and "SIGTERM" in row["error"] and "Traceback" not in proc.stderr
    assert "SIGTERM: abandoning the setup" in proc.stderr  # said where a user looks when the signal arrives


@pytest.mark.e2e
def test_skipped_fp16_steps_keep_the_schedule_on_the_global_step(tmp_path):
    """The lr drops at 50% and 75% of the steps (7 and 10 of 12) although step 5 was skipped: each step's
    applied lr (TensorBoard) follows the global step, while the optimizer made one update fewer."""
    ckpt, tb, path = tmp_path / "ckpt", tmp_path / "tb", str(tmp_path / "r.csv")
    proc = cli(
        *TINY,
        "--strategy=mirrored",
        "--cpu_replicas=2",
        "--precision=mixed_float16",
        "--inject_inf_grad_at_step=5:1",
        f"--checkpoint_dir={ckpt}",
        "--checkpoint_every_steps=5",
        "--steps_per_loop=1",
        f"--tensorboard_dir={tb}",
        f"--results={path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = table.read_rows(path)
    assert row["skipped_steps"] == "1" and row["total_steps"] == "12"
    tf = devices.import_tensorflow()
    reader = tf.train.load_checkpoint(str(ckpt))
    saved = {
        k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "iteration" in k or k.startswith("step/")
    }
    assert any(k.startswith("step/") and v == 12 for k, v in saved.items()), saved
    assert any("iteration" in k and v == 11 for k, v in saved.items()), saved  # the skipped step made no update
    lrs = {}
    for name in os.listdir(tb):
        for event in tf.compat.v1.train.summary_iterator(str(tb / name)):
            for value in event.summary.value:
                if value.tag == "train/learning_rate":
                    lrs[event.step] = float(tf.make_ndarray(value.tensor))
    base = 0.1 * 16 / 128
    expected = {s: base * (1 if s <= 6 else 0.1 if s <= 9 else 0.01) for s in range(1, 13)}
    assert lrs == pytest.approx(expected)


def test_the_plan_computes_each_boundary_without_listing_them():
    """A 10^9-step run with a checkpoint every 5 steps: the next boundary is arithmetic, not a set of 2x10^8."""
    import tracemalloc

    from bench.runner.loop import Plan

    plan = Plan(
        total_steps=10**9, warmup_steps=3, steps_per_loop=10, eval_every=7, checkpoint_every=5, profile_steps=(20, 22)
    )
    tracemalloc.start()
    try:
        marks, step = [], 0
        while step < 30:
            step = plan.next_mark(step)
            marks.append(step)
        assert plan.next_mark(10**9 - 3) == 10**9
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert marks == [1, 3, 5, 7, 10, 14, 15, 19, 20, 21, 22, 25, 28, 30]
    assert peak < 1_000_000


def test_an_interrupted_run_writes_its_row_before_anything_slow_and_a_late_signal_waits(tmp_path, monkeypatch):
    """Real data, stopped by SIGINT after a timed window: no final evaluation and no peak re-measurement before
    the row; a SIGTERM that arrives while the row is written waits for it (row kept, exit 130)."""
    from bench.runner.loop import RunHooks
    from bench.training import trainers

    folder, _ = write_cifar(str(tmp_path / "cifar"))
    monkeypatch.setattr(trainers.CustomLoopTrainer, "evaluate", lambda self: pytest.fail("evaluated"))
    monkeypatch.setattr(benchmark, "_checked_peak", lambda *a: pytest.fail("peak measured again"))
    real_save = table.save_row

    def save_row_under_a_signal(path, row):
        os.kill(os.getpid(), signal.SIGTERM)  # the grace period's end, while the row is being written
        return real_save(path, row)

    monkeypatch.setattr(table, "save_row", save_row_under_a_signal)
    fired = []

    def ctrl_c_once(step):  # Ctrl-C after the first timed window (steps 1 | 2 | 3-5 ...)
        if step >= 3 and not fired:
            fired.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    hooks = RunHooks(on_step=ctrl_c_once)
    path = tmp_path / "s.csv"
    out = benchmark.run(RunConfig(data="files", cifar_dir=folder, steps=12, results=str(path), **SMALL), hooks=hooks)
    [row] = table.read_rows(str(path))
    assert row["status"] == "interrupted" and row["total_steps"] == str(fired[0]) and row["test_accuracy"] == ""
    assert out.exit_code == 130


@pytest.mark.parametrize("loop", ["ctl", "fit"])
def test_sigterm_during_the_final_evaluation_ends_it_and_the_run_is_interrupted(tmp_path, monkeypatch, loop):
    """A preemption during the final evaluation: the evaluation ends at its next chunk (a window's worth of
    batches), nothing of it is recorded, the row says interrupted and the exit status is 143."""
    from helpers import seed_peak_cache

    from bench.training import trainers

    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path / "cache"))
    seed_peak_cache(str(tmp_path / "cache"))  # no peak measurement first (~20 s)
    folder, _ = write_cifar(str(tmp_path / "cifar"), train_per_file=(40, 40), test=100)  # 7 batches of 16
    chunks = []
    if loop == "ctl":
        real_evaluate = trainers.CustomLoopTrainer.evaluate

        def evaluate(self, *args, **kwargs):
            real_loop = self.step_fns.eval_loop

            def eval_loop(iterator, batches):
                sums = real_loop(iterator, batches)
                chunks.append(int(batches))
                if len(chunks) == 1:
                    os.kill(os.getpid(), signal.SIGTERM)  # the preemption, while the test set is evaluated
                return sums

            self.step_fns.eval_loop = eval_loop
            return real_evaluate(self, *args, **kwargs)

        monkeypatch.setattr(trainers.CustomLoopTrainer, "evaluate", evaluate)
    else:
        real_evaluate = trainers.FitTrainer.evaluate

        def evaluate(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real_evaluate(self, *args, **kwargs)

        monkeypatch.setattr(trainers.FitTrainer, "evaluate", evaluate)
    path = str(tmp_path / "s.csv")
    cfg = RunConfig(data="files", cifar_dir=folder, steps=12, loop=loop, results=path, **SMALL)
    out = benchmark.run(cfg)
    [row] = table.read_rows(path)
    assert row["status"] == "interrupted" and "SIGTERM" in row["error"], row["error"]
    assert "final evaluation" in row["error"] and row["test_accuracy"] == "" and row["total_steps"] == "12"
    assert out.exit_code == 143
    if loop == "ctl":
        assert chunks == [3]  # the rest of the test set was not evaluated
    # the MLPerf log closes the abandoned evaluation (no accuracy) and ends aborted; MLPerf's checker accepts it
    from test_mlperf import check, events

    log = os.path.join(os.path.dirname(path), row["mlperf_log"])
    keys = [(k, m) for k, _, m in events(log)]
    assert "eval_accuracy" not in [k for k, _ in keys]
    assert [m.get("abandoned") for k, m in keys if k == "eval_stop"] == [True]
    assert [m["status"] for k, m in keys if k == "run_stop"] == ["aborted"]
    assert check(log)[0], check(log)[1]


@pytest.mark.e2e
def test_a_closed_or_vanished_output_never_costs_the_row(tmp_path):
    """Outputs closed before the start (`>&- 2>&-`) and a reader gone after one byte (`2>&1 | head -c1`):
    the run's row is ok and so is its exit status."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    closed = str(tmp_path / "closed.csv")
    script = 'exec "$0" -m bench.run "$@" >&- 2>&-'
    proc = subprocess.run(
        ["bash", "-c", script, sys.executable, *TINY, f"--results={closed}"], cwd=ROOT, env=env, timeout=300
    )
    [row] = table.read_rows(closed)
    assert proc.returncode == 0 and row["status"] == "ok", row["error"]
    gone = str(tmp_path / "gone.csv")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *TINY, "--steps=40", f"--results={gone}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout.read(1)  # `head -c1`: one byte, then the reader is gone
        proc.stdout.close()
        assert proc.wait(300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    [row] = table.read_rows(gone)
    assert row["status"] == "ok", row["error"]
