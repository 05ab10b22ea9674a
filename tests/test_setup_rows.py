"""A run that ended while setting up (failed, or interrupted by Ctrl-C / SIGTERM) has a row of its configuration
columns only (no device, replicas, BN kernel, TensorFlow version ...). The report and the table comparison count it
with the configuration it belongs to, never as a configuration of its own."""

import dataclasses
import os
import subprocess
import sys

import pytest

from bench.config import defaults, validation
from bench.config.options import RunConfig
from bench.results import metrics, rows, table
from sweeps import report, table_compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=12", "--warmup_steps=2"]


def measured_row(cfg, run_id, rate, device="CPU: Test CPU"):
    """The row `bench.runner.benchmark` writes for a run of `cfg` that set up on `device` and timed `rate`."""
    resolved = defaults.resolve(cfg, "CPU", 1, "synthetic")
    facts = dataclasses.replace(_facts(), run_id=run_id, device=device, batch_norm=resolved.batch_norm)
    timed = metrics.Throughput(rate, 1.0, 1.0, 30.0, 31.0, 32.0, 10, 10 * 16 / rate, 5)
    measured = rows.Measured("ok", "", cfg.steps, timed, 1.0, 2.0, 3.0, 2.3, None, None, None, None, 0, "none")
    return rows.run_row(resolved, facts, measured)


def setup_row(cfg, run_id, status="interrupted", error="stopped by SIGTERM while setting up"):
    """The row of a run of `cfg` that ended while setting up (`benchmark._ended_in_setup`'s)."""
    return {**rows.config_row(cfg, status, error, run_id=run_id), "command": "python -m bench.run"}


def config(**changes):
    given = {"n": 1, "batch_size": 16, "data": "synthetic", "steps": 12, "warmup_steps": 2, **changes}
    return validation.validate(RunConfig(**given))


def test_a_row_that_ended_in_setup_is_counted_with_its_configuration(tmp_path):
    path = str(tmp_path / "s.csv")
    cfg, deeper = config(), config(n=2)
    for row in (measured_row(cfg, "a1", 500.0), measured_row(cfg, "a2", 520.0), measured_row(deeper, "b1", 300.0)):
        table.append_row(path, row)
    table.append_row(path, setup_row(cfg, "a3"))
    table.append_row(path, setup_row(deeper, "b2", "failed", "RuntimeError: boom"))
    summary = report.per_configuration(report.load(path))
    assert len(summary) == 2, summary[["depth", "num_replicas", "device", "runs"]]
    by_depth = {int(r.depth): r for r in summary.itertuples()}
    assert (by_depth[8].runs, by_depth[8].ok, by_depth[8].not_ok) == (3, 2, "interrupted")
    assert (by_depth[14].runs, by_depth[14].ok, by_depth[14].not_ok) == (2, 1, "failed")
    assert by_depth[8].ips == pytest.approx(510.0)
    text = report.markdown(summary, path)
    assert "× ?" not in text and "| ? |" not in text and "5 rows, 2 configurations (2 not ok)" in text
    assert "| 3 (2) interrupted |" in text
    # table against table: the same configurations on both sides, nothing "only in" one table
    other = str(tmp_path / "t.csv")
    for row in (measured_row(cfg, "c1", 505.0), measured_row(deeper, "c2", 310.0), setup_row(cfg, "c3")):
        table.append_row(other, row)
    matches, only_base, only_new, _ = table_compare.compare(report.load(path), report.load(other))
    assert len(matches) == 2 and not only_base and not only_new


def test_a_setup_row_names_the_data_its_flags_chose_and_not_what_auto_would_find():
    assert setup_row(config(), "x")["data"] == "synthetic"
    assert setup_row(config(data="auto"), "y")["data"] == ""  # files, tfds or synthetic: the setup's to find


def test_a_setup_row_that_fits_no_single_configuration_keeps_its_own_line(tmp_path):
    """Two devices ran this configuration: which one the interrupted run was on is unknown, so it is not guessed."""
    path = str(tmp_path / "s.csv")
    cfg = config()
    table.append_row(path, measured_row(cfg, "a1", 500.0, device="CPU: one"))
    table.append_row(path, measured_row(cfg, "a2", 900.0, device="CPU: two"))
    table.append_row(path, setup_row(cfg, "a3"))
    table.append_row(path, setup_row(config(n=5), "z1"))  # no run of it set up
    table.append_row(path, {**setup_row(cfg, "s1"), "sweep": "another"})  # a sweep's name is not a wildcard
    summary = report.per_configuration(report.load(path))
    assert sorted(summary["runs"]) == [1, 1, 1, 1, 1] and summary["device"].tolist().count("") == 3


def failed_row(cfg, run_id, steps):
    """The row of a run of `cfg` that set up and failed after `steps` steps (0: at its first step)."""
    resolved = defaults.resolve(cfg, "CPU", 1, "synthetic")
    facts = dataclasses.replace(_facts(), run_id=run_id, device="CPU: Test CPU", batch_norm=resolved.batch_norm)
    measured = rows.Measured.nothing("failed", "RuntimeError: boom", steps)
    return rows.run_row(resolved, facts, measured)


