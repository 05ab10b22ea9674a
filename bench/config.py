"""The run configuration: one frozen dataclass whose fields declare their own flags, validated here only.

Each `RunConfig` field carries its flag: help text, allowed values, how a sweep
may vary it (`option(...)` metadata). `bench.cli` builds the flags of
`python -m bench.run` and `python -m sweeps.tune` from these fields, so a new
option is one edit here.

Every check of a configuration lives in this module and nowhere else raises
`ConfigError`: `validate(cfg)` needs no TensorFlow (run before any work), and
`check_setup(cfg, facts)` checks what only the devices and the data can tell
(run once after they are set up, before any training). No TensorFlow import here:
the CLI, the sweep driver and fast tests use this module without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from typing import Optional

from bench import cifar
from resnet import spec

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
MULTI_WORKER = "multi_worker"  # MultiWorkerMirroredStrategy over Ray Train workers (bench/multiworker.py)
WORKER_FAULTS = ("exit", "stall")
PRECISION_ALIASES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}
DATA_KINDS = ("auto", "tfds", "files", "synthetic")
RECIPES = ("bench", "paper")
LOOPS = ("ctl", "fit")
BATCH_NORMS = ("auto",) + spec.BATCH_NORMS  # auto: fused on CPUs (measured faster), Keras's layer on GPUs
ONEDNN = ("auto", "on", "off")  # oneDNN CPU kernels; auto: $TF_ENABLE_ONEDNN_OPTS if set, else on
AUGMENT = ("auto", "host", "device")  # auto: device when training on GPUs, host on CPUs
MODES = ("train", "inference")
COMPARISON_ARMS = ("", "A", "B")  # empty: not part of an A/B comparison

CIFAR_TRAIN_IMAGES = 50_000
BENCH_STEPS = 200  # the `bench` recipe's default run length
PAPER_ITERATIONS = 64_000  # He et al.: 64k iterations at batch 128
PAPER_BATCH = 128
PAPER_LR = 0.1
LR_DROPS = (0.5, 0.75)  # the lr is divided by 10 at these fractions of training
WARMUP_LR = 0.01  # He et al. 2015, depth >= 110: lr 0.01 for ~400 iterations
WARMUP_LR_ITERATIONS = 400
WARMUP_LR_MIN_DEPTH = 110


class ConfigError(ValueError):
    """Bad user input: reported as one line, exit status 2, nothing written."""


def option(default, help, *, kind=None, choices=None, axis=True, sweep_default=None, parse=None, testing=False):
    """A RunConfig field that declares its flag.

    kind: int | float | bool | str (default: the type of `default`); choices: allowed values;
    axis: a sweep may give a comma list (False for paths and other single values);
    sweep_default: a sweep's default list where it differs (the papers' study);
    parse: text -> value for fields whose flag is a string of another shape;
    testing: fault injection for tests, left out of `--help`.
    """
    meta = dict(help=help, kind=kind or type(default), choices=choices, axis=axis, sweep_default=sweep_default,
                parse=parse, testing=testing)
    return dataclasses.field(default=default, metadata=meta)


def parse_fault_step(text):
    """`"5"` -> (5, None) (every replica); `"5:1"` -> (5, 1) (replica 1 only). Empty -> None."""
    if text in (None, ""):
        return None
    if isinstance(text, (tuple, list)):
        return tuple(text)
    step, _, replica = str(text).partition(":")
    try:
        parsed = (int(step), int(replica) if replica else None)
    except ValueError:
        raise ConfigError(f"--inject_inf_grad_at_step takes STEP or STEP:REPLICA (e.g. 5:1); got {text!r}") from None
    if parsed[0] < 1 or (parsed[1] is not None and parsed[1] < 0):
        raise ConfigError(f"--inject_inf_grad_at_step needs STEP >= 1 and REPLICA >= 0; got {text!r}")
    return parsed


def parse_profile_steps(text):
    """`"20,25"` -> (20, 25). Empty -> None."""
    if text in (None, ""):
        return None
    if isinstance(text, (tuple, list)):
        text = ",".join(str(t) for t in text)
    parts = str(text).split(",")
    try:
        first, last = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--profile_steps must be two step numbers 'FIRST,LAST' (e.g. 20,25); got {text!r}")
    if not 1 <= first <= last:
        raise ConfigError(f"--profile_steps needs 1 <= FIRST <= LAST; got {text!r}")
    return (first, last)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    mode: str = option("train", "train: training throughput and accuracy; inference: forward passes only "
                                "(images/sec and per-batch latency, each batch its own timed window).", choices=MODES)
    # devices and strategy
    strategy: str = option("default", "tf.distribute strategy (multi_worker: MultiWorkerMirroredStrategy over "
                                      "--workers processes launched by Ray Train, on one node or many).",
                           choices=STRATEGIES)
    num_gpus: Optional[int] = option(None, "GPUs to use with --strategy=mirrored (default: all visible; in a "
                                           "sweep: the GPUs Ray reserves for each trial).", kind=int)
    cpu_replicas: int = option(1, "Without GPUs: split the CPU into this many logical devices (replicas).")
    workers: Optional[int] = option(None, "--strategy=multi_worker: number of worker processes K (>= 1), placed by "
                                          "Ray on one node or many.", kind=int)
    gpus_per_worker: Optional[int] = option(None, "--strategy=multi_worker: GPUs per worker (default 0: each worker "
                                                  "is one CPU replica).", kind=int)
    cpus_per_worker: float = option(1.0, "--strategy=multi_worker: CPUs Ray reserves per worker; the worker runs "
                                         "that many TensorFlow intra-op threads (rounded up) unless "
                                         "--intra_op_threads says otherwise.")
    address: Optional[str] = option(None, "Ray cluster address (auto, ray://host:port or host:port) for "
                                          "--strategy=multi_worker and for sweeps; default: start a local Ray for "
                                          "the run and stop it after.", kind=str, axis=False)
    max_failures: int = option(0, "--strategy=multi_worker: worker-group restarts Ray Train may make (each "
                                  "resumes from --checkpoint_dir).")
    collective_timeout_s: float = option(600.0, "--strategy=multi_worker: a collective (all-reduce) that waits "
                                                "longer than this fails the run instead of hanging.")
    # model
    n: int = option(3, "Blocks per stage: depth 6n+2 (9n+2 for bottleneck).", sweep_default="3,5,7,9,18")
    block: str = option("preact", "Residual block type.", choices=spec.BLOCKS, sweep_default="preact,original")
    shortcut: str = option("B", "Shortcut option of He et al. 2015.", choices=spec.SHORTCUTS,
                           sweep_default="A,B,C")
    sync_bn: bool = option(False, "Synchronized batch norm (batch statistics all-reduced over replicas).")
    batch_norm: str = option("auto", "BN implementation: keras (keras.layers.BatchNormalization) or fused (the "
                                     "same layer on TF's fused kernel: oneDNN on CPUs, cuDNN on GPUs). auto: fused, "
                                     "keras with --sync_bn.", choices=BATCH_NORMS)
    # numerics
    precision: str = option("float32", "Keras dtype policy (fp32, fp16 and bf16 are accepted too).",
                            choices=spec.PRECISIONS + tuple(PRECISION_ALIASES))
    xla: Optional[bool] = option(None, "XLA: on one replica the whole step is compiled, over several the "
                                       "forward/backward. Unset: on GPUs where valid (not --sync_bn over replicas, "
                                       "not --loop=fit over replicas), off on CPUs (measured slower there).",
                                 kind=bool)
    intra_op_threads: Optional[int] = option(None, "TensorFlow intra-op threads (default: TensorFlow's choice).",
                                             kind=int)
    inter_op_threads: Optional[int] = option(None, "TensorFlow inter-op threads (default: TensorFlow's choice).",
                                             kind=int)
    onednn: str = option("auto", "oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS). auto: the environment variable if "
                                 "set, else on. TensorFlow turns them on by itself only on CPUs with AVX-512 "
                                 "VNNI/BF16 or AMX.", choices=ONEDNN)
    # schedule
    batch_size: int = option(128, "Global batch size (divided evenly over the replicas).")
    steps: Optional[int] = option(None, "Training steps (default: the recipe's).", kind=int)
    epochs: Optional[float] = option(None, "Training epochs instead of --steps.", kind=float)
    warmup_steps: int = option(10, "Steps excluded from timing (the first, compiling, step always is).")
    steps_per_loop: Optional[int] = option(None, "Steps run inside one tf.function call (one timed window). "
                                                 "Unset: 10 on CPUs, 50 on GPUs (a GPU step is launch-bound).",
                                           kind=int)
    recipe: str = option("bench", "bench: short throughput run; paper: He et al. schedule.", choices=RECIPES)
    loop: str = option("ctl", "ctl: the custom training loop; fit: Keras model.fit (a baseline).", choices=LOOPS)
    # data
    data: str = option("auto", "Input: tfds, CIFAR binary files, synthetic, or auto.", choices=DATA_KINDS)
    cifar_dir: Optional[str] = option(None, "Folder with the CIFAR-10 binary files (or its parent).", kind=str,
                                      axis=False)
    tfds_dir: Optional[str] = option(None, "tensorflow-datasets data folder.", kind=str, axis=False)
    # evaluation
    target_accuracy: Optional[float] = option(None, "Stop when test accuracy reaches this fraction; record the "
                                                    "time.", kind=float)
    eval_every_epochs: Optional[float] = option(None, "Evaluate every this many epochs (default: at the end).",
                                                kind=float)
    # reproducibility and outputs
    seed: int = option(0, "Random seed (a sweep's --repeats K runs seed, seed+1, ...).")
    deterministic: bool = option(False, "Deterministic ops (slower).")
    results: str = option("results/summary.csv", "Results CSV to append the row to.", axis=False)
    checkpoint_dir: Optional[str] = option(None, "Checkpoint here; a rerun with the same flags resumes (in a "
                                                 "sweep: one subfolder per trial).", kind=str, axis=False)
    checkpoint_every_steps: Optional[int] = option(None, "Checkpoint cadence (default: each eval, or 50 steps).",
                                                   kind=int)
    tensorboard_dir: Optional[str] = option(None, "Write TensorBoard summaries here (in a sweep: one subfolder "
                                                  "per trial).", kind=str, axis=False)
    profile_steps: Optional[tuple] = option(None, "FIRST,LAST: TF profiler trace of these steps (not timed).",
                                            kind=str, axis=False, parse=parse_profile_steps)
    profile_dir: Optional[str] = option(None, "Where the profiler trace goes (default: <tensorboard_dir>/profile).",
                                        kind=str, axis=False)
    augment: str = option("auto", "Where the pad-crop-flip augmentation runs: host (tf.data, per image) or device "
                                  "(batched inside the step; uint8 batches cross to the device). auto: device "
                                  "on GPUs, host on CPUs.", choices=AUGMENT)
    # A/B comparisons (python -m sweeps.compare sets both; not sweep axes)
    comparison: str = option("", "Id of the A/B comparison this run belongs to (sweeps.compare sets it).", axis=False)
    arm: str = option("", "The arm of --comparison this run is: A or B (sweeps.compare sets it).",
                      choices=COMPARISON_ARMS, axis=False)
    # fault injection for tests
    inject_nan_at_step: Optional[int] = option(None, "Testing: make the loss non-finite at this step.", kind=int,
                                               axis=False, testing=True)
    fail_worker_at_step: Optional[str] = option(
        None, "Testing: 'RANK:STEP' makes that worker exit abruptly (os._exit) the first time the run reaches STEP, "
              "'RANK:STEP:stall' makes it stop responding; once per run, restarts included.",
        kind=str, axis=False, testing=True)
    inject_inf_grad_at_step: Optional[tuple] = option(
        None, "Testing: STEP[:REPLICA]: make that replica's (default: every replica's) gradients infinite at "
              "this step (mixed_float16: the step must be skipped on every replica).",
        kind=str, axis=False, parse=parse_fault_step, testing=True)
    # set by the sweep driver, not flags
    sweep: str = dataclasses.field(default="", metadata={"internal": True})
    trial_key: str = dataclasses.field(default="", metadata={"internal": True})
    sweep_position: int = dataclasses.field(default=0, metadata={"internal": True})  # 1-based place in the order

    @property
    def depth(self):
        return spec.depth(self.n, self.block)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def from_dict(d) -> RunConfig:
    """A RunConfig from `dataclasses.asdict` of one that went through JSON (sweep plans, Ray workers)."""
    d = dict(d)
    for name in ("profile_steps", "inject_inf_grad_at_step"):  # JSON turned these tuples into lists
        if d.get(name) is not None:
            d[name] = tuple(d[name])
    return RunConfig(**d)


def flag_fields():
    """The RunConfig fields that are flags (every field but the sweep driver's bookkeeping)."""
    return [f for f in dataclasses.fields(RunConfig) if not f.metadata.get("internal")]


def parse_item(f: dataclasses.Field, text):
    """One comma-list item of an axis flag, read as the field's kind."""
    kind = f.metadata["kind"]
    text = text.strip()
    if kind is bool:
        value = text.lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{f.name} takes true/false values; got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"--{f.name}={text!r}: every item must be {kind.__name__}") from None


