"""Checks before any work: every field and combination that needs no TensorFlow (`validate`).

Bad input raises `ConfigError`, which the entry points turn into one line on stderr and
exit status 2 with nothing written. What only the devices, the data or the Ray cluster can tell
is judged after they are set up, in `bench.config.setup_checks`.
"""

from __future__ import annotations

import math
import os
import tempfile

from bench.config import cifar_files, tuning
from bench.config.defaults import onednn_request
from bench.config.identity import comparable, fingerprint, saved_run
from bench.config.options import (
    MULTI_WORKER,
    RESTART_TIMEOUT_S,
    ConfigError,
    RunConfig,
    flag_fields,
    global_replicas,
    parse_fault_step,
    parse_profile_steps,
    parse_seed_list,
    parse_worker_fault,
)
from bench.config.recipe import train_steps
from resnet.spec import canonical_precision

INT32_MAX = 2**31 - 1  # TensorFlow takes counts, sizes and thread numbers as int32
MAX_STEPS = 10**9  # a run's length at most (about 11 days at 1 ms a step)
MAX_N = 1000  # depth 6n+2 <= 6002 (He et al. go to n=200)
SEED_RANGE = (0, 2**32 - 1)  # what NumPy's and Keras's seeding accept
MAX_TRAIN_IMAGES = 50_000  # CIFAR-10's training set: a bound on the steps --epochs can make
MAX_LR_SCALE = 100.0  # --lr_scale: 100 x the papers' lr (10 at batch 128) is far past divergence already
MAX_LABEL = 200  # --submission_org / --submission_platform: one short line of the MLPerf log


def validate(cfg: RunConfig) -> RunConfig:
    """Check everything that needs no TensorFlow; return the normalised config. Raises ConfigError."""
    _check_choices(cfg)
    _check_text(cfg)
    cfg = cfg.replace(
        precision=canonical_precision(cfg.precision),
        profile_steps=parse_profile_steps(cfg.profile_steps),
        inject_inf_grad_at_step=parse_fault_step(cfg.inject_inf_grad_at_step),
    )
    _check_numbers(cfg)
    _check_combinations(cfg)
    _check_outputs(cfg)
    cfg = _forced_divergence(cfg)
    if cfg.cifar_dir and cfg.data in ("files", "auto"):
        try:
            cifar_files.find_files(cfg.cifar_dir)
        except cifar_files.CifarFilesError as err:
            raise ConfigError(str(err)) from None
    check_resume(cfg)
    return cfg


def _check_choices(cfg):
    for f in flag_fields():
        allowed = f.metadata["choices"]
        value = getattr(cfg, f.name)
        if allowed and value not in allowed:
            raise ConfigError(f"--{f.name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _check_text(cfg):
    """No string option may hold a NUL character (no path can; the OS refuses it with a ValueError)."""
    for f in flag_fields():
        value = getattr(cfg, f.name)
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"--{f.name} contains a NUL character")
    for name in ("submission_org", "submission_platform"):  # one value on one line of the MLPerf log
        value = getattr(cfg, name)
        if not value.isprintable() or len(value) > MAX_LABEL:
            raise ConfigError(f"--{name} must be one printable line of at most {MAX_LABEL} characters; got {value!r}")
    if not cfg.submission_org.strip():
        raise ConfigError("--submission_org must not be empty (the MLPerf log names who ran the run)")


def _forced_divergence(cfg):
    """--diverge_seeds (testing): the listed seeds' runs get a non-finite loss at the first step after the warm-up."""
    seeds = parse_seed_list(cfg.diverge_seeds)
    low, high = SEED_RANGE
    if any(not low <= s <= high for s in seeds):
        raise ConfigError(f"--diverge_seeds: every seed must be in [{low}, {high}]; got {cfg.diverge_seeds!r}")
    if seeds and (cfg.loop != "ctl" or cfg.mode != "train"):
        raise ConfigError("--diverge_seeds works with --loop=ctl --mode=train only")
    if cfg.seed in seeds and cfg.inject_nan_at_step is None:
        return cfg.replace(inject_nan_at_step=max(cfg.warmup_steps, 1) + 1)
    return cfg


