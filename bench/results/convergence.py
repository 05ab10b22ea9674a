"""The convergence guard: a setting that is faster per step but needs more epochs to the target is not faster.

MLPerf's Reference Convergence Points test a submission's epochs-to-target against reference runs
with a one-sided t-test; here a setting's runs are tested against a reference setting's runs the same
way (`stats.greater_than`, level 0.05): flagged when it needs significantly more epochs to reach the
target. Its speed-up is then stated twice: per step (images/sec) and to the target (time-to-target),
which is the one that counts. Pure: no TensorFlow, no files (`sweeps.compare`, `sweeps.report` and
the table comparison use it).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bench.results import stats

ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Guard:
    """Epochs-to-target of a setting against a reference setting."""

    reference: tuple  # epochs-to-target of the reference's runs that reached the target
    setting: tuple  # ... of the setting's
    reference_missed: int  # runs that never reached it
    setting_missed: int
    test: stats.OneSided
    flagged: bool  # the setting needs significantly more epochs

    def text(self, names=("reference", "setting")):
        """One line: the epochs of each side, the test, the verdict."""
        ref, new = names
        sides = f"{new} {_epochs(self.setting, self.setting_missed)} vs {ref} {_epochs(self.reference, self.reference_missed)}"
        if self.test.p is None:
            return f"epochs to target: {sides}; {self.test.method}"
        verdict = (
            f"**{new} needs more epochs to the target** (p={self.test.p:.3g} < {ALPHA:g}, {self.test.method})"
            if self.flagged
            else f"{new} needs no more epochs than {ref} (p={self.test.p:.3g}, {self.test.method})"
        )
        return f"epochs to target: {sides}; {verdict}"


def _epochs(values, missed):
    if not values:
        return f"none reached ({missed} runs)"
    mean = float(np.mean(values))
    return f"{mean:.3g} ({len(values)} runs{f', {missed} never reached it' if missed else ''})"


def split(epochs):
    """(epochs of the runs that reached the target, how many never did); None / NaN: never."""
    reached = [float(e) for e in epochs if e is not None and not (isinstance(e, float) and math.isnan(e))]
    return tuple(reached), len(epochs) - len(reached)


def guard(reference_epochs, setting_epochs, alpha=ALPHA):
    """Test whether the setting needs more epochs to the target than the reference (one-sided, level `alpha`)."""
    ref, ref_missed = split(reference_epochs)
    new, new_missed = split(setting_epochs)
    test = stats.greater_than(ref, new, alpha)
    return Guard(ref, new, ref_missed, new_missed, test, test.significant)


@dataclasses.dataclass(frozen=True)
class Speedup:
    """setting / reference: per step (images/sec) and to the target (reference time / setting time)."""

    per_step: float | None
    to_target: float | None

    def text(self):
        def x(v):
            return "–" if v is None else f"{v:.3f}x"

        line = f"speed-up per step (images/sec) {x(self.per_step)}, to the target (time) {x(self.to_target)}"
        if self.per_step and self.to_target and self.per_step > 1 > self.to_target:
            line += ": faster per step, slower to the target"
        return line


def speedup(reference_ips, setting_ips, reference_times, setting_times):
    """Geometric means over runs: images/sec of ok runs; time-to-target of the runs that reached it."""
    return Speedup(_ratio(setting_ips, reference_ips), _ratio(split(reference_times)[0], split(setting_times)[0]))


def _ratio(top, bottom):
    top = [float(v) for v in top if v is not None and v > 0]
    bottom = [float(v) for v in bottom if v is not None and v > 0]
    if not top or not bottom:
        return None
    return math.exp(np.mean(np.log(top)) - np.mean(np.log(bottom)))
