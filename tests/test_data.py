"""Input paths: CIFAR binary files decoded exactly, tfds through mock data, augmentation, eval padding."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from cifar_files import known_image, write_cifar

from bench.config import cifar_files
from bench.config.options import RunConfig
from bench.training import data


def test_binary_files_decode_exactly(tmp_path):
    folder, labels = write_cifar(str(tmp_path), train_per_file=(5, 4), test=3)
    train_files, test_files = cifar_files.find_files(folder)
    assert [os.path.basename(f) for f in train_files] == ["data_batch_1.bin", "data_batch_2.bin"]
    decoded = list(data.files_dataset(train_files).as_numpy_iterator())
    assert len(decoded) == 9
    for index, (image, label) in enumerate(decoded):
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        np.testing.assert_array_equal(image, known_image(index))
        assert label == index % 10
    # spot values: pixel (row 0, col 0) of image 0 is R=0, G=101, B=202; channel order is RGB
    assert decoded[0][0][0, 0].tolist() == [0, 101, 202]
    assert decoded[0][0][1, 2].tolist() == [13, 114, 215]
    test = list(data.files_dataset(test_files).as_numpy_iterator())
    np.testing.assert_array_equal(test[0][0], known_image(9))


def test_nested_folder_is_found(tmp_path):
    folder, _ = write_cifar(str(tmp_path), nested=True)
    train, test = cifar_files.find_files(folder)
    assert len(train) == 2 and test[0].endswith(os.path.join("cifar-10-batches-bin", "test_batch.bin"))


def test_bad_files_are_named(tmp_path):
    folder, _ = write_cifar(str(tmp_path))
    with open(os.path.join(folder, "data_batch_2.bin"), "ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(cifar_files.CifarFilesError, match="data_batch_2.bin.*3073"):
        cifar_files.find_files(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(cifar_files.CifarFilesError, match="holds no CIFAR-10 binary files"):
        cifar_files.find_files(str(empty))
    with pytest.raises(cifar_files.CifarFilesError, match="not a folder"):
        cifar_files.find_files(str(tmp_path / "missing"))


def test_augmentation_keeps_shape_and_moves_pixels():
    image = tf.constant(known_image(3))
    outs = [data.augment_image(image, 0)[0].numpy() for _ in range(20)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, known_image(3)) for o in outs)
    # a crop of the zero-padded image: every output row is a (possibly flipped) shifted input row or zeros
    assert all(set(np.unique(o)).issubset(set(np.unique(known_image(3))) | {0}) for o in outs)


def test_normalize_is_per_channel():
    x = np.zeros((1, 1, 1, 3), np.uint8) + np.array([125, 123, 114], np.uint8)
    y = data.normalize(tf.constant(x)).numpy().ravel()
    np.testing.assert_allclose(
        y, (x.ravel() / 255.0 - np.array(data.CIFAR_MEAN)) / np.array(data.CIFAR_STD), rtol=1e-5, atol=1e-5
    )


def test_eval_covers_every_image_once_with_padding(tmp_path, strategies):
    folder, labels = write_cifar(str(tmp_path), train_per_file=(10,), test=37)
    source = data.resolve(RunConfig(data="files", cifar_dir=folder))
    assert (source.kind, source.train_images, source.test_images) == ("files", 10, 37)
    for strategy in strategies.values():
        dist, batches = data.distribute_eval(strategy, source, 16)
        assert batches == 3
        seen, masked = [], 0
        for _images, labels_, mask in dist:
            for part_l, part_m in zip(
                strategy.experimental_local_results(labels_), strategy.experimental_local_results(mask)
            ):
                m = part_m.numpy()
                seen.extend(part_l.numpy()[m > 0].tolist())
                masked += int((m == 0).sum())
        assert sorted(seen) == sorted(labels["test_batch.bin"]) and masked == 48 - 37


def test_train_batches_are_per_replica_and_static(tmp_path, strategies):
    folder, _ = write_cifar(str(tmp_path), train_per_file=(20, 20), test=4)
    source = data.resolve(RunConfig(data="files", cifar_dir=folder))
    it = iter(data.distribute_train(strategies[2], source, 8, seed=0))
    images, labels = next(it)
    parts = strategies[2].experimental_local_results(images)
    assert [p.shape for p in parts] == [(4, 32, 32, 3)] * 2 and parts[0].dtype == tf.uint8
    assert "CPU:1" in parts[1].device


def test_tfds_path_with_mock_data(strategies):
    with tfds.testing.mock_data(num_examples=24):
        source = data.resolve(RunConfig(data="tfds"))
        assert source.kind == "tfds" and source.train_images == 24 and source.test_images == 24
        image, label = next(iter(source.train))
        assert image.dtype == tf.uint8 and image.shape == (32, 32, 3) and label.dtype == tf.int32
        images, _ = next(iter(data.distribute_train(strategies[2], source, 8, seed=0)))
        assert strategies[2].experimental_local_results(images)[0].shape == (4, 32, 32, 3)


def test_tfds_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(cifar_files, "download_host_reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailable, match="--cifar_dir.*--data=synthetic"):
        data.tfds_datasets(str(tmp_path))
    assert time.perf_counter() - start < 30  # not tfds' minutes of retries
    # --data=tfds: resolve reports it, for setup_checks.check_setup to refuse (exit 2 through the CLI)
    source = data.resolve(RunConfig(data="tfds", tfds_dir=str(tmp_path)))
    assert source.kind == "unavailable" and "--data=synthetic" in source.problem


def test_auto_falls_back_to_synthetic_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar_files, "download_host_reachable", lambda url, timeout=3.0: False)
    source = data.resolve(RunConfig(data="auto", tfds_dir=str(tmp_path)))
    assert source.kind == "synthetic" and source.test is None
    assert "SYNTHETIC" in source.warning  # printed by bench.runner.loop once the run's checks passed


def test_synthetic_batches_live_on_each_replica(strategies):
    batch = data.synthetic_batches(strategies[2], 8, seed=1)
    images, labels = batch
    parts = strategies[2].experimental_local_results(images)
    assert [p.shape for p in parts] == [(4, 32, 32, 3)] * 2
    assert parts[0].dtype == tf.uint8 and "CPU:1" in parts[1].device
    assert not np.array_equal(parts[0].numpy(), parts[1].numpy())
