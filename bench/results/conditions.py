"""The conditions a run was measured in, as columns: memory, the machine's state, and the windows' stability.

`MachineState` is what one process's monitor (`bench.hardware.machine.MachineMonitor`) read
between the timed windows, as plain values; `state_columns` turns the states of a run's
processes (one, or every worker of a multi-worker run) into the row's columns, and
`stability_columns` judges the timed windows themselves. `warnings` is what the console says
about a row measured in doubtful conditions, with what to do, as pyperf does. No TensorFlow.

The bounds, each stated where a row is judged:
- unstable: the timed windows' rates have a coefficient of variation of CV_BOUND (10%) or more, or
  the slowest window took SLOWEST_BOUND (1.5x) the median window's time per step or more (pyperf
  warns at a standard deviation of 10% of the mean and at a value 50% away from it); judged only
  with MIN_WINDOWS timed windows or more;
- contended: other processes (and a hypervisor's steal) used CONTENDED_BOUND (a quarter) or more of
  the machine's CPU time during the timed windows;
- throttled: an NVIDIA GPU reported a clock-lowering reason (power cap, thermal or hardware
  slowdown) at a window boundary.
A column the machine cannot tell stays empty and `machine_notes` says why (never a guessed value).
"""

from __future__ import annotations

import dataclasses
import statistics

CV_BOUND = 0.10
SLOWEST_BOUND = 1.5
MIN_WINDOWS = 3
CONTENDED_BOUND = 0.25
NO_GPU = "no NVIDIA GPU"


@dataclasses.dataclass(frozen=True)
class MachineState:
    """What one process's monitor read during a run (between windows, never inside one), as plain values.

    CPU figures cover the timed windows only; memory covers the whole training (the high-water mark
    is reset when training starts). Per-GPU values are tuples in the run's device order.
    """

    peak_rss_mb: float | None = (
        None  # peak resident memory of the process during training (the kernel's high-water mark)
    )
    peak_anon_mb: float | None = None  # highest anonymous resident memory at a window boundary (no file pages)
    gpu_mem_peak_mb: tuple = ()  # each GPU's peak memory allocated by TensorFlow during training
    timed_wall_s: float = 0.0  # wall seconds of the timed windows, as the monitor saw them
    process_cpu_s: float = 0.0  # CPU seconds this process used in them (every thread)
    machine_busy_s: float = 0.0  # CPU seconds every process (and a hypervisor's steal) used in them, machine-wide
    cores: int = 0  # logical CPUs of the machine
    cores_available: int = 0  # CPUs this process may use (its affinity, or fewer TensorFlow intra-op threads)
    load_avg_1m: float | None = None  # the highest 1-minute load average at the timed windows' ends
    cpu_mhz: float | None = None  # mean CPU frequency the OS reported at those ends
    gpu_sm_clock_start_mhz: tuple = ()  # SM clock at the first timed window's start
    gpu_sm_clock_end_mhz: tuple = ()  # ... at the last timed window's end
    gpu_power_limit_w: tuple = ()  # enforced power limit
    gpu_max_temp_c: tuple = ()  # highest temperature seen at a boundary
    gpu_throttle: tuple = ()  # clock-lowering reasons seen at any boundary, by name
    notes: tuple = ()  # what could not be read, and why ("GPU: no NVIDIA GPU")


def from_dict(values) -> MachineState | None:
    """A MachineState from `dataclasses.asdict` of one (a worker's report); None stays None."""
    if not values:
        return None
    fields = {f.name for f in dataclasses.fields(MachineState)}
    return MachineState(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields})


# ---- stability of the timed windows --------------------------------------------------------------------------