def axis_values(f: dataclasses.Field, value):
    """The values a sweep flag gives a field: a list (one item for single-valued fields)."""
    if not f.metadata["axis"] or value is None or not isinstance(value, str):
        return [value]
    items = [t for t in value.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"--{f.name} needs at least one value")
    values = [parse_item(f, t) for t in items]
    if f.name == "precision":
        values = [canonical_precision(v) for v in values]
    return list(dict.fromkeys(values))  # drop repeats, keep order


def canonical_precision(value):
    """`fp32`/`fp16`/`bf16` -> the Keras policy name; other values unchanged."""
    return PRECISION_ALIASES.get(value, value)


STEPS_PER_LOOP = {"CPU": 10, "GPU": 50}


def resolve(cfg: RunConfig, device_kind, num_replicas) -> RunConfig:
    """The config with every "unset = the device's default" field decided (what runs and what the row records).

    GPU defaults (WORKSPACE.md, "Device defaults"): XLA where it is valid, 50 steps per call, the fused BN
    kernel; CPU defaults: no XLA (measured slower here), 10 steps per call, the fused BN kernel.
    """
    xla = cfg.xla
    if xla is None:  # compiling fails for sync BN's and fit's all-reduces over replicas (TF-STACK-NOTES 3)
        valid = num_replicas == 1 or (not cfg.sync_bn and cfg.loop == "ctl")
        xla = device_kind == "GPU" and valid
    steps_per_loop = 1 if cfg.mode == "inference" else cfg.steps_per_loop or STEPS_PER_LOOP[device_kind]
    return cfg.replace(xla=bool(xla), steps_per_loop=steps_per_loop,  # inference: one batch per window
                       batch_norm=resolve_batch_norm(cfg, device_kind))


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
    del device_kind  # the same choice on both kinds; kept for the call sites' clarity
    if cfg.batch_norm != "auto":
        return cfg.batch_norm
    return "keras" if cfg.sync_bn else "fused"


