"""The run configuration: one frozen dataclass, validated in one place.

No TensorFlow here: the CLI, the sweep driver and fast tests build and check
configs without it. Checks that need the devices (GPU counts, replicas) live in
bench/devices.py; checks of files live where the files are read.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

from resnet import spec

STRATEGIES = ("default", "one_device", "mirrored")
UNSUPPORTED_STRATEGIES = ("multi_worker",)
PRECISION_ALIASES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
DATA_KINDS = ("auto", "tfds", "files", "synthetic")
RECIPES = ("bench", "paper")
LOOPS = ("ctl", "fit")
BATCH_NORMS = ("auto",) + spec.BATCH_NORMS  # auto: fused on CPUs (measured faster), Keras's layer on GPUs
ONEDNN = ("auto", "on", "off")  # oneDNN CPU kernels; auto: $TF_ENABLE_ONEDNN_OPTS if set, else on

CIFAR_TRAIN_IMAGES = 50_000
PAPER_ITERATIONS = 64_000  # He et al.: 64k iterations at batch 128
PAPER_BATCH = 128
PAPER_LR = 0.1
WARMUP_LR = 0.01  # He et al. 2015, depth >= 110: lr 0.01 for ~400 iterations
WARMUP_LR_ITERATIONS = 400
WARMUP_LR_MIN_DEPTH = 110


class ConfigError(ValueError):
    """Bad user input: reported as one line, exit status 2, nothing written."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    # devices and strategy
    strategy: str = "default"
    num_gpus: Optional[int] = None  # None: every visible GPU (mirrored) or one
    cpu_replicas: int = 1
    # model
    n: int = 3
    block: str = "preact"
    shortcut: str = "B"
    sync_bn: bool = False
    batch_norm: str = "auto"  # see resolve_batch_norm
    # numerics
    precision: str = "float32"
    xla: bool = False
    onednn: str = "auto"  # CPU kernels: applied before TensorFlow is imported
    # schedule
    batch_size: int = 128  # global
    steps: Optional[int] = None
    epochs: Optional[float] = None
    warmup_steps: int = 10
    steps_per_loop: int = 10
    recipe: str = "bench"
    loop: str = "ctl"
    # data
    data: str = "auto"
    cifar_dir: Optional[str] = None
    tfds_dir: Optional[str] = None
    # evaluation
    target_accuracy: Optional[float] = None
    eval_every_epochs: Optional[float] = None
    # reproducibility and outputs
    seed: int = 0
    deterministic: bool = False
    results: str = "results/summary.csv"
    checkpoint_dir: Optional[str] = None
    checkpoint_every_steps: Optional[int] = None
    tensorboard_dir: Optional[str] = None
    profile_steps: Optional[tuple] = None  # (first, last) global steps
    profile_dir: Optional[str] = None
    sweep: str = ""  # name of the sweep a row belongs to ("" for single runs)
    trial_key: str = ""  # the sweep's stable key of this trial
    # fault injection for tests: the loss becomes non-finite at this step
    inject_nan_at_step: Optional[int] = None
    inject_inf_grad_at_step: Optional[int] = None

    @property
    def depth(self):
        return spec.depth(self.n, self.block)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def canonical_precision(value):
    """`fp32`/`fp16`/`bf16` -> the Keras policy name; other values unchanged."""
    return PRECISION_ALIASES.get(value, value)


def resolve_batch_norm(cfg: RunConfig, device_kind):
    """The BN implementation a run uses: `auto` is `fused` on CPUs and `keras` on GPUs or with sync_bn.

    The fused kernel was measured faster on the development CPU; on GPUs the Keras
    layer stays the default until the fused one is measured there.
    """
    if cfg.batch_norm != "auto":
        return cfg.batch_norm
    return "fused" if device_kind == "CPU" and not cfg.sync_bn else "keras"


def parse_profile_steps(text):
    """`"20,25"` -> (20, 25). Empty -> None."""
    if text in (None, ""):
        return None
    parts = str(text).split(",")
    try:
        first, last = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--profile_steps must be two step numbers 'FIRST,LAST' (e.g. 20,25); got {text!r}")
    if not 1 <= first <= last:
        raise ConfigError(f"--profile_steps needs 1 <= FIRST <= LAST; got {text!r}")
    return (first, last)


