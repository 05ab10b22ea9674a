"""Assemble a run from checked parts: trainer, outputs, restored progress, plan, controller,
and the facts its row records."""

from __future__ import annotations

import dataclasses
import functools

import keras
import tensorflow as tf

from bench.config import options, recipe
from bench.hardware import datasheet, devices, peak
from bench.results import rows
from bench.results.rows import RunFacts
from bench.runner import outputs
from bench.runner.controller import Controller, Plan, RunHooks
from bench.training import trainers


def controller_for(cfg, device_setup, source, run_id, command, started, out, hooks=None):
    """(Controller ready to run, RunFacts for the row) of a run whose devices and data are set up."""
    hooks = hooks or RunHooks()
    total = recipe.train_steps(cfg, source.train_images)
    tf32 = device_setup.device_kind == "GPU" and peak.tf32_in_effect(cfg.precision)  # a CPU run never is
    intra, inter = devices.threads_in_effect()
    trainer = trainers.build(cfg, device_setup, source, recipe.lr_schedule(cfg, total))
    manager = hooks.checkpoint_manager and functools.partial(hooks.checkpoint_manager, strategy=device_setup.strategy)
    checkpointer, summaries, profiler = outputs.make(cfg, trainer.checkpoint_objects(), manager)
    progress = checkpointer.restore() if checkpointer else None
    plan = _plan(cfg, source, total, trainer, trainer.steps_done(), hooks.extra_marks)
    controller = Controller(
        plan,
        trainer,
        cfg.batch_size,
        out=out,
        target_accuracy=cfg.target_accuracy,
        checkpointer=checkpointer,
        summaries=summaries,
        profiler=profiler,
        progress=progress,
        on_step=hooks.on_step,
    )
    tflops, peak_source = datasheet.lookup(device_setup.device_name, cfg.precision, tf32)
    reading = _peak(device_setup, cfg.precision, tf32)
    facts = RunFacts(
        run_id=run_id,
        command=command,
        tf_version=tf.__version__,
        keras_version=keras.__version__,
        device=f"{device_setup.device_kind}: {device_setup.device_name}",
        num_replicas=device_setup.num_replicas,
        onednn=device_setup.onednn,
        batch_norm=trainer.batch_norm,
        params=trainer.params,
        data=source.kind,
        train_images=source.train_images,
        peak_gflops=reading.gflops * device_setup.physical_devices,
        started=started,
        augment=trainer.augment,
        tf32=tf32,
        device_name=device_setup.device_name,
        physical_devices=device_setup.physical_devices,
        intra_op_threads=intra,
        inter_op_threads=inter,
        peak_source=peak_source,
        datasheet_tflops=tflops * device_setup.physical_devices if tflops else None,
        peak_measured_at=reading.measured_at,
        peak_readings=reading.readings,
        peak_load=reading.load,
    )
    return controller, facts


def _plan(cfg, source, total, trainer, start_step, extra_marks=()):
    steps_per_epoch = source.train_images / cfg.batch_size
    eval_every = cfg.eval_every_epochs
    if eval_every is None and cfg.target_accuracy is not None:
        eval_every = 1.0
    eval_steps = max(1, round(eval_every * steps_per_epoch)) if eval_every and trainer.can_evaluate else None
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
        fixed_window=trainer.fixed_window,
        extra_marks=tuple(extra_marks),
    )


def checked_peak(cfg, device_setup, facts, controller):
    """`facts` with a peak no lower than what the run achieved (a low cached reading is measured again)."""
    timed = controller.chrono.throughput(cfg.batch_size)
    # a worker of a multi-worker run measured its own share of the host; its row's peak is re-summed by the driver
    if not timed or not facts.peak_gflops or cfg.strategy == options.MULTI_WORKER:
        return facts
    flops = rows.flops_per_image(cfg)
    achieved = flops * timed.images_per_sec / 1e9 / device_setup.physical_devices
    per_device = facts.peak_gflops / device_setup.physical_devices
    if achieved <= per_device:
        return facts
    try:
        reading = _peak(device_setup, cfg.precision, facts.tf32, at_least=achieved)
    except Exception as exc:  # noqa: BLE001 - the row matters more than a better peak
        print(
            f"note: measuring the peak again failed ({type(exc).__name__}); MFU may read above 100%",
            file=controller.out,
            flush=True,
        )
        return facts
    print(
        f"note: the cached peak ({per_device:.0f} GFLOP/s) was below this run's {achieved:.0f} GFLOP/s; "
        f"measured again: {reading.gflops:.0f}",
        file=controller.out,
        flush=True,
    )
    return dataclasses.replace(
        facts,
        peak_gflops=reading.gflops * device_setup.physical_devices,
        peak_measured_at=reading.measured_at,
        peak_readings=reading.readings,
        peak_load=reading.load,
    )


def peak_device_key(device_setup):
    """The peak cache's device part: device, TensorFlow version, oneDNN state, thread count."""
    key = f"{device_setup.device_kind}:{device_setup.device_name}|tf{tf.__version__}" + (
        "|onednn" if device_setup.onednn and device_setup.device_kind == "CPU" else ""
    )
    intra = devices.threads_in_effect()[0]
    if intra and device_setup.device_kind == "CPU":  # a reading with fewer threads is not the CPU's peak
        key += f"|intra{intra}"
    return key


def _peak(device_setup, precision, tf32, at_least=None):
    """The measured peak reading of one of the devices used (`peak.Reading`; cached, read again when stale)."""
    return peak.peak_reading(
        device_setup.first_device, peak_device_key(device_setup), precision, tf32=tf32, at_least=at_least
    )
