"""python -m sweeps.compare: bad input, the printed verdicts, table against table, one real A/B run."""

import functools
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import arm_training, compare_main, python

from bench.results import stats, table
from sweeps import compare, table_compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=12", "--warmup_steps=2"]


compare_cli = functools.partial(python, "-m", "sweeps.compare")


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


# ---------------------------------------------------------------------------
# In process: sweeps.compare's main with its own flags, bench.run's processes replaced by a fake


@pytest.fixture
def fake_runs(monkeypatch):
    """bench.run's processes replaced: each call is recorded and appends an ok row (a CPU machine, no GPU)."""
    from bench.runner import autotune, processes

    monkeypatch.setattr(autotune, "_nvidia_gpus", lambda: [])
    calls = []

    def run_bench(args, results_path, **kwargs):
        calls.append(list(args))
        arm = next(a.split("=", 1)[1] for a in args if a.startswith("--arm="))
        row = {
            "run_id": f"fake{len(calls)}",
            "status": "ok",
            "images_per_sec": 100.0 if arm == "A" else 100.0 + len(calls),
            "comparison": next(a.split("=", 1)[1] for a in args if a.startswith("--comparison=")),
            "arm": arm,
        }
        table.append_row(results_path, row)
        return processes.Finished([], 0, table.read_rows(results_path)[-1:], "", "")

    monkeypatch.setattr(processes, "run_bench", run_bench)
    return calls


def test_arms_are_checked_as_bench_run_checks_them_before_either_runs(tmp_path, capsys, fake_runs, monkeypatch):
    """#6, #14: a foreign, binary or older table, an arm only the devices or the data refuse: one line, exit 2,
    nothing run (arm B's CIFAR-10 not prepared for tfds, offline: refused before arm A's first run)."""
    from bench.config import cifar_files
    from bench.results.table import SCHEMA

    monkeypatch.setattr(cifar_files, "download_host_reachable", lambda url, timeout=3.0: False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)

    foreign, binary, older = tmp_path / "foreign.csv", tmp_path / "binary.csv", tmp_path / "older.csv"
    foreign.write_text("a,b\n1,2\n")
    binary.write_bytes(bytes(range(256)) * 4)
    older.write_text(",".join(c for c in SCHEMA if c != "onednn") + "\n")
    good = str(tmp_path / "summary.csv")
    cases = [
        (["--a=--batch_norm keras", "--b=--batch_norm fused", f"--results={foreign}"], "not a results table"),
        (["--a=--batch_norm keras", "--b=--batch_norm fused", f"--results={binary}"], "not a results table"),
        (
            ["--a=--batch_norm keras", "--b=--batch_norm fused", f"--results={older}"],
            f"convert this one once with: python -m bench.results upgrade {older}",
        ),
        (["--a=--batch_norm keras", "--b=--num_gpus 1", f"--results={good}"], "--b='--num_gpus 1': --num_gpus=1"),
        (["--a=", f"--b=--data tfds --tfds_dir {tmp_path}", f"--results={good}"], "CIFAR-10 is not prepared"),
        (["--base", str(foreign), "--new", str(older)], f"--base: {foreign} is not a results table (header: "),
        (["--base", str(older), "--new", str(binary)], f"--new: {binary} is not a results table (not UTF-8"),
    ]
    for args, expected in cases:
        before = {p: p.read_bytes() for p in (foreign, binary, older)}
        code, out, err = compare_main(capsys, *args, *([] if "--base" in args else TINY))
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and err[0].count("error:") == 1, err
        assert err[0].endswith(expected) if "upgrade" in expected else expected in err[0], err
        assert "--results" not in err[0] or "--results" in " ".join(args), err  # the flag at fault, not another
        assert fake_runs == [] and not os.path.exists(good), args
        assert {p: p.read_bytes() for p in before} == before