def _at_least(cfg, name, low, what=""):
    value = getattr(cfg, name)
    if value is not None and value < low:
        raise ConfigError(f"--{name} must be >= {low}{what}; got {value}")


def _at_most(cfg, name, high, what=""):
    value = getattr(cfg, name)
    if value is not None and value > high:
        raise ConfigError(f"--{name} must be <= {high}{what}; got {value}")


def _check_ranges(cfg):
    """Every number within what the code can represent: floats finite, integers within int32 (seed: uint32)."""
    _at_most(cfg, "n", MAX_N, " (depth 6n+2)")
    _at_most(cfg, "steps", MAX_STEPS, " (about 11 days at 1 ms a step)")
    for f in flag_fields():
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name} must be a finite number; got {value}")
        if isinstance(value, int) and f.name != "seed" and abs(value) > INT32_MAX:
            raise ConfigError(f"--{f.name}={value} is out of range (at most {INT32_MAX})")
    low, high = SEED_RANGE
    if not low <= cfg.seed <= high:
        raise ConfigError(f"--seed must be in [{low}, {high}] (NumPy's seed range); got {cfg.seed}")
    if cfg.epochs is not None and cfg.epochs * MAX_TRAIN_IMAGES / max(cfg.batch_size, 1) > MAX_STEPS:
        raise ConfigError(f"--epochs={cfg.epochs} makes more than {MAX_STEPS} steps at --batch_size={cfg.batch_size}")


def _check_numbers(cfg):
    _check_ranges(cfg)
    _at_least(cfg, "n", 1, " (depth 6n+2)")
    for name in ("batch_size", "cpu_replicas", "steps", "steps_per_loop", "checkpoint_every_steps"):
        _at_least(cfg, name, 1)
    for name in ("num_gpus", "warmup_steps", "intra_op_threads", "inter_op_threads"):
        _at_least(cfg, name, 0)
    for name in ("epochs", "eval_every_epochs"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name} must be > 0; got {value}")
    if not 0 < cfg.lr_scale <= MAX_LR_SCALE:
        raise ConfigError(
            f"--lr_scale must be in (0, {MAX_LR_SCALE:g}] (it multiplies the recipe's lr); got {cfg.lr_scale}"
        )
    if cfg.target_accuracy is not None and not 0 < cfg.target_accuracy <= 1:
        raise ConfigError(f"--target_accuracy is a fraction in (0, 1], e.g. 0.91; got {cfg.target_accuracy}")
    if cfg.steps is not None and cfg.epochs is not None:
        raise ConfigError("give --steps or --epochs, not both")
    if cfg.epochs is None:  # the length is known before the data is (--epochs: judged again by check_setup)
        check_steps(cfg, train_steps(cfg))


def _check_combinations(cfg):
    if cfg.batch_norm == "fused" and cfg.sync_bn:
        raise ConfigError(
            "--batch_norm=fused cannot synchronize batch statistics; use --batch_norm=keras or auto with --sync_bn"
        )
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
    check_xla_over_replicas(cfg, cfg.cpu_replicas)  # judged again with the real count after setup
    if bool(cfg.arm) != bool(cfg.comparison):
        raise ConfigError("--arm and --comparison go together (sweeps.compare sets both)")
    if cfg.autotune != "off" and cfg.strategy == MULTI_WORKER:
        raise ConfigError("--autotune probes single-process runs; give a multi-worker run its settings as flags")
    if cfg.autotune != "off":
        tuning.max_pairs()  # its budget, from the environment

    if cfg.loop == "fit":
        _check_fit(cfg)
    if cfg.mode == "inference":
        _check_inference(cfg)
    _check_scenario(cfg)
    _check_multi_worker(cfg)


