"""The CIFAR ResNet family of He et al. 2015 and 2016.

`build_resnet` needs TensorFlow/Keras; `spec` and `cost` do not, and are
importable on their own (`from resnet import cost`).
"""

from resnet.spec import BLOCKS, DEFAULT_WEIGHT_DECAY, PRECISIONS, SHORTCUTS, depth


def __getattr__(name):
    # Keep `import resnet` free of TensorFlow for the config and sweep driver.
    if name in ("build_resnet", "decayed_kernels", "batch_norm_layers"):
        from resnet import model

        return getattr(model, name)
    raise AttributeError(name)


__all__ = [
    "BLOCKS",
    "SHORTCUTS",
    "PRECISIONS",
    "DEFAULT_WEIGHT_DECAY",
    "depth",
    "build_resnet",
    "decayed_kernels",
    "batch_norm_layers",
]
