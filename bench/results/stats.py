"""Is B faster than A? Run order, paired ratios, confidence intervals and verdicts. numpy only.

Pure: no TensorFlow, no Ray, no files. `run_pairs` takes the runner as an argument,
so the tests drive it with a fake of known rates, noise and drift, and
`sweeps.compare` with real `bench.run` processes.

Method (WORKSPACE.md, "Comparing two settings"):
- the two arms alternate in ABBA order (AB, BA, AB, ...): a drift that is linear in
  time adds the same to A as to B over each AB+BA block, so it cancels;
- each pair gives one effect: the log of the speed ratio B/A (accuracy: the difference
  B - A); pairs are independent measurements, runs within a pair are not;
- the interval is Student's t on the pairs' effects: exact for multiplicative
  (log-normal) noise at any number of pairs, including 2, where a bootstrap over
  pairs has only 3 distinct resamples and its interval is far too narrow;
- the verdict reads the interval against 0 (no effect) and against a band of
  effects too small to matter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from bench.results import metrics

ARMS = ("A", "B")
POWER_Z = 0.84  # one-sided normal quantile of 80% power, for "pairs that would likely settle it"
MAX_PAIRS = 1000  # beyond this the effect is smaller than the noise can show


# ---------------------------------------------------------------------------
# Run order


def abba_order(pairs):
    """[(pair, arm)] in ABBA order: A B, B A, A B, ... (pair numbers from 1)."""
    order = []
    for pair in range(1, pairs + 1):
        arms = ARMS if pair % 2 else ARMS[::-1]
        order.extend((pair, arm) for arm in arms)
    return order


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of one arm: what the runner measured, where it stood in the order."""

    pair: int
    arm: str
    position: int  # 1-based place in the order of the comparison
    status: str  # ok | failed | diverged | ... (the row's status)
    images_per_sec: float | None = None
    test_accuracy: float | None = None  # None: synthetic data
    error: str = ""
    run_id: str = ""
    flags: tuple = ()  # doubtful conditions its row reports: unstable, contended, throttled (bench.results.conditions)
    epochs_to_target: float | None = None  # None: no target, or never reached it
    time_to_target_s: float | None = None


Runner = Callable[[int, str, int], Run]  # runner(pair, arm, position) -> Run


def run_pairs(runner: Runner, pairs, order=abba_order, on_run=None):
    """Call `runner(pair, arm, position)` for every run in `order(pairs)`; return the runs.

    `on_run(run, done, total)` is told about each run as it finishes (progress lines).
    """
    plan = order(pairs)
    runs = []
    for position, (pair, arm) in enumerate(plan, start=1):
        run = runner(pair, arm, position)
        runs.append(run)
        if on_run:
            on_run(run, position, len(plan))
    return runs


def paired_values(runs, field="images_per_sec"):
    """{pair: (A value, B value)} for the pairs whose two runs are ok and have `field`."""
    by_pair = {}
    for run in runs:
        value = getattr(run, field)
        if run.status == "ok" and value is not None and not math.isnan(value):
            by_pair.setdefault(run.pair, {})[run.arm] = value
    return {p: (v["A"], v["B"]) for p, v in sorted(by_pair.items()) if len(v) == 2}


# ---------------------------------------------------------------------------
# Intervals


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An effect (log ratio, or difference) with its 95% interval, from `n` pairs (or runs)."""

    effect: float
    low: float
    high: float
    n: int
    sd: float  # of one pair's effect (for planning more pairs)
    median: float  # of the pairs' effects (a check on an outlying pair)
    method: str


def paired_interval(effects):
    """Mean of the pairs' effects with its Student-t 95% interval (needs 2 pairs)."""
    effects = [float(e) for e in effects]
    if len(effects) < 2:
        raise ValueError("an interval needs at least two pairs")
    mean, half = metrics.mean_ci95(effects)
    return Estimate(
        mean,
        mean - half,
        mean + half,
        len(effects),
        float(np.std(effects, ddof=1)),
        float(np.median(effects)),
        "t over pairs",
    )


def log_ratios(pairs):
    """log(B/A) of each (A, B) pair."""
    return [math.log(b / a) for a, b in pairs]


