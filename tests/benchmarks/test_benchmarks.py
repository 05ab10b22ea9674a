"""pytest-benchmark measurements of the library's own step builders (never copies).

`pytest --benchmark-only` measures: ResNet-20/56 training steps (batch 128) in float32 and
mixed_bfloat16, XLA off/on, 1 and 2 replicas; the eval step; the input pipeline from CIFAR files
with augmentation; the custom loop against Keras `fit`. Each measured call ends with a device sync and
`extra_info["images_per_sec"]` is computed from the measured mean. Under a plain `pytest`
(benchmarks disabled) each runs once on a small batch and a one-block model: a smoke test of the path.
"""

import gc

import numpy as np
import pytest
import tensorflow as tf

from bench import config, data
from bench.config import RunConfig
from bench.timing import device_sync
from cifar_files import write_cifar
from helpers import make_trainer

MODELS = {"resnet20": 3, "resnet56": 9}
STEPS_PER_CALL = 5
BN = config.resolve_batch_norm(RunConfig(), "CPU")  # what bench.run uses on these (CPU) devices


def sizes(benchmark, n):
    """(n, global batch, steps per call, rounds): the real thing, or a smoke-test miniature."""
    if benchmark.disabled:
        return 1, 16, 1, 1
    return n, 128, STEPS_PER_CALL, 5


def synthetic_iterator(strategy, batch):
    return data.SyntheticIterator(data.synthetic_batches(strategy, batch, seed=0))


def record(benchmark, images_per_call, **info):
    benchmark.extra_info.update(info)
    if not benchmark.disabled and benchmark.stats:
        benchmark.extra_info["images_per_sec"] = images_per_call / benchmark.stats.stats.mean


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("xla", [False, True], ids=["noxla", "xla"])
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("model", list(MODELS))
def test_train_step(benchmark, strategies, model, precision, xla, replicas):
    n, batch, k, rounds = sizes(benchmark, MODELS[model])
    strategy = strategies[replicas]
    trainer = make_trainer(strategy, n=n, precision=precision, xla=xla, batch=batch, batch_norm=BN)
    measure_train_calls(benchmark, trainer, strategy, batch, k, rounds)
    record(benchmark, k * batch, model=model, precision=precision, xla=xla, replicas=replicas, batch=batch,
           batch_norm=BN)


@pytest.mark.parametrize("batch_norm", ["keras", "fused"])
def test_batch_norm_kernels(benchmark, strategies, batch_norm):
    """ResNet-20, float32, one device: Keras's BatchNormalization against the same layer on the fused kernel."""
    n, batch, k, rounds = sizes(benchmark, MODELS["resnet20"])
    trainer = make_trainer(strategies[1], n=n, batch=batch, batch_norm=batch_norm)
    measure_train_calls(benchmark, trainer, strategies[1], batch, k, rounds)
    record(benchmark, k * batch, model="resnet20", batch_norm=batch_norm, batch=batch)


def measure_train_calls(benchmark, trainer, strategy, batch, k, rounds):
    it = synthetic_iterator(strategy, batch)
    steps = tf.constant(k)

    def call():
        loss = trainer.train(it, steps)
        device_sync(loss)
        return loss

    call()  # trace and compile outside the measurement
    loss = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("replicas", [1, 2])
def test_eval_step(benchmark, strategies, replicas):
    n, batch, k, rounds = sizes(benchmark, MODELS["resnet20"])
    strategy = strategies[replicas]
    trainer = make_trainer(strategy, n=n, batch=batch, batch_norm=BN)
    images, labels = data.synthetic_batches(strategy, batch, seed=1)
    mask = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.ones([batch // strategy.num_replicas_in_sync]))
    it = data.SyntheticIterator((images, labels, mask))
    batches = tf.constant(k)

    def call():
        out = trainer.eval_loop(it, batches)
        device_sync(out)
        return out

    call()
    correct, _, count = benchmark.pedantic(call, rounds=rounds, iterations=1)
    assert float(count) == k * batch and 0 <= float(correct) <= float(count)
    record(benchmark, k * batch, replicas=replicas, batch=batch)


@pytest.mark.parametrize("loop", ["ctl", "fit"])
def test_custom_loop_vs_keras_fit(benchmark, strategies, loop):
    """The same model, precision, batch and steps per call through the custom loop and Keras fit."""
    import keras

    from bench.trainers import Normalize

    n, batch, k, rounds = sizes(benchmark, MODELS["resnet20"])
    strategy = strategies[1]
    trainer = make_trainer(strategy, n=n, batch=batch, batch_norm=BN)
    if loop == "ctl":
        it = synthetic_iterator(strategy, batch)
        steps = tf.constant(k)

        def call():
            loss = trainer.train(it, steps)
            device_sync(loss)
            return float(loss)
    else:
        model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), Normalize(), trainer.model])
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=k,
                      jit_compile=False)  # as the custom loop here ("auto" means XLA where GPUs are visible)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, (batch,), dtype=np.int32)
        ds = tf.data.Dataset.from_tensors((images, labels)).repeat()

        def call():
            history = model.fit(ds, steps_per_epoch=k, epochs=1, verbose=0, shuffle=False)
            device_sync()
            return history.history["loss"][-1]

    call()
    loss = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)
    assert np.isfinite(loss)
    record(benchmark, k * batch, loop=loop, batch=batch, batch_norm=BN)


def test_input_pipeline(benchmark, tmp_path, strategies):
    """Augmented batches from CIFAR binary files through the distributed pipeline (host side only).

    Last in the file: a live pipeline's prefetch threads would disturb any measurement after it.
    """
    records = 512 if benchmark.disabled else 10_000
    folder, _ = write_cifar(str(tmp_path), train_per_file=(records,), test=16)
    source = data.resolve(RunConfig(data="files", cifar_dir=folder))
    batch = 128
    it = iter(data.distribute_train(strategies[2], source, batch, seed=0))
    batches = 2 if benchmark.disabled else 40
    next(it)  # start the pipeline (and fill its cache) outside the measurement

    def call():
        for _ in range(batches):
            images, _ = next(it)
        device_sync(images)
        return images

    images = benchmark.pedantic(call, rounds=1 if benchmark.disabled else 5, iterations=1)
    parts = strategies[2].experimental_local_results(images)
    assert parts[0].shape == (batch // 2, 32, 32, 3)
    record(benchmark, batches * batch, batch=batch, replicas=2)
    it = images = parts = None  # stop the pipeline's threads before anything else is measured
    gc.collect()