def _choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"--{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field that needs no devices or files; return the normalised config."""
    if cfg.strategy in UNSUPPORTED_STRATEGIES:
        raise ConfigError(
            f"--strategy={cfg.strategy} is not supported yet; choose one of: {', '.join(STRATEGIES)}"
        )
    _choice("strategy", cfg.strategy, STRATEGIES)
    cfg = cfg.replace(precision=canonical_precision(cfg.precision))
    _choice("precision", cfg.precision, spec.PRECISIONS + tuple(PRECISION_ALIASES))
    _choice("block", cfg.block, spec.BLOCKS)
    _choice("shortcut", cfg.shortcut, spec.SHORTCUTS)
    _choice("data", cfg.data, DATA_KINDS)
    _choice("recipe", cfg.recipe, RECIPES)
    _choice("loop", cfg.loop, LOOPS)
    _choice("onednn", cfg.onednn, ONEDNN)
    _choice("batch_norm", cfg.batch_norm, BATCH_NORMS)
    if cfg.batch_norm == "fused" and cfg.sync_bn:
        raise ConfigError("--batch_norm=fused cannot synchronize batch statistics; use --batch_norm=keras or auto "
                          "with --sync_bn")
    if cfg.n < 1:
        raise ConfigError(f"--n must be >= 1 (depth 6n+2); got {cfg.n}")
    if cfg.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1; got {cfg.batch_size}")
    if cfg.cpu_replicas < 1:
        raise ConfigError(f"--cpu_replicas must be >= 1; got {cfg.cpu_replicas}")
    if cfg.cpu_replicas > 1 and cfg.strategy != "mirrored":
        raise ConfigError(f"--cpu_replicas={cfg.cpu_replicas} needs --strategy=mirrored (got {cfg.strategy})")
    if cfg.num_gpus is not None and cfg.num_gpus < 0:
        raise ConfigError(f"--num_gpus must be >= 0; got {cfg.num_gpus}")
    if cfg.num_gpus is not None and cfg.num_gpus > 1 and cfg.strategy != "mirrored":
        raise ConfigError(f"--num_gpus={cfg.num_gpus} needs --strategy=mirrored (got {cfg.strategy})")
    if cfg.steps is not None and cfg.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"--steps must be >= 1; got {cfg.steps}")
    if cfg.epochs is not None and not cfg.epochs > 0:
        raise ConfigError(f"--epochs must be > 0; got {cfg.epochs}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"--warmup_steps must be >= 0; got {cfg.warmup_steps}")
    if cfg.steps_per_loop < 1:
        raise ConfigError(f"--steps_per_loop must be >= 1; got {cfg.steps_per_loop}")
    if cfg.data == "files" and not cfg.cifar_dir:
        raise ConfigError("--data=files needs --cifar_dir (a folder with data_batch_*.bin and test_batch.bin)")
    if cfg.data in ("tfds", "synthetic") and cfg.cifar_dir:
        raise ConfigError(f"--cifar_dir is only read with --data=files or auto (got --data={cfg.data})")
    if cfg.target_accuracy is not None and not 0 < cfg.target_accuracy <= 1:
        raise ConfigError(f"--target_accuracy is a fraction in (0, 1], e.g. 0.91; got {cfg.target_accuracy}")
    if cfg.target_accuracy is not None and cfg.data == "synthetic":
        raise ConfigError("--target_accuracy needs real data; --data=synthetic has no accuracy")
    if cfg.eval_every_epochs is not None and not cfg.eval_every_epochs > 0:
        raise ConfigError(f"--eval_every_epochs must be > 0; got {cfg.eval_every_epochs}")
    if cfg.checkpoint_every_steps is not None and cfg.checkpoint_every_steps < 1:
        raise ConfigError(f"--checkpoint_every_steps must be >= 1; got {cfg.checkpoint_every_steps}")
    if cfg.loop == "fit":
        unsupported = [name for name, on in (
            ("--checkpoint_dir", cfg.checkpoint_dir), ("--target_accuracy", cfg.target_accuracy is not None),
            ("--eval_every_epochs", cfg.eval_every_epochs is not None), ("--profile_steps", cfg.profile_steps)) if on]
        if unsupported:
            raise ConfigError(f"{', '.join(unsupported)}: supported with --loop=ctl only (fit is a baseline)")
    if not cfg.results:
        raise ConfigError("--results must name a CSV file")
    if os.path.isdir(cfg.results):
        raise ConfigError(f"--results={cfg.results} is a folder; give a CSV file path")
    return cfg


def train_steps(cfg: RunConfig, train_images=CIFAR_TRAIN_IMAGES) -> int:
    """Total optimizer steps of the run (from --steps, --epochs or the recipe)."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * train_images / cfg.batch_size))
    if cfg.recipe == "paper":
        return math.ceil(PAPER_ITERATIONS * PAPER_BATCH / cfg.batch_size)
    return 200


def check_steps(cfg: RunConfig, total_steps: int):
    """The timed window must be non-empty (the first, compiling, step is never timed)."""
    if total_steps <= max(cfg.warmup_steps, 1):
        raise ConfigError(
            f"the run has {total_steps} steps but --warmup_steps={cfg.warmup_steps}: "
            f"steps must exceed the warm-up so something is timed"
        )


def steps_per_epoch(cfg: RunConfig, train_images=CIFAR_TRAIN_IMAGES) -> float:
    return train_images / cfg.batch_size


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Piecewise-constant SGD learning rate (He et al.), in optimizer steps."""

    base_lr: float
    boundaries: tuple  # steps where the lr is divided by 10
    warmup_lr: Optional[float]
    warmup_lr_steps: int

    def lr_at(self, step):
        if self.warmup_lr is not None and step < self.warmup_lr_steps:
            return self.warmup_lr
        return self.base_lr * 0.1 ** sum(step >= b for b in self.boundaries)


def lr_schedule(cfg: RunConfig, total_steps: int) -> Schedule:
    """lr 0.1 x batch/128, /10 at 50% and 75% of training; lr 0.01 warm-up for depth >= 110.

    Both recipes use the paper's shape; `paper` also fixes the length (64k
    iterations at batch 128), `bench` fits the shape to the run's steps.
    """
    scale = cfg.batch_size / PAPER_BATCH
    boundaries = (int(total_steps * 0.5), int(total_steps * 0.75))
    warm = cfg.depth >= WARMUP_LR_MIN_DEPTH
    warm_steps = math.ceil(WARMUP_LR_ITERATIONS / scale) if warm else 0
    if cfg.recipe == "bench":
        warm_steps = min(warm_steps, total_steps // 10)
    return Schedule(
        base_lr=PAPER_LR * scale,
        boundaries=boundaries,
        warmup_lr=WARMUP_LR * scale if warm_steps else None,
        warmup_lr_steps=warm_steps,
    )
