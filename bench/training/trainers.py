"""Workloads: what owns the step and its input. The custom loop, the Keras `fit` baseline and inference, as siblings.

Like orbit's trainers, they are called by `bench.runner.loop.Controller`, which owns the loop,
through its `Workload` protocol: `run_steps(num_steps)` runs that many steps in one call and
returns the window's value, `evaluate(should_stop)` returns (accuracy, mean loss, images), or None when
`should_stop()` said so between its chunks (a stop request: the row must not wait for the rest); besides
`can_evaluate`, `checkpoint_objects()`, `steps_done()`, `skipped_steps()`, `learning_rate()` and
the facts a row needs (`params`, `batch_norm`, `augment`, `xla_scope`). The fit baseline alone
`drives_own_loop`: Keras runs the loop and calls the controller back.

`--loop fit` runs the same model, data, precision, strategy, batch and schedule
through `model.fit`; the differences are Keras's own:
- weight decay is the optimizer's (`SGD(weight_decay=...)`, decoupled): the same
  cost as the custom loop's L2 term, a slightly different update;
- normalisation is a layer in front of the model; synthetic batches come through
  tf.data rather than living on the device;
- each window is a whole `steps_per_execution` chunk (the first, compiling, one too),
  and with several replicas `steps_per_execution` is 1 (Keras's multi-step function
  fails there in TF 2.21);
- with several replicas the BN moving statistics are not averaged (evaluation uses
  replica 0's, as plain Keras does).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from bench.training import data
from bench.training.steps import StepFunctions, global_step_variable, make_optimizer
from resnet import spec
from resnet.model import build_resnet


def build(cfg, device_setup, source, schedule):
    """The workload `cfg.mode` and `cfg.loop` ask for, its model and optimizer built under the strategy."""
    if cfg.mode == "inference":
        return Inference(cfg, device_setup, source, schedule)
    trainer_class = FitTrainer if cfg.loop == "fit" else CustomLoopTrainer
    return trainer_class(cfg, device_setup, source, schedule)


def model_and_optimizer(cfg, strategy, schedule, optimizer_weight_decay=None, step=None):
    """(model, optimizer, BN implementation) of `cfg`, built under `strategy` from `cfg.seed`.

    `step`: a global step variable the learning-rate schedule follows (else the optimizer's iterations).
    """
    keras.utils.set_random_seed(cfg.seed)
    batch_norm = cfg.batch_norm  # decided by bench.config.defaults.resolve
    with strategy.scope():
        model = build_resnet(
            cfg.n, cfg.block, cfg.shortcut, precision=cfg.precision, sync_bn=cfg.sync_bn, batch_norm=batch_norm
        )
        optimizer = make_optimizer(schedule, cfg.precision, weight_decay=optimizer_weight_decay, step=step)
    return model, optimizer, batch_norm


def _count_params(model):
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


class CustomLoopTrainer:
    """The tf.function custom loop of `bench.training.steps.StepFunctions` (weight decay added to the loss)."""

    def __init__(self, cfg, device_setup, source, schedule):
        self.cfg, self.device_setup, self.source = cfg, device_setup, source
        with device_setup.strategy.scope():
            step = global_step_variable()  # the schedule follows it: a skipped fp16 step still counts
        self.model, self.optimizer, self.batch_norm = model_and_optimizer(
            cfg, device_setup.strategy, schedule, step=step
        )
        self.augment = cfg.augment  # resolved by bench.config.defaults.resolve: device | host | none
        self.step_fns = StepFunctions(
            self.model,
            self.optimizer,
            device_setup.strategy,
            cfg.batch_size,
            weight_decay=spec.DEFAULT_WEIGHT_DECAY,
            xla=cfg.xla,
            sync_bn=cfg.sync_bn,
            inject_nan_at_step=cfg.inject_nan_at_step,
            inject_inf_grad_at=cfg.inject_inf_grad_at_step,
            augment_on_device=self.augment == "device",
            augment_seed=cfg.seed,
            step=step,
        )
        self.params = _count_params(self.model)
        self.xla_scope = self.step_fns.xla_scope
        self.fixed_window = None  # the controller sizes each window
        self.drives_own_loop = False
        self.value_name = "loss"
        self.can_evaluate = source.test is not None and source.test_images > 0
        self._eval = None
        self._iterator = None

    def checkpoint_objects(self):
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "step": self.step_fns.global_step,
            "skipped_steps": self.step_fns.skipped_steps,
        }

    def skipped_steps(self):
        return int(self.step_fns.skipped_steps.numpy())

    def learning_rate(self):
        """The learning rate the last step applied (the schedule at the global step)."""
        return float(self.step_fns.last_learning_rate.numpy())

    def steps_done(self):
        return int(self.step_fns.global_step.numpy())

    def drive(self, controller):
        raise NotImplementedError("the controller drives the custom loop")

    def run_steps(self, num_steps):
        """`num_steps` steps in one call (the input is created on the first: an iterator starts prefetching)."""
        if self._iterator is None:
            self._iterator = self._train_iterator(self.steps_done())
        return self.step_fns.train(self._iterator, tf.constant(num_steps, tf.int32))

    def _train_iterator(self, start_step):
        """The training input from `start_step` on."""
        cfg, strategy = self.cfg, self.device_setup.strategy
        if self.source.kind == "synthetic":
            return data.SyntheticIterator(data.synthetic_batches(strategy, cfg.batch_size, cfg.seed))
        # After a restart the order is reshuffled from a seed tied to the step reached.
        return iter(
            data.distribute_train(
                strategy, self.source, cfg.batch_size, cfg.seed + start_step, on_host=self.augment == "host"
            )
        )

    def evaluate(self, should_stop=None):
        """The test set in chunks of `steps_per_loop` batches (one call each, like a window), `should_stop()`
        asked between them: a stop request does not wait for a long evaluation (None is returned)."""
        if self._eval is None:
            self._eval = data.distribute_eval(self.device_setup.strategy, self.source, self.cfg.batch_size)
        dataset, batches = self._eval
        iterator, chunk = iter(dataset), max(1, self.cfg.steps_per_loop)
        correct = loss_sum = count = 0.0
        for start in range(0, batches, chunk):
            if should_stop and should_stop():
                return None
            sums = self.step_fns.eval_loop(iterator, tf.constant(min(chunk, batches - start)))
            correct, loss_sum, count = (total + float(part) for total, part in zip((correct, loss_sum, count), sums))
        return correct / count, loss_sum / count, int(count)


class FitTrainer:
    """Keras `model.fit` over the same model; a callback reports each `steps_per_execution` chunk as a window."""

    def __init__(self, cfg, device_setup, source, schedule):
        self.cfg, self.device_setup, self.source = cfg, device_setup, source
        core, self.optimizer, self.batch_norm = model_and_optimizer(
            cfg, device_setup.strategy, schedule, optimizer_weight_decay=spec.DEFAULT_WEIGHT_DECAY
        )
        self.params = _count_params(core)
        # Keras's multi-step train function fails under MirroredStrategy with >= 2 replicas in
        # TF 2.21 (an unfed placeholder, like WORKSPACE.md, "Traps": optimizer.build first): one step per call there.
        self.fixed_window = cfg.steps_per_loop if device_setup.num_replicas == 1 else 1
        self.augment = cfg.augment  # host (or none: synthetic), resolved by bench.config.defaults.resolve
        self.xla_scope = "step" if cfg.xla else "none"  # Keras compiles its whole train step
        self.drives_own_loop = True  # Keras runs the loop; a callback opens and closes the windows
        self.value_name = "loss"
        self.can_evaluate = source.test is not None and source.test_images > 0
        with device_setup.strategy.scope():
            self.model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), Normalize(), core])
            self.optimizer.build(self.model.trainable_variables)  # WORKSPACE.md, "Traps": optimizer.build first
            self.model.compile(
                optimizer=self.optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                # weighted: evaluation's mask-0 fillers must not count (plain `metrics` ignore weights)
                weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                steps_per_execution=self.fixed_window,
                jit_compile=cfg.xla,
            )

    def checkpoint_objects(self):
        return {"model": self.model, "optimizer": self.optimizer}

    def steps_done(self):
        return 0  # fit runs never resume (--checkpoint_dir is refused with --loop=fit)

    def skipped_steps(self):
        return None  # Keras fit does not count the steps its loss scaling skips

    def learning_rate(self):
        return None  # not read back from Keras's loop

    def run_steps(self, num_steps):
        raise NotImplementedError("Keras fit runs its own loop (drive)")

    def drive(self, controller):
        windows = controller.windows()
        steps = controller.plan.total_steps // self.fixed_window * self.fixed_window
        callback = _WindowCallback(controller, windows)
        self.model.fit(self._dataset(), steps_per_epoch=steps, epochs=1, callbacks=[callback], verbose=0, shuffle=False)

    def _dataset(self):
        cfg = self.cfg
        if self.source.kind == "synthetic":
            g = tf.random.Generator.from_seed(cfg.seed)
            images = tf.cast(g.uniform((cfg.batch_size, 32, 32, 3), 0, 256, tf.int32), tf.uint8)
            labels = g.uniform((cfg.batch_size,), 0, data.NUM_CLASSES, tf.int32)
            return tf.data.Dataset.from_tensors((images, labels)).repeat()
        ds = self.source.train.cache().shuffle(data.SHUFFLE_BUFFER, seed=cfg.seed).repeat()
        ds = ds.map(data.augment_image, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def evaluate(self, should_stop=None):
        # mask-0 fillers make whole batches; Keras weighs loss and accuracy by the mask
        examples, total = data.padded_test_examples(self.source, self.cfg.batch_size)
        stop = _StopEvaluating(should_stop)
        loss, accuracy = self.model.evaluate(
            examples.batch(self.cfg.batch_size, drop_remainder=True), verbose=0, callbacks=[stop]
        )
        if stop.stopped:  # Keras returned what the batches so far gave: not an evaluation
            return None
        loss *= total / self.source.test_images  # Keras averages the weighted losses over every example
        return float(accuracy), float(loss), self.source.test_images


class _WindowCallback(keras.callbacks.Callback):
    """Opens a controller window before each `fit` chunk and closes it after (loss: Keras's running mean)."""

    def __init__(self, controller, windows):
        super().__init__()
        self.controller, self.windows = controller, windows
        self.window = None

    def on_train_batch_begin(self, batch, logs=None):
        self.window = next(self.windows, None)
        if self.window is None:  # cannot happen: fit runs exactly the planned steps
            raise RuntimeError("Keras fit ran more chunks than the controller planned")
        self.controller.begin_window(self.window)

    def on_train_batch_end(self, batch, logs=None):
        loss = self.controller.end_window(self.window, logs["loss"])
        # Keras looks at stop_training after a chunk: a stop request ends fit before the next one.
        if self.controller.window_done(self.window, loss) or self.controller.stop_requested:
            self.model.stop_training = True


class _StopEvaluating(keras.callbacks.Callback):
    """Ends `model.evaluate` after the batch (chunk) during which `should_stop()` became true."""

    def __init__(self, should_stop):
        super().__init__()
        self.should_stop, self.stopped = should_stop, False

    def on_test_batch_end(self, batch, logs=None):
        if self.should_stop and self.should_stop():
            self.stopped = self.model.stop_evaluating = True


class Normalize(keras.layers.Layer):
    """uint8 images -> standardised float32 (bench.training.data.normalize as a layer)."""

    def call(self, images):
        return data.normalize(images)


class Inference:
    """`--mode inference`: forward passes only, one batch per step, each step its own window (its latency).

    Input: the test set, repeated (real data), or one batch made on each device (synthetic). The
    step's value is the mean logit, read back at the window's end (that read is part of a request's
    latency, and a non-finite one marks the run diverged).
    """

    def __init__(self, cfg, device_setup, source, schedule):
        self.cfg, self.device_setup, self.source = cfg, device_setup, source
        self.model, _, self.batch_norm = model_and_optimizer(cfg, device_setup.strategy, schedule)
        self.augment = "none"
        self.xla_scope = "forward" if cfg.xla else "none"
        self.value_name = "mean logit"  # what each window returns (the progress line shows it)
        self.params = _count_params(self.model)
        self.fixed_window = 1  # true per-batch latency percentiles
        self.drives_own_loop = False
        self.can_evaluate = False
        forward = tf.function(self._forward, jit_compile=True) if cfg.xla else self._forward
        self._replica_forward = forward
        self._one = tf.function(self._infer_one)
        self._iterator = None

    def checkpoint_objects(self):
        return {"model": self.model}

    def steps_done(self):
        return 0

    def skipped_steps(self):
        return None

    def _forward(self, images):
        return tf.reduce_mean(tf.cast(self.model(data.normalize(images), training=False), tf.float32))

    def _infer_one(self, iterator):
        images, _ = next(iterator)
        per_replica = self.device_setup.strategy.run(self._replica_forward, args=(images,))
        return self.device_setup.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    def learning_rate(self):
        return None

    def drive(self, controller):
        raise NotImplementedError("the controller drives the forward passes")

    def run_steps(self, num_steps):
        """One forward pass of one batch (every window is one: `fixed_window`; no in-graph loop around a single
        batch, ~0.7 ms less per call at batch 1); returns its mean logit."""
        if num_steps != 1:
            raise ValueError(f"inference windows are one batch each, not {num_steps}")
        if self._iterator is None:
            self._iterator = self._input()
        return self._one(self._iterator)

    def _input(self):
        cfg, strategy = self.cfg, self.device_setup.strategy
        if self.source.kind == "synthetic" or not self.source.test_images:
            return data.SyntheticIterator(data.synthetic_batches(strategy, cfg.batch_size, cfg.seed))
        return iter(data.distribute_inference(strategy, self.source, cfg.batch_size))

    def evaluate(self, should_stop=None):
        raise RuntimeError("inference runs have no evaluation (can_evaluate is False)")