def check_xla_over_replicas(cfg: RunConfig, replicas):
    """XLA over 2+ replicas fails for sync BN and Keras fit in TF 2.21 (WORKSPACE.md, "Traps": XLA over replicas)."""
    if not cfg.xla or replicas < 2:
        return
    if cfg.sync_bn:
        raise ConfigError(
            "--sync_bn with --xla works on one replica only: TF 2.21 cannot all-reduce batch "
            "statistics inside the XLA-compiled forward pass; drop one of them"
        )
    if cfg.loop == "fit":
        raise ConfigError(
            "--loop=fit --xla needs one replica (Keras compiles the whole step, which fails over replicas)"
        )


def _check_fit(cfg):
    unsupported = [
        name
        for name, on in (
            ("--checkpoint_dir", cfg.checkpoint_dir),
            ("--target_accuracy", cfg.target_accuracy is not None),
            ("--eval_every_epochs", cfg.eval_every_epochs is not None),
            ("--profile_steps", cfg.profile_steps),
        )
        if on
    ]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)}: supported with --loop=ctl only (fit is a baseline)")
    if cfg.inject_nan_at_step is not None:
        raise ConfigError("--inject_nan_at_step works with --loop=ctl only")
    if cfg.augment == "device":
        raise ConfigError("--augment=device works with --loop=ctl only (fit augments in tf.data)")
    if cfg.inject_inf_grad_at_step:
        raise ConfigError("--inject_inf_grad_at_step works with --loop=ctl only")


def _check_no_multi_worker_flags(cfg):
    given = [
        name
        for name, on in (
            ("--workers", cfg.workers is not None),
            ("--gpus_per_worker", cfg.gpus_per_worker is not None),
            ("--max_failures", cfg.max_failures != 0),
            ("--fail_worker_at_step", cfg.fail_worker_at_step is not None),
            ("--restart_timeout_s", cfg.restart_timeout_s != RESTART_TIMEOUT_S),
            ("--address", cfg.address is not None and not cfg.sweep),
            ("--launcher", cfg.launcher != "ray"),
        )
        if on
    ]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --strategy=multi_worker (got {cfg.strategy})")


def _check_multi_worker(cfg):
    if cfg.strategy != MULTI_WORKER:
        _check_no_multi_worker_flags(cfg)
        return
    if cfg.workers is None:
        raise ConfigError("--strategy=multi_worker needs --workers K (worker processes, K >= 1)")
    _at_least(cfg, "workers", 1)
    for name in ("gpus_per_worker", "max_failures"):
        _at_least(cfg, name, 0)
    for name in ("cpus_per_worker", "collective_timeout_s", "restart_timeout_s"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"--{name} must be > 0; got {getattr(cfg, name)}")
    if cfg.num_gpus is not None or cfg.cpu_replicas != 1:
        raise ConfigError(
            "--num_gpus and --cpu_replicas are for --strategy=mirrored; with multi_worker use "
            "--workers and --gpus_per_worker"
        )
    if cfg.loop != "ctl" or cfg.mode != "train":
        raise ConfigError("--strategy=multi_worker runs the custom loop only (--loop=ctl, --mode=train)")
    if cfg.batch_size % global_replicas(cfg):
        raise ConfigError(
            f"--batch_size={cfg.batch_size} is global and must divide evenly over "
            f"{global_replicas(cfg)} replicas ({cfg.workers} workers x {max(cfg.gpus_per_worker or 0, 1)})"
        )
    if cfg.address is not None:
        _check_address(cfg.address)
    if cfg.fail_worker_at_step is not None:
        rank, _, _ = parse_worker_fault(cfg.fail_worker_at_step)
        if rank >= cfg.workers:
            raise ConfigError(f"--fail_worker_at_step: rank {rank} but there are {cfg.workers} workers")
    if cfg.launcher == "tf_config":
        _check_plain_launcher(cfg)


