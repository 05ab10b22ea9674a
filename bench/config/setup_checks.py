"""Checks after the devices, the data and the Ray cluster are set up: what only they can tell.

Device setup, data resolution and the multi-worker driver refuse nothing themselves: they
report facts (`SetupFacts`, Ray's resources), judged here before any training.
"""

from __future__ import annotations

import dataclasses

from bench.config.defaults import STEPS_PER_LOOP
from bench.config.options import MULTI_WORKER, ConfigError, RunConfig, global_replicas
from bench.config.recipe import CIFAR_TRAIN_IMAGES, train_steps
from bench.config.validation import check_steps, check_xla_over_replicas

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
        raise ConfigError(
            f"--cpu_replicas={cfg.cpu_replicas} is for machines without GPUs; {facts.gpus_visible} "
            f"GPU(s) are visible (use --num_gpus)"
        )
    if cfg.num_gpus is not None and cfg.num_gpus > facts.gpus_visible:
        raise ConfigError(f"--num_gpus={cfg.num_gpus} but only {facts.gpus_visible} GPU(s) are visible")
    if not facts.gpus_visible and facts.cpu_devices < cfg.cpu_replicas:
        raise ConfigError(
            f"--cpu_replicas={cfg.cpu_replicas}: this process already started TensorFlow with "
            f"{facts.cpu_devices} CPU device(s)"
        )
    if cfg.batch_size % facts.num_replicas:
        raise ConfigError(
            f"--batch_size={cfg.batch_size} is global and must divide evenly over {facts.num_replicas} replicas"
        )
    check_xla_over_replicas(cfg, facts.num_replicas)
    if cfg.strategy == MULTI_WORKER and (cfg.gpus_per_worker or 0) > facts.gpus_visible:
        raise ConfigError(f"--gpus_per_worker={cfg.gpus_per_worker} but this worker sees {facts.gpus_visible} GPU(s)")
    if cfg.strategy == MULTI_WORKER and facts.num_replicas != global_replicas(cfg):
        raise ConfigError(
            f"MultiWorkerMirroredStrategy has {facts.num_replicas} replicas in sync, expected "
            f"{global_replicas(cfg)} ({cfg.workers} workers); TF_CONFIG does not match --workers"
        )
    if facts.data_kind == "unavailable":
        raise ConfigError(facts.data_problem)
    fault = cfg.inject_inf_grad_at_step
    if fault and fault[1] is not None and fault[1] >= facts.num_replicas:
        raise ConfigError(
            f"--inject_inf_grad_at_step={fault[0]}:{fault[1]}: there are only {facts.num_replicas} "
            f"replicas (0..{facts.num_replicas - 1})"
        )
    _check_accuracy_data(cfg, facts.data_kind)
    total = train_steps(cfg, facts.train_images)
    check_steps(cfg, total)
    if cfg.loop == "fit":  # Keras fit runs whole steps_per_execution chunks: one must be timed after the warm-up
        chunk = (cfg.steps_per_loop or STEPS_PER_LOOP[facts.device_kind]) if facts.num_replicas == 1 else 1
        if total // chunk * chunk <= max(cfg.warmup_steps, chunk):
            raise ConfigError(
                f"--loop=fit runs chunks of {chunk} steps: {total} steps leave none to time after "
                f"the warm-up ({cfg.warmup_steps}); give more --steps or a smaller --steps_per_loop"
            )


def _check_accuracy_data(cfg: RunConfig, data_kind):
    """What measures accuracy needs real data (`--data=auto` may have fallen back to synthetic)."""
    if data_kind != "synthetic":
        return
    if cfg.target_accuracy is not None:
        raise ConfigError("--target_accuracy needs real data, but only synthetic data is available")
    if cfg.scenario != "none" and cfg.loadgen_mode != "performance":
        raise ConfigError(f"--loadgen_mode={cfg.loadgen_mode} needs real data, but only synthetic data is available")


def check_cluster_has(requested, available, what):
    """Refuse a request for more of a Ray resource ("CPU", "GPU") than the cluster has.

    Ray itself would wait for it forever.
    """
    for resource, amount in requested.items():
        have = available.get(resource, 0)
        if amount and amount > have:
            raise ConfigError(f"{what} asks for {amount:g} {resource}(s) but the Ray cluster has {have:g}")


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
            f"{need_gpu} GPUs; the Ray cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs"
        )
    if nodes is not None:
        free = sorted(([n.get("CPU", 0), n.get("GPU", 0)] for n in nodes), reverse=True)  # first fit, largest first
        for _ in range(cfg.workers):
            node = next((f for f in free if f[0] >= cfg.cpus_per_worker and f[1] >= gpus), None)
            if node is None:
                raise ConfigError(
                    f"{cfg.workers} workers x ({cfg.cpus_per_worker:g} CPU, {gpus} GPU) do not fit on the "
                    f"Ray cluster's nodes (each worker must fit on one node)"
                )
            node[0] -= cfg.cpus_per_worker
            node[1] -= gpus


def check_machine_request(cfg: RunConfig, cpus, gpus):
    """A `--launcher tf_config` run's request against this machine (the same rule as for a Ray cluster of it)."""
    gpus_per = cfg.gpus_per_worker or 0
    need_cpu, need_gpu = cfg.workers * cfg.cpus_per_worker, cfg.workers * gpus_per
    if need_cpu > cpus or need_gpu > gpus:
        raise ConfigError(
            f"{cfg.workers} workers x ({cfg.cpus_per_worker:g} CPU, {gpus_per} GPU) need {need_cpu:g} CPUs and "
            f"{need_gpu} GPUs; this machine has {cpus:g} CPUs and {gpus} GPUs (--launcher=tf_config runs here)"
        )


def check_paths_on_hosts(paths, facts):
    """Every host that may run a worker sees the run's folders at the driver's paths (README: "Local files
    must be reachable at the same path on every node"); else bad input naming the first host that lacks one.

    `paths`: {flag name: the driver's folder}; `facts`: per host {host, ip, seen: {flag name: bool}}
    (`bench.distributed.hosts.check_paths`: the files there, or a marker file the driver just wrote).
    """
    for fact in sorted(facts, key=lambda f: (f.get("host") or "", f.get("ip") or "")):
        for name, folder in paths.items():
            if not fact["seen"].get(name, True):
                what = (
                    "what the driver's host has there"
                    if name in ("cifar_dir", "tfds_dir")
                    else "the driver's files there"
                )
                raise ConfigError(
                    f"--{name}={folder}: {fact.get('host')} ({fact.get('ip')}) does not see {what}; every host "
                    f"must see it at the same path (shared storage), or leave that host out of the cluster"
                )
