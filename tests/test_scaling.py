"""sweeps/scaling.py: strong and weak scaling series from a results table (synthetic rows, no runs)."""

import math
import os

import pytest

from bench.results import table
from sweeps import report, scaling

BASE = {
    "device": "CPU: test",
    "data": "synthetic",
    "loop": "ctl",
    "block": "preact",
    "shortcut": "B",
    "depth": 20,
    "n": 3,
    "precision": "float32",
    "xla": False,
    "batch_norm": "fused",
    "sync_bn": False,
    "onednn": True,
    "timestamp_utc": "t",
}


def write_rows(path):
    rows = [
        # strategy, replicas, workers, global batch, images/sec, status, host
        ("mirrored", 1, None, 128, 300.0, "ok", "vm"),
        ("mirrored", 1, None, 128, 310.0, "ok", "vm"),  # a repeat: averaged
        ("mirrored", 2, None, 128, 330.0, "ok", "vm"),  # strong: same global batch
        ("mirrored", 2, None, 256, 560.0, "ok", "vm"),  # weak: same 128 images per replica
        ("mirrored", 4, None, 128, None, "failed", "vm"),  # not ok: left out
        ("multi_worker", 1, 1, 128, 280.0, "ok", "vm (1 host)"),
        ("multi_worker", 2, 2, 128, 250.0, "ok", "vm (1 host)"),
        ("default", 1, None, 128, 320.0, "ok", "vm"),  # one replica only: no series of its own
    ]
    for i, (strategy, replicas, workers, batch, ips, status, host) in enumerate(rows):
        table.append_row(
            path,
            {
                **BASE,
                "run_id": f"s{i}",
                "strategy": strategy,
                "num_replicas": replicas,
                "num_workers": workers,
                "global_batch_size": batch,
                "images_per_sec": ips,
                "status": status,
                "host": host,
            },
        )


def test_strong_and_weak_series_with_speedup_and_efficiency(tmp_path):
    path = str(tmp_path / "summary.csv")
    write_rows(path)
    points = scaling.scaling_points(report.load(path))
    by = {(r["scaling"], r["strategy"], r["batch"], r["replicas"]): r for r in points.to_dict("records")}
    assert set(by) == {
        ("strong", "mirrored", 128, 1),
        ("strong", "mirrored", 128, 2),
        ("strong", "multi_worker", 128, 1),
        ("strong", "multi_worker", 128, 2),
        ("weak", "mirrored", 128, 1),
        ("weak", "mirrored", 128, 2),
    }
    base = by[("strong", "mirrored", 128, 1)]
    assert base["ips"] == 305.0 and base["runs"] == 2 and base["speedup"] == 1.0 and base["efficiency"] == 1.0
    strong = by[("strong", "mirrored", 128, 2)]
    assert strong["speedup"] == pytest.approx(330 / 305) and strong["efficiency"] == pytest.approx(330 / 305 / 2)
    weak = by[("weak", "mirrored", 128, 2)]
    assert weak["speedup"] == pytest.approx(560 / 305) and weak["global_batch"] == "256"
    mw = by[("strong", "multi_worker", 128, 2)]
    assert mw["speedup"] == pytest.approx(250 / 280) and mw["workers"] == "2" and mw["hosts"] == "vm (1 host)"
    # inference rows of the same configuration are a series of their own, never mixed with training
    for replicas, ips in ((1, 1000.0), (2, 1900.0)):
        table.append_row(
            path,
            {
                "run_id": f"inf{replicas}",
                "status": "ok",
                "strategy": "mirrored",
                "mode": "inference",
                "num_replicas": replicas,
                "global_batch_size": 128,
                "images_per_sec": ips,
                "device": "CPU: test",
                "data": "synthetic",
                "depth": 20,
                "block": "preact",
                "shortcut": "B",
                "precision": "float32",
                "host": "vm",
            },
        )
    points = scaling.scaling_points(report.load(path))
    train = points[
        (points["mode"] != "inference") & (points["scaling"] == "strong") & (points["strategy"] == "mirrored")
    ]
    inference = points[(points["mode"] == "inference") & (points["scaling"] == "strong")]
    assert sorted(train["ips"]) == [305.0, 330.0] and sorted(inference["ips"]) == [1000.0, 1900.0]


