"""python -m sweeps.tune: a Ray Tune sweep of benchmark runs into results/summary.csv.

Every trial calls `bench.loop.run` (the same code as `python -m bench.run`) in its own Ray worker
process and reports its row with `ray.tune.report`; only this driver writes rows, one per trial,
deduplicated by the trial's stable run id. Exit status: 0 every trial ok, 1 some trial not ok,
2 bad input (nothing started).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys

from absl import app, flags

from bench import cli, config, results
from bench.config import ConfigError, RunConfig
from sweeps import space

FLAGS = flags.FLAGS

# axes (comma lists); the defaults reproduce the CIFAR study of He et al. 2015
flags.DEFINE_string("n", "3,5,7,9,18", "Blocks per stage (depth 6n+2), comma list.")
flags.DEFINE_string("shortcut", "A,B,C", "Shortcut options, comma list.")
flags.DEFINE_string("block", "preact,original", "Block types, comma list.")
flags.DEFINE_string("precision", "float32", "Precisions, comma list (fp32, bf16, fp16 accepted).")
flags.DEFINE_string("xla", "false", "XLA settings, comma list of true/false.")
flags.DEFINE_string("batch_size", "128", "Global batch sizes, comma list.")
flags.DEFINE_string("strategy", "default", "Strategies, comma list.")
flags.DEFINE_integer("repeats", 1, "Seeds per configuration (seed, seed+1, ...).")
# the trial budget, as in bench.run
flags.DEFINE_integer("steps", None, "Training steps per trial.")
flags.DEFINE_float("epochs", None, "Training epochs per trial instead of --steps.")
flags.DEFINE_enum("recipe", "bench", config.RECIPES, "Training recipe.")
flags.DEFINE_integer("warmup_steps", 10, "Untimed steps per trial.")
flags.DEFINE_integer("steps_per_loop", 10, "Steps per tf.function call.")
flags.DEFINE_float("target_accuracy", None, "Stop a trial at this test accuracy.")
flags.DEFINE_float("eval_every_epochs", None, "Evaluation cadence in epochs.")
flags.DEFINE_enum("data", "auto", config.DATA_KINDS, "Input data, as in bench.run.")
flags.DEFINE_string("cifar_dir", None, "CIFAR-10 binary files folder.")
flags.DEFINE_string("tfds_dir", None, "tensorflow-datasets folder.")
flags.DEFINE_integer("seed", 0, "First seed.")
flags.DEFINE_boolean("sync_bn", False, "Synchronized batch norm in every trial.")
flags.DEFINE_enum("onednn", "auto", config.ONEDNN, "oneDNN CPU kernels in every trial, as in bench.run.")
flags.DEFINE_enum("batch_norm", "auto", config.BATCH_NORMS, "BN implementation in every trial, as in bench.run.")
flags.DEFINE_enum("scheduler", "none", ["none", "asha"], "asha: stop weak trials early on test accuracy.")
# resources
flags.DEFINE_integer("gpus_per_trial", 0, "GPUs per trial (its MirroredStrategy uses exactly these).")
flags.DEFINE_float("cpus_per_trial", None, "CPUs per trial (default: all of a CPU-only node, so timings stay honest).")
flags.DEFINE_integer("cpu_replicas", 1, "Logical CPU replicas per trial on machines without GPUs.")
flags.DEFINE_integer("max_concurrent", 1, "Trials at once (1 keeps throughput numbers free of interference).")
flags.DEFINE_string("address", None, "Address of an existing Ray cluster (default: start a local one).")
# storage and output
flags.DEFINE_string("name", "cifar_resnet", "Sweep name: storage folder and the rows' `sweep` column.")
flags.DEFINE_string("storage", "results/ray", "Ray Tune storage root (the sweep lives in <storage>/<name>).")
flags.DEFINE_boolean("resume", False, "Continue a killed sweep of this name: unfinished and errored trials run.")
flags.DEFINE_string("results", "results/summary.csv", "Results CSV.")
flags.DEFINE_boolean("report", True, "Write results/summary.md and results/plots/ at the end.")
flags.DEFINE_string("report_dir", None, "Where the report goes (default: next to --results).")


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    name: str
    storage: str
    results: str
    resume: bool = False
    gpus_per_trial: int = 0
    cpus_per_trial: float = None
    max_concurrent: int = 1
    address: str = None
    scheduler: str = "none"
    command: str = ""


def run_config_from_dict(d):
    d = dict(d)
    if d.get("profile_steps") is not None:
        d["profile_steps"] = tuple(d["profile_steps"])
    return RunConfig(**d)


def run_trial(params, runs=None):
    """The Ray Tune function trainable: one bench run, its row reported (never written) here.

    `params["trial"]` is the trial key (what Ray's trial table shows); `runs` maps keys to configs.
    """
    from ray import tune

    from bench import loop

    cfg = run_config_from_dict(runs[params["trial"]])

    def on_eval(step, accuracy, partial_row):
        tune.report({"test_accuracy": accuracy, "step": step, "final": False, "row": json.dumps(partial_row)})

    try:
        row = loop.run(cfg, command=params.get("command", ""), write_row=False, on_eval=on_eval).row
    except Exception as exc:  # noqa: BLE001 - any failure becomes the trial's row
        row = loop.config_row(cfg, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        row["command"] = params.get("command", "")
    accuracy = row.get("test_accuracy")
    tune.report({
        "test_accuracy": float(accuracy) if accuracy not in (None, "") else -1.0,
        "images_per_sec": float(row.get("images_per_sec") or 0.0),
        "status": row["status"],
        "final": True,
        "row": json.dumps(row),
    })


def trial_name(trial):
    """Short, readable trial names for Ray's table: `n3-preact-A-float32-noxla-b128-default-s0`."""
    parts = dict(p.split("=", 1) for p in trial.config["trial"].split(","))
    xla = "xla" if parts["xla"] == "true" else "noxla"
    return (f"n{parts['n']}-{parts['block']}-{parts['shortcut']}-{parts['precision']}-{xla}-"
            f"b{parts['batch_size']}-{parts['strategy']}-s{parts['seed']}")


def _row_of(result):
    if result and result.get("row"):
        return json.loads(result["row"])
    return None


def _make_row_writer(results_path, runs):
    from ray import tune

    class RowWriter(tune.Callback):
        """Driver-side: write each finished trial's row (the only writer of rows during a sweep)."""

        def __init__(self, path, runs):
            self.path = path
            self.runs = runs

        def on_trial_complete(self, iteration, trials, trial, **info):
            row = _row_of(trial.last_result)
            if row is None:
                row = _failed_row(self.runs, trial, "the trial ended without reporting a row")
            results.append_row(self.path, row)

        def on_trial_error(self, iteration, trials, trial, **info):
            error = "trial process failed"
            if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
                with open(trial.error_file) as fh:
                    lines = [x for x in fh.read().strip().splitlines() if x.strip()]
                error = (lines[-1] if lines else error)[:500]
            results.append_row(self.path, _failed_row(self.runs, trial, error))

    return RowWriter(results_path, runs)


def _failed_row(runs, trial, error):
    from bench import loop

    cfg = run_config_from_dict(runs[trial.config["trial"]])
    row = loop.config_row(cfg, "failed", error)
    row["command"] = trial.config.get("command", "")
    return row


def check_storage(opts: SweepOptions):
    path = os.path.join(opts.storage, opts.name)
    if opts.resume and not os.path.isdir(path):
        raise ConfigError(f"--resume: no sweep named {opts.name!r} under {opts.storage}")
    if not opts.resume and os.path.exists(path):
        raise ConfigError(f"a sweep named {opts.name!r} exists under {opts.storage}; pass --resume or a new --name")
    return path


def start_ray(opts: SweepOptions):
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    if opts.address:
        ray.init(address=opts.address, **kwargs)
    else:
        ray.init(**kwargs)
    gpus = ray.cluster_resources().get("GPU", 0)
    if opts.gpus_per_trial > gpus:
        ray.shutdown()
        raise ConfigError(f"--gpus_per_trial={opts.gpus_per_trial} but the Ray cluster has {int(gpus)} GPU(s)")
    return ray


def run_sweep(trials, opts: SweepOptions):
    """Run (or resume) the sweep; return the rows of its trials, one per trial."""
    path = os.path.abspath(check_storage(opts))
    results.check_results_path(opts.results)
    ray = start_ray(opts)
    from ray import tune

    try:
        cpus = opts.cpus_per_trial
        if cpus is None:
            cpus = 1 if opts.gpus_per_trial else max(1.0, ray.cluster_resources().get("CPU", 1))
        plan = os.path.join(path, "sweep.json")  # the trials' configs, for --resume
        if opts.resume:
            with open(plan) as fh:
                runs = json.load(fh)["runs"]
        else:
            runs = {t.key: json.loads(json.dumps(dataclasses.asdict(t.config))) for t in trials}
            os.makedirs(path)
            with open(plan, "w") as fh:
                json.dump({"command": opts.command, "runs": runs}, fh, indent=1)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, runs=runs), {"cpu": cpus, "gpu": opts.gpus_per_trial}
        )
        writer = _make_row_writer(os.path.abspath(opts.results), runs)
        if opts.resume:
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
        else:
            scheduler = None
            if opts.scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(time_attr="step", grace_period=1)
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(list(runs)), "command": opts.command},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=opts.max_concurrent,
                    scheduler=scheduler,
                    metric="test_accuracy" if scheduler else None,
                    mode="max" if scheduler else None,
                    trial_name_creator=trial_name,
                    trial_dirname_creator=trial_name,
                ),
                run_config=tune.RunConfig(
                    name=opts.name, storage_path=os.path.dirname(path), callbacks=[writer], verbose=1,
                ),
            )
        grid = tuner.fit()
        # A driver killed between a trial's end and its row: the finished result is still in the grid.
        for result in grid:
            row = _row_of(result.metrics)
            if row is not None and result.metrics.get("final", True):
                results.append_row(os.path.abspath(opts.results), row)
    finally:
        ray.shutdown()
    return [r for r in results.read_rows(opts.results) if r["sweep"] == opts.name and r["trial_key"] in runs]


def _absolute(path):
    return os.path.abspath(os.path.expanduser(path)) if path else path


def trials_from_flags(values):
    base = RunConfig(
        steps=values.steps, epochs=values.epochs, recipe=values.recipe, warmup_steps=values.warmup_steps,
        steps_per_loop=values.steps_per_loop, target_accuracy=values.target_accuracy,
        eval_every_epochs=values.eval_every_epochs, data=values.data, cifar_dir=_absolute(values.cifar_dir),
        tfds_dir=_absolute(values.tfds_dir), seed=values.seed, sync_bn=values.sync_bn,
        onednn=values.onednn, batch_norm=values.batch_norm, cpu_replicas=values.cpu_replicas,
        num_gpus=values.gpus_per_trial or None,
        results=_absolute(values.results),
    )
    axes = {name: space.parse_axis(name, getattr(values, name)) for name in space.AXES}
    if values.scheduler == "asha" and (values.data == "synthetic" or not values.eval_every_epochs):
        raise ConfigError("--scheduler=asha needs real data and --eval_every_epochs (it ranks trials by accuracy)")
    if values.max_concurrent < 1:
        raise ConfigError(f"--max_concurrent must be >= 1; got {values.max_concurrent}")
    if values.cpus_per_trial is not None and not values.cpus_per_trial > 0:
        raise ConfigError(f"--cpus_per_trial must be > 0; got {values.cpus_per_trial}")
    if not values.name or os.sep in values.name or values.name in (".", ".."):
        raise ConfigError(f"--name must be a plain folder name; got {values.name!r}")
    if values.gpus_per_trial < 0:
        raise ConfigError(f"--gpus_per_trial must be >= 0; got {values.gpus_per_trial}")
    if values.cpu_replicas > 1 and "mirrored" not in axes["strategy"]:
        axes["strategy"] = ["mirrored"]
    if values.gpus_per_trial > 1 and axes["strategy"] != ["mirrored"]:
        raise ConfigError("--gpus_per_trial > 1 needs --strategy=mirrored")
    if values.cifar_dir:
        from bench import data

        data.find_cifar_files(base.cifar_dir)
    return space.build_trials(axes, base, values.repeats, values.name)


def main(argv):
    del argv
    try:
        opts = SweepOptions(
            name=FLAGS.name, storage=_absolute(FLAGS.storage), results=_absolute(FLAGS.results),
            resume=FLAGS.resume, gpus_per_trial=FLAGS.gpus_per_trial, cpus_per_trial=FLAGS.cpus_per_trial,
            max_concurrent=FLAGS.max_concurrent, address=FLAGS.address, scheduler=FLAGS.scheduler,
            command=shlex.join(sys.argv),
        )
        trials = trials_from_flags(FLAGS)
        check_storage(opts)
        results.check_results_path(opts.results)
        rows = run_sweep(trials, opts)
    except (ConfigError, results.ResultsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"sweep {opts.name}: {len(rows)} trial rows in {opts.results} ({len(bad)} not ok)")
    if FLAGS.report:
        from sweeps import report

        out_dir = FLAGS.report_dir or os.path.dirname(opts.results)
        report.build(opts.results, out_dir, sweep=opts.name)
        print(f"report: {os.path.join(out_dir, 'summary.md')} and {os.path.join(out_dir, 'plots')}/")
    return 1 if bad else 0


def entry():
    app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    entry()