# ---------------------------------------------------------------------------
# Checks before any work (no TensorFlow)


def validate(cfg: RunConfig) -> RunConfig:
    """Check everything that needs no TensorFlow; return the normalised config. Raises ConfigError."""
    _check_choices(cfg)
    cfg = cfg.replace(precision=canonical_precision(cfg.precision), profile_steps=parse_profile_steps(cfg.profile_steps),
                      inject_inf_grad_at_step=parse_fault_step(cfg.inject_inf_grad_at_step))
    _check_numbers(cfg)
    _check_combinations(cfg)
    _check_outputs(cfg)
    if cfg.cifar_dir and cfg.data in ("files", "auto"):
        try:
            cifar.find_files(cfg.cifar_dir)
        except cifar.CifarFilesError as err:
            raise ConfigError(str(err)) from None
    check_resume(cfg)
    return cfg


def _check_choices(cfg):
    for f in flag_fields():
        allowed = f.metadata["choices"]
        value = getattr(cfg, f.name)
        if allowed and value not in allowed:
            raise ConfigError(f"--{f.name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _at_least(cfg, name, low, what=""):
    value = getattr(cfg, name)
    if value is not None and value < low:
        raise ConfigError(f"--{name} must be >= {low}{what}; got {value}")


def _check_numbers(cfg):
    _at_least(cfg, "n", 1, " (depth 6n+2)")
    for name in ("batch_size", "cpu_replicas", "steps", "steps_per_loop", "checkpoint_every_steps"):
        _at_least(cfg, name, 1)
    for name in ("num_gpus", "warmup_steps", "intra_op_threads", "inter_op_threads"):
        _at_least(cfg, name, 0)
    for name in ("epochs", "eval_every_epochs"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name} must be > 0; got {value}")
    if cfg.target_accuracy is not None and not 0 < cfg.target_accuracy <= 1:
        raise ConfigError(f"--target_accuracy is a fraction in (0, 1], e.g. 0.91; got {cfg.target_accuracy}")
    if cfg.steps is not None and cfg.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    if cfg.steps is not None:
        check_steps(cfg, cfg.steps)


def _check_combinations(cfg):
    if cfg.batch_norm == "fused" and cfg.sync_bn:
        raise ConfigError("--batch_norm=fused cannot synchronize batch statistics; use --batch_norm=keras or auto "
                          "with --sync_bn")
    if cfg.cpu_replicas > 1 and cfg.strategy != "mirrored":
        raise ConfigError(f"--cpu_replicas={cfg.cpu_replicas} needs --strategy=mirrored (got {cfg.strategy})")
    if cfg.num_gpus is not None and cfg.num_gpus > 1 and cfg.strategy != "mirrored":
        raise ConfigError(f"--num_gpus={cfg.num_gpus} needs --strategy=mirrored (got {cfg.strategy})")
    if cfg.data == "files" and not cfg.cifar_dir:
        raise ConfigError("--data=files needs --cifar_dir (a folder with data_batch_*.bin and test_batch.bin)")
    if cfg.data in ("tfds", "synthetic") and cfg.cifar_dir:
        raise ConfigError(f"--cifar_dir is only read with --data=files or auto (got --data={cfg.data})")
    if cfg.target_accuracy is not None and cfg.data == "synthetic":
        raise ConfigError("--target_accuracy needs real data; --data=synthetic has no accuracy")
    if cfg.xla and cfg.sync_bn and cfg.cpu_replicas > 1:
        raise ConfigError(SYNC_BN_XLA_ERROR)
    if bool(cfg.arm) != bool(cfg.comparison):
        raise ConfigError("--arm and --comparison go together (sweeps.compare sets both)")

    if cfg.loop == "fit":
        _check_fit(cfg)
    if cfg.mode == "inference":
        _check_inference(cfg)
    _check_multi_worker(cfg)


SYNC_BN_XLA_ERROR = (
    "--sync_bn with --xla works on one replica only: TF 2.21 cannot all-reduce batch statistics inside "
    "the XLA-compiled forward pass; drop one of them"
)
FIT_XLA_ERROR = "--loop=fit --xla needs one replica (Keras compiles the whole step, which fails over replicas)"


def _check_fit(cfg):
    unsupported = [name for name, on in (
        ("--checkpoint_dir", cfg.checkpoint_dir), ("--target_accuracy", cfg.target_accuracy is not None),
        ("--eval_every_epochs", cfg.eval_every_epochs is not None), ("--profile_steps", cfg.profile_steps)) if on]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)}: supported with --loop=ctl only (fit is a baseline)")
    if cfg.xla and cfg.cpu_replicas > 1:
        raise ConfigError(FIT_XLA_ERROR)
    if cfg.inject_nan_at_step is not None:
        raise ConfigError("--inject_nan_at_step works with --loop=ctl only")
    if cfg.augment == "device":
        raise ConfigError("--augment=device works with --loop=ctl only (fit augments in tf.data)")
    if cfg.inject_inf_grad_at_step:
        raise ConfigError("--inject_inf_grad_at_step works with --loop=ctl only")


