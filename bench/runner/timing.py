"""The timer: one object owns every clock read of a run.

Each training call is one window. Before reading the clock the device is synced
(`sync`: the call's result is read back, then every device is drained), so a
window measures finished work, not dispatch. The first call (trace + compile +
one step) and the warm-up calls are kept apart from the timed windows; eval,
checkpoints, summaries and printing happen between windows and are never inside one.
"""

from __future__ import annotations

import time

from bench.hardware.devices import device_sync
from bench.results import metrics


class Chrono:
    def __init__(self, sync=device_sync, clock=time.perf_counter):
        self._sync = sync
        self._clock = clock
        self.first_call_s = None  # trace + compile + first step
        self.warmup = []  # (steps, seconds) of warm-up calls
        self.windows = []  # (steps, seconds) of timed calls
        self.untimed = []  # (steps, seconds) of calls excluded on purpose (profiling)

    def begin(self):
        """Sync, then start a window (for loops that call back, such as Keras fit)."""
        self._sync()
        self._start = self._clock()

    def end(self, steps, kind, value=None):
        """Sync on `value` and every device, then close the window; returns its seconds."""
        self._sync(value)
        seconds = self._clock() - self._start
        if kind == "first":
            self.first_call_s = seconds
        elif kind == "warmup":
            self.warmup.append((steps, seconds))
        elif kind == "timed":
            self.windows.append((steps, seconds))
        elif kind == "untimed":
            self.untimed.append((steps, seconds))
        else:
            raise ValueError(f"unknown window kind {kind!r}")
        return seconds

    @property
    def train_seconds(self):
        """Every second spent in training calls (compile included), for time-to-accuracy."""
        parts = self.warmup + self.windows + self.untimed
        return (self.first_call_s or 0.0) + sum(t for _, t in parts)

    def compile_seconds(self):
        """First call minus one typical step: the trace and compile time."""
        if self.first_call_s is None:
            return None
        step = None
        if self.windows:
            step = metrics.window_throughput(self.windows, 1).step_time_p50_ms / 1000.0
        elif self.warmup:
            step = min(t / s for s, t in self.warmup)
        return max(0.0, self.first_call_s - (step or 0.0))

    def throughput(self, global_batch_size):
        return metrics.window_throughput(self.windows, global_batch_size) if self.windows else None