def _check_plain_launcher(cfg):
    """--launcher=tf_config starts plain processes on this machine: nothing that needs a Ray cluster."""
    ray_only = [
        name
        for name, on in (
            ("--address", cfg.address is not None),
            ("--max_failures", cfg.max_failures != 0),
            ("--restart_timeout_s", cfg.restart_timeout_s != RESTART_TIMEOUT_S),
        )
        if on
    ]
    if ray_only:
        raise ConfigError(
            f"{', '.join(ray_only)}: Ray Train's; --launcher=tf_config starts plain processes on this machine "
            "(a lost worker fails the run)"
        )
    if cfg.sweep:
        raise ConfigError("--launcher=tf_config: a sweep's trials run under Ray Tune; use --launcher=ray there")


def _check_address(address):
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if address != "auto" and (not host or not port.isdigit()):
        raise ConfigError(f"--address={address!r}: give auto, ray://host:port or host:port")


def check_sweep_options(
    name="sweep",
    repeats=1,
    max_concurrent=1,
    cpus_per_trial=None,
    scheduler="none",
    strategies="",
    data="auto",
    eval_every_epochs=None,
    seeds=1,
):
    """The sweep-only flags of `sweeps.tune` (the trials' own are checked by `validate`). `seeds`: how many
    values the --seed axis has."""
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1; got {repeats}")
    if repeats > 1 and seeds > 1:  # seed 0 repeat 2 would be seed 1 repeat 1: two runs of a result, one seed
        raise ConfigError(
            "--seed takes one value with --repeats > 1 (the repeats run seed, seed+1, ...; no two runs of a "
            "configuration may share a seed)"
        )
    if scheduler == "asha" and MULTI_WORKER in (strategies or ""):
        raise ConfigError(
            "--scheduler=asha ranks trials by their evaluations, which multi_worker trials do not "
            "report while they run; use --scheduler=none"
        )
    if scheduler == "asha" and (data == "synthetic" or not eval_every_epochs):
        raise ConfigError("--scheduler=asha needs real data and --eval_every_epochs (it ranks trials by accuracy)")
    if max_concurrent < 1:
        raise ConfigError(f"--max_concurrent must be >= 1; got {max_concurrent}")
    if cpus_per_trial is not None and not cpus_per_trial > 0:
        raise ConfigError(f"--cpus_per_trial must be > 0; got {cpus_per_trial}")
    if not name or os.sep in name or name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name; got {name!r}")


def check_comparison(
    pairs=2,
    band_pct=5.0,
    fail_pct=None,
    base=None,
    new=None,
    arms=(None, None),
    unknown_vary=(),
    accuracy_band=0.5,
    max_pairs=1000,
    other_mode=(),
    out_files=(),
):
    """The flags of `sweeps.compare`: either two arms (`--a`, `--b`) or two tables (`--base`, `--new`).

    `arms`: the texts of --a and --b, None where not given ("" is an arm of the defaults); `other_mode`:
    the flags given that belong to the other way of comparing; `out_files`: what table against table writes.
    """
    if unknown_vary:
        raise ConfigError(f"--vary: {', '.join(unknown_vary)} is not a column the tables are matched on")
    if bool(base) != bool(new):
        raise ConfigError("--base and --new go together (two results tables to compare)")
    if base and any(a is not None for a in arms):
        raise ConfigError("give either --a/--b (run a comparison) or --base/--new (compare two tables), not both")
    for name, path in (("--base", base), ("--new", new)):
        if path and not_a_table_file(path):
            raise ConfigError(f"{name}: {not_a_table_file(path)}")
    if not base and any(a is None for a in arms):
        raise ConfigError('give both arms (--a="FLAGS" --b="FLAGS") or two tables (--base, --new); see --help')
    if other_mode:
        mode, other = ("--base/--new", "--a/--b (a run comparison)") if base else ("--a/--b", "--base/--new (tables)")
        raise ConfigError(
            f"{', '.join(other_mode)}: not for {mode}; {'they are' if len(other_mode) > 1 else 'it is'} for {other}"
        )
    if not 2 <= pairs <= max_pairs:
        raise ConfigError(
            f"--pairs must be in [2, {max_pairs}] (an interval needs two pairs; beyond {max_pairs} the effect is "
            f"smaller than the noise can show); got {pairs}"
        )
    if not 0 < band_pct < 100:
        raise ConfigError(f"--band must be a percentage in (0, 100); got {band_pct}")
    if not 0 < accuracy_band < 100:
        raise ConfigError(f"--accuracy_band must be percentage points in (0, 100); got {accuracy_band}")
    if fail_pct is not None and not 0 <= fail_pct < 100:
        raise ConfigError(f"the failure threshold must be a percentage in [0, 100); got {fail_pct}")
    for path in out_files:
        _check_output_file(path)