@pytest.mark.slow  # the whole report with its figures: end to end
def test_report_writes_scaling_only_when_replica_counts_vary(tmp_path):
    path = str(tmp_path / "summary.csv")
    write_rows(path)
    out = tmp_path / "out"
    md, pngs = report.build(path, str(out))
    assert os.path.exists(out / "scaling.md") and str(out / "plots" / "scaling.png") in pngs
    text = (out / "scaling.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| strong") or line.startswith("| weak")]
    assert len(lines) == 6
    assert any(
        "| multi_worker (ray) |" in line  # written before the launcher column: Ray Train
        and "| 1 host × 2 workers | yes: 2 workers per host | vm (1 host) |" in line
        and "0.89×" in line
        for line in lines
    )
    with open(out / "plots" / "scaling.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    # one replica count per configuration: no scaling files
    single = str(tmp_path / "single.csv")
    table.append_row(
        single,
        {
            **BASE,
            "run_id": "x",
            "strategy": "mirrored",
            "num_replicas": 2,
            "global_batch_size": 128,
            "images_per_sec": 1.0,
            "status": "ok",
        },
    )
    assert scaling.build_scaling(report.load(single), str(tmp_path / "none")) is None
    assert not os.path.exists(tmp_path / "none" / "scaling.md")


def test_points_are_grouped_by_hosts_and_workers_per_host_and_say_what_shares_hardware(tmp_path):
    path = str(tmp_path / "summary.csv")
    rows = [  # workers, images/sec, host, num_hosts, peak_scope
        (1, 280.0, "vm (1 host)", 1, "1 worker: its own devices"),
        (2, 250.0, "vm (1 host)", 1, "sum over 2 workers on 1 host (sharing its devices: ...)"),
        (2, 300.0, "node-a (+1 host)", 2, "sum over 2 workers on 2 hosts (1 per host), all on 1 machine (one kernel)"),
        (
            2,
            500.0,
            "gpu1 (+1 host)",
            None,
            "sum over 2 workers on 2 hosts (1 per host)",
        ),  # an older row: hosts from the label
    ]
    for i, (workers, ips, host, hosts, scope) in enumerate(rows):
        table.append_row(
            path,
            {
                **BASE,
                "run_id": f"h{i}",
                "strategy": "multi_worker",
                "num_replicas": workers,
                "num_workers": workers,
                "global_batch_size": 128,
                "images_per_sec": ips,
                "status": "ok",
                "host": host,
                "num_hosts": hosts,
                "peak_scope": scope,
                "device": "CPU: test" if i < 3 else "GPU: test",
            },
        )
    points = scaling.scaling_points(report.load(path))
    cpu = points[points["device"] == "CPU: test"].sort_values(["scaling", "ips"])
    strong = cpu[cpu["scaling"] == "strong"]
    assert list(zip(strong["layout"], strong["shared"])) == [
        ("1 host × 2 workers", "yes: 2 workers per host"),
        ("1 host × 1 worker", "no"),
        ("2 hosts × 1 worker", "yes: the hosts are one machine"),
    ]
    assert scaling.shared("multi_worker", "GPU: test", 2, 2, 2, rows[3][4]) == "no"
    assert scaling._num_hosts({"host": "gpu1 (+1 host)", "num_hosts": ""}) == 2
    md = scaling.markdown(points)
    assert "| 2 hosts × 1 worker | yes: the hosts are one machine | node-a (+1 host) |" in md


def launcher_row(i, launcher, ips, comparison="", arm="", status="ok", stamp="t"):
    return {
        **BASE,
        "run_id": f"l{i}",
        "strategy": "multi_worker",
        "num_replicas": 2,
        "num_workers": 2,
        "num_hosts": 1,
        "global_batch_size": 128,
        "images_per_sec": ips,
        "status": status,
        "host": "vm (1 host)",
        "launcher": launcher,
        "comparison": comparison,
        "arm": arm,
        "timestamp_utc": stamp,
    }


def test_what_ray_costs_from_a_comparisons_abba_pairs(tmp_path):
    path = str(tmp_path / "summary.csv")
    # sweeps.compare --a="--launcher ray" --b="--launcher tf_config": pairs A B, B A, A B, B A (in time order)
    order = [("ray", 100.0), ("tf_config", 110.0), ("tf_config", 99.0), ("ray", 90.0)]
    order += [("ray", 120.0), ("tf_config", 132.0), ("tf_config", 105.0), ("ray", 95.0)]
    for i, (launcher, ips) in enumerate(order):
        arm = "A" if launcher == "ray" else "B"
        table.append_row(path, launcher_row(i, launcher, ips, "cmp-1", arm, stamp=f"2026-12-04T10:{i:02d}:00Z"))
    table.append_row(path, launcher_row(9, "", 50.0, stamp="2026-12-03T10:00:00Z"))  # an older row: Ray's
    costs = scaling.launcher_costs(report.load(path))
    assert len(costs) == 1
    r = costs.iloc[0]
    assert r["runs"] == (5, 4) and r["layout"] == "1 host × 2 workers"
    est = r["est"]  # the pairs' ratios 1.1, 1.1, 1.1, 1.105...: paired, tight
    assert est.method == "t over pairs" and est.n == 4
    assert 1.09 < math.exp(est.effect) < 1.11 and est.low > 0
    md, _ = report.build(path, str(tmp_path / "out"))
    text = open(os.path.join(str(tmp_path / "out"), "scaling.md")).read()
    assert "## What Ray costs" in text and "Ray slower: plain is" in text and "t over pairs, 4" in text


def test_what_ray_costs_without_a_comparison_is_welchs_t_over_runs(tmp_path):
    path = str(tmp_path / "summary.csv")
    for i, (launcher, ips) in enumerate([("ray", 100.0), ("ray", 104.0), ("tf_config", 101.0), ("tf_config", 103.0)]):
        table.append_row(path, launcher_row(i, launcher, ips))
    costs = scaling.launcher_costs(report.load(path))
    assert costs.iloc[0]["est"].method == "Welch t" and costs.iloc[0]["ratio"] == pytest.approx(1.0, abs=0.01)
    one_each = str(tmp_path / "one.csv")
    for i, (launcher, ips) in enumerate([("ray", 100.0), ("tf_config", 101.0)]):
        table.append_row(one_each, launcher_row(i, launcher, ips))
    assert scaling.launcher_costs(report.load(one_each)).iloc[0]["est"] is None
    assert "no interval" in scaling.launcher_markdown(scaling.launcher_costs(report.load(one_each)))
