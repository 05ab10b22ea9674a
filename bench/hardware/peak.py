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

The cache lives in $RESNET_BENCH_CACHE (default ~/.cache/resnet-bench/peak.json), one entry per
device, TensorFlow version, oneDNN state, thread count, dtype and method. An entry keeps the best of
its readings, when it was first and last read, and the machine's load (1-minute load average per
core) during the best one. A cached peak is read again (and the best kept) when it is older than
MAX_AGE_DAYS (then the new reading replaces it: the machine may have changed), when the best was
read under load and the machine is quieter now, or when a run achieved more than it (an MFU above
100%). `python -m bench.hardware.peak` clears the cache by hand. The cache is an optimisation, never
a failure (`bench.config.caches`): a folder that cannot be written is read as it is and nothing is
cached, an unreadable file or a malformed entry is measured again; each is one warning line.
The datasheet peak, the other MFU denominator, is in `bench.hardware.datasheet`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time

from bench.config import caches, exits
from bench.config.options import ConfigError
from bench.hardware import datasheet
from bench.hardware.devices import device_sync, threads_in_effect
from resnet.spec import COMPUTE_DTYPE

# TensorFlow is imported inside the functions: it must first be loaded by `devices.import_tensorflow`,
# which makes the oneDNN choice (fixed at TensorFlow's import).


def cache_path():
    return os.path.join(caches.folder(), "peak.json")


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


MAX_AGE_DAYS = 30  # a reading older than this is taken again (drivers, firmware and neighbours change)
BUSY_LOAD = 0.5  # 1-minute load average per core above which a reading counts as taken under load


@dataclasses.dataclass(frozen=True)
class Reading:
    """A cached peak: the best of `readings` measurements, and when and under what load the best was taken."""

    gflops: float
    measured_at: str  # UTC, ISO 8601
    readings: int = 1
    load: float = None  # 1-minute load average per core while the best was read (None: unknown)


def load_per_core():
    """The 1-minute load average per core (None where the OS does not say)."""
    try:
        return round(os.getloadavg()[0] / (os.cpu_count() or 1), 2)
    except OSError:
        return None


def cache_key(device_key, precision, tf32=False):
    """The cache entry of `precision`'s compute dtype on `device_key` (device|TF version|oneDNN|threads)."""
    return f"{device_key}|{COMPUTE_DTYPE[precision]}" + ("|tf32" if tf32 else "") + f"|{METHOD}"


def _age_days(entry, now):
    then = datetime.datetime.fromisoformat(entry["measured_at"].replace("Z", "+00:00"))
    return (now - then).total_seconds() / 86400


def _why_again(entry, at_least, now, load):
    """Why a cached entry must be read again, or None to use it as it is."""
    if not isinstance(entry, dict) or "measured_at" not in entry:
        return "replace"  # none, or from a version that kept no date
    if _age_days(entry, now) > MAX_AGE_DAYS:
        return "replace"
    if at_least is not None and entry["gflops"] < at_least:
        return "improve"  # a run did more than this: the reading was taken under load
    quietest = entry.get("quietest_load", entry.get("load"))
    if quietest is not None and quietest > BUSY_LOAD and load is not None and load < quietest / 2:
        return "improve"  # every reading was taken under load, and the machine is much quieter now
    return None


WHAT = "peak FLOP/s cache"


def read_cache():
    """{key: cached entry} of this machine's peak cache ({} if there is none; unreadable: {} with a warning)."""
    return caches.read(cache_path(), WHAT)


def _usable(entry):
    """Whether a cached entry is one this version can use: a positive finite reading with its date."""
    if not isinstance(entry, dict) or not isinstance(entry.get("measured_at"), str):
        return False
    gflops = entry.get("gflops")
    if isinstance(gflops, bool) or not isinstance(gflops, (int, float)) or not 0 < gflops < float("inf"):
        return False
    try:
        datetime.datetime.fromisoformat(entry["measured_at"].replace("Z", "+00:00"))
    except ValueError:
        return False
    return all(
        entry.get(k) is None or (isinstance(entry[k], (int, float)) and not isinstance(entry[k], bool))
        for k in ("readings", "load", "quietest_load")
    )


