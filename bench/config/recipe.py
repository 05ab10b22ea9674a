"""The training recipe: run length and the one learning-rate schedule (He et al.)."""

from __future__ import annotations

import dataclasses
import math

from bench.config.options import RunConfig

CIFAR_TRAIN_IMAGES = 50_000
BENCH_STEPS = 200  # the `bench` recipe's default run length
PAPER_ITERATIONS = 64_000  # He et al.: 64k iterations at batch 128
PAPER_BATCH = 128
PAPER_LR = 0.1
MOMENTUM = 0.9  # SGD momentum (He et al.)
LR_DROP_FACTOR = 0.1  # each drop divides the lr by 10
LR_DROPS = (0.5, 0.75)  # the lr is divided by 10 at these fractions of training
WARMUP_LR = 0.01  # He et al. 2015, depth >= 110: lr 0.01 for ~400 iterations
WARMUP_LR_ITERATIONS = 400
WARMUP_LR_MIN_DEPTH = 110


# ---------------------------------------------------------------------------
# Run length and learning-rate schedule


def train_steps(cfg: RunConfig, train_images=CIFAR_TRAIN_IMAGES) -> int:
    """Total optimizer steps of the run (from --steps, --epochs or the recipe)."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * train_images / cfg.batch_size))
    if cfg.recipe == "paper":
        return math.ceil(PAPER_ITERATIONS * PAPER_BATCH / cfg.batch_size)
    return BENCH_STEPS


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Piecewise-constant SGD learning rate (He et al.): `values[i]` from step `starts[i]` on (0-based steps).

    This is the one description of the schedule; `bench.training.steps.make_optimizer` turns
    it into the optimizer's learning-rate schedule.
    """

    starts: tuple  # first step of each piece; starts[0] == 0
    values: tuple


def lr_schedule(cfg: RunConfig, total_steps: int) -> Schedule:
    """lr 0.1 x batch/128 (x --lr_scale), /10 at 50% and 75% of training; lr 0.01 warm-up for depth >= 110.

    Both recipes use the paper's shape; `paper` also fixes the length (64k
    iterations at batch 128), `bench` fits the shape to the run's steps.
    """
    scale = cfg.batch_size / PAPER_BATCH
    base = PAPER_LR * scale * cfg.lr_scale
    warm = math.ceil(WARMUP_LR_ITERATIONS / scale) if cfg.depth >= WARMUP_LR_MIN_DEPTH else 0
    if cfg.recipe == "bench":
        warm = min(warm, total_steps // 10)
    starts, values = [0], [WARMUP_LR * scale * cfg.lr_scale if warm else base]
    if warm:
        starts.append(warm)
        values.append(base)
    for i, fraction in enumerate(LR_DROPS, start=1):
        start = int(total_steps * fraction)
        if start > starts[-1]:
            starts.append(start)
            values.append(base * LR_DROP_FACTOR**i)
    return Schedule(tuple(starts), tuple(values))
