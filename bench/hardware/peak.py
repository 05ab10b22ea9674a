"""The device's measured peak FLOP/s per precision, for MFU. Cached per machine and precision.

Square matmuls in the precision's compute dtype, from 512^2 up until one product
takes at least 0.5 s (at most 8192^2); each size's best of three timed windows
after a warm-up; the peak is the best rate over the sizes.

A window times device work only: it syncs on one element of the last product
(`c[0, 0]`), never on the whole product. Reading a whole 8192^2 result back to
the host (`.numpy()`) costs 256 MB of PCIe traffic, more than the product itself
on a modern GPU, and made the measured peak, and so the MFU, wrong there. A window
runs enough back-to-back products to last about 20 ms, so the launch and sync
overheads of one product do not count either (a GPU runs them in order, so the
last one finished means all did).

The cache lives in $RESNET_BENCH_CACHE (default ~/.cache/resnet-bench/peak.json).
The datasheet peak, the other MFU denominator, is in `bench.datasheet`.
"""

from __future__ import annotations

import json
import os
import time

import filelock

from bench.hardware import datasheet
from bench.hardware.devices import device_sync
from resnet.spec import COMPUTE_DTYPE

# TensorFlow is imported inside the functions: it must first be loaded by `devices.import_tensorflow`,
# which makes the oneDNN choice (fixed at TensorFlow's import).


def cache_path():
    root = os.environ.get("RESNET_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "resnet-bench")
    return os.path.join(root, "peak.json")


# Part of the cache key: readings cached by the earlier method (whole product copied to the
# host) were too low on GPUs and must not be reused.
METHOD = "scalar-sync"
WINDOW_S = 0.02  # target length of one timed window
MAX_PRODUCTS = 64  # per window


def _products(a, b, count):
    """Run `count` products; return one element of the last (syncing on it waits for all)."""
    import tensorflow as tf

    for _ in range(count):
        c = tf.matmul(a, b)
    return c[0, 0]


def measure(device, dtype, max_size=8192):
    """Measured matmul GFLOP/s of one device in `dtype` (square sizes 512 up to `max_size`)."""
    import tensorflow as tf

    best_rate = 0.0
    size = 512
    with tf.device(device):
        while size <= max_size:
            a = tf.cast(tf.random.uniform((size, size), dtype=tf.float32), dtype)
            b = tf.cast(tf.random.uniform((size, size), dtype=tf.float32), dtype)
            device_sync(_products(a, b, 1))  # warm-up (kernel selection, allocation)
            start = time.perf_counter()
            device_sync(_products(a, b, 1))  # estimate of one product, to size the windows
            count = max(1, min(MAX_PRODUCTS, int(WINDOW_S / max(time.perf_counter() - start, 1e-9))))
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                device_sync(_products(a, b, count))
                best = min(best, (time.perf_counter() - start) / count)
            best_rate = max(best_rate, 2.0 * size**3 / best / 1e9)
            if best >= 0.5:
                break
            size *= 2
    return best_rate


def peak_gflops(device, device_key, precision, tf32=False, at_least=None):
    """Cached peak GFLOP/s of one device for `precision` (measured on first use).

    `tf32` (see `tf32_in_effect`) is part of the cache key: a float32 peak measured
    with TF32 on is several times the one with it off. `at_least`: a rate the device
    was just seen doing; a cached reading below it was taken under load (it would
    give an MFU above 100%), so the peak is measured again and the higher one kept.
    """
    dtype = COMPUTE_DTYPE[precision]
    path = cache_path()
    key = f"{device_key}|{dtype}" + ("|tf32" if tf32 else "") + f"|{METHOD}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with filelock.FileLock(path + ".lock", timeout=600):
        cache = {}
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    cache = json.load(fh)
            except (OSError, ValueError):
                cache = {}
        if key not in cache or (at_least is not None and cache[key] < at_least):
            cache[key] = max(measure(device, dtype), cache.get(key, 0.0))
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(cache, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        return float(cache[key])


def gpu_compute_capability():
    """(major, minor) of the first visible GPU, or None without one (CPU runs)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return tuple(cc) if cc else None


def tf32_in_effect(precision):
    """Whether this process runs `precision`'s float32 matmuls/convs as TF32 on its first GPU.

    TF enables TF32 by default on compute capability >= 8.0; a run may turn it off
    with `tf.config.experimental.enable_tensor_float_32_execution(False)`.
    """
    import tensorflow as tf

    enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    return datasheet.tf32_in_effect(precision, gpu_compute_capability(), enabled)
