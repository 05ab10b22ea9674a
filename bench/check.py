"""python -m bench.check: a one-minute self-check of this machine and the harness. Run it first on GPUs.

Trains a small ResNet (n=1, 16 images per replica) for a few steps on the devices a run would use
(every visible GPU; without GPUs the CPU split into --cpu_replicas logical devices) and prints one
line per check, PASS, FAIL or SKIP, with the numbers it compared:

  replicas_match_one_device  one step on 1 device vs N replicas (synchronized BN): loss and weights agree
  bn_statistics_agree        BN moving statistics identical on every replica after a training call
  xla_matches                one step with and without XLA: loss and weights agree
  fp16_overflow_skipped      mixed_float16, inf on the last replica only: skipped on every replica
  mixed_precision_finite     mixed_bfloat16 and mixed_float16 steps stay finite
  peak_vs_datasheet          measured matmul peak per GPU within 0.3x-1.1x of the datasheet figure
  augment_distribution       device and host crops/flips uniform over the 81 offsets x 2 flips

The numeric checks run with TF32 off (their tolerances are for float32 arithmetic); the peak check
measures with TF32 as a run has it. Writes nothing: no results row, no peak cache.
Exit status: 0 every check passed or was skipped, 1 a check failed, 2 bad flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time

import numpy as np
from absl import app, flags

from bench import cli, config, devices
from resnet import spec

PER_REPLICA = 16  # images per replica per step
N_BLOCKS = 1  # ResNet-8: quick to build and trace
LR, WEIGHT_DECAY = 0.05, 1e-4
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
    names: list  # replica devices, e.g. ["/gpu:0", "/gpu:1"]
    device_names: list  # model names of the replica devices
    one: object  # OneDeviceStrategy on names[0]
    many: object  # MirroredStrategy over names (the one-device strategy when there is one)
    precision: str  # for the peak check
    batch_norm: str  # the BN implementation a run uses by default here

    @property
    def replicas(self):
        return len(self.names)


def setup(cpu_replicas, precision):
    """Devices and strategies as a run has them; the CPU split happens before any TF op."""
    tf = devices.import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        devices._use_gpus(tf, gpus)  # memory growth: the GPUs may be shared
        names = [f"/gpu:{i}" for i in range(len(gpus))]
        device_names = [tf.config.experimental.get_device_details(g).get("device_name", "GPU") for g in gpus]
        kind = "GPU"
    else:
        available = devices.split_cpu(tf, cpu_replicas)
        names = [f"/cpu:{i}" for i in range(min(cpu_replicas, available))]
        device_names = [devices.cpu_model_name()] * len(names)
        kind = "CPU"
    # Each check builds its own Trainer, whose tf.functions TF then warns are "retracing": by design here.
    tf.get_logger().setLevel("ERROR")
    one = tf.distribute.OneDeviceStrategy(names[0])
    many = devices.mirrored_strategy(names) if len(names) > 1 else one
    batch_norm = config.resolve_batch_norm(config.RunConfig(), kind)
    return Env(tf, kind, names, device_names, one, many, precision, batch_norm)


def header(env, requested_cpu_replicas):
    import keras

    tf = env.tf
    if env.kind == "GPU":
        where = f"{env.replicas} GPU(s): " + ", ".join(f"{n} {d}" for n, d in zip(env.names, env.device_names))
    else:
        where = f"CPU {env.device_names[0]!r} split into {len(tf.config.list_logical_devices('CPU'))} logical devices"
        if env.replicas < requested_cpu_replicas:
            where += f" (asked for {requested_cpu_replicas}: TensorFlow had already started)"
    strategy = "MirroredStrategy" if env.replicas > 1 else "one device"
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled() if env.kind == "GPU" else "n/a (CPU)"
    return "\n".join([
        f"bench.check: TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {sys.version.split()[0]}",
        f"devices: {where}",
        f"replicas: {env.replicas} ({strategy} over {', '.join(env.names)}), {PER_REPLICA} images per replica",
        f"oneDNN CPU kernels: {'on' if devices.onednn_enabled() else 'off'}; TF32 enabled: {tf32}",
        f"model: ResNet-{6 * N_BLOCKS + 2} (preact, B), BN {env.batch_norm}; peak check precision: {env.precision}",
    ])


# -- small builders ------------------------------------------------------------


def make_trainer(env, strategy, global_batch, precision="float32", seed=0, sync_bn=False, batch_norm=None, **kw):
    """A step.Trainer over a fresh ResNet-8 built (with `seed`) under `strategy`."""
    import keras

    from bench.step import Trainer, make_optimizer
    from resnet.model import build_resnet

    keras.utils.set_random_seed(seed)
    bn = "keras" if sync_bn else (batch_norm or env.batch_norm)
    with strategy.scope():
        model = build_resnet(N_BLOCKS, precision=precision, sync_bn=sync_bn, batch_norm=bn)
        opt = make_optimizer(config.Schedule(starts=(0,), values=(LR,)), precision)
    return Trainer(model, opt, strategy, global_batch, WEIGHT_DECAY, sync_bn=sync_bn, **kw)


def random_batch(size, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(size, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, size=(size,), dtype=np.int32)


def batches(env, strategy, images, labels):
    """The same global batch every step, split over the replicas in order."""
    ds = env.tf.data.Dataset.from_tensors((images, labels)).repeat()
    return iter(strategy.experimental_distribute_dataset(ds))


def train(env, trainer, iterator, steps):
    return float(trainer.train(iterator, env.tf.constant(steps)))


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
        (worst <= 1, f"{label} weight updates ({len(upd_ref)} tensors, {values} values): max |Δ| {diff:.3g}; "
                     f"worst |Δ|/({UPDATE_ATOL:g} + {UPDATE_RTOL:g}·|update|) = {worst:.3g} ≤ 1"),
    ]


def loss_item(label, ref, other, rtol):
    tol = rtol * abs(ref)
    ok = math.isfinite(ref) and abs(other - ref) <= tol
    return ok, f"{label} loss {ref:.7f} vs {other:.7f}: |Δ| {abs(other - ref):.3g} ≤ {tol:.3g} (rel {rtol:g})"


def skip_one_replica(env, name):
    return verdict(name, [], skip=f"one replica ({env.names[0]}): nothing to compare; needs 2 or more devices")


# -- the checks ----------------------------------------------------------------


def check_replicas_match_one_device(env):
    """Same weights, same global batch, synchronized BN: one step on 1 device equals one on N replicas."""
    name = "replicas_match_one_device"
    if env.replicas < 2:
        return skip_one_replica(env, name)
    global_batch = PER_REPLICA * env.replicas
    images, labels = random_batch(global_batch)
    one = make_trainer(env, env.one, global_batch, sync_bn=True, seed=7)
    many = make_trainer(env, env.many, global_batch, sync_bn=True, seed=7)
    copy_weights(many.model, one.model)
    start = weights(one.model)
    same_start = max(float(np.max(np.abs(a - b))) for a, b in zip(weights(many.model), start))
    loss_one = train(env, one, batches(env, env.one, images, labels), 1)
    loss_many = train(env, many, batches(env, env.many, images, labels), 1)
    label = f"1 device vs {env.replicas} replicas (sync BN):"
    items = [(same_start == 0, f"same initial weights: max |Δ| {same_start:g} = 0")]
    items.append(loss_item(label, loss_one, loss_many, LOSS_RTOL))
    items += update_items(label, weights(one.model), weights(many.model), start)
    return verdict(name, items)


def bn_spread(env, trainer):
    """max over BN moving statistics and replicas of |replica r - replica 0|, and how many variables."""
    from resnet.model import batch_norm_layers

    variables = [v for layer in batch_norm_layers(trainer.model) for v in (layer.moving_mean, layer.moving_variance)]
    spread = max(float(np.max(np.abs(r - vals[0])))
                 for vals in (replica_values(env.many, v) for v in variables) for r in vals[1:])
    return spread, len(variables)


def check_bn_statistics_agree(env):
    """Default (per-replica) BN: after a training call every replica holds the same moving statistics."""
    name = "bn_statistics_agree"
    if env.replicas < 2:
        return skip_one_replica(env, name)
    global_batch = PER_REPLICA * env.replicas
    trainer = make_trainer(env, env.many, global_batch, seed=3)
    it = batches(env, env.many, *random_batch(global_batch))
    loss = train(env, trainer, it, 3)  # the real path: 3 steps, then the replicas' statistics averaged
    spread, count = bn_spread(env, trainer)
    from resnet.model import batch_norm_layers

    stem = float(np.abs(batch_norm_layers(trainer.model)[0].moving_mean.numpy()).sum())
    # Teeth: one more step without the averaging shows the replicas really saw different batches.
    trainer.train_loop(it, env.tf.constant(1))
    unaveraged, _ = bn_spread(env, trainer)
    return verdict(name, [
        (math.isfinite(loss), f"3 steps ({env.batch_norm} BN, sync_bn off), loss {loss:.4f} finite"),
        (spread <= BN_ATOL, f"{count} moving mean/variance variables, max |replica r − replica 0| over "
                            f"{env.replicas} replicas: {spread:.3g} ≤ {BN_ATOL:g}"),
        (stem > 0, f"statistics moved: Σ|stem BN moving mean| {stem:.3g} > 0"),
        (unaveraged > BN_ATOL, f"without the averaging (one more step) replicas differ by {unaveraged:.3g} > "
                               f"{BN_ATOL:g}: the comparison has teeth"),
    ])


def check_xla_matches(env):
    """One step with and without XLA from the same weights on the run's replicas."""
    name = "xla_matches"
    global_batch = PER_REPLICA * env.replicas
    images, labels = random_batch(global_batch, seed=2)
    plain = make_trainer(env, env.many, global_batch, seed=5)
    xla = make_trainer(env, env.many, global_batch, seed=5, xla=True)
    copy_weights(xla.model, plain.model)
    start = weights(plain.model)
    loss_plain = train(env, plain, batches(env, env.many, images, labels), 1)
    loss_xla = train(env, xla, batches(env, env.many, images, labels), 1)
    label = f"no XLA vs XLA ({env.replicas} replica(s)):"
    items = [loss_item(label, loss_plain, loss_xla, XLA_LOSS_RTOL)]
    items += update_items(label, weights(plain.model), weights(xla.model), start)
    return verdict(name, items)