def parse_worker_fault(text):
    """`"1:6"` -> (1, 6, "exit"); `"1:6:stall"` -> (1, 6, "stall")."""
    parts = str(text).split(":")
    try:
        rank, step = int(parts[0]), int(parts[1])
        mode = parts[2] if len(parts) == 3 else "exit"
        if len(parts) not in (2, 3) or mode not in WORKER_FAULTS:
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError(f"--fail_worker_at_step takes RANK:STEP or RANK:STEP:stall; got {text!r}") from None
    if rank < 0 or step < 1:
        raise ConfigError(f"--fail_worker_at_step takes RANK:STEP[:stall] with RANK >= 0 and STEP >= 1; got {text!r}")
    return rank, step, mode


def global_replicas(cfg: RunConfig):
    """Replicas in sync over all workers of a multi-worker run: one per GPU, or one per CPU-only worker."""
    return cfg.workers * max(cfg.gpus_per_worker or 0, 1)


def _check_multi_worker(cfg):
    if cfg.strategy != MULTI_WORKER:
        given = [name for name, on in (
            ("--workers", cfg.workers is not None), ("--gpus_per_worker", cfg.gpus_per_worker is not None),
            ("--max_failures", cfg.max_failures != 0), ("--fail_worker_at_step", cfg.fail_worker_at_step is not None),
            ("--address", cfg.address is not None and not cfg.sweep)) if on]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --strategy=multi_worker (got {cfg.strategy})")
        return
    if cfg.workers is None:
        raise ConfigError("--strategy=multi_worker needs --workers K (worker processes, K >= 1)")
    _at_least(cfg, "workers", 1)
    for name in ("gpus_per_worker", "max_failures"):
        _at_least(cfg, name, 0)
    for name in ("cpus_per_worker", "collective_timeout_s"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"--{name} must be > 0; got {getattr(cfg, name)}")
    if cfg.num_gpus is not None or cfg.cpu_replicas != 1:
        raise ConfigError("--num_gpus and --cpu_replicas are for --strategy=mirrored; with multi_worker use "
                          "--workers and --gpus_per_worker")
    if cfg.loop != "ctl" or cfg.mode != "train":
        raise ConfigError("--strategy=multi_worker runs the custom loop only (--loop=ctl, --mode=train)")
    if cfg.batch_size % global_replicas(cfg):
        raise ConfigError(f"--batch_size={cfg.batch_size} is global and must divide evenly over "
                          f"{global_replicas(cfg)} replicas ({cfg.workers} workers x {max(cfg.gpus_per_worker or 0, 1)})")
    if cfg.address is not None:
        _check_address(cfg.address)
    if cfg.fail_worker_at_step is not None:
        rank, _, _ = parse_worker_fault(cfg.fail_worker_at_step)
        if rank >= cfg.workers:
            raise ConfigError(f"--fail_worker_at_step: rank {rank} but there are {cfg.workers} workers")


