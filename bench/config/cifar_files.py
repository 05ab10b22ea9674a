"""The CIFAR-10 binary files on disk: their layout and a check of them, without TensorFlow; and whether
tensorflow-datasets can give CIFAR-10 here (prepared on disk, or its download host answering).

`bench.config.validation.validate` checks a `--cifar_dir` with `find_files` before any work;
`bench.training.data` reads the files it found with tf.data (nothing is ever unpickled).
"""

from __future__ import annotations

import glob
import os
import socket
import urllib.parse

RECORD_BYTES = 1 + 32 * 32 * 3  # label byte, then the R, G and B planes of 32x32
SUBFOLDER = "cifar-10-batches-bin"
TFDS_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"  # tfds's cifar10 builder downloads this


class CifarFilesError(ValueError):
    """The folder holds no usable CIFAR-10 binary files (the message says what is wrong)."""


def find_files(cifar_dir):
    """(train files, test files) under `cifar_dir` or its `cifar-10-batches-bin/`; raises CifarFilesError."""
    if not os.path.isdir(cifar_dir):
        raise CifarFilesError(f"--cifar_dir={cifar_dir} is not a folder")
    for folder in (cifar_dir, os.path.join(cifar_dir, SUBFOLDER)):
        train = sorted(glob.glob(os.path.join(folder, "data_batch_*.bin")))
        test = os.path.join(folder, "test_batch.bin")
        if train and os.path.isfile(test):
            for path in train + [test]:
                size = os.path.getsize(path)
                if size == 0 or size % RECORD_BYTES:
                    raise CifarFilesError(
                        f"{path} is not a CIFAR-10 binary file: {size} bytes is not a positive "
                        f"multiple of {RECORD_BYTES} (1 label byte + 3072 pixel bytes per record)"
                    )
            return train, [test]
    raise CifarFilesError(
        f"--cifar_dir={cifar_dir} holds no CIFAR-10 binary files: expected data_batch_*.bin and "
        f"test_batch.bin there or in its {SUBFOLDER}/ folder"
    )


def count_records(files):
    return sum(os.path.getsize(f) // RECORD_BYTES for f in files)


# ---------------------------------------------------------------------------
# tensorflow-datasets' CIFAR-10, as far as it can be told without importing it


def download_host_reachable(url, timeout=3.0):
    """Whether `url`'s host accepts a connection within `timeout` seconds (tfds would retry for minutes)."""
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def tfds_offline_problem(tfds_dir):
    """The line for CIFAR-10 neither prepared for tensorflow-datasets nor downloadable."""
    return (
        f"CIFAR-10 is not prepared for tensorflow-datasets in {tfds_dir or 'its default folder'} "
        f"and cannot be downloaded (no network); copy the binary files and pass --cifar_dir, "
        f"prepare it with tfds elsewhere and pass --tfds_dir, or use --data=synthetic"
    )


def tfds_problem(tfds_dir=None):
    """Why `--data=tfds` cannot read CIFAR-10 here, or "" when it is prepared in `tfds_dir` (or tfds's default
    folder: $TFDS_DATA_DIR, else ~/tensorflow_datasets) or its download host answers. A check before a run
    starts (`sweeps.compare` checks both arms with it); the run itself asks tfds (`bench.training.data`)."""
    root = os.path.expanduser(tfds_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    if glob.glob(os.path.join(root, "cifar10", "*", "dataset_info.json")):
        return ""
    return "" if download_host_reachable(TFDS_URL) else tfds_offline_problem(tfds_dir)
