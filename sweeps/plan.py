"""What a sweep will cost, said before it starts and refined as it runs. No TensorFlow.

The estimate of a trial: its training FLOPs (analytic, `resnet.cost` x steps x batch) over the
rate this machine sustains, plus a start-up (TensorFlow import, data, compile). The rate is,
in order of preference: what earlier ok rows of this machine (same host) in the results table
sustained (FLOPs per image x images/sec, median; the same precision if there are such rows);
else this machine's measured matmul peak (the cache `bench.hardware.peak` keeps) x an assumed MFU;
else unknown until the first trial ends. While the sweep runs, the remaining estimates are
scaled by how long the finished trials really took against their estimates.
"""

from __future__ import annotations

import math
import socket
import statistics

from bench.config import recipe
from bench.hardware import peak
from bench.results import rows, table
from resnet import spec

ASSUMED_MFU = 0.5  # without rows of this machine; ResNet-20..56 reached 0.4-0.65 on the development CPUs
DEFAULT_STARTUP_S = 15.0  # without rows: import, data, first (compiling) step, Ray's trial start


def trial_flops(cfg):
    """Training FLOPs of one trial (inference: forward passes), from the analytic cost per image."""
    return recipe.train_steps(cfg) * cfg.batch_size * rows.flops_per_image(cfg)


def _float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def machine_history(results_path):
    """Earlier ok rows of this host: [(precision, sustained FLOP/s, start-up seconds, peak GFLOP/s)]."""
    host = socket.gethostname()
    found = []
    for r in table.read_rows(results_path):
        if r.get("status") != "ok" or r.get("host") != host:
            continue
        ips, fpi = _float(r.get("images_per_sec")), _float(r.get("flops_per_image"))
        if ips and fpi:
            found.append(
                (r.get("precision"), ips * fpi, _float(r.get("time_to_first_step_s")), _float(r.get("peak_gflops")))
            )
    return found


def cached_peak_gflops(precision):
    """The highest measured peak in `bench.hardware.peak`'s cache for this precision's compute dtype, or None."""

    dtype = spec.COMPUTE_DTYPE.get(spec.canonical_precision(precision), "float32")
    found = [
        v.get("gflops") if isinstance(v, dict) else v for k, v in peak.read_cache().items() if dtype in k.split("|")[1:]
    ]  # device|tf version|[onednn|][intraN|]dtype|...
    found = [x for x in found if isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0]  # a cache's
    return max(found) if found else None  # malformed entries (bench.config.caches) are no reading


def rate_for(precision, history):
    """(sustained FLOP/s, where it comes from) for a trial of `precision`, or (None, why not)."""
    same = [h for h in history if h[0] == spec.canonical_precision(precision)]
    if same or history:
        chosen = same or history
        what = "this precision's" if same else "other precisions'"
        return statistics.median(h[1] for h in chosen), f"{len(chosen)} earlier rows of this machine ({what})"
    peak = cached_peak_gflops(precision)
    if peak:
        return peak * 1e9 * ASSUMED_MFU, f"measured peak {peak:.0f} GFLOP/s x assumed MFU {ASSUMED_MFU:.0%}"
    return None, "no measured peak or earlier rows on this machine yet"


def estimate(configs, results_path):
    """({trial key: estimated seconds or None}, total FLOPs, a one-paragraph plan)."""
    history = machine_history(results_path)
    starts = [h[2] for h in history if h[2]]
    startup = statistics.median(starts) if starts else DEFAULT_STARTUP_S
    seconds, sources, total = {}, set(), 0.0
    for cfg in configs:
        flops = trial_flops(cfg)
        total += flops
        rate, source = rate_for(cfg.precision, history)
        sources.add(source)
        seconds[cfg.trial_key] = startup + flops / rate if rate else None
    known = [s for s in seconds.values() if s is not None]
    amount = f"{total / 1e12:.1f} TFLOP" if total >= 1e11 else f"{total / 1e9:.1f} GFLOP"
    text = f"plan: {len(configs)} trials, {amount} of training; "
    if len(known) == len(seconds):
        text += f"estimate {duration(sum(known))} ({'; '.join(sorted(sources))}; start-up {startup:.0f} s per trial)"
    else:
        text += f"no estimate yet ({'; '.join(sorted(sources))}): an ETA follows the first trial"
    return seconds, total, text


def duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """`trial k/N ... ETA`: remaining estimates scaled by how the finished trials compared with theirs."""

    def __init__(self, estimates, now):
        self.estimates = dict(estimates)
        self.started = now
        self.finished = []

    def finish(self, key, now):
        """Record a finished trial; return the line's tail: elapsed and ETA."""
        self.finished.append(key)
        elapsed = now - self.started
        left = [k for k in self.estimates if k not in set(self.finished)]
        done_est = [self.estimates[k] for k in self.finished if self.estimates.get(k)]
        left_est = [self.estimates[k] for k in left]
        if not left:
            return f"{duration(elapsed)} elapsed, done"
        if done_est and all(e is not None for e in left_est):
            eta = sum(left_est) * elapsed / sum(done_est)
        else:  # no estimates: the mean trial so far
            eta = elapsed / len(self.finished) * len(left)
        return f"{duration(elapsed)} elapsed, ETA {duration(eta)}"