def check_fp16_overflow_skipped(env):
    """mixed_float16, inf in the last replica's gradients at step 2: every replica skips it."""
    name = "fp16_overflow_skipped"
    n, last = env.replicas, env.replicas - 1
    global_batch = PER_REPLICA * n
    trainer = make_trainer(env, env.many, global_batch, precision="mixed_float16", inject_inf_grad_at=(2, last))
    it = batches(env, env.many, *random_batch(global_batch))
    train(env, trainer, it, 1)
    scale = replica_values(env.many, trainer.optimizer.dynamic_scale)
    skipped_before = int(trainer.skipped_steps.numpy())
    before = replica_weights(env.many, trainer.model)
    train(env, trainer, it, 1)  # step 2: replica `last` overflows, the others do not
    after = replica_weights(env.many, trainer.model)
    moved = [max(float(np.max(np.abs(w1 - w0))) if np.isfinite(w1).all() else math.inf
                 for w0, w1 in zip(before[r], after[r])) for r in range(n)]
    spread = max(float(np.max(np.abs(a - b))) if np.isfinite(a).all() and np.isfinite(b).all() else math.inf
                 for r in range(1, n) for a, b in zip(after[0], after[r])) if n > 1 else 0.0
    halved = replica_values(env.many, trainer.optimizer.dynamic_scale)
    skipped = int(trainer.skipped_steps.numpy()) - skipped_before
    later = train(env, trainer, it, 3)
    finite = all(np.isfinite(w).all() for w in weights(trainer.model))
    final_skipped = int(trainer.skipped_steps.numpy()) - skipped_before
    return verdict(name, [
        (max(moved) == 0, f"inf on replica {last} of {n} at step 2: max |weight change| on replicas 0-{last}: "
                          f"{', '.join(f'{m:.3g}' for m in moved)} (all = 0)"),
        (spread == 0, f"weights identical across replicas after it: max |Δ| {spread:.3g} = 0"),
        (all(h == s / 2 for h, s in zip(halved, scale)),
         f"loss scale halved once on every replica: {[float(s) for s in scale]} → {[float(h) for h in halved]}"),
        (skipped == 1, f"skipped_steps counted {skipped} = 1"),
        (math.isfinite(later) and finite and final_skipped == 1,
         f"steps 3-5: loss {later:.4f} finite, weights finite: {finite}, no further skip: {final_skipped == 1}"),
    ])