def unpaired_interval(base, new):
    """mean(new) - mean(base) with a 95% interval, for two independent samples (repeats of two tables).

    Welch's t when both have two values or more; with one value on a side, the other side's spread
    stands for both (pooled); None with one value on each side (no spread to go by).
    """
    base, new = np.asarray(base, float), np.asarray(new, float)
    nb, nn = len(base), len(new)
    if nb + nn < 3 or min(nb, nn) < 1:
        return None
    effect = float(new.mean() - base.mean())
    if min(nb, nn) >= 2:
        vb, vn = base.var(ddof=1) / nb, new.var(ddof=1) / nn
        se = math.sqrt(vb + vn)
        df = (vb + vn) ** 2 / ((vb**2 / (nb - 1)) + (vn**2 / (nn - 1))) if vb + vn > 0 else nb + nn - 2
        method = "Welch t"
    else:
        pooled = ((nb - 1) * base.var(ddof=1 if nb > 1 else 0) + (nn - 1) * new.var(ddof=1 if nn > 1 else 0)) / (
            nb + nn - 2
        )
        se = math.sqrt(pooled * (1 / nb + 1 / nn))
        df = nb + nn - 2
        method = "pooled t"
    half = metrics.t95(df) * se
    sd = se / math.sqrt(1 / nb + 1 / nn)
    return Estimate(effect, effect - half, effect + half, min(nb, nn), sd, effect, method)


# ---------------------------------------------------------------------------
# Verdicts


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: str  # higher | lower | same | inconclusive
    bound: float  # same: the largest effect the interval allows (|low| or |high|)
    pairs_needed: int | None = None  # inconclusive: pairs in all that would likely settle it (None: > MAX_PAIRS)


def verdict(est: Estimate, band_low, band_high):
    """Read the interval: above 0 (higher), below 0 (lower), inside (band_low, band_high) (same), or not yet.

    The band is on the effect's own scale (for a speed ratio: log(1 - b), log(1 + b)).
    """
    if est.low > 0:
        return Verdict("higher", 0.0)
    if est.high < 0:
        return Verdict("lower", 0.0)
    if band_low < est.low and est.high < band_high:
        return Verdict("same", max(-est.low, est.high))
    return Verdict("inconclusive", 0.0, pairs_needed(est, band_low, band_high))


def pairs_needed(est: Estimate, band_low, band_high):
    """Pairs in all at which, if the mean effect and its spread stay as measured, the interval would likely
    (80% power) exclude 0 or fit inside the band; None beyond MAX_PAIRS."""
    if est.sd == 0:
        return est.n
    margin = max(abs(est.effect), min(band_high - est.effect, est.effect - band_low))  # the easier of the two
    if margin <= 0:
        return None
    for n in range(max(est.n, 2), MAX_PAIRS + 1):
        if (metrics.t95(n - 1) + POWER_Z) * est.sd / math.sqrt(n) < margin:
            return n
    return None


def speed_band(band_pct):
    """The band of 'no difference' for a speed ratio of ±band_pct%, on the log-ratio scale."""
    return math.log1p(-band_pct / 100), math.log1p(band_pct / 100)


def ratio_bound(est: Estimate):
    """How far from 1 a speed ratio inside the interval (of its log) can be: 0.955-1.030x is within ±4.5%
    (not ±4.7%, which is 1/0.955: the log scale's symmetric bound read back as a ratio)."""
    return max(-math.expm1(est.low), math.expm1(est.high), 0.0)


def slower_with_confidence(est: Estimate, pct):
    """B slower than A by more than `pct`% with 95% confidence: the whole interval of B/A below 1 - pct/100."""
    return est.high < math.log1p(-pct / 100)


# ---------------------------------------------------------------------------
# One-sided tests (the convergence guard, bench/results/convergence.py)


@dataclasses.dataclass(frozen=True)
class OneSided:
    """Is `new` larger than `base`? A one-sided test at level `alpha`."""

    p: float | None  # None: too few values to test
    significant: bool  # p < alpha
    method: str


def greater_than(base, new, alpha=0.05):
    """One-sided test that mean(new) > mean(base), for two independent samples (runs of two settings).

    Welch's t (scipy.stats.ttest_ind, unequal variances) with at least two values a side, as MLPerf's
    RCP checker tests a submission's epochs against the reference's (it pools the variances; Welch's is
    the safer of the two when the spreads differ). With no spread on either side (every run converging
    at the same evaluation) there is nothing to estimate: the sides are compared exactly, and `new` is
    larger only if every one of its values exceeds every one of `base`'s.
    """
    import scipy.stats  # only here: the rest of this module needs numpy only

    base, new = np.asarray(base, float), np.asarray(new, float)
    if len(base) < 2 or len(new) < 2:
        return OneSided(None, False, "too few runs to test (two a side)")
    if base.var(ddof=1) == 0 and new.var(ddof=1) == 0:
        more = bool(new.min() > base.max())
        return OneSided(0.0 if more else 1.0, more, "no spread on either side: compared exactly")
    p = float(scipy.stats.ttest_ind(new, base, equal_var=False, alternative="greater").pvalue)
    return OneSided(p, p < alpha, "one-sided Welch t")
