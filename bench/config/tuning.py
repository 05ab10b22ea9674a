"""What `--autotune` may choose, and how a choice is named. No TensorFlow, no processes.

Only settings that do not change the computation are candidates: oneDNN on/off (CPUs; a
process-level switch), XLA on/off, the BN kernel (Keras's layer or the fused one: the same
arithmetic), steps per host call and augmentation placement (GPUs), the thread pools (CPUs).
Precision, synchronized BN, the model, the batch and augmentation's distribution are never
candidates. A field the user set (anything but `auto`/unset) is never a candidate either.

The cache key names the machine and the question: device (and GPU driver), TensorFlow version,
mode, model, batch, precision, strategy and replicas, data, loop, and the tunable fields the user
fixed. `bench.runner.autotune` probes, compares and caches; this module only plans.
"""

from __future__ import annotations

import dataclasses
import os

from bench.config import defaults, options
from bench.config.options import ConfigError, RunConfig

TUNABLE = {
    "train": ("onednn", "xla", "batch_norm", "steps_per_loop", "augment", "intra_op_threads", "inter_op_threads"),
    "inference": ("onednn", "xla", "batch_norm", "intra_op_threads", "inter_op_threads"),
}
UNSET = {"onednn": "auto", "batch_norm": "auto", "augment": "auto"}  # the others' unset value is None
GPU_STEPS_PER_LOOP = (10, 200)  # tried against the GPU default (50): launch-bound steps want more per call
# Flags a probe does not take from the run: where the run writes, labels, what only a long run does.
NOT_PROBED = (
    "results",
    "checkpoint_dir",
    "checkpoint_every_steps",
    "tensorboard_dir",
    "profile_steps",
    "profile_dir",
    "comparison",
    "arm",
    "autotune",
    "target_accuracy",
    "eval_every_epochs",
    "steps",
    "epochs",
    "warmup_steps",
)


FIRST_PAIRS = 2  # an interval needs two
MAX_PAIRS = 4  # an unsettled comparison gets two more pairs, once
MAX_PAIRS_ENV = "RESNET_BENCH_AUTOTUNE_MAX_PAIRS"  # the budget: 2 never extends an unsettled comparison


