"""--autotune: what may be tuned, the choice by the A/B statistics (fake probes), the cache, the `tuned` column;
one real `bench.run --autotune` through the CLI."""

import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest
from helpers import seed_peak_cache

from bench.config import cli, defaults, exits, tuning, validation
from bench.config.options import ConfigError, RunConfig
from bench.hardware import devices
from bench.results import rows, stats, table
from bench.runner import autotune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = tuning.Machine("CPU", "Test CPU", "2.21.0", logical_cores=2, physical_cores=2)
GPU = tuning.Machine("GPU", "Test GPU", "2.21.0", logical_cores=8, physical_cores=8, gpus=1, driver="550.1")
NUMERICS = ("precision", "sync_bn", "n", "block", "shortcut", "batch_size", "deterministic", "seed", "data")


def test_cpu_inference_candidates_start_from_the_defaults():
    plan = dict(tuning.candidates(RunConfig(mode="inference", batch_size=1), CPU))
    assert plan == {
        "onednn": ["on", "off"],
        "xla": [True, False],
        "batch_norm": ["keras", "fused"],
        "inter_op_threads": [None, 1],
    }
    plan = dict(tuning.candidates(RunConfig(), CPU))  # training keeps its measured defaults first
    assert plan["onednn"] == ["on", "off"] and plan["xla"] == [False, True] and plan["batch_norm"] == ["fused", "keras"]
    assert "steps_per_loop" not in plan and "augment" not in plan  # GPUs only
    smt = dataclasses.replace(CPU, logical_cores=4, physical_cores=2)
    assert dict(tuning.candidates(RunConfig(), smt))["intra_op_threads"] == [None, 2]


def test_flags_and_numerics_are_never_candidates():
    flagged = RunConfig(xla=False, batch_norm="fused", onednn="on", intra_op_threads=0, inter_op_threads=0)
    assert tuning.candidates(flagged, CPU) == []
    assert tuning.origin(flagged.replace(mode="inference")) == "flag" and tuning.origin(RunConfig()) == "default"
    sync = RunConfig(sync_bn=True, strategy="mirrored", cpu_replicas=2)  # only Keras's BN syncs; no XLA over replicas
    assert [n for n, _ in tuning.candidates(sync, CPU)] == ["onednn", "inter_op_threads"]
    for machine in (CPU, GPU):
        names = {n for n, _ in tuning.candidates(RunConfig(data="files", cifar_dir="/x"), machine)}
        assert not names & set(NUMERICS)
    # oneDNN is the user's when they set the variable, and fixed once TensorFlow is loaded
    for machine in (dataclasses.replace(CPU, onednn_env="0"), dataclasses.replace(CPU, tf_loaded=True)):
        assert "onednn" not in dict(tuning.candidates(RunConfig(), machine))


def test_gpu_training_tunes_steps_per_call_and_augmentation_placement_with_real_data():
    plan = dict(tuning.candidates(RunConfig(data="files", cifar_dir="/x"), GPU))
    assert plan["steps_per_loop"] == [50, 10, 200] and plan["augment"] == ["device", "host"]
    assert plan["xla"] == [True, False] and "onednn" not in plan and "inter_op_threads" not in plan
    assert "augment" not in dict(tuning.candidates(RunConfig(data="synthetic"), GPU))


def test_the_key_names_the_machine_and_the_question():
    key = tuning.key(RunConfig(mode="inference", batch_size=1, xla=True), CPU)
    for part in (
        "CPU: Test CPU (avx2) 2 cores",
        "tf 2.21.0",
        "inference",
        "ResNet-20 preact/B",
        "batch 1",
        "float32",
        "default x1",
        "fixed xla=true",
    ):
        assert part in key, part
    assert "driver 550.1" in tuning.key(RunConfig(), GPU)
    assert key != tuning.key(RunConfig(mode="inference", batch_size=128, xla=True), CPU)