def peak_reading(device, device_key, precision, tf32=False, at_least=None) -> Reading:
    """The cached peak of one device for `precision`, measured on first use and again when stale.

    `tf32` (see `tf32_in_effect`) is part of the cache key: a float32 peak measured with TF32 on
    is several times the one with it off. `at_least`: a rate the device was just seen doing; a
    cached reading below it was taken under load (it would give an MFU above 100%).
    The cache is an optimisation (`bench.config.caches`): a folder that cannot be written is read
    as it is, a malformed entry is measured again; either is one warning line, never a failure.
    """
    path = cache_path()
    key = cache_key(device_key, precision, tf32)
    with caches.locked(path, WHAT, timeout=600) as writable:
        cache = read_cache()
        entry = cache.get(key)
        if entry is not None and not _usable(entry):
            caches.warn(
                path,
                f"the {WHAT} {path} holds a malformed entry, or one of another version, for "
                f"{key}; measuring the peak again",
            )
            entry = None
        now = datetime.datetime.now(datetime.timezone.utc)
        load = load_per_core()
        why = _why_again(entry, at_least, now, load)
        if why:
            rate = measure(device, COMPUTE_DTYPE[precision])
            kept = entry if why == "improve" else {}
            best = {"gflops": rate, "measured_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "load": load}
            if kept and kept["gflops"] >= rate:
                best = {k: kept.get(k) for k in ("gflops", "measured_at", "load")}
            loads = [x for x in (kept.get("quietest_load", kept.get("load")), load) if x is not None]
            entry = {
                **best,
                "readings": kept.get("readings", 1) + 1 if kept else 1,
                "quietest_load": min(loads) if loads else None,
            }
            if writable:
                caches.save(path, WHAT, {**cache, key: entry})
        return Reading(float(entry["gflops"]), entry["measured_at"], int(entry.get("readings", 1)), entry.get("load"))


def device_key(devices):
    """The cache's device part of a run's `devices.Devices`: device, TensorFlow version, oneDNN state, threads."""
    import tensorflow as tf

    cpu = devices.device_kind == "CPU"
    key = f"{devices.device_kind}:{devices.model}|tf{tf.__version__}" + ("|onednn" if devices.onednn and cpu else "")
    intra = threads_in_effect()[0]
    if intra and cpu:  # a reading with fewer threads is not the CPU's peak
        key += f"|intra{intra}"
    return key


def reading_for(devices, precision, tf32=False, at_least=None) -> Reading:
    """The peak reading of one of a run's devices (`peak_reading` of its first device)."""
    return peak_reading(devices.replica_devices[0], device_key(devices), precision, tf32=tf32, at_least=at_least)


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


def main(argv):
    """`python -m bench.hardware.peak`: clear the cache (the next run measures again); `--show` lists it."""
    if argv[1:] == ["--show"]:
        for key, entry in sorted(read_cache().items()):
            print(f"{key}: {entry}")
        return exits.EXIT_OK
    usage = "usage: python -m bench.hardware.peak [--show]  (without --show: clear the peak cache)"
    if argv[1:] in (["--help"], ["-h"]):
        print(usage)
        return exits.EXIT_OK
    if argv[1:]:
        raise ConfigError(usage)
    path = cache_path()
    if not os.path.exists(path):
        print(f"no peak cache at {path}")
        return exits.EXIT_OK
    try:
        os.remove(path)
    except OSError as err:
        raise ConfigError(f"cannot remove the peak cache {path}: {err.strerror or err}") from None
    print(f"removed {path}: the next run measures the peak again")
    return exits.EXIT_OK


if __name__ == "__main__":
    exits.program(main, sys.argv, what="clearing the peak cache")
