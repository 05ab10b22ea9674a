"""CIFAR augmentation on the device, batched: 4-pixel zero pad, random 32x32 crop, random flip.

The same distribution as the host path (`bench.training.data.augment_image`, per image in
tf.data): each image independently gets a crop offset (dy, dx) uniform over the
9 x 9 = 81 positions of a 32x32 window in the 40x40 zero-padded image, and a
horizontal flip with probability 1/2, independent of the offset.

Written for XLA and for every replica count: static shapes throughout, no
per-image Python loop, no stateful RNG. The randomness is stateless, seeded from
(seed, step, replica), so every step and every replica draws different crops
and a run is reproducible. The crop is index arithmetic plus two batched
gathers (rows, then columns), with the flip folded into the column indices,
so flipping costs nothing beyond the crop. uint8 in, uint8 out (any dtype works):
only uint8 crosses from the host, and the step normalises after augmenting.
"""

from __future__ import annotations

import tensorflow as tf

PAD = 4
POSITIONS = 2 * PAD + 1  # offsets per axis: 0..8
# Explicit, because "auto_select" picks a different generator under XLA: the same seed
# then gives other crops with and without jit_compile.
ALG = "philox"


def step_seed(seed, step, replica):
    """The stateless-RNG seed (shape [2], int64) of one replica's batch at one step."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0x5EED, tf.int64)])
    base = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64), alg=ALG)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(replica, tf.int64), alg=ALG)


def sample_params(batch_size, seed):
    """(dy, dx, flip) for `batch_size` images: int32 offsets in [0, 8], bool flips; independent draws."""
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg=ALG))
    offsets = tf.random.stateless_uniform(
        [batch_size, 2], offset_seed, minval=0, maxval=POSITIONS, dtype=tf.int32, alg=ALG
    )
    coin = tf.random.stateless_uniform([batch_size], flip_seed, minval=0, maxval=2, dtype=tf.int32, alg=ALG)
    flip = coin > 0
    return offsets[:, 0], offsets[:, 1], flip


def crop_flip(images, dy, dx, flip):
    """Each image zero-padded by 4, its 32x32 window at (dy, dx) taken, then mirrored where `flip`.

    images: [B, H, W, C] with static H, W; dy, dx: [B] int32 in [0, 2*PAD]; flip: [B] bool.
    """
    _, height, width, _ = images.shape
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    rows = dy[:, None] + tf.range(height)[None, :]  # [B, H] rows of the padded image
    cols = tf.range(width)[None, :]
    # A flipped crop reads its window's columns right to left.
    cols = dx[:, None] + tf.where(flip[:, None], width - 1 - cols, cols)  # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W + 2*PAD, C]
    return tf.gather(out, cols, axis=2, batch_dims=1)  # [B, H, W, C]


def pad_crop_flip(images, seed):
    """Augment a batch [B, H, W, C] with the stateless `seed` (see `step_seed`)."""
    dy, dx, flip = sample_params(tf.shape(images)[0], seed)
    return crop_flip(images, dy, dx, flip)
