"""One benchmark run, from a config to its row: `run(cfg)`, in the order it happens.

    1. check the input      no TensorFlow yet; bad input raises ConfigError and nothing is written
    2. settle the settings   --autotune's probes, then oneDNN (decided before TensorFlow's import)
    3. devices and data      TensorFlow is imported here; what only they can tell is checked;
                             every remaining default is resolved (`bench.config.defaults.resolve`)
    4. build                 workload, outputs, restored progress, plan, controller, the row's facts
                             (`--scenario`: MLPerf's LoadGen drives instead, `bench.runner.scenario.ScenarioRun`)
    5. train                 the controller owns the loop and returns a frozen `Measured` record
    6. the row               built from the config, the facts and that record; saved whatever happened

A run that got past step 1 ends in exactly one row (ok, diverged, interrupted or failed), also when
setting it up fails. Ctrl-C / SIGTERM: during 2-4 the setup is abandoned and an `interrupted` row
written; during 5 the current window finishes first (a second signal exits at once); during 6 a
signal waits for the row. A multi-worker run is this same function called in each worker
(`bench.distributed.worker`), with the worker's rules handed in as `RunHooks`.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import sys
import time

from bench.config import cifar_files, defaults, exits, options, recipe, setup_checks, tuning, validation
from bench.config.identity import RunIdentity
from bench.config.options import ConfigError, RunConfig
from bench.results import console, mlperf_log, rows, systems, table
from bench.results.rows import Measured, RunFacts
from bench.runner.loop import Controller, Plan, RunHooks


@dataclasses.dataclass
class Outcome:
    status: str  # ok | diverged | interrupted | failed | skipped (a resumed run that had already finished)
    row: dict
    exit_code: int
    measured: Measured | None = None  # what the controller measured (None: the run ended before training)
    systems: tuple = ()  # the machine's system description (with write_row=False the caller writes it with the row)


def run(cfg: RunConfig, command="", out=None, write_row=True, on_eval=None, hooks=None) -> Outcome:
    """One benchmark run (see the module docstring). Raises ConfigError for bad input before any work is done.

    `write_row=False` leaves the row to the caller (a sweep's driver, a multi-worker worker).
    `on_eval(step, accuracy, partial_row)` is called after each evaluation (a sweep reports it to its
    scheduler). `hooks`: `RunHooks` from the caller (a multi-worker worker's checkpoint rule and faults).
    """
    out = out or sys.stdout
    started = time.perf_counter()

    # ---- 1. check the input ------------------------------------------------------------------------------
    cfg = check(cfg)
    identity = RunIdentity(cfg)
    if identity.finished:
        print(identity.finished_line(cfg), file=out)
        return Outcome("skipped", {}, exits.EXIT_OK)
    # init_start: the clock's rules. A LoadGen scenario's logs are LoadGen's own (no training log)
    log = mlperf_log.begin(cfg, identity.run_id, (hooks or RunHooks()).mlperf_log and cfg.scenario == "none")

    autotune_s = None  # the probing's seconds: a column of their own, not part of the time to the first step
    settling = time.perf_counter()
    # Until the controller can stop between windows: the setup is abandoned, its row says interrupted.
    setup_stop = exits.announce_and_raise("abandoning the setup; writing the interrupted row")
    try:
        with exits.on_signals(setup_stop):
            # ---- 2. settle the settings (before TensorFlow's import: the probes may choose oneDNN) -----------
            if cfg.autotune != "off":  # its probes (processes, statistics) are imported only when asked for
                from bench.runner import autotune

                cfg = autotune.settle(cfg, out)
                autotune_s = time.perf_counter() - settling
            else:
                cfg = cfg.replace(tuned=tuning.origin(cfg))
            # ---- 3. devices and data -----------------------------------------------------------------------
            cfg, devices, source = _devices_and_data(cfg)
            identity.save(finished=False)
            # ---- 4. build ------------------------------------------------------------------------------------
            if cfg.scenario != "none":  # MLPerf's LoadGen drives the forward passes instead of the controller
                controller, facts = _build_scenario(cfg, devices, source, identity.run_id, command, started, out)
            else:
                controller, facts = _build(cfg, devices, source, identity.run_id, command, started, out, hooks)
            facts = dataclasses.replace(facts, autotune_s=autotune_s)
    except ConfigError:
        raise
    except exits.Interrupted as stop:
        cfg, autotune_s = _ended_probing(cfg, autotune_s, settling)
        return _stopped_in_setup(cfg, identity, command, out, write_row, stop.name, log, autotune_s)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's error
        cfg, autotune_s = _ended_probing(cfg, autotune_s, settling)
        if setup_stop.name:  # the signal's Interrupted, turned into another exception by native code it crossed
            return _stopped_in_setup(cfg, identity, command, out, write_row, setup_stop.name, log, autotune_s)
        error = exits.first_line(exc)
        trace = exits.save_traceback(exc, cfg.results, identity.run_id)
        exits.error(f"run {identity.run_id} failed while setting up: {error} (traceback: {trace})")
        return _ended_in_setup(
            cfg, identity, command, out, write_row, "failed", error, exits.EXIT_FAILED, log, autotune_s
        )
    if cfg.scenario == "none" and controller.step >= controller.plan.total_steps:  # killed after its last checkpoint
        print(
            f"the checkpoint in {cfg.checkpoint_dir} is at step {controller.step} of {controller.plan.total_steps}: "
            f"nothing is left to train or time, so no row is written (a row that measured nothing would read as "
            f"a measurement); use a new --checkpoint_dir to measure again",
            file=out,
            flush=True,
        )
        identity.save(finished=True)
        log.discard()
        return Outcome("skipped", {}, exits.EXIT_OK)
    if cfg.scenario == "none":
        log.configured(cfg, facts, controller.plan.total_steps, controller.plan.eval_every)
        controller.observer = log or None  # the controller tells the log of the run's events, between windows
    if on_eval and cfg.scenario == "none":
        controller.on_eval = lambda step, acc: on_eval(
            step, acc, rows.run_row(cfg, facts, controller.measured("stopped", "stopped by the sweep's scheduler"))
        )

    # ---- 5. train --------------------------------------------------------------------------------------------
    stop = exits.StopRequest(on_request=lambda name: setattr(controller, "stop_requested", name))
    with exits.on_signals(stop):
        measured, code = _train(controller, cfg, identity.run_id)
    log.stopped(measured, cfg.target_accuracy)  # run_stop: the clock of MLPerf's time-to-train stops here

    # ---- 6. the row --------------------------------------------------------------------------------------------
    late = exits.Deferred()
    with exits.on_signals(late):  # a signal now waits for the row: it is never lost to a late Ctrl-C or SIGTERM
        if measured.status != "interrupted":  # a stopped run's row comes first: no peak re-measurement (~20 s)
            facts = _checked_peak(cfg, devices, facts, measured, out)
        row = log.finish(rows.run_row(cfg, facts, measured))  # the harness's measurements close the log
        where, code = _conclude(cfg, identity, row, write_row, code, facts.system_description)
        print(console.summary_text(row, where), file=out, flush=True)
    if late.name and code == exits.EXIT_OK:
        code = exits.EXIT_SIGNAL[late.name]
    return Outcome(measured.status, row, code, measured, (facts.system_description,))


# ---- 1. check the input ----------------------------------------------------------------------------------------


def check(cfg: RunConfig) -> RunConfig:
    """What a run refuses before any work (ConfigError; a table that cannot take its row: ResultsError, one
    too); the normalised config. `sweeps.compare` checks each arm with it before running either."""
    cfg = validation.validate(cfg)
    table.check_results_path(cfg.results)
    return cfg


def expected_setup(cfg: RunConfig, machine=None) -> RunConfig:
    """What sections 2-3 will make of a checked `cfg` on this machine, as far as it is known before
    TensorFlow's import (the machine as `--autotune` detects it: `nvidia-smi` for GPUs): ConfigError for what
    `setup_checks.check_setup` will refuse, else the config with its defaults resolved and oneDNN decided.

    A multi-worker run's setup is its workers' (judged by the driver against the cluster) and an
    `--autotune` run's settings are chosen by its probes: both come back as they are.
    """
    if cfg.strategy == options.MULTI_WORKER:
        return cfg
    from bench.runner import autotune  # the machine as --autotune sees it (`sweeps.compare` checks its arms)

    machine = machine or autotune.detect_machine(cfg)
    replicas = tuning.replicas(cfg, machine)
    if cfg.data == "synthetic":
        data_kind = "synthetic"
    elif cfg.data == "files" or (cfg.data == "auto" and cfg.cifar_dir):
        data_kind = "files"
    else:
        data_kind = "tfds"  # or, for auto, synthetic if it is not there: only its import can tell
    problem = cifar_files.tfds_problem(cfg.tfds_dir) if cfg.data == "tfds" else ""
    onednn = defaults.onednn_request(cfg)
    setup_checks.check_setup(
        cfg,
        setup_checks.SetupFacts(
            gpus_visible=machine.gpus,
            device_kind=machine.device_kind,
            cpu_devices=cfg.cpu_replicas,  # a fresh process splits the CPU as asked
            num_replicas=replicas,
            onednn=onednn == "on",
            data_kind="unavailable" if problem else data_kind,
            data_problem=problem,
        ),
    )
    if cfg.autotune != "off":
        return cfg
    return defaults.resolve(cfg, machine.device_kind, replicas, data_kind).replace(onednn=onednn)


# ---- 3. devices and data ---------------------------------------------------------------------------------------


def _devices_and_data(cfg):
    """(cfg with every default resolved, `devices.Devices`, `data.Source`), after `check_setup`."""
    # TensorFlow is imported here, by the device setup, which makes the oneDNN choice first (it is fixed at
    # TensorFlow's import): nothing that imports TensorFlow may be imported before it.
    from bench.hardware import devices

    found = devices.setup(cfg)
    from bench.training import data  # imports TensorFlow: only now

    source = data.resolve(cfg)
    setup_checks.check_setup(
        cfg,
        setup_checks.SetupFacts(
            **found.facts, data_kind=source.kind, data_problem=source.problem, train_images=source.train_images
        ),
    )
    devices.warn_if_emulated(cfg, found.device_kind)
    if source.warning:
        print(source.warning, file=sys.stderr, flush=True)
    _note_cpu_defaults(cfg, found)
    resolved = defaults.resolve(cfg, found.device_kind, found.num_replicas, source.kind, found.cpu_kind)
    return resolved, found, source


def _note_cpu_defaults(cfg, found):
    """One line when CPU inference runs on a kind of CPU its defaults were not measured on (`--autotune` finds its)."""
    _, measured = defaults.cpu_inference(found.cpu_kind)
    if cfg.mode == "inference" and found.device_kind == "CPU" and not measured and cfg.autotune == "off":
        print(
            f"note: the CPU inference defaults were measured on {defaults.FALLBACK_CPU_KIND} CPUs, not on this "
            f"{found.cpu_kind} one; --autotune finds this CPU's fastest settings",
            file=sys.stderr,
            flush=True,
        )


# ---- 4. build ----------------------------------------------------------------------------------------------------


def _build(cfg, devices, source, run_id, command, started, out, hooks):
    """(Controller ready to run, the row's RunFacts)."""
    from bench.hardware import machine
    from bench.hardware.devices import threads_in_effect
    from bench.runner import outputs
    from bench.training import trainers

    hooks = hooks or RunHooks()
    total = recipe.train_steps(cfg, source.train_images)
    workload = trainers.build(cfg, devices, source, recipe.lr_schedule(cfg, total))
    manager = hooks.checkpoint_manager and functools.partial(hooks.checkpoint_manager, strategy=devices.strategy)
    checkpointer, summaries, profiler = outputs.make(cfg, workload.checkpoint_objects(), manager)
    progress = checkpointer.restore() if checkpointer else None
    plan = _plan(cfg, source, total, workload, workload.steps_done(), hooks.extra_marks)
    controller = Controller(
        plan,
        workload,
        cfg.batch_size,
        out=out,
        target_accuracy=cfg.target_accuracy,
        checkpointer=checkpointer,
        summaries=summaries,
        profiler=profiler,
        progress=progress,
        on_step=hooks.on_step,
        monitor=machine.for_run(devices, threads_in_effect()[0]),
    )
    return controller, _facts(cfg, devices, source, workload, run_id, command, started)


def _build_scenario(cfg, devices, source, run_id, command, started, out):
    """(LoadGen's run of the same inference workload, the row's RunFacts): `bench.runner.scenario`."""
    from bench.hardware import machine
    from bench.hardware.devices import threads_in_effect
    from bench.runner import scenario
    from bench.training import trainers

    workload = trainers.build(cfg, devices, source, recipe.lr_schedule(cfg, recipe.train_steps(cfg)))
    monitor = machine.for_run(devices, threads_in_effect()[0])
    run = scenario.ScenarioRun(cfg, workload, source, run_id, out, monitor=monitor)
    return run, _facts(cfg, devices, source, workload, run_id, command, started)


def _facts(cfg, devices, source, workload, run_id, command, started):
    """The row's RunFacts: what the setup found (versions, devices, the workload's model, the peak)."""
    import keras  # loaded by the device setup already (after the oneDNN choice)
    import tensorflow as tf

    from bench.hardware import datasheet, peak, system
    from bench.hardware.devices import threads_in_effect

    tf32 = devices.device_kind == "GPU" and peak.tf32_in_effect(cfg.precision)  # a CPU run never is
    tflops, peak_source = datasheet.lookup(devices.model, cfg.precision, tf32)
    reading = peak.reading_for(devices, cfg.precision, tf32)
    intra, inter = threads_in_effect()
    description = system.describe()  # written beside the results table with the row
    return RunFacts(
        run_id=run_id,
        command=command,
        tf_version=tf.__version__,
        keras_version=keras.__version__,
        device=f"{devices.device_kind}: {devices.model}",
        num_replicas=devices.num_replicas,
        onednn=devices.onednn,
        batch_norm=workload.batch_norm,
        params=workload.params,
        data=source.kind,
        train_images=source.train_images,
        peak_gflops=reading.gflops * devices.physical_devices,
        started=started,
        augment=workload.augment,
        tf32=tf32,
        physical_devices=devices.physical_devices,
        intra_op_threads=intra,
        inter_op_threads=inter,
        peak_source=peak_source,
        datasheet_tflops=tflops * devices.physical_devices if tflops else None,
        peak_measured_at=reading.measured_at,
        peak_readings=reading.readings,
        peak_load=reading.load,
        host=socket.gethostname(),
        system=description["system_name"],
        system_description=description,
        test_images=source.test_images,
    )


def _plan(cfg, source, total, workload, start_step, extra_marks=()):
    steps_per_epoch = source.train_images / cfg.batch_size
    eval_every = cfg.eval_every_epochs
    if eval_every is None and cfg.target_accuracy is not None:
        eval_every = 1.0
    eval_steps = max(1, round(eval_every * steps_per_epoch)) if eval_every and workload.can_evaluate else None
    checkpoint_steps = None
    if cfg.checkpoint_dir:
        checkpoint_steps = cfg.checkpoint_every_steps or eval_steps or max(cfg.steps_per_loop, 50)
    return Plan(
        total_steps=total,
        start_step=start_step,
        warmup_steps=cfg.warmup_steps,
        steps_per_loop=cfg.steps_per_loop,
        eval_every=eval_steps,
        checkpoint_every=checkpoint_steps,
        profile_steps=cfg.profile_steps,
        fixed_window=workload.fixed_window,
        extra_marks=tuple(extra_marks),
    )


# ---- 5. train ------------------------------------------------------------------------------------------------------


def _train(controller, cfg, run_id):
    """(what was measured, exit code); a crash mid-run is still a record saying so."""
    try:
        measured = controller.run()
    except Exception as exc:  # noqa: BLE001 - any failure becomes the row's error
        error = exits.first_line(exc)
        log = exits.save_traceback(exc, cfg.results, run_id)
        exits.error(f"run {run_id} failed at step {controller.step}: {error} (traceback: {log})")
        try:
            return controller.measured("failed", error), exits.EXIT_FAILED
        except Exception:  # noqa: BLE001 - the failure's own record failed too: the row says what is known
            return Measured.nothing("failed", error, controller.step), exits.EXIT_FAILED
    if measured.status == "failed":  # a LoadGen accuracy run that disagrees with the evaluation
        exits.error(f"run {run_id} failed: {measured.error}")
        return measured, exits.EXIT_FAILED
    if measured.status == "diverged":
        return measured, exits.EXIT_DIVERGED
    if measured.status == "interrupted":
        return measured, exits.EXIT_SIGNAL.get(controller.stop_requested, exits.EXIT_FAILED)
    return measured, exits.EXIT_OK


# ---- 6. the row ----------------------------------------------------------------------------------------------------


def _checked_peak(cfg, devices, facts, measured, out):
    """`facts` with a peak no lower than what the run achieved (a low cached reading is measured again)."""
    from bench.hardware import peak  # loaded with TensorFlow by the setup

    # a worker of a multi-worker run measured its own share of the host; its row's peak is re-summed by the driver
    if not measured.timed or not facts.peak_gflops or cfg.strategy == options.MULTI_WORKER:
        return facts
    achieved = rows.flops_per_image(cfg) * measured.timed.images_per_sec / 1e9 / devices.physical_devices
    per_device = facts.peak_gflops / devices.physical_devices
    if achieved <= per_device:
        return facts
    try:
        reading = peak.reading_for(devices, cfg.precision, facts.tf32, at_least=achieved)
    except Exception as exc:  # noqa: BLE001 - the row matters more than a better peak
        print(
            f"note: measuring the peak again failed ({type(exc).__name__}); MFU may read above 100%",
            file=out,
            flush=True,
        )
        return facts
    print(
        f"note: the cached peak ({per_device:.0f} GFLOP/s) was below this run's {achieved:.0f} GFLOP/s; "
        f"measured again: {reading.gflops:.0f}",
        file=out,
        flush=True,
    )
    return dataclasses.replace(
        facts,
        peak_gflops=reading.gflops * devices.physical_devices,
        peak_measured_at=reading.measured_at,
        peak_readings=reading.readings,
        peak_load=reading.load,
    )


def _ended_probing(cfg, autotune_s, settling):
    """(cfg, the probing's seconds) of a run that ended in its setup: one that ended while --autotune probed
    says so in its `tuned` column (`probing`), with the seconds it probed."""
    if cfg.autotune == "off" or autotune_s is not None:
        return cfg, autotune_s
    return cfg.replace(tuned="probing"), time.perf_counter() - settling


def _stopped_in_setup(cfg, identity, command, out, write_row, name, log, autotune_s):
    """The interrupted row of a run stopped by signal `name` while it set up."""
    error, code = f"stopped by {name} while setting up", exits.EXIT_SIGNAL[name]
    return _ended_in_setup(cfg, identity, command, out, write_row, "interrupted", error, code, log, autotune_s)


def _ended_in_setup(cfg, identity, command, out, write_row, status, error, code, log, autotune_s=None):
    """The row of a run that ended before training: what the configuration says (and the probing's seconds), and
    why; its MLPerf log says so and holds no result."""
    row = log.ended_in_setup(
        {**rows.config_row(cfg, status, error, run_id=identity.run_id), "command": command, "autotune_s": autotune_s}
    )
    where, code = _conclude(cfg, identity, row, write_row, code)
    print(
        f"status  {status} ({error}); row in {where}" if write_row else f"status  {status} ({error})",
        file=out,
        flush=True,
    )
    return Outcome(status, row, code)


def _conclude(cfg, identity, row, write_row, code, system_description=None):
    """(where the row is, exit code): the row appended, or kept beside a table that cannot take it (exit 1)."""
    if write_row and system_description:
        systems.save(cfg.results, system_description)
    where = table.save_row(cfg.results, row) if write_row else cfg.results
    if where != cfg.results:  # the error line says where it is
        code = exits.EXIT_FAILED
    if (
        cfg.strategy != options.MULTI_WORKER and identity.saved
    ):  # a worker's attempt may be retried: its driver concludes
        identity.conclude(row["run_id"], row["status"], where if where != cfg.results else None)
    return where, code
