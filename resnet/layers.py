"""Layer factories shared by the blocks: one place sets initialisers, BN and dtype."""

from __future__ import annotations

import keras
import tensorflow as tf

from resnet import spec


class LayerFactory:
    """Makes the network's layers with one dtype policy and one BN setting.

    Convolutions that feed a batch norm have no bias; every kernel is He-normal.
    Weight decay is *not* attached to the layers: the training loop adds it
    (see `resnet.model.decayed_kernels`).
    """

    def __init__(self, precision="float32", sync_bn=False, batch_norm="keras"):
        self.policy = keras.DTypePolicy(precision)
        self.sync_bn = sync_bn
        self.bn_class = FusedBatchNormalization if batch_norm == "fused" else keras.layers.BatchNormalization

    def conv(self, filters, kernel_size, strides, name):
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            dtype=self.policy,
            name=name,
        )

    def bn(self, name):
        return self.bn_class(
            momentum=spec.BN_MOMENTUM,
            epsilon=spec.BN_EPSILON,
            synchronized=self.sync_bn,
            dtype=self.policy,
            name=name,
        )

    def relu(self, name):
        return keras.layers.ReLU(dtype=self.policy, name=name)

    def add(self, name):
        return keras.layers.Add(dtype=self.policy, name=name)

    def pad_shortcut(self, channels, stride, name):
        return ZeroPadShortcut(channels, stride, dtype=self.policy, name=name)

    def dense(self, units, name):
        return keras.layers.Dense(units, kernel_initializer="he_normal", dtype=self.policy, name=name)


class ZeroPadShortcut(keras.layers.Layer):
    """Option A shortcut: stride subsampling, then zero channels appended. No parameters."""

    def __init__(self, channels, stride, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stride = stride

    def call(self, x):
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        extra = self.channels - x.shape[-1]
        if extra > 0:
            x = keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.stride
        return (b, None if h is None else -(-h // s), None if w is None else -(-w // s), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride}


@keras.saving.register_keras_serializable(package="resnet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras 3 BatchNormalization computed by TF's fused kernel (`FusedBatchNormV3`).

    Keras 3 on TensorFlow normalises with separate moment, subtract, multiply
    and add ops (a dozen kernels per layer, forward and backward); the fused
    kernel does it in one pass each way, and oneDNN has its own version of it.
    Same variables, names and checkpoints as the Keras layer, and the same
    arithmetic: batch mean and *biased* batch variance in training (the kernel
    returns the unbiased one for running averages; it is scaled back by
    (m-1)/m), moving statistics updated as Keras does,
    `moving = moving * momentum + batch * (1 - momentum)`, per replica;
    inference from the moving statistics. Half-precision inputs are normalised
    in float32 inside the kernel, as Keras upcasts them.
    Only NHWC 4-D inputs with scale and center are fused; anything else (masks,
    renorm, synchronized statistics) takes the Keras path.
    """

    def _fusable(self, inputs, mask):
        return (
            mask is None
            and not self.synchronized
            and not self.renorm
            and self.scale
            and self.center
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma, beta = self.gamma.value, self.beta.value
        if training and self.trainable:
            empty = tf.constant([], tf.float32)
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs,
                scale=gamma,
                offset=beta,
                mean=empty,
                variance=empty,
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=True,
            )
            shape = tf.shape(inputs)
            m = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance = variance * ((m - 1.0) / tf.maximum(m, 1.0))  # back to the biased variance
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs,
                scale=gamma,
                offset=beta,
                mean=self.moving_mean.value,
                variance=self.moving_variance.value,
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
