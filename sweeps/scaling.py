"""Scaling table: the same configuration at two or more replica counts -> speedup and efficiency.

`build_scaling(df, out_dir)` takes the report's DataFrame (`sweeps.report.load`) and, when some
configuration was run at two or more replica counts by one strategy, writes `<out_dir>/scaling.md`
and `<out_dir>/plots/scaling.png`. Two kinds of series, each labelled:

- strong scaling: the same **global** batch at every replica count (each replica gets less work);
- weak scaling: the same **per-replica** batch (global batch = per-replica batch x replicas).

One line per strategy (`mirrored`, `multi_worker`) and configuration. Speedup is images/sec over
the series' smallest replica count (normally 1); efficiency is speedup / (replicas / smallest).
Only `ok` rows count; repeats are averaged (mean ± 95% CI). A series' points are grouped by
replicas and by hosts × workers per host (`layout`), so "2 workers on 1 host" and "2 hosts × 1
worker" are separate points, and each says whether its workers or replicas share hardware
(`shared`: workers on one host, CPU replicas of one process, or hosts that are one machine, as on
the local cluster). The hosts that ran each point are listed. Multi-worker series are split by
launcher, and "What Ray costs" (`launcher_costs`) sets the same layout launched by Ray Train and as
plain processes side by side: plain / Ray with its 95% interval, paired over a `sweeps.compare`'s
ABBA pairs where the rows come from one. No TensorFlow; matplotlib only where the plot is drawn.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pandas as pd

from bench.results import metrics, stats
from sweeps import files

STRATEGIES = ("mirrored", "multi_worker")  # strategies whose replica count varies
CONFIG = [
    "device",
    "data",
    "loop",
    "mode",
    "block",
    "shortcut",
    "depth",
    "precision",
    "xla",
    "batch_norm",
    "sync_bn",
    "onednn",
    "augment",
    "tf_version",
    "launcher",  # multi-worker: ray or tf_config (rows written before the column: ray)
]
KINDS = (("strong", "global_batch_size"), ("weak", "per_replica_batch"))  # `mode` is the run's train/inference


def _num_hosts(row):
    """Hosts of a row: its `num_hosts`, else read from the host label (`vm (1 host)`, `node1 (+1 host)`), else 1."""
    value = pd.to_numeric(row.get("num_hosts"), errors="coerce")
    if pd.notna(value) and value >= 1:
        return int(value)
    more = re.search(r"\(\+(\d+) hosts?\)", str(row.get("host", "")))
    return int(more.group(1)) + 1 if more else 1


def layout(strategy, replicas, workers, hosts):
    """`2 hosts × 1 worker` (multi-worker) or `1 process × 2 replicas`: how a point's replicas were laid out."""
    if strategy == "multi_worker" and workers:
        per_host = workers / hosts
        return f"{hosts} host{'s' if hosts > 1 else ''} × {per_host:g} worker{'s' if per_host != 1 else ''}"
    return f"1 process × {replicas} replica{'s' if replicas > 1 else ''}"


def shared(strategy, device, replicas, workers, hosts, peak_scope=""):
    """Whether a point's workers or replicas share hardware, and which (a point that does measures overhead)."""
    if strategy == "multi_worker" and workers:
        if workers > hosts:
            return f"yes: {workers / hosts:g} workers per host"
        if "1 machine" in str(peak_scope):
            return "yes: the hosts are one machine"
        return "no"
    if replicas > 1 and str(device).startswith("CPU"):
        return "yes: replicas split one CPU"
    return "no"


