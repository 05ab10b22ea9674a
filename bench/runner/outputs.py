"""What a run writes besides its row: checkpoints, TensorBoard summaries, profiler traces.

Small wrappers over TensorFlow's own tools (`tf.train.CheckpointManager`,
`tf.summary`, `tf.profiler`), so that `bench.runner.loop.Controller` decides *when* and
these decide *how*.
"""

from __future__ import annotations

import os

import tensorflow as tf

from bench.runner.loop import Progress


class Checkpointer:
    """Model, optimizer, global step and the run's progress through `tf.train.CheckpointManager`."""

    def __init__(self, folder, objects, max_to_keep=2, manager=None):
        """`manager(checkpoint)`: another manager with `latest_checkpoint` and `save` (multi-worker rule)."""
        # Progress lives in variables so that it is saved and restored with the weights.
        self._seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._best = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self._target = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self._target_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
        ckpt = tf.train.Checkpoint(
            **objects,
            train_seconds=self._seconds,
            best_accuracy=self._best,
            time_to_target=self._target,
            target_step=self._target_step,
        )
        self.manager = manager(ckpt) if manager else tf.train.CheckpointManager(ckpt, folder, max_to_keep=max_to_keep)
        self._ckpt = ckpt

    def restore(self) -> Progress:
        """Restore the latest checkpoint if there is one; return the progress it held."""
        if self.manager.latest_checkpoint:
            self._ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return Progress(
            float(self._seconds.numpy()),
            float(self._best.numpy()),
            float(self._target.numpy()),
            int(self._target_step.numpy()),
        )

    def save(self, step, progress: Progress):
        self._seconds.assign(progress.train_seconds)
        self._best.assign(progress.best_accuracy)
        self._target.assign(progress.time_to_target)
        self._target_step.assign(progress.target_step)
        self.manager.save(checkpoint_number=step)


class Summaries:
    """TensorBoard scalars."""

    def __init__(self, folder):
        self.writer = tf.summary.create_file_writer(folder)

    def scalars(self, step, values):
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)


class Profiler:
    """A TF profiler trace of some steps (the controller starts and stops it between windows)."""

    def __init__(self, folder):
        self.folder = folder

    def start(self):
        tf.profiler.experimental.start(self.folder)

    def stop(self):
        tf.profiler.experimental.stop()


def make(cfg, objects, manager=None):
    """(checkpointer, summaries, profiler) for `cfg`, each None where the run asks for none.

    `manager(checkpoint)`: a checkpoint manager other than TF's own (a multi-worker worker's rule).
    """
    checkpointer = Checkpointer(cfg.checkpoint_dir, objects, manager=manager) if cfg.checkpoint_dir else None
    summaries = Summaries(cfg.tensorboard_dir) if cfg.tensorboard_dir else None
    profiler = None
    if cfg.profile_steps:
        profiler = Profiler(cfg.profile_dir or os.path.join(cfg.tensorboard_dir or "results", "profile"))
    return checkpointer, summaries, profiler
