"""pytest-benchmark: cost per image of the device-side batched pad-crop-flip (`bench.training.augment`).

`pytest tests/benchmarks/test_augment_benchmark.py --benchmark-only` measures one uint8
batch of 128 and of 2048 CIFAR images augmented on /cpu:0, plain TF and XLA; each call
ends with a device sync and `extra_info["us_per_image"]` is computed from the measured
mean. A plain `pytest` runs each once on 16 images (smoke test).
"""

import numpy as np
import pytest
import tensorflow as tf

from bench.runner.timing import device_sync
from bench.training import augment


@pytest.mark.parametrize("xla", [False, True], ids=["plain", "xla"])
@pytest.mark.parametrize("batch", [128, 2048])
def test_device_augmentation(benchmark, batch, xla):
    if benchmark.disabled:
        batch = 16
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))

    @tf.function(jit_compile=xla)
    def augment_batch(x, step):
        return augment.pad_crop_flip(x, augment.step_seed(0, step, 0))

    step = tf.Variable(0, dtype=tf.int64)

    def call():
        step.assign_add(1)  # a new draw every call, as in training
        out = augment_batch(images, step.read_value())
        device_sync(out)  # CPU: no copy worth the name (the host view of a host tensor)
        return out

    call()  # trace and compile outside the measurement
    out = benchmark.pedantic(
        call, rounds=1 if benchmark.disabled else 50, iterations=1, warmup_rounds=0 if benchmark.disabled else 5
    )
    assert out.shape == (batch, 32, 32, 3) and out.dtype == tf.uint8
    assert not np.array_equal(out.numpy(), images.numpy())  # cropped and flipped, not copied
    benchmark.extra_info.update(batch=batch, xla=xla, device="/cpu:0", images_per_call=batch)
    if not benchmark.disabled and benchmark.stats:
        benchmark.extra_info["us_per_image"] = benchmark.stats.stats.mean / batch * 1e6
