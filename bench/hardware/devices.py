"""Devices and strategies: the only module that calls tf.config.

`setup(cfg)` must run before any TensorFlow op: splitting the CPU into logical
devices and GPU memory growth can only be configured before the runtime starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import platform
import sys
import tempfile

from bench.config import defaults, exits, options
from bench.config.options import RunConfig
from bench.hardware import cpu_features


@contextlib.contextmanager
def native_stderr_quieted():
    """Hide TF's native start-up chatter (CUDA stub probing) unless the user set TF_CPP_MIN_LOG_LEVEL.

    It is printed by C++ code straight to file descriptor 2, before any log
    level applies, so the descriptor is pointed at a temporary file meanwhile.
    The captured text is replayed if importing fails.
    """
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ and not os.environ.get("_BENCH_QUIET_TF"):
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ["_BENCH_QUIET_TF"] = "1"
    with native_stderr_captured(replay_on_error=True):
        yield


@contextlib.contextmanager
def native_stderr_captured(replay_on_error=False):
    """Point file descriptor 2 at a temporary file meanwhile (native libraries write there directly).

    `replay_on_error`: if the block raises, what was captured is written to stderr.
    """
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no sys.stderr (closed), or its reader gone
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # descriptor 2 closed: nothing to hide it from
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with exits.stderr_kept_at(saved):  # a signal handler's line still reaches the console
                yield
        except BaseException:
            os.dup2(saved, 2)
            if replay_on_error:
                sink.seek(0)
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


ONEDNN_ENV = defaults.ONEDNN_ENV  # read by TensorFlow once, at its import


def _request_onednn(choice):
    """Set TF_ENABLE_ONEDNN_OPTS for `choice` (auto keeps the user's value, else asks for on).

    TensorFlow reads it once, while it is imported. Left alone, TF enables oneDNN
    only on CPUs with AVX-512 VNNI/BF16 or AMX; on others (AVX2 CPUs such as the
    development machine) its convolutions then run on Eigen, about 1.7x slower.
    """
    if choice == "auto":
        os.environ.setdefault(ONEDNN_ENV, "1")
    else:
        os.environ[ONEDNN_ENV] = "1" if choice == "on" else "0"


def onednn_enabled():
    """Whether this process's TensorFlow uses oneDNN CPU kernels (fixed when it was imported)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # private API: fall back to what was asked for
        return os.environ.get(ONEDNN_ENV, "").lower() in ("1", "true")


def import_tensorflow(onednn="auto"):
    """Import TensorFlow quietly, with oneDNN as asked (see `_request_onednn`), and return the module.

    If TensorFlow was already loaded, the setting it was loaded with stays (see `onednn_enabled`;
    `bench.config.setup_checks.check_setup` refuses a request that could not take effect).
    """
    if "tensorflow" not in sys.modules:
        _request_onednn(onednn)
    with native_stderr_quieted():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe also prints here
    if os.environ.get("_BENCH_QUIET_TF"):
        tf.get_logger().setLevel("WARNING")  # no INFO lines such as "Using MirroredStrategy with devices"
    return tf


@dataclasses.dataclass(frozen=True)
class Devices:
    strategy: object  # a tf.distribute.Strategy
    num_replicas: int
    device_kind: str  # "GPU" or "CPU"
    model: str  # the first replica device's model, e.g. "NVIDIA A100-SXM4-40GB" or the CPU's
    physical_devices: int  # GPUs used, or 1 for the (possibly split) CPU
    onednn: bool = False  # oneDNN CPU kernels in use (on GPUs: for the ops left on the CPU)
    facts: dict = dataclasses.field(default_factory=dict)  # for bench.config.setup_checks.SetupFacts
    replica_devices: tuple = ()  # this process's replica devices, e.g. ("/cpu:0", "/cpu:1")
    replica_models: tuple = ()  # the model of each
    cpu_kind: str = ""  # `cpu_features.cpu_kind()`: which CPU inference defaults apply (`defaults.CPU_INFERENCE`)


def cpu_model_name():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def setup(cfg: RunConfig) -> Devices:
    """Configure the runtime for `cfg` and build its strategy.

    Raises nothing for impossible requests: it sets up what it can and reports the
    facts (`Devices.facts`), which `bench.config.setup_checks.check_setup` judges before any work.
    """
    cpu = cpu_features.cpu_kind()
    tf = import_tensorflow(defaults.onednn_request(cfg, cpu))  # auto: the variable if set, else the default
    multi_worker = cfg.strategy == options.MULTI_WORKER
    _set_threads(tf, defaults.intra_op_threads(cfg), cfg.inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    wanted = (cfg.gpus_per_worker or 0) if multi_worker else _gpus_wanted(cfg, len(gpus))
    if gpus and wanted:
        use = gpus[:wanted]
        _use_gpus(tf, use)
        names = [f"/gpu:{i}" for i in range(len(use))]
        kind, physical = "GPU", len(use)
        device_names = tuple(tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in use)
    else:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        available = 1 if multi_worker else split_cpu(tf, cfg.cpu_replicas)
        names = [f"/cpu:{i}" for i in range(min(cfg.cpu_replicas, available))]
        kind, physical = "CPU", 1  # logical CPU devices share one physical CPU
        device_names = (cpu_model_name(),) * len(names)
    strategy = _strategy(tf, cfg, names)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    cpu_devices = len(tf.config.list_logical_devices("CPU")) if kind == "CPU" and not multi_worker else 1
    facts = dict(
        gpus_visible=len(gpus),
        device_kind=kind,
        cpu_devices=cpu_devices,
        num_replicas=replicas,
        onednn=onednn_enabled(),
    )
    return Devices(
        strategy,
        replicas,
        kind,
        model=device_names[0],
        physical_devices=physical,
        onednn=onednn_enabled(),
        facts=facts,
        replica_devices=tuple(names),
        replica_models=device_names,
        cpu_kind=cpu,
    )


def _gpus_wanted(cfg: RunConfig, visible):
    """GPUs a single-process run uses: every visible one for mirrored (or --num_gpus), else one; none to split the CPU."""
    if cfg.num_gpus == 0 or cfg.cpu_replicas > 1:
        return 0
    if cfg.strategy != "mirrored":
        return 1
    return visible if cfg.num_gpus is None else min(cfg.num_gpus, visible)


def _strategy(tf, cfg: RunConfig, names):
    if cfg.strategy == options.MULTI_WORKER:
        # Built before any TensorFlow op runs: an op first fails with "Collective ops must be configured
        # at program startup". Only configuration (threads, visible GPUs, memory growth) comes before it.
        timeout = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cfg.collective_timeout_s)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=timeout)
    if cfg.strategy == "mirrored":
        return mirrored_strategy(names)
    if cfg.strategy == "one_device":
        return tf.distribute.OneDeviceStrategy(names[0])
    return tf.distribute.get_strategy()


