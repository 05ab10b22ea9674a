"""The A/B statistics against a fake runner of known rates, noise and drift (no TensorFlow; seconds)."""

import math

import numpy as np
import pytest

from bench.results import stats


def blocked_order(pairs):
    """[(pair, arm)] as A A ... A B B ... B: the order ABBA replaces (a drift shows up as an effect)."""
    return [(pair, arm) for arm in stats.ARMS for pair in range(1, pairs + 1)]


def bootstrap_interval(effects, seed=0, resamples=4000, stat=np.median):
    """Percentile bootstrap 95% interval of `stat` over the pairs: what `stats.paired_interval` replaces
    (with 2-5 pairs it covers the truth far less than 95% of the time, measured below)."""
    effects = np.asarray(effects, float)
    rng = np.random.default_rng(seed)
    draws = stat(effects[rng.integers(0, len(effects), size=(resamples, len(effects)))], axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    spread = float(np.std(effects, ddof=1))
    return stats.Estimate(
        float(stat(effects)), float(low), float(high), len(effects), spread, float(np.median(effects)), "bootstrap"
    )


def fake_runner(rate_a, rate_b, noise, drift=0.0, rng=None, accuracy=None):
    """Runs whose rate is the arm's, times (1 + drift x position), times log-normal noise of sd `noise`."""
    rng = rng or np.random.default_rng(0)

    def run(pair, arm, position):
        rate = (rate_a if arm == "A" else rate_b) * (1 + drift * position) * math.exp(rng.normal(0, noise))
        acc = None if accuracy is None else accuracy[arm] + rng.normal(0, 0.002)
        return stats.Run(pair, arm, position, "ok", rate, acc)

    return run


def estimate(runs):
    return stats.paired_interval(stats.log_ratios(stats.paired_values(runs).values()))


def test_abba_order_alternates_and_every_pair_has_both_arms():
    assert stats.abba_order(3) == [(1, "A"), (1, "B"), (2, "B"), (2, "A"), (3, "A"), (3, "B")]
    assert blocked_order(2) == [(1, "A"), (2, "A"), (1, "B"), (2, "B")]
    seen = []
    runs = stats.run_pairs(fake_runner(100, 120, 0.0), 4, on_run=lambda r, k, n: seen.append((r.position, k, n)))
    assert [r.position for r in runs] == list(range(1, 9)) and seen[-1] == (8, 8, 8)


def test_a_known_ratio_is_recovered():
    runs = stats.run_pairs(fake_runner(300.0, 450.0, 0.05, rng=np.random.default_rng(1)), 8)
    est = estimate(runs)
    assert est.low < math.log(1.5) < est.high
    assert math.exp(est.effect) == pytest.approx(1.5, rel=0.05)
    assert stats.verdict(est, *stats.speed_band(5)).kind == "higher"
    slower = estimate(stats.run_pairs(fake_runner(450.0, 300.0, 0.05, rng=np.random.default_rng(1)), 8))
    assert stats.verdict(slower, *stats.speed_band(5)).kind == "lower"
    assert stats.slower_with_confidence(slower, 20) and not stats.slower_with_confidence(slower, 40)


def _coverage(pairs, noise, method, trials=400, truth=1.25):
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(trials):
        runs = stats.run_pairs(fake_runner(200.0, 200.0 * truth, noise, rng=rng), pairs)
        est = method(stats.log_ratios(stats.paired_values(runs).values()))
        hits += est.low < math.log(truth) < est.high
    return hits / trials


@pytest.mark.parametrize("pairs", [2, 3, 5, 10])
def test_the_95_interval_covers_the_true_ratio_about_95_percent_of_the_time(pairs):
    assert 0.92 <= _coverage(pairs, 0.15, stats.paired_interval) <= 0.98


def test_a_bootstrap_over_few_pairs_covers_far_less_which_is_why_t_is_used():
    boot = lambda effects: bootstrap_interval(effects, resamples=400)  # noqa: E731
    assert _coverage(3, 0.15, boot, trials=300) < 0.80  # with 3 pairs a bootstrap has 10 distinct resamples


def test_equal_arms_say_no_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    kinds = []
    for _ in range(400):
        est = estimate(stats.run_pairs(fake_runner(500.0, 500.0, 0.01, rng=rng), 5))
        kinds.append(stats.verdict(est, *stats.speed_band(5)).kind)
    same = kinds.count("same") / len(kinds)
    assert 0.92 <= same <= 0.98, same
    assert kinds.count("inconclusive") <= 8  # 1% noise and 5 pairs: the interval is nearly always inside ±5%


def test_abba_cancels_a_linear_drift_that_blocked_order_does_not():
    # the machine slows 3% per run; the arms are equal
    abba = estimate(stats.run_pairs(fake_runner(500.0, 500.0, 0.0, drift=-0.03), 6))
    blocked = estimate(stats.run_pairs(fake_runner(500.0, 500.0, 0.0, drift=-0.03), 6, order=blocked_order))
    assert abs(math.exp(abba.effect) - 1) < 0.005
    assert math.exp(blocked.effect) < 0.80  # B looks 20% slower only because it ran later
    noisy = [
        stats.verdict(
            estimate(
                stats.run_pairs(fake_runner(500.0, 500.0, 0.02, drift=-0.03, rng=np.random.default_rng(s)), 6, order=o)
            ),
            *stats.speed_band(5),
        ).kind
        for s in range(20)
        for o in (stats.abba_order, blocked_order)
    ]
    assert noisy[0::2].count("lower") <= 2 and noisy[1::2].count("lower") == 20


def test_inconclusive_says_how_many_pairs_would_settle_it():
    est = stats.Estimate(
        effect=math.log(1.05), low=math.log(0.9), high=math.log(1.22), n=3, sd=0.08, median=0.05, method="t"
    )
    v = stats.verdict(est, *stats.speed_band(2))
    assert v.kind == "inconclusive" and 10 < v.pairs_needed < 40
    # that many pairs at those numbers (ratio 1.05, pair sd 0.08) do settle it, most of the time
    rng = np.random.default_rng(11)
    settled = [
        stats.verdict(
            estimate(stats.run_pairs(fake_runner(100, 105, 0.08 / math.sqrt(2), rng=rng), v.pairs_needed)),
            *stats.speed_band(2),
        ).kind
        != "inconclusive"
        for _ in range(200)
    ]
    assert 0.7 <= sum(settled) / 200 <= 0.95
    tiny = stats.Estimate(effect=0.0, low=-0.5, high=0.5, n=2, sd=0.3, median=0.0, method="t")
    assert stats.verdict(tiny, *stats.speed_band(0.1)).pairs_needed is None  # no effect, a hair-thin band


def test_accuracy_pairs_compare_as_differences():
    runs = stats.run_pairs(fake_runner(100, 100, 0.05, accuracy={"A": 0.90, "B": 0.92}), 6)
    diffs = [b - a for a, b in stats.paired_values(runs, "test_accuracy").values()]
    est = stats.paired_interval(diffs)
    assert est.low < 0.02 < est.high and stats.verdict(est, -0.005, 0.005).kind == "higher"
    # synthetic-data runs have no accuracy: no pairs
    assert stats.paired_values(stats.run_pairs(fake_runner(1, 1, 0.0), 2), "test_accuracy") == {}


def test_failed_runs_drop_their_pair_only():
    runner = fake_runner(100, 110, 0.0)

    def flaky(pair, arm, position):
        run = runner(pair, arm, position)
        return stats.Run(pair, arm, position, "failed", error="boom") if position == 3 else run

    assert list(stats.paired_values(stats.run_pairs(flaky, 3))) == [1, 3]


def test_unpaired_interval_for_repeats_of_two_tables():
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(300):
        base, new = rng.normal(0, 0.1, 3), rng.normal(0.2, 0.1, 4)
        est = stats.unpaired_interval(base, new)
        hits += est.low < 0.2 < est.high
    assert 0.92 <= hits / 300 <= 0.99
    assert stats.unpaired_interval([1.0], [1.1]) is None
    one_side = stats.unpaired_interval([0.0], [0.1, 0.12, 0.08])
    assert one_side.method == "pooled t" and one_side.low < 0.1 < one_side.high