def max_pairs(environ=None):
    """The most ABBA pairs one comparison may take: $RESNET_BENCH_AUTOTUNE_MAX_PAIRS, else MAX_PAIRS.

    Raises ConfigError (bad input, checked by `validation.validate` before any work) unless it is a whole number
    of at least FIRST_PAIRS."""
    text = (os.environ if environ is None else environ).get(MAX_PAIRS_ENV, "").strip()
    if not text:
        return MAX_PAIRS
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < FIRST_PAIRS:
        raise ConfigError(
            f"{MAX_PAIRS_ENV}={text!r}: give a whole number of ABBA pairs, at least {FIRST_PAIRS} (an interval needs "
            f"two), or unset it ({MAX_PAIRS})"
        )
    return value


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the process knows of its machine before TensorFlow is imported."""

    device_kind: str  # CPU | GPU
    device_name: str
    tf_version: str
    logical_cores: int
    physical_cores: int
    gpus: int = 0
    driver: str = ""  # GPU driver version
    onednn_env: str | None = None  # TF_ENABLE_ONEDNN_OPTS as the user set it (then it is theirs)
    tf_loaded: bool = False  # TensorFlow already imported here: its oneDNN state is fixed


def is_unset(cfg: RunConfig, name):
    return getattr(cfg, name) == UNSET.get(name)


def origin(cfg: RunConfig):
    """The `tuned` column of a run without --autotune: `default` if a tunable setting was left to the
    device defaults, `flag` if every one was given on the command line."""
    return "default" if any(is_unset(cfg, name) for name in TUNABLE[cfg.mode]) else "flag"


def replicas(cfg: RunConfig, machine: Machine):
    if cfg.strategy != "mirrored":
        return 1
    if machine.device_kind == "GPU":
        return machine.gpus if cfg.num_gpus is None else min(cfg.num_gpus, machine.gpus)
    return cfg.cpu_replicas


def candidates(cfg: RunConfig, machine: Machine):
    """[(field, [values])]: the default first, then the alternatives, for each field --autotune may set.

    In the order they are probed: the process-level switch first, then what changes the most.
    """
    kind, n = machine.device_kind, replicas(cfg, machine)
    resolved = defaults.resolve(cfg, kind, n, cfg.data)
    plan = []

    def add(name, default, *others):
        values = [default] + [v for v in others if v != default]
        if is_unset(cfg, name) and name in TUNABLE[cfg.mode] and len(values) > 1:
            plan.append((name, values))

    if kind == "CPU" and machine.onednn_env is None and not machine.tf_loaded:
        default = defaults.ONEDNN_DEFAULT
        add("onednn", default, "off" if default == "on" else "on")
    if defaults.xla_valid(cfg, n):
        add("xla", resolved.xla, not resolved.xla)
    if not cfg.sync_bn:
        add("batch_norm", resolved.batch_norm, "keras" if resolved.batch_norm == "fused" else "fused")
    if kind == "GPU":
        add("steps_per_loop", resolved.steps_per_loop, *GPU_STEPS_PER_LOOP)
        real_data = cfg.data in ("files", "tfds") or (cfg.data == "auto" and cfg.cifar_dir)
        if real_data and cfg.loop == "ctl":
            add("augment", defaults.resolve_augment(cfg, kind, cfg.data), "host", "device")
    if kind == "CPU":
        if machine.physical_cores < machine.logical_cores:  # SMT: one thread per core may beat two
            add("intra_op_threads", None, machine.physical_cores)
        if machine.logical_cores >= 2:
            add("inter_op_threads", None, 1)
    return plan


def key(cfg: RunConfig, machine: Machine):
    """The cache key: the machine and the question, readable (it is also the row's `tuned` column)."""
    if machine.device_kind == "GPU":
        device = f"GPU: {machine.device_name} driver {machine.driver or '?'}"
    else:
        device = f"CPU: {machine.device_name} {machine.logical_cores} cores"
    fixed = [f"{name}={options.flag_text(getattr(cfg, name))}" for name in TUNABLE[cfg.mode] if not is_unset(cfg, name)]
    parts = (
        [
            device,
            f"tf {machine.tf_version}",
            cfg.mode,
            f"ResNet-{cfg.depth} {cfg.block}/{cfg.shortcut}",
            f"batch {cfg.batch_size}",
            cfg.precision,
            f"{cfg.strategy} x{replicas(cfg, machine)}",
            f"data {cfg.data}",
            cfg.loop,
        ]
        + (["sync_bn"] if cfg.sync_bn else [])
        + ([f"fixed {' '.join(fixed)}"] if fixed else [])
    )
    return " | ".join(parts)


def settings_args(settings):
    """Chosen settings as bench.run flags: {"xla": True, "onednn": "off"} -> ["--xla", "--onednn=off"]."""
    args = []
    for name, value in settings.items():
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no{name}")
        elif value is not None:  # None: TensorFlow's own choice, the flag left out
            args.append(f"--{name}={value}")
    return args


def probe_args(cfg: RunConfig, settings, device_kind):
    """The flags of one probe: the run's own (but outputs, labels and length), the candidate's settings, its
    length."""
    args = []
    for f in options.flag_fields():
        value = getattr(cfg, f.name)
        if f.name in NOT_PROBED or f.name in settings or f.metadata["testing"] or value == f.default:
            continue
        if f.name in ("profile_steps", "inject_inf_grad_at_step"):
            continue
        args.extend(settings_args({f.name: value}))
    return args + settings_args(settings) + probe_length(cfg, settings, device_kind)


def probe_length(cfg: RunConfig, settings, device_kind):
    """Steps of a probe: inference, 5 warm-up batches and 3200 images timed (20 to 200 batches); training, one
    warm-up call and two timed calls of the candidate's steps per call (the first, compiling, step is never
    timed). A probe's start-up (TensorFlow's import, the model, compiling: ~10 s on 2 cores) costs more."""
    if cfg.mode == "inference":
        return ["--warmup_steps=5", f"--steps={5 + max(20, min(200, 3200 // cfg.batch_size))}"]
    per_call = settings.get("steps_per_loop") or cfg.steps_per_loop or defaults.STEPS_PER_LOOP[device_kind]
    return [f"--warmup_steps={per_call}", f"--steps={3 * per_call}"]


def apply(cfg: RunConfig, settings, label):
    """The run's config with the chosen settings and its `tuned` label."""
    return cfg.replace(**settings, tuned=label)
