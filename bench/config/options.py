"""Options: the frozen `RunConfig` whose fields declare their own flags, and the parsing of their values.

Each field carries its flag: help text, allowed values, how a sweep may vary it
(`option(...)` metadata). `bench.config.cli` builds the flags of `python -m bench.run`
and `python -m sweeps.tune` from these fields, so a new option is one edit here
(and its check in `bench.config.validation`). No TensorFlow.
"""

from __future__ import annotations

import dataclasses

from resnet import spec

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
MULTI_WORKER = "multi_worker"  # MultiWorkerMirroredStrategy over worker processes (bench/distributed/)
LAUNCHERS = ("ray", "tf_config")  # how a multi-worker run starts its workers: Ray Train, or plain processes
WORKER_FAULTS = ("exit", "stall")
RESTART_TIMEOUT_S = 120.0  # --restart_timeout_s's default: a lost node without a spare fails the run after this
DATA_KINDS = ("auto", "tfds", "files", "synthetic")
RECIPES = ("bench", "paper")
LOOPS = ("ctl", "fit")
BATCH_NORMS = ("auto",) + spec.BATCH_NORMS  # auto: see bench.config.defaults.resolve_batch_norm
ONEDNN = ("auto", "on", "off")  # oneDNN CPU kernels; auto: $TF_ENABLE_ONEDNN_OPTS if set, else on
AUGMENT = ("auto", "host", "device")  # auto: device when training on GPUs, host on CPUs
MODES = ("train", "inference")
AUTOTUNE = ("off", "on", "refresh")  # on: probe once per machine and setting, then use the cached winner
COMPARISON_ARMS = ("", "A", "B")  # empty: not part of an A/B comparison
# MLPerf Inference scenarios, run by MLPerf's LoadGen (bench/runner/scenario.py); none: the quick look
SCENARIOS = ("none", "SingleStream", "MultiStream", "Server", "Offline")
LOADGEN_MODES = ("performance", "accuracy", "both")


class ConfigError(ValueError):
    """Bad user input: reported as one line, exit status 2, nothing written."""