def _check_output_file(path):
    """`path` can be written, its folders created if missing: checked without writing anything there."""
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ConfigError(f"cannot write {path}: something other than a file is there")
    existing = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(existing):
        raise ConfigError(f"cannot write {path}: {existing} is not a folder")
    if not _can_create_in(existing):
        raise ConfigError(f"cannot write {path}: {existing} is not a writable folder")


def check_arms(a: RunConfig, b: RunConfig):
    """The two arms of a comparison (validated, common flags applied): one table, and each run afresh."""
    if a.arm or b.arm:
        raise ConfigError("--arm is set by sweeps.compare itself; leave it out")
    if a.comparison != b.comparison:
        raise ConfigError("--comparison names the whole comparison: give it outside --a/--b")
    if a.checkpoint_dir or b.checkpoint_dir:
        raise ConfigError("--checkpoint_dir: the runs of a comparison must each start afresh (leave it out)")
    if a.results != b.results:
        raise ConfigError("both arms write to one --results table (give --results outside --a/--b)")


def check_arms_differ(a: RunConfig, b: RunConfig, a_text, b_text):
    """Refuse arms that make the same run. `a`, `b`: what each run will be on this machine, its defaults
    resolved where that can be known before it starts (`bench.runner.benchmark.expected_setup`): `--noxla`
    and `--steps_per_loop 10` are one run on a CPU, `--batch_norm auto` and the kernel it means are one."""
    differing = [f.name for f in flag_fields() if _as_run(a, f.name) != _as_run(b, f.name)]
    if not differing:
        raise ConfigError(
            f"--a={a_text!r} and --b={b_text!r} make the same run on this machine (every setting resolves "
            f"alike); the arms must differ"
        )


def _as_run(cfg: RunConfig, name):
    if name == "onednn" and cfg.autotune == "off":  # `auto` is what the run will request
        return onednn_request(cfg)
    return getattr(cfg, name)


def check_sweep_storage(name, storage, resume, exists, is_folder):
    """--resume needs the sweep's folder; a new sweep must not reuse one."""
    if resume and not is_folder:
        raise ConfigError(f"--resume: no sweep named {name!r} under {storage}")
    if not resume and exists:
        raise ConfigError(f"a sweep named {name!r} exists under {storage}; pass --resume or a new --name")


def _check_inference(cfg):
    training_only = [
        name
        for name, on in (
            ("--loop=fit", cfg.loop == "fit"),
            ("--checkpoint_dir", cfg.checkpoint_dir and cfg.scenario == "none"),  # LoadGen runs read weights there
            ("--target_accuracy", cfg.target_accuracy is not None),
            ("--eval_every_epochs", cfg.eval_every_epochs),
            ("--sync_bn", cfg.sync_bn),
            ("--inject_inf_grad_at_step", cfg.inject_inf_grad_at_step),
            ("--augment=device", cfg.augment == "device"),
            ("--inject_nan_at_step", cfg.inject_nan_at_step),
        )
        if on
    ]
    if training_only:
        raise ConfigError(f"{', '.join(training_only)}: training options, not for --mode=inference")


