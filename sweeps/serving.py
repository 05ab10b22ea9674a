"""Latency against throughput: the curve a serving engineer reads, from the table's LoadGen rows.

`build_serving(df, out_dir)` takes the report's DataFrame (`sweeps.report.load`) and, when it holds
`ok` rows of `--scenario` runs (MLPerf LoadGen), writes `<out_dir>/serving.md` and
`<out_dir>/plots/serving.png`: per model (depth, block, shortcut) and setup, one point per scenario and
batch size (and Server rate): LoadGen's samples/sec against its 99th-percentile latency, the scenario's
own metric beside them (p90 with early stopping for SingleStream, p99 for MultiStream and Server),
and LoadGen's verdict. INVALID points are drawn hollow: LoadGen did not accept them as a result.
Repeats of a point are averaged (images/sec mean ± 95% CI, latencies mean). No TensorFlow; matplotlib
only where the plot is drawn. A sweep that makes such a table:

    python -m sweeps.tune --mode inference --scenario SingleStream,Server,Offline --batch_size 1,16,128 \\
        --target_qps 200 --n 3,9 --block preact --shortcut B --data synthetic
"""

from __future__ import annotations

import os

import pandas as pd

from bench.results import metrics
from sweeps import files

MODEL = ["device", "data", "block", "shortcut", "depth", "precision", "xla", "batch_norm", "onednn", "tf_version"]
POINT = ["scenario", "global_batch_size", "loadgen_target_qps", "loadgen_shortened"]
ORDER = {"SingleStream": 0, "MultiStream": 1, "Server": 2, "Offline": 3}


def serving_points(df):
    """One record per model and point (scenario, batch, Server rate) over the ok LoadGen performance rows."""
    rows = df[(df["status"] == "ok") & df["scenario"].isin(list(ORDER)) & (df["loadgen_result"] != "")]
    records = []
    for key, group in rows.groupby(MODEL + POINT, sort=False, dropna=False):
        rec = dict(zip(MODEL + POINT, key))
        rate = pd.to_numeric(group["images_per_sec"], errors="coerce").dropna()
        rec["ips"], rec["ips_ci"] = metrics.mean_ci95(rate) if len(rate) else (None, None)
        for col, name in (("step_time_p99_ms", "p99"), ("step_time_p50_ms", "p50"), ("loadgen_latency_ms", "metric")):
            values = pd.to_numeric(group[col], errors="coerce").dropna()
            rec[name] = values.mean() if len(values) else None
        rec["percentile"] = group["loadgen_latency_percentile"].iloc[0]
        verdicts = sorted(set(group["loadgen_result"]))
        rec["verdict"] = "/".join(verdicts)
        rec["valid"] = verdicts == ["VALID"]
        rec["runs"] = len(group)
        records.append(rec)
    points = pd.DataFrame(records)
    if points.empty:
        return points
    points["depth_num"] = pd.to_numeric(points["depth"], errors="coerce")
    points["batch_num"] = pd.to_numeric(points["global_batch_size"], errors="coerce")
    points["order"] = points["scenario"].map(ORDER)
    return points.sort_values(["depth_num", "block", "shortcut", "precision", "order", "batch_num"])


def point_label(r):
    """`Server 200 qps, batch 16` / `SingleStream` / `Offline, batch 128`."""
    rate = f" {float(r.loadgen_target_qps):g} qps" if r.scenario == "Server" and r.loadgen_target_qps else ""
    batch = "" if r.scenario == "SingleStream" else f", batch {int(r.batch_num)}"
    return f"{r.scenario}{rate}{batch}"


def _num(value, fmt):
    return "–" if value is None or pd.isna(value) else format(value, fmt)


def markdown(points):
    lines = [
        "# Serving: latency against throughput (MLPerf LoadGen)",
        "",
        "One line per scenario and batch size: LoadGen's samples/sec (mean ± 95% CI over repeats) and latencies "
        "(ms); `metric` is the scenario's own (p90 with early stopping for SingleStream, p99 for MultiStream and "
        "Server). INVALID: LoadGen did not accept the run (its reason is in the row); shortened: minimums below "
        "MLPerf's (a smoke run).",
        "",
        "| device | model | precision | XLA | point | runs | samples/sec | p50 | p99 | metric | LoadGen |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in points.itertuples():
        model = f"ResNet-{int(r.depth_num)} {r.block}/{r.shortcut}"
        rate = _num(r.ips, ".1f") + (f" ± {r.ips_ci:.1f}" if r.ips_ci else "")
        metric = f"p{int(float(r.percentile))} {_num(r.metric, '.2f')}" if r.percentile not in ("", None) else "–"
        verdict = r.verdict + (", shortened" if str(r.loadgen_shortened).lower() == "true" else "")
        lines.append(
            f"| {r.device} | {model} | {r.precision} | {r.xla} | {point_label(r)} | {r.runs} | {rate} | "
            f"{_num(r.p50, '.2f')} | {_num(r.p99, '.2f')} | {metric} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (depth, block, shortcut, precision), line in points.groupby(
        ["depth_num", "block", "shortcut", "precision"], sort=True
    ):
        line = line.dropna(subset=["ips", "p99"]).sort_values("ips")
        if line.empty:
            continue
        label = f"ResNet-{int(depth)} {block}/{shortcut} {precision}"
        (drawn,) = ax.plot(line["ips"], line["p99"], "-", alpha=0.5, label=label)
        for r in line.itertuples():
            face = drawn.get_color() if r.valid else "none"
            ax.scatter([r.ips], [r.p99], s=40, facecolors=face, edgecolors=drawn.get_color(), zorder=3)
            ax.annotate(point_label(r), (r.ips, r.p99), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="samples/sec (LoadGen)",
        ylabel="99th-percentile latency, ms (LoadGen)",
        title="Latency against throughput per depth (hollow: INVALID)",
    )
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    files.write_figure(fig, path)
    plt.close(fig)
    return path


def build_serving(df, out_dir):
    """Write `<out_dir>/serving.md` and `<out_dir>/plots/serving.png` if the table has LoadGen rows; return (markdown
    path, plot path), or None."""
    points = serving_points(df)
    if points.empty:
        return None
    md_path = os.path.join(out_dir, "serving.md")
    png = plot(points, os.path.join(out_dir, "plots", "serving.png"))
    files.write_text(md_path, markdown(points))  # after the plot
    return md_path, png
