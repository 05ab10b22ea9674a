"""A multi-worker run's one row, from what its workers reported to the collector (pure: no Ray, no TensorFlow).

The chief's row (`bench.results.rows.run_row`, made in its process) carries the timing; the
driver adds the worker count, the restarts, the hosts (`host_label`), and the peak summed over
every worker's devices with a note of how it was summed (`peak_scope`).
"""

from __future__ import annotations

import socket

from bench.config import identity
from bench.config.options import RunConfig, global_replicas
from bench.results import conditions, metrics, rows, systems, table


def host_label(hosts, chief_host):
    """`node1 (1 host)`, `node1 (+1 host)`, `node1 (+3 hosts)`: the chief and how many hosts ran the workers."""
    others = len(set(hosts) - {chief_host})
    if not others:
        return f"{chief_host} (1 host)"
    return f"{chief_host} (+{others} host{'s' if others > 1 else ''})"


def peak_scope(workers, hosts, machines=None):
    """How a multi-worker row's peak was summed: over workers and hosts, and whether workers shared hardware.

    `machines`: distinct machines (kernels) under the hosts, if known: the local cluster's hosts are
    namespaces of one machine, whose CPUs they share."""
    if workers <= 1:
        return "1 worker: its own devices"
    if hosts >= workers:
        one = (
            ", all on 1 machine (one kernel): they share its CPUs and the sum reads above its real peak"
            if machines == 1 and hosts > 1
            else ""
        )
        return f"sum over {workers} workers on {hosts} hosts (1 per host){one}"
    shared = "sharing its devices" if hosts == 1 else f"{workers / hosts:g} per host on average, sharing them"
    return (
        f"sum over {workers} workers on {hosts} host{'s' if hosts > 1 else ''} ({shared}: each measured "
        f"while the others waited, so the sum reads above the hosts' real peak)"
    )


def multi_worker_row(cfg: RunConfig, command, state, error=None):
    """The run's one row from the workers' reports (pure: no Ray, no TensorFlow).

    The chief's row carries the timing (its windows: the all-reduce keeps workers in
    step) and the global replica count; the driver adds the number of workers, the
    restarts, the hosts, and the peak summed over every worker's devices. `state`: the
    collector's (`starts`: rank -> attempts, `reports`, `where`: rank -> the host it started on,
    `last_step`: the step the workers reached).
    """
    starts = state.get("starts", {})
    # only the last attempt counts: a rank that did not report in it has no report
    reports = {rank: r for rank, r in state.get("reports", {}).items() if r.get("attempt", 1) == starts.get(rank, 1)}
    where = {rank: w for rank, w in state.get("where", {}).items() if w.get("attempt", 1) == starts.get(rank, 1)}
    chief = reports.get(0, {})
    if chief.get("row"):
        row = dict(chief["row"])
    else:
        failure = (
            error
            or chief.get("error")
            or next((r.get("error") for r in reports.values() if r.get("error")), "the workers reported no result")
        )
        row = rows.config_row(cfg, "failed", failure)
        row["num_replicas"] = global_replicas(cfg)
        row["total_steps"] = state.get("last_step")
        if cfg.checkpoint_dir:
            row["run_id"] = identity.RunIdentity(cfg).run_id
    if error:  # the group failed: its line names every failed worker (the chief's own row only itself)
        row.update(status="failed", error=error)
    hosts = {r["host"] for r in list(reports.values()) + list(where.values()) if r.get("host")}
    worker_rows = [r.get("row") for r in reports.values() if r.get("row")]
    peaks = [r.get("peak_gflops") for r in worker_rows]
    every_peak = len(worker_rows) == cfg.workers and all(p not in (None, "") for p in peaks)
    ips = row.get("images_per_sec")
    if every_peak:
        row["peak_gflops"] = float(sum(peaks))
        row["mfu"] = metrics.mfu(row["flops_per_image"], ips, row["peak_gflops"] * 1e9) if ips else None
    else:
        row["peak_gflops"], row["mfu"] = None, None  # some worker never reported its peak: no partial sum
    machines = {r["machine"] for r in where.values() if r.get("machine")}
    row["peak_scope"] = peak_scope(cfg.workers, len(hosts) or 1, len(machines) or None) if every_peak else ""
    if row.get("datasheet_tflops"):  # the chief's figure covers its own devices: every worker has as many
        row["datasheet_tflops"] = float(row["datasheet_tflops"]) * cfg.workers
        row["mfu_datasheet"] = metrics.mfu(row["flops_per_image"], ips, row["datasheet_tflops"] * 1e12) if ips else None
    chief_host = chief.get("host") or where.get(0, {}).get("host") or row.get("host") or socket.gethostname()
    row["host"] = host_label(hosts, chief_host)
    row["num_hosts"] = len(hosts) or None
    row["num_workers"] = cfg.workers
    row["restarts"] = max(0, starts.get(0, 1) - 1)
    row["timestamp_utc"] = table.utc_now()
    row["command"] = command
    row.update(machine_columns(reports, where))
    descriptions = [reports[rank].get("system") for rank in sorted(reports) if reports[rank].get("system")]
    row["system"] = "; ".join(dict.fromkeys(systems.name_of(d) for d in descriptions)) or None
    row["launcher"] = cfg.launcher
    return row


def machine_columns(reports, where):
    """Memory and machine-state columns over every worker of the last attempt (summed per host; the CPU time of
    workers sharing a machine is theirs, not contention): `bench.results.conditions.state_columns`."""
    processes = [
        (
            reports[rank].get("host") or where.get(rank, {}).get("host") or "?",
            where.get(rank, {}).get("machine") or "",
            conditions.from_dict(reports[rank].get("machine")),
        )
        for rank in sorted(reports)
    ]
    return conditions.state_columns(processes)
