"""The device's measured peak FLOP/s per precision, for MFU. Cached per machine and precision.

Square matmuls in the precision's compute dtype, from 512^2 up until one product
takes at least 0.5 s (at most 8192^2); each size's best of three timed products
after a warm-up; the peak is the best rate over the sizes.
The cache lives in $RESNET_BENCH_CACHE (default ~/.cache/resnet-bench/peak.json).
"""

from __future__ import annotations

import json
import os
import time

import filelock

COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def cache_path():
    root = os.environ.get("RESNET_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "resnet-bench")
    return os.path.join(root, "peak.json")


def measure(device, dtype):
    """Measured matmul GFLOP/s of one device in `dtype`."""
    import tensorflow as tf

    from bench.timing import device_sync

    best_rate = 0.0
    size = 512
    with tf.device(device):
        while size <= 8192:
            a = tf.cast(tf.random.uniform((size, size), dtype=tf.float32), dtype)
            b = tf.cast(tf.random.uniform((size, size), dtype=tf.float32), dtype)
            device_sync(tf.matmul(a, b))  # warm-up
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                device_sync(tf.matmul(a, b))
                best = min(best, time.perf_counter() - start)
            best_rate = max(best_rate, 2.0 * size**3 / best / 1e9)
            if best >= 0.5:
                break
            size *= 2
    return best_rate


def peak_gflops(device, device_key, precision):
    """Cached peak GFLOP/s of one device for `precision` (measured on first use)."""
    dtype = COMPUTE_DTYPE[precision]
    path = cache_path()
    key = f"{device_key}|{dtype}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with filelock.FileLock(path + ".lock", timeout=600):
        cache = {}
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    cache = json.load(fh)
            except (OSError, ValueError):
                cache = {}
        if key not in cache:
            cache[key] = measure(device, dtype)
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(cache, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        return float(cache[key])