def stability_columns(windows, global_batch_size):
    """`rate_cv`, `slowest_window_ratio` and `unstable` of the timed windows `(steps, seconds)`.

    `slowest_window_ratio` is the slowest window's time per step over the median window's; both
    are empty with fewer than two windows, `unstable` with fewer than MIN_WINDOWS (too few to judge).
    """
    rates = [steps * global_batch_size / seconds for steps, seconds in windows if steps > 0 and seconds > 0]
    if len(rates) < 2:
        return {"rate_cv": None, "slowest_window_ratio": None, "unstable": None}
    cv = statistics.stdev(rates) / statistics.fmean(rates)
    slowest = statistics.median(rates) / min(rates)
    judged = len(rates) >= MIN_WINDOWS
    return {
        "rate_cv": cv,
        "slowest_window_ratio": slowest,
        "unstable": (cv >= CV_BOUND or slowest >= SLOWEST_BOUND) if judged else None,
    }


# ---- the machine's state, over a run's processes --------------------------------------------------------------


def state_columns(processes):
    """The row's memory and machine-state columns from a run's processes: `[(host, machine, MachineState | None)]`.

    `machine` names the kernel a process ran on (hosts that are namespaces of one machine share it):
    the CPU time of the other processes is counted per machine, so workers of one run sharing a
    machine are not each other's contention. Memory is summed over the processes and per host.
    """
    known = [(host, machine or host, s) for host, machine, s in processes if s is not None]
    if not known:
        return {"machine_notes": "the run ended before its machine state was read"}
    states = [s for _, _, s in known]
    cols = {**_memory(known), **_cpu(known), **_gpu(states)}
    cols["machine_notes"] = "; ".join(dict.fromkeys(n for s in states for n in s.notes))
    return cols


def _memory(known):
    by_host = {}
    for host, _, s in known:
        if s.peak_rss_mb is not None:
            by_host[host] = by_host.get(host, 0.0) + s.peak_rss_mb
    anon = [s.peak_anon_mb for _, _, s in known if s.peak_anon_mb is not None]
    devices = [mb for _, _, s in known for mb in s.gpu_mem_peak_mb]
    return {
        "peak_rss_mb": sum(by_host.values()) if by_host else None,
        "peak_rss_by_host": "; ".join(f"{host} {mb:.0f}" for host, mb in by_host.items()) or None,
        "peak_anon_mb": sum(anon) if len(anon) == len(known) else None,
        "gpu_mem_peak_mb": max(devices) if devices else None,
        "gpu_mem_peak_each_mb": " ".join(f"{mb:.0f}" for mb in devices) or None,
    }


def _cpu(known):
    timed = [(host, machine, s) for host, machine, s in known if s.timed_wall_s > 0]
    loads = [s.load_avg_1m for _, _, s in known if s.load_avg_1m is not None]
    mhz = [s.cpu_mhz for _, _, s in known if s.cpu_mhz is not None]
    cols = {
        "load_avg_1m": max(loads) if loads else None,
        "cpu_mhz": statistics.fmean(mhz) if mhz else None,
        "cpu_share": None,
        "others_cpu_share": None,
        "contended": None,
    }
    if not timed:
        return cols
    # the run's own share: its worst-served process (a synchronous run waits for it)
    cols["cpu_share"] = min(s.process_cpu_s / (s.timed_wall_s * max(s.cores_available, 1)) for _, _, s in timed)
    others = []
    for machine in dict.fromkeys(m for _, m, _ in timed):
        here = [s for _, m, s in timed if m == machine]
        busy = statistics.median(s.machine_busy_s / s.timed_wall_s for s in here)  # windows are in step
        own = sum(s.process_cpu_s / s.timed_wall_s for s in here)
        others.append(max(0.0, busy - own) / max(here[0].cores, 1))
    cols["others_cpu_share"] = max(others)
    cols["contended"] = cols["others_cpu_share"] >= CONTENDED_BOUND
    return cols


def _gpu(states):
    starts = [c for s in states for c in s.gpu_sm_clock_start_mhz]
    if not starts:
        return {}  # no GPU readings: the columns stay empty and the notes say why
    reasons = sorted({r for s in states for r in s.gpu_throttle})
    return {
        "gpu_sm_clock_start_mhz": min(starts),
        "gpu_sm_clock_end_mhz": min((c for s in states for c in s.gpu_sm_clock_end_mhz), default=None),
        "gpu_power_limit_w": min((w for s in states for w in s.gpu_power_limit_w), default=None),
        "gpu_max_temp_c": max((t for s in states for t in s.gpu_max_temp_c), default=None),
        "gpu_throttle_reasons": ", ".join(reasons) or "none",
        "throttled": bool(reasons),
    }