def check_mixed_precision_finite(env):
    """A few mixed_bfloat16 and mixed_float16 steps on the run's replicas stay finite."""
    name = "mixed_precision_finite"
    from bench import peak

    global_batch = PER_REPLICA * env.replicas
    images, labels = random_batch(global_batch, seed=4)
    cc = peak.gpu_compute_capability() if env.kind == "GPU" else None
    items, skips = [], []
    for precision in ("mixed_bfloat16", "mixed_float16"):
        if precision == "mixed_bfloat16" and cc is not None and tuple(cc) < (8, 0):
            skips.append(f"mixed_bfloat16 not run: bfloat16 is native from compute capability 8.0, this GPU is "
                         f"{cc[0]}.{cc[1]}")
            continue
        trainer = make_trainer(env, env.many, global_batch, precision=precision, seed=6)
        it = batches(env, env.many, images, labels)
        losses = [train(env, trainer, it, 1), train(env, trainer, it, 3)]
        finite = all(np.isfinite(w).all() for w in weights(trainer.model))
        skipped = int(trainer.skipped_steps.numpy())
        items.append((all(math.isfinite(x) for x in losses) and finite,
                      f"{precision}, 4 steps: loss {losses[0]:.4f} → {losses[1]:.4f}, weights finite: {finite}"
                      + (f" (loss scaling skipped {skipped})" if precision == "mixed_float16" else "")))
    result = verdict(name, items)
    result.lines += [OK_PREFIX + s for s in skips]
    return result


