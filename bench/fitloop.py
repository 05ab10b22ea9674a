"""`--loop fit`: the same run through Keras `model.fit`, as a baseline for the custom loop.

Same model, data, precision, strategy, batch and schedule; the differences are Keras's own:
- weight decay is the optimizer's (`SGD(weight_decay=...)`, decoupled): the same cost as the
  custom loop's L2 term, a slightly different update;
- normalisation is a layer in front of the model; synthetic batches come through tf.data
  rather than living on the device;
- the first timing window is a whole `steps_per_execution` chunk, and with several replicas
  `steps_per_execution` is 1 (Keras's multi-step function fails there in TF 2.21);
- with several replicas the BN moving statistics are not averaged (evaluation uses replica
  0's, as plain Keras does).
Timing: a callback closes a `Chrono` window at every `steps_per_execution` steps.
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from bench import data
from bench.config import ConfigError
from bench.loop import _Session
from bench.timing import Chrono


class Normalize(keras.layers.Layer):
    """uint8 images -> standardised float32 (bench.data.normalize as a layer)."""

    def call(self, images):
        return data.normalize(images)


class _WindowTimer(keras.callbacks.Callback):
    """Closes one Chrono window per `steps_per_execution` chunk: the first (compiling) chunk, warm-up, timed."""

    def __init__(self, chrono, chunk, warm_end, on_first_step):
        super().__init__()
        self.chrono, self.chunk, self.warm_end = chrono, chunk, warm_end
        self.on_first_step = on_first_step
        self.step = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.chrono.begin()

    def on_train_batch_end(self, batch, logs=None):
        steps = self.chunk
        kind = "first" if self.step == 0 else ("warmup" if self.step < self.warm_end else "timed")
        self.chrono.end(steps, kind)
        if self.step == 0:
            self.on_first_step()
        self.step += steps


class FitSession(_Session):
    def _make_trainer(self, trainer_class):
        return None  # Keras fit is the trainer here

    def _train(self):
        cfg, strategy = self.cfg, self.dev.strategy
        if cfg.xla and self.dev.num_replicas > 1:
            raise ConfigError("--loop=fit --xla needs one replica (Keras compiles the whole step)")
        self.chrono = chrono = Chrono()
        self.final_loss = self.last_accuracy = None
        with strategy.scope():
            model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), Normalize(), self.model])
            optimizer = self.optimizer  # built in _setup with Keras's weight decay
            optimizer.build(model.trainable_variables)  # TF-STACK-NOTES trap 1, as in the custom loop
            # Keras's multi-step train function fails under MirroredStrategy with >= 2 replicas in
            # TF 2.21 (an unfed placeholder, like trap 1): one step per call there.
            chunk = cfg.steps_per_loop if self.dev.num_replicas == 1 else 1
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                # weighted: evaluation's mask-0 fillers must not count (plain `metrics` ignore weights)
                weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                steps_per_execution=chunk,
                jit_compile=cfg.xla,
            )
        chunks = self.total_steps // chunk
        # The first chunk traces and compiles: never timed; warm-up continues to --warmup_steps.
        timer = _WindowTimer(chrono, chunk, max(cfg.warmup_steps, chunk), self._first_step_done)
        history = model.fit(self._fit_dataset(), steps_per_epoch=chunks * chunk, epochs=1, callbacks=[timer],
                            verbose=0, shuffle=False)
        self.final_loss = float(history.history["loss"][-1])
        self.total_steps = chunks * chunk
        if self.eval_ds is not None:
            self._fit_evaluate(model)
        if self.final_loss is not None and not tf.math.is_finite(self.final_loss):
            return "diverged", f"non-finite training loss ({self.final_loss})"
        return "ok", ""

    def _first_step_done(self):
        self.first_step_at = time.perf_counter()

    def _fit_dataset(self):
        cfg = self.cfg
        if self.source.kind == "synthetic":
            g = tf.random.Generator.from_seed(cfg.seed)
            images = tf.cast(g.uniform((cfg.batch_size, 32, 32, 3), 0, 256, tf.int32), tf.uint8)
            labels = g.uniform((cfg.batch_size,), 0, data.NUM_CLASSES, tf.int32)
            return tf.data.Dataset.from_tensors((images, labels)).repeat()
        ds = self.source.train.cache().shuffle(data.SHUFFLE_BUFFER, seed=cfg.seed).repeat()
        ds = ds.map(data.augment, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def _fit_evaluate(self, model):
        # mask-0 fillers make whole batches; Keras weighs loss and accuracy by the mask
        examples, total = data.padded_test_examples(self.source, self.cfg.batch_size)
        loss, acc = model.evaluate(examples.batch(self.cfg.batch_size, drop_remainder=True), verbose=0)
        loss *= total / self.source.test_images  # Keras averages the weighted losses over every example
        self.last_accuracy = float(acc)
        self.best_accuracy.assign(max(float(self.best_accuracy.numpy()), float(acc)))
        print(f"  eval: test accuracy {acc:.4f} (loss {loss:.4f})", file=self.out, flush=True)
