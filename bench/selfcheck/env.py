"""The self-check's setting: devices as a run has them, small builders and comparisons shared by the checks."""

from __future__ import annotations

import dataclasses
import math
import sys

import keras
import numpy as np

from bench.config import defaults
from bench.config.options import RunConfig
from bench.config.recipe import Schedule
from bench.hardware import devices
from bench.training import trainers
from bench.training.steps import StepFunctions
from resnet import spec

PER_REPLICA = 16  # images per replica per step
N_BLOCKS = 1  # ResNet-8: quick to build and trace
LR = 0.05
FAIL_PREFIX, OK_PREFIX = "FAIL ", "ok   "
# Tolerances (float32, TF32 off). Round-off between 1 device and N replicas, or XLA and not, is
# ~1e-7 relative on the loss and ~1e-5 on the weight updates; real bugs are orders of magnitude larger.
LOSS_RTOL = 1e-5
XLA_LOSS_RTOL = 1e-3
UPDATE_RTOL, UPDATE_ATOL = 2e-3, 2e-6
BN_ATOL = 1e-6  # the all-reduced mean is the same number on every replica; 0 is expected
PEAK_BAND = (0.3, 1.1)  # measured / datasheet
PEAK_MAX_SIZE = {"GPU": 4096, "CPU": 2048}  # largest square matmul measured
PER_CELL = 200  # augmentation: images per (dy, dx, flip) cell
CHI2_BOUND = 300.0  # P(chi2 with 161 dof > 300) ~ 1e-10: never flakes, a bias goes far past it


@dataclasses.dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    lines: list  # what was compared, with the numbers
    seconds: float = 0.0


def verdict(name, items, skip=None):
    """A Result from (ok, text) comparisons: PASS if every one holds. `skip`: the SKIP reason."""
    lines = [(OK_PREFIX if ok else FAIL_PREFIX) + text for ok, text in items]
    if skip:
        return Result(name, "SKIP", [f"({skip})"] + lines)
    return Result(name, "PASS" if all(ok for ok, _ in items) else "FAIL", lines)


@dataclasses.dataclass
class Env:
    tf: object
    kind: str  # GPU | CPU
    replica_devices: list  # e.g. ["/gpu:0", "/gpu:1"]
    replica_models: list  # the model of each
    one: object  # OneDeviceStrategy on replica_devices[0]
    many: object  # MirroredStrategy over replica_devices (the one-device strategy when there is one)
    precision: str  # for the peak check
    batch_norm: str  # the BN implementation a run uses by default here
    results: str = "results/summary.csv"  # the system description goes beside this results table

    @property
    def replicas(self):
        return len(self.replica_devices)


def setup(cpu_replicas, precision, results="results/summary.csv"):
    """Devices and strategies as a run has them (`bench.hardware.devices.setup` of a mirrored run)."""
    run = RunConfig(strategy="mirrored", cpu_replicas=cpu_replicas, precision=precision)
    found = devices.setup(run)  # every visible GPU, or the CPU split before any TF op
    tf = devices.import_tensorflow()
    # Each check builds its own step functions, which TF then warns are "retracing": by design here.
    tf.get_logger().setLevel("ERROR")
    names = list(found.replica_devices)
    one = tf.distribute.OneDeviceStrategy(names[0])
    many = found.strategy if len(names) > 1 else one
    batch_norm = defaults.resolve_batch_norm(run, found.device_kind)
    return Env(tf, found.device_kind, names, list(found.replica_models), one, many, precision, batch_norm, results)


def header(env, requested_cpu_replicas):
    tf = env.tf
    if env.kind == "GPU":
        where = f"{env.replicas} GPU(s): " + ", ".join(
            f"{n} {d}" for n, d in zip(env.replica_devices, env.replica_models)
        )
    else:
        where = f"CPU {env.replica_models[0]!r} split into {len(tf.config.list_logical_devices('CPU'))} logical devices"
        if env.replicas < requested_cpu_replicas:
            where += f" (asked for {requested_cpu_replicas}: TensorFlow had already started)"
    strategy = "MirroredStrategy" if env.replicas > 1 else "one device"
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled() if env.kind == "GPU" else "n/a (CPU)"
    return "\n".join(
        [
            f"bench.check: TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {sys.version.split()[0]}",
            f"devices: {where}",
            f"replicas: {env.replicas} ({strategy} over {', '.join(env.replica_devices)}), {PER_REPLICA} images per replica",
            f"oneDNN CPU kernels: {'on' if devices.onednn_enabled() else 'off'}; TF32 enabled: {tf32}",
            f"model: ResNet-{6 * N_BLOCKS + 2} (preact, B), BN {env.batch_norm}; peak check precision: {env.precision}",
        ]
    )


