"""MLPerf's scoring of a result, the convergence guard and the papers' accuracy bands (issue #24).

Pure functions on made-up times and rows (fast), then the report, the table comparison and
`sweeps.compare` reading them; the end-to-end demonstrations (a sweep of 5 seeds to a target on
CIFAR-format files, a comparison against a deliberately worse learning rate) are marked e2e.
"""

import math
import os

import pytest
from cifar_files import write_learnable_cifar
from helpers import python

from bench.results import bands, convergence, scoring, stats, table
from sweeps import compare, report, space, table_compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---- the olympic score ---------------------------------------------------------------------------------------


def test_five_runs_drop_the_fastest_and_the_slowest():
    score = scoring.olympic([50.0, 10.0, 30.0, 20.0, 40.0], seeds=range(5))
    assert score.verdict == "valid" and score.value == pytest.approx(30.0) and score.counted == (20.0, 30.0, 40.0)
    assert score.needed == 0 and score.not_converged == 0 and scoring.RUNS_PER_RESULT == 5


def test_one_run_that_never_converged_is_the_slowest_and_two_make_the_result_invalid():
    one = scoring.olympic([10.0, None, 30.0, 20.0, 40.0], seeds=range(5))
    assert one.verdict == "valid" and one.value == pytest.approx(30.0)  # 10 dropped, the non-converged one dropped
    assert one.not_converged == 1 and "counted as the slowest" in one.note
    two = scoring.olympic([10.0, None, 30.0, float("nan"), 40.0], seeds=range(5))
    assert two.verdict == "invalid" and two.value is None and "2 of the 5 runs" in two.note


def test_fewer_runs_are_provisional_or_too_few_and_say_how_many_more():
    three = scoring.olympic([3.0, 1.0, 2.0], seeds=(0, 1, 2))
    assert three.verdict == "provisional" and three.value == 2.0 and three.needed == 2 and "2 more runs" in three.note
    two = scoring.olympic([1.0, 2.0], seeds=(0, 1))
    assert two.verdict == "too few runs" and two.value is None and two.needed == 3


def test_more_runs_than_a_result_take_the_median_window_not_the_best_five():
    times = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]  # 7 launches
    score = scoring.olympic(times, seeds=range(7))
    assert score.window == (2, 6) and score.counted == (3.0, 4.0, 5.0) and score.value == pytest.approx(4.0)
    best_five = sum([2.0, 3.0, 4.0]) / 3  # what keeping the fastest five would give: forbidden
    assert score.value > best_five


def test_runs_that_share_a_seed_are_no_result():
    score = scoring.olympic([1.0, 2.0, 3.0, 4.0, 5.0], seeds=(0, 1, 1, 2, 3))
    assert score.verdict == "invalid" and "share seeds (1)" in score.note


def test_a_sweep_with_repeats_gives_every_run_of_a_configuration_its_own_seed():
    trials = space.build_trials({"n": [1, 2], "steps": [20], "seed": [7]}, repeats=5, sweep_name="s")
    by_config = {}
    for t in trials:
        by_config.setdefault(t.config.n, []).append(t.config.seed)
    assert by_config == {1: [7, 8, 9, 10, 11], 2: [7, 8, 9, 10, 11]}
    assert all(not scoring.repeated_seeds(seeds) for seeds in by_config.values())


# ---- the convergence guard ----------------------------------------------------------------------------------


def test_the_guard_flags_a_setting_that_needs_significantly_more_epochs():
    flagged = convergence.guard([10, 11, 10, 12, 11], [14, 15, 13, 16, 15])
    assert flagged.flagged and flagged.test.p < 0.05 and "needs more epochs" in flagged.text()
    same = convergence.guard([10, 11, 10, 12, 11], [11, 10, 12, 10, 11])
    assert not same.flagged and same.test.p > 0.05
    fewer = convergence.guard([14, 15, 13, 16, 15], [10, 11, 10, 12, 11])
    assert not fewer.flagged and fewer.test.p > 0.5  # one-sided: needing fewer epochs is never flagged


