"""The residual blocks (He et al. 2015, 2016) and their shortcuts.

Each block function takes a Keras tensor and returns one; `f` is a
`resnet.layers.LayerFactory`, `prefix` names the block's layers
(`stage2_block1_conv1`, `stage2_block1_shortcut`, ...).

Pre-activation blocks share their first BN -> ReLU between the residual branch
and a projection shortcut (B where the shape changes, C always), as in the
2016 paper's code; an identity or option-A shortcut takes the block input as it
is. The projection of a pre-activation block has no BN of its own (its input
is already normalised); the projection of an original block is conv -> BN.
"""

from __future__ import annotations

from resnet import spec
from resnet.cost import needs_projection


def _shortcut(f, x, c_out, stride, shortcut, prefix, with_bn):
    c_in = x.shape[-1]
    if needs_projection(shortcut, c_in, c_out, stride):
        y = f.conv(c_out, 1, stride, f"{prefix}_shortcut")(x)
        return f.bn(f"{prefix}_shortcut_bn")(y) if with_bn else y
    if c_in != c_out or stride != 1:  # option A where the shape changes
        return f.pad_shortcut(c_out, stride, f"{prefix}_shortcut")(x)
    return x


def preact_block(f, x, width, stride, shortcut, prefix):
    """Full pre-activation: BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, plus shortcut."""
    act = f.relu(f"{prefix}_preact_relu")(f.bn(f"{prefix}_preact_bn")(x))
    projects = needs_projection(shortcut, x.shape[-1], width, stride)
    short = _shortcut(f, act if projects else x, width, stride, shortcut, prefix, with_bn=False)
    y = f.conv(width, 3, stride, f"{prefix}_conv1")(act)
    y = f.relu(f"{prefix}_relu1")(f.bn(f"{prefix}_bn1")(y))
    y = f.conv(width, 3, 1, f"{prefix}_conv2")(y)
    return f.add(f"{prefix}_add")([y, short])


def original_block(f, x, width, stride, shortcut, prefix):
    """Post-activation: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, add shortcut, ReLU."""
    short = _shortcut(f, x, width, stride, shortcut, prefix, with_bn=True)
    y = f.conv(width, 3, stride, f"{prefix}_conv1")(x)
    y = f.relu(f"{prefix}_relu1")(f.bn(f"{prefix}_bn1")(y))
    y = f.conv(width, 3, 1, f"{prefix}_conv2")(y)
    y = f.bn(f"{prefix}_bn2")(y)
    y = f.add(f"{prefix}_add")([y, short])
    return f.relu(f"{prefix}_out_relu")(y)


def bottleneck_block(f, x, width, stride, shortcut, prefix):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (strided), BN-ReLU-conv1x1 (expanded)."""
    c_out = width * spec.BOTTLENECK_EXPANSION
    act = f.relu(f"{prefix}_preact_relu")(f.bn(f"{prefix}_preact_bn")(x))
    projects = needs_projection(shortcut, x.shape[-1], c_out, stride)
    short = _shortcut(f, act if projects else x, c_out, stride, shortcut, prefix, with_bn=False)
    y = f.conv(width, 1, 1, f"{prefix}_conv1")(act)
    y = f.relu(f"{prefix}_relu1")(f.bn(f"{prefix}_bn1")(y))
    y = f.conv(width, 3, stride, f"{prefix}_conv2")(y)
    y = f.relu(f"{prefix}_relu2")(f.bn(f"{prefix}_bn2")(y))
    y = f.conv(c_out, 1, 1, f"{prefix}_conv3")(y)
    return f.add(f"{prefix}_add")([y, short])


BLOCK_FUNCTIONS = {
    "preact": preact_block,
    "original": original_block,
    "bottleneck": bottleneck_block,
}