def scaling_points(df):
    """One record per (scaling kind, series, replica count): images/sec mean ± CI, speedup, efficiency, hosts."""
    cols = [c for c in CONFIG if c in df.columns]
    ok = df[df["status"] == "ok"].copy()
    for col in ("images_per_sec", "num_replicas", "global_batch_size", "num_workers"):
        if col in ok.columns:
            ok[col] = pd.to_numeric(ok[col], errors="coerce")
    ok = ok.dropna(subset=["images_per_sec", "num_replicas", "global_batch_size"])
    ok = _with_launchers(ok[ok["strategy"].isin(STRATEGIES)])
    if ok.empty:
        return pd.DataFrame()
    ok["per_replica_batch"] = ok["global_batch_size"] / ok["num_replicas"]
    ok["hosts_n"] = [_num_hosts(r) for r in ok.to_dict("records")]
    records = []
    for kind, batch_col in KINDS:
        for key, series in ok.groupby(cols + ["strategy", batch_col], sort=True, dropna=False):
            if series["num_replicas"].nunique() < 2:
                continue
            config = dict(zip(cols + ["strategy", batch_col], key))
            points = []
            for (replicas, n_hosts), group in series.groupby(["num_replicas", "hosts_n"], sort=True):
                mean, ci = metrics.mean_ci95(group["images_per_sec"])
                workers = sorted({int(w) for w in group.get("num_workers", pd.Series(dtype=float)).dropna()})
                hosts = sorted({h for h in group.get("host", pd.Series(dtype=str)) if h})
                scope = " ".join(str(p) for p in group.get("peak_scope", pd.Series(dtype=str)).dropna())
                w = workers[0] if workers else 0
                points.append(
                    (
                        int(replicas),
                        mean,
                        ci,
                        len(group),
                        workers,
                        hosts,
                        sorted({int(b) for b in group["global_batch_size"]}),
                        layout(config["strategy"], int(replicas), w, int(n_hosts)),
                        shared(config["strategy"], config.get("device"), int(replicas), w, int(n_hosts), scope),
                    )
                )
            base_replicas, base_ips = points[0][0], points[0][1]
            for replicas, mean, ci, runs, workers, hosts, batches, lay, shares in points:
                speedup = mean / base_ips
                records.append(
                    {
                        **config,
                        "scaling": kind,
                        "batch": config[batch_col],
                        "replicas": replicas,
                        "base_replicas": base_replicas,
                        "workers": ", ".join(map(str, workers)) or "",
                        "layout": lay,
                        "shared": shares,
                        "hosts": "; ".join(hosts),
                        "global_batch": ", ".join(map(str, batches)),
                        "ips": mean,
                        "ips_ci": ci,
                        "runs": runs,
                        "speedup": speedup,
                        "efficiency": speedup / (replicas / base_replicas),
                    }
                )
    return pd.DataFrame(records)


def _with_launchers(ok):
    """The rows with a `launcher` for every multi-worker row (written before the column: Ray's)."""
    ok = ok.copy()
    if "launcher" not in ok.columns:
        ok["launcher"] = ""
    ok["launcher"] = ok["launcher"].fillna("")
    ok.loc[(ok["strategy"] == "multi_worker") & (ok["launcher"] == ""), "launcher"] = "ray"
    return ok


def _strategy_text(r):
    """`mirrored`, or `multi_worker (ray)` / `multi_worker (tf_config)`."""
    return f"{r['strategy']} ({r['launcher']})" if r.get("launcher") else r["strategy"]


def _series_label(r):
    batch = f"global batch {int(r['batch'])}" if r["scaling"] == "strong" else f"{int(r['batch'])} per replica"
    return f"{_strategy_text(r)}, {r['scaling']} ({batch}), ResNet-{int(r['depth'])} {r['block']}/{r['shortcut']} {r['precision']}"


