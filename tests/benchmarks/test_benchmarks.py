"""pytest-benchmark measurements of the library's own step builders (never copies).

`pytest --benchmark-only` measures: ResNet-20/56 training steps (batch 128) in float32 and
mixed_bfloat16, XLA off/on, 1 and 2 replicas (ResNet-56: no XLA, 1 replica); the eval step; the input pipeline
from CIFAR files with augmentation; the custom loop against Keras `fit`. Each measured call ends with a
device sync, the trace/compile call and a warm-up round stay outside the measurement, and
`extra_info["images_per_call"]` lets conftest turn the measured round times into images/sec (JSON and
console table). Under a plain `pytest` (benchmarks disabled) each runs once on a small batch and a
one-block model: a smoke test of the path.

Test ids filter with `-k`: precision `fp32`/`bf16`, XLA `plain`/`xla`, replicas `1rep`/`2rep`
(`-k "not xla"`, `-k "resnet20 and bf16"`). A precision this CPU only emulates is skipped when measured
(BENCH_EMULATED=1 measures it anyway) and still smoke-run under a plain `pytest`.
"""

import gc
import os

import numpy as np
import pytest
import tensorflow as tf
from cifar_files import write_cifar

from bench.config import defaults
from bench.config.options import RunConfig
from bench.hardware import cpu_features
from bench.runner.timing import device_sync
from bench.selfcheck import env as selfcheck
from bench.training import data

MODELS = {"resnet20": 3, "resnet56": 9}
PRECISION_IDS = {"float32": "fp32", "mixed_bfloat16": "bf16"}  # bench.config's aliases for them
XLA_IDS = {False: "plain", True: "xla"}  # never "noxla": `-k "not xla"` would drop it
REPLICA_IDS = {1: "1rep", 2: "2rep"}
STEPS_PER_CALL = 5
BN = defaults.resolve_batch_norm(RunConfig(), "CPU")  # what bench.run uses on these (CPU) devices


def train_cases():
    """(model, precision, xla, replicas) of the training-step benchmarks, with ids that `-k` can filter.

    ResNet-20 covers the whole grid. ResNet-56 (the depth comparison) runs without XLA on one replica:
    its XLA rows alone took 320 s of a 15-minute suite on 2 shared cores (compilation of 56 layers
    plus 7 slow calls each), and XLA and replica scaling are already measured on ResNet-20.
    """
    return [
        pytest.param(
            model,
            precision,
            xla,
            replicas,
            id=f"{model}-{PRECISION_IDS[precision]}-{XLA_IDS[xla]}-{REPLICA_IDS[replicas]}",
        )
        for model in MODELS
        for precision in PRECISION_IDS
        for xla in XLA_IDS
        for replicas in REPLICA_IDS
        if model == "resnet20" or (not xla and replicas == 1)
    ]


def sizes(benchmark, n):
    """(n, global batch, steps per call, rounds): the real thing, or a smoke-test miniature."""
    if benchmark.disabled:
        return 1, 16, 1, 1
    return n, 128, STEPS_PER_CALL, 5


def emulated_skip_reason(precision, measuring, environ=os.environ, cpuinfo_text=None):
    """Why a measured benchmark of `precision` is skipped on this CPU, or None to run it.

    Emulated low precision is about ten times slower than float32 (hours for the suite) and measures
    the emulation, not the harness. Smoke runs (`measuring` False) are tiny and still check the path.
    """
    if not measuring or environ.get("BENCH_EMULATED") == "1":
        return None
    reason = cpu_features.emulated_precision(precision, "CPU", cpuinfo_text=cpuinfo_text)
    return reason and f"{reason}; set BENCH_EMULATED=1 to run it anyway"


def sized_trainer(check_env, monkeypatch, strategy, n, batch, **kwargs):
    """bench.selfcheck's step builder (its ResNet-8) with `n` blocks per stage."""
    monkeypatch.setattr(selfcheck, "N_BLOCKS", n)
    return selfcheck.make_step_functions(check_env, strategy, batch, **kwargs)