def test_the_guard_on_runs_that_converge_at_the_same_evaluation_and_on_too_few_runs():
    exact = convergence.guard([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert exact.flagged and "compared exactly" in exact.test.method
    assert not convergence.guard([2.0, 2.0], [2.0, 2.0]).flagged
    too_few = convergence.guard([1.0, None, None], [2.0, 3.0])  # two of the reference's runs never reached it
    assert too_few.test.p is None and not too_few.flagged and too_few.reference_missed == 2


def test_scipy_agrees_with_the_t_intervals_of_results_stats():
    """The one-sided test at 0.05 excludes 0 exactly when the two-sided 90% Welch interval does."""
    base, new = [10.0, 12.0, 11.0, 13.0], [13.0, 15.0, 12.0, 16.0]
    import scipy.stats

    p = stats.greater_than(base, new).p
    res = scipy.stats.ttest_ind(new, base, equal_var=False)
    low = res.confidence_interval(0.90).low
    assert (p < 0.05) == (low > 0)


def test_the_speed_up_is_stated_per_step_and_to_the_target():
    s = convergence.speedup([100, 100], [150, 150], [10.0, 10.0], [20.0, None])
    assert s.per_step == pytest.approx(1.5) and s.to_target == pytest.approx(0.5)
    assert "faster per step, slower to the target" in s.text()


# ---- accuracy bands -------------------------------------------------------------------------------------------

PAPER_ROW = {
    "recipe": "paper",
    "data": "files",
    "mode": "train",
    "total_steps": "64000",
    "global_batch_size": "128",
    "epochs": str(64000 * 128 / 50000),
    "lr_scale": "1.0",
    "target_accuracy": "",
}


def test_bands_of_the_papers_configurations():
    tf56 = bands.band_for("original", 56, "B")
    assert (tf56.low, tf56.high) == (0.929, 0.938) and tf56.judge(0.92) == "below the band"
    r110 = bands.band_for("original", 110, "A")
    assert r110.low == pytest.approx(1 - 0.0693) and r110.high == pytest.approx(1 - 0.0629)
    assert r110.judge(0.935) == "inside" and r110.judge(0.94) == "above the band"
    r20 = bands.band_for("original", 20, "A")
    assert r20.paper_error == 8.75 and r20.low == pytest.approx(1 - 0.0907)
    assert "ResNet-110's spread" in r20.source
    assert bands.band_for("preact", 20, "B") is None  # no paper reports it
    assert bands.band_for("bottleneck", 164, "B").paper_error == 5.46
    assert report.REFERENCE_ERROR["original"][110] == 6.43 and report.REFERENCE_ERROR["preact"] == {110: 6.37}


@pytest.mark.parametrize(
    "change,applies",
    [
        ({}, True),
        ({"data": "tfds"}, True),
        ({"data": "synthetic"}, False),
        ({"recipe": "bench"}, False),
        ({"lr_scale": "0.5"}, False),
        ({"target_accuracy": "0.9"}, False),
        ({"total_steps": "1000"}, False),  # not the whole recipe
        ({"epochs": str(64000 * 128 / 128)}, False),  # other files: 128 training images, not CIFAR-10's 50,000
        ({"mode": "inference"}, False),
    ],
)
def test_a_band_applies_only_to_the_papers_full_recipe_on_cifar10(change, applies):
    assert bands.full_paper_recipe({**PAPER_ROW, **change}) is applies


# ---- the report, the table comparison, sweeps.compare ------------------------------------------------------------


def _row(run_id, **fields):
    row = {c: "" for c in table.SCHEMA}
    base = dict(
        run_id=run_id,
        status="ok",
        sweep="s",
        device="CPU: test",
        data="files",
        strategy="default",
        num_replicas="1",
        block="preact",
        shortcut="B",
        depth="8",
        n="1",
        precision="float32",
        xla="false",
        global_batch_size="128",
        mode="train",
        loop="ctl",
        batch_norm="fused",
        recipe="bench",
        total_steps="40",
        images_per_sec="100",
        test_accuracy="0.95",
        target_accuracy="0.9",
        lr_scale="1.0",
        tf_version="2.21.0",
    )
    row.update(base)
    row.update({k: str(v) for k, v in fields.items()})
    return row


def _write(path, rows):
    for r in rows:
        table.append_row(str(path), r)


def _target_rows(prefix, times, epochs, **fields):
    rows = []
    for i, (t, e) in enumerate(zip(times, epochs)):
        reached = t is not None
        rows.append(
            _row(
                f"{prefix}{i}",
                seed=i,
                time_to_target_s=t if reached else "",
                epochs_to_target=e if reached else "",
                **fields,
            )
        )
    return rows


def test_the_report_scores_each_configuration_to_a_target_and_guards_its_convergence(tmp_path):
    path = tmp_path / "s.csv"
    rows = _target_rows("ref", [10.0, 11.0, 12.0, 13.0, 30.0], [1, 1, 1, 1, 1])
    rows += _target_rows(
        "bf", [20.0, 22.0, None, 24.0, 21.0], [2, 2, 0, 2, 2], precision="mixed_bfloat16", images_per_sec="200"
    )
    rows[7]["status"] = "diverged"  # the bf16 run that never reached the target
    rows += _target_rows("lr", [20.0, None, 25.0, None, 22.0], [3, 0, 3, 0, 3], lr_scale="0.1")
    rows += _target_rows("few", [5.0, 6.0], [1, 1], global_batch_size="256")
    _write(path, rows)
    md, _ = report.build(str(path), str(tmp_path / "out"))
    text = open(md).read()
    assert "## Time to target (MLPerf scoring)" in text and "## Convergence against the reference" in text
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ResNet-8")}
    ref = next(line for line in text.splitlines() if "precision float32, global_batch_size 128, lr_scale 1.0 |" in line)
    assert "| 5 (5) | yes |" in ref and "| 12.0 |" in ref and "valid: olympic mean of 3 of 5 runs" in ref
    bf = next(line for line in text.splitlines() if "mixed_bfloat16" in line and "| valid" in line)
    assert "| 22.3 |" in bf and "counted as the slowest" in bf  # 20 and the non-converged run dropped
    lr = next(line for line in text.splitlines() if "lr_scale 0.1" in line and "| invalid" in line)
    assert "2 of the 5 runs scored never reached the target" in lr
    few = next(line for line in text.splitlines() if "global_batch_size 256" in line and "too few runs" in line)
    assert few.rstrip().endswith("| 3 |")  # runs still needed
    guard = [line for line in text.splitlines() if "needs more epochs to the target" in line]
    assert any("mixed_bfloat16" in line.split(" | ")[0] for line in guard)  # 2 epochs vs 1: flagged
    assert any("faster per step, slower to the target" in line for line in guard)
    assert lines  # the configurations are named


def test_the_report_says_below_the_band_for_a_paper_row_on_cifar10(tmp_path):
    path = tmp_path / "s.csv"
    paper = {k: v for k, v in PAPER_ROW.items() if k != "mode"}
    rows = [
        _row("p1", block="original", shortcut="A", depth="56", n="9", test_accuracy="0.9200", **paper),
        _row("p2", block="original", shortcut="A", depth="56", n="9", test_accuracy="0.9220", **paper, seed=1),
        _row("q1", block="original", shortcut="A", depth="20", n="3", test_accuracy="0.9120", **paper),
        _row("s1", block="original", shortcut="A", depth="56", n="9", data="synthetic", test_accuracy=""),
        _row("b1", block="original", shortcut="A", depth="56", n="9", recipe="bench", test_accuracy="0.80"),
    ]
    _write(path, rows)
    text = open(report.build(str(path), str(tmp_path / "out"))[0]).read()
    summary = [line for line in text.splitlines() if line.startswith("| s |")]
    r56 = next(line for line in summary if "| 56 |" in line and "64000 steps" in line)
    assert "**below the band** 0.9290–0.9380" in r56 and "TensorFlow's official ResNet-56" in r56
    r20 = next(line for line in summary if "| 20 |" in line)
    assert "(band 0.9093–0.9157" in r20 and "below" not in r20
    others = [line for line in summary if "| 56 |" in line and "64000 steps" not in line]  # synthetic; bench recipe
    assert len(others) == 2 and not any("band" in line for line in others)


def test_the_table_comparison_flags_a_new_table_that_needs_more_epochs(tmp_path):
    base, new = tmp_path / "base.csv", tmp_path / "new.csv"
    _write(base, _target_rows("b", [10.0, 11.0, 12.0], [1.0, 1.1, 1.0]))
    _write(new, _target_rows("n", [12.0, 13.0, 14.0], [2.0, 2.1, 1.9], images_per_sec="150"))
    matches, _, _, columns = table_compare.compare(report.load(str(base)), report.load(str(new)))
    [m] = matches
    assert (
        "new needs more epochs to the target" in m.convergence
        and "faster per step, slower to the target" in m.convergence
    )
    assert "base 11.0 s (provisional" in m.convergence and "new 13.0 s (provisional" in m.convergence
    md = table_compare.markdown(matches, [], [], columns, "base.csv", "new.csv", 5.0, {})
    assert "Configurations run to a target accuracy: each table's MLPerf score" in md


def _run(pair, arm, ips, epochs, time):
    return stats.Run(pair, arm, 0, "ok", ips, 0.95, "", f"{arm}{pair}", epochs_to_target=epochs, time_to_target_s=time)


def test_compare_reports_epochs_to_target_per_arm_and_flags_the_slower_converging_arm():
    runs = []
    for pair, (ea, eb) in enumerate([(1.0, 3.0), (1.5, 3.5), (1.0, 3.0)], start=1):
        runs += [_run(pair, "A", 100.0, ea, 10 * ea), _run(pair, "B", 101.0, eb, 10 * eb)]
    runs.append(stats.Run(4, "B", 0, "ok", 100.0, 0.5, "", "B4"))  # never reached the target
    runs.append(_run(4, "A", 100.0, 1.0, 10.0))
    lines, _ = compare.report_lines(runs, 5.0, 0.5, target=0.9)
    text = "\n".join(lines)
    assert "epochs to target 0.9:" in text and "  A: 1, 1.5, 1, 1" in text
    assert "  B: 3, 3.5, 3 (1 run(s) never reached it)" in text
    assert "convergence: epochs to target: B 3.17" in text and "B needs more epochs to the target" in text
    assert "to the target (time) 0.350x" in text
    assert "epochs to target" not in "\n".join(compare.report_lines(runs, 5.0, 0.5)[0])  # no target: no lines


def test_compare_gives_each_pair_its_own_seed(monkeypatch):
    seen = []

    class Done:
        returncode, rows = 0, []

        def last_line(self):
            return ""

    def fake_run_bench(args, results_path):
        seen.append([a for a in args if a.startswith("--seed=") or a.startswith("--arm=")])
        return Done()

    monkeypatch.setattr(compare.processes, "run_bench", fake_run_bench)
    runner = compare.process_runner(["--n=1"], {"A": [], "B": ["--lr_scale=0.1"]}, "c", "x.csv", {"A": 5, "B": 5})
    for pair, arm, position in [(1, "A", 1), (1, "B", 2), (2, "B", 3), (2, "A", 4)]:
        runner(pair, arm, position)
    assert seen == [["--seed=5", "--arm=A"], ["--seed=5", "--arm=B"], ["--seed=6", "--arm=B"], ["--seed=6", "--arm=A"]]


# ---- end to end: the demonstrations of issue #24 ------------------------------------------------------------------

E2E_FLAGS = [
    "--n=1",
    "--batch_size=16",
    "--warmup_steps=2",
    "--steps_per_loop=4",
    "--data=files",
    "--eval_every_epochs=0.5",
]


def _command(module, *args):
    return python("-m", module, *args, timeout=1200)


@pytest.mark.e2e
def test_a_sweep_of_five_seeds_to_a_target_gets_an_olympic_score_in_its_summary(tmp_path):
    """Seed 2 is forced not to converge: it is counted as the slowest and dropped with the fastest. (Two such
    runs make the result invalid: test_the_report_scores_each_configuration_to_a_target_and_guards_its_convergence.)"""
    cifar = write_learnable_cifar(str(tmp_path / "cifar"), train=128, test=64)
    results = tmp_path / "s.csv"
    proc = _command(
        "sweeps.tune",
        *E2E_FLAGS,
        "--block=preact",  # one configuration: a sweep's defaults are the papers' study
        "--shortcut=B",
        f"--cifar_dir={cifar}",
        "--epochs=6",
        "--target_accuracy=0.9",
        "--repeats=5",
        "--diverge_seeds=2",  # that run is forced not to converge (its loss turns NaN)
        "--name=five",
        f"--results={results}",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # some trials diverged: not every trial ok
    rows = table.read_rows(str(results))
    assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2, 3, 4]  # five runs, five seeds
    assert {int(r["seed"]) for r in rows if r["status"] != "ok"} == {2}
    assert all(r["epochs_to_target"] for r in rows if r["status"] == "ok")
    text = (tmp_path / "summary.md").read_text()
    [line] = [x for x in text.splitlines() if x.startswith("| ResNet-8 preact/B") and "| 0.9 |" in x]
    assert "| 5 (" in line and "| yes |" in line and "| valid:" in line
    times = sorted(float(r["time_to_target_s"]) for r in rows if r["status"] == "ok")
    assert "1 run never reached the target: counted as the slowest" in line  # dropped with the fastest
    assert f"| {sum(times[1:]) / 3:.1f} |" in line


@pytest.mark.e2e
def test_compare_flags_a_deliberately_worse_learning_rate_by_its_epochs_to_target(tmp_path):
    """A real comparison (bench.run's processes, in ABBA order): the speed verdict, and B's epochs to target."""
    cifar = write_learnable_cifar(str(tmp_path / "cifar"), train=128, test=64)
    results = tmp_path / "s.csv"
    proc = _command(
        "sweeps.compare",
        "--a=--lr_scale=1",
        "--b=--lr_scale=0.05",
        "--pairs=3",
        "--comparison=lr",
        *E2E_FLAGS,
        f"--cifar_dir={cifar}",
        "--epochs=10",
        "--target_accuracy=0.9",
        f"--results={results}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "epochs to target 0.9:" in out and "\n  A: " in out and "\n  B: " in out
    assert "B needs more epochs to the target" in out, out[-3000:]
    assert "images/sec B/A:" in out and "verdict: " in out and "[6/6] pair 3 B:" in out
    rows = table.read_rows(str(results))
    assert [(r["comparison"], r["arm"]) for r in rows] == [("lr", arm) for arm in "ABBAAB"]
    assert all(r["status"] == "ok" and r["command"].startswith("python -m bench.run") for r in rows)
    a = [float(r["epochs_to_target"]) for r in rows if r["arm"] == "A"]
    b = [float(r["epochs_to_target"]) for r in rows if r["arm"] == "B"]
    assert len(a) == len(b) == 3 and min(b) > max(a)
    assert sorted(int(r["seed"]) for r in rows if r["arm"] == "A") == [0, 1, 2]  # a seed per pair
    assert all(math.isclose(float(r["lr_scale"]), 0.05) for r in rows if r["arm"] == "B")
