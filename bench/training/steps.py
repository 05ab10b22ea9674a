"""The one train/eval step builder for every strategy, precision and XLA setting.

Shape of a training call (`StepFunctions.train(iterator, num_steps)`):

    train_loop (one tf.function):
      for _ in tf.range(num_steps):               # steps_per_loop steps in-graph
          strategy.run(replica_step, next(iterator))
              loss, grads = forward_backward(...) # XLA-compiled when xla=True
              optimizer.apply_gradients(grads)    # all-reduce (sum) + SGD update
    average_moving_statistics (a second one)      # unless sync_bn or one replica (see below)

* The loss is the cross-entropy averaged over the **global** batch
  (`tf.nn.compute_average_loss`) plus `weight_decay * sum(l2_loss(kernels))`
  divided by the number of replicas (`tf.nn.scale_regularization_loss`), so the
  summed gradients equal a single-device step on the whole batch.
* mixed_float16 goes through `keras.optimizers.LossScaleOptimizer`:
  `scale_loss` before the gradient, `apply_gradients` unscales and skips steps
  whose gradients are not finite (the loss scale then halves).
  Trap (Keras 3.15, TF 2.21): on the merge-call path MirroredStrategy takes on
  CPUs and GPUs, the optimizer decides "finite" from replica 0's LOCAL,
  not-yet-summed gradients. An overflow on another replica alone was summed
  into every replica's weights (all NaN) and the scale stayed put. So the replica
  step all-reduces a "this replica overflowed" flag first and, when any replica
  did, hands the optimizer all-NaN gradients on every replica: each local check
  then agrees, the step is skipped everywhere and the scale halves once.
  `StepFunctions.skipped_steps` counts these steps.
* XLA: with one replica the whole replica step (forward, backward, overflow
  agreement, optimizer update) is one compiled executable (`xla_scope="step"`).
  With two or more only the forward/backward is jit-compiled: compiling
  `apply_gradients` or the whole `strategy.run` fails there in TF 2.21
  (resource on another device), and the overflow all-reduce stays outside it.
  Synchronized BN all-reduces inside the forward pass, which cannot run in a
  nested compiled function: sync_bn + XLA is refused with two or more replicas
  (`bench.config.validation.check_xla_over_replicas`).
* `augment_on_device=True`: the training batch (uint8, as it came from the
  host) is zero-padded, randomly cropped and flipped inside the forward/backward
  (`bench.training.augment`, XLA-compatible), seeded from (augment_seed, step, replica),
  before normalisation. The input pipeline must then skip its own augmentation.
  Evaluation never augments.
* Keras 3 BatchNormalization keeps its moving statistics per replica. Without
  synchronized BN each replica updates its own copy from its own batch; the
  copies are averaged at the end of every training call. The moving average is
  linear, so this equals averaging every step, and all replicas (and
  evaluation) see the statistics of the whole global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from bench.config.recipe import MOMENTUM
from bench.training import augment
from bench.training.data import normalize
from resnet.model import batch_norm_layers, decayed_kernels


class StepFunctions:
    """Compiled training and evaluation loops over a model and optimizer built under `strategy`.

    `inject_nan_at_step` / `inject_inf_grad_at=(step, replica)` (replica None: all;
    `inject_inf_grad_at_step=k` is `(k, None)`) are fault injection for tests.
    `augment_on_device` pads, crops and flips each training batch inside the step,
    seeded from `augment_seed`, the step and the replica (see `bench.training.augment`).
    `skipped_steps` (int64 variable) counts steps the loss scaling skipped. `step`: the global step
    variable (`global_step_variable`) when the optimizer's schedule reads it (`make_optimizer(step=...)`).
    """

    def __init__(
        self,
        model,
        optimizer,
        strategy,
        global_batch_size,
        weight_decay,
        xla=False,
        sync_bn=False,
        inject_nan_at_step=None,
        inject_inf_grad_at_step=None,
        inject_inf_grad_at=None,
        augment_on_device=False,
        augment_seed=0,
        step=None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = global_batch_size
        self.weight_decay = weight_decay
        self.replicas = strategy.num_replicas_in_sync
        self._decayed = decayed_kernels(model)
        self._moving = [v for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]
        self._average_bn = self.replicas > 1 and not sync_bn
        self._loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self._augment_on_device = augment_on_device
        self._augment_seed = augment_seed
        self._inject_nan_at_step = inject_nan_at_step
        # (step, replica): the gradients of `replica` (None: every replica) are inf at `step`.
        if inject_inf_grad_at is None and inject_inf_grad_at_step is not None:
            inject_inf_grad_at = (inject_inf_grad_at_step, None)
        self._inject_inf_grad_at = inject_inf_grad_at
        with strategy.scope():
            # Trap: under MirroredStrategy the optimizer's slots must exist before the first
            # traced step, or the first call fails with an unfed placeholder.
            optimizer.build(model.trainable_variables)
            self.global_step = global_step_variable() if step is None else step
            # Steps the loss scaling skipped because some replica's gradients overflowed.
            self.skipped_steps = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="skipped_steps",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            # The learning rate the last step applied (read where the update reads it; TensorBoard shows it).
            self.last_learning_rate = tf.Variable(
                0.0,
                dtype=tf.float32,
                trainable=False,
                name="last_learning_rate",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        # XLA: on one replica the whole replica step (forward, backward, optimizer update) is one
        # compiled executable; over several only the forward/backward (WORKSPACE.md, "Traps": XLA over replicas).
        whole_step = xla and self.replicas == 1
        self.xla_scope = "step" if whole_step else ("forward_backward" if xla else "none")
        fb = self._forward_backward
        self._fb = tf.function(fb, jit_compile=True) if xla and not whole_step else fb
        step_fn = self._replica_step
        self._step_fn = tf.function(step_fn, jit_compile=True) if whole_step else step_fn
        fwd = self._logits
        self._fwd = tf.function(fwd, jit_compile=True) if xla else fwd
        self.train_loop = tf.function(self._train_loop)
        self.eval_loop = tf.function(self._eval_loop)
        self.average_moving_statistics = tf.function(self._average_moving_statistics)

    # -- per-replica pieces -------------------------------------------------

    def _logits(self, images, training):
        return self.model(normalize(images), training=training)

    def _forward_backward(self, images, labels, step, replica):
        variables = self.model.trainable_variables
        if self._augment_on_device:
            images = augment.pad_crop_flip(images, augment.step_seed(self._augment_seed, step, replica))
        with tf.GradientTape() as tape:
            logits = self._logits(images, training=True)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            ce = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            l2 = tf.add_n([tf.nn.l2_loss(k) for k in self._decayed])
            loss = ce + tf.nn.scale_regularization_loss(self.weight_decay * l2)
            # Fault injection for tests multiplies by a factor (tf.where on the loss itself
            # would put NaN into the gradient of the branch not taken).
            if self._inject_nan_at_step is not None:
                poison = tf.where(step == self._inject_nan_at_step, float("nan"), 1.0)
                loss, ce = loss * poison, ce * poison
            scaled = self.optimizer.scale_loss(loss)
            if self._inject_inf_grad_at is not None:
                at_step, at_replica = self._inject_inf_grad_at
                hit = step == at_step
                if at_replica is not None:
                    hit = tf.logical_and(hit, replica == at_replica)
                scaled = scaled * tf.where(hit, float("inf"), 1.0)
        grads = tape.gradient(scaled, variables)
        return ce, grads

    def _replica_step(self, images, labels, step):
        ctx = tf.distribute.get_replica_context()
        # Passed in rather than read inside the (possibly XLA-compiled) forward/backward.
        replica = ctx.replica_id_in_sync_group
        ce, grads = self._fb(images, labels, step, replica)
        skipped = tf.constant(0, tf.int64)
        if self._loss_scaled:
            grads, skipped = self._agree_on_overflow(ctx, grads)
        lr = tf.cast(self.optimizer.learning_rate, tf.float32)  # what this update applies
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return ce, skipped, lr

    @staticmethod
    def _agree_on_overflow(ctx, grads):
        """(grads, 1 if skipped else 0): all-NaN gradients on every replica if any replica overflowed.

        Over replicas it runs outside the XLA-compiled forward/backward: the all-reduce cannot run
        inside it with two or more replicas (see the module docstring).
        """
        local_finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        overflowed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(local_finite), tf.float32))
        finite = tf.equal(overflowed, 0.0)
        # The optimizer's own (local) check then agrees on every replica. tf.cond, not an
        # elementwise tf.where: the common finite case costs no pass over the gradients.
        grads = tf.cond(
            finite,
            lambda: [tf.identity(g) for g in grads],
            lambda: [tf.fill(tf.shape(g), tf.constant(float("nan"), g.dtype)) for g in grads],
        )
        return grads, tf.cast(tf.logical_not(finite), tf.int64)

    def _average_moving_statistics(self):
        def average():
            ctx = tf.distribute.get_replica_context()
            means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in self._moving])
            for v, m in zip(self._moving, means):
                v.value.assign(m)

        self.strategy.run(average)

    # -- compiled loops -----------------------------------------------------

    def _train_loop(self, iterator, num_steps):
        """Run `num_steps` steps; return the mean cross-entropy of these steps (float32 scalar)."""
        total = tf.constant(0.0, tf.float32)
        for _ in tf.range(num_steps):
            self.global_step.assign_add(1)
            images, labels = next(iterator)
            ce, skipped, lr = self.strategy.run(self._step_fn, args=(images, labels, self.global_step.read_value()))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, ce, axis=None)
            # Every replica holds the same all-reduced value: take replica 0's, no collective.
            self.skipped_steps.assign_add(self.strategy.experimental_local_results(skipped)[0])
            self.last_learning_rate.assign(self.strategy.experimental_local_results(lr)[0])
        return total / tf.cast(num_steps, tf.float32)

    def train(self, iterator, num_steps):
        """One training call: `num_steps` steps in-graph, then the BN statistics averaged over replicas.

        The averaging is a call of its own: an all-reduce placed after the step loop
        inside the same function collides with the loop's gradient all-reduce in TF 2.21.
        """
        loss = self.train_loop(iterator, num_steps)
        if self._average_bn:
            self.average_moving_statistics()
        return loss

    def _eval_replica(self, images, labels, mask):
        logits = self._fwd(images, training=False)
        hit = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return tf.reduce_sum(hit * mask), tf.reduce_sum(per_example * mask), tf.reduce_sum(mask)

    def _eval_loop(self, iterator, num_batches):
        """Return (correct, summed loss, count) over `num_batches` global batches."""
        sums = [tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)]
        for _ in tf.range(num_batches):
            images, labels, mask = next(iterator)
            out = self.strategy.run(self._eval_replica, args=(images, labels, mask))
            sums = [s + self.strategy.reduce(tf.distribute.ReduceOp.SUM, o, axis=None) for s, o in zip(sums, out)]
        return tuple(sums)


def global_step_variable():
    """The run's global step (int64, 1-based once a step starts; the same on every replica). Create it
    under the strategy's scope."""
    return tf.Variable(
        0, dtype=tf.int64, trainable=False, name="global_step", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
    )


class GlobalStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule read at the run's global step instead of the optimizer's iteration count.

    The two part when mixed_float16's loss scaling skips a step: the step advances, the
    optimizer's iterations do not. The recipe (He et al.) places its drops at steps, so read by
    iterations each drop would land one step late per skipped step.
    """

    def __init__(self, schedule, step):
        self.schedule, self.step = schedule, step

    def __call__(self, iterations):
        del iterations
        return self.schedule(self.step - 1)  # the step being taken is 1-based, the schedule 0-based

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}


def make_optimizer(schedule, precision, momentum=MOMENTUM, weight_decay=None, step=None):
    """SGD with momentum on `schedule` (a `bench.config.recipe.Schedule`); loss-scaled for mixed_float16.

    `weight_decay` here is Keras's decoupled optimizer decay (used by the fit baseline only;
    the custom loop adds L2 to the loss). `step`: a global step variable the schedule follows
    (the custom loop's); without one it follows the optimizer's iterations (Keras fit).
    """
    # Keras's PiecewiseConstantDecay keeps values[i] while step <= boundaries[i] (0-based
    # optimizer iterations), so a piece that starts at step s has the boundary s - 1.
    boundaries = [start - 1 for start in schedule.starts[1:]]
    values = list(schedule.values)
    lr = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values) if boundaries else values[0]
    if boundaries and step is not None:
        lr = GlobalStepSchedule(lr, step)
    opt = keras.optimizers.SGD(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
