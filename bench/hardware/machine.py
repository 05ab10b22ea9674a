"""The machine's state during a run, read between windows: `MachineMonitor`.

The controller calls `start()` before the first window, `before(kind)` just before a window's
clock starts (before its device sync) and `after(kind)` just after its clock stopped (after the
sync): every reading falls between windows, never inside a window's device work. Only timed
windows are accounted: the CPU time this process and the whole machine used in them (psutil),
the 1-minute load average and the CPU frequency at their ends, and on NVIDIA GPUs (NVML) the SM
clock at the first one's start and the last one's end, the power limit, the highest temperature
and any clock-lowering reasons seen. Memory covers all of training: the process's resident
high-water mark is reset at `start()` (Linux's /proc/self/clear_refs) and read at the end; the
anonymous part of resident memory (what the run allocated, without the libraries' file pages, which
the kernel drops and reloads under memory pressure) is sampled at every window boundary; on GPUs
TensorFlow's per-device peak is reset and read like the high-water mark. `state()` is the plain
record (`bench.results.conditions.MachineState`) the row is built from.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

import psutil

from bench.hardware import nvml as nvml_lib
from bench.results.conditions import MachineState

MB = 1024 * 1024


def _status_mb(field):
    """A memory field of /proc/self/status (`VmHWM`: the resident high-water mark; `RssAnon`: resident
    anonymous memory now), in MB; None where /proc does not say."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the resident high-water mark to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # 5: reset the peak RSS only (1-4 would clear page reference bits)
        return True
    except OSError:
        return False


def _busy_seconds(times):
    """CPU seconds the machine spent busy, all CPUs: everything but idle and I/O wait, a hypervisor's steal included.

    (Linux counts guest time inside user time, so it is not added again.)"""
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class TfGpuMemory:
    """TensorFlow's allocator statistics of the run's GPUs: reset at the start, peaks read at the end."""

    def __init__(self, device_names):
        self.names = [n.lstrip("/").upper() for n in device_names]  # "/gpu:0" -> "GPU:0"

    def reset(self):
        import tensorflow as tf

        for name in self.names:
            tf.config.experimental.reset_memory_stats(name)

    def peaks_mb(self):
        import tensorflow as tf

        return tuple(tf.config.experimental.get_memory_info(name)["peak"] / MB for name in self.names)


class MachineMonitor:
    """Readings of one process's machine between a run's windows (see the module docstring)."""

    def __init__(self, gpu_count=0, intra_op_threads=0, gpu_memory=None, open_gpus=None, ps=psutil, clock=None):
        self._gpu_count, self._gpu_memory = gpu_count, gpu_memory
        self._open_gpus = open_gpus or nvml_lib.Gpus.open
        self._ps, self._clock = ps, clock or time.perf_counter
        self._process = ps.Process()
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (ps.cpu_count() or 1)
        self._cores_available = min(affinity, intra_op_threads) if intra_op_threads else affinity
        self._notes = []
        self._gpus = None
        self._rss_reset = False
        self._anon = None  # the highest anonymous resident memory seen at a window boundary (MB)
        self._open = None  # the readings at the current timed window's start
        self._wall = self._proc = self._busy = 0.0
        self._loads, self._mhz = [], []
        self._clock_start = self._clock_end = ()
        self._limits, self._temps, self._throttle = (), (), set()

    def start(self):
        """Before the first window: reset the memory high-water marks, find the GPUs (or why there are none)."""
        self._rss_reset = _reset_peak_rss()
        if not self._rss_reset:
            self._notes.append("peak RSS: since the process started (its high-water mark could not be reset)")
        if self._gpu_memory is not None:
            self._gpu_memory.reset()
        gpus = self._open_gpus(self._gpu_count or None)
        if gpus.reason:
            self._notes.append(gpus.reason)
        elif not self._gpu_count:
            gpus.close()
            self._notes.append("GPU: this run used none")
        else:
            self._gpus = gpus

    def _sample_anon(self):
        anon = _status_mb("RssAnon")
        if anon is not None:
            self._anon = anon if self._anon is None else max(self._anon, anon)

    def before(self, kind):
        """Just before a window's clock starts."""
        self._sample_anon()
        if kind != "timed":
            return
        if self._gpus and not self._clock_start:
            self._clock_start = tuple(r.sm_clock_mhz for r in self._gpu_readings())
        self._open = (self._clock(), self._process_cpu(), _busy_seconds(self._ps.cpu_times()))

    def after(self, kind):
        """Just after a window's clock stopped."""
        self._sample_anon()
        if kind != "timed" or self._open is None:
            return
        wall, proc, busy = self._clock(), self._process_cpu(), _busy_seconds(self._ps.cpu_times())
        self._wall += wall - self._open[0]
        self._proc += proc - self._open[1]
        self._busy += busy - self._open[2]
        self._open = None
        self._loads.append(self._ps.getloadavg()[0])
        freq = self._ps.cpu_freq()
        if freq and freq.current:
            self._mhz.append(freq.current)
        if self._gpus:
            readings = self._gpu_readings()
            self._clock_end = tuple(r.sm_clock_mhz for r in readings)
            self._limits = tuple(r.power_limit_w for r in readings)
            temps = [r.temp_c for r in readings]
            self._temps = tuple(map(_higher, self._temps or temps, temps))
            self._throttle.update(name for r in readings for name in r.throttle)

    def _gpu_readings(self):
        return self._gpus.read()

    def _process_cpu(self):
        times = self._process.cpu_times()
        return times.user + times.system

    def state(self) -> MachineState:
        """What was read so far, as a plain record."""
        notes = list(self._notes)
        if not self._mhz:
            notes.append("CPU frequency: not reported by the OS")
        if not self._wall:
            notes.append("CPU state: no timed window")
        self._sample_anon()
        peak = _status_mb("VmHWM")
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KB
        return MachineState(
            peak_rss_mb=peak,
            peak_anon_mb=self._anon,
            gpu_mem_peak_mb=self._gpu_memory.peaks_mb() if self._gpu_memory is not None else (),
            timed_wall_s=self._wall,
            process_cpu_s=self._proc,
            machine_busy_s=self._busy,
            cores=self._ps.cpu_count() or 1,
            cores_available=self._cores_available,
            load_avg_1m=max(self._loads) if self._loads else None,
            cpu_mhz=statistics.fmean(self._mhz) if self._mhz else None,
            gpu_sm_clock_start_mhz=_known(self._clock_start),
            gpu_sm_clock_end_mhz=_known(self._clock_end),
            gpu_power_limit_w=_known(self._limits),
            gpu_max_temp_c=_known(self._temps),
            gpu_throttle=tuple(sorted(self._throttle)),
            notes=tuple(notes),
        )

    def close(self):
        if self._gpus:
            self._gpus.close()
            self._gpus = None


def _higher(a, b):
    """The higher of two readings, either of which may be unknown (None)."""
    return b if a is None else a if b is None else max(a, b)


def _known(values):
    return tuple(v for v in values if v is not None)


def for_run(devices, intra_op_threads):
    """The monitor of a run on `devices` (`bench.hardware.devices.Devices`)."""
    gpus = [d for d in devices.replica_devices if "gpu" in d.lower()] if devices.device_kind == "GPU" else []
    return MachineMonitor(
        gpu_count=len(gpus), intra_op_threads=intra_op_threads, gpu_memory=TfGpuMemory(gpus) if gpus else None
    )
