"""Device defaults: what an unset (`auto`/None) option becomes on GPUs and on CPUs, decided once per run."""

from __future__ import annotations

import dataclasses
import math
import os

from bench.config import options
from bench.config.options import RunConfig

STEPS_PER_LOOP = {"CPU": 10, "GPU": 50}
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


@dataclasses.dataclass(frozen=True)
class CpuInference:
    """The CPU inference defaults of one kind of CPU (`bench.hardware.cpu_features.cpu_kind`), and their source."""

    onednn: str
    xla: bool
    batch_norm: str
    source: str  # where they were measured


# CPU inference defaults per kind of CPU (instruction sets: which kernels oneDNN and XLA generate differ).
# Only measured kinds are listed; any other kind takes FALLBACK_CPU_KIND's and `--autotune` finds its own
# (WORKSPACE.md, "Inference mode": on an AVX-512 BF16 CPU these lost to PyTorch eager, issue #25; that
# kind gets its entry from a side-by-side run there: tests/benchmarks/side_by_side.py).
CPU_INFERENCE = {
    "avx2": CpuInference(
        "on", True, "keras", "2-core AMD EPYC, AVX2: WORKSPACE.md, 'Inference mode' (issue #19, session 4)"
    ),
}
FALLBACK_CPU_KIND = "avx2"


def cpu_inference(cpu_kind=FALLBACK_CPU_KIND):
    """(the CPU inference defaults for `cpu_kind`, whether they were measured on that kind)."""
    measured = cpu_kind in CPU_INFERENCE
    return CPU_INFERENCE[cpu_kind if measured else FALLBACK_CPU_KIND], measured


def xla_valid(cfg: RunConfig, num_replicas):
    """Whether XLA can compile this run: one replica, or neither sync BN nor Keras fit over replicas
    (they fail under XLA in TF 2.21: WORKSPACE.md, "Traps": XLA over replicas; `validation.check_xla_over_replicas`)."""
    return num_replicas == 1 or (not cfg.sync_bn and cfg.loop == "ctl")


def resolve(cfg: RunConfig, device_kind, num_replicas, data_kind, cpu_kind=FALLBACK_CPU_KIND) -> RunConfig:
    """The config with every "unset = the device's default" field decided (what runs and what the row records):
    the one place a run's defaults are resolved once its devices and data are known (oneDNN, which must be
    decided before TensorFlow's import, is `onednn_request`).

    GPU defaults (WORKSPACE.md, "Device defaults"): XLA where it is valid, 50 steps per call, the fused BN
    kernel, augmentation on the device; CPU defaults: no XLA (measured slower here), 10 steps per call, the
    fused BN kernel, augmentation on the host; CPU inference: XLA and Keras's BN layer (measured faster for
    forward passes; per kind of CPU, `CPU_INFERENCE`).
    """
    cpu_inference_xla = device_kind == "CPU" and cfg.mode == "inference" and cpu_inference(cpu_kind)[0].xla
    xla = cfg.xla
    if xla is None:
        xla = xla_valid(cfg, num_replicas) and (device_kind == "GPU" or cpu_inference_xla)
    steps_per_loop = 1 if cfg.mode == "inference" else cfg.steps_per_loop or STEPS_PER_LOOP[device_kind]
    return cfg.replace(
        xla=bool(xla),
        steps_per_loop=steps_per_loop,  # inference: one batch per window
        batch_norm=resolve_batch_norm(cfg, device_kind, cpu_kind),
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


def resolve_batch_norm(cfg: RunConfig, device_kind, cpu_kind=FALLBACK_CPU_KIND):
    """The BN implementation a run uses: `auto` is `fused`, or `keras` with sync_bn.

    The fused kernel was measured faster on the development CPU; on GPUs it is cuDNN's
    fused kernel, which tf.keras 2 used by default there (not measured here: no GPU).
    Only the Keras layer can synchronize batch statistics.
    """
    if cfg.batch_norm != "auto":
        return cfg.batch_norm
    if cfg.mode == "inference" and device_kind == "CPU":  # per kind of CPU (AVX2: the fused kernel's inference
        return cpu_inference(cpu_kind)[0].batch_norm  # pass cost ~15-20 ms per call at batch 1, WORKSPACE.md)
    return "keras" if cfg.sync_bn else "fused"


# oneDNN when nothing asks otherwise: on. Training ~1.7x on an AVX2 CPU; inference with XLA at batch 1
# 1.47x [1.14-1.91] against off here (WORKSPACE.md, "Inference mode"; another AVX2 CPU measured off faster
# at batch 1: `--autotune` settles it per machine).
ONEDNN_DEFAULT = "on"


def onednn_request(cfg: RunConfig, cpu_kind=FALLBACK_CPU_KIND):
    """`on` or `off`: the flag if given, else TF_ENABLE_ONEDNN_OPTS if the user set it, else the default (CPU
    inference: its kind of CPU's, `CPU_INFERENCE`; otherwise ONEDNN_DEFAULT).

    Decided before TensorFlow is imported (it reads the variable once, then).
    """
    if cfg.onednn != "auto":
        return cfg.onednn
    if os.environ.get(ONEDNN_ENV) is not None:
        return "off" if os.environ[ONEDNN_ENV].strip().lower() in ("0", "false", "off") else "on"
    return cpu_inference(cpu_kind)[0].onednn if cfg.mode == "inference" else ONEDNN_DEFAULT
