"""How the benchmark suite is selected and reported: `-k` ids, emulated-precision skips, the images/sec table.

Each check runs pytest on tests/benchmarks/test_benchmarks.py in this process (`pytest.main`: the
modules and TensorFlow are already imported, so a collection takes about a second) and looks
at what a user would see. They are not benchmarks, so `--benchmark-only` skips them.
"""

import itertools
import json
import os
import re

import pytest
from test_benchmarks import PRECISION_IDS, emulated_skip_reason

from bench.hardware import cpu_features

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = "tests/benchmarks/test_benchmarks.py"
NO_BF16_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"  # an AVX-512 CPU without bf16


class Selected:
    """A pytest plugin that keeps the selected items' real parameter values, so `-k` is checked against
    what each benchmark measures rather than against its id text."""

    def __init__(self):
        self.items = {}

    def pytest_collection_finish(self, session):
        self.items = {
            item.nodeid: dict(getattr(getattr(item, "callspec", None), "params", {})) for item in session.items
        }


_inner_runs = itertools.count()


def run_pytest(tmp_path, *args, plugins=()):
    """`pytest args` on the benchmark module, from the worktree's root and configuration; the exit code.

    The inner session gets its own temporary directory (so its numbered-directory cleanup never
    touches this session's) and the environment is restored afterwards (conftest's session fixture
    points RESNET_BENCH_CACHE at the inner session's directory).
    """
    environ = dict(os.environ)
    basetemp = tmp_path / f"inner-session-{next(_inner_runs)}"
    try:
        return pytest.main(
            [
                "-p",
                "no:cacheprovider",
                "--rootdir",
                ROOT,
                "-c",
                os.path.join(ROOT, "pyproject.toml"),
                f"--basetemp={basetemp}",
                os.path.join(ROOT, BENCHMARKS),
                *args,
            ],
            plugins=list(plugins),
        )
    finally:
        os.environ.clear()
        os.environ.update(environ)


def test_k_filters_select_what_the_ids_say(tmp_path):
    """`-k "not xla"`, `-k xla`, `-k bf16`, `-k "resnet20 and fp32"`, `-k 2rep` against the parameters."""
    selected = {}
    for expr in [None, "not xla", "xla", "bf16", "resnet20 and fp32", "2rep"]:
        plugin = Selected()
        # as measured (--benchmark-only): every case (a plain run smoke-tests each benchmark's first case only)
        args = ("--collect-only", "--benchmark-only", "-q", *(["-k", expr] if expr else []))
        assert run_pytest(tmp_path, *args, plugins=[plugin]) == 0
        selected[expr] = plugin.items
    everything = selected[None]

    def where(predicate):
        return {nodeid for nodeid, params in everything.items() if predicate(params)}

    xla = where(lambda p: p.get("xla") is True)
    assert xla and where(lambda p: p.get("xla") is False)  # both settings are benchmarked
    not_xla = set(selected["not xla"])
    assert not_xla and not (not_xla & xla), "`-k 'not xla'` must select something and no XLA benchmark"
    assert not_xla == set(everything) - xla  # ... and every other one (the old "noxla" ids dropped them)
    assert set(selected["xla"]) == xla
    assert set(selected["bf16"]) == where(lambda p: p.get("precision") == "mixed_bfloat16") != set()
    fp32_20 = where(lambda p: p.get("model") == "resnet20" and p.get("precision") == "float32")
    assert set(selected["resnet20 and fp32"]) == fp32_20 and len(fp32_20) == 4  # XLA off/on x 1/2 replicas
    assert set(selected["2rep"]) == where(lambda p: p.get("replicas") == 2) != set()


