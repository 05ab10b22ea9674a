"""The worker side of `--strategy multi_worker`: what runs inside each Ray Train worker process.

`bench.devices.setup` builds the MultiWorkerMirroredStrategy here (before any TensorFlow
op), `bench.outputs` saves checkpoints by TF's multi-worker rule (`WorkerCheckpoints`),
`bench.setup` hooks the testing-only fault injection into the controller. The driver
(`bench.multiworker`) launches the workers and assembles the row. No TensorFlow or Ray
at import time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time

from bench import config
from bench.config import RunConfig


def attach(collector):
    """Inside a Ray Train worker: the run's collector actor (reports, fault marks)."""
    global _COLLECTOR
    _COLLECTOR = collector


def gpus(cfg):
    return cfg.gpus_per_worker or 0


# ---------------------------------------------------------------------------
# Worker side: devices, checkpoints, fault injection


def task_index():
    """This process's worker index from TF_CONFIG (set by Ray Train), 0 without one."""
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    except ValueError:
        return 0
    return int(task.get("index", 0))


def is_chief(cfg: RunConfig):
    """True where a run's own files are written: every single-process run, worker 0 of a multi-worker run."""
    return cfg.strategy != config.MULTI_WORKER or task_index() == 0


def setup_devices(cfg: RunConfig):
    """This worker's runtime and the MWMS (reached through `bench.devices.setup`); facts for `config.check_setup`.

    Order matters: any eager TensorFlow op before the strategy exists fails with
    "Collective ops must be configured at program startup". Only configuration
    (threads, visible GPUs, memory growth) happens before it.
    """
    from bench import devices

    tf = devices.import_tensorflow(cfg.onednn)
    # Ray reserves --cpus_per_worker CPUs; TensorFlow would otherwise use every core of the node.
    threads = cfg.intra_op_threads or max(1, math.ceil(cfg.cpus_per_worker))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if cfg.inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(cfg.inter_op_threads)
    physical = tf.config.list_physical_devices("GPU")
    use = physical[:gpus(cfg)]
    tf.config.set_visible_devices(use, "GPU")
    for gpu in use:
        tf.config.experimental.set_memory_growth(gpu, True)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cfg.collective_timeout_s)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    replicas = strategy.num_replicas_in_sync
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if use:
        kind, physical_count, first = "GPU", len(use), "/gpu:0"
        name = tf.config.experimental.get_device_details(use[0]).get("device_name", "GPU")
    else:
        kind, physical_count, first = "CPU", 1, "/cpu:0"
        name = devices.cpu_model_name()
        # This worker's peak is read with its thread budget: keep it apart from full-CPU readings.
        root = os.path.dirname(_peak_cache_path())
        os.environ["RESNET_BENCH_CACHE"] = os.path.join(root, f"intra-op-threads-{threads}")
    facts = dict(gpus_visible=len(physical), device_kind=kind, cpu_devices=1, num_replicas=replicas,
                 onednn=devices.onednn_enabled())
    return devices.Devices(strategy, replicas, kind, name, physical_count, first, devices.onednn_enabled(), facts)


def _peak_cache_path():
    from bench import peak

    return peak.cache_path()


def _barrier(strategy):
    """Every worker reaches this point before any goes on (a tiny all-reduce)."""
    import tensorflow as tf

    one = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(1.0))
    strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None).numpy()


LAST_DIGEST = {}  # the state digest of this worker's last checkpoint save


def state_digest(checkpoint):
    """sha256 (12 hex digits) of this worker's local copy of the weights, BN moving statistics and optimizer state."""
    import numpy as np

    def sha(variables):
        h = hashlib.sha256()
        for v in variables:
            h.update(np.ascontiguousarray(np.asarray(v.numpy())).tobytes())
        return h.hexdigest()[:12]

    model, optimizer = checkpoint.model, checkpoint.optimizer
    return {"trainable": sha(model.trainable_variables), "bn_moving": sha(model.non_trainable_variables),
            "optimizer": sha(optimizer.variables)}


class WorkerCheckpoints:
    """TF's multi-worker checkpoint rule, with a CheckpointManager's `latest_checkpoint` and `save`.

    Every worker saves (saving reads variables, which may start collectives that every
    worker must join): the chief into --checkpoint_dir, the others into a temporary folder
    emptied after each save. Every worker restores the chief's latest checkpoint, after a
    barrier. With workers on several nodes, --checkpoint_dir must be storage they all see.
    """

    def __init__(self, checkpoint, cfg: RunConfig, strategy, max_to_keep=2):
        import tensorflow as tf

        self._checkpoint, self._strategy = checkpoint, strategy
        self.chief = is_chief(cfg)
        self._dir = cfg.checkpoint_dir if self.chief else tempfile.mkdtemp(prefix="bench-worker-ckpt-")
        if not self.chief:
            SCRATCH.append(self._dir)
        self._manager = tf.train.CheckpointManager(checkpoint, self._dir, max_to_keep=max_to_keep if self.chief else 1)
        _barrier(strategy)  # the chief's files of an earlier attempt are what everyone reads
        self.latest_checkpoint = tf.train.latest_checkpoint(cfg.checkpoint_dir)

    def save(self, checkpoint_number=None):
        path = self._manager.save(checkpoint_number=checkpoint_number)
        LAST_DIGEST.clear()
        LAST_DIGEST.update(state_digest(self._checkpoint))
        if not self.chief:
            shutil.rmtree(self._dir, ignore_errors=True)
            os.makedirs(self._dir, exist_ok=True)
        _barrier(self._strategy)  # nobody reads or moves on before the chief's files are complete
        return path


_COLLECTOR = None  # the run's collector actor handle, inside a Ray Train worker
SCRATCH = []  # this worker's temporary folders, removed when its run ends
_FAULT_DONE = False


def fault_marks(cfg: RunConfig):
    """Window boundaries the fault injection needs (the step it fires at)."""
    if cfg.fail_worker_at_step is None:
        return set()
    return {config.parse_worker_fault(cfg.fail_worker_at_step)[1]}


def fault_injection(cfg: RunConfig):
    """The controller's `on_step` hook for --fail_worker_at_step, or None."""
    if cfg.fail_worker_at_step is None:
        return None
    return lambda step: at_step(cfg, step)


def at_step(cfg: RunConfig, step):
    """Testing only: the worker named by --fail_worker_at_step exits (or stalls) the first time it reaches STEP.

    "The first time" is per run, not per process: the collector actor outlives
    worker-group restarts, so a restarted worker passes the step.
    """
    global _FAULT_DONE
    if cfg.fail_worker_at_step is None or _FAULT_DONE or _COLLECTOR is None:
        return
    rank, fault_step, mode = config.parse_worker_fault(cfg.fail_worker_at_step)
    if task_index() != rank or step < fault_step:
        return
    import ray

    _FAULT_DONE = True
    if not ray.get(_COLLECTOR.fire_once.remote(cfg.fail_worker_at_step)):
        return
    print(f"fault injection: worker {rank} {'exits' if mode == 'exit' else 'stalls'} at step {step}",
          file=sys.stderr, flush=True)
    if mode == "exit":
        os._exit(17)
    while True:  # stall: stop responding until Ray ends the worker group
        time.sleep(3600)