@pytest.mark.parametrize("ended", ["in setup", "at step 1", "at step 5"])
def test_a_new_table_whose_every_run_did_not_finish_fails_the_regression_gate(tmp_path, capsys, ended):
    """#23 case 11: not its own configuration ("0 regressions", exit 0) but base's, with no ok run on a side."""
    from helpers import compare_main

    cfg = config()
    base, new = str(tmp_path / "base.csv"), str(tmp_path / "new.csv")
    for i, rate in enumerate((500.0, 510.0)):
        table.append_row(base, measured_row(cfg, f"a{i}", rate))
    for run_id in ("n1", "n2"):
        steps = {"at step 1": 0, "at step 5": 5}.get(ended)
        table.append_row(new, setup_row(cfg, run_id) if steps is None else failed_row(cfg, run_id, steps))
    matches, only_base, only_new, _ = table_compare.compare(report.load(base), report.load(new))
    assert len(matches) == 1 and not only_base and not only_new and matches[0].new == []
    code, out, _ = compare_main(
        capsys, f"--base={base}", f"--new={new}", f"--out_dir={tmp_path / 'out'}", "--fail_on_regression=5"
    )
    assert code == 1 and "FAIL: 1 configuration(s) with no ok run on a side" in out, out


@pytest.mark.e2e
def test_report_and_compare_count_a_run_interrupted_in_setup_with_its_configuration(tmp_path):
    from helpers import seed_peak_cache

    cache = tmp_path / "cache"
    seed_peak_cache(str(cache))
    env = {**os.environ, "PYTHONPATH": ROOT, "RESNET_BENCH_CACHE": str(cache)}
    path = tmp_path / "s.csv"

    def run(*command):
        return subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    assert run("-m", "bench.run", *TINY, f"--results={path}").returncode == 0
    patch = (
        "import os, signal, time, bench.hardware.devices as d; "
        "d.setup = lambda cfg: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(60))"
    )
    stopped = run(
        "-c", f"import sys, bench.run as r; {patch}; sys.argv[0] = 'bench.run'; r.entry()", *TINY, f"--results={path}"
    )
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert [r["status"] for r in table.read_rows(str(path))] == ["ok", "interrupted"]
    done = run("-m", "sweeps.report", f"--results={path}", f"--out_dir={tmp_path / 'report'}")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x for x in (tmp_path / "report" / "summary.md").read_text().splitlines() if x.startswith("| – |")]
    assert len(lines) == 1 and "| default × 1 |" in lines[0] and "| 2 (1) interrupted |" in lines[0], lines
    compared = run("-m", "sweeps.compare", f"--base={path}", f"--new={path}", f"--out_dir={tmp_path / 'cmp'}")
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "1 configurations in both tables, 0 only in base, 0 only in new" in compared.stdout


def test_a_failure_whose_own_record_fails_too_still_has_its_failed_row(tmp_path):
    from bench.config import exits
    from bench.runner import benchmark

    class Broken:  # a run that crashed mid-way, and whose record of the crash raises as well
        step = 7
        stop_requested = None

        def run(self):
            raise RuntimeError("boom")

        def measured(self, status, error):
            raise TypeError("the record could not be made")

    cfg = config(results=str(tmp_path / "s.csv"))
    measured, code = benchmark._train(Broken(), cfg, "r1")
    assert code == exits.EXIT_FAILED and (measured.status, measured.error, measured.steps) == (
        "failed",
        "RuntimeError: boom",
        7,
    )
    row = rows.run_row(defaults.resolve(cfg, "CPU", 1, "synthetic"), _facts(), measured)
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom" and not row.get("images_per_sec")
    assert row["run_id"] == "r1" and row["total_steps"] == 7


def _facts():
    return rows.RunFacts(
        run_id="r1",
        command="python -m bench.run",
        tf_version="2.21.0",
        keras_version="3.15.1",
        device="CPU: Test CPU",
        num_replicas=1,
        onednn=True,
        batch_norm="keras",
        params=77850,
        data="synthetic",
        train_images=50000,
        peak_gflops=100.0,
        started=0.0,
        augment="none",
    )


def test_a_signal_that_native_code_turned_into_another_error_is_still_an_interrupted_row(tmp_path, monkeypatch):
    # A Ctrl-C inside TensorFlow's import came out as "ImportError: initialization failed" (the hostile review):
    # the setup's handler had seen the signal, so the row says interrupted and the exit status is 130.
    import signal
    import time

    from bench.config import exits
    from bench.runner import benchmark

    def setup_crossed_by_a_signal(cfg):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises Interrupted here
        except exits.Interrupted:
            raise ImportError("initialization failed") from None
        raise AssertionError("the signal did not arrive")

    monkeypatch.setattr(benchmark, "_devices_and_data", setup_crossed_by_a_signal)
    path = tmp_path / "s.csv"
    outcome = benchmark.run(config(results=str(path)))
    assert (outcome.status, outcome.exit_code) == ("interrupted", 130)
    assert outcome.row["error"] == "stopped by SIGINT while setting up"
    assert [r["status"] for r in table.read_rows(str(path))] == ["interrupted"]