def check_peak_vs_datasheet(env):
    """Measured matmul peak of each device against its datasheet figure (SKIP where none is known)."""
    name = "peak_vs_datasheet"
    from bench import datasheet, peak

    dtype = peak.COMPUTE_DTYPE[env.precision]
    tf32 = peak.tf32_in_effect(env.precision) if env.kind == "GPU" else False
    size = PEAK_MAX_SIZE[env.kind]
    targets = list(zip(env.names, env.device_names)) if env.kind == "GPU" else [(env.names[0], env.device_names[0])]
    items, reasons = [], []
    for device, model in targets:
        measured = peak.measure(device, dtype, max_size=size) / 1000.0  # TFLOP/s
        sheet, source = datasheet.lookup(model, env.precision, tf32)
        rate = f"{measured:.3g} TFLOP/s" if measured >= 1 else f"{measured * 1000:.3g} GFLOP/s"
        what = f"{device} {model}: measured {rate} {dtype}{' (TF32)' if tf32 else ''} (matmuls up to {size}²)"
        if sheet is None:
            reasons.append(source)
            items.append((True, what))
            continue
        ratio, (low, high) = measured / sheet, PEAK_BAND
        items.append((low <= ratio <= high, f"{what} = {ratio:.2f}× datasheet {sheet:g} TFLOP/s, in "
                                            f"[{low}, {high}] ({source.split(';')[0]})"))
    if len(reasons) == len(targets):  # nothing to compare with: a skip, not a failure
        reason = f"no datasheet figure for {env.device_names[0]}" if env.kind == "CPU" else reasons[0]
        return verdict(name, items, skip=reason)
    return verdict(name, items)


