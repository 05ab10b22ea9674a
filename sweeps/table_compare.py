"""Table against table (`python -m sweeps.compare --base old.csv --new new.csv`): compare.md and plots/compare.png.

Configurations are matched on every column that changes a measurement, the columns by
which `sweeps.report` groups rows (less the sweep's name and the `--vary` columns). For
each configuration in both tables: the ratio new/base of the geometric means of
images/sec over the repeats, with a 95% interval (Welch's t on the log rates), and a flag:
regression, improvement, no change, or inconclusive. Configurations in one table only
are listed, never dropped. matplotlib is imported only where the plot is drawn.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import numpy as np

from bench.config import exits
from bench.results import convergence, scoring, stats
from sweeps import files, report

NOT_MATCHED = ("sweep",)  # a name, not a measurement


@dataclasses.dataclass(frozen=True)
class Match:
    key: tuple
    base: list  # images/sec of the ok runs
    new: list
    est: object  # stats.Estimate of log(new/base), or None (too few runs)
    ratio: float  # new/base of the geometric means (nan without runs on a side)
    flag: str
    convergence: str = ""  # with a target accuracy: epochs to it, new against base, and the speed-up to it


def match_columns(vary=()):
    return [c for c in report.CONFIG_COLUMNS + report.SETUP_COLUMNS if c not in NOT_MATCHED and c not in vary]


def _rates(df, columns):
    groups = {}
    for key, g in df.groupby(columns, sort=True, dropna=False):
        ok = g[g["status"] == "ok"]["images_per_sec"].dropna()
        groups[tuple(key)] = [float(x) for x in ok if x > 0]
    return groups


def _to_target(df, columns):
    """{key: (epochs, times, images/sec, seeds)} of configurations run to a target (epochs/times None: never
    reached)."""
    groups = {}
    for key, g in df.groupby(columns, sort=True, dropna=False):
        parts = dict(zip(columns, key))
        if not str(parts.get("budget", "")).startswith("to "):
            continue
        ok = g["status"] == "ok"
        epochs = [float(e) if o and e not in ("", None) else None for e, o in zip(g["epochs_to_target"], ok)]
        times = [float(t) if o and t not in ("", None) else None for t, o in zip(g["time_to_target_s"], ok)]
        ips = [float(x) for x in g.loc[ok, "images_per_sec"].dropna()]
        groups[tuple(key)] = (epochs, times, ips, list(g["seed"]))
    return groups


def convergence_text(base, new):
    """Each side's MLPerf score of time-to-target, and the convergence guard of `new` against `base` (each
    (epochs, times, images/sec, seeds)), in one cell."""
    scores = []
    for name, side in (("base", base), ("new", new)):
        score = scoring.olympic(side[1], side[3])
        value = f"{score.value:.1f} s" if score.value is not None else "no score"
        scores.append(f"{name} {value} ({score.verdict}: {score.note})")
    guard = convergence.guard(base[0], new[0])
    speed = convergence.speedup(base[2], new[2], base[1], new[1])
    return f"time to target, MLPerf score: {'; '.join(scores)}. {guard.text(('base', 'new'))}; {speed.text()}"


def flag(est, band_pct, fail_pct=None):
    """regression / improvement / no change / inconclusive, from the interval of log(new/base)."""
    if est is None:
        return "one run each: no interval"
    v = stats.verdict(est, *stats.speed_band(band_pct))
    if v.kind == "lower":
        beyond = fail_pct is not None and stats.slower_with_confidence(est, fail_pct)
        return "**regression**" + (f" (beyond {fail_pct:g}%)" if beyond else "")
    if v.kind == "higher":
        return "improvement"
    if v.kind == "same":
        return f"no change (within ±{stats.ratio_bound(est):.1%})"
    more = f"~{v.pairs_needed} runs each would settle it" if v.pairs_needed else "below the noise"
    return f"inconclusive ({more})"


def compare(base_df, new_df, vary=(), band_pct=5.0, fail_pct=None):
    """(matches, only in base, only in new, the match columns)."""
    columns = match_columns(vary)
    for df in (base_df, new_df):
        for c in columns:
            if c not in df.columns:
                df[c] = ""
    # a run that did not finish counts with its configuration, found in either table (every new run failed)
    base_df, new_df = (
        report.with_unfinished_rows_placed(base_df, [new_df], columns),
        report.with_unfinished_rows_placed(new_df, [base_df], columns),
    )
    base, new = _rates(base_df, columns), _rates(new_df, columns)
    base_target, new_target = _to_target(base_df, columns), _to_target(new_df, columns)
    matches = []
    for key in sorted(set(base) & set(new), key=str):
        b, n = base[key], new[key]
        est = None
        if b and n:
            est = stats.unpaired_interval(np.log(b), np.log(n))
            if est is not None:  # planning: the sd of a difference of two runs, so "runs each" reads as pairs
                est = dataclasses.replace(est, sd=est.sd * math.sqrt(2))
        ratio = math.exp(np.mean(np.log(n)) - np.mean(np.log(b))) if b and n else float("nan")
        text = flag(est, band_pct, fail_pct) if b and n else "no ok run on a side"
        guard = convergence_text(base_target[key], new_target[key]) if key in base_target and key in new_target else ""
        matches.append(Match(key, b, n, est, ratio, text, guard))
    only_base = sorted(set(base) - set(new), key=str)
    only_new = sorted(set(new) - set(base), key=str)
    return matches, only_base, only_new, columns


def regressions(matches, fail_pct):
    return [m for m in matches if m.est is not None and stats.slower_with_confidence(m.est, fail_pct)]


def unjudged(matches):
    """Configurations with no ok run on a side: nothing shows they are not slower (every new run failed)."""
    return [m for m in matches if not m.base or not m.new]


def out_dir(values):
    return values.out_dir or os.path.dirname(os.path.abspath(values.new))


def output_paths(folder):
    """(compare.md, plots/compare.png) in `folder`."""
    return os.path.join(folder, "compare.md"), os.path.join(folder, "plots", "compare.png")


def same_file(base, new):
    try:
        return os.path.samefile(base, new)
    except OSError:
        return False


def label(key, columns, varying):
    """A configuration's name: the model (what of it is matched: `--vary depth` leaves the depth out), then
    the columns that vary between configurations."""
    parts = dict(zip(columns, key))
    name = f"ResNet-{files.whole(parts['depth'])}" if "depth" in parts else "ResNet"
    model = "/".join(files.cell(parts[c]) for c in ("block", "shortcut") if c in parts)
    rest = [f"{c}={files.cell(parts[c])}" for c in varying if c not in ("depth", "block", "shortcut")]
    return ", ".join([f"{name} {model}".strip()] + rest)


def varying_columns(keys, columns):
    return [c for i, c in enumerate(columns) if len({files.cell(k[i]) for k in keys}) > 1]


def markdown(matches, only_base, only_new, columns, base_path, new_path, band_pct, vary_values, warning=""):
    keys = [m.key for m in matches] + only_base + only_new
    varying = varying_columns(keys, columns) if keys else []
    fixed = [c for c in columns if c not in varying]
    lines = [
        "# Comparison of two tables",
        "",
        f"Base `{base_path}`, new `{new_path}`. Ratio new/base of images/sec (geometric means over the ok "
        f"repeats) with its 95% interval (Welch's t on log rates); no change = the whole interval inside "
        f"±{band_pct:g}%.",
        "",
    ]
    if warning:
        lines += [f"**Warning:** {warning}", ""]
    if keys:
        common = [
            f"{c}={files.cell(keys[0][columns.index(c)])}"
            for c in fixed
            if files.cell(keys[0][columns.index(c)]) != "–"
        ]
        lines += ["Common to every configuration: " + ", ".join(common) + ".", ""]
    for c, (b, n) in vary_values.items():
        lines.append(f"Allowed to differ (`--vary`): {c}: base {b}, new {n}.")
    lines += [
        "",
        "| configuration | base runs | new runs | base img/s | new img/s | new/base | 95% CI | flag |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in matches:
        ci = f"{math.exp(m.est.low):.3f}–{math.exp(m.est.high):.3f}" if m.est else "–"
        gm = lambda xs: f"{math.exp(np.mean(np.log(xs))):.1f}" if xs else "–"  # noqa: E731
        ratio = "–" if math.isnan(m.ratio) else f"{m.ratio:.3f}"
        lines.append(
            f"| {label(m.key, columns, varying)} | {len(m.base)} | {len(m.new)} | {gm(m.base)} | "
            f"{gm(m.new)} | {ratio} | {ci} | {m.flag} |"
        )
    targets = [m for m in matches if m.convergence]
    if targets:
        lines += [
            "",
            "Configurations run to a target accuracy: each table's MLPerf score of time-to-target (olympic mean "
            f"of {scoring.RUNS_PER_RESULT} runs; see summary.md), epochs to the target, new against base (flagged "
            f"when new needs more: one-sided Welch t, level {convergence.ALPHA:g}), and the speed-up per step and "
            "to the target.",
            "",
            "| configuration | convergence |",
            "|---|---|",
        ]
        lines += [f"| {label(m.key, columns, varying)} | {m.convergence} |" for m in targets]
    for title, only in (("Only in the base table", only_base), ("Only in the new table", only_new)):
        if only:
            lines += ["", f"{title}:", ""] + [f"- {label(k, columns, varying)}" for k in only]
    return "\n".join(lines) + "\n"


def plot(matches, columns, path, band_pct):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in matches if not math.isnan(m.ratio)]
    varying = varying_columns([m.key for m in matches], columns) if matches else []
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.4 * max(len(shown), 1)))
    for i, m in enumerate(shown):
        low, high = (math.exp(m.est.low), math.exp(m.est.high)) if m.est else (m.ratio, m.ratio)
        color = "tab:red" if "regression" in m.flag else "tab:green" if m.flag == "improvement" else "tab:blue"
        ax.errorbar([m.ratio], [i], xerr=[[m.ratio - low], [high - m.ratio]], fmt="o", color=color, capsize=3)
    ax.axvline(1.0, color="black", lw=1)
    ax.axvspan(1 - band_pct / 100, 1 + band_pct / 100, color="0.9", zorder=0, label=f"±{band_pct:g}%")
    ax.set_yticks(range(len(shown)), [label(m.key, columns, varying) for m in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="images/sec new / base (95% CI)", title="Table against table")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    files.write_figure(fig, path)
    plt.close(fig)


def run(values):
    """--base/--new: write compare.md and plots/compare.png, print the flags; return the exit status."""
    warning = ""
    if same_file(values.base, values.new):
        warning = (
            f"--base and --new are the same file ({values.new}): its rows are compared with themselves, "
            f"not as two independent samples; every ratio is 1 by construction."
        )
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    base_df, new_df = report.load(values.base), report.load(values.new)
    shared = (set(base_df["run_id"]) & set(new_df["run_id"])) - {""}
    if shared and not warning:  # a copy of one table, or rows copied into both
        warning = (
            f"--base and --new hold {len(shared)} of the same runs (the same run_id, e.g. {min(shared)}): those "
            f"rows are compared with themselves, not as two independent samples."
        )
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    vary_values = {c: tuple(_values(df, c) for df in (base_df, new_df)) for c in values.vary}
    matches, only_base, only_new, columns = compare(
        base_df, new_df, values.vary, values.band, values.fail_on_regression
    )
    md_path, png_path = output_paths(out_dir(values))
    md = markdown(matches, only_base, only_new, columns, values.base, values.new, values.band, vary_values, warning)
    plot(matches, columns, png_path, values.band)
    files.write_text(md_path, md)  # last, as the report's
    flagged = [m for m in matches if "regression" in m.flag or m.flag == "improvement"]
    empty = unjudged(matches)
    print(
        f"{len(matches)} configurations in both tables, {len(only_base)} only in base, {len(only_new)} only in "
        f"new; {sum('regression' in m.flag for m in flagged)} regressions, "
        f"{sum(m.flag == 'improvement' for m in flagged)} improvements"
        + (f", {len(empty)} with no ok run on a side" if empty else "")
    )
    print(f"wrote {md_path} and {png_path}")
    if values.fail_on_regression is None:
        return exits.EXIT_OK
    failed = False
    slower = regressions(matches, values.fail_on_regression)
    if slower:
        print(
            f"FAIL: {len(slower)} configuration(s) slower by more than {values.fail_on_regression:g}% with 95% confidence"
        )
        failed = True
    if empty:
        print(
            f"FAIL: {len(empty)} configuration(s) with no ok run on a side (no rate to compare: "
            f"{', '.join(label(m.key, columns, []) for m in empty)})"
        )
        failed = True
    return exits.EXIT_FAILED if failed else exits.EXIT_OK


def _values(df, column):
    """The distinct values of `column` in a table, as text ("20", not 20.0)."""
    return ", ".join(sorted({files.cell(v) for v in df.get(column, [])}))