# LoadGen's settings are integers in ms / ns: beyond these a value is a typo, and LoadGen would overflow on it
SCENARIO_BOUNDS = {"target_qps": 1e6, "target_latency_ms": 3.6e6, "min_duration_s": 604800.0}  # an hour; a week
SCENARIO_FIELDS = {  # --scenario's own flags: the scenario each applies to (None: every scenario)
    "loadgen_mode": None,
    "min_duration_s": None,
    "min_query_count": None,
    "target_qps": "Server",
    "target_latency_ms": "Server",
    "samples_per_query": "MultiStream",
}


def _check_scenario(cfg):
    """--scenario and its flags: MLPerf LoadGen drives one device's forward passes (bench/runner/scenario.py).

    A sweep may give a scenario's flags to trials of other scenarios (`--scenario SingleStream,Server
    --target_qps 200`): there a flag that does not apply is left unused, as `--address` is.
    """
    given = [name for name in SCENARIO_FIELDS if getattr(cfg, name) != RunConfig.__dataclass_fields__[name].default]
    if cfg.scenario == "none":
        if given and not cfg.sweep:
            raise ConfigError(f"{', '.join('--' + n for n in given)}: only with --scenario (MLPerf LoadGen runs)")
        return
    if cfg.mode != "inference":
        raise ConfigError(f"--scenario={cfg.scenario} runs forward passes: it needs --mode=inference")
    misplaced = [n for n in given if SCENARIO_FIELDS[n] not in (None, cfg.scenario)]
    if misplaced and not cfg.sweep:
        raise ConfigError(
            ", ".join(f"--{n} is for --scenario={SCENARIO_FIELDS[n]}" for n in misplaced) + f" (got {cfg.scenario})"
        )
    for name, most in SCENARIO_BOUNDS.items():
        value = getattr(cfg, name)
        if value is not None and not 0 < value <= most:
            raise ConfigError(f"--{name} must be > 0 and at most {most:g}; got {value}")
    for name in ("samples_per_query", "min_query_count"):
        _at_least(cfg, name, 1)
    if cfg.scenario == "Server" and cfg.target_qps is None:
        raise ConfigError("--scenario=Server needs --target_qps (the queries per second LoadGen sends)")
    if cfg.loadgen_mode != "performance" and cfg.data == "synthetic":
        raise ConfigError(
            f"--loadgen_mode={cfg.loadgen_mode} measures top-1 accuracy: it needs real data, not synthetic"
        )
    if cfg.strategy not in ("default", "one_device"):
        raise ConfigError(f"--scenario runs one device's forward function; --strategy={cfg.strategy} is not supported")
    length = [
        name
        for name, on in (
            ("--steps", cfg.steps is not None),
            ("--epochs", cfg.epochs is not None),
            ("--profile_steps", cfg.profile_steps),
            ("--tensorboard_dir", cfg.tensorboard_dir),
        )
        if on
    ]
    if length and not cfg.sweep:  # a sweep's quick-look trials may need them
        raise ConfigError(
            f"{', '.join(length)}: LoadGen decides a scenario run's length (--min_duration_s, --min_query_count)"
        )
    if cfg.checkpoint_dir:
        _check_weights_folder(cfg)


def _check_weights_folder(cfg):
    """A scenario run reads its weights from --checkpoint_dir (never writes there): a checkpoint of this model."""
    folder = cfg.checkpoint_dir
    if not os.path.isfile(os.path.join(folder, "checkpoint")):
        raise ConfigError(f"--checkpoint_dir={folder}: no checkpoint there to read the weights from")
    saved = saved_run(cfg.replace(scenario="none"))  # the run.json of the run that trained them, if any
    if saved:
        theirs = saved["config"]
        differ = [k for k in ("n", "block", "shortcut") if k in theirs and theirs[k] != getattr(cfg, k)]
        if differ:
            raise ConfigError(
                f"--checkpoint_dir={folder} holds the weights of another model ("
                + ", ".join(f"--{k}={theirs[k]}" for k in differ)
                + ")"
            )