def warn_if_emulated(cfg: RunConfig, device_kind):
    """One warning line when this CPU only emulates the run's precision (after the run's checks passed)."""
    emulated = cpu_features.emulated_precision(cfg.precision, device_kind)
    if emulated:
        print(f"warning: {emulated}; expect it slower than float32 here", file=sys.stderr)


def _set_threads(tf, intra, inter):
    """Thread pools as asked (before the runtime starts; a runtime already started keeps its own)."""
    try:
        if intra is not None:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter is not None:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        pass  # reported: the row records the setting in effect (threads_in_effect)


def threads_in_effect():
    """(intra, inter) op threads TensorFlow uses; 0 means TensorFlow's own default."""
    import tensorflow as tf

    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def _use_gpus(tf, use):
    try:
        tf.config.set_visible_devices(use, "GPU")
        for gpu in use:
            # Several sweep trials may share a node: take memory as needed, not all of it.
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as err:  # the runtime already started (e.g. a second run in one process)
        if "initialized" not in str(err):
            raise


_MIRRORED = {}


def mirrored_strategy(device_names):
    """One MirroredStrategy per device set per process.

    Each new MirroredStrategy restarts TF's collective instance keys, so a second
    strategy over the same devices in one process (tests, sweeps in one worker)
    reuses keys of the first and its all-reduces fail with a shape mismatch.
    """
    import tensorflow as tf

    key = tuple(device_names)
    if key not in _MIRRORED:
        _MIRRORED[key] = tf.distribute.MirroredStrategy(list(device_names))
    return _MIRRORED[key]


def split_cpu(tf, k):
    """Split the CPU into k logical devices (before the runtime starts); return how many there are.

    A no-op if there are enough already (replicas use the first k; a split never
    shrinks). Once the runtime has started the split cannot change: fewer than k
    devices are then returned, for `bench.config.setup_checks.check_setup` to refuse.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    have = 1 if current is None else len(current)
    if have >= k:
        return have
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * k)
    except RuntimeError:
        return len(tf.config.list_logical_devices("CPU"))
    return k


def device_sync(value=None):
    """Block until `value` is computed and every device of this process is idle."""
    import tensorflow as tf

    if value is not None:
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, value)
    own = _this_workers_devices()
    if own is None:
        tf.test.experimental.sync_devices()
        return
    from tensorflow.python.eager import context
    from tensorflow.python.ops import gen_sync_ops

    for name in own:
        with tf.device(name):
            gen_sync_ops.SyncDevice()
    context.async_wait()


@functools.cache
def _this_workers_devices():
    """None in a single process; under MultiWorkerMirroredStrategy this worker's own devices.

    There the device list also holds the other workers' devices, which `sync_devices`
    cannot reach. Looked up once (the devices are fixed once the runtime runs), so no
    window pays for it.
    """
    import tensorflow as tf

    names = [d.name for d in tf.config.list_logical_devices()]
    if not any(n.startswith("/job:") for n in names):
        return None
    here = tf.constant(0).device.rsplit("/device:", 1)[0]  # e.g. /job:worker/replica:0/task:1
    return tuple(n for n in names if n.startswith(here + "/"))