# ---- the console ---------------------------------------------------------------------------------------------


def _number(row, key):
    value = row.get(key)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _flag(row, key):
    return row.get(key) in (True, "true", "True")


def warnings(row):
    """Console lines about a row measured in doubtful conditions (unstable, contended, throttled), with advice."""
    lines = []
    if _flag(row, "unstable"):
        cv, slowest = _number(row, "rate_cv"), _number(row, "slowest_window_ratio")
        lines.append("WARNING: this result may be unstable")
        if cv is not None and cv >= CV_BOUND:
            lines.append(
                f"  * the timed windows' rates vary by {cv:.0%} (coefficient of variation; bound {CV_BOUND:.0%})"
            )
        if slowest is not None and slowest >= SLOWEST_BOUND:
            lines.append(
                f"  * the slowest window took {slowest:.2f}x the median window's time per step (bound {SLOWEST_BOUND:g}x)"
            )
        lines.append(
            "  Run more steps (more timed windows: --steps, a smaller --steps_per_loop) on a quieter machine; to "
            "compare two settings use python -m sweeps.compare, which alternates them."
        )
    if _flag(row, "contended"):
        others, share = _number(row, "others_cpu_share"), _number(row, "cpu_share")
        got = f"; the run got {share:.0%} of the CPU time it could use" if share is not None else ""
        lines.append(
            f"WARNING: the CPU was shared: other processes used {others:.0%} of the machine's CPU time during the "
            f"timed windows (bound {CONTENDED_BOUND:.0%}){got}, load average {_text(row, 'load_avg_1m', '.1f')}. "
            "Measure on a quieter machine, or compare settings side by side with python -m sweeps.compare."
        )
    if _flag(row, "throttled"):
        lines.append(
            f"WARNING: a GPU lowered its clocks ({row.get('gpu_throttle_reasons')}; SM clock "
            f"{_text(row, 'gpu_sm_clock_start_mhz', '.0f')} -> {_text(row, 'gpu_sm_clock_end_mhz', '.0f')} MHz, up to "
            f"{_text(row, 'gpu_max_temp_c', '.0f')} C, power limit {_text(row, 'gpu_power_limit_w', '.0f')} W). "
            "Check cooling and power limits, or lock the clocks (nvidia-smi --lock-gpu-clocks) before measuring."
        )
    return lines


def _text(row, key, spec):
    value = _number(row, key)
    return "?" if value is None else format(value, spec)


def machine_line(row):
    """One console line: memory, the CPU's state during the timed windows, the GPUs' (or why not)."""
    parts = [
        f"windows CV {_pct(row, 'rate_cv')}, slowest {_text(row, 'slowest_window_ratio', '.2f')}x the median",
        f"peak RSS {_text(row, 'peak_rss_mb', ',.0f')} MB (anonymous {_text(row, 'peak_anon_mb', ',.0f')})",
    ]
    if row.get("gpu_mem_peak_mb") not in (None, ""):
        parts.append(f"GPU peak {_text(row, 'gpu_mem_peak_mb', ',.0f')} MB")
    parts.append(
        f"load {_text(row, 'load_avg_1m', '.1f')}, CPU share {_pct(row, 'cpu_share')} "
        f"(others {_pct(row, 'others_cpu_share')})"
    )
    if row.get("gpu_sm_clock_start_mhz") not in (None, ""):
        parts.append(
            f"SM clock {_text(row, 'gpu_sm_clock_start_mhz', '.0f')} -> {_text(row, 'gpu_sm_clock_end_mhz', '.0f')} "
            f"MHz, max {_text(row, 'gpu_max_temp_c', '.0f')} C, throttle: {row.get('gpu_throttle_reasons')}"
        )
    if row.get("machine_notes"):
        parts.append(str(row["machine_notes"]))
    return "; ".join(parts)


def _pct(row, key):
    value = _number(row, key)
    return "?" if value is None else f"{value:.0%}"