# -- small builders ------------------------------------------------------------


def make_step_functions(env, strategy, global_batch, precision="float32", seed=0, sync_bn=False, batch_norm=None, **kw):
    """StepFunctions over a fresh ResNet-8 built (with `seed`) under `strategy`, as a run builds them."""
    bn = "keras" if sync_bn else (batch_norm or env.batch_norm)
    cfg = RunConfig(n=N_BLOCKS, precision=precision, sync_bn=sync_bn, batch_norm=bn, seed=seed)
    model, opt, _ = trainers.model_and_optimizer(cfg, strategy, Schedule(starts=(0,), values=(LR,)))
    return StepFunctions(model, opt, strategy, global_batch, spec.DEFAULT_WEIGHT_DECAY, sync_bn=sync_bn, **kw)


def random_batch(size, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, size=(size,), dtype=np.int32)


def batches(env, strategy, images, labels):
    """The same global batch every step, split over the replicas in order."""
    ds = env.tf.data.Dataset.from_tensors((images, labels)).repeat()
    return iter(strategy.experimental_distribute_dataset(ds))


def train(env, step_fns, iterator, steps):
    return float(step_fns.train(iterator, env.tf.constant(steps)))


def weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def replica_values(strategy, variable):
    """One numpy array per replica (a Keras variable's per-replica copies)."""
    return [t.numpy() for t in strategy.experimental_local_results(variable.value)]


def replica_weights(strategy, model):
    """Per replica, its copies of the trainable variables."""
    return [list(c) for c in zip(*(replica_values(strategy, v) for v in model.trainable_variables))]


def copy_weights(dst, src):
    for d, s in zip(dst.weights, src.weights):
        d.assign(s.numpy())


def closeness(actual, expected, rtol, atol):
    """(max |a - e|, worst |a - e| / (atol + rtol |e|)) over lists of arrays; the second <= 1 means close."""
    diff = max(float(np.max(np.abs(a - e))) for a, e in zip(actual, expected))
    worst = max(float(np.max(np.abs(a - e) / (atol + rtol * np.abs(e)))) for a, e in zip(actual, expected))
    return diff, worst


def update_items(label, ref, other, start):
    """Comparisons of two weight updates (lists of arrays) from the same start."""
    upd_ref = [w - w0 for w, w0 in zip(ref, start)]
    upd_other = [w - w0 for w, w0 in zip(other, start)]
    diff, worst = closeness(upd_other, upd_ref, UPDATE_RTOL, UPDATE_ATOL)
    moved = max(float(np.max(np.abs(u))) for u in upd_ref)
    values = sum(u.size for u in upd_ref)
    return [
        (moved > 0, f"the step moved the weights: max |update| {moved:.3g} > 0"),
        (
            worst <= 1,
            f"{label} weight updates ({len(upd_ref)} tensors, {values} values): max |Δ| {diff:.3g}; "
            f"worst |Δ|/({UPDATE_ATOL:g} + {UPDATE_RTOL:g}·|update|) = {worst:.3g} ≤ 1",
        ),
    ]


def loss_item(label, ref, other, rtol):
    tol = rtol * abs(ref)
    ok = math.isfinite(ref) and abs(other - ref) <= tol
    return ok, f"{label} loss {ref:.7f} vs {other:.7f}: |Δ| {abs(other - ref):.3g} ≤ {tol:.3g} (rel {rtol:g})"


def skip_one_replica(env, name):
    return verdict(
        name, [], skip=f"one replica ({env.replica_devices[0]}): nothing to compare; needs 2 or more devices"
    )
