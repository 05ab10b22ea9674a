"""TF's multi-worker checkpoint rule (`WorkerCheckpoints`), and a digest of the state each save holds.

Runs in the workers: TensorFlow and numpy are imported inside the functions (the driver imports
the worker module, which imports this one, and has no TensorFlow).
"""

from __future__ import annotations

import hashlib
import os
import shutil

from bench.config import identity
from bench.config.options import RunConfig


def barrier(strategy):
    """Every worker reaches this point before any goes on (a tiny all-reduce)."""
    import tensorflow as tf

    one = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(1.0))
    strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None).numpy()


def state_digest(checkpoint):
    """sha256 (12 hex digits) of this worker's local copy of the weights, BN moving statistics and optimizer state."""
    import numpy as np

    def sha(variables):
        h = hashlib.sha256()
        for v in variables:
            h.update(np.ascontiguousarray(np.asarray(v.numpy())).tobytes())
        return h.hexdigest()[:12]

    model, optimizer = checkpoint.model, checkpoint.optimizer
    return {
        "trainable": sha(model.trainable_variables),
        "bn_moving": sha(model.non_trainable_variables),
        "optimizer": sha(optimizer.variables),
    }


class WorkerCheckpoints:
    """TF's multi-worker checkpoint rule, with a CheckpointManager's `latest_checkpoint` and `save`.

    Every worker saves (saving reads variables, which may start collectives that every
    worker must join): the chief into --checkpoint_dir, the others into a scratch folder
    emptied after each save. Every worker restores the chief's latest checkpoint, after a
    barrier. With workers on several nodes, --checkpoint_dir must be storage they all see.
    `last_digest`: the `state_digest` of this worker's last save.
    """

    def __init__(self, checkpoint, cfg: RunConfig, strategy, scratch, max_to_keep=2):
        """`scratch`: the worker's `bench.distributed.scratch.ScratchFolders` (a non-chief's copies go there)."""
        import tensorflow as tf

        self._checkpoint, self._strategy = checkpoint, strategy
        self.chief = identity.is_chief(cfg)
        self._dir = cfg.checkpoint_dir if self.chief else scratch.new()
        self._manager = tf.train.CheckpointManager(checkpoint, self._dir, max_to_keep=max_to_keep if self.chief else 1)
        self.last_digest = {}
        barrier(strategy)  # the chief's files of an earlier attempt are what everyone reads
        self.latest_checkpoint = tf.train.latest_checkpoint(cfg.checkpoint_dir)

    def save(self, checkpoint_number=None):
        path = self._manager.save(checkpoint_number=checkpoint_number)
        self.last_digest = state_digest(self._checkpoint)
        if not self.chief:
            shutil.rmtree(self._dir, ignore_errors=True)
            os.makedirs(self._dir, exist_ok=True)
        barrier(self._strategy)  # nobody reads or moves on before the chief's files are complete
        return path
