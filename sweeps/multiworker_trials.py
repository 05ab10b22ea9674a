"""Ray Tune trials that are multi-worker runs: their resources, checked before the sweep starts.

How Ray 2.60 composes Tune and Train (Train V2): a trial's function calls `trainer.fit()`
(here `bench.distributed.driver.run`), and Ray Train's controller reserves the workers in a placement
group of its own, `workers` bundles of (`cpus_per_worker` CPU, `gpus_per_worker` GPU), all or
nothing. Tune's placement group for the trial cannot host them (Ray placement groups do not
nest; ray-project/ray#54305), so the trial itself reserves only what its driver needs (memory,
no CPU: a CPU there would be missing from the workers' reservation on a small machine), and
`--max_concurrent` (default 1) bounds how many trials compete for the cluster. A trial whose
workers cannot be placed yet waits for the running trial to finish; a request the cluster can
never hold is refused here, before any trial starts (Ray would wait for it forever).
"""

from __future__ import annotations

from bench.config import options, setup_checks

DRIVER_MEMORY = 512 * 2**20  # bytes reserved for a multi-worker trial's driver (Ray's "memory" resource)


def _multi_worker(runs):
    return {key: options.from_dict(cfg) for key, cfg in runs.items() if cfg.get("strategy") == options.MULTI_WORKER}


def check_workers_fit(runs, ray):
    """ConfigError unless every multi-worker trial's workers fit on the connected cluster."""
    alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for cfg in _multi_worker(runs).values():
        setup_checks.check_ray_request(cfg, ray.cluster_resources(), alive)


def trial_resources(runs, single):
    """Per-trial resources for `tune.with_resources`: `single` for single-process trials, the driver's
    memory for multi-worker trials (their workers are reserved by Ray Train when the trial starts)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory  # Ray: only once a sweep starts

    multi = set(_multi_worker(runs))
    if not multi:
        return single
    single_pgf = resource_dict_to_pg_factory(single)
    driver_pgf = resource_dict_to_pg_factory({"cpu": 0, "memory": DRIVER_MEMORY})

    def resources(config):
        return driver_pgf if config["trial"] in multi else single_pgf

    return resources
