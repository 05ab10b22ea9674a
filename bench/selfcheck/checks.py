"""The checks of `python -m bench.check`, one function each: PASS, FAIL or SKIP with the numbers compared."""

from __future__ import annotations

import math
import os

import numpy as np

from bench.hardware import datasheet, peak, system
from bench.results import systems, table
from bench.selfcheck.env import (
    BN_ATOL,
    CHI2_BOUND,
    LOSS_RTOL,
    OK_PREFIX,
    PEAK_BAND,
    PEAK_MAX_SIZE,
    PER_CELL,
    PER_REPLICA,
    XLA_LOSS_RTOL,
    batches,
    copy_weights,
    loss_item,
    make_step_functions,
    random_batch,
    replica_values,
    replica_weights,
    skip_one_replica,
    train,
    update_items,
    verdict,
    weights,
)
from bench.training import augment, data
from resnet import spec
from resnet.model import batch_norm_layers


def check_replicas_match_one_device(env):
    """Same weights, same global batch, synchronized BN: one step on 1 device equals one on N replicas."""
    name = "replicas_match_one_device"
    if env.replicas < 2:
        return skip_one_replica(env, name)
    global_batch = PER_REPLICA * env.replicas
    images, labels = random_batch(global_batch)
    one = make_step_functions(env, env.one, global_batch, sync_bn=True, seed=7)
    many = make_step_functions(env, env.many, global_batch, sync_bn=True, seed=7)
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


def bn_spread(env, step_fns):
    """max over BN moving statistics and replicas of |replica r - replica 0|, and how many variables."""
    variables = [v for layer in batch_norm_layers(step_fns.model) for v in (layer.moving_mean, layer.moving_variance)]
    spread = max(
        float(np.max(np.abs(r - vals[0])))
        for vals in (replica_values(env.many, v) for v in variables)
        for r in vals[1:]
    )
    return spread, len(variables)


def check_bn_statistics_agree(env):
    """Default (per-replica) BN: after a training call every replica holds the same moving statistics."""
    name = "bn_statistics_agree"
    if env.replicas < 2:
        return skip_one_replica(env, name)
    global_batch = PER_REPLICA * env.replicas
    step_fns = make_step_functions(env, env.many, global_batch, seed=3)
    it = batches(env, env.many, *random_batch(global_batch))
    loss = train(env, step_fns, it, 3)  # the real path: 3 steps, then the replicas' statistics averaged
    spread, count = bn_spread(env, step_fns)
    stem = float(np.abs(batch_norm_layers(step_fns.model)[0].moving_mean.numpy()).sum())
    # Teeth: one more step without the averaging shows the replicas really saw different batches.
    step_fns.train_loop(it, env.tf.constant(1))
    unaveraged, _ = bn_spread(env, step_fns)
    return verdict(
        name,
        [
            (math.isfinite(loss), f"3 steps ({env.batch_norm} BN, sync_bn off), loss {loss:.4f} finite"),
            (
                spread <= BN_ATOL,
                f"{count} moving mean/variance variables, max |replica r − replica 0| over "
                f"{env.replicas} replicas: {spread:.3g} ≤ {BN_ATOL:g}",
            ),
            (stem > 0, f"statistics moved: Σ|stem BN moving mean| {stem:.3g} > 0"),
            (
                unaveraged > BN_ATOL,
                f"without the averaging (one more step) replicas differ by {unaveraged:.3g} > "
                f"{BN_ATOL:g}: the comparison has teeth",
            ),
        ],
    )


