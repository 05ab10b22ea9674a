"""The CIFAR-10 binary files on disk: their layout and a check of them, without TensorFlow.

`bench.config.validation.validate` checks a `--cifar_dir` with `find_files` before any work;
`bench.training.data` reads the files it found with tf.data (nothing is ever unpickled).
"""

from __future__ import annotations

import glob
import os

RECORD_BYTES = 1 + 32 * 32 * 3  # label byte, then the R, G and B planes of 32x32
SUBFOLDER = "cifar-10-batches-bin"


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
