"""MLPerf's scoring rule for a result: N runs of one configuration to a target, the olympic mean of their times.

MLPerf Training ("Benchmark Results"): a result is N runs (5 for image classification, from
`mlperf_logging.benchmark_meta`); the fastest and the slowest are dropped and the rest averaged;
a run that never reaches the target counts as the slowest (and is the one dropped); with two or
more such runs the result is invalid. Running batches of N and keeping the best batch is forbidden;
with M > N launches the allowed alternative is the median window: the M times sorted, the middle
N kept, then the same rule. MLPerf also checks that no two runs of a result share a seed.

Pure: no TensorFlow, no files. `sweeps.report` scores each configuration's rows with it.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from mlperf_logging.benchmark_meta import get_result_file_counts

RUNS_PER_RESULT = get_result_file_counts("training")["resnet"]  # 5: MLPerf's image classification
MIN_RUNS = 3  # dropping the fastest and the slowest leaves one


@dataclasses.dataclass(frozen=True)
class Score:
    """The score of one configuration's runs, and what it still lacks."""

    value: float | None  # the olympic mean of time-to-target (seconds); None: no score
    verdict: str  # valid | provisional (fewer than N runs) | invalid | too few runs
    note: str  # the sentence a report prints
    runs: int  # launches of the configuration
    not_converged: int  # runs among the scored ones that never reached the target
    counted: tuple = ()  # the times averaged
    window: tuple | None = None  # (first, last) rank of the median window among the sorted times (M > N)
    needed: int = 0  # runs still needed for a full result of N


def converged(time):
    """A time-to-target of a run that reached its target (None / NaN / empty: it never did)."""
    return time is not None and time != "" and not (isinstance(time, float) and math.isnan(time))


def repeated_seeds(seeds):
    """The seeds that more than one run of a result used (MLPerf: none may)."""
    counts = collections.Counter(s for s in seeds if s not in (None, ""))
    return sorted(s for s, k in counts.items() if k > 1)


def olympic(times, seeds=(), n=RUNS_PER_RESULT):
    """The MLPerf score of a configuration's runs: `times` are each run's time-to-target (None: it never
    reached the target: failed, diverged, stopped or ran out of steps), `seeds` their seeds."""
    m = len(times)
    needed = max(n - m, 0)
    repeated = repeated_seeds(seeds)
    if repeated:
        return Score(None, "invalid", f"runs share seeds ({', '.join(map(str, repeated))})", m, 0, needed=needed)
    if m < MIN_RUNS:
        return Score(
            None,
            "too few runs",
            f"{m} run{'s' if m != 1 else ''}; a score needs {MIN_RUNS}, a result {n} ({n - m} more)",
            m,
            sum(not converged(t) for t in times),
            needed=needed,
        )
    ranked = sorted(times, key=lambda t: t if converged(t) else math.inf)
    window = None
    if m > n:  # the median window: the middle N of the sorted times
        first = (m - n) // 2
        ranked, window = ranked[first : first + n], (first + 1, first + n)
    failed = sum(not converged(t) for t in ranked)
    if failed > 1:
        return Score(
            None,
            "invalid",
            f"{failed} of the {len(ranked)} runs scored never reached the target (MLPerf allows one)",
            m,
            failed,
            window=window,
            needed=needed,
        )
    counted = tuple(float(t) for t in ranked[1:-1])  # the fastest and the slowest (a non-converged one) dropped
    value = sum(counted) / len(counted)
    parts = [f"olympic mean of {len(counted)} of {len(ranked)} runs"]
    if failed:
        parts.append("1 run never reached the target: counted as the slowest, dropped")
    if window:
        parts.append(f"median window: ranks {window[0]}-{window[1]} of {m} runs")
    if needed:
        parts.append(f"provisional: {needed} more run{'s' if needed > 1 else ''} for a result of {n}")
    return Score(value, "provisional" if needed else "valid", "; ".join(parts), m, failed, counted, window, needed)
