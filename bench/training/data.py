"""CIFAR-10 input: tensorflow-datasets, the binary files, or synthetic batches on the device.

Every source yields uint8 images (32x32x3, HWC) and int32 labels; augmentation
(4-pixel zero pad, random 32x32 crop, horizontal flip) runs either here in tf.data, per
image (`augment_image`, `--augment host`), or batched inside the step on the device
(`bench.training.augment`, `--augment device`); the per-channel normalisation runs on the
device inside the step (`normalize`), so only uint8 crosses to the accelerator. Files are read with tf.data
(`FixedLengthRecordDataset`); nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses

import tensorflow as tf
from absl import logging

from bench.config import cifar_files

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# Per-channel statistics of the CIFAR-10 training images (RGB, pixel/255).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SHUFFLE_BUFFER = 10_000
TFDS_NAME = "cifar10"


class DataUnavailable(Exception):
    """The requested data cannot be read here (no network, not prepared); the message says what to do."""


# ---------------------------------------------------------------------------
# The binary files (found and checked by bench.config.cifar_files, without TensorFlow)


def files_dataset(files):
    """A tf.data.Dataset of (uint8 image HWC, int32 label) from CIFAR-10 binary files."""

    def decode(record):
        raw = tf.io.decode_raw(record, tf.uint8)
        label = tf.cast(raw[0], tf.int32)
        image = tf.transpose(tf.reshape(raw[1:], (3, 32, 32)), (1, 2, 0))  # CHW planes -> HWC
        return image, label

    ds = tf.data.FixedLengthRecordDataset(files, cifar_files.RECORD_BYTES)
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# tensorflow-datasets


def _tfds_url(builder):
    info = getattr(builder, "_cifar_info", None)
    return getattr(info, "url", None)


def tfds_datasets(tfds_dir=None):
    """(train, test) tf.data.Datasets of (uint8 image, int32 label) through tensorflow-datasets.

    Loads prepared data without touching the network. If CIFAR-10 is not
    prepared, downloads it only when the download host answers within seconds;
    offline it raises DataUnavailable at once instead of retrying for minutes.
    """
    import tensorflow_datasets as tfds  # slow to import (~2 s): only when the tfds source is used

    def load(download):
        train, test = tfds.load(
            TFDS_NAME, split=["train", "test"], data_dir=tfds_dir, as_supervised=True, download=download
        )
        cast = lambda image, label: (image, tf.cast(label, tf.int32))  # noqa: E731
        return train.map(cast), test.map(cast)

    try:
        with _tfds_quiet():
            return load(download=False)
    except AssertionError as not_prepared:  # tfds: "could not find data in ..."
        url = _tfds_url(tfds.builder(TFDS_NAME, data_dir=tfds_dir))
        if url and not cifar_files.download_host_reachable(url):
            raise DataUnavailable(cifar_files.tfds_offline_problem(tfds_dir)) from not_prepared
        return load(download=True)


@contextlib.contextmanager
def _tfds_quiet():
    """tfds logs a warning per missing folder while probing for prepared data; keep the probe quiet."""
    before = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(before)


# ---------------------------------------------------------------------------
# Augmentation, normalisation, distribution


def augment_image(image, label, seed=None):
    """4-pixel zero pad, random 32x32 crop, random horizontal flip (uint8 in, uint8 out)."""
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    image = tf.image.random_crop(padded, IMAGE_SHAPE, seed=seed)
    image = tf.image.random_flip_left_right(image, seed=seed)
    return image, label


def normalize(images):
    """uint8 images -> float32, per-channel standardised. Runs on the device inside the step."""
    mean = tf.constant(CIFAR_MEAN, tf.float32) * 255.0
    std = tf.constant(CIFAR_STD, tf.float32) * 255.0
    return (tf.cast(images, tf.float32) - mean) / std


@dataclasses.dataclass
class DataSource:
    kind: str  # tfds | files | synthetic
    train: object  # tf.data.Dataset of single examples, or None for synthetic
    test: object  # tf.data.Dataset of single examples, or None
    train_images: int
    test_images: int
    problem: str = ""  # kind "unavailable": why
    warning: str = ""  # printed once the run's checks passed (bad input stays one line)


def resolve(cfg):
    """The DataSource for `cfg.data` (auto: files, else prepared/downloadable tfds, else synthetic).

    Data that cannot be read comes back as kind `unavailable` with the reason, for
    `bench.config.setup_checks.check_setup` to refuse (this module decides nothing about input).
    """
    kind = cfg.data
    if kind == "auto" and cfg.cifar_dir:
        kind = "files"
    if kind in ("auto", "tfds"):
        try:
            return _tfds_source(cfg)
        except DataUnavailable as err:
            if kind == "tfds":
                return DataSource("unavailable", None, None, 0, 0, problem=str(err))
            warning = (
                f"WARNING: {err}.\nWARNING: --data=auto falls back to SYNTHETIC data: the row measures "
                f"model speed only and has no accuracy."
            )
            return DataSource("synthetic", None, None, 50_000, 0, warning=warning)
    if kind == "files":
        train_files, test_files = cifar_files.find_files(cfg.cifar_dir)
        return DataSource(
            "files",
            files_dataset(train_files),
            files_dataset(test_files),
            cifar_files.count_records(train_files),
            cifar_files.count_records(test_files),
        )
    return DataSource("synthetic", None, None, 50_000, 0)


def _tfds_source(cfg):
    train, test = tfds_datasets(cfg.tfds_dir)
    n_train = int(train.cardinality())
    n_test = int(test.cardinality())
    if n_train < 0 or n_test < 0:  # unknown cardinality: count once
        n_train = int(train.reduce(0, lambda c, _: c + 1))
        n_test = int(test.reduce(0, lambda c, _: c + 1))
    return DataSource("tfds", train, test, n_train, n_test)


def distribute_train(strategy, source, global_batch, seed, on_host=True):
    """A distributed dataset of training batches: shuffled, repeated, per-replica, prefetched.

    `on_host`: augmented here per image; otherwise raw uint8 batches for the step to augment on the device.
    """

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        ds = source.train.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        ds = ds.cache() if source.kind != "tfds" else ds
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
        if on_host:
            ds = ds.map(augment_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None)
        ds = ds.batch(per_replica, drop_remainder=True)  # static shapes (XLA, no retracing)
        return ds.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def distribute_eval(strategy, source, global_batch):
    """A distributed dataset of the test set in full batches of (images, labels, mask).

    The last batch is padded with masked-out examples so every image counts
    exactly once and every batch has a static shape.
    """
    examples, total = padded_test_examples(source, global_batch)

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        ds = examples.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return ds.batch(per_replica, drop_remainder=True).cache().prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn), total // global_batch


def distribute_inference(strategy, source, global_batch):
    """The test images, repeated, in per-replica batches (`--mode inference` on real data)."""

    def dataset_fn(ctx):
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        ds = source.test.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).cache().repeat()
        return ds.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def padded_test_examples(source, global_batch):
    """(dataset of (image, label, mask), its length): the test set, then mask-0 fillers up to whole batches.

    Whole batches also keep every replica's share non-empty: an empty per-replica batch
    (what Keras makes of a short last batch) breaks oneDNN's Conv2D, which returns its
    input's shape for an empty input (TF 2.21).
    """
    total = -(-source.test_images // global_batch) * global_batch
    real = source.test.map(lambda image, label: (image, label, tf.constant(1.0)))
    filler = tf.data.Dataset.from_tensors(
        (tf.zeros(IMAGE_SHAPE, tf.uint8), tf.constant(0, tf.int32), tf.constant(0.0))
    ).repeat(total - source.test_images)
    return real.concatenate(filler), total


def synthetic_batches(strategy, global_batch, seed):
    """Per-replica (images, labels) made once on each replica's device and reused every step."""
    per_replica = global_batch // strategy.num_replicas_in_sync
    try:
        placement = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: wherever TF places ops
        placement = None

    def make(ctx):
        replica = ctx.replica_id_in_sync_group
        # distribute_values_from_function does not place values; put each on its replica's device
        # MWMS replica ids are global; this worker's devices are indexed locally
        with tf.device(placement[replica % len(placement)] if placement else None):
            g = tf.random.Generator.from_seed(seed + replica)
            images = tf.cast(g.uniform((per_replica,) + IMAGE_SHAPE, 0, 256, tf.int32), tf.uint8)
            labels = g.uniform((per_replica,), 0, NUM_CLASSES, tf.int32)
            return tf.identity(images), tf.identity(labels)

    return strategy.experimental_distribute_values_from_function(make)


SYNTHETIC_TEST_IMAGES = 1024  # a synthetic query sample library's size (MLPerf's ResNet-50 performance count)


def test_arrays(source, seed):
    """(uint8 images N x 32 x 32 x 3, int32 labels N) of the test set as NumPy arrays, read once (LoadGen's
    query sample library); synthetic data: `SYNTHETIC_TEST_IMAGES` random images and labels from `seed`."""
    import numpy as np

    if source.kind == "synthetic" or not source.test_images:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (SYNTHETIC_TEST_IMAGES,) + IMAGE_SHAPE, dtype=np.uint8)
        return images, rng.integers(0, NUM_CLASSES, SYNTHETIC_TEST_IMAGES, dtype=np.int32)
    parts = list(source.test.batch(4096).as_numpy_iterator())
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int32)


class SyntheticIterator:
    """Iterator protocol over one fixed per-replica batch (the input pipeline costs nothing)."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch
