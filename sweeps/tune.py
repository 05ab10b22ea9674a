"""python -m sweeps.tune: a Ray Tune sweep of benchmark runs into results/summary.csv.

Every flag of `bench.run` is a flag here too, with the same default and help (both are built from
bench.config.RunConfig); axis flags take comma lists (`--n 3,5,9 --precision fp32,bf16`) and the
trials are every combination, times `--repeats` seeds. Every trial calls `bench.launch.launch` (the same
code as `python -m bench.run`) in its own Ray worker process and reports its row with `ray.tune.report`; only this driver writes rows, one per trial,
deduplicated by the trial's stable run id. Exit status: 0 every trial ok, 1 some trial not ok,
2 bad input (nothing started), 130 / 143 stopped by Ctrl-C / SIGTERM (the trials running then end without a
row; one line names the trials without one and the command that runs them: the same with --resume).

Ray is imported inside the functions that use it: `--help` and bad input answer without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time

from bench.config import cli, exits, options, setup_checks, validation

# The modules below take a second or more to import: a Ctrl-C then is one line and 130, not a traceback.
with exits.leave_on_signals("the sweep"):
    from absl import app, flags

    from bench import launch
    from bench.config.options import ConfigError
    from bench.distributed import ray_connection
    from bench.results import rows, systems, table
    from sweeps import multiworker_trials, plan, report, space

FLAGS = flags.FLAGS
cli.define_sweep_flags(FLAGS)  # every RunConfig field: axes take comma lists (--n 3,5,9)
SWEEP_FLAGS = (
    "repeats",
    "shuffle_seed",
    "scheduler",
    "cpus_per_trial",
    "max_concurrent",
    "name",
    "storage",
    "resume",
    "report",
    "report_dir",
)  # --address is RunConfig's: the cluster of the sweep (and of multi-worker trials)
flags.DEFINE_integer(
    "repeats",
    1,
    "Seeds per configuration (seed, seed+1, ...), run in rounds: seed 0 of every "
    "configuration, then seed 1, ... (the spread of repeats is then noise, not drift).",
)
flags.DEFINE_integer(
    "shuffle_seed",
    None,
    "Shuffle the configurations within each round with this seed "
    "(recorded in sweep.json and each row's command; each row's sweep_position is its place).",
)
flags.DEFINE_enum("scheduler", "none", ["none", "asha"], "asha: stop weak trials early on test accuracy.")
# resources (GPUs per trial: --num_gpus, which each trial's MirroredStrategy then uses)
flags.DEFINE_float("cpus_per_trial", None, "CPUs per trial (default: all of a CPU-only node, so timings stay honest).")
flags.DEFINE_integer("max_concurrent", 1, "Trials at once (1 keeps throughput numbers free of interference).")
# storage and output
flags.DEFINE_string("name", "cifar_resnet", "Sweep name: storage folder and the rows' `sweep` column.")
flags.DEFINE_string(
    "storage",
    None,
    "Ray Tune storage root: the sweep lives in <storage>/<name> (default: ray/ "
    "next to --results, so nothing lands in the repository when --results points elsewhere).",
)
flags.DEFINE_boolean("resume", False, "Continue a killed sweep of this name: unfinished and errored trials run.")
flags.DEFINE_boolean("report", True, "Write summary.md and plots/ at the end.")
flags.DEFINE_string("report_dir", None, "Where the report goes (default: next to --results).")


TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"  # "1": Tuner.fit leaves the Ctrl-C handler alone


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
    shuffle_seed: int = None


def run_trial(params, runs=None):
    """The Ray Tune function trainable: one bench run, its row reported (never written) here.

    `params["trial"]` is the trial key (what Ray's trial table shows); `runs` maps keys to configs.
    """
    from ray import tune

    cfg = options.from_dict(runs[params["trial"]])

    def on_eval(step, accuracy, partial_row):
        tune.report({"test_accuracy": accuracy, "step": step, "final": False, "row": json.dumps(partial_row)})

    try:
        outcome = launch.launch(cfg, command=params.get("command", ""), write_row=False, on_eval=on_eval)
        row = outcome.row
    except Exception as exc:  # noqa: BLE001 - any failure becomes the trial's row
        outcome, row = None, rows.config_row(cfg, "failed", exits.first_line(exc))
        row["command"] = params.get("command", "")
    if outcome is not None and outcome.status == "skipped":  # its checkpoint says finished: its row is written
        tune.report({"final": True, "skipped": True})
        return
    final = {
        "images_per_sec": float(row.get("images_per_sec") or 0.0),
        "status": row["status"],
        "final": True,
        "row": json.dumps(row),
        "systems": json.dumps(list(outcome.systems) if outcome is not None else []),  # written beside the rows
    }
    if row.get("test_accuracy") not in (None, ""):  # synthetic data has none (not a -1 in Ray's tables)
        final["test_accuracy"] = float(row["test_accuracy"])
    tune.report(final)


def trial_name(trial):
    """Short, readable trial names for Ray's table: `n3-preact-A-float32-noxla-b128-default-s0`."""
    return _key_name(trial.config["trial"])


def _key_name(key):
    parts = dict(p.split("=", 1) for p in key.split(","))
    xla = {"true": "xla", "false": "noxla"}.get(parts["xla"], "xla-auto")
    extra = "".join(f"-{k}{v}" for k, v in parts.items() if k not in space.KEY_ORDER)  # other swept fields
    return (
        f"n{parts['n']}-{parts['block']}-{parts['shortcut']}-{parts['precision']}-{xla}-"
        f"b{parts['batch_size']}-{parts['strategy']}-s{parts['seed']}{extra}"
    )


def _row_of(result):
    if result and result.get("row"):
        return json.loads(result["row"])
    return None


def _make_row_writer(results_path, runs):
    from ray import tune

    class RowWriter(tune.Callback):
        """Driver-side: write each finished trial's row (the only writer of rows during a sweep), one line each.

        Ray's own boxed trial tables are off (verbose=0): this line is the sweep's progress display. Ray pickles
        this object with the sweep and a resumed sweep runs the copy it unpickles, so the clock, the count and
        the estimates are set when a run starts (`setup`, then the first step), never carried over.
        """

        def __init__(self, path, runs):
            self.path = path
            self.runs = runs
            self._begin()

        def _begin(self):
            self.done, self.total, self.progress, self.started = 0, len(self.runs), None, time.monotonic()
            self.relayed = False

        def setup(self, **info):
            """This process's fit() starts: its own clock and counts."""
            self._begin()

        def _start(self, finished):
            """This run's trials: those not `finished` before it (a resumed sweep's), and their estimates."""
            left = [key for key in self.runs if key not in finished]
            estimates, _, _ = plan.estimate([options.from_dict(self.runs[k]) for k in left], self.path)
            self.total, self.progress = len(left), plan.Progress(estimates, self.started)

        def on_step_begin(self, iteration, trials, **info):
            if self.progress is None:  # the first step (before any trial ends): a resumed sweep's trials are restored
                self._start({t.config["trial"] for t in trials if t.status == "TERMINATED"})
            if exits.stop_requested() and not self.relayed:  # here: Tune's loop runs, its SIGUSR1 handler is set
                self.relayed = True
                _stop_tune()

        def on_trial_complete(self, iteration, trials, trial, **info):
            if (trial.last_result or {}).get("skipped"):  # its checkpoint's run finished earlier: row written then
                self.done += 1
                print(
                    f"trial {self.done}/{self.total} {trial_name(trial)}: already finished (its row is written)",
                    flush=True,
                )
                return
            row = _row_of(trial.last_result)
            if row is None:
                row = _failed_row(self.runs, trial, "the trial ended without reporting a row")
            systems.save_all(self.path, json.loads((trial.last_result or {}).get("systems") or "[]"))
            self._write(trial, row)

        def _write(self, trial, row):
            table.save_row(self.path, row)  # a table that cannot take it: kept beside it, the error says where
            self.done += 1
            eta = self.progress.finish(trial.config["trial"], time.monotonic())
            # sys.stdout looked up now: Ray pickles the callback, and a stream object does not pickle
            print(f"trial {self.done}/{self.total} {trial_name(trial)}: {_outcome(row)}; {eta}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._write(trial, _failed_row(self.runs, trial, _trial_error(trial)))

    return RowWriter(results_path, runs)


def _outcome(row):
    """`ok 612.3 img/s, accuracy 0.9100`: a trial's row in a few words."""
    speed = f"{float(row['images_per_sec']):.1f} img/s" if row.get("images_per_sec") else ""
    accuracy = f", accuracy {float(row['test_accuracy']):.4f}" if row.get("test_accuracy") else ""
    return f"{row['status']} {speed}{accuracy}"


def _stop_tune():
    """Tune's own stop, which it always listens for on SIGUSR1: its loop ends, it saves the sweep's state (what
    --resume reads) and ends the running trials. Its lines about that name Tuner.restore: the sweep's says --resume."""
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    os.kill(os.getpid(), signal.SIGUSR1)


def _trial_error(trial):
    """The last line of a failed trial's error file."""
    error = "trial process failed"
    if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
        with open(trial.error_file) as fh:
            lines = [x for x in fh.read().strip().splitlines() if x.strip()]
        error = (lines[-1] if lines else error)[:500]
    return error


def _failed_row(runs, trial, error):
    cfg = options.from_dict(runs[trial.config["trial"]])
    row = rows.config_row(cfg, "failed", error)
    row["command"] = trial.config.get("command", "")
    return row


def check_paths(opts: SweepOptions):
    """The sweep's folder (`<storage>/<name>`), after checking what a sweep writes to: the results table takes
    rows (as `bench.run` checks it) and the folder is there exactly when resuming. Bad input raises ConfigError."""
    table.check_results_path(opts.results)
    path = os.path.join(opts.storage, opts.name)
    validation.check_sweep_storage(
        opts.name, opts.storage, opts.resume, exists=os.path.exists(path), is_folder=os.path.isdir(path)
    )
    return path


class SweepStopped(exits.Interrupted):
    """Ctrl-C or SIGTERM ended the sweep: `missing` names the trials without a row."""

    def __init__(self, name, missing, total, resumable=True):
        super().__init__(name)
        self.missing, self.total, self.resumable = missing, total, resumable


def start_ray(opts: SweepOptions):
    ray_connection.connect(opts.address)  # an address that does not answer: refused within 30 s
    import ray

    try:
        # Ray would wait forever for a trial that can never be placed
        setup_checks.check_cluster_has({"GPU": opts.gpus_per_trial}, ray.cluster_resources(), "--num_gpus (per trial)")
        setup_checks.check_cluster_has({"CPU": opts.cpus_per_trial}, ray.cluster_resources(), "--cpus_per_trial")
    except ConfigError:
        ray.shutdown()
        raise
    return ray


def run_sweep(trials, opts: SweepOptions):
    """Run (or resume) the sweep; return the rows of its trials, one per trial.

    Ctrl-C or SIGTERM once Ray is up (`exits.StopRequest`): Tune stops (the trials running end without a row),
    its state is saved for --resume, rows of finished trials are written, and `SweepStopped` is raised; a
    second signal exits at once.
    """
    path = os.path.abspath(check_paths(opts))
    if opts.resume:
        with open(os.path.join(path, "sweep.json")) as fh:  # the trials' configs in their order
            runs = json.load(fh)["runs"]
    else:
        runs = {t.key: json.loads(json.dumps(dataclasses.asdict(t.config))) for t in trials}
    stop = exits.StopRequest(
        announce="stopping the sweep (the trials running now end without a row)",
        on_exit=ray_connection.kill_started_processes,
    )
    with exits.on_signals(stop):  # from before ray.init: `connect` keeps it in force over Ray's own SIGTERM handler
        try:
            ray = start_ray(opts)
        except exits.Interrupted as stopped:  # a SIGTERM that Ray's handler took while Ray started
            ray, stop.name = None, stopped.name
        try:
            grid = None if stop.name else _fit(ray, runs, opts, path, stop)
            # A driver killed between a trial's end and its row: the finished result is still in the grid.
            for result in grid or ():
                row = _row_of(result.metrics)
                if row is not None and result.metrics.get("final", True):
                    systems.save_all(opts.results, json.loads(result.metrics.get("systems") or "[]"))
                    table.save_row(os.path.abspath(opts.results), row)
        finally:
            if ray is not None:
                ray.shutdown()
    done = [r for r in table.read_rows(opts.results) if r["sweep"] == opts.name and r["trial_key"] in runs]
    if stop.name:
        have = {r["trial_key"] for r in done}
        started = os.path.isfile(os.path.join(path, "sweep.json"))  # else there is nothing to resume: run it again
        raise SweepStopped(stop.name, [key for key in runs if key not in have], len(runs), resumable=started)
    return done


def _fit(ray, runs, opts, path, stop):
    """Tune's run of the trials (the sweep's folder is created here, once the cluster can hold them)."""
    from ray import tune

    cpus = opts.cpus_per_trial
    if cpus is None:
        cpus = 1 if opts.gpus_per_trial else max(1.0, ray.cluster_resources().get("CPU", 1))
    multiworker_trials.check_workers_fit(runs, ray)
    if not opts.resume:
        os.makedirs(path)
        with open(os.path.join(path, "sweep.json"), "w") as fh:  # the trials' configs in their order, for --resume
            json.dump({"command": opts.command, "shuffle_seed": opts.shuffle_seed, "runs": runs}, fh, indent=1)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, runs=runs),
        multiworker_trials.trial_resources(runs, {"cpu": cpus, "gpu": opts.gpus_per_trial}),
    )
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
                name=opts.name,
                storage_path=os.path.dirname(path),
                callbacks=[_make_row_writer(os.path.abspath(opts.results), runs)],
                verbose=0,
            ),
        )
    if stop.name:  # asked to stop while it was being set up
        return None
    previous = os.environ.get(TUNE_SIGINT_ENV)
    os.environ[TUNE_SIGINT_ENV] = "1"  # Ctrl-C stays exits.StopRequest's; the row writer relays it to Tune
    try:
        return tuner.fit()
    finally:
        if previous is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)
        else:
            os.environ[TUNE_SIGINT_ENV] = previous


def trials_from_flags(values):
    """The sweep's trials from parsed flags (every one validated like a single run)."""
    validation.check_sweep_options(
        values.name,
        1,
        values.max_concurrent,
        values.cpus_per_trial,  # repeats: space's
        values.scheduler,
        values.strategy,
        values.data,
        values.eval_every_epochs,
    )
    return space.build_trials(space.axes_from_flags(values), values.repeats, values.name, values.shuffle_seed)


def options_from_flags(values, trials):
    gpus = max((t.config.num_gpus or 0) for t in trials) if trials else 0
    return SweepOptions(
        name=values.name,
        results=os.path.abspath(values.results),
        storage=os.path.abspath(
            values.storage or os.path.join(os.path.dirname(os.path.abspath(values.results)), "ray")
        ),
        resume=values.resume,
        gpus_per_trial=gpus,
        cpus_per_trial=values.cpus_per_trial,
        max_concurrent=values.max_concurrent,
        address=values.address,
        scheduler=values.scheduler,
        command=cli.typed_command("sweeps.tune"),
        shuffle_seed=values.shuffle_seed,
    )


def usage():
    return cli.usage_text(__doc__, [f.name for f in options.flag_fields()] + list(SWEEP_FLAGS))


def main(argv):
    """The command; bad input raises ConfigError (one line and exit 2 from exits.command, nothing started)."""
    del argv
    trials = trials_from_flags(FLAGS)
    opts = options_from_flags(FLAGS, trials)
    check_paths(opts)
    if not opts.resume:
        print(plan.estimate([t.config for t in trials], opts.results)[2], flush=True)
    try:
        trial_rows = run_sweep(trials, opts)
    except SweepStopped as stopped:
        exits.error(stopped_line(opts, stopped))
        return exits.EXIT_SIGNAL[stopped.name]
    bad = [r for r in trial_rows if r["status"] != "ok"]
    print(f"sweep {opts.name}: {len(trial_rows)} trial rows in {opts.results} ({len(bad)} not ok)")
    if FLAGS.report:
        out_dir = FLAGS.report_dir or os.path.dirname(opts.results)
        report.build(opts.results, out_dir, sweep=opts.name)
        print(f"report: {os.path.join(out_dir, 'summary.md')} and {os.path.join(out_dir, 'plots')}/")
    return exits.EXIT_FAILED if bad else exits.EXIT_OK


def stopped_line(opts, stopped):
    """What a stopped sweep left undone and how to run it."""
    if not stopped.missing:
        return f"sweep {opts.name} was stopped by {stopped.name} after every trial had its row in {opts.results}"
    names = ", ".join(_key_name(key) for key in stopped.missing[:5])
    names += f", ... ({len(stopped.missing) - 5} more)" if len(stopped.missing) > 5 else ""
    again = opts.command if opts.resume or not stopped.resumable else f"{opts.command} --resume"
    return (
        f"sweep {opts.name} was stopped by {stopped.name}: {len(stopped.missing)} of {stopped.total} trials have "
        f"no row in {opts.results} ({names}); to run them: {again}"
    )


def entry():
    app.run(
        lambda argv: exits.program(main, argv, what="the sweep"),
        flags_parser=lambda argv: cli.parse_flags(argv, usage),
    )


if __name__ == "__main__":
    entry()