def flag_text(value):
    """A value as it is written on a command line: booleans lower-case (`true`), the rest as `str`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def option(
    default, help, *, kind=None, choices=None, axis=True, sweep_default=None, parse=None, testing=False, bare=None
):
    """A RunConfig field that declares its flag.

    kind: int | float | bool | str (default: the type of `default`); choices: allowed values;
    axis: a sweep may give a comma list (False for paths and other single values);
    sweep_default: a sweep's default list where it differs (the papers' study);
    parse: text -> value for fields whose flag is a string of another shape;
    testing: fault injection for tests, left out of `--help`;
    bare: the value of the flag given without one (`--autotune` is `--autotune=on`).
    """
    meta = dict(
        help=help,
        kind=kind or type(default),
        choices=choices,
        axis=axis,
        sweep_default=sweep_default,
        parse=parse,
        testing=testing,
        bare=bare,
    )
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
        raise ConfigError(f"--profile_steps must be two step numbers 'FIRST,LAST' (e.g. 20,25); got {text!r}") from None
    if not 1 <= first <= last:
        raise ConfigError(f"--profile_steps needs 1 <= FIRST <= LAST; got {text!r}")
    return (first, last)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    mode: str = option(
        "train",
        "train: training throughput and accuracy; inference: forward passes only "
        "(images/sec and per-batch latency, each batch its own timed window: the quick look; "
        "--scenario runs MLPerf's LoadGen, the measurement to publish).",
        choices=MODES,
    )
    # MLPerf LoadGen (--mode=inference --scenario=...): bench/runner/scenario.py
    scenario: str = option(
        "none",
        "--mode=inference: run the model through MLPerf's LoadGen in this scenario (SingleStream: one image "
        "per query, p90 latency; MultiStream: --samples_per_query per query, p99; Server: Poisson arrivals at "
        "--target_qps under --target_latency_ms; Offline: all at once, samples/sec). none: the quick look "
        "(fixed batches, one per timed window).",
        choices=SCENARIOS,
    )
    loadgen_mode: str = option(
        "performance",
        "--scenario: LoadGen's performance run, its accuracy run over the whole test set (top-1 checked "
        "against the training-mode evaluation of the same weights), or both.",
        choices=LOADGEN_MODES,
    )
    target_qps: float | None = option(
        None, "--scenario=Server: the queries per second LoadGen sends (Poisson arrivals); required.", kind=float
    )
    target_latency_ms: float | None = option(
        None,
        "--scenario=Server: the latency bound its 99th percentile must meet (default: MLPerf's, 10 ms).",
        kind=float,
    )
    samples_per_query: int | None = option(
        None, "--scenario=MultiStream: images per query (default: MLPerf's, 8).", kind=int
    )
    min_duration_s: float | None = option(
        None,
        "--scenario: LoadGen's minimum test duration (default: MLPerf's, 600 s); shorter marks the row shortened.",
        kind=float,
    )
    min_query_count: int | None = option(
        None,
        "--scenario: LoadGen's minimum query count (default: MLPerf's for the scenario); fewer marks the row "
        "shortened.",
        kind=int,
    )
    # devices and strategy
    strategy: str = option(
        "default",
        "tf.distribute strategy (multi_worker: MultiWorkerMirroredStrategy over "
        "--workers processes launched by Ray Train, on one node or many).",
        choices=STRATEGIES,
    )
    num_gpus: int | None = option(
        None,
        "GPUs to use with --strategy=mirrored (default: all visible; in a "
        "sweep: the GPUs Ray reserves for each trial).",
        kind=int,
    )
    cpu_replicas: int = option(1, "Without GPUs: split the CPU into this many logical devices (replicas).")
    workers: int | None = option(
        None,
        "--strategy=multi_worker: number of worker processes K (>= 1), placed by Ray on one node or many.",
        kind=int,
    )
    gpus_per_worker: int | None = option(
        None, "--strategy=multi_worker: GPUs per worker (default 0: each worker is one CPU replica).", kind=int
    )
    cpus_per_worker: float = option(
        1.0,
        "--strategy=multi_worker: CPUs Ray reserves per worker; the worker runs "
        "that many TensorFlow intra-op threads (rounded up) unless "
        "--intra_op_threads says otherwise.",
    )
    address: str | None = option(
        None,
        "Ray cluster address (auto, ray://host:port or host:port) for "
        "--strategy=multi_worker and for sweeps; default: start a local Ray for "
        "the run and stop it after.",
        kind=str,
        axis=False,
    )
    max_failures: int = option(
        0, "--strategy=multi_worker: worker-group restarts Ray Train may make (each resumes from --checkpoint_dir)."
    )
    collective_timeout_s: float = option(
        600.0,
        "--strategy=multi_worker: a collective (all-reduce) that waits "
        "longer than this fails the run instead of hanging.",
    )
    restart_timeout_s: float = option(
        RESTART_TIMEOUT_S,
        "--strategy=multi_worker: after a lost worker or node, "
        "how long a restart may wait for the cluster to place the "
        "workers again; then the run fails with a row.",
    )
    launcher: str = option(
        "ray",
        "--strategy=multi_worker: how the workers start. ray: Ray Train's TensorflowTrainer (one node or many); "
        "tf_config: plain processes on this machine, each given TF_CONFIG with 127.0.0.1 ports (no Ray: what "
        "Ray costs is the difference).",
        choices=LAUNCHERS,
        axis=False,
    )
    # model
    n: int = option(3, "Blocks per stage: depth 6n+2 (9n+2 for bottleneck).", sweep_default="3,5,7,9,18")
    block: str = option("preact", "Residual block type.", choices=spec.BLOCKS, sweep_default="preact,original")
    shortcut: str = option("B", "Shortcut option of He et al. 2015.", choices=spec.SHORTCUTS, sweep_default="A,B,C")
    sync_bn: bool = option(False, "Synchronized batch norm (batch statistics all-reduced over replicas).")
    batch_norm: str = option(
        "auto",
        "BN implementation: keras (keras.layers.BatchNormalization) or fused (the "
        "same layer on TF's fused kernel: oneDNN on CPUs, cuDNN on GPUs). auto: fused, "
        "keras with --sync_bn and for --mode=inference on CPUs.",
        choices=BATCH_NORMS,
    )
    # numerics
    precision: str = option(
        "float32",
        "Keras dtype policy (fp32, fp16 and bf16 are accepted too).",
        choices=spec.PRECISIONS + tuple(spec.PRECISION_ALIASES),
    )
    xla: bool | None = option(
        None,
        "XLA: on one replica the whole step is compiled, over several the "
        "forward/backward. Unset: on GPUs where valid (not --sync_bn over replicas, "
        "not --loop=fit over replicas); on CPUs off for training (measured slower "
        "there), on for --mode=inference.",
        kind=bool,
    )
    intra_op_threads: int | None = option(None, "TensorFlow intra-op threads (default: TensorFlow's choice).", kind=int)
    inter_op_threads: int | None = option(None, "TensorFlow inter-op threads (default: TensorFlow's choice).", kind=int)
    onednn: str = option(
        "auto",
        "oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS). auto: the environment variable if "
        "set, else on. TensorFlow turns them on by itself only on CPUs with AVX-512 "
        "VNNI/BF16 or AMX.",
        choices=ONEDNN,
    )
    # schedule
    batch_size: int = option(128, "Global batch size (divided evenly over the replicas).")
    steps: int | None = option(None, "Training steps (default: the recipe's).", kind=int)
    epochs: float | None = option(None, "Training epochs instead of --steps.", kind=float)
    warmup_steps: int = option(10, "Steps excluded from timing (the first, compiling, step always is).")
    steps_per_loop: int | None = option(
        None,
        "Steps run inside one tf.function call (one timed window). "
        "Unset: 10 on CPUs, 50 on GPUs (a GPU step is launch-bound).",
        kind=int,
    )
    recipe: str = option("bench", "bench: short throughput run; paper: He et al. schedule.", choices=RECIPES)
    lr_scale: float = option(
        1.0,
        "Multiplies every learning rate of the recipe's schedule (1: the papers' 0.1 x batch/128; "
        "a convergence study's knob, e.g. 0.1 for a deliberately slower one).",
    )
    loop: str = option("ctl", "ctl: the custom training loop; fit: Keras model.fit (a baseline).", choices=LOOPS)
    # data
    data: str = option("auto", "Input: tfds, CIFAR binary files, synthetic, or auto.", choices=DATA_KINDS)
    cifar_dir: str | None = option(None, "Folder with the CIFAR-10 binary files (or its parent).", kind=str, axis=False)
    tfds_dir: str | None = option(None, "tensorflow-datasets data folder.", kind=str, axis=False)
    # evaluation
    target_accuracy: float | None = option(
        None, "Stop when test accuracy reaches this fraction; record the time.", kind=float
    )
    eval_every_epochs: float | None = option(None, "Evaluate every this many epochs (default: at the end).", kind=float)
    # reproducibility and outputs
    seed: int = option(0, "Random seed (a sweep's --repeats K runs seed, seed+1, ...).")
    deterministic: bool = option(False, "Deterministic ops (slower).")
    results: str = option("results/summary.csv", "Results CSV to append the row to.", axis=False)
    checkpoint_dir: str | None = option(
        None,
        "Checkpoint here; a rerun with the same flags resumes (in a sweep: one subfolder per trial).",
        kind=str,
        axis=False,
    )
    checkpoint_every_steps: int | None = option(None, "Checkpoint cadence (default: each eval, or 50 steps).", kind=int)
    tensorboard_dir: str | None = option(
        None, "Write TensorBoard summaries here (in a sweep: one subfolder per trial).", kind=str, axis=False
    )
    profile_steps: tuple | None = option(
        None,
        "FIRST,LAST: TF profiler trace of these steps (not timed).",
        kind=str,
        axis=False,
        parse=parse_profile_steps,
    )
    profile_dir: str | None = option(
        None, "Where the profiler trace goes (default: <tensorboard_dir>/profile).", kind=str, axis=False
    )
    augment: str = option(
        "auto",
        "Where the pad-crop-flip augmentation runs: host (tf.data, per image) or device "
        "(batched inside the step; uint8 batches cross to the device). auto: device "
        "on GPUs, host on CPUs.",
        choices=AUGMENT,
    )
    autotune: str = option(
        "off",
        "Before the run, probe the settings left unset that do not change the computation "
        "(oneDNN, XLA, BN kernel, steps per call, thread pools, augmentation placement on "
        "GPUs), each in short bench.run processes compared in ABBA pairs, and run with "
        "the fastest; the winner is cached per machine and setting. --autotune is "
        "--autotune=on; refresh probes again.",
        choices=AUTOTUNE,
        axis=False,
        bare="on",
    )
    # the MLPerf log of the run (results/mlperf/<run_id>.log): who ran it, on what
    submission_org: str = option(
        "unaffiliated", "MLPerf log: the organisation the run is submitted by (submission_org).", axis=False
    )
    submission_platform: str = option(
        "",
        "MLPerf log: the platform's name (submission_platform); default: replicas x device, "
        "e.g. '2xGPU: NVIDIA H100 80GB HBM3'.",
        axis=False,
    )
    # A/B comparisons (python -m sweeps.compare sets both; not sweep axes)
    comparison: str = option("", "Id of the A/B comparison this run belongs to (sweeps.compare sets it).", axis=False)
    arm: str = option(
        "", "The arm of --comparison this run is: A or B (sweeps.compare sets it).", choices=COMPARISON_ARMS, axis=False
    )
    # fault injection for tests
    inject_nan_at_step: int | None = option(
        None, "Testing: make the loss non-finite at this step.", kind=int, axis=False, testing=True
    )
    fail_worker_at_step: str | None = option(
        None,
        "Testing: 'RANK:STEP' makes that worker exit abruptly (os._exit) the first time the run reaches STEP, "
        "'RANK:STEP:stall' makes it stop responding; once per run, restarts included.",
        kind=str,
        axis=False,
        testing=True,
    )
    inject_inf_grad_at_step: tuple | None = option(
        None,
        "Testing: STEP[:REPLICA]: make that replica's (default: every replica's) gradients infinite at "
        "this step (mixed_float16: the step must be skipped on every replica).",
        kind=str,
        axis=False,
        parse=parse_fault_step,
        testing=True,
    )
    diverge_seeds: str | None = option(
        None,
        "Testing: SEED[,SEED...]: a run whose --seed is listed makes its loss non-finite at the first step "
        "after the warm-up (a run forced not to converge, e.g. one repeat of a sweep).",
        kind=str,
        axis=False,
        testing=True,
    )
    # set by the sweep driver, not flags
    sweep: str = dataclasses.field(default="", metadata={"internal": True})
    trial_key: str = dataclasses.field(default="", metadata={"internal": True})
    sweep_position: int = dataclasses.field(default=0, metadata={"internal": True})  # 1-based place in the order
    tuned: str = dataclasses.field(default="", metadata={"internal": True})  # set by bench.runner.autotune

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
        values = [spec.canonical_precision(v) for v in values]
    return list(dict.fromkeys(values))  # drop repeats, keep order


def parse_seed_list(text):
    """`"1,3"` -> (1, 3) (`--diverge_seeds`). Empty -> ()."""
    if text in (None, ""):
        return ()
    try:
        return tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ConfigError(f"--diverge_seeds takes SEED[,SEED...] (e.g. 1,3); got {text!r}") from None


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


MULTISTREAM_SAMPLES = 8  # MLPerf's MultiStream samples per query (LoadGen's default; tests/test_scenario.py checks)


def scenario_batch(cfg: RunConfig):
    """The largest batch a `--scenario` run computes: one image (SingleStream), a query (MultiStream, at most
    --batch_size), or up to --batch_size of what is queued (Server, Offline: dynamic batching)."""
    if cfg.scenario == "SingleStream":
        return 1
    if cfg.scenario == "MultiStream":
        return min(cfg.batch_size, cfg.samples_per_query or MULTISTREAM_SAMPLES)
    return cfg.batch_size


def global_replicas(cfg: RunConfig):
    """Replicas in sync over all workers of a multi-worker run: one per GPU, or one per CPU-only worker."""
    return cfg.workers * max(cfg.gpus_per_worker or 0, 1)