def test_an_arm_bench_run_refuses_anyway_is_its_whole_error_line_once(tmp_path, capsys, monkeypatch):
    """#14: what bench.run refuses that no check could foresee: its own line, whole, after one `error:`."""
    from bench.runner import autotune, processes

    monkeypatch.setattr(autotune, "_nvidia_gpus", lambda: [])
    hint = "a refusal " * 40 + "with its hint: python -m bench.results upgrade X"
    refused = processes.Finished([], 2, [], "", f"some output\nerror: {hint}\n")
    monkeypatch.setattr(processes, "run_bench", lambda *a, **k: refused)
    code, _, err = compare_main(capsys, "--a=--xla", "--b=--noxla", f"--results={tmp_path / 's.csv'}", *TINY)
    assert code == 2 and err == [f"error: arm A: {hint}"]


def test_arms_parse_as_bench_run_parses_them_and_an_arm_of_defaults_is_possible(tmp_path, capsys, fake_runs):
    """#18, #19: --a="--autotune" (a bare flag, as bench.run takes it); --a="" is the defaults."""
    results = str(tmp_path / "summary.csv")
    code, out, err = compare_main(capsys, "--a=--autotune", "--b=", "--pairs=2", f"--results={results}", *TINY)
    assert code == 0, err
    a_args = [args for args in fake_runs if "--arm=A" in args]
    b_args = [args for args in fake_runs if "--arm=B" in args]
    assert len(a_args) == len(b_args) == 2 and all("--autotune" in args for args in a_args)
    assert not any("--autotune" in args for args in b_args)
    assert "A = '--autotune', B = ''" in out


def test_arms_that_make_the_same_run_on_this_machine_are_refused(tmp_path, capsys, fake_runs):
    """#19: the README's promise, with the defaults resolved as the run will resolve them on this (CPU) machine."""
    results = str(tmp_path / "summary.csv")
    for a, b in [
        ("--noxla", "--steps_per_loop 10"),  # both the CPU defaults
        ("", "--batch_norm fused"),  # auto is fused on CPUs
        ("--batch_norm auto", "--batch_norm fused"),
        ("--autotune", "--autotune"),
    ]:
        code, _, err = compare_main(capsys, f"--a={a}", f"--b={b}", f"--results={results}", *TINY)
        assert code == 2 and len(err) == 1 and "make the same run on this machine" in err[0], (a, b, err)
    assert fake_runs == []
    code, _, err = compare_main(capsys, "--a=--xla", "--b=--noxla", "--pairs=2", f"--results={results}", *TINY)
    assert code == 0 and len(fake_runs) == 4, err


def test_the_comparisons_own_flags_are_bounded_and_each_mode_refuses_the_others(tmp_path, capsys, fake_runs):
    """#10, #11, #20: --pairs bounded, --accuracy_band validated, the other mode's flags refused."""
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _table(base, [(20, "A", 600)])
    _table(new, [(20, "A", 600)])
    arms = ["--a=--xla", "--b=--noxla", f"--results={tmp_path / 's.csv'}"]
    tables = ["--base", str(base), "--new", str(new), "--out_dir", str(tmp_path / "out")]
    cases = [
        (arms + ["--pairs=1001"], "--pairs must be in [2, 1000]"),
        (arms + ["--accuracy_band=-3"], "--accuracy_band"),
        (arms + ["--accuracy_band=nan"], "--accuracy_band"),
        (arms + ["--fail_on_regression=5"], "--fail_on_regression: not for --a/--b"),
        (arms + ["--vary=depth"], "--vary: not for --a/--b"),
        (tables + ["--fail_if_slower=5"], "--fail_if_slower: not for --base/--new"),
        (tables + ["--pairs=3", "--steps=12"], "--pairs, --steps: not for --base/--new"),
    ]
    for args, expected in cases:
        started = time.perf_counter()
        code, _, err = compare_main(capsys, *args)
        assert code == 2 and len(err) == 1 and expected in err[0], (args, err)
        assert time.perf_counter() - started < 10
    assert fake_runs == [] and not (tmp_path / "out").exists()


def _failed_table(path, n):
    for i in range(n):
        table.append_row(
            str(path),
            {
                "run_id": f"{path.stem}f{i}",
                "status": "failed",
                "error": "boom",
                "device": "CPU: X",
                "data": "synthetic",
                "strategy": "default",
                "num_replicas": 1,
                "block": "preact",
                "shortcut": "A",
                "depth": 20,
                "precision": "float32",
                "xla": False,
                "global_batch_size": 128,
                "total_steps": 25,
                "tf_version": "2.21.0",
                "mode": "train",
                "sweep": path.stem,
            },
        )