def test_emulated_skip_reason_from_fake_and_real_cpuinfo():
    """Measured runs skip an emulated precision with a reason; smoke runs and BENCH_EMULATED=1 do not."""
    reason = emulated_skip_reason("mixed_bfloat16", True, environ={}, cpuinfo_text=NO_BF16_CPUINFO)
    assert reason == (
        "mixed_bfloat16 is emulated on this CPU (no avx512_bf16/amx_bf16 in the given cpuinfo); "
        "set BENCH_EMULATED=1 to run it anyway"
    )
    assert (
        emulated_skip_reason("mixed_bfloat16", True, environ={"BENCH_EMULATED": "1"}, cpuinfo_text=NO_BF16_CPUINFO)
        is None
    )
    assert emulated_skip_reason("mixed_bfloat16", False, environ={}, cpuinfo_text=NO_BF16_CPUINFO) is None
    assert emulated_skip_reason("float32", True, environ={}, cpuinfo_text=NO_BF16_CPUINFO) is None
    with_bf16 = NO_BF16_CPUINFO.replace("avx512f", "avx512f avx512_bf16")
    assert emulated_skip_reason("mixed_bfloat16", True, environ={}, cpuinfo_text=with_bf16) is None
    # This machine, through the real /proc/cpuinfo: every precision the benchmarks use gets a verdict
    # that agrees with the flags.
    native = cpu_features.emulated_precision("mixed_bfloat16") is None
    for precision in PRECISION_IDS:
        skipped = emulated_skip_reason(precision, True, environ={}) is not None
        assert skipped == (precision == "mixed_bfloat16" and not native)


@pytest.mark.filterwarnings("ignore:Not saving anything")  # all skipped: nothing measured, nothing saved
def test_emulated_bf16_is_skipped_with_its_reason_in_the_summary(tmp_path, monkeypatch, capsys):
    """`--benchmark-only` on a CPU without bf16 instructions: each bf16 benchmark skips, reason in `-ra`."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(NO_BF16_CPUINFO)
    monkeypatch.setattr(cpu_features, "CPUINFO", str(fake))
    monkeypatch.delenv("BENCH_EMULATED", raising=False)
    capsys.readouterr()
    code = run_pytest(
        tmp_path, "--benchmark-only", "-k", "train_step and bf16", f"--benchmark-storage=file://{tmp_path / 'store'}"
    )
    out = capsys.readouterr().out
    assert code == 0, out
    bf16_benchmarks = 5  # ResNet-20: XLA off/on x 1/2 replicas; ResNet-56: plain, 1 replica
    assert re.search(
        rf"^SKIPPED \[{bf16_benchmarks}\] {BENCHMARKS}:\d+: mixed_bfloat16 is emulated on this CPU "
        rf"\(no avx512_bf16/amx_bf16 in {re.escape(str(fake))}\); set BENCH_EMULATED=1 to run it anyway$",
        out,
        re.MULTILINE,
    ), out
    assert re.search(rf"\b{bf16_benchmarks} skipped\b", out) and " passed" not in out, out


def test_measured_run_prints_and_saves_images_per_sec(tmp_path, capsys):
    """The console table and the saved JSON give images/sec, consistent with the round times."""
    capsys.readouterr()
    store = tmp_path / "store"
    cache = os.environ["RESNET_BENCH_CACHE"]
    code = run_pytest(tmp_path, "--benchmark-only", "-k", "test_input_pipeline", f"--benchmark-storage=file://{store}")
    out = capsys.readouterr().out
    assert code == 0, out
    assert os.environ["RESNET_BENCH_CACHE"] == cache  # the inner session left this one's environment alone
    saved = list(store.rglob("*.json"))
    assert len(saved) == 1, out
    (bench,) = json.loads(saved[0].read_text())["benchmarks"]
    info, stats = bench["extra_info"], bench["stats"]
    assert info["images_per_call"] == 40 * 128
    assert info["images_per_sec"] == pytest.approx(info["images_per_call"] / stats["mean"])
    assert info["images_per_sec_slowest"] <= info["images_per_sec"] <= info["images_per_sec_fastest"]
    assert info["images_per_sec_sd"] == pytest.approx(info["images_per_call"] * stats["stddev"] / stats["mean"] ** 2)
    # the console: a section after pytest-benchmark's table, one row with the same rate and round count
    assert out.index("benchmark: 1 tests") < out.index("throughput: images/sec")
    header, row = out[out.index("throughput: images/sec") :].splitlines()[1:3]
    assert header.split()[:2] == ["benchmark", "images/sec"]
    name, rate, sd, spread, rounds, per_core = row.split()
    assert name == "test_input_pipeline" and int(rounds) == stats["rounds"] == 5
    assert float(per_core) == pytest.approx(info["images_per_sec"] / os.cpu_count(), abs=0.06)  # host work
    assert float(rate) == pytest.approx(info["images_per_sec"], abs=0.06)
    assert float(sd) == pytest.approx(info["images_per_sec_sd"], abs=0.06)
    assert spread == f"{info['images_per_sec_slowest']:.0f}-{info['images_per_sec_fastest']:.0f}"
