"""build_resnet: the CIFAR ResNets of He et al. 2015 (original) and 2016 (pre-activation)."""

from __future__ import annotations

import sys

import keras

from resnet import spec
from resnet.blocks import BLOCK_FUNCTIONS
from resnet.layers import LayerFactory


def build_resnet(
    n,
    block="preact",
    shortcut="B",
    num_classes=10,
    precision="float32",
    sync_bn=False,
    input_shape=(32, 32, 3),
    batch_norm="keras",
):
    """Build a CIFAR ResNet as a Keras functional model returning float32 logits.

    Args:
      n: blocks per stage; depth is 6n+2 (9n+2 for `bottleneck`): n=3 -> ResNet-20,
        n=18 -> ResNet-110 (ResNet-164 as bottleneck), n=200 -> ResNet-1202.
      block: `preact` (full pre-activation, default), `original` or `bottleneck`.
      shortcut: `A` (identity; zero-padded, subsampled where the shape changes),
        `B` (identity; 1x1 projection where the shape changes) or `C` (projection everywhere).
      num_classes: size of the dense output layer.
      precision: Keras dtype policy for every layer: `float32`, `mixed_float16` or
        `mixed_bfloat16`. The logits are always cast to float32 (softmax and loss in float32).
      sync_bn: use synchronized batch norm (batch statistics all-reduced over replicas).
        Without it each replica normalises with its own batch's statistics, as in the
        papers' multi-GPU training; the benchmark loop then averages the replicas'
        moving statistics so evaluation uses the whole batch's (see bench/training/steps.py).
      input_shape: (height, width, channels) of the images.
      batch_norm: `keras` (keras.layers.BatchNormalization) or `fused` (the same layer and
        arithmetic on TF's fused kernel, `resnet.layers.FusedBatchNormalization`; not with sync_bn).

    Weight decay is not part of the model: the training loop adds
    `weight_decay * sum(tf.nn.l2_loss(k) for k in decayed_kernels(model))` to the loss,
    i.e. the gradient gains `weight_decay * k` as in the papers (SGD weight decay 1e-4).

    Raises:
      ValueError: naming the bad argument and its allowed values.
    """
    spec.check_architecture(n, block, shortcut, input_shape, num_classes)
    if precision not in spec.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(spec.PRECISIONS)}; got precision={precision!r}")
    if not isinstance(sync_bn, bool):
        raise ValueError(f"sync_bn must be True or False; got sync_bn={sync_bn!r}")
    if batch_norm not in spec.BATCH_NORMS:
        raise ValueError(f"batch_norm must be one of {', '.join(spec.BATCH_NORMS)}; got batch_norm={batch_norm!r}")
    if batch_norm == "fused" and sync_bn:
        raise ValueError("batch_norm='fused' cannot synchronize batch statistics; use batch_norm='keras' with sync_bn")

    # Keras walks the functional graph recursively: ResNet-1202 needs far more
    # than the default 1000 (TF's import sets 3000) Python frames.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000 + 100 * n))
    f = LayerFactory(precision, sync_bn, batch_norm)
    block_fn = BLOCK_FUNCTIONS[block]
    inputs = keras.Input(shape=input_shape, name="images")
    x = f.conv(spec.STEM_FILTERS, 3, 1, "stem_conv")(inputs)
    if block == "original":
        x = f.relu("stem_relu")(f.bn("stem_bn")(x))
    for s, (width, stride) in enumerate(zip(spec.STAGE_WIDTHS, spec.STAGE_STRIDES), start=1):
        for b in range(1, n + 1):
            x = block_fn(f, x, width, stride if b == 1 else 1, shortcut, f"stage{s}_block{b}")
    if block != "original":  # pre-activation nets end with BN -> ReLU before pooling
        x = f.relu("final_relu")(f.bn("final_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(dtype=f.policy, name="pool")(x)
    x = f.dense(num_classes, "fc")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    name = f"resnet{spec.depth(n, block)}_{block}_{shortcut}"
    return keras.Model(inputs, logits, name=name)


def decayed_kernels(model):
    """The variables that get L2 weight decay: every conv and dense kernel (not BN, not biases)."""
    return [layer.kernel for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def batch_norm_layers(model):
    """Every BatchNormalization layer of the model, in order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