def decode_crops(crops, pad):
    """(dy, dx, flip) of each crop of `coordinate_images`, read from two pixels that are never padding."""
    centre, right = crops[:, 16, 16].astype(int), crops[:, 16, 17].astype(int)
    flip = right[:, 1] < centre[:, 1]
    dy = centre[:, 0] - 1 - 16 + pad
    dx = np.where(flip, centre[:, 1] - 1 - (31 - 16), centre[:, 1] - 1 - 16) + pad
    return dy, dx, flip


def coordinate_image():
    """Pixel (i, j) holds (i + 1, j + 1, 7): every crop is decodable (0 is padding)."""
    i, j = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    return np.stack([i, j, np.full_like(i, 7)], axis=-1).astype(np.uint8)


def cell_counts(crops, positions, pad):
    dy, dx, flip = decode_crops(crops, pad)
    cells = positions * positions * 2
    inside = (dy >= 0) & (dy < positions) & (dx >= 0) & (dx < positions)
    counts = np.bincount(((dy * positions + dx) * 2 + flip)[inside], minlength=cells)[:cells]
    return counts, float(flip.mean()), int((~inside).sum())


def augmented_crops(env, n):
    """(device crops, host crops) of n copies of the coordinate image, each path as a run uses it."""
    from bench import augment, data

    tf = env.tf
    image = coordinate_image()
    with tf.device(env.names[0]):
        device = augment.pad_crop_flip(tf.constant(np.broadcast_to(image, (n, 32, 32, 3))),
                                       augment.step_seed(1, 0, 0)).numpy()
    tf.random.set_seed(1)  # the host path draws from TF's stateful RNG: fix its op seeds
    ds = tf.data.Dataset.from_tensors((image, 0)).repeat(n).map(data.augment).batch(4096)
    host = np.concatenate([x.numpy() for x, _ in ds])
    return device, host


def check_augment_distribution(env):
    """Device and host augmentation: every (dy, dx, flip) cell about equally often, and alike."""
    from bench import augment

    name, positions = "augment_distribution", augment.POSITIONS
    cells = positions * positions * 2
    n = cells * PER_CELL
    items, counts = [], {}
    for path, crops in zip(("device", "host"), augmented_crops(env, n)):
        c, flip_rate, outside = cell_counts(crops, positions, augment.PAD)
        counts[path] = c
        chi2 = float(((c - PER_CELL) ** 2 / PER_CELL).sum())
        ok = outside == 0 and c.min() > 0 and chi2 < CHI2_BOUND and abs(flip_rate - 0.5) < 0.02
        items.append((ok, f"{path} ({n} crops): {positions}×{positions} offsets × 2 flips, all hit: "
                          f"{c.min() > 0 and outside == 0} (min {c.min()}, max {c.max()} per cell, expected "
                          f"{PER_CELL}); χ² vs uniform {chi2:.0f} < {CHI2_BOUND:g} ({cells - 1} dof); "
                          f"flips {flip_rate:.3f} (|−0.5| < 0.02)"))
    a, b = counts["device"].astype(float), counts["host"].astype(float)
    both = (a + b) > 0
    two = float(((a - b)[both] ** 2 / (a + b)[both]).sum())
    items.append((two < CHI2_BOUND, f"device vs host, two-sample χ² {two:.0f} < {CHI2_BOUND:g} ({cells - 1} dof)"))
    return verdict(name, items)