def check_xla_matches(env):
    """One step with and without XLA from the same weights on the run's replicas."""
    name = "xla_matches"
    global_batch = PER_REPLICA * env.replicas
    images, labels = random_batch(global_batch, seed=2)
    plain = make_step_functions(env, env.many, global_batch, seed=5)
    xla = make_step_functions(env, env.many, global_batch, seed=5, xla=True)
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
    step_fns = make_step_functions(env, env.many, global_batch, precision="mixed_float16", inject_inf_grad_at=(2, last))
    it = batches(env, env.many, *random_batch(global_batch))
    train(env, step_fns, it, 1)
    scale = replica_values(env.many, step_fns.optimizer.dynamic_scale)
    skipped_before = int(step_fns.skipped_steps.numpy())
    before = replica_weights(env.many, step_fns.model)
    train(env, step_fns, it, 1)  # step 2: replica `last` overflows, the others do not
    after = replica_weights(env.many, step_fns.model)
    moved = [
        max(
            float(np.max(np.abs(w1 - w0))) if np.isfinite(w1).all() else math.inf for w0, w1 in zip(before[r], after[r])
        )
        for r in range(n)
    ]
    spread = (
        max(
            float(np.max(np.abs(a - b))) if np.isfinite(a).all() and np.isfinite(b).all() else math.inf
            for r in range(1, n)
            for a, b in zip(after[0], after[r])
        )
        if n > 1
        else 0.0
    )
    halved = replica_values(env.many, step_fns.optimizer.dynamic_scale)
    skipped = int(step_fns.skipped_steps.numpy()) - skipped_before
    later = train(env, step_fns, it, 3)
    finite = all(np.isfinite(w).all() for w in weights(step_fns.model))
    final_skipped = int(step_fns.skipped_steps.numpy()) - skipped_before
    return verdict(
        name,
        [
            (
                max(moved) == 0,
                f"inf on replica {last} of {n} at step 2: max |weight change| on replicas 0-{last}: "
                f"{', '.join(f'{m:.3g}' for m in moved)} (all = 0)",
            ),
            (spread == 0, f"weights identical across replicas after it: max |Δ| {spread:.3g} = 0"),
            (
                all(h == s / 2 for h, s in zip(halved, scale)),
                f"loss scale halved once on every replica: {[float(s) for s in scale]} → {[float(h) for h in halved]}",
            ),
            (skipped == 1, f"skipped_steps counted {skipped} = 1"),
            (
                math.isfinite(later) and finite and final_skipped == 1,
                f"steps 3-5: loss {later:.4f} finite, weights finite: {finite}, no further skip: {final_skipped == 1}",
            ),
        ],
    )


def check_mixed_precision_finite(env):
    """A few mixed_bfloat16 and mixed_float16 steps on the run's replicas stay finite."""
    name = "mixed_precision_finite"

    global_batch = PER_REPLICA * env.replicas
    images, labels = random_batch(global_batch, seed=4)
    cc = peak.gpu_compute_capability() if env.kind == "GPU" else None
    items, skips = [], []
    for precision in ("mixed_bfloat16", "mixed_float16"):
        if precision == "mixed_bfloat16" and cc is not None and tuple(cc) < (8, 0):
            skips.append(
                f"mixed_bfloat16 not run: bfloat16 is native from compute capability 8.0, this GPU is {cc[0]}.{cc[1]}"
            )
            continue
        step_fns = make_step_functions(env, env.many, global_batch, precision=precision, seed=6)
        it = batches(env, env.many, images, labels)
        losses = [train(env, step_fns, it, 1), train(env, step_fns, it, 3)]
        finite = all(np.isfinite(w).all() for w in weights(step_fns.model))
        skipped = int(step_fns.skipped_steps.numpy())
        items.append(
            (
                all(math.isfinite(x) for x in losses) and finite,
                f"{precision}, 4 steps: loss {losses[0]:.4f} → {losses[1]:.4f}, weights finite: {finite}"
                + (f" (loss scaling skipped {skipped})" if precision == "mixed_float16" else ""),
            )
        )
    result = verdict(name, items)
    result.lines += [OK_PREFIX + s for s in skips]
    return result


