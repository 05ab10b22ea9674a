"""python -m sweeps.compare: bad input, the printed verdicts, table against table, one real A/B run."""

import math
import os
import subprocess
import sys

import pytest

from bench.results import stats, table
from sweeps import compare, table_compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=12", "--warmup_steps=2"]


def compare_cli(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "sweeps.compare", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path):
    out = str(tmp_path / "summary.csv")
    cases = [
        (["--a=--precision fp32 --bogus 3", "--b=--precision bf16"], "--a="),
        (["--a=--precision fp32", "--b=--precision bf16", "--pairs=0"], "--pairs"),
        (["--a=--precision fp32", "--b=--precision bf16", "--pairs=1"], "--pairs"),
        (["--a=--precision fp32", "--b=--precision float32"], "the same run"),
        (["--a=--n 1", "--b=--n 1", "--n=2"], "the same run"),
        (["--a=--precision fp32 --arm B", "--b=--precision bf16"], "--arm"),
        (["--a=--precision fp32", "--b=--precision xx"], "--b="),
        (["--a=--precision fp32", "--b=--precision bf16", "--checkpoint_dir", str(tmp_path / "ck")], "afresh"),
        (["--a=--precision fp32"], "both arms"),
        (["--base", str(tmp_path / "missing.csv"), "--new", str(tmp_path / "missing.csv")], "no results file"),
        (["--base", str(tmp_path / "missing.csv")], "--base and --new"),
        (["--a=--precision fp32", "--b=--precision bf16", "stray"], "unexpected"),
    ]
    for args, expected in cases:
        proc = compare_cli(*args, f"--results={out}", *TINY)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (args, lines)
        assert not os.path.exists(out) and not os.path.exists(tmp_path / "ck"), args


def test_help_lists_the_comparison_flags_and_the_run_flags():
    proc = compare_cli("--help")
    assert proc.returncode == 0
    for flag in ("--a", "--b", "--pairs", "--fail_if_slower", "--base", "--new", "--fail_on_regression", "--precision"):
        assert flag in proc.stdout.split(), flag


def _runs(rates_a, rates_b, acc=None):
    order = stats.abba_order(len(rates_a))
    values = {"A": list(rates_a), "B": list(rates_b)}
    return [
        stats.Run(p, arm, k, "ok", values[arm][p - 1], None if acc is None else acc[arm][p - 1])
        for k, (p, arm) in enumerate(order, start=1)
    ]


def test_the_printed_report_names_the_ratio_its_interval_and_the_verdict():
    lines, est = compare.report_lines(_runs([100, 102, 98, 101], [150, 149, 152, 151]), 5.0, 0.5)
    text = "\n".join(lines)
    assert "   1    100.0    150.0  1.500" in text
    assert "images/sec B/A: 1.501x (95% CI 1.444-1.562x" in text and "95% CI" in text
    assert "verdict: B is faster than A by 50.1%" in text
    same, _ = compare.report_lines(_runs([100, 101, 99, 100], [100.5, 100, 99.5, 100.2]), 5.0, 0.5)
    assert "verdict: no difference larger than ±" in same[-1] and "±5% band" in same[-1]
    unsure, _ = compare.report_lines(_runs([100, 120], [115, 100]), 5.0, 0.5)
    assert "inconclusive" in unsure[-1] and "pairs in all would likely settle it" in unsure[-1]
    acc, _ = compare.report_lines(
        _runs([1, 1, 1], [1, 1, 1], acc={"A": [0.90, 0.91, 0.90], "B": [0.93, 0.93, 0.94]}), 5.0, 0.5
    )
    assert acc[-2].startswith("test accuracy B-A: +3.00 pp") and acc[-1] == "B is more accurate (the 95% CI excludes 0)"


def test_a_failed_run_is_reported_and_leaves_its_pair_out():
    runs = _runs([100, 100, 100], [120, 121, 119])
    runs[2] = stats.Run(2, "B", 3, "failed", error="exit 1: boom")
    lines, est = compare.report_lines(runs, 5.0, 0.5)
    assert lines[0] == "run failed: pair 2 B (failed: exit 1: boom); its pair is left out" and est.n == 2


