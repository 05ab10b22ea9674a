"""Test session setup: two logical CPU devices, so every multi-replica path runs for real.

The CPU split must happen before TensorFlow runs any op, so it is done here,
when pytest imports this file, before any test module builds a tensor.
"""

import os
import sys
import tempfile
from collections.abc import Mapping

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.hardware import devices  # noqa: E402 - after sys.path and the environment above

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


@pytest.fixture(scope="session")
def check_env():
    """The self-check's setting (`bench.selfcheck.env.setup` over the two logical CPUs), which its builders
    (`make_step_functions`, `batches`) take; Keras's BatchNormalization where a test names no BN kernel."""
    import dataclasses

    from bench.selfcheck import env

    return dataclasses.replace(env.setup(2, "float32"), batch_norm="keras")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU")
    # A plain `pytest` runs every benchmark once as a smoke test (pytest-benchmark's disabled
    # mode); `pytest --benchmark-only` measures and saves JSON under results/benchmarks/.
    if hasattr(config.option, "benchmark_disable"):
        if config.option.benchmark_only:
            if not (config.option.benchmark_autosave or config.option.benchmark_save):
                from pytest_benchmark.utils import get_tag

                config.option.benchmark_autosave = get_tag()  # what --benchmark-autosave stores: commit_date
        else:
            config.option.benchmark_disable = True
            # smoke runs save nothing, and tests never write into results/
            config.option.benchmark_storage = "file://" + tempfile.mkdtemp(prefix="bench-smoke-")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A slow test is an end-to-end one (`-m e2e`): the default suite (pyproject's `-m "not e2e and not fuzz"`)
    stays within minutes. The long fuzz runs only when asked for (`-m fuzz`); the default suite runs a few
    hundred examples. Outside `--benchmark-only`, a benchmark's first case is the in-process suite's smoke test
    of it and its other cases run end to end (all of them are measured with `--benchmark-only`)."""
    measuring = getattr(config.option, "benchmark_only", False)
    smoked = set()
    for item in items:
        if "slow" in item.keywords and "e2e" not in item.keywords:
            item.add_marker(pytest.mark.e2e)
        if not measuring and "benchmarks" in item.path.parts and hasattr(item, "callspec"):
            if item.originalname in smoked:
                item.add_marker(pytest.mark.e2e)
            smoked.add(item.originalname)
    if "fuzz" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="a long fuzz run: select it with -m fuzz")
    for item in items:
        if "fuzz" in item.keywords:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Provenance of saved benchmark runs: the TensorFlow build and whether oneDNN kernels ran."""
    import keras

    machine_info["tensorflow"] = tf.__version__
    machine_info["keras"] = keras.__version__
    machine_info["onednn"] = devices.onednn_enabled()
    machine_info["cpu_model"] = devices.cpu_model_name()


# ---- images/sec in the JSON and on the console -------------------------------------------------
# pytest-benchmark's table shows seconds per call and cannot take extra_info columns
# (`--benchmark-columns` accepts only its own statistics), so the benchmarks record
# `extra_info["images_per_call"]` and the rates are derived here, once, from each benchmark's
# round-time statistics: into the saved JSON (pytest_benchmark_update_json) and into a table
# printed after pytest-benchmark's own (pytest_terminal_summary).

_BENCHMARK_ROWS = pytest.StashKey[list]()


def throughput(images_per_call: float, stats: Mapping) -> dict:
    """images/sec of one benchmark from its round-time statistics (seconds per call).

    `images_per_sec` comes from the mean round time, so it equals all images over all measured
    seconds. Its spread: `images_per_sec_sd` is the rounds' standard deviation carried to the rate
    to first order (images_per_call * stddev / mean**2); `images_per_sec_slowest` / `_fastest` are
    the rates of the slowest and the fastest round.
    """
    mean = stats["mean"]
    return {
        "images_per_sec": images_per_call / mean,
        "images_per_sec_sd": images_per_call * stats["stddev"] / mean**2,
        "images_per_sec_slowest": images_per_call / stats["max"],
        "images_per_sec_fastest": images_per_call / stats["min"],
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Saved runs carry the rates beside the raw times, so results/benchmarks/*.json read in images/sec."""
    for bench in output_json["benchmarks"]:
        images = bench["extra_info"].get("images_per_call")
        if images:
            bench["extra_info"].update(throughput(images, bench["stats"]))


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """Keep the finished benchmarks (this run's, and saved ones under --benchmark-compare) for the table.

    This hook is pytest-benchmark's public view of the results once the session ends; it is only
    observed here, the grouping itself is left to pytest-benchmark.
    """
    # copies: pytest-benchmark's own table rewrites the rows' names in place when it prints
    config.stash[_BENCHMARK_ROWS] = [dict(bench) for bench in benchmarks]
    return (yield)


def throughput_table(rows) -> list[str]:
    """Lines of "benchmark | images/sec | ± sd | slowest–fastest round | rounds" for rows that count images.

    Rows are pytest-benchmark's flat benchmark dicts. Under --benchmark-compare a saved run's row is
    labelled with its number, this run's with NOW (as pytest-benchmark's short names do); a saved
    row's rate uses its own times and this run's images per call (the same test, the same work).
    """
    table = []
    for row in rows:
        images = row["extra_info"].get("images_per_call")
        if not images:
            continue
        rate = throughput(images, row)
        name = row["name"] + (f" ({row['source'][:4]})" if row.get("source") else "")
        spread = f"{rate['images_per_sec_slowest']:.0f}-{rate['images_per_sec_fastest']:.0f}"
        cores = row["extra_info"].get("host_cores")  # host-side work (the input pipeline): per core too
        per_core = f"{rate['images_per_sec'] / cores:.1f}" if cores else ""
        table.append(
            (
                name,
                f"{rate['images_per_sec']:.1f}",
                f"{rate['images_per_sec_sd']:.1f}",
                spread,
                str(row["rounds"]),
                per_core,
            )
        )
    if not table:
        return []
    header = ("benchmark", "images/sec", "± sd", "slowest-fastest", "rounds", "per core")
    width = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]

    def line(cells):
        return "  ".join([cells[0].ljust(width[0])] + [c.rjust(w) for c, w in zip(cells[1:], width[1:])])

    return [line(header)] + [line(r) for r in table]


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter, config):
    """Print images/sec per benchmark: the number the project reports, which the JSON alone hid."""
    lines = throughput_table(config.stash.get(_BENCHMARK_ROWS, []))
    if lines:
        terminalreporter.write_sep("-", "throughput: images/sec from the mean round time (± sd over rounds)")
        for line in lines:
            terminalreporter.write_line(line)
