"""Test session setup: two logical CPU devices, so every multi-replica path runs for real.

The CPU split must happen before TensorFlow runs any op, so it is done here,
when pytest imports this file, before any test module builds a tensor.
"""

import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench import devices  # noqa: E402

tf = devices.import_tensorflow()
devices.split_cpu(tf, 2)


@pytest.fixture(scope="session", autouse=True)
def _peak_cache(tmp_path_factory):
    """Tests share one peak-FLOP/s cache of their own, never the user's."""
    os.environ["RESNET_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture
def strategies():
    """One-device and two-replica mirrored strategies over the logical CPUs."""
    return {
        1: tf.distribute.OneDeviceStrategy("/cpu:0"),
        2: devices.mirrored_strategy(["/cpu:0", "/cpu:1"]),
    }


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU")
    # A plain `pytest` runs every benchmark once as a smoke test (pytest-benchmark's disabled
    # mode); `pytest --benchmark-only` measures and saves JSON under results/benchmarks/.
    if hasattr(config.option, "benchmark_disable"):
        if config.option.benchmark_only and not config.option.benchmark_autosave:
            from pytest_benchmark.utils import get_tag

            config.option.benchmark_autosave = get_tag()  # what --benchmark-autosave stores: commit_date
        else:
            config.option.benchmark_disable = True
            # smoke runs save nothing, and tests never write into results/
            config.option.benchmark_storage = "file://" + tempfile.mkdtemp(prefix="bench-smoke-")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Provenance of saved benchmark runs: the TensorFlow build and whether oneDNN kernels ran."""
    import keras

    machine_info["tensorflow"] = tf.__version__
    machine_info["keras"] = keras.__version__
    machine_info["onednn"] = devices.onednn_enabled()
    machine_info["cpu_model"] = devices.cpu_model_name()