def test_runs_measured_in_doubtful_conditions_are_shown():
    import dataclasses

    runs = _runs([100, 102, 98, 101], [150, 149, 152, 151])
    runs[1] = dataclasses.replace(runs[1], flags=("unstable", "contended"))
    runs[4] = dataclasses.replace(runs[4], flags=("contended",))
    assert compare.progress_line(runs[1], 2, 8).endswith("150.0 img/s [unstable, contended]")
    lines, _ = compare.report_lines(runs, 5.0, 0.5)
    said = [line for line in lines if line.startswith("conditions:")]
    assert len(said) == 1 and "1 of 8 unstable, 2 of 8 contended" in said[0]
    calm, _ = compare.report_lines(_runs([100, 102], [150, 149]), 5.0, 0.5)
    assert not any(line.startswith("conditions:") for line in calm)


def _table(path, rows):
    for i, (depth, shortcut, rate) in enumerate(rows):
        table.append_row(
            str(path),
            {
                "run_id": f"{path.stem}{i}",
                "status": "ok",
                "device": "CPU: X",
                "data": "synthetic",
                "strategy": "default",
                "num_replicas": 1,
                "block": "preact",
                "shortcut": shortcut,
                "depth": depth,
                "precision": "float32",
                "xla": False,
                "global_batch_size": 128,
                "total_steps": 25,
                "tf_version": "2.21.0",
                "mode": "train",
                "images_per_sec": rate,
                "sweep": path.stem,
            },
        )


def test_table_against_table_flags_regressions_lists_the_unmatched_and_fails_on_request(tmp_path):
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _table(
        base,
        [
            (20, "A", 600),
            (20, "A", 610),
            (20, "A", 590),
            (20, "B", 500),
            (20, "B", 505),
            (20, "B", 495),
            (32, "A", 400),
        ],
    )
    _table(
        new,
        [
            (20, "A", 480),
            (20, "A", 490),
            (20, "A", 470),
            (20, "B", 501),
            (20, "B", 499),
            (20, "B", 503),
            (56, "A", 200),
        ],
    )
    proc = compare_cli("--base", str(base), "--new", str(new), "--out_dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 configurations in both tables, 1 only in base, 1 only in new; 1 regressions" in proc.stdout
    md = (tmp_path / "out" / "compare.md").read_text()
    assert (
        "| ResNet-20 preact/A | 3 | 3 | 599.9 | 479.9 | 0.800 | 0.762–0.840 | **regression** |" in md
        and "**regression**" in md
    )
    assert "ResNet-20 preact/B" in md and "no change (within ±" in md
    assert "Only in the base table:\n\n- ResNet-32 preact/A" in md and "Only in the new table:\n\n- ResNet-56" in md
    assert (tmp_path / "out" / "plots" / "compare.png").stat().st_size > 1000
    failing = compare_cli(
        "--base", str(base), "--new", str(new), "--out_dir", str(tmp_path / "out"), "--fail_on_regression", "10"
    )
    assert failing.returncode == 1 and "FAIL: 1 configuration(s) slower by more than 10%" in failing.stdout
    lenient = compare_cli(
        "--base", str(base), "--new", str(new), "--out_dir", str(tmp_path / "o2"), "--fail_on_regression", "30"
    )
    assert lenient.returncode == 0


def test_varied_columns_still_match():
    import pandas as pd

    base = pd.DataFrame(
        [
            {
                "depth": 20,
                "block": "preact",
                "shortcut": "A",
                "tf_version": "2.21.0",
                "status": "ok",
                "images_per_sec": r,
            }
            for r in (100.0, 101.0)
        ]
    )
    new = base.assign(tf_version="2.22.0", images_per_sec=[110.0, 111.0])
    matches, only_base, only_new, _ = table_compare.compare(base.copy(), new.copy())
    assert not matches and len(only_base) == len(only_new) == 1
    matches, *_ = table_compare.compare(base.copy(), new.copy(), vary=["tf_version"])
    assert len(matches) == 1 and math.isclose(matches[0].ratio, math.sqrt(110 * 111 / (100 * 101)))


@pytest.mark.slow
def test_a_real_comparison_of_two_tiny_arms_in_abba_order(tmp_path):
    out = tmp_path / "summary.csv"
    proc = compare_cli(
        "--a=--batch_norm keras", "--b=--batch_norm fused", "--pairs=2", "--comparison=tiny", f"--results={out}", *TINY
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table.read_rows(str(out))
    assert [(r["comparison"], r["arm"], r["batch_norm"]) for r in rows] == [
        ("tiny", "A", "keras"),
        ("tiny", "B", "fused"),
        ("tiny", "B", "fused"),
        ("tiny", "A", "keras"),
    ]
    assert all(r["status"] == "ok" and r["command"].startswith("python -m bench.run") for r in rows)
    assert "images/sec B/A:" in proc.stdout and "verdict: " in proc.stdout and "[4/4] pair 2 A:" in proc.stdout