def check_peak_vs_datasheet(env):
    """Measured matmul peak of each device against its datasheet figure (SKIP where none is known)."""
    name = "peak_vs_datasheet"

    dtype = spec.COMPUTE_DTYPE[env.precision]
    tf32 = peak.tf32_in_effect(env.precision) if env.kind == "GPU" else False
    size = PEAK_MAX_SIZE[env.kind]
    targets = (
        list(zip(env.replica_devices, env.replica_models))
        if env.kind == "GPU"
        else [(env.replica_devices[0], env.replica_models[0])]
    )
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
        items.append(
            (
                low <= ratio <= high,
                f"{what} = {ratio:.2f}× datasheet {sheet:g} TFLOP/s, in [{low}, {high}] ({source.split(';')[0]})",
            )
        )
    if len(reasons) == len(targets):  # nothing to compare with: a skip, not a failure
        reason = f"no datasheet figure for {env.replica_models[0]}" if env.kind == "CPU" else reasons[0]
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

    tf = env.tf
    image = coordinate_image()
    with tf.device(env.replica_devices[0]):
        device = augment.pad_crop_flip(
            tf.constant(np.broadcast_to(image, (n, 32, 32, 3))), augment.step_seed(1, 0, 0)
        ).numpy()
    tf.random.set_seed(1)  # the host path draws from TF's stateful RNG: fix its op seeds
    ds = tf.data.Dataset.from_tensors((image, 0)).repeat(n).map(data.augment_image).batch(4096)
    host = np.concatenate([x.numpy() for x, _ in ds])
    return device, host


def check_augment_distribution(env):
    """Device and host augmentation: every (dy, dx, flip) cell about equally often, and alike."""

    name, positions = "augment_distribution", augment.POSITIONS
    cells = positions * positions * 2
    n = cells * PER_CELL
    items, counts = [], {}
    for path, crops in zip(("device", "host"), augmented_crops(env, n)):
        c, flip_rate, outside = cell_counts(crops, positions, augment.PAD)
        counts[path] = c
        chi2 = float(((c - PER_CELL) ** 2 / PER_CELL).sum())
        ok = outside == 0 and c.min() > 0 and chi2 < CHI2_BOUND and abs(flip_rate - 0.5) < 0.02
        items.append(
            (
                ok,
                f"{path} ({n} crops): {positions}×{positions} offsets × 2 flips, all hit: "
                f"{c.min() > 0 and outside == 0} (min {c.min()}, max {c.max()} per cell, expected "
                f"{PER_CELL}); χ² vs uniform {chi2:.0f} < {CHI2_BOUND:g} ({cells - 1} dof); "
                f"flips {flip_rate:.3f} (|−0.5| < 0.02)",
            )
        )
    a, b = counts["device"].astype(float), counts["host"].astype(float)
    both = (a + b) > 0
    two = float(((a - b)[both] ** 2 / (a + b)[both]).sum())
    items.append((two < CHI2_BOUND, f"device vs host, two-sample χ² {two:.0f} < {CHI2_BOUND:g} ({cells - 1} dof)"))
    return verdict(name, items)


def check_system_description(env):
    """This machine's system description (MLPerf's fields): complete, written once beside --results and unedited,
    and every system the table's rows name has its file."""
    named = [row.get("system", "") for row in table.read_rows(env.results)] if os.path.isfile(env.results) else []
    return verdict("system_description", systems.check(env.results, system.describe(), named))


CHECKS = {
    "replicas_match_one_device": check_replicas_match_one_device,
    "bn_statistics_agree": check_bn_statistics_agree,
    "xla_matches": check_xla_matches,
    "fp16_overflow_skipped": check_fp16_overflow_skipped,
    "mixed_precision_finite": check_mixed_precision_finite,
    "peak_vs_datasheet": check_peak_vs_datasheet,
    "augment_distribution": check_augment_distribution,
    "system_description": check_system_description,
}
MEASURES_AS_RUN = {"peak_vs_datasheet", "system_description"}  # the others run with TF32 off
