"""The report's MLPerf sections: each configuration's time-to-target score, and convergence against a reference.

For every configuration trained to a `--target_accuracy` (its rows grouped as `sweeps.report`
groups them): the olympic score of its times-to-target with MLPerf's rules
(`bench.results.scoring`: non-converged runs counted as the slowest, two making it invalid, the
median window when more runs than N exist, seeds that must differ), the runs it still needs, and
its epochs-to-target. Then, within each family of configurations (same model, data, target,
recipe), every configuration against the family's reference (float32, the papers' batch of 128,
`--lr_scale 1`): flagged when it needs significantly more epochs to the target
(`bench.results.convergence`), its speed-up stated per step and to the target.
"""

from __future__ import annotations

import dataclasses
import math

from bench.results import convergence, scoring
from sweeps import files

FAMILY = ("data", "block", "shortcut", "depth", "budget", "recipe", "mode")  # what a reference must share
REFERENCE = {"precision": "float32", "global_batch_size": 128, "lr_scale": 1.0}  # the papers' setting
SHOWN = ("device", "strategy", "num_replicas", "precision", "global_batch_size", "lr_scale", "batch_norm", "xla")


@dataclasses.dataclass(frozen=True)
class TargetResult:
    """One configuration's runs to a target."""

    key: dict  # the grouping columns and their values
    times: list  # time_to_target_s per run (None: never reached it)
    epochs: list  # epochs_to_target per run (None: never)
    seeds: list
    ips: list  # images/sec of the ok runs
    score: scoring.Score


def _number(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def target_results(groups):
    """TargetResult for each (key, rows) group whose runs had a target accuracy."""
    results = []
    for key, rows in groups:
        if not str(key.get("budget", "")).startswith("to "):
            continue
        reached = [r.get("status") == "ok" and _number(r.get("time_to_target_s")) is not None for r in rows]
        times = [_number(r["time_to_target_s"]) if ok else None for r, ok in zip(rows, reached)]
        epochs = [_number(r.get("epochs_to_target")) if ok else None for r, ok in zip(rows, reached)]
        seeds = [r.get("seed") for r in rows]
        ips = [_number(r.get("images_per_sec")) for r in rows if r.get("status") == "ok"]
        results.append(TargetResult(key, times, epochs, seeds, ips, scoring.olympic(times, seeds)))
    return results


def _label(key, columns):
    name = f"ResNet-{files.whole(key['depth'])} {key['block']}/{key['shortcut']}"
    return ", ".join([name] + [f"{c} {files.cell(key.get(c))}" for c in columns])


def _varying(results):
    return [c for c in SHOWN if len({files.cell(r.key.get(c)) for r in results}) > 1]


def _epochs_text(epochs):
    reached, missed = convergence.split(epochs)
    if not reached:
        return "–"
    mean = sum(reached) / len(reached)
    spread = f" ({min(reached):.3g}–{max(reached):.3g})" if len(reached) > 1 and min(reached) != max(reached) else ""
    return f"{mean:.3g}{spread}"


def score_section(results):
    """Markdown lines: one per configuration with a target."""
    if not results:
        return []
    shown = _varying(results)
    lines = [
        "## Time to target (MLPerf scoring)",
        "",
        f"A result is {scoring.RUNS_PER_RESULT} runs of one configuration (MLPerf's rule for image classification): "
        "the fastest and the slowest time-to-target dropped, the rest averaged; a run that never reached the target "
        "counts as the slowest, two make the result invalid; with more runs, the middle "
        f"{scoring.RUNS_PER_RESULT} of the sorted times (median window). Seeds must differ between the runs. "
        "Time-to-target is training time (compile included, evaluation and checkpoints not); epochs as trained "
        "when an evaluation first reached the target.",
        "",
        "| configuration | target | runs (reached) | distinct seeds | epochs to target | time to target (s) | "
        "result | runs still needed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        reached = sum(t is not None for t in r.times)
        seeds = (
            "no: " + ", ".join(map(str, scoring.repeated_seeds(r.seeds))) if scoring.repeated_seeds(r.seeds) else "yes"
        )
        value = "–" if r.score.value is None else f"{r.score.value:.1f}"
        lines.append(
            f"| {_label(r.key, shown)} | {r.key['budget'][3:]} | {len(r.times)} ({reached}) | {seeds} | "
            f"{_epochs_text(r.epochs)} | {value} | {r.score.verdict}: {r.score.note} | {r.score.needed} |"
        )
    return lines + [""]


def _is_reference(key):
    for column, value in REFERENCE.items():
        v = key.get(column)
        if isinstance(value, float) or isinstance(value, int):
            if _number(v) is None or _number(v) != float(value):
                return False
        elif v != value:
            return False
    return True


def families(results):
    """{family key: [TargetResult]} for the configurations sharing model, data, target and recipe."""
    grouped = {}
    for r in results:
        grouped.setdefault(tuple(files.cell(r.key.get(c)) for c in FAMILY), []).append(r)
    return grouped


def reference_of(members):
    """The family's reference configuration: float32, batch 128, lr_scale 1; the one with most reaching runs."""
    candidates = [r for r in members if _is_reference(r.key)]
    return max(candidates, key=lambda r: sum(t is not None for t in r.times), default=None)


def convergence_section(results):
    """Markdown lines: each configuration against its family's reference."""
    lines = []
    for members in families(results).values():
        ref = reference_of(members)
        others = [r for r in members if r is not ref]
        if ref is None or not others:
            continue
        shown = _varying(members)
        if not lines:
            lines = [
                "## Convergence against the reference",
                "",
                "Each configuration against the reference of its model, data and target (float32, batch 128, "
                f"lr_scale 1): flagged when it needs more epochs to the target (one-sided Welch t over the runs of "
                f"each, level {convergence.ALPHA:g}, as MLPerf's reference convergence points); a setting faster per "
                "step that needs more epochs is not faster: its speed-up to the target says so.",
                "",
                "| configuration | reference | epochs to target | speed-up |",
                "|---|---|---|---|",
            ]
        for r in others:
            g = convergence.guard(ref.epochs, r.epochs)
            s = convergence.speedup(ref.ips, r.ips, ref.times, r.times)
            lines.append(
                f"| {_label(r.key, shown)} | {_label(ref.key, shown)} | {g.text(('reference', 'this'))} | {s.text()} |"
            )
    return lines + [""] if lines else []


def sections(groups):
    """The report's MLPerf sections (markdown lines) from its (key, rows) groups."""
    results = target_results(groups)
    return score_section(results) + convergence_section(results)
