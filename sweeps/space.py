"""The sweep's search space: comma lists of axis values -> validated trial configurations. No TensorFlow."""

from __future__ import annotations

import dataclasses
import itertools

from bench import config
from bench.config import ConfigError, RunConfig

# Axes a sweep can vary, with how to read one comma-list item.
AXES = {
    "n": int,
    "shortcut": str,
    "block": str,
    "precision": str,
    "xla": lambda s: _bool(s),
    "batch_size": int,
    "strategy": str,
}
KEY_ORDER = ("n", "block", "shortcut", "precision", "xla", "batch_size", "strategy", "seed")


def _bool(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--xla takes true/false values; got {text!r}")


def parse_axis(name, text):
    """`"3,5,7"` -> [3, 5, 7], with a one-line error naming the axis on a bad item."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{name} needs at least one value")
    try:
        values = [AXES[name](t) for t in items]
    except ValueError:
        raise ConfigError(f"--{name}={text!r}: every item must be {AXES[name].__name__}") from None
    if name == "precision":
        values = [config.canonical_precision(v) for v in values]
    return list(dict.fromkeys(values))  # drop repeats, keep order


def trial_key(overrides):
    """A stable, readable key of a trial's configuration (and seed)."""
    parts = []
    for k in KEY_ORDER:
        v = overrides[k]
        parts.append(f"{k}={str(v).lower() if isinstance(v, bool) else v}")
    return ",".join(parts)


@dataclasses.dataclass(frozen=True)
class Trial:
    key: str
    config: RunConfig


def build_trials(axes, base: RunConfig, repeats, sweep_name):
    """Every combination of the axes x `repeats` seeds, each validated like a single run."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1; got {repeats}")
    names = list(axes)
    trials = []
    for combo in itertools.product(*(axes[n] for n in names)):
        for r in range(repeats):
            overrides = dict(zip(names, combo))
            overrides["seed"] = base.seed + r
            full = {k: overrides.get(k, getattr(base, k)) for k in KEY_ORDER}
            key = trial_key(full)
            cfg = config.validate(base.replace(**overrides, sweep=sweep_name, trial_key=key))
            if cfg.steps is not None:
                config.check_steps(cfg, cfg.steps)
            trials.append(Trial(key, cfg))
    return trials
