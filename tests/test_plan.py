"""Sweeps run in rounds and say what they will cost (no TensorFlow, no Ray)."""

import json

from bench.config import options
from bench.results import table
from sweeps import plan, space

FIELDS = {f.name: f for f in options.flag_fields()}


def _axes(**given):
    axes = {f.name: [f.default] for f in options.flag_fields()}
    axes.update({k: options.axis_values(FIELDS[k], v) for k, v in given.items()})
    return axes


def test_repeats_run_in_rounds_each_visiting_every_configuration_once():
    trials = space.build_trials(_axes(n="1,2", shortcut="A,B", steps="20"), repeats=3, sweep_name="s")
    seeds = [t.config.seed for t in trials]
    assert seeds == [0] * 4 + [1] * 4 + [2] * 4
    configs = [(t.config.n, t.config.shortcut) for t in trials]
    assert configs[:4] == configs[4:8] == configs[8:]
    assert [t.config.sweep_position for t in trials] == list(range(1, 13))


def test_a_shuffle_keeps_the_rounds_and_is_reproducible():
    axes = _axes(n="1,2,3", shortcut="A,B", steps="20")
    one = space.build_trials(axes, repeats=2, sweep_name="s", shuffle_seed=5)
    again = space.build_trials(axes, repeats=2, sweep_name="s", shuffle_seed=5)
    plain = space.build_trials(axes, repeats=2, sweep_name="s")
    assert [t.key for t in one] == [t.key for t in again] != [t.key for t in plain]
    assert [t.config.seed for t in one] == [0] * 6 + [1] * 6
    assert sorted(t.key for t in one) == sorted(t.key for t in plain)  # the same trials, keys stable


def test_the_row_records_its_position():
    cfg = space.build_trials(_axes(n="1,2", steps="20"), 1, "s")[1].config
    from bench.results import rows

    assert rows.config_row(cfg, "failed")["sweep_position"] == 2
    assert rows.config_row(options.RunConfig(), "failed")["sweep_position"] is None


def test_the_default_sweep_plan_is_30_trials_549_tflop(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path / "nocache"))
    trials = space.build_trials(_axes(n="3,5,7,9,18", shortcut="A,B,C", block="preact,original"), 1, "s")
    _, flops, text = plan.estimate([t.config for t in trials], str(tmp_path / "none.csv"))
    assert len(trials) == 30 and round(flops / 1e12) == 549
    assert "30 trials, 549.2 TFLOP" in text and "no estimate yet" in text
    # a measured peak in the cache: estimate = FLOPs / (peak x assumed MFU) + start-up
    (tmp_path / "nocache").mkdir()
    (tmp_path / "nocache" / "peak.json").write_text(json.dumps({"CPU: X|tf2.21.0|onednn|float32|scalar-sync": 150.0}))
    seconds, _, text = plan.estimate([t.config for t in trials], str(tmp_path / "none.csv"))
    expected = flops / (150e9 * plan.ASSUMED_MFU) + 30 * plan.DEFAULT_STARTUP_S
    assert abs(sum(seconds.values()) - expected) < 1 and "measured peak 150 GFLOP/s" in text


def test_earlier_rows_of_this_machine_refine_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path / "nocache"))
    path = str(tmp_path / "summary.csv")
    host = table.base_provenance()["host"]
    for rate in (500.0, 600.0, 700.0):  # ResNet-20 at 245 MFLOP per image: ~147 GFLOP/s sustained
        table.append_row(
            path,
            {
                "run_id": f"r{rate:.0f}",
                "status": "ok",
                "host": host,
                "precision": "float32",
                "images_per_sec": rate,
                "flops_per_image": 244879104,
                "time_to_first_step_s": 10,
            },
        )
    table.append_row(
        path,
        {
            "run_id": "other",
            "status": "ok",
            "host": "elsewhere",
            "precision": "float32",
            "images_per_sec": 5.0,
            "flops_per_image": 244879104,
        },
    )
    cfg = space.build_trials(_axes(n="3", steps="200"), 1, "s")[0].config
    seconds, flops, text = plan.estimate([cfg], path)
    assert abs(seconds[cfg.trial_key] - (10 + flops / (600 * 244879104))) < 0.01
    assert "3 earlier rows of this machine" in text


def test_progress_scales_the_remaining_estimates_by_the_finished_trials():
    progress = plan.Progress({"a": 100.0, "b": 100.0, "c": 200.0}, now=0.0)
    assert progress.finish("a", now=150.0) == "2m30s elapsed, ETA 7m30s"  # 1.5x slower than estimated
    assert progress.finish("b", now=300.0) == "5m00s elapsed, ETA 5m00s"
    assert progress.finish("c", now=600.0) == "10m00s elapsed, done"
    unknown = plan.Progress({"a": None, "b": None}, now=0.0)
    assert unknown.finish("a", now=60.0) == "1m00s elapsed, ETA 1m00s"


def test_forcing_a_seed_the_sweep_never_runs_is_refused():
    import pytest

    from bench.config.options import ConfigError

    with pytest.raises(ConfigError, match=r"--diverge_seeds: no trial runs seed 7 \(the sweep's seeds: 0, 1, 2\)"):
        space.build_trials(_axes(n="1", steps="20", diverge_seeds="1,7"), repeats=3, sweep_name="s")
    trials = space.build_trials(_axes(n="1", steps="20", diverge_seeds="1"), repeats=3, sweep_name="s")
    assert [t.config.inject_nan_at_step is not None for t in trials] == [False, True, False]
