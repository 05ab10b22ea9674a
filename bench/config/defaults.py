"""Device defaults: what an unset (`auto`/None) option becomes on GPUs and on CPUs, decided once per run."""

from __future__ import annotations

import math
import os

from bench.config import options
from bench.config.options import RunConfig

STEPS_PER_LOOP = {"CPU": 10, "GPU": 50}
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def xla_valid(cfg: RunConfig, num_replicas):
    """Whether XLA can compile this run: one replica, or neither sync BN nor Keras fit over replicas
    (they fail under XLA in TF 2.21: WORKSPACE.md, "Traps": XLA over replicas; `validation.check_xla_over_replicas`)."""
    return num_replicas == 1 or (not cfg.sync_bn and cfg.loop == "ctl")


def resolve(cfg: RunConfig, device_kind, num_replicas, data_kind) -> RunConfig:
    """The config with every "unset = the device's default" field decided (what runs and what the row records):
    the one place a run's defaults are resolved once its devices and data are known (oneDNN, which must be
    decided before TensorFlow's import, is `onednn_request`).

    GPU defaults (WORKSPACE.md, "Device defaults"): XLA where it is valid, 50 steps per call, the fused BN
    kernel, augmentation on the device; CPU defaults: no XLA (measured slower here), 10 steps per call, the
    fused BN kernel, augmentation on the host; CPU inference: XLA and Keras's BN layer (measured faster for
    forward passes).
    """
    xla = cfg.xla
    if xla is None:
        xla = xla_valid(cfg, num_replicas) and (device_kind == "GPU" or cfg.mode == "inference")
    steps_per_loop = 1 if cfg.mode == "inference" else cfg.steps_per_loop or STEPS_PER_LOOP[device_kind]
    return cfg.replace(
        xla=bool(xla),
        steps_per_loop=steps_per_loop,  # inference: one batch per window
        batch_norm=resolve_batch_norm(cfg, device_kind),
        augment=resolve_augment(cfg, device_kind, data_kind),
    )


def intra_op_threads(cfg: RunConfig):
    """TensorFlow's intra-op threads for the run: the flag, or for a multi-worker worker its reserved CPUs
    (Ray reserves --cpus_per_worker; TensorFlow would otherwise use every core of the node); None: TF's own."""
    if cfg.intra_op_threads is None and cfg.strategy == options.MULTI_WORKER:
        return max(1, math.ceil(cfg.cpus_per_worker))
    return cfg.intra_op_threads


def resolve_augment(cfg: RunConfig, device_kind, data_kind):
    """Where augmentation runs: `device`, `host`, or `none` (synthetic data is never augmented).

    auto is `device` on GPUs (a host pipeline of ~15k images/s on 2 cores would starve a GPU step of
    ~50k+) and `host` on CPUs, where both compete for the same cores anyway; Keras fit always augments
    on the host.
    """
    if data_kind == "synthetic":
        return "none"
    if cfg.augment != "auto":
        return cfg.augment
    return "device" if device_kind == "GPU" and cfg.loop == "ctl" else "host"


def resolve_batch_norm(cfg: RunConfig, device_kind):
    """The BN implementation a run uses: `auto` is `fused`, or `keras` with sync_bn.

    The fused kernel was measured faster on the development CPU; on GPUs it is cuDNN's
    fused kernel, which tf.keras 2 used by default there (not measured here: no GPU).
    Only the Keras layer can synchronize batch statistics.
    """
    if cfg.batch_norm != "auto":
        return cfg.batch_norm
    if cfg.mode == "inference" and device_kind == "CPU":
        return "keras"  # the fused kernel's inference pass cost ~15-20 ms per call at batch 1 (WORKSPACE.md)
    return "keras" if cfg.sync_bn else "fused"


# oneDNN when nothing asks otherwise: on. Training ~1.7x on an AVX2 CPU; inference with XLA at batch 1
# 1.47x [1.14-1.91] against off here (WORKSPACE.md, "Inference mode"; another AVX2 CPU measured off faster
# at batch 1: `--autotune` settles it per machine).
ONEDNN_DEFAULT = "on"


def onednn_request(cfg: RunConfig):
    """`on` or `off`: the flag if given, else TF_ENABLE_ONEDNN_OPTS if the user set it, else `onednn_default`.

    Decided before TensorFlow is imported (it reads the variable once, then).
    """
    if cfg.onednn != "auto":
        return cfg.onednn
    if os.environ.get(ONEDNN_ENV) is not None:
        return "off" if os.environ[ONEDNN_ENV].strip().lower() in ("0", "false", "off") else "on"
    return ONEDNN_DEFAULT
