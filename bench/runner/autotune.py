"""`--autotune`: before the run, probe the settings left unset that do not change the computation; run the fastest.

`settle(cfg)` runs before anything else of a run (TensorFlow not yet imported, so oneDNN is still
open). The candidates are `bench.config.tuning.candidates`: each field in turn (oneDNN first), its
default against each alternative, every arm a short `python -m bench.run` process of its own
(oneDNN and the thread pools are fixed at TensorFlow's import) writing its row into a temporary
table. The arms run in ABBA pairs and are read with the A/B statistics of `bench.results.stats` (as
`sweeps.compare`): t interval over the pairs' log ratios of images/sec (inference: batch over
median latency, `probe_rate`), verdict against a ±5% band. An alternative replaces the current
choice only when it is faster with 95% confidence (the interval above 1); an unsettled comparison
first gets two more pairs, up to `MAX_PAIRS`, and if it stays unsettled the current choice (at first
the measured default) stays: on a loaded machine the point estimate of a few noisy pairs is not "the
fastest". A probe that fails or diverges is skipped with a line; the run goes on with what was
chosen so far. The budget `MAX_PAIRS` is $RESNET_BENCH_AUTOTUNE_MAX_PAIRS (`tuning.max_pairs`: a bad
value is bad input, refused before any work).

The winner is cached per `tuning.key` (machine, TensorFlow version, mode, model, batch,
precision, replicas, ...) in `autotune.json` beside the peak FLOP/s cache, written atomically
under a file lock; the next run with `--autotune` starts at once, `--autotune=refresh` probes
again. The row's `tuned` column is the key (or `default` / `flag` without --autotune). Nothing is
cached that nothing measured: when a comparison's probes failed the choice is used but not cached,
and when every probe failed the run keeps its settings as given (`tuned` is then `default`). The
cache is an optimisation (`bench.config.caches`): unreadable, unwritable, or an entry for this key
that is malformed or of another version is a warning line and a run that probes without it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.config import caches, options, tuning
from bench.config.options import RunConfig
from bench.hardware import cpu_features, devices, peak
from bench.results import stats, table
from bench.runner import processes

FIRST_PAIRS, MAX_PAIRS, MAX_PAIRS_ENV = tuning.FIRST_PAIRS, tuning.MAX_PAIRS, tuning.MAX_PAIRS_ENV  # (the budget)
BAND_PCT = 5.0  # alternatives within ±5% of the current choice do not replace it
PROBE_TIMEOUT_S = 900


WHAT = "autotune cache"


def cache_file():
    return os.path.join(os.path.dirname(peak.cache_path()), "autotune.json")


@dataclasses.dataclass
class Probe:
    """One comparison: the current choice (A) against one alternative (B) of one field."""

    field: str
    current: object
    candidate: object
    runs: list
    estimate: stats.Estimate = None
    verdict: stats.Verdict = None
    taken: bool = False
    note: str = ""  # why it was skipped


def settle(cfg: RunConfig, out=None, measure=None) -> RunConfig:
    """`cfg` (of a run with --autotune) with the chosen settings and its `tuned` label (a run without takes
    `tuning.origin`'s). `measure` replaces the probe processes (tests). `out`: where it reports (default:
    sys.stdout when called, the command's guarded stream)."""
    out = out or sys.stdout
    run, cfg = cfg, tuning.question(cfg)  # a --scenario run is probed as the quick look at its scenario's batch
    machine = detect_machine(cfg)
    plan = tuning.candidates(cfg, machine)
    if not plan:
        print(
            "autotune: every setting it may change was given as a flag (or does not apply here); nothing to probe",
            file=out,
            flush=True,
        )
        return run.replace(tuned="flag")
    key = tuning.key(cfg, machine)
    if cfg.autotune == "on":
        entry = read_cache().get(key)
        settings = cached_choice(entry, plan)
        if settings is not None:
            print(
                f"autotune: cached choice for {key} (probed {entry.get('probed_utc', '?')}, "
                f"--autotune=refresh probes again): {' '.join(tuning.settings_args(settings)) or 'the defaults'}",
                file=out,
                flush=True,
            )
            return tuning.apply(run, settings, key)
    started = time.perf_counter()
    print(
        f"autotune: {key}\nautotune: probing {', '.join(n for n, _ in plan)} "
        f"({sum(len(v) - 1 for _, v in plan)} comparisons of {FIRST_PAIRS}-{_max_pairs()} ABBA pairs, each arm a "
        f"short bench.run process)",
        file=out,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="autotune-") as folder:
        measure = measure or process_measure(cfg, machine.device_kind, os.path.join(folder, "probes.csv"))
        settings, probes = choose(plan, measure, out=out)
    seconds = time.perf_counter() - started
    lines = probe_table(probes)
    print("\n".join(lines), file=out)
    runs = f"in {seconds:.0f} s ({sum(len(p.runs) for p in probes)} probe runs)"
    skipped = [f"{p.field}={options.flag_text(p.candidate)}" for p in probes if p.note]
    if len(skipped) == len(probes):  # nothing was measured: nothing is chosen, nothing cached
        print(
            f"autotune: every probe failed {runs}: the run keeps the device defaults; nothing cached "
            "(the next --autotune probes again)",
            file=out,
            flush=True,
        )
        return run.replace(tuned=tuning.origin(run))
    chose = f"autotune: chose {' '.join(tuning.settings_args(settings)) or 'the defaults'} {runs}"
    if skipped:  # the skipped fields' choice was not measured: cached, it would stand unmeasured for good
        print(
            f"{chose}; not cached: the probes of {', '.join(skipped)} failed (the next --autotune probes again)",
            file=out,
            flush=True,
        )
        return tuning.apply(run, settings, key)
    entry = {
        "settings": settings,
        "probed_utc": table.utc_now(),
        "probe_seconds": round(seconds, 1),
        "probes": lines,
        "git_sha": table.git_sha(),
    }
    saved = write_cache(key, entry)
    print(f"{chose}; " + (f"cached in {cache_file()}" if saved else "not cached"), file=out, flush=True)
    return tuning.apply(run, settings, key)


def choose(plan, measure, out=None, first_pairs=FIRST_PAIRS, max_pairs=None, band_pct=BAND_PCT):
    """(chosen settings, [Probe]): each field in turn, its current value (A) against each alternative (B).

    `measure(settings, pair, arm, position) -> stats.Run` runs one arm with those settings.
    """
    out = out or sys.stdout
    max_pairs = max_pairs or _max_pairs()
    current = {name: values[0] for name, values in plan}
    probes = []
    for name, values in plan:
        for value in values[1:]:
            arms = {"A": dict(current), "B": {**current, name: value}}
            probe = Probe(name, current[name], value, [])
            while len(probe.runs) < 2 * max_pairs:
                done = len(probe.runs) // 2
                probe.runs += stats.run_pairs(
                    lambda pair, arm, position, done=done, arms=arms: measure(
                        arms[arm], pair + done, arm, position + 2 * done
                    ),
                    first_pairs if not done else min(2, max_pairs - done),
                )
                failed = [r for r in probe.runs if r.status != "ok" or not r.images_per_sec]
                if failed:
                    probe.note = f"{failed[0].status} ({failed[0].error or 'no images/sec'})"
                    print(
                        f"autotune: {name}={options.flag_text(value)} skipped: arm {failed[0].arm} {probe.note}",
                        file=out,
                        flush=True,
                    )
                    break
                probe.estimate = stats.paired_interval(stats.log_ratios(stats.paired_values(probe.runs).values()))
                probe.verdict = stats.verdict(probe.estimate, *stats.speed_band(band_pct))
                if probe.verdict.kind != "inconclusive":
                    break
            if not probe.note:
                probe.taken = probe.verdict.kind == "higher"  # not settled: what we know is the current one
                if probe.taken:
                    current = arms["B"]
                print(f"autotune: {name}: {probe_summary(probe)}", file=out, flush=True)
            probes.append(probe)
    return current, probes


def _max_pairs():
    return tuning.max_pairs()  # checked up front by validation.validate


def probe_summary(p: Probe):
    if p.note:
        return f"skipped ({p.note})"
    ratio, low, high = (math.exp(x) for x in (p.estimate.effect, p.estimate.low, p.estimate.high))
    words = {"higher": "faster", "lower": "slower", "same": f"within ±{BAND_PCT:g}%", "inconclusive": "not settled"}[
        p.verdict.kind
    ]
    return (
        f"{options.flag_text(p.candidate)} vs {options.flag_text(p.current)}: {ratio:.3f}x "
        f"[{low:.3f}-{high:.3f}] over {p.estimate.n} pairs, {words}"
    )


def probe_table(probes):
    """The console's probe table: one line per comparison, the images/sec of each arm per pair."""
    lines = [
        f"{'setting':<17} {'A (current)':<12} {'B':<8} {'A img/s':<22} {'B img/s':<22} {'B/A [95% CI]':<22} "
        f"{'verdict':<13} chosen"
    ]
    for p in probes:
        pairs = stats.paired_values(p.runs)
        a = " ".join(f"{x:.1f}" for x, _ in pairs.values()) or "-"
        b = " ".join(f"{y:.1f}" for _, y in pairs.values()) or "-"
        if p.note:
            ci, verdict = "-", "skipped"
        else:
            ci = "{:.3f}x [{:.3f}-{:.3f}]".format(
                *(math.exp(x) for x in (p.estimate.effect, p.estimate.low, p.estimate.high))
            )
            verdict = {"higher": "B faster", "lower": "B slower", "same": "same", "inconclusive": "not settled"}[
                p.verdict.kind
            ]
        chosen = options.flag_text(p.candidate if p.taken else p.current)
        lines.append(
            f"{p.field:<17} {options.flag_text(p.current):<12} {options.flag_text(p.candidate):<8} "
            f"{a:<22} {b:<22} {ci:<22} {verdict:<13} {chosen}"
        )
    return lines


def process_measure(cfg: RunConfig, device_kind, results_path):
    """measure(settings, pair, arm, position) -> stats.Run: one short bench.run process, its row read back."""
    label = f"autotune-{os.getpid()}"

    def measure(settings, pair, arm, position):
        args = tuning.probe_args(cfg, settings, device_kind) + [
            f"--results={results_path}",
            f"--comparison={label}",
            f"--arm={arm}",
        ]
        done = processes.run_bench(args, results_path, timeout=PROBE_TIMEOUT_S, what="the probe")
        if not done.rows:
            return stats.Run(pair, arm, position, "failed", error=f"exit {done.returncode}: {done.last_line()}")
        row = done.rows[-1]
        return stats.Run(pair, arm, position, row["status"], probe_rate(row), error=row["error"], run_id=row["run_id"])

    return measure


def probe_rate(row):
    """What a probe is judged by: images/sec; for inference batch / median latency (a few slow batches on a
    loaded machine move the mean of 200 short calls, not their median, and the median is the latency users
    quote)."""
    if row.get("mode") == "inference":
        p50 = processes.number(row.get("step_time_p50_ms"))
        return 1000.0 * int(row["global_batch_size"]) / p50 if p50 else None
    return processes.number(row["images_per_sec"])


# ---------------------------------------------------------------------------
# The machine (before TensorFlow is imported) and the cache


def detect_machine(cfg: RunConfig) -> tuning.Machine:
    """Device, driver, TensorFlow version and cores, without importing TensorFlow (oneDNN is still open)."""
    gpus = [] if cfg.num_gpus == 0 or cfg.cpu_replicas > 1 else _nvidia_gpus()
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    common = dict(
        tf_version=_tf_version(),
        logical_cores=logical,
        physical_cores=min(logical, _physical_cores()),
        onednn_env=os.environ.get(devices.ONEDNN_ENV),
        tf_loaded="tensorflow" in sys.modules,
        cpu_kind=cpu_features.cpu_kind(),
    )
    if gpus:
        name, driver = gpus[0]
        return tuning.Machine("GPU", name, gpus=len(gpus), driver=driver, **common)
    return tuning.Machine("CPU", devices.cpu_model_name(), **common)


def _tf_version():
    for dist in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "?"


def _nvidia_gpus():
    """[(name, driver version)] of the GPUs nvidia-smi lists (honouring CUDA_VISIBLE_DEVICES's count), or []."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = [tuple(part.strip() for part in line.split(",", 1)) for line in text.splitlines() if "," in line]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = gpus[: len([v for v in visible.split(",") if v.strip()])]
    return gpus


def _physical_cores():
    """Physical cores from /proc/cpuinfo (distinct (physical id, core id)); a large number when unknown."""
    cores, ids = set(), {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("physical id", "core id"):
                    ids[name] = value.strip()
                elif not line.strip() and ids:
                    cores.add((ids.get("physical id"), ids.get("core id")))
                    ids = {}
    except OSError:
        pass
    return len(cores) if len(cores) > 0 and None not in {c for pair in cores for c in pair} else 1 << 30


def read_cache():
    """{key: entry} of the autotune cache ({} if there is none; unreadable: {} with a warning line)."""
    return caches.read(cache_file(), WHAT)


def _one_of(value, values):
    """`value` is one of the candidates, of the same type (JSON's 1 is not XLA's True)."""
    return any(type(value) is type(v) and value == v for v in values)


def cached_choice(entry, plan):
    """The cached settings of `plan`'s fields, or None: no entry, or one this version cannot use (malformed, one
    that lacks a probed setting, or of another version: then a warning line, and the settings are probed again)."""
    if entry is None:
        return None
    settings = entry.get("settings") if isinstance(entry, dict) else None
    missing = [name for name, _ in plan if name not in settings] if isinstance(settings, dict) else []
    if not isinstance(settings, dict) or not settings:
        problem = "no settings"
    elif missing:  # another version's, or edited: this key's entry must choose every probed setting
        problem = f"no {', '.join(missing)}"
    else:
        bad = [f"{name}={settings[name]!r}" for name, values in plan if not _one_of(settings[name], values)]
        if not bad:
            return {name: settings[name] for name, _ in plan}
        problem = f"{', '.join(bad)}: not a candidate"
    path = cache_file()
    caches.warn(path, f"the {WHAT} {path} holds a malformed entry for this run's key ({problem}); probing again")
    return None


def write_cache(key, entry):
    """Add `entry` under `key`: read, change, write beside and rename, all under the cache's file lock.

    True if it was saved; a cache that cannot be written is a warning line (`bench.config.caches`), never a
    failure."""
    path = cache_file()
    with caches.locked(path, WHAT, timeout=120) as writable:
        return writable and caches.save(path, WHAT, {**read_cache(), key: entry})
