"""The sweep's search space: flags of RunConfig fields -> validated trial configurations. No TensorFlow.

Any RunConfig field marked as an axis takes a comma list in `sweeps.tune`
(`--n 3,5,9 --precision fp32,bf16 --steps_per_loop 5,20`); the trials are every
combination, times `--repeats` seeds, in rounds (seed 0 of every configuration, then seed 1, ...).
Single-valued fields (paths) apply to
every trial; output folders get one subfolder per trial.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random

from bench.config import cli, identity, options, validation
from bench.config.options import ConfigError, RunConfig

# The trial key always names these (stable keys over versions: --resume finds its trials);
# any other field with more than one value in the sweep is appended.
KEY_ORDER = ("n", "block", "shortcut", "precision", "xla", "batch_size", "strategy", "seed")
PER_TRIAL_FOLDERS = ("checkpoint_dir", "tensorboard_dir", "profile_dir")
MULTI_WORKER_FIELDS = (
    "workers",
    "gpus_per_worker",
    "cpus_per_worker",
    "max_failures",
    "collective_timeout_s",
    "fail_worker_at_step",
)
ABSOLUTE_PATHS = ("cifar_dir", "tfds_dir", "results") + PER_TRIAL_FOLDERS


@dataclasses.dataclass(frozen=True)
class Trial:
    key: str
    config: RunConfig


def axes_from_flags(values):
    """{field name: [values]} for every RunConfig flag of a parsed `sweeps.tune` command line."""
    axes = {}
    for f in options.flag_fields():
        found = options.axis_values(f, values[f.name].value)
        if f.name in ABSOLUTE_PATHS:
            found = [os.path.abspath(os.path.expanduser(v)) if v else v for v in found]
        axes[f.name] = found
    return axes


def trial_key(cfg: RunConfig, varying):
    """A stable, readable key of a trial's configuration (and seed)."""
    names = list(KEY_ORDER) + [n for n in varying if n not in KEY_ORDER]
    return ",".join(f"{n}={_key_value(n, getattr(cfg, n))}" for n in names)


def _key_value(name, value):
    if value is None:  # unset: xla and steps_per_loop then follow the device (defaults.resolve)
        return "auto" if name in ("xla", "steps_per_loop") else "none"
    return cli.format_value(value)


def build_trials(axes, repeats, sweep_name, shuffle_seed=None):
    """Every combination of the axes x `repeats` seeds, each validated like a single run, in rounds.

    Round r runs seed r of every configuration before any configuration's seed r+1, so a
    configuration's repeats are spread over the whole sweep: the spread of its repeats then
    measures the machine's noise, not its drift. `shuffle_seed` shuffles the configurations within
    each round (reproducibly). Each trial's `sweep_position` is its 1-based place in this order.
    """
    validation.check_sweep_options(repeats=repeats, seeds=len(axes.get("seed", [0])))
    names = list(axes)
    varying = [n for n in names if len(axes[n]) > 1]
    combos = list(itertools.product(*(axes[n] for n in names)))
    shuffler = random.Random(shuffle_seed) if shuffle_seed is not None else None
    trials, keys = [], set()
    for r in range(repeats):
        round_trials = []
        for combo in combos:
            values = dict(zip(names, combo))
            values["seed"] = values.get("seed", 0) + r
            cfg = _single_process_fields(RunConfig(**values, sweep=sweep_name))
            cfg = cfg.replace(trial_key=trial_key(validation.validate(cfg.replace(checkpoint_dir=None)), varying))
            if cfg.trial_key in keys:  # e.g. a --workers axis collapses for single-process strategies
                continue
            keys.add(cfg.trial_key)
            cfg = _per_trial_folders(cfg)
            round_trials.append(validation.validate(cfg))
        if shuffler:
            shuffler.shuffle(round_trials)
        trials.extend(round_trials)
    _check_forced_seeds(trials)
    return [Trial(cfg.trial_key, cfg.replace(sweep_position=i)) for i, cfg in enumerate(trials, start=1)]


def _check_forced_seeds(trials):
    """--diverge_seeds names seeds the sweep runs (a seed no trial runs would force nothing, silently)."""
    forced = {seed for cfg in trials for seed in options.parse_seed_list(cfg.diverge_seeds)}
    seeds = sorted({cfg.seed for cfg in trials})
    missing = sorted(forced - set(seeds))
    if missing:
        raise ConfigError(
            f"--diverge_seeds: no trial runs seed {', '.join(map(str, missing))} "
            f"(the sweep's seeds: {', '.join(map(str, seeds))})"
        )


def _single_process_fields(cfg):
    """A sweep's multi-worker fields apply to its multi_worker trials only; the GPU/CPU split to the others."""
    if cfg.strategy == options.MULTI_WORKER:
        return cfg.replace(num_gpus=None, cpu_replicas=1)
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    return cfg.replace(**{name: defaults[name] for name in MULTI_WORKER_FIELDS})


def _per_trial_folders(cfg):
    """Trials never share an output folder: each gets `<folder>/<its stable run id>`."""
    changes = {
        name: os.path.join(getattr(cfg, name), identity.stable_run_id(cfg))
        for name in PER_TRIAL_FOLDERS
        if getattr(cfg, name)
    }
    return cfg.replace(**changes)