def _check_address(address):
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if address != "auto" and (not host or not port.isdigit()):
        raise ConfigError(f"--address={address!r}: give auto, ray://host:port or host:port")


def check_ray_request(cfg: RunConfig, cluster, nodes=None):
    """A multi-worker run's request against what the Ray cluster has (Ray would wait forever for the impossible).

    `cluster`: `ray.cluster_resources()`; `nodes`: each alive node's resources
    (every worker's bundle must fit on one node).
    """
    gpus = cfg.gpus_per_worker or 0
    need_cpu, need_gpu = cfg.workers * cfg.cpus_per_worker, cfg.workers * gpus
    have_cpu, have_gpu = cluster.get("CPU", 0), cluster.get("GPU", 0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise ConfigError(
            f"{cfg.workers} workers x ({cfg.cpus_per_worker:g} CPU, {gpus} GPU) need {need_cpu:g} CPUs and "
            f"{need_gpu} GPUs; the Ray cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs")
    if nodes is not None:
        free = sorted(([n.get("CPU", 0), n.get("GPU", 0)] for n in nodes), reverse=True)  # first fit, largest first
        for _ in range(cfg.workers):
            node = next((f for f in free if f[0] >= cfg.cpus_per_worker and f[1] >= gpus), None)
            if node is None:
                raise ConfigError(
                    f"{cfg.workers} workers x ({cfg.cpus_per_worker:g} CPU, {gpus} GPU) do not fit on the "
                    f"Ray cluster's nodes (each worker must fit on one node)")
            node[0] -= cfg.cpus_per_worker
            node[1] -= gpus


def check_sweep_options(name="sweep", repeats=1, max_concurrent=1, cpus_per_trial=None, scheduler="none",
                        strategies="", data="auto", eval_every_epochs=None):
    """The sweep-only flags of `sweeps.tune` (the trials' own are checked by `validate`)."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1; got {repeats}")
    if scheduler == "asha" and MULTI_WORKER in (strategies or ""):
        raise ConfigError("--scheduler=asha ranks trials by their evaluations, which multi_worker trials do not "
                          "report while they run; use --scheduler=none")
    if scheduler == "asha" and (data == "synthetic" or not eval_every_epochs):
        raise ConfigError("--scheduler=asha needs real data and --eval_every_epochs (it ranks trials by accuracy)")
    if max_concurrent < 1:
        raise ConfigError(f"--max_concurrent must be >= 1; got {max_concurrent}")
    if cpus_per_trial is not None and not cpus_per_trial > 0:
        raise ConfigError(f"--cpus_per_trial must be > 0; got {cpus_per_trial}")
    if not name or os.sep in name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name; got {name!r}")


def check_comparison(pairs=2, band_pct=5.0, fail_pct=None, base=None, new=None, arms=("", ""), unknown_vary=()):
    """The flags of `sweeps.compare`: either two arms (`--a`, `--b`) or two tables (`--base`, `--new`)."""
    if unknown_vary:
        raise ConfigError(f"--vary: {', '.join(unknown_vary)} is not a column the tables are matched on")
    if bool(base) != bool(new):
        raise ConfigError("--base and --new go together (two results tables to compare)")
    if base and any(arms):
        raise ConfigError("give either --a/--b (run a comparison) or --base/--new (compare two tables), not both")
    for name, path in (("--base", base), ("--new", new)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{name}: no results file {path}")
    if not base and not all(arms):
        raise ConfigError("give both arms (--a=\"FLAGS\" --b=\"FLAGS\") or two tables (--base, --new); see --help")
    if pairs < 2:
        raise ConfigError(f"--pairs must be >= 2 (an interval needs two pairs); got {pairs}")
    if not 0 < band_pct < 100:
        raise ConfigError(f"--band must be a percentage in (0, 100); got {band_pct}")
    if fail_pct is not None and not 0 <= fail_pct < 100:
        raise ConfigError(f"the failure threshold must be a percentage in [0, 100); got {fail_pct}")


def check_arms(a: RunConfig, b: RunConfig, a_text, b_text):
    """The two arms of a comparison (validated, common flags applied): they must differ, and run afresh."""
    if a.arm or b.arm:
        raise ConfigError("--arm is set by sweeps.compare itself; leave it out")
    if a.comparison != b.comparison:
        raise ConfigError("--comparison names the whole comparison: give it outside --a/--b")
    if a.checkpoint_dir:
        raise ConfigError("--checkpoint_dir: the runs of a comparison must each start afresh (leave it out)")
    if a.results != b.results:
        raise ConfigError("both arms write to one --results table (give --results outside --a/--b)")
    if _resolved_onednn(a) == _resolved_onednn(b):
        identical = [f.name for f in flag_fields() if getattr(a, f.name) != getattr(b, f.name) and f.name != "onednn"]
        if not identical:
            raise ConfigError(f"--a={a_text!r} and --b={b_text!r} make the same run; the arms must differ")


def _resolved_onednn(cfg: RunConfig):
    """`auto` is the environment variable if set, else on (what `bench.devices` does)."""
    if cfg.onednn != "auto":
        return cfg.onednn == "on"
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").lower() not in ("0", "false")


def check_sweep_storage(name, storage, resume, exists, is_folder):
    """--resume needs the sweep's folder; a new sweep must not reuse one."""
    if resume and not is_folder:
        raise ConfigError(f"--resume: no sweep named {name!r} under {storage}")
    if not resume and exists:
        raise ConfigError(f"a sweep named {name!r} exists under {storage}; pass --resume or a new --name")


def check_ray_connection(address, problem):
    """Refuse a Ray address that did not answer (`problem`: what went wrong, or None)."""
    if problem:
        raise ConfigError(f"--address={address}: {problem}")


def check_worker_setup(problem):
    """A multi-worker run's workers ran `check_setup` themselves: the driver refuses with the first one's reason."""
    if problem:
        raise ConfigError(problem)


def _check_inference(cfg):
    training_only = [name for name, on in (
        ("--loop=fit", cfg.loop == "fit"), ("--checkpoint_dir", cfg.checkpoint_dir),
        ("--target_accuracy", cfg.target_accuracy is not None), ("--eval_every_epochs", cfg.eval_every_epochs),
        ("--sync_bn", cfg.sync_bn), ("--inject_inf_grad_at_step", cfg.inject_inf_grad_at_step),
        ("--augment=device", cfg.augment == "device"), ("--inject_nan_at_step", cfg.inject_nan_at_step)) if on]
    if training_only:
        raise ConfigError(f"{', '.join(training_only)}: training options, not for --mode=inference")


def _check_outputs(cfg):
    if not cfg.results:
        raise ConfigError("--results must name a CSV file")
    _check_results_file(cfg.results)
    for name in ("checkpoint_dir", "tensorboard_dir", "profile_dir"):
        path = getattr(cfg, name)
        if path:
            if os.path.exists(path) and not os.path.isdir(path):
                raise ConfigError(f"--{name}={path} is not a writable folder (a file is there)")
            if not _can_create_in(path):
                raise ConfigError(f"--{name}={path} is not a writable folder")


def _nearest_existing(path):
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def _can_create_in(path):
    """Whether a file can really be created in `path` (or the nearest folder that exists above it).

    Actually creating one (then removing it) is the only honest test: as root,
    `os.access` says yes to read-only places such as /proc.
    """
    folder = path if os.path.isdir(path) else _nearest_existing(path)
    if not os.path.isdir(folder):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bench-probe-"):
            return True
    except OSError:
        return False


def _check_results_file(path):
    from bench import results  # no TensorFlow; results imports nothing of config

    try:
        results.check_results_path(path)  # a folder, not writable, another header
    except results.ResultsError as err:
        raise ConfigError(str(err)) from None
    folder = os.path.dirname(os.path.abspath(path))
    if not _can_create_in(folder):
        raise ConfigError(f"cannot write results under {_nearest_existing(folder)} (not a writable folder)")


# ---------------------------------------------------------------------------
# Resuming from a checkpoint folder

_UNFINGERPRINTED = ("results", "tensorboard_dir", "profile_steps", "profile_dir", "checkpoint_every_steps",
                    # how a multi-worker run reaches its result does not change which run it is
                    "address", "max_failures", "collective_timeout_s", "fail_worker_at_step",
                    "comparison", "arm", "sweep_position")  # labels of the run, not what it runs
RUN_FILE = "run.json"


def fingerprint(cfg: RunConfig):
    """The fields that must not change between the restarts of one checkpointed run (JSON-safe)."""
    kept = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _UNFINGERPRINTED}
    return json.loads(json.dumps(kept))


