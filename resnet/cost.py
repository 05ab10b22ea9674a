"""Analytic cost of a CIFAR ResNet: multiply-adds and FLOPs per image.

Counted: every convolution and the final dense layer (multiply-adds of the
weights, H_out * W_out * k * k * C_in * C_out for a conv). Not counted: batch
norm, ReLU, the residual additions, option-A padding and the pooling; together
they are well under 1% of the total for every depth. FLOPs = 2 * multiply-adds.

Training cost per image is estimated as 3x the forward pass (the backward pass
computes gradients for both activations and weights, each about one forward).
This is the convention used for MFU in the benchmark.
"""

from __future__ import annotations

import dataclasses
import math

from resnet import spec


@dataclasses.dataclass(frozen=True)
class Cost:
    macs: int  # multiply-adds of one forward pass of one image
    forward_flops: int  # 2 * macs
    train_flops: int  # forward + backward estimate: 3 * forward_flops


def _conv_macs(h, w, k, c_in, c_out, stride):
    h_out, w_out = math.ceil(h / stride), math.ceil(w / stride)  # 'same' padding
    return h_out * w_out * k * k * c_in * c_out, h_out, w_out


def forward_macs(n, block="preact", shortcut="B", input_shape=(32, 32, 3), num_classes=10):
    """Multiply-adds of one forward pass of one image."""
    spec.check_architecture(n, block, shortcut, input_shape, num_classes)
    h, w, c = input_shape
    total, h, w = _conv_macs(h, w, 3, c, spec.STEM_FILTERS, 1)
    c = spec.STEM_FILTERS
    outs = spec.stage_out_channels(block)
    for width, c_out, stride in zip(spec.STAGE_WIDTHS, outs, spec.STAGE_STRIDES):
        for i in range(n):
            s = stride if i == 0 else 1
            if block == "bottleneck":
                m1, _, _ = _conv_macs(h, w, 1, c, width, 1)
                m2, h2, w2 = _conv_macs(h, w, 3, width, width, s)
                m3, _, _ = _conv_macs(h2, w2, 1, width, c_out, 1)
                body = m1 + m2 + m3
            else:
                m1, h2, w2 = _conv_macs(h, w, 3, c, c_out, s)
                m2, _, _ = _conv_macs(h2, w2, 3, c_out, c_out, 1)
                body = m1 + m2
            if needs_projection(shortcut, c, c_out, s):
                body += _conv_macs(h, w, 1, c, c_out, s)[0]
            total += body
            h, w, c = h2, w2, c_out
    return total + c * num_classes


def needs_projection(shortcut, c_in, c_out, stride):
    """Whether a block's shortcut is a 1x1 projection conv (options B and C)."""
    if shortcut == "C":
        return True
    if shortcut == "B":
        return c_in != c_out or stride != 1
    return False


def cost(n, block="preact", shortcut="B", input_shape=(32, 32, 3), num_classes=10):
    """The `Cost` of one image for the given architecture."""
    macs = forward_macs(n, block, shortcut, input_shape, num_classes)
    return Cost(macs=macs, forward_flops=2 * macs, train_flops=6 * macs)
