"""Write CIFAR-10 binary files with known contents (for the files-path tests)."""

import os

import numpy as np


def known_image(index):
    """A 32x32x3 uint8 image whose every pixel encodes (index, row, col, channel)."""
    rows = np.arange(32).reshape(32, 1, 1)
    cols = np.arange(32).reshape(1, 32, 1)
    chans = np.arange(3).reshape(1, 1, 3)
    return ((index * 7 + rows * 3 + cols * 5 + chans * 101) % 256).astype(np.uint8)


def write_cifar(folder, train_per_file=(40, 40), test=30, nested=False):
    """Write data_batch_*.bin and test_batch.bin; return (folder given to --cifar_dir, labels by file)."""
    root = os.path.join(folder, "cifar-10-batches-bin") if nested else folder
    os.makedirs(root, exist_ok=True)
    counter = 0
    labels = {}
    files = [(f"data_batch_{i + 1}.bin", k) for i, k in enumerate(train_per_file)] + [("test_batch.bin", test)]
    for name, count in files:
        records = []
        labels[name] = []
        for _ in range(count):
            label = counter % 10
            image = known_image(counter)
            # CIFAR layout: 1 label byte, then the R plane, G plane, B plane (row-major 32x32 each)
            records.append(bytes([label]) + image.transpose(2, 0, 1).tobytes())
            labels[name].append(label)
            counter += 1
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(b"".join(records))
    return folder, labels


def write_learnable_cifar(folder, train=128, test=64, seed=0, classes=4):
    """CIFAR-10 binary files a tiny ResNet learns in a few epochs: `classes` labels (0, 1, ...), each a
    brightness level (15, 75, 135, ...) under uniform noise, so a run with `--target_accuracy 0.9`
    reaches it on a CPU in 2-4 epochs at the recipe's lr, about twice as many at `--lr_scale 0.05`
    (four levels: a random initialisation does not sort them by luck, as it can two). Returns the folder."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name, count in (("data_batch_1.bin", train), ("test_batch.bin", test)):
        labels = np.arange(count) % classes
        base = (15 + 60 * labels).reshape(count, 1, 1, 1)
        images = (base + rng.integers(0, 45, size=(count, 3, 32, 32))).astype(np.uint8)  # CIFAR: planes R, G, B
        records = [bytes([int(label)]) + image.tobytes() for label, image in zip(labels, images)]
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(b"".join(records))
    return folder