def saved_run(cfg: RunConfig):
    """The `run.json` of `cfg.checkpoint_dir` as a dict, or None."""
    if not cfg.checkpoint_dir:
        return None
    path = os.path.join(cfg.checkpoint_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def check_resume(cfg: RunConfig):
    """A checkpoint folder may only be resumed by the configuration that made it."""
    saved = saved_run(cfg)
    if saved is None:
        return
    mine = fingerprint(cfg)
    if saved.get("config") != mine:
        changed = sorted(k for k in mine if saved.get("config", {}).get(k) != mine[k])
        raise ConfigError(
            f"--checkpoint_dir={cfg.checkpoint_dir} holds a run with another configuration "
            f"(differs in: {', '.join(changed) or 'format'}); use a new folder"
        )


# ---------------------------------------------------------------------------
# Checks after the devices and the data are set up (facts, not TensorFlow)


@dataclasses.dataclass(frozen=True)
class SetupFacts:
    """What device setup and data resolution found, for `check_setup`."""

    gpus_visible: int
    device_kind: str  # "GPU" or "CPU": what the run trains on
    cpu_devices: int  # logical CPU devices the runtime has (or will have)
    num_replicas: int
    onednn: bool
    data_kind: str  # tfds | files | synthetic | unavailable
    data_problem: str = ""  # why the requested data cannot be read
    train_images: int = CIFAR_TRAIN_IMAGES


def check_setup(cfg: RunConfig, facts: SetupFacts):
    """Everything only the devices and the data can tell. Raises ConfigError; nothing has trained yet."""
    if cfg.onednn != "auto" and facts.onednn != (cfg.onednn == "on"):
        raise ConfigError(
            f"--onednn={cfg.onednn} cannot take effect: TensorFlow is already loaded in this process with oneDNN "
            f"{'on' if facts.onednn else 'off'} (it is fixed at import; use --onednn=auto or a new process)"
        )
    if facts.gpus_visible and cfg.cpu_replicas > 1:
        raise ConfigError(f"--cpu_replicas={cfg.cpu_replicas} is for machines without GPUs; {facts.gpus_visible} "
                          f"GPU(s) are visible (use --num_gpus)")
    if cfg.num_gpus is not None and cfg.num_gpus > facts.gpus_visible:
        raise ConfigError(f"--num_gpus={cfg.num_gpus} but only {facts.gpus_visible} GPU(s) are visible")
    if not facts.gpus_visible and facts.cpu_devices < cfg.cpu_replicas:
        raise ConfigError(f"--cpu_replicas={cfg.cpu_replicas}: this process already started TensorFlow with "
                          f"{facts.cpu_devices} CPU device(s)")
    if cfg.batch_size % facts.num_replicas:
        raise ConfigError(f"--batch_size={cfg.batch_size} is global and must divide evenly over "
                          f"{facts.num_replicas} replicas")
    if cfg.xla and cfg.sync_bn and facts.num_replicas > 1:
        raise ConfigError(SYNC_BN_XLA_ERROR)
    if cfg.loop == "fit" and cfg.xla and facts.num_replicas > 1:
        raise ConfigError(FIT_XLA_ERROR)
    if cfg.strategy == MULTI_WORKER and (cfg.gpus_per_worker or 0) > facts.gpus_visible:
        raise ConfigError(f"--gpus_per_worker={cfg.gpus_per_worker} but this worker sees {facts.gpus_visible} GPU(s)")
    if cfg.strategy == MULTI_WORKER and facts.num_replicas != global_replicas(cfg):
        raise ConfigError(f"MultiWorkerMirroredStrategy has {facts.num_replicas} replicas in sync, expected "
                          f"{global_replicas(cfg)} ({cfg.workers} workers); TF_CONFIG does not match --workers")
    if facts.data_kind == "unavailable":
        raise ConfigError(facts.data_problem)
    fault = cfg.inject_inf_grad_at_step
    if fault and fault[1] is not None and fault[1] >= facts.num_replicas:
        raise ConfigError(f"--inject_inf_grad_at_step={fault[0]}:{fault[1]}: there are only {facts.num_replicas} "
                          f"replicas (0..{facts.num_replicas - 1})")
    if cfg.target_accuracy is not None and facts.data_kind == "synthetic":
        raise ConfigError("--target_accuracy needs real data, but only synthetic data is available")
    total = train_steps(cfg, facts.train_images)
    check_steps(cfg, total)
    if cfg.loop == "fit":  # Keras fit runs whole steps_per_execution chunks: one must be timed after the warm-up
        chunk = (cfg.steps_per_loop or STEPS_PER_LOOP[facts.device_kind]) if facts.num_replicas == 1 else 1
        if total // chunk * chunk <= max(cfg.warmup_steps, chunk):
            raise ConfigError(f"--loop=fit runs chunks of {chunk} steps: {total} steps leave none to time after "
                              f"the warm-up ({cfg.warmup_steps}); give more --steps or a smaller --steps_per_loop")


def check_cluster(requested, available, what):
    """Refuse a request for more of a Ray resource ("CPU", "GPU") than the cluster has.

    Ray itself would wait for it forever.
    """
    for resource, amount in requested.items():
        have = available.get(resource, 0)
        if amount and amount > have:
            raise ConfigError(f"{what} asks for {amount:g} {resource}(s) but the Ray cluster has {have:g}")


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


def check_steps(cfg: RunConfig, total_steps: int):
    """The timed window must be non-empty (the first, compiling, step is never timed)."""
    if total_steps <= max(cfg.warmup_steps, 1):
        raise ConfigError(
            f"the run has {total_steps} steps but --warmup_steps={cfg.warmup_steps}: "
            f"steps must exceed the warm-up so something is timed"
        )


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Piecewise-constant SGD learning rate (He et al.): `values[i]` from step `starts[i]` on (0-based steps).

    This is the one description of the schedule; `bench.step.make_optimizer` turns
    it into the optimizer's learning-rate schedule.
    """

    starts: tuple  # first step of each piece; starts[0] == 0
    values: tuple


def lr_schedule(cfg: RunConfig, total_steps: int) -> Schedule:
    """lr 0.1 x batch/128, /10 at 50% and 75% of training; lr 0.01 warm-up for depth >= 110.

    Both recipes use the paper's shape; `paper` also fixes the length (64k
    iterations at batch 128), `bench` fits the shape to the run's steps.
    """
    scale = cfg.batch_size / PAPER_BATCH
    base = PAPER_LR * scale
    warm = math.ceil(WARMUP_LR_ITERATIONS / scale) if cfg.depth >= WARMUP_LR_MIN_DEPTH else 0
    if cfg.recipe == "bench":
        warm = min(warm, total_steps // 10)
    starts, values = [0], [WARMUP_LR * scale if warm else base]
    if warm:
        starts.append(warm)
        values.append(base)
    for i, fraction in enumerate(LR_DROPS, start=1):
        start = int(total_steps * fraction)
        if start > starts[-1]:
            starts.append(start)
            values.append(base * 0.1**i)
    return Schedule(tuple(starts), tuple(values))
