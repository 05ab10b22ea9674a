"""Layer factories shared by the blocks: one place sets initialisers, BN and dtype."""

from __future__ import annotations

import keras

from resnet import spec


class LayerFactory:
    """Makes the network's layers with one dtype policy and one BN setting.

    Convolutions that feed a batch norm have no bias; every kernel is He-normal.
    Weight decay is *not* attached to the layers: the training loop adds it
    (see `resnet.model.decayed_kernels`).
    """

    def __init__(self, precision="float32", sync_bn=False):
        self.policy = keras.DTypePolicy(precision)
        self.sync_bn = sync_bn

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
        return keras.layers.BatchNormalization(
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
