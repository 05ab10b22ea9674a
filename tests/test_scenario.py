"""`--scenario`: MLPerf's LoadGen drives the harness's forward function (bench/runner/scenario.py).

Every scenario shortened (a few hundred queries, a short minimum duration) writes a row and LoadGen's
logs; a Server run far above this machine's capacity is INVALID with LoadGen's reason; LoadGen's
accuracy run over CIFAR-format test files counts the same correct images as the training mode's
evaluation of the same checkpoint, and a difference fails the run; bad input is one line, exit 2.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from cifar_files import known_image, write_cifar

from bench.config import options, validation
from bench.config.options import ConfigError, RunConfig
from bench.results import loadgen, table
from bench.runner import benchmark, scenario

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = dict(mode="inference", n=1, batch_size=8, warmup_steps=3, min_duration_s=0.5, min_query_count=200)


def read_row(path):
    [row] = table.read_rows(path)
    return row


@pytest.mark.parametrize(
    "name, extra",
    [
        ("SingleStream", {}),
        pytest.param("MultiStream", {}, marks=pytest.mark.slow),  # the other scenarios end to end
        pytest.param("Server", {"target_qps": 150.0}, marks=pytest.mark.slow),
        pytest.param("Offline", {}, marks=pytest.mark.slow),
    ],
)
def test_each_scenario_shortened_writes_a_row_and_loadgens_logs(tmp_path, name, extra):
    path = str(tmp_path / "summary.csv")
    out = benchmark.run(RunConfig(scenario=name, data="synthetic", results=path, **SHORT, **extra), command="test")
    assert out.status == "ok" and out.exit_code == 0
    row = read_row(path)
    assert row["scenario"] == name and row["loadgen_mode"] == "performance" and row["mode"] == "inference"
    assert row["loadgen_result"] in ("VALID", "INVALID")
    assert (row["loadgen_result"] == "INVALID") == bool(row["loadgen_invalid_reason"])
    assert row["loadgen_shortened"] == "true" and float(row["loadgen_min_duration_s"]) == 0.5
    assert int(row["loadgen_min_query_count"]) == 200 and int(row["loadgen_queries"]) >= (
        1 if name == "Offline" else 200
    )
    summary, detail = row["loadgen_summary_log"], row["loadgen_detail_log"]
    assert summary == str(tmp_path / "loadgen" / row["run_id"] / "performance" / loadgen.SUMMARY_LOG)
    with open(summary) as fh:
        text = fh.read()
    assert f"Scenario : {name}" in text and f"Result is : {row['loadgen_result']}" in text
    # the row's numbers are LoadGen's own, read from its detail log
    d = loadgen.read_detail(os.path.dirname(detail))
    assert d["effective_scenario"] == name and d["result_validity"] == row["loadgen_result"]
    assert float(row["images_per_sec"]) > 0 and 0 < float(row["step_time_p50_ms"]) <= float(row["step_time_p99_ms"])
    per_query = "_per_query" if name == "MultiStream" else ""
    assert float(row["step_time_p99_ms"]) == pytest.approx(
        d[f"result_99.00_percentile{per_query}_latency_ns"] / 1e6, rel=1e-5
    )
    if name == "SingleStream":
        assert row["loadgen_latency_percentile"] == "90" and row["global_batch_size"] == "8"
        assert float(row["images_per_sec"]) == pytest.approx(d["result_qps_with_loadgen_overhead"], rel=1e-5)
    if name == "MultiStream":
        assert row["loadgen_samples_per_query"] == "8" and row["loadgen_latency_percentile"] == "99"
    if name == "Server":
        assert float(row["loadgen_target_qps"]) == 150 and float(row["loadgen_target_latency_ms"]) == 10
        assert float(row["loadgen_latency_ms"]) == pytest.approx(float(row["step_time_p99_ms"]), rel=1e-5)
    if name == "Offline":
        assert float(row["images_per_sec"]) == pytest.approx(d["result_samples_per_second"], rel=1e-5)
        assert row["loadgen_latency_ms"] == "" and row["loadgen_queries"] == "1"
    assert row["test_accuracy"] == "" and row["accuracy_check"] == ""  # synthetic: speed only
    # what the run needed and the machine's state during LoadGen's performance test (#26's columns)
    assert float(row["peak_rss_mb"]) > 100 and float(row["cpu_share"]) > 0 and row["contended"] in ("true", "false")
    assert "ended before" not in row["machine_notes"] and "GPU" in row["machine_notes"]
    assert int(row["total_steps"]) >= int(row["loadgen_queries"])  # the samples the system answered
    assert int(row["total_flops"]) == int(row["flops_per_image"]) * int(row["total_steps"])


def test_server_above_what_the_machine_serves_is_invalid_with_loadgens_reason(tmp_path):
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(scenario="Server", target_qps=100000.0, data="synthetic", results=path, **SHORT)
    out = benchmark.run(cfg.replace(min_duration_s=0.003, min_query_count=300), command="test")
    assert out.status == "ok" and out.exit_code == 0  # the run worked; LoadGen's verdict is the result
    row = read_row(path)
    assert row["loadgen_result"] == "INVALID"
    assert "performance constraints not met" in row["loadgen_invalid_reason"]
    assert float(row["loadgen_latency_ms"]) > 10  # the bound its 99th percentile missed
    with open(row["loadgen_summary_log"]) as fh:
        assert "Performance constraints satisfied : NO" in fh.read()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """CIFAR-format files and a checkpoint of ResNet-8 trained a few steps on them."""
    tmp = tmp_path_factory.mktemp("trained")
    folder, labels = write_cifar(str(tmp / "cifar"), train_per_file=(48, 48), test=37)
    ckpt = str(tmp / "ckpt")
    cfg = RunConfig(
        n=1,
        batch_size=16,
        steps=12,
        warmup_steps=2,
        data="files",
        cifar_dir=folder,
        checkpoint_dir=ckpt,
        results=str(tmp / "train.csv"),
    )
    assert benchmark.run(cfg, command="test").status == "ok"
    return folder, labels["test_batch.bin"], ckpt


def test_accuracy_run_matches_the_training_evaluation_of_the_checkpoint_to_the_last_image(tmp_path, trained):
    folder, labels, ckpt = trained
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(
        scenario="Offline",
        loadgen_mode="both",
        data="files",
        cifar_dir=folder,
        checkpoint_dir=ckpt,
        results=path,
        **SHORT,
    )
    out = benchmark.run(cfg, command="test")
    assert out.status == "ok", out.row.get("error")
    row = read_row(path)
    assert row["accuracy_check"].startswith("match") and row["loadgen_result"] in ("VALID", "INVALID")
    assert float(row["loadgen_accuracy"]) == float(row["test_accuracy"])
    result = out.measured.scenario_result
    assert result.accuracy_images == result.evaluation_images == 37
    assert result.accuracy_correct == result.evaluation_correct
    # each of LoadGen's responses is the class the checkpoint's model gives that image, computed apart from the run
    predicted = loadgen.predictions(str(tmp_path / "loadgen" / row["run_id"] / "accuracy"))
    assert sorted(predicted) == list(range(37))
    assert_predictions_are_the_checkpoints(predicted, ckpt, first_index=96)
    correct = sum(predicted[i] == label for i, label in enumerate(labels))
    assert result.accuracy_correct == correct
    # the performance logs are the row's; the accuracy run's sit beside them
    assert row["loadgen_summary_log"].endswith(os.path.join("performance", loadgen.SUMMARY_LOG))
    assert os.path.isfile(str(tmp_path / "loadgen" / row["run_id"] / "accuracy" / loadgen.SUMMARY_LOG))
    assert sorted(os.listdir(ckpt)) == sorted(
        ["checkpoint", "ckpt-12.index", "ckpt-12.data-00000-of-00001", "run.json"]
    )


def assert_predictions_are_the_checkpoints(predicted, ckpt, first_index):
    import tensorflow as tf

    from bench.training import data
    from resnet.model import build_resnet

    model = build_resnet(1, batch_norm="keras")
    tf.train.Checkpoint(model=model).read(tf.train.latest_checkpoint(ckpt)).expect_partial()
    images = np.stack([known_image(first_index + i) for i in range(len(predicted))])
    expected = np.argmax(model(data.normalize(images), training=False).numpy(), axis=-1)
    assert [predicted[i] for i in range(len(predicted))] == expected.tolist()


def test_accuracy_with_fresh_weights_single_stream(tmp_path, trained):
    folder, _, _ = trained
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(
        scenario="SingleStream", loadgen_mode="accuracy", data="files", cifar_dir=folder, results=path, **SHORT
    )
    out = benchmark.run(cfg, command="test")
    assert out.status == "ok"
    row = read_row(path)
    assert row["accuracy_check"].startswith("match") and row["loadgen_result"] == ""  # no performance run
    assert row["loadgen_summary_log"].endswith(os.path.join("accuracy", loadgen.SUMMARY_LOG))


@pytest.mark.slow  # a second LoadGen accuracy run: end to end
def test_an_accuracy_that_differs_from_the_evaluation_fails_the_run(tmp_path, trained, monkeypatch):
    from bench.training import trainers

    folder, _, ckpt = trained
    real = trainers.Inference.evaluate

    def one_image_off(self):
        accuracy, loss, images = real(self)
        return accuracy + 1 / images, loss, images

    monkeypatch.setattr(trainers.Inference, "evaluate", one_image_off)
    path = str(tmp_path / "summary.csv")
    cfg = RunConfig(
        scenario="Offline",
        loadgen_mode="accuracy",
        data="files",
        cifar_dir=folder,
        checkpoint_dir=ckpt,
        results=path,
        **SHORT,
    )
    out = benchmark.run(cfg, command="test")
    assert out.status == "failed" and out.exit_code == 1
    row = read_row(path)
    assert row["status"] == "failed" and row["accuracy_check"].startswith("DIFFERS")
    assert "differs from the evaluation of the same weights" in row["error"]


def test_buckets_and_batches():
    assert scenario.buckets(1) == [1]
    assert scenario.buckets(16) == [1, 2, 4, 8, 16]
    assert scenario.buckets(12) == [1, 2, 4, 8, 12]
    cfg = RunConfig(mode="inference", batch_size=64)
    assert scenario.max_batch(cfg.replace(scenario="SingleStream")) == 1
    assert scenario.max_batch(cfg.replace(scenario="MultiStream")) == 8
    assert scenario.max_batch(cfg.replace(scenario="MultiStream", samples_per_query=100)) == 64
    assert scenario.max_batch(cfg.replace(scenario="Offline")) == 64


def test_loadgen_settings_are_mlperfs_unless_shortened():
    expect = scenario.Expectation({1: 0.004, 8: 0.01, 16: 0.02}, 1.0, {1: 0.003, 8: 0.008, 16: 0.016})
    cfg = RunConfig(mode="inference", scenario="SingleStream", batch_size=16)
    settings, shortened = scenario.test_settings(cfg, "performance", expect)
    assert settings.min_duration_ms == 600_000 and not shortened  # MLPerf's minimum duration
    assert settings.single_stream_expected_latency_ns == int(0.004 * 1e9 * scenario.STREAM_EXPECTATION)
    settings, shortened = scenario.test_settings(cfg.replace(min_duration_s=1.0), "performance", expect)
    assert settings.min_duration_ms == 1000 and shortened
    longer = cfg.replace(min_duration_s=700.0, min_query_count=5000)
    assert not scenario.test_settings(longer, "performance", expect)[1]  # longer than MLPerf's is not shortened
    server = cfg.replace(scenario="Server", target_qps=321.0, target_latency_ms=15.0)
    settings, _ = scenario.test_settings(server, "performance", expect)
    assert settings.server_target_qps == 321.0 and settings.server_target_latency_ns == 15_000_000
    settings, _ = scenario.test_settings(cfg.replace(scenario="Offline"), "performance", expect)
    assert settings.offline_expected_qps == pytest.approx(16 / 0.016 * scenario.OFFLINE_EXPECTATION)


def test_accuracy_check_text():
    base = dict(performance=None, shortened=False, accuracy_images=10, evaluation_images=10)
    assert loadgen.Result(**base).accuracy_check == ""
    assert loadgen.Result(**base, accuracy_correct=7, evaluation_correct=7).accuracy_check.startswith("match")
    assert loadgen.Result(**base, accuracy_correct=7, evaluation_correct=6).accuracy_check.startswith("DIFFERS")
    with pytest.raises(ValueError, match="answers 2 of 3 images"):
        loadgen.top1({0: 1, 1: 2}, [1, 2, 3])
    assert loadgen.top1({0: 1, 1: 0, 2: 3}, [1, 2, 3]) == (2, 3)


def bad_scenario_inputs(tmp):
    empty = os.path.join(tmp, "empty")
    os.makedirs(empty, exist_ok=True)
    inf = dict(mode="inference")
    return {
        "scenario in training": (dict(scenario="Offline"), "needs --mode=inference"),
        "Server without a rate": (dict(inf, scenario="Server"), "needs --target_qps"),
        "a rate of zero": (dict(inf, scenario="Server", target_qps=0.0), "--target_qps must be > 0"),
        "a rate for Offline": (dict(inf, scenario="Offline", target_qps=10.0), "--target_qps is for --scenario=Server"),
        "samples per query for Server": (
            dict(inf, scenario="Server", target_qps=5.0, samples_per_query=4),
            "--samples_per_query is for --scenario=MultiStream",
        ),
        "zero samples per query": (
            dict(inf, scenario="MultiStream", samples_per_query=0),
            "--samples_per_query must be >= 1",
        ),
        "a negative minimum duration": (
            dict(inf, scenario="Offline", min_duration_s=-1.0),
            "--min_duration_s must be > 0",
        ),
        "zero queries": (dict(inf, scenario="Offline", min_query_count=0), "--min_query_count must be >= 1"),
        "a minimum duration LoadGen cannot hold": (
            dict(inf, scenario="Offline", min_duration_s=1e300),
            "--min_duration_s must be > 0 and at most 604800; got 1e+300",
        ),
        "a latency bound LoadGen cannot hold": (
            dict(inf, scenario="Server", target_qps=5.0, target_latency_ms=1e20),
            "--target_latency_ms must be > 0 and at most 3.6e+06",
        ),
        "a LoadGen flag without a scenario": (dict(inf, min_query_count=10), "only with --scenario"),
        "accuracy on synthetic data": (
            dict(inf, scenario="Offline", loadgen_mode="accuracy", data="synthetic"),
            "needs real data",
        ),
        "a scenario over replicas": (
            dict(inf, scenario="Offline", strategy="mirrored", cpu_replicas=2),
            "--strategy=mirrored is not supported",
        ),
        "steps with a scenario": (dict(inf, scenario="Offline", steps=50), "LoadGen decides"),
        "weights folder without a checkpoint": (
            dict(inf, scenario="Offline", checkpoint_dir=empty),
            "no checkpoint there",
        ),
        "checkpoint in the quick look": (dict(inf, checkpoint_dir=empty), "not for --mode=inference"),
    }


def test_bad_scenario_input_is_refused_before_any_work(tmp_path):
    for name, (fields, expected) in bad_scenario_inputs(str(tmp_path)).items():
        cfg = RunConfig(results=str(tmp_path / "summary.csv"), **{"data": "synthetic", **fields})
        with pytest.raises(ConfigError, match=None) as err:
            validation.validate(cfg)
        assert expected in str(err.value), (name, str(err.value))
    assert not (tmp_path / "summary.csv").exists()
    # a sweep may hand a scenario's flags to trials of another scenario
    validation.validate(RunConfig(mode="inference", scenario="Offline", target_qps=10.0, sweep="s", data="synthetic"))


def test_weights_of_another_model_are_refused(tmp_path, trained):
    _, _, ckpt = trained
    cfg = RunConfig(mode="inference", scenario="Offline", n=3, checkpoint_dir=ckpt, data="synthetic")
    with pytest.raises(ConfigError, match="holds the weights of another model \\(--n=1\\)"):
        validation.validate(cfg)


@pytest.mark.e2e
def test_cli_scenario_run_and_bad_input(tmp_path):
    path = str(tmp_path / "summary.csv")
    env = {**os.environ, "PYTHONPATH": ROOT}
    common = ["--mode=inference", "--n=1", "--data=synthetic", f"--results={path}"]
    bad = subprocess.run(
        [sys.executable, "-m", "bench.run", *common, "--scenario=Server"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --scenario=Server needs --target_qps (the queries per second LoadGen sends)"
    ]
    assert not os.path.exists(path)
    args = ["--scenario=SingleStream", "--min_duration_s=0.5", "--min_query_count=100", "--warmup_steps=3"]
    ok = subprocess.run(
        [sys.executable, "-m", "bench.run", *common, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "LoadGen: VALID" in ok.stdout or "LoadGen: INVALID" in ok.stdout
    row = read_row(path)
    assert row["scenario"] == "SingleStream" and row["command"].startswith("python -m bench.run --mode=inference")


def test_report_shows_latency_against_throughput_per_depth(tmp_path):
    from sweeps import report

    path = str(tmp_path / "summary.csv")
    base = dict(
        status="ok",
        device="CPU: x",
        data="synthetic",
        strategy="default",
        num_replicas=1,
        block="preact",
        shortcut="B",
        precision="float32",
        xla=True,
        mode="inference",
        loadgen_mode="performance",
        loadgen_shortened=False,
        sweep="serve",
    )
    points = [  # depth, scenario, batch, qps, samples/s, p50, p99, metric, verdict
        (20, "SingleStream", 1, None, 180.0, 5.0, 7.0, 6.1, "VALID"),
        (20, "SingleStream", 1, None, 200.0, 4.5, 6.0, 5.5, "VALID"),
        (20, "Server", 16, 150.0, 149.0, 6.0, 9.0, 9.0, "VALID"),
        (20, "Server", 16, 5000.0, 900.0, 500.0, 900.0, 900.0, "INVALID"),
        (20, "Offline", 128, None, 800.0, 400.0, 700.0, None, "VALID"),
        (56, "Offline", 128, None, 300.0, 900.0, 1700.0, None, "VALID"),
    ]
    for i, (depth, name, batch, qps, ips, p50, p99, metric, verdict) in enumerate(points):
        table.append_row(
            path,
            {
                **base,
                "run_id": f"r{i}",
                "depth": depth,
                "n": (depth - 2) // 6,
                "scenario": name,
                "global_batch_size": batch,
                "loadgen_target_qps": qps,
                "images_per_sec": ips,
                "step_time_p50_ms": p50,
                "step_time_p99_ms": p99,
                "loadgen_latency_ms": metric,
                "loadgen_result": verdict,
                "loadgen_latency_percentile": {"SingleStream": 90, "Server": 99}.get(name),
                "loadgen_invalid_reason": "performance constraints not met" if verdict == "INVALID" else "",
            },
        )
    table.append_row(
        path, {**base, "run_id": "quick", "depth": 20, "n": 3, "scenario": "none", "images_per_sec": 999.0}
    )
    md, pngs = report.build(path, str(tmp_path / "out"))
    serving = (tmp_path / "out" / "serving.md").read_text()
    lines = [line for line in serving.splitlines() if line.startswith("| CPU: x |")]
    assert len(lines) == 5  # the two SingleStream repeats are one point; the quick look is not a LoadGen point
    single = next(line for line in lines if "| SingleStream |" in line)
    assert "| 2 | 190.0 ±" in single and "p90 5.80" in single
    assert "Server 5000 qps, batch 16" in serving and "| INVALID |" in serving
    assert any("ResNet-56" in line and "Offline, batch 128" in line for line in lines)
    assert str(tmp_path / "out" / "plots" / "serving.png") in pngs
    summary = report.per_configuration(report.load(path))  # LoadGen rows never averaged with the quick look
    assert set(summary[summary["depth"] == 20]["scenario"]) == {"SingleStream", "Server", "Offline", "none"}
    assert "inference SingleStream" in open(md).read()


def test_mlperfs_multistream_default_is_loadgens():
    assert scenario.mlperf_settings("MultiStream").multi_stream_samples_per_query == options.MULTISTREAM_SAMPLES


def test_autotune_probes_a_scenario_run_as_the_quick_look_at_its_batch():
    from bench.config import tuning

    run = RunConfig(
        mode="inference", scenario="SingleStream", batch_size=64, min_duration_s=5.0, autotune="on", data="synthetic"
    )
    asked = tuning.question(run)
    assert asked.scenario == "none" and asked.batch_size == 1 and asked.min_duration_s is None
    machine = tuning.Machine("CPU", "x", "2.21", 2, 2)
    args = tuning.probe_args(asked, {"xla": False}, "CPU")
    assert "--batch_size=1" in args and not any("scenario" in a or "min_duration" in a for a in args)
    assert "batch 1" in tuning.key(asked, machine)
    offline = run.replace(scenario="Offline")
    assert tuning.question(offline).batch_size == 64
    assert tuning.question(run.replace(scenario="MultiStream")).batch_size == 8


@pytest.mark.e2e
@pytest.mark.parametrize(
    "name, extra",
    # Server issues its queries on a clock until its minimum duration: the stop cannot shorten LoadGen's test,
    # which is left running while the run writes its row and ends (exits.left_running)
    [("SingleStream", []), ("Server", ["--target_qps=20"])],
)
def test_ctrl_c_ends_a_loadgen_run_within_seconds_with_an_interrupted_row(tmp_path, name, extra):
    import signal
    import time

    path = str(tmp_path / "summary.csv")
    args = ["--mode=inference", f"--scenario={name}", *extra, "--n=1", "--data=synthetic", "--min_duration_s=300"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", *args, "--warmup_steps=3", f"--results={path}"],
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith(f"LoadGen {name} performance"):
                break
        time.sleep(3)  # LoadGen is issuing queries
        proc.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and time.monotonic() - stopped < 30
    row = read_row(path)
    assert row["status"] == "interrupted" and row["error"].startswith("stopped by SIGINT")
    assert row["images_per_sec"] == "" and row["loadgen_result"] == ""  # queries answered unrun are no result
    assert os.path.isfile(row["loadgen_detail_log"])


def test_accuracy_on_data_that_fell_back_to_synthetic_is_refused_after_setup():
    from bench.config import setup_checks

    facts = setup_checks.SetupFacts(0, "CPU", 2, 1, True, "synthetic")
    cfg = RunConfig(mode="inference", scenario="Offline", loadgen_mode="both")  # --data=auto: no CIFAR found
    with pytest.raises(ConfigError, match="--loadgen_mode=both needs real data"):
        setup_checks.check_setup(cfg, facts)
    setup_checks.check_setup(cfg.replace(loadgen_mode="performance"), facts)


def test_a_sweeps_plan_counts_a_scenario_trial_by_its_minimum_duration(tmp_path):
    from sweeps import plan

    trials = [
        RunConfig(mode="inference", scenario="Offline", min_duration_s=30.0, trial_key="a"),
        RunConfig(mode="inference", scenario="SingleStream", trial_key="b"),
    ]
    seconds, flops, _ = plan.estimate(trials, str(tmp_path / "none.csv"))
    assert flops == 0
    assert seconds["a"] == pytest.approx(plan.DEFAULT_STARTUP_S + 30) and seconds["b"] == pytest.approx(615)