def test_the_regression_gate_fails_a_configuration_with_no_ok_run_on_a_side(tmp_path, capsys):
    """#11: every new run failed: not "0 regressions" and exit 0."""
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _table(base, [(20, "A", 600), (20, "A", 610)])
    _failed_table(new, 2)
    out = ["--out_dir", str(tmp_path / "out")]
    code, stdout, _ = compare_main(capsys, "--base", str(base), "--new", str(new), *out, "--fail_on_regression=5")
    assert code == 1 and "1 with no ok run on a side" in stdout
    assert "FAIL: 1 configuration(s) with no ok run on a side" in stdout
    code, stdout, _ = compare_main(capsys, "--base", str(base), "--new", str(new), *out)
    assert code == 0  # no gate asked for: the report only


def test_an_unwritable_out_dir_is_one_line_and_nothing_is_written(tmp_path, capsys):
    """#9: a file's child, a read-only system folder, `plots` a file, compare.md a folder."""
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _table(base, [(20, "A", 600)])
    _table(new, [(20, "A", 590)])
    (tmp_path / "afile").write_text("")
    (tmp_path / "o1").mkdir()
    (tmp_path / "o1" / "plots").write_text("")
    (tmp_path / "o2" / "compare.md").mkdir(parents=True)
    for out_dir, expected in [
        (tmp_path / "afile" / "sub", "afile is not a folder"),
        ("/sys/x", "/sys is not a writable folder"),
        (tmp_path / "o1", "plots is not a folder"),
        (tmp_path / "o2", "compare.md: something other than a file is there"),
    ]:
        code, stdout, err = compare_main(capsys, "--base", str(base), "--new", str(new), "--out_dir", str(out_dir))
        assert code == 2 and len(err) == 1 and expected in err[0], (out_dir, err)
        assert stdout == ""
    assert sorted(os.listdir(tmp_path / "o1")) == ["plots"] and os.listdir(tmp_path / "o2") == ["compare.md"]
    assert not os.path.exists("/sys/x")


@pytest.mark.parametrize("column", ["depth", "global_batch_size", "num_replicas"])
def test_a_numeric_column_may_vary(tmp_path, capsys, column):
    """#8: --vary depth (or global_batch_size, num_replicas) was a TypeError."""
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _table(base, [(20, "A", 600), (20, "A", 610)])
    _table(new, [(20, "A", 500), (20, "A", 505)])
    changed = {"depth": "32", "global_batch_size": "256", "num_replicas": "2"}[column]
    rows = table.read_rows(str(new))
    new.unlink()
    for row in rows:
        table.append_row(str(new), {**row, column: changed})
    out = tmp_path / "out"
    code, stdout, err = compare_main(
        capsys, "--base", str(base), "--new", str(new), "--vary", column, "--out_dir", str(out)
    )
    assert code == 0, err
    assert "1 configurations in both tables, 0 only in base, 0 only in new" in stdout
    md = (out / "compare.md").read_text()
    old = {"depth": "20", "global_batch_size": "128", "num_replicas": "1"}[column]
    assert f"Allowed to differ (`--vary`): {column}: base {old}, new {changed}." in md
    assert "| ResNet" in md and "preact/A" in md


def test_the_same_table_as_base_and_new_is_warned_about(tmp_path, capsys):
    """#24: one table's rows compared with themselves are not two independent samples."""
    base = tmp_path / "base.csv"
    _table(base, [(20, "A", 600), (20, "A", 610)])
    other_name = os.path.join(str(tmp_path), ".", "base.csv")
    code, _, err = compare_main(capsys, "--base", str(base), "--new", other_name, "--out_dir", str(tmp_path / "o"))
    assert code == 0 and len(err) == 1 and err[0].startswith("warning: --base and --new are the same file")
    assert "**Warning:** --base and --new are the same file" in (tmp_path / "o" / "compare.md").read_text()
    other = tmp_path / "other.csv"
    _table(other, [(20, "A", 600), (20, "A", 610)])
    code, _, err = compare_main(capsys, "--base", str(base), "--new", str(other), "--out_dir", str(tmp_path / "o"))
    assert code == 0 and err == []
    copy = tmp_path / "copy.csv"  # a copy of the table: other file, the same runs
    copy.write_bytes(base.read_bytes())
    code, _, err = compare_main(capsys, "--base", str(base), "--new", str(copy), "--out_dir", str(tmp_path / "o"))
    assert code == 0 and len(err) == 1 and "hold 2 of the same runs (the same run_id, e.g. base0)" in err[0], err


