"""python -m sweeps.report: results/summary.csv -> results/summary.md and results/plots/*.png.

One markdown line per configuration (mean ± 95% CI over repeats), and plots: images/sec vs depth per
shortcut, test accuracy vs depth per shortcut with the papers' reference errors marked, and accuracy vs
images/sec with the Pareto front. Synthetic-data rows never enter an accuracy plot or column.
matplotlib is imported only where a plot is drawn (a sweep's driver and `--help` do without it).
"""

from __future__ import annotations

import math
import os
import tempfile

from bench.config import cli, exits, validation

# The modules below take a second or more to import: a Ctrl-C then is one line and 130, not a traceback.
with exits.leave_on_signals("the report"):
    import pandas as pd
    from absl import app, flags

    from bench.config.options import ConfigError
    from bench.results import bands, metrics, table
    from sweeps import files, mlperf_scores, scaling, serving

FLAGS = flags.FLAGS


def define_flags():
    """Flags of `python -m sweeps.report` (defined only when run as a program: sweeps.tune imports this module)."""
    flags.DEFINE_string("results", "results/summary.csv", "Results CSV to read.")
    flags.DEFINE_string("out_dir", None, "Where summary.md and plots/ go (default: next to --results).")
    flags.DEFINE_string("sweep", None, "Only rows of this sweep name.")
    flags.DEFINE_string("data", None, "Only rows of this data kind (files, tfds, synthetic).")
    flags.DEFINE_string("device", None, "Only rows whose device contains this text.")


# Test error (%) reported for CIFAR-10, by depth: He et al. 2015 Table 6 (original blocks, option A)
# and He et al. 2016 (pre-activation; ResNet-164/1001 use bottleneck blocks); their bands: bench.results.bands.
REFERENCE_ERROR = bands.reference_errors()
CONFIG_COLUMNS = [
    "sweep",
    "device",
    "data",
    "strategy",
    "num_replicas",
    "block",
    "shortcut",
    "depth",
    "precision",
    "xla",
    "global_batch_size",
]
# Columns that also change what was measured: rows differing in them are never averaged together.
SETUP_COLUMNS = [
    "mode",
    "scenario",  # MLPerf LoadGen's scenario (sweeps/serving.py): never averaged with the quick look
    "loop",
    "batch_norm",
    "onednn",
    "sync_bn",
    "recipe",
    "budget",
    "warmup_steps",
    "steps_per_loop",
    "augment",
    "xla_scope",
    "intra_op_threads",
    "inter_op_threads",
    "num_workers",
    "launcher",
    "lr_scale",
    "tf_version",
    "keras_version",
]


