"""The architecture as data: choices, stage widths and argument validation.

Imports nothing heavy, so the cost model, the benchmark config and the sweep
driver can validate and describe a network without TensorFlow.
"""

from __future__ import annotations

BLOCKS = ("preact", "original", "bottleneck")
SHORTCUTS = ("A", "B", "C")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies: the one list of precisions
PRECISION_ALIASES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}  # accepted on command lines
COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
BATCH_NORMS = ("keras", "fused")  # keras.layers.BatchNormalization, or the same layer on the fused kernel

STEM_FILTERS = 16
STAGE_WIDTHS = (16, 32, 64)  # filters of the 3x3 convs in stages 1, 2, 3
STAGE_STRIDES = (1, 2, 2)
BOTTLENECK_EXPANSION = 4  # a bottleneck block outputs 4x its inner width

DEFAULT_WEIGHT_DECAY = 1e-4
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_architecture(n, block, shortcut, input_shape=(32, 32, 3), num_classes=10):
    """Raise ValueError naming the bad argument and the allowed values."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (depth 6n+2, or 9n+2 for bottleneck); got n={n!r}")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}; got block={block!r}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}; got shortcut={shortcut!r}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ValueError(
            f"input_shape must be (height, width, channels) of positive integers, "
            f"e.g. (32, 32, 3); got input_shape={input_shape!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1; got num_classes={num_classes!r}")


def canonical_precision(value):
    """`fp32`/`fp16`/`bf16` -> the Keras policy name; other values unchanged."""
    return PRECISION_ALIASES.get(value, value)


def depth(n, block="preact"):
    """Number of weighted layers: 6n+2 for the basic blocks, 9n+2 for bottlenecks."""
    return (9 if block == "bottleneck" else 6) * n + 2


def stage_out_channels(block):
    """Output channels of each stage's blocks."""
    if block == "bottleneck":
        return tuple(w * BOTTLENECK_EXPANSION for w in STAGE_WIDTHS)
    return STAGE_WIDTHS