def test_verdicts_say_what_the_interval_says():
    """#20: identical pairs are no interval; a CI of 0.955-1.030x is within ±4.5%, not ±4.7%."""
    lines, est = compare.report_lines(
        _runs([100, 100, 100], [100, 100, 100], acc={"A": [0.5, 0.5, 0.5], "B": [0.5, 0.5, 0.5]}), 5.0, 0.5
    )
    text = "\n".join(lines)
    assert "-0.0" not in text and "±0.0" not in text and "95% CI" not in text, text
    assert "images/sec B/A: 1.000x in each of the 3 pairs (no spread between them: no interval)" in text
    assert "verdict: A and B gave the same images/sec in every pair (no spread: no interval to judge by)" in text
    assert lines[-1] == "A and B reached the same test accuracy in every pair (no spread: no interval to judge by)"
    lines, _ = compare.report_lines(_runs([100, 100], [110, 110]), 5.0, 0.5)
    assert lines[-1] == "verdict: B was faster than A by 10.0% in every pair (no spread: no interval to judge by)"
    est = stats.Estimate(
        effect=math.log(0.992), low=math.log(0.955), high=math.log(1.030), n=5, sd=0.02, median=0.0, method="t"
    )
    ratio_line, verdict = compare.speed_text(est, 5.0)
    assert "95% CI 0.955-1.030x" in ratio_line
    assert verdict.startswith("no difference larger than ±4.5% (") and "±5% band" in verdict
    assert table_compare.flag(est, 5.0) == "no change (within ±4.5%)"


def test_a_stopped_comparison_says_where_the_stopped_runs_row_is(tmp_path, capsys, monkeypatch):
    """#1, #2 in process: the run told of the signal ended with its row; compare says where, then exits 143."""
    from bench.runner import autotune, processes

    monkeypatch.setattr(autotune, "_nvidia_gpus", lambda: [])
    results = str(tmp_path / "summary.csv")
    row = {"run_id": "r1", "status": "interrupted", "error": "stopped by SIGTERM at step 102"}
    table.append_row(results, row)

    def run_bench(args, results_path, **kwargs):
        raise processes.Stopped("SIGTERM", processes.Finished([], 143, table.read_rows(results), "", "", results))

    monkeypatch.setattr(processes, "run_bench", run_bench)
    code, out, err = compare_main(capsys, "--a=--xla", "--b=--noxla", f"--results={results}", *TINY)
    assert code == 143 and err == ["error: the comparison was stopped by SIGTERM"]
    assert f"pair 1 A: stopped by SIGTERM; its interrupted row is in {results}" in out
    assert "stopped; the rows written so far stay in" in out


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_comparison_waits_for_the_running_arms_interrupted_row(tmp_path, signum):
    """#1 (SIGTERM to sweeps.compare), #2 (Ctrl-C on its terminal, long windows): the running bench.run is told
    once, finishes its window, writes its `interrupted` row; then compare exits 143 / 130, no process left."""
    out = tmp_path / "summary.csv"
    args = ["--a=--batch_norm keras", "--b=--batch_norm fused", "--pairs=2", f"--results={out}"]
    run = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=100000", "--steps_per_loop=100", "--warmup_steps=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps.compare", *args, *run],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job has
    )
    try:
        child = arm_training(proc)  # else its row says "while setting up"
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on the terminal does: the whole foreground group
        else:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143}[name], stdout + stderr
    rows = table.read_rows(str(out))
    assert [(r["arm"], r["status"]) for r in rows] == [("A", "interrupted")], stdout + stderr
    assert rows[0]["error"].startswith(f"stopped by {name}"), rows[0]["error"]
    assert f"pair 1 A: stopped by {name}; its interrupted row is in {out}" in stdout
    assert f"error: the comparison was stopped by {name}" in stderr
    assert (
        not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    )
