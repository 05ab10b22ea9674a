"""Statistics over timed windows. The one place where samples become numbers. No TensorFlow."""

from __future__ import annotations

import dataclasses
import math
import statistics

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclasses.dataclass(frozen=True)
class Throughput:
    images_per_sec: float  # all timed images / all timed seconds
    images_per_sec_stderr: float  # standard error of the per-window rates
    jitter: float  # 1.4826 * MAD of the per-window rates
    step_time_p50_ms: float
    step_time_p90_ms: float
    step_time_p99_ms: float
    timed_steps: int
    timed_seconds: float
    windows: int


def percentile(values, q):
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def window_throughput(windows, global_batch_size):
    """Throughput from timed windows, each `(steps, seconds)`.

    The headline rate is total images over total seconds, so it agrees with the
    clock. Step-time percentiles use each window's mean step time (with
    `steps_per_loop=1` these are true per-step times).
    """
    windows = [(int(s), float(t)) for s, t in windows if s > 0]
    if not windows:
        raise ValueError("no timed windows")
    steps = sum(s for s, _ in windows)
    seconds = sum(t for _, t in windows)
    rates = [s * global_batch_size / t for s, t in windows]
    step_ms = [1000.0 * t / s for s, t in windows]
    stderr = statistics.stdev(rates) / math.sqrt(len(rates)) if len(rates) > 1 else 0.0
    med = statistics.median(rates)
    mad = statistics.median(abs(r - med) for r in rates)
    return Throughput(
        images_per_sec=steps * global_batch_size / seconds,
        images_per_sec_stderr=stderr,
        jitter=MAD_TO_SIGMA * mad,
        step_time_p50_ms=percentile(step_ms, 50),
        step_time_p90_ms=percentile(step_ms, 90),
        step_time_p99_ms=percentile(step_ms, 99),
        timed_steps=steps,
        timed_seconds=seconds,
        windows=len(windows),
    )


def mfu(train_flops_per_image, images_per_sec, peak_flops_per_sec):
    """Model FLOPs utilisation: achieved training FLOP/s over the measured peak."""
    if not peak_flops_per_sec or not images_per_sec:
        return None
    return train_flops_per_image * images_per_sec / peak_flops_per_sec


def mean_ci95(values):
    """Mean and half-width of a 95% Student-t confidence interval (0 for a single value)."""
    values = list(values)
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def t95(df):
    """The two-sided 95% Student-t quantile for `df` degrees of freedom (a fraction rounds down; >30: normal)."""
    return _T95.get(max(1, int(df)), 1.96)


# Two-sided 95% Student-t quantiles by degrees of freedom (beyond 30: normal).
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}
for _df in range(11, 31):
    _T95.setdefault(_df, _T95[max(k for k in _T95 if k <= _df)])