CHECKS = {
    "replicas_match_one_device": check_replicas_match_one_device,
    "bn_statistics_agree": check_bn_statistics_agree,
    "xla_matches": check_xla_matches,
    "fp16_overflow_skipped": check_fp16_overflow_skipped,
    "mixed_precision_finite": check_mixed_precision_finite,
    "peak_vs_datasheet": check_peak_vs_datasheet,
    "augment_distribution": check_augment_distribution,
}
MEASURES_AS_RUN = {"peak_vs_datasheet"}  # the others run with TF32 off


# -- running and printing --------------------------------------------------------


def first_line(err):
    text = str(err).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


@contextlib.contextmanager
def float32_exact(tf):
    """TF32 off (Ampere+ GPUs): float32 matmuls/convs keep float32 precision, which the tolerances assume."""
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def run_check(env, name):
    """Run one check; its own exception is a FAIL with the error's first line (no traceback)."""
    start = time.perf_counter()
    exact = contextlib.nullcontext() if name in MEASURES_AS_RUN else float32_exact(env.tf)
    try:
        with exact:
            result = CHECKS[name](env)
    except Exception as err:  # noqa: BLE001 - a failing check is reported, the others still run
        result = Result(name, "FAIL", [FAIL_PREFIX + "error: " + first_line(err)])
    result.seconds = time.perf_counter() - start
    return result


def format_result(result, width):
    head = f"{result.name:<{width}}  {result.status:<4}  {result.seconds:5.1f}s  "
    pad = " " * len(head)
    return "\n".join(head + line if i == 0 else pad + line for i, line in enumerate(result.lines or [""]))


def run(names, cpu_replicas=2, precision="float32", out=None):
    """Set up the devices, run the named checks, print the table; return the exit status (0 or 1)."""
    out = out or sys.stdout
    start = time.perf_counter()
    env = setup(cpu_replicas, precision)
    print(header(env, cpu_replicas), file=out, flush=True)
    width = max(len(n) for n in CHECKS)
    print(f"\n{'check':<{width}}  result  time  compared", file=out, flush=True)
    results = []
    for name in names:
        results.append(run_check(env, name))
        print(format_result(results[-1], width), file=out, flush=True)
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "SKIP", "FAIL")}
    print(f"\n{len(results)} checks: {counts['PASS']} passed, {counts['SKIP']} skipped, {counts['FAIL']} failed "
          f"in {time.perf_counter() - start:.0f} s", file=out, flush=True)
    return 1 if counts["FAIL"] else 0


# -- command line ------------------------------------------------------------------


def known_checks(names):
    if names is not None and not names:
        raise flags.ValidationError("needs at least one check name")
    unknown = [n for n in names or [] if n not in CHECKS]
    if unknown:
        raise flags.ValidationError(f"unknown check {', '.join(unknown)}; the checks: {', '.join(CHECKS)}")
    return True


def define_flags(flag_values=flags.FLAGS):
    """The flags of bench.check (defined when run as a command, so importing it defines none)."""
    flags.DEFINE_list("only", None, f"Run only these checks (comma list of: {', '.join(CHECKS)}).",
                      flag_values=flag_values)
    flags.register_validator("only", known_checks, flag_values=flag_values)
    flags.DEFINE_integer("cpu_replicas", 2, "Without GPUs: split the CPU into this many logical devices "
                         "(replicas). With GPUs every visible GPU is a replica.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_enum("precision", "float32", list(spec.PRECISIONS + tuple(config.PRECISION_ALIASES)),
                      "The precision of your runs: the matmul peak is measured in it (fp32, fp16, bf16 "
                      "accepted too).", flag_values=flag_values)


def usage():
    return cli.usage_text(__doc__, ["only", "cpu_replicas", "precision"])


def main(argv):
    del argv
    f = flags.FLAGS
    return run(f.only or list(CHECKS), f.cpu_replicas, config.canonical_precision(f.precision))


def entry():
    define_flags()
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, usage))


if __name__ == "__main__":
    entry()