def _check_outputs(cfg):
    if not cfg.results:
        raise ConfigError("--results must name a CSV file")
    _check_results_file(cfg.results)
    for name in ("checkpoint_dir", "tensorboard_dir", "profile_dir"):
        if name == "checkpoint_dir" and cfg.scenario != "none":
            continue  # read, never written (_check_weights_folder)
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


def check_results_table(path):
    """A results path another command reads and writes beside (`bench.check`): the place can take files, and an
    existing file is a regular text file (whether it is a results table: `bench.results.table.check_header`)."""
    if not path:
        raise ConfigError("--results must name a CSV file")
    _check_results_file(path)


def _check_results_file(path):
    """The results path can be created; whether an existing file is a results table is
    `bench.results.table.check_results_path`'s to say (run after `validate`)."""
    if os.path.isdir(path):
        raise ConfigError(f"results path {os.path.abspath(path)} is a folder; give a CSV file path")
    folder = os.path.dirname(os.path.realpath(path))  # a symlink's target gets the rows: its folder must take them
    if not _can_create_in(folder):
        raise ConfigError(f"cannot write results under {_nearest_existing(folder)} (not a writable folder)")
    if os.path.lexists(path):
        _check_text_file(path)


def _check_text_file(path):
    """An existing results path is a regular file (a FIFO would block the read that checks its header).

    Whether it is a results table (text, our header) is `bench.results.table.check_results_path`'s to say.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"results path {os.path.abspath(path)} is not a regular file; give a CSV file path")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ConfigError(
            f"results file {os.path.abspath(path)} cannot be read ({err.strerror or err}); use a new --results file"
        ) from None


def check_resume(cfg: RunConfig):
    """A checkpoint folder may only be resumed by the configuration that made it."""
    saved = saved_run(cfg)
    if saved is None:
        return
    mine, theirs = fingerprint(cfg), comparable(saved["config"])
    if theirs != mine:
        changed = sorted(k for k in mine.keys() | theirs.keys() if theirs.get(k) != mine.get(k))
        raise ConfigError(
            f"--checkpoint_dir={cfg.checkpoint_dir} holds a run with another configuration "
            f"(differs in: {', '.join(changed) or 'format'}); use a new folder"
        )


def check_steps(cfg: RunConfig, total_steps: int):
    """A run of at most MAX_STEPS whose profile window lies inside it and whose timed window is non-empty
    (the first, compiling, step, the warm-up and the profiled steps are never timed)."""
    if total_steps > MAX_STEPS:
        raise ConfigError(f"the run has {total_steps} steps; at most {MAX_STEPS} (about 11 days at 1 ms a step)")
    warm_end = max(cfg.warmup_steps, 1)
    if total_steps <= warm_end:
        raise ConfigError(
            f"the run has {total_steps} steps but --warmup_steps={cfg.warmup_steps}: "
            f"steps must exceed the warm-up so something is timed"
        )
    if not cfg.profile_steps:
        return
    first, last = cfg.profile_steps
    if last > total_steps:
        raise ConfigError(
            f"--profile_steps={first},{last} ends after the run's last step ({total_steps}); "
            f"the profiler would never stop"
        )
    profiled = max(0, last - max(first - 1, warm_end))  # profiled steps after the warm-up are not timed either
    if total_steps - warm_end - profiled <= 0:
        raise ConfigError(
            f"--profile_steps={first},{last} covers every step after the warm-up "
            f"({cfg.warmup_steps}) of the run's {total_steps}: nothing would be timed"
        )


def not_a_table_file(path, real=None):
    """Why a results table to read at `path` (`real`: where its link points) is no file there, or ""."""
    real = real or path
    if os.path.isfile(real):
        return ""
    if os.path.isdir(real):
        return f"results path {path} is a folder, not a results file"
    return f"results path {path} is not a regular file" if os.path.lexists(real) else f"no results file {path}"