def load(path, sweep=None, data=None, device=None):
    """The rows of a results file (of this schema or an earlier one), filtered; numbers as numbers.

    An empty (0-byte) file is a table without rows. Anything that is not a results table raises
    ResultsError (one line and exit 2 from main).
    """
    table.check_header(path)
    if os.path.getsize(path) == 0:
        df = pd.DataFrame(columns=list(table.SCHEMA), dtype=str)
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except (ValueError, UnicodeDecodeError) as err:  # pandas' ParserError is a ValueError
            raise table.ResultsError(
                f"{path} cannot be read as a results table "
                f"({str(err).strip().splitlines()[0] if str(err).strip() else err!r})"
            ) from None
    for col in table.SCHEMA:  # an earlier schema lacks the newer columns
        if col not in df.columns:
            df[col] = ""
    # Multi-worker rows written before the launcher column were all launched by Ray Train.
    df.loc[(df["strategy"] == "multi_worker") & (df["launcher"] == ""), "launcher"] = "ray"
    df["lr_scale"] = df["lr_scale"].replace("", "1.0")  # rows from before --lr_scale ran the papers' lr
    # The step budget: the steps trained, unless a target accuracy ended runs at different steps.
    df["budget"] = df["total_steps"].where(df["target_accuracy"] == "", "to " + df["target_accuracy"])
    # A run that did not finish made fewer steps than its budget: its budget is its configuration's.
    df.loc[(df["status"] != "ok") & (df["target_accuracy"] == ""), "budget"] = ""
    df = with_unfinished_rows_placed(df)
    if sweep:
        df = df[df["sweep"] == sweep]
    if data:
        df = df[df["data"] == data]
    if device:
        df = df[df["device"].str.contains(device, regex=False)]
    for col in (
        "depth",
        "images_per_sec",
        "test_accuracy",
        "mfu",
        "num_replicas",
        "global_batch_size",
        "peak_rss_mb",
        "peak_anon_mb",
        "gpu_mem_peak_mb",
    ):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def with_unfinished_rows_placed(df, others=(), columns=None):
    """`df` with each row of a run that did not finish given the configuration it belongs to.

    A run that failed or was interrupted while setting up has the columns the configuration gives and none of
    those the setup finds (device, replicas, BN kernel, oneDNN, TensorFlow version...); one that stopped while
    training lacks its step budget (it made fewer steps). Its empty columns are filled from the one
    configuration of finished rows that agrees with every column it has (the sweep's name included), here or in
    `others` (the base table, for a table comparison's new rows), so it is counted there as not ok, not shown as
    a configuration of its own ("default × ?", "5 steps"). When no configuration, or more than one (two devices
    ran it), fits, it is left as it is: which one it was is not guessed. `columns`: those that make a
    configuration (default: the report's; a table comparison's leave the sweep's name out).
    """
    columns = [c for c in columns or CONFIG_COLUMNS + SETUP_COLUMNS if c in df.columns]
    unplaced = _unfinished(df)
    if not unplaced.any():
        return df
    pool = [df.loc[~unplaced, columns]] + [o.loc[~_unfinished(o), columns] for o in others]
    configurations = pd.concat(pool).drop_duplicates()
    df = df.copy()
    for i in df.index[unplaced]:
        row = df.loc[i, columns]
        known = [c for c in columns if c == "sweep" or not _blank(row[c])]
        fits = configurations[(configurations[known] == row[known]).all(axis=1)]
        if len(fits) == 1:
            for c in columns:
                if _blank(row[c]):
                    df.at[i, c] = fits.iloc[0][c]
    return df


def _unfinished(df):
    """Rows of runs that did not finish and lack a column of their configuration (not set up, or no budget)."""
    if df.empty:
        return pd.Series(False, index=df.index)
    return (df["status"] != "ok") & ((df["device"] == "") | (df["budget"] == ""))


def _blank(value):
    """An empty cell: "" as read, or NaN once `load` made the column numbers."""
    return value == "" or (isinstance(value, float) and math.isnan(value))


def groups(df):
    """[(key, rows)]: each configuration's key (its grouping columns) and its rows as dicts."""
    df = df.assign(**{c: "" for c in SETUP_COLUMNS if c not in df.columns})
    columns = CONFIG_COLUMNS + SETUP_COLUMNS
    return [(dict(zip(columns, key)), g.to_dict("records")) for key, g in df.groupby(columns, sort=True, dropna=False)]


def per_configuration(df):
    """One record per configuration: counts of statuses, mean ± CI of speed and (real data) accuracy, and the
    papers' accuracy band where it applies (bench.results.bands)."""
    df = df.assign(**{c: "" for c in SETUP_COLUMNS if c not in df.columns})
    records = []
    for key, group in df.groupby(CONFIG_COLUMNS + SETUP_COLUMNS, sort=True, dropna=False):
        ok = group[group["status"] == "ok"]
        rec = dict(zip(CONFIG_COLUMNS + SETUP_COLUMNS, key))
        rec["runs"] = len(group)
        rec["ok"] = len(ok)
        rec["not_ok"] = ", ".join(sorted(set(group.loc[group["status"] != "ok", "status"]))) or ""
        speed = ok["images_per_sec"].dropna()
        rec["ips"], rec["ips_ci"] = metrics.mean_ci95(speed) if len(speed) else (None, None)
        mfu = ok["mfu"].dropna()
        rec["mfu"] = mfu.mean() if len(mfu) else None
        acc = ok.loc[ok["data"] != "synthetic", "test_accuracy"].dropna()
        rec["acc"], rec["acc_ci"] = metrics.mean_ci95(acc) if len(acc) else (None, None)
        for key, col in (("rss", "peak_rss_mb"), ("anon", "peak_anon_mb"), ("gpu_mem", "gpu_mem_peak_mb")):
            values = ok[col].dropna() if col in ok.columns else []
            rec[key], rec[key + "_ci"] = metrics.mean_ci95(values) if len(values) else (None, None)
        rec["conditions"] = _conditions(ok)
        rec["band"] = _band_text(rec, ok)
        records.append(rec)
    return pd.DataFrame(records)