def test_probe_args_keep_the_run_but_not_its_outputs_or_length():
    cfg = RunConfig(
        n=1,
        batch_size=16,
        mode="inference",
        steps=500,
        results="/r.csv",
        checkpoint_dir=None,
        tensorboard_dir="/tb",
        autotune="on",
        intra_op_threads=1,
    )
    args = tuning.probe_args(cfg, {"onednn": "off", "xla": True, "inter_op_threads": None}, "CPU")
    assert args == [
        "--mode=inference",
        "--n=1",
        "--intra_op_threads=1",
        "--batch_size=16",
        "--onednn=off",
        "--xla",
        "--warmup_steps=5",
        "--steps=205",
    ]
    assert tuning.probe_args(RunConfig(), {"xla": False}, "CPU")[-3:] == ["--noxla", "--warmup_steps=10", "--steps=30"]


def test_bare_autotune_flag_means_on_and_multi_worker_runs_are_refused(tmp_path):
    assert cli.expand_bare_flags(["p", "--autotune"]) == ["p", "--autotune=on"]
    assert cli.expand_bare_flags(["p", "--autotune", "--n", "1"]) == ["p", "--autotune=on", "--n", "1"]
    assert cli.expand_bare_flags(["p", "--autotune", "refresh"]) == ["p", "--autotune", "refresh"]
    with pytest.raises(ConfigError, match="--autotune probes single-process runs"):
        validation.validate(
            RunConfig(autotune="on", strategy="multi_worker", workers=2, results=str(tmp_path / "s.csv"))
        )


def test_inference_probes_are_judged_by_median_latency():
    row = {"mode": "inference", "global_batch_size": "16", "step_time_p50_ms": "8.0", "images_per_sec": "900"}
    assert autotune.probe_rate(row) == 2000.0
    assert autotune.probe_rate({**row, "mode": "train"}) == 900.0


def test_the_row_says_how_its_settings_were_chosen():
    i = table.SCHEMA.index("tuned")
    assert table.SCHEMA[i : i + 2] == ("tuned", "autotune_s")  # autotune_s: the probing, after it
    assert rows.config_row(RunConfig(), "failed")["tuned"] == "default"
    assert rows.config_row(RunConfig(tuned="K"), "failed")["tuned"] == "K"


def test_inference_defaults_on_cpus_differ_from_training():
    inference = defaults.resolve(RunConfig(mode="inference"), "CPU", 1, "synthetic")
    assert inference.xla and inference.batch_norm == "keras"
    train = defaults.resolve(RunConfig(), "CPU", 1, "synthetic")
    assert not train.xla and train.batch_norm == "fused" and defaults.ONEDNN_DEFAULT == "on"
    gpu = defaults.resolve(RunConfig(mode="inference"), "GPU", 1, "synthetic")
    assert gpu.xla and gpu.batch_norm == "fused"


# ---------------------------------------------------------------------------
# The choice, with fake probes


def fake_measure(rate, fail=lambda s: False):
    """measure(settings, pair, arm, position) from rate(settings, pair); every call recorded."""
    calls = []

    def measure(settings, pair, arm, position):
        calls.append((dict(settings), pair, arm, position))
        if fail(settings):
            return stats.Run(pair, arm, position, "failed", error="RuntimeError: boom")
        return stats.Run(pair, arm, position, "ok", rate(settings, pair))

    return measure, calls


PLAN = [("onednn", ["off", "on"]), ("xla", [True, False]), ("batch_norm", ["keras", "fused"])]