def synthetic_iterator(strategy, batch):
    return data.SyntheticIterator(data.synthetic_batches(strategy, batch, seed=0))


def record(benchmark, images_per_call, **info):
    """Describe the measurement; conftest derives images/sec from `images_per_call` and the round times."""
    benchmark.extra_info.update(info, images_per_call=images_per_call)


@pytest.mark.parametrize("model, precision, xla, replicas", train_cases())
def test_train_step(benchmark, check_env, monkeypatch, strategies, model, precision, xla, replicas):
    reason = emulated_skip_reason(precision, measuring=not benchmark.disabled)
    if reason:
        pytest.skip(reason)
    n, batch, k, rounds = sizes(benchmark, MODELS[model])
    strategy = strategies[replicas]
    trainer = sized_trainer(check_env, monkeypatch, strategy, n, batch, precision=precision, xla=xla, batch_norm=BN)
    measure_train_calls(benchmark, trainer, strategy, batch, k, rounds)
    record(
        benchmark, k * batch, model=model, precision=precision, xla=xla, replicas=replicas, batch=batch, batch_norm=BN
    )


@pytest.mark.parametrize("batch_norm", ["keras", "fused"])
def test_batch_norm_kernels(benchmark, check_env, monkeypatch, strategies, batch_norm):
    """ResNet-20, float32, one device: Keras's BatchNormalization against the same layer on the fused kernel."""
    n, batch, k, rounds = sizes(benchmark, MODELS["resnet20"])
    trainer = sized_trainer(check_env, monkeypatch, strategies[1], n, batch, batch_norm=batch_norm)
    measure_train_calls(benchmark, trainer, strategies[1], batch, k, rounds)
    record(benchmark, k * batch, model="resnet20", batch_norm=batch_norm, batch=batch)


def measure_train_calls(benchmark, trainer, strategy, batch, k, rounds):
    """Time `rounds` calls of `k` training steps each; every call ends with the device synced.

    The first call (trace, compile, first steps) and one warm-up round are outside the measurement.
    """
    it = synthetic_iterator(strategy, batch)
    steps = tf.constant(k)

    def call():
        loss = trainer.train(it, steps)
        device_sync(loss)
        return loss

    call()  # trace and compile outside the measurement
    loss = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("replicas", list(REPLICA_IDS), ids=list(REPLICA_IDS.values()))
def test_eval_step(benchmark, check_env, monkeypatch, strategies, replicas):
    n, batch, k, rounds = sizes(benchmark, MODELS["resnet20"])
    strategy = strategies[replicas]
    trainer = sized_trainer(check_env, monkeypatch, strategy, n, batch, batch_norm=BN)
    images, labels = data.synthetic_batches(strategy, batch, seed=1)
    mask = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.ones([batch // strategy.num_replicas_in_sync])
    )
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
def test_custom_loop_vs_keras_fit(benchmark, check_env, monkeypatch, strategies, loop):
    """The same model, precision, batch and steps per call through the custom loop and Keras fit."""
    import keras

    from bench.training.trainers import Normalize

    n, batch, k, rounds = sizes(benchmark, MODELS["resnet20"])
    strategy = strategies[1]
    trainer = sized_trainer(check_env, monkeypatch, strategy, n, batch, batch_norm=BN)
    if loop == "ctl":
        it = synthetic_iterator(strategy, batch)
        steps = tf.constant(k)

        def call():
            loss = trainer.train(it, steps)
            device_sync(loss)
            return float(loss)
    else:
        model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), Normalize(), trainer.model])
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            steps_per_execution=k,
            jit_compile=False,
        )  # as the custom loop here ("auto" means XLA where GPUs are visible)
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
    record(benchmark, batches * batch, batch=batch, replicas=2, host_cores=os.cpu_count())
    it = images = parts = None  # stop the pipeline's threads before anything else is measured
    gc.collect()
