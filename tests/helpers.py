"""Small builders shared by the tests (no assertions here)."""

import numpy as np
import tensorflow as tf

from bench.config import recipe
from bench.training.steps import StepFunctions, make_optimizer
from resnet.model import build_resnet


def make_trainer(
    strategy,
    n=1,
    precision="float32",
    xla=False,
    sync_bn=False,
    batch=16,
    lr=0.05,
    seed=0,
    weight_decay=1e-4,
    batch_norm="keras",
    **inject,
):
    """StepFunctions over a small ResNet built (with `seed`) under `strategy`."""
    import keras

    keras.utils.set_random_seed(seed)
    schedule = recipe.Schedule(starts=(0,), values=(lr,))
    with strategy.scope():
        model = build_resnet(n, precision=precision, sync_bn=sync_bn, batch_norm=batch_norm)
        opt = make_optimizer(schedule, precision)
    return StepFunctions(model, opt, strategy, batch, weight_decay, xla=xla, sync_bn=sync_bn, **inject)


def fixed_batch(batch=16, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(batch,), dtype=np.int32)
    return images, labels


def distributed_iterator(strategy, images, labels, repeat=True):
    """Batches of the given arrays, split over the replicas in order (replica 0 gets the first half)."""
    ds = tf.data.Dataset.from_tensors((images, labels))
    if repeat:
        ds = ds.repeat()
    return iter(strategy.experimental_distribute_dataset(ds))


def weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def replica_values(strategy, variable):
    return [t.numpy() for t in strategy.experimental_local_results(variable.value)]


def seed_peak_cache(folder, intra=None):
    """A fresh, quiet peak reading for this CPU (oneDNN on and off; `intra`: a worker's thread count) in
    `folder`/peak.json, so a run there does not spend ~20 s measuring it (bench.hardware.peak.device_key's keys)."""
    import json
    import os

    import tensorflow as tf

    from bench.hardware import devices, peak
    from bench.results import table

    entry = {"gflops": 100.0, "measured_at": table.utc_now(), "load": 0.0}
    threads = f"|intra{intra}" if intra else ""
    keys = [
        peak.cache_key(f"CPU:{devices.cpu_model_name()}|tf{tf.__version__}{onednn}{threads}", "float32")
        for onednn in ("", "|onednn")
    ]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "peak.json"), "w") as fh:
        json.dump({key: entry for key in keys}, fh)