def _conditions(ok):
    """How many of a configuration's ok runs were unstable, contended or throttled (`–`: none could be judged)."""
    flagged, judged = [], False
    for col in ("unstable", "contended", "throttled"):
        values = ok[col] if col in ok.columns else pd.Series(dtype=str)
        judged = judged or bool((values.isin(["true", "false"])).any())
        count = int((values == "true").sum())
        if count:
            flagged.append(f"{count}/{len(ok)} {col}")
    return ", ".join(flagged) or ("ok" if judged else "–")


def _band_text(rec, ok):
    """The paper's band beside the accuracy of rows trained with its full recipe on real CIFAR-10 ('' otherwise)."""
    band = bands.band_for(rec["block"], rec["depth"], rec["shortcut"]) if not pd.isna(rec["depth"]) else None
    if band is None:
        return ""
    full = [r["test_accuracy"] for r in ok.to_dict("records") if bands.full_paper_recipe(r)]
    full = [a for a in full if not pd.isna(a)]
    if not full:
        return ""
    verdict = band.judge(sum(full) / len(full))
    shown = f"**{verdict}** {band.text()}" if verdict != "inside" else f"band {band.text()}"
    return f" ({shown}: {band.source})"


def _setup(r):
    """What else was held fixed, compactly: loop, BN kernel, oneDNN, step budget, TensorFlow."""
    onednn = {"true": ", oneDNN", "false": ", no oneDNN"}.get(r.onednn, "")
    steps = f"{r.budget} steps" if r.budget else "steps ?"
    scenario = f" {r.scenario}" if getattr(r, "scenario", "") not in ("", "none") else ""
    if str(r.budget).startswith("to "):
        steps = f"to accuracy {r.budget[3:]}"
    mode = f"inference{scenario}, " if r.mode == "inference" else ""
    workers = f", {r.num_workers} workers ({r.launcher})" if r.num_workers else ""
    lr = f", lr x{float(r.lr_scale):g}" if getattr(r, "lr_scale", "1.0") not in ("1.0", "1", "") else ""
    return f"{mode}{r.loop or 'ctl'}, {r.batch_norm or '?'} BN{onednn}{workers}, {steps}{lr}, TF {r.tf_version or '?'}"


def _int(value):
    """A count column as text; '?' where the row does not say (a trial that failed before it ran)."""
    return "?" if value is None or pd.isna(value) else str(int(value))


def _pm(value, ci, fmt):
    if value is None or pd.isna(value):
        return "–"
    return format(value, fmt) + (f" ± {format(ci, fmt)}" if ci else "")


def _memory(r):
    """Peak resident memory (mean ± CI over runs), its anonymous part, and on GPUs the largest device's peak."""
    text = _pm(r.rss, r.rss_ci, ",.0f")
    if r.anon is not None and not pd.isna(r.anon):
        text += f" ({r.anon:,.0f} anon)"
    if r.gpu_mem is not None and not pd.isna(r.gpu_mem):
        text += f" (GPU {r.gpu_mem:,.0f})"
    return text