def test_choose_takes_a_faster_alternative_keeps_the_default_on_a_tie_and_pairs_in_abba_order():
    speed = lambda s, pair: 100 * (1.5 if s["onednn"] == "on" else 1) * (1 if s["xla"] else 0.6)  # noqa: E731
    measure, calls = fake_measure(speed)
    settings, probes = autotune.choose(PLAN, measure, out=io.StringIO())
    assert settings == {"onednn": "on", "xla": True, "batch_norm": "keras"}
    assert [p.verdict.kind for p in probes] == ["higher", "lower", "same"]
    assert [(pair, arm) for _, pair, arm, _ in calls[:4]] == [(1, "A"), (1, "B"), (2, "B"), (2, "A")]
    assert calls[4][0] == {"onednn": "on", "xla": True, "batch_norm": "keras"}  # the winner is the next A
    lines = autotune.probe_table(probes)
    assert len(lines) == 4 and lines[1].split()[-1] == "on" and "B faster" in lines[1]


def test_an_unsettled_comparison_gets_more_pairs_then_keeps_the_current_choice():
    ratios = {1: 1.30, 2: 0.85, 3: 1.30, 4: 0.85}  # mean > 1, far too noisy to settle
    measure, calls = fake_measure(lambda s, pair: 100 * (ratios[pair] if s["xla"] else 1))
    settings, probes = autotune.choose([("xla", [False, True])], measure, out=io.StringIO())
    assert len(calls) == 2 * autotune.MAX_PAIRS and probes[0].estimate.n == autotune.MAX_PAIRS
    assert probes[0].verdict.kind == "inconclusive" and settings == {"xla": False}
    assert "not settled" in autotune.probe_table(probes)[1] and autotune.probe_table(probes)[1].endswith("false")


def test_a_failing_probe_is_skipped_with_a_line_and_the_tuning_goes_on():
    out = io.StringIO()
    measure, _ = fake_measure(lambda s, pair: 100, fail=lambda s: s["onednn"] == "on")
    settings, probes = autotune.choose(PLAN, measure, out=out)
    assert settings == {"onednn": "off", "xla": True, "batch_norm": "keras"}
    assert probes[0].note and "onednn=on skipped: arm B failed (RuntimeError: boom)" in out.getvalue()
    assert len(probes) == 3 and "skipped" in autotune.probe_table(probes)[1]