def markdown(points):
    lines = [
        "# Scaling",
        "",
        "The same configuration at several replica counts. **strong**: the same global batch at every count; "
        "**weak**: the same per-replica batch. Speedup is over the series' smallest replica count; efficiency = "
        "speedup / (replicas / smallest). images/sec: mean ± 95% CI over runs. Points are grouped by replicas and "
        "`layout` (hosts × workers per host, or one process's replicas); `shared` says whether the point's "
        "workers or replicas share hardware (workers on one host, CPU replicas of one process, hosts that are one "
        "machine): such points measure overhead, not scaling across nodes. `hosts` names the machines.",
        "",
        "| scaling | strategy | configuration | device | data | batch | replicas | layout | shared | hosts | runs "
        "| images/sec | speedup | efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in points.to_dict("records"):
        config = f"ResNet-{int(r['depth'])} {r['block']}/{r['shortcut']}, {r['precision']}" + (
            ", XLA" if str(r.get("xla")).lower() == "true" else ""
        )
        batch = f"{int(r['batch'])} global" if r["scaling"] == "strong" else f"{int(r['batch'])} per replica"
        ips = f"{r['ips']:.1f}" + (f" ± {r['ips_ci']:.1f}" if r["ips_ci"] else "")
        lines.append(
            f"| {r['scaling']} | {_strategy_text(r)} | {config} | {r['device']} | {r['data']} | {batch} | {r['replicas']} "
            f"| {r['layout']} | {r['shared']} | {r['hosts'] or '–'} | {r['runs']} | {ips} | {r['speedup']:.2f}× "
            f"| {r['efficiency']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"strong": "-", "weak": "--"}
    markers = {"mirrored": "o", "multi_worker": "s"}
    series_cols = [c for c in CONFIG if c in points.columns] + ["strategy", "scaling", "batch"]
    for _, s in points.groupby(series_cols, sort=True, dropna=False):
        s = s.sort_values("replicas")
        first = s.iloc[0]
        label = _series_label(first)
        kw = dict(linestyle=styles[first["scaling"]], marker=markers.get(first["strategy"], "o"), label=label)
        left.errorbar(s["replicas"], s["ips"], yerr=s["ips_ci"].fillna(0), capsize=3, **kw)
        right.plot(s["replicas"], s["efficiency"], **kw)
    counts = sorted(points["replicas"].unique())
    right.axhline(1.0, color="0.6", linewidth=1, label="ideal")
    for ax, ylabel, title in (
        (left, "training images/sec", "Throughput vs replicas"),
        (right, "efficiency (speedup / replica ratio)", "Scaling efficiency"),
    ):
        ax.set(xlabel="replicas in sync", ylabel=ylabel, title=title)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.grid(alpha=0.3)
    right.set_ylim(bottom=0)
    hosts = sorted({h for hs in points["hosts"] for h in hs.split("; ") if h})
    fig.suptitle(f"{', '.join(sorted(set(points['device'])))} — hosts: {', '.join(hosts) or 'unknown'}", fontsize=9)
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    files.write_figure(fig, path)
    plt.close(fig)
    return path


# ---- what Ray costs: the same multi-worker layout launched by Ray Train and as plain processes ----------------

LAUNCH_KEY = ["num_replicas", "num_workers", "hosts_n", "global_batch_size"]


def launcher_costs(df):
    """One record per multi-worker configuration and layout run by both launchers: each one's images/sec, and
    plain / Ray (how much faster the same workers run without Ray) with its 95% interval: paired over the
    ABBA pairs of `sweeps.compare` runs (rows of one `comparison`, in their order), else Welch's t over runs."""
    ok = df[df["status"] == "ok"].copy()
    for col in ("images_per_sec", "num_replicas", "global_batch_size", "num_workers"):
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    ok = _with_launchers(ok[ok["strategy"] == "multi_worker"].dropna(subset=["images_per_sec", "num_replicas"]))
    if ok.empty:
        return pd.DataFrame()
    ok["hosts_n"] = [_num_hosts(r) for r in ok.to_dict("records")]
    cols = [c for c in CONFIG if c in ok.columns and c != "launcher"] + LAUNCH_KEY
    records = []
    for key, group in ok.groupby(cols, sort=True, dropna=False):
        ray, tf = group[group["launcher"] == "ray"], group[group["launcher"] == "tf_config"]
        if ray.empty or tf.empty:
            continue
        est = _paired_launchers(df, group) or stats.unpaired_interval(
            np.log(ray["images_per_sec"]), np.log(tf["images_per_sec"])
        )
        config = dict(zip(cols, key))
        records.append(
            {
                **config,
                "layout": layout(
                    "multi_worker", int(config["num_replicas"]), int(config["num_workers"] or 0), int(config["hosts_n"])
                ),
                "hosts": "; ".join(sorted({h for h in group["host"] if h})),
                "ray_ips": metrics.mean_ci95(ray["images_per_sec"]),
                "tf_ips": metrics.mean_ci95(tf["images_per_sec"]),
                "runs": (len(ray), len(tf)),
                "ratio": math.exp(np.log(tf["images_per_sec"]).mean() - np.log(ray["images_per_sec"]).mean()),
                "est": est,
            }
        )
    return pd.DataFrame(records)


def _paired_launchers(df, group):
    """stats.Estimate of log(plain / Ray) over the ABBA pairs of the comparisons in `group` (None: no pairs).

    A comparison's rows (ok or not) in their written order are its runs in ABBA order; two by two they are its
    pairs. Only comparisons whose arms differ by the launcher count."""
    effects = []
    for comparison in sorted({c for c in group.get("comparison", pd.Series(dtype=str)) if c}):
        runs = df[df["comparison"] == comparison].sort_values("timestamp_utc", kind="stable")
        runs = _with_launchers(runs)
        for first, second in zip(runs.iloc[0::2].to_dict("records"), runs.iloc[1::2].to_dict("records")):
            pair = {r["launcher"]: r for r in (first, second)}
            if set(pair) != {"ray", "tf_config"} or any(r["status"] != "ok" for r in pair.values()):
                continue
            rates = {k: float(r["images_per_sec"]) for k, r in pair.items()}
            effects.append(math.log(rates["tf_config"] / rates["ray"]))
    return stats.paired_interval(effects) if len(effects) >= 2 else None


def launcher_markdown(costs, band_pct=5.0):
    lines = [
        "",
        "## What Ray costs",
        "",
        "The same multi-worker configuration and layout launched by Ray Train (`--launcher ray`) and as plain "
        "processes with TF_CONFIG (`--launcher tf_config`): plain / Ray > 1 means the workers run faster without "
        "Ray (Ray's own release test fails Ray Train above 1.15x). The interval is paired over the ABBA pairs of a "
        "`sweeps.compare` of the two launchers where the rows come from one (t over the pairs' log ratios), else "
        "Welch's t over the runs.",
        "",
        "| configuration | device | data | batch | layout | hosts | Ray images/sec (runs) | plain images/sec (runs) "
        "| plain / Ray | 95% CI | how | reading |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in costs.to_dict("records"):
        config = f"ResNet-{int(r['depth'])} {r['block']}/{r['shortcut']}, {r['precision']}"
        est = r["est"]
        ci = f"{math.exp(est.low):.3f}-{math.exp(est.high):.3f}x" if est is not None else "–"
        how = f"{est.method}, {est.n}" if est is not None else "one run each"
        reading = _reading(est, band_pct) if est is not None else "no interval"
        (ray, ray_ci), (tf, tf_ci) = r["ray_ips"], r["tf_ips"]
        lines.append(
            f"| {config} | {r['device']} | {r['data']} | {int(r['global_batch_size'])} global | {r['layout']} "
            f"| {r['hosts'] or '–'} | {ray:.1f}{f' ± {ray_ci:.1f}' if ray_ci else ''} ({r['runs'][0]}) "
            f"| {tf:.1f}{f' ± {tf_ci:.1f}' if tf_ci else ''} ({r['runs'][1]}) | {r['ratio']:.3f}x | {ci} | {how} "
            f"| {reading} |"
        )
    return "\n".join(lines) + "\n"


def _reading(est, band_pct):
    v = stats.verdict(est, *stats.speed_band(band_pct))
    ratio = math.exp(est.effect)
    if v.kind == "higher":
        return f"Ray slower: plain is {ratio - 1:.1%} faster"
    if v.kind == "lower":
        return f"Ray faster by {1 / ratio - 1:.1%}"
    if v.kind == "same":
        return f"no difference beyond ±{math.expm1(v.bound):.1%}"
    more = f"~{v.pairs_needed} pairs would settle it" if v.pairs_needed else "below the noise"
    return f"inconclusive ({more})"


def build_scaling(df, out_dir):
    """Write `<out_dir>/scaling.md` (and `<out_dir>/plots/scaling.png` when some configuration ran at two or more
    replica counts) if there is a series or a launcher comparison; return (markdown path, plot path or None),
    or None when there is nothing to show."""
    points, costs = scaling_points(df), launcher_costs(df)
    if points.empty and costs.empty:
        return None
    md_path = os.path.join(out_dir, "scaling.md")
    png = plot(points, os.path.join(out_dir, "plots", "scaling.png")) if not points.empty else None
    text = markdown(points) if not points.empty else "# Scaling\n"
    if not costs.empty:
        text += launcher_markdown(costs)
    files.write_text(md_path, text)  # after the plot
    return md_path, png