def markdown(summary, source, filtered=False):
    rel = os.path.relpath(source)
    source = rel if not rel.startswith("..") else source
    lines = [
        "# Benchmark summary",
        "",
        f"From `{source}`: {int(summary['runs'].sum()) if len(summary) else 0} rows, {len(summary)} configurations "
        f"({int(summary['runs'].sum() - summary['ok'].sum()) if len(summary) else 0} not ok). "
        "images/sec: mean over runs ± 95% CI (repeats); accuracy only from real data, beside the papers' band where "
        "the row trained with the paper's full recipe on CIFAR-10. Peak memory: the run's "
        "processes' peak resident memory during training, with its anonymous part (what the run allocated, without "
        "the libraries' file pages, which the kernel drops under memory pressure; GPU: the largest device's peak "
        "allocation); conditions: "
        "ok runs whose timed windows were unstable, whose CPU was shared (contended) or whose GPU throttled.",
        "",
        "| sweep | device | data | strategy × replicas | block | shortcut | depth | precision | XLA | batch | runs (ok) "
        "| images/sec | peak memory (MB) | conditions | MFU | test accuracy | setup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not len(summary):
        lines += ["", "No rows match the filters." if filtered else f"No rows: `{source}` has none yet."]
    for r in summary.itertuples():
        status = f"{r.runs} ({r.ok})" + (f" {r.not_ok}" if r.not_ok else "")
        mfu = "–" if r.mfu is None or pd.isna(r.mfu) else f"{r.mfu:.1%}"
        lines.append(
            f"| {r.sweep or '–'} | {r.device or '?'} | {r.data or '?'} | {r.strategy} × {_int(r.num_replicas)} | "
            f"{r.block} | {r.shortcut} | {_int(r.depth)} | {r.precision} | {r.xla} | {_int(r.global_batch_size)} | {status} | "
            f"{_pm(r.ips, r.ips_ci, '.1f')} | {_memory(r)} | {r.conditions} | {mfu} | {_pm(r.acc, r.acc_ci, '.4f')}{r.band} "
            f"| {_setup(r)} |"
        )
    return "\n".join(lines) + "\n"


# A line joins depths of one block/shortcut only when nothing else that changes a measurement differs.
LINE_COLUMNS = [
    "block",
    "shortcut",
    "strategy",
    "num_replicas",
    "precision",
    "xla",
    "global_batch_size",
    "mode",
    "loop",
    "budget",
]


def _plot_by_shortcut(ax, summary, value, ci, label_fmt):
    markers = {"A": "o", "B": "s", "C": "^"}
    styles = {"preact": "-", "original": "--", "bottleneck": ":"}
    cols = [c for c in LINE_COLUMNS if c in summary.columns]
    varying = [c for c in cols[2:] if summary[c].nunique(dropna=False) > 1]  # named in the label
    plotted = False
    for key, g in summary.groupby(cols, dropna=False):
        g = g.dropna(subset=[value]).sort_values("depth")
        if g.empty:
            continue
        parts = dict(zip(cols, key))
        label = label_fmt.format(block=parts["block"], shortcut=parts["shortcut"])
        label += "".join(f", {c} {parts[c]}" for c in varying)
        ax.errorbar(
            g["depth"],
            g[value],
            yerr=g[ci].fillna(0),
            marker=markers.get(parts["shortcut"], "o"),
            linestyle=styles.get(parts["block"], "-"),
            capsize=3,
            label=label,
        )
        plotted = True
    return plotted


def _depth_ticks(ax, summary, extra=()):
    """Label the depths themselves on the log axis (after the scale is set)."""
    import matplotlib.ticker

    depths = {int(d) for d in summary["depth"].dropna().unique()} if len(summary) else set()
    depths = sorted(depths | set(extra))
    if depths:
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def plots(summary, out_dir):
    """Write the PNG plots; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    title_dev = ", ".join(sorted(set(summary["device"]))) if len(summary) else "no rows"

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if _plot_by_shortcut(ax, summary, "ips", "ips_ci", "{block} / {shortcut}"):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no successful runs", ha="center", transform=ax.transAxes)
    ax.set(xscale="log", xlabel="depth", ylabel="training images/sec", title=f"Throughput vs depth\n{title_dev}")
    _depth_ticks(ax, summary)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir, "images_per_sec_vs_depth.png"))

    real = summary.dropna(subset=["acc"]) if len(summary) else summary
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(real) and _plot_by_shortcut(ax, real, "acc", "acc_ci", "{block} / {shortcut}"):
        pass
    else:
        ax.text(
            0.5, 0.5, "no real-data runs yet\n(synthetic rows have no accuracy)", ha="center", transform=ax.transAxes
        )
    paper_colors = {"original": "0.45", "preact": "black", "bottleneck": "tab:purple"}
    for block, refs in REFERENCE_ERROR.items():
        ax.scatter(
            list(refs),
            [1 - e / 100 for e in refs.values()],
            marker="*",
            s=110,
            zorder=5,
            color=paper_colors[block],
            label=f"paper ({block})",
        )
    ax.set(xscale="log", xlabel="depth", ylabel="test accuracy", title="Test accuracy vs depth (stars: papers)")
    _depth_ticks(ax, real, extra=[d for refs in REFERENCE_ERROR.values() for d in refs])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir, "accuracy_vs_depth.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    both = real.dropna(subset=["ips"]) if len(real) else real
    if len(both):
        ax.scatter(both["ips"], both["acc"], c="tab:blue", label="configurations")
        front = pareto_front(both[["ips", "acc"]].to_numpy())
        ax.plot([p[0] for p in front], [p[1] for p in front], "r-o", label="Pareto front")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no real-data runs yet", ha="center", transform=ax.transAxes)
    ax.set(xlabel="training images/sec", ylabel="test accuracy", title="Accuracy vs speed")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out_dir, "accuracy_vs_images_per_sec.png"))
    paths.append(memory_plot(summary, out_dir, title_dev))
    return paths


def memory_plot(summary, out_dir, title_dev):
    """Peak memory against depth, one line per block/shortcut and whatever else varies (batch size, precision):
    the anonymous resident memory (what the run allocated: steady, unlike the libraries' evictable file pages),
    and the GPUs' peak allocation where there is one."""
    import matplotlib.pyplot as plt

    gpu = len(summary) and summary["gpu_mem"].notna().any()
    fig, axes = plt.subplots(1, 2 if gpu else 1, figsize=(12 if gpu else 7, 4.5), squeeze=False)
    panels = [("anon", "peak anonymous resident memory (MB)")]
    panels += [("gpu_mem", "GPU peak allocated (MB)")] if gpu else []
    for ax, (value, ylabel) in zip(axes[0], panels):
        if len(summary) and _plot_by_shortcut(ax, summary, value, value + "_ci", "{block} / {shortcut}"):
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no memory readings yet", ha="center", transform=ax.transAxes)
        ax.set(xscale="log", xlabel="depth", ylabel=ylabel, title=f"Peak memory vs depth\n{title_dev}")
        _depth_ticks(ax, summary)
        ax.grid(alpha=0.3)
    return _save(fig, out_dir, "peak_memory_vs_depth.png")


def pareto_front(points):
    """Points not beaten on both speed and accuracy, sorted by speed."""
    pts = sorted(map(tuple, points), key=lambda p: (-p[0], -p[1]))
    front, best_acc = [], float("-inf")
    for speed, acc in pts:
        if acc > best_acc:
            front.append((speed, acc))
            best_acc = acc
    return sorted(front)


def _save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    files.write_figure(fig, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def build(results_path, out_dir, sweep=None, data=None, device=None):
    """Write `<out_dir>/summary.md` and `<out_dir>/plots/*.png`; return (markdown path, plot paths).

    Everything is computed before anything is written, and each file is replaced whole (written
    beside it, then renamed): an existing report is only ever replaced by a complete new one.
    """
    df = load(results_path, sweep, data, device)
    summary = per_configuration(df)
    text = markdown(summary, results_path, filtered=bool(sweep or data or device))
    scores = mlperf_scores.sections(groups(df))  # time to target by MLPerf's rules, convergence guard
    if scores:
        text += "\n" + "\n".join(scores)
    check_out_dir(out_dir)
    md_path = os.path.join(out_dir, "summary.md")
    pngs = plots(summary, os.path.join(out_dir, "plots"))

    scaled = scaling.build_scaling(df, out_dir)
    if scaled and scaled[1]:
        pngs.append(scaled[1])
    served = serving.build_serving(df, out_dir)
    if served:
        pngs.append(served[1])
    files.write_text(md_path, text)  # last: it names what the others hold
    return md_path, pngs


def check_out_dir(out_dir):
    """Create the report's folders; ResultsError in one line if they cannot take files."""
    try:
        os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=os.path.join(out_dir, "plots"), prefix=".report-probe-"):
            pass  # really creating a file: as root, os.access says yes to /proc
    except OSError as err:
        raise table.ResultsError(f"cannot write the report in {out_dir} ({err.strerror or err})") from None


def main(argv):
    """The command; bad input raises ConfigError (a file that is not a results table: ResultsError, one too)."""
    del argv  # cli.parse_flags refused stray arguments
    out_dir = FLAGS.out_dir or os.path.dirname(os.path.abspath(FLAGS.results))
    if validation.not_a_table_file(FLAGS.results):
        raise ConfigError(validation.not_a_table_file(FLAGS.results))
    md, pngs = build(FLAGS.results, out_dir, FLAGS.sweep, FLAGS.data, FLAGS.device)
    print(f"wrote {md} and {len(pngs)} plots in {os.path.dirname(pngs[0])}")
    if any(p.endswith("scaling.png") for p in pngs):
        print(f"wrote {os.path.join(out_dir, 'scaling.md')}")
    return exits.EXIT_OK


def entry():
    define_flags()
    app.run(lambda argv: exits.program(main, argv, what="the report"), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    entry()