def test_settle_caches_the_winner_and_refresh_probes_again(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(autotune, "detect_machine", lambda cfg: CPU)
    cfg = RunConfig(mode="inference", batch_size=1, autotune="on")
    measure, calls = fake_measure(lambda s, pair: 100 * (2 if s["batch_norm"] == "fused" else 1))
    out = io.StringIO()
    tuned = autotune.settle(cfg, out, measure=measure)
    key = tuning.key(cfg, CPU)
    assert tuned.tuned == key and tuned.batch_norm == "fused" and tuned.onednn == "on" and tuned.xla is True
    assert len(calls) == 4 * 4 and "chose --onednn=on --xla --batch_norm=fused" in out.getvalue()
    cached = json.load(open(autotune.cache_file()))[key]
    assert cached["settings"]["batch_norm"] == "fused" and len(cached["probes"]) == 5
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    again, calls_before = autotune.settle(cfg, io.StringIO(), measure=measure), len(calls)
    assert again == tuned and len(calls) == calls_before  # from the cache, nothing probed
    autotune.settle(cfg.replace(autotune="refresh"), io.StringIO(), measure=measure)
    assert len(calls) == 2 * calls_before


# ---------------------------------------------------------------------------
# One real run through the command line


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_run_autotune_probes_prints_the_table_caches_and_the_next_run_starts_at_once(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    _seed_peak(cache)  # the probes would otherwise each wait for a peak measurement
    env = {**os.environ, "PYTHONPATH": ROOT, "RESNET_BENCH_CACHE": str(cache), autotune.MAX_PAIRS_ENV: "2"}
    env.pop(devices.ONEDNN_ENV, None)
    results = tmp_path / "s.csv"
    # every tunable setting flagged but the BN kernel: one comparison of two pairs (never more), four probe processes
    args = [
        sys.executable,
        "-m",
        "bench.run",
        "--autotune",
        "--mode=inference",
        "--n=1",
        "--batch_size=16",
        "--data=synthetic",
        "--steps=12",
        "--warmup_steps=2",
        "--onednn=on",
        "--xla",
        "--inter_op_threads=0",
        f"--results={results}",
    ]
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "autotune: probing batch_norm" in first.stdout and "B/A [95% CI]" in first.stdout
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "autotune: cached choice" in second.stdout, second.stdout
    found = table.read_rows(str(results))
    assert len(found) == 2 and found[0]["tuned"] == found[1]["tuned"]
    assert "batch 16" in found[0]["tuned"] and "fixed onednn=on xla=true inter_op_threads=0" in found[0]["tuned"]
    assert found[0]["batch_norm"] == found[1]["batch_norm"] and found[0]["status"] == "ok"
    probed, cached = (float(r["autotune_s"]) for r in found)  # four probe processes, then one JSON read
    assert probed > 4 * cached and probed > 1.0


def _seed_peak(cache):
    """A peak FLOP/s reading for this CPU (the keys `bench.hardware.peak.device_key` makes)."""
    seed_peak_cache(str(cache))


# ---------------------------------------------------------------------------
# The cache is an optimisation, never a failure (bench.config.caches)


def warnings_in(text):
    return [line for line in text.splitlines() if line.startswith("warning:")]


@pytest.fixture
def tuned_cpu(tmp_path, monkeypatch):
    """(cfg, key) of a CPU inference run under --autotune, its cache in tmp_path, warnings afresh."""
    from bench.config import caches

    monkeypatch.setattr(caches, "_warned", set())
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(autotune, "detect_machine", lambda cfg: CPU)
    cfg = RunConfig(mode="inference", batch_size=1, autotune="on")
    return cfg, tuning.key(cfg, CPU)


def test_when_every_probe_fails_nothing_is_cached_and_the_run_keeps_the_defaults(tuned_cpu, capsys):
    cfg, key = tuned_cpu
    out = io.StringIO()
    measure, calls = fake_measure(lambda s, pair: 100, fail=lambda s: True)
    got = autotune.settle(cfg, out, measure=measure)
    assert calls and "every probe failed" in out.getvalue() and "nothing cached" in out.getvalue()
    assert "autotune: chose" not in out.getvalue()
    assert got == cfg.replace(tuned="default")  # the settings as given; the row says nothing was tuned
    assert not os.path.exists(autotune.cache_file())
    # the next run probes again, and caches what it measured
    measure, calls = fake_measure(lambda s, pair: 100 * (2 if s["batch_norm"] == "fused" else 1))
    assert autotune.settle(cfg, io.StringIO(), measure=measure).tuned == key and calls
    assert json.load(open(autotune.cache_file()))[key]["settings"]["batch_norm"] == "fused"


def test_a_choice_some_probes_of_which_failed_is_used_but_not_cached(tuned_cpu):
    cfg, key = tuned_cpu
    out = io.StringIO()
    measure, _ = fake_measure(
        lambda s, pair: 100 * (2 if s["batch_norm"] == "fused" else 1), fail=lambda s: s["onednn"] == "off"
    )
    got = autotune.settle(cfg, out, measure=measure)
    assert got.tuned == key and got.batch_norm == "fused"  # what was measured is used by this run
    assert "not cached: the probes of onednn=off failed" in out.getvalue()
    assert not os.path.exists(autotune.cache_file())


GOOD = {"onednn": "on", "xla": True, "batch_norm": "fused", "inter_op_threads": None}


@pytest.mark.parametrize(
    "entry",
    [
        {"probed_utc": "2026-11-30T12:00:00Z"},  # KeyError before
        {"settings": 5},  # TypeError before
        ["not", "an", "entry"],
        {"settings": {**GOOD, "xla": "yes"}},  # the row said xla=yes before
        {"settings": {**GOOD, "xla": 1}},  # JSON's 1 is not True
        {"settings": {**GOOD, "batch_norm": "fast"}},  # ValueError in the run before
        {"settings": {**GOOD, "inter_op_threads": "1"}},
        {"settings": {}},  # probed again without a word before
        {"settings": {"steps_per_loop": -5}},  # no probed setting, one that is no setting at all
    ],
    ids=[
        "no-settings",
        "settings-a-number",
        "a-list",
        "xla-yes",
        "xla-1",
        "batch-norm-unknown",
        "threads-text",
        "settings-empty",
        "settings-of-nothing-probed",
    ],
)
def test_a_malformed_cached_entry_is_a_miss_with_a_line(tuned_cpu, capsys, entry):
    cfg, key = tuned_cpu
    with open(autotune.cache_file(), "w") as fh:
        json.dump({key: entry, "another key": {"settings": {"xla": False}}}, fh)
    measure, calls = fake_measure(lambda s, pair: 100 * (2 if s["batch_norm"] == "fused" else 1))
    got = autotune.settle(cfg, io.StringIO(), measure=measure)
    assert len(calls) == 4 * 4  # probed again: four comparisons of two pairs
    assert got.tuned == key and got.xla is True and got.batch_norm == "fused" and got.inter_op_threads is None
    [line] = warnings_in(capsys.readouterr().err)
    assert "malformed entry" in line and autotune.cache_file() in line and "probing again" in line
    cache = json.load(open(autotune.cache_file()))
    assert cache[key]["settings"] == GOOD and cache["another key"] == {"settings": {"xla": False}}
    assert autotune.settle(cfg, io.StringIO(), measure=measure) == got and len(calls) == 16  # now a hit


def test_an_unreadable_or_unwritable_autotune_cache_is_a_line_and_the_run_is_tuned(tuned_cpu, tmp_path, capsys):
    cfg, key = tuned_cpu
    (tmp_path / "autotune.json").write_text("{not json")
    measure, calls = fake_measure(lambda s, pair: 100 * (2 if s["batch_norm"] == "fused" else 1))
    assert autotune.settle(cfg, io.StringIO(), measure=measure).batch_norm == "fused"
    [line] = warnings_in(capsys.readouterr().err)
    assert "cannot be read" in line
    assert json.load(open(autotune.cache_file()))[key]["settings"] == GOOD  # replaced by a good one
    # a cache folder that cannot be written: probed, used, not cached, one line
    from bench.config import caches

    caches._warned.clear()
    (tmp_path / "afile").write_text("")
    os.environ["RESNET_BENCH_CACHE"] = str(tmp_path / "afile")  # restored by the fixture's monkeypatch
    out = io.StringIO()
    got = autotune.settle(cfg, out, measure=measure)
    assert got.tuned == key and got.batch_norm == "fused" and "not cached" in out.getvalue()
    [line] = warnings_in(capsys.readouterr().err)
    assert "cannot be written" in line and (tmp_path / "afile").read_text() == ""


@pytest.mark.parametrize("value", ["abc", "1", "0", "-3", "2.5"])
def test_a_bad_pairs_budget_is_bad_input_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(autotune.MAX_PAIRS_ENV, value)
    with pytest.raises(ConfigError, match=f"{autotune.MAX_PAIRS_ENV}='{value}'"):
        validation.validate(RunConfig(autotune="on", data="synthetic"))
    validation.validate(RunConfig(data="synthetic"))  # without --autotune the variable is not read


def test_the_pairs_budget_is_read_from_the_variable(monkeypatch):
    monkeypatch.delenv(autotune.MAX_PAIRS_ENV, raising=False)
    assert autotune._max_pairs() == autotune.MAX_PAIRS == 4
    monkeypatch.setenv(autotune.MAX_PAIRS_ENV, " 3 ")
    assert autotune._max_pairs() == 3
    monkeypatch.setenv(autotune.MAX_PAIRS_ENV, "")
    assert autotune._max_pairs() == 4


@pytest.mark.e2e
def test_bench_run_with_a_bad_pairs_budget_is_one_line_exit_2_nothing_written(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "RESNET_BENCH_CACHE": str(tmp_path / "cache"),
        autotune.MAX_PAIRS_ENV: "abc",
    }
    results = tmp_path / "s.csv"
    args = ["--autotune", "--n=1", "--batch_size=16", "--data=synthetic", "--steps=12", f"--results={results}"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and autotune.MAX_PAIRS_ENV in lines[0] and "'abc'" in lines[0]
    assert os.listdir(tmp_path) == []  # no table, no cache, no traceback


# ---------------------------------------------------------------------------
# Probing time in its own column


def test_probing_time_is_its_own_column_not_part_of_the_time_to_the_first_step(tmp_path, monkeypatch):
    import time

    from bench.runner import benchmark

    machine = dataclasses.replace(CPU, onednn_env="set")  # oneDNN is this test process's: not a candidate
    monkeypatch.setattr(autotune, "detect_machine", lambda cfg: machine)
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path / "cache"))
    seed_peak_cache(str(tmp_path / "cache"))
    nap = 0.4

    def slow_probes(cfg, device_kind, results_path):
        def measure(settings, pair, arm, position):
            time.sleep(nap)  # a probe process's start-up
            return stats.Run(pair, arm, position, "ok", 100.0 * (1.5 if settings.get("xla") is False else 1) * pair)

        return measure

    monkeypatch.setattr(autotune, "process_measure", slow_probes)
    path = str(tmp_path / "s.csv")
    cfg = RunConfig(n=1, batch_size=16, data="synthetic", steps=6, warmup_steps=2, steps_per_loop=2, results=path)
    start = time.perf_counter()
    out = benchmark.run(cfg.replace(autotune="on"), command="test")
    elapsed = time.perf_counter() - start
    assert out.status == "ok", out.row.get("error")
    plan = tuning.candidates(cfg, machine)
    probes = sum(len(values) - 1 for _, values in plan) * 2 * autotune.FIRST_PAIRS  # each settled in two pairs
    [row] = table.read_rows(path)
    assert row["tuned"] == tuning.key(cfg, machine)
    assert float(row["autotune_s"]) >= probes * nap
    assert 0 < float(row["time_to_first_step_s"]) < elapsed - float(row["autotune_s"])
    # a cached choice: a JSON read; without --autotune: empty
    benchmark.run(cfg.replace(autotune="on", seed=1), command="test")
    benchmark.run(cfg.replace(seed=2), command="test")
    cached, plain = table.read_rows(path)[1:]
    assert float(cached["autotune_s"]) < nap and plain["autotune_s"] == "" and plain["tuned"] == "default"
    # a run stopped while it probes: its row says so (not `default`) and keeps the seconds it probed

    def stopped_probes(cfg, device_kind, results_path):
        def measure(settings, pair, arm, position):
            time.sleep(nap)
            raise exits.Interrupted("SIGTERM")

        return measure

    monkeypatch.setattr(autotune, "process_measure", stopped_probes)
    out = benchmark.run(cfg.replace(autotune="on", seed=3, batch_size=32), command="test")
    stopped = table.read_rows(path)[-1]
    assert out.status == "interrupted" and stopped["status"] == "interrupted" and stopped["tuned"] == "probing"
    assert float(stopped["autotune_s"]) >= nap


def test_a_table_of_the_previous_schema_is_read_and_upgraded_for_the_new_column(tmp_path):
    previous = table.SCHEMA[: table.SCHEMA.index("tuned") + 1]  # the schema before autotune_s
    path = tmp_path / "old.csv"
    path.write_text(",".join(previous) + "\n" + "r1,t,ok" + "," * (len(previous) - 3) + "\n")
    table.check_header(str(path))  # readable as it is (the report)
    with pytest.raises(table.ResultsError, match="older version .*autotune_s"):
        table.check_results_path(str(path))
    table.upgrade(str(path))
    [row] = table.read_rows(str(path))
    assert tuple(row) == table.SCHEMA and row["run_id"] == "r1" and row["autotune_s"] == ""
