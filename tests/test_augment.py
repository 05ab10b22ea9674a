"""Device-side batched augmentation: the host path's distribution, exact crops, XLA, replicas, training."""

import math

import numpy as np
import pytest
import tensorflow as tf

from bench.selfcheck.env import batches, make_step_functions, random_batch
from bench.training import augment

PER_CELL = 200
CELLS = augment.POSITIONS**2 * 2  # 81 offsets x flip


def coordinate_images(batch):
    """Images whose pixel (i, j) holds (i + 1, j + 1, 7): every crop is decodable (0 = padding)."""
    i, j = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    image = np.stack([i, j, np.full_like(i, 7)], axis=-1).astype(np.uint8)
    return np.broadcast_to(image, (batch, 32, 32, 3))


def decode(crops):
    """(dy, dx, flip) of each crop of `coordinate_images`, read from two pixels that are never padding."""
    centre, right = crops[:, 16, 16].astype(int), crops[:, 16, 17].astype(int)
    flip = right[:, 1] < centre[:, 1]
    dy = centre[:, 0] - 1 - 16 + augment.PAD
    dx = np.where(flip, centre[:, 1] - 1 - (31 - 16), centre[:, 1] - 1 - 16) + augment.PAD
    return dy, dx, flip


def reference(image, dy, dx, flip):
    """NumPy: zero-pad by 4, take the 32x32 window at (dy, dx), mirror it if `flip`."""
    padded = np.pad(image, ((augment.PAD, augment.PAD), (augment.PAD, augment.PAD), (0, 0)))
    crop = padded[dy : dy + 32, dx : dx + 32]
    return crop[:, ::-1] if flip else crop


def test_offsets_and_flips_are_uniform_and_independent():
    """81 * 2 * 200 crops of one seed: all 162 (dy, dx, flip) cells are hit, with chi-square counts.

    Decoded from the augmented pixels themselves, so this checks the crop, not only the draw.
    The bound: P(chi2 with 161 dof > 300) is about 1e-10, so this never flakes; a missing
    offset, a biased coin or offset-flip dependence pushes it far past.
    """
    n = CELLS * PER_CELL
    crops = augment.pad_crop_flip(tf.constant(coordinate_images(n)), augment.step_seed(1, 0, 0)).numpy()
    dy, dx, flip = decode(crops)
    assert dy.min() == dx.min() == 0 and dy.max() == dx.max() == 2 * augment.PAD
    cell = (dy * augment.POSITIONS + dx) * 2 + flip
    counts = np.bincount(cell, minlength=CELLS)
    assert len(counts) == CELLS and counts.min() > 0
    chi2 = float(((counts - PER_CELL) ** 2 / PER_CELL).sum())
    assert chi2 < 300, chi2
    assert abs(flip.mean() - 0.5) < 0.02  # 5 sigma is 0.014


def test_crops_are_exact_windows_of_the_padded_image():
    images, _ = random_batch(32, seed=4)
    seed = augment.step_seed(3, 5, 1)
    out = augment.pad_crop_flip(tf.constant(images), seed).numpy()
    dy, dx, flip = (t.numpy() for t in augment.sample_params(32, seed))
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert flip.any() and not flip.all() and len(set(zip(dy, dx))) > 10  # the sample is varied
    for k in range(32):
        np.testing.assert_array_equal(out[k], reference(images[k], dy[k], dx[k], flip[k]), err_msg=str(k))


def test_steps_and_seeds_draw_different_crops():
    images = tf.constant(random_batch(64)[0])
    a = augment.pad_crop_flip(images, augment.step_seed(0, 1, 0)).numpy()
    again = augment.pad_crop_flip(images, augment.step_seed(0, 1, 0)).numpy()
    np.testing.assert_array_equal(a, again)  # reproducible
    for other in (augment.step_seed(0, 2, 0), augment.step_seed(1, 1, 0), augment.step_seed(0, 1, 1)):
        assert not np.array_equal(a, augment.pad_crop_flip(images, other).numpy())


def test_under_xla_on_two_replicas(check_env, strategies):
    """Compiled like the trainer's forward/backward: jit function per replica, replica id passed in.
    Same input on both replicas, different crops; XLA gives exactly the eager result."""
    strategy = strategies[2]
    images, labels = random_batch(16)
    images[8:] = images[:8]  # both replicas get the same 8 images
    it = batches(check_env, strategy, images, labels)

    @tf.function(jit_compile=True)
    def compiled(x, step, replica):
        return augment.pad_crop_flip(x, augment.step_seed(9, step, replica))

    def replica_fn(x, _):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return compiled(x, tf.constant(4, tf.int64), replica)

    out = [t.numpy() for t in strategy.experimental_local_results(strategy.run(replica_fn, args=next(it)))]
    assert not np.array_equal(out[0], out[1])
    for r in range(2):
        eager = augment.pad_crop_flip(tf.constant(images[:8]), augment.step_seed(9, 4, r)).numpy()
        np.testing.assert_array_equal(out[r], eager)


def brightness_batch(batch=16, seed=1):
    """A task crops and flips keep learnable: the label is the image's brightness level."""
    labels = np.arange(batch, dtype=np.int32) % 10
    noise = np.random.default_rng(seed).integers(0, 16, (batch, 32, 32, 3))
    return (labels[:, None, None, None] * 24 + noise).astype(np.uint8), labels


def test_trainer_augmenting_on_device_trains(check_env, strategies):
    """One replica, for time: the replica id reaches the augmentation as it reaches the fault
    injection (tested on two replicas in test_step), and the two-replica draw is tested above."""
    strategy = strategies[1]
    images, labels = brightness_batch()
    plain = make_step_functions(check_env, strategy, 16, seed=2)
    aug = make_step_functions(check_env, strategy, 16, seed=2, augment_on_device=True)
    it_plain, it_aug = (batches(check_env, strategy, images, labels) for _ in range(2))
    first_plain = float(plain.train(it_plain, tf.constant(1)))
    first = float(aug.train(it_aug, tf.constant(1)))
    assert first != pytest.approx(first_plain, rel=1e-6)  # same weights, other (augmented) inputs
    later = [float(aug.train(it_aug, tf.constant(5))) for _ in range(4)]
    assert all(math.isfinite(x) for x in [first] + later)
    assert later[-1] < 0.5 * first  # about 0.1x in a trial run
