"""The caches are an optimisation, never a failure: the peak FLOP/s and --autotune caches, unreadable, unwritable,
malformed or of another version, are one warning line and a run that measures without them; nothing is cached
that nothing measured."""

import functools
import json
import os

import filelock
import pytest
from helpers import python, seed_peak_cache

from bench.config import caches
from bench.hardware import peak
from bench.results import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n=1", "--batch_size=16", "--data=synthetic", "--steps=12", "--warmup_steps=2"]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    """Each test sees the once-per-process warnings afresh."""
    monkeypatch.setattr(caches, "_warned", set())


def warnings_in(text):
    return [line for line in text.splitlines() if line.startswith("warning:")]


def fresh(gflops=100.0):
    return {"gflops": gflops, "measured_at": table.utc_now(), "load": 0.0}


def no_measuring(*args):
    raise AssertionError("measured although the cache held a fresh reading")


# ---------------------------------------------------------------------------
# The peak FLOP/s cache


def read_only_cache(folder, content):
    """A cache folder this process cannot take the lock of, holding `content` in peak.json. (Tests run as root,
    for whom a chmod 555 folder is writable: the lock's path is a folder here, which root cannot open either.)"""
    os.makedirs(folder / "peak.json.lock")
    (folder / "peak.json").write_text(json.dumps(content))
    return folder


def test_a_cache_folder_that_cannot_be_written_is_read_as_it_is(tmp_path, monkeypatch, capsys):
    key = peak.cache_key("CPU:ro-test", "float32")
    folder = read_only_cache(tmp_path / "ro", {key: fresh(123.0)})
    before = (folder / "peak.json").read_bytes()
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(folder))
    monkeypatch.setattr(peak, "measure", no_measuring)
    got = peak.peak_reading("/cpu:0", "CPU:ro-test", "float32")
    assert got.gflops == 123.0 and got.readings == 1
    again = peak.peak_reading("/cpu:0", "CPU:ro-test", "float32")  # a run reads it twice (after training too)
    assert again == got
    [line] = warnings_in(capsys.readouterr().err)
    assert "peak FLOP/s cache" in line and "cannot be written" in line and "nothing is cached" in line
    assert (folder / "peak.json").read_bytes() == before and sorted(os.listdir(folder)) == [
        "peak.json",
        "peak.json.lock",
    ]


def test_a_cache_that_cannot_be_written_measures_without_caching(tmp_path, monkeypatch, capsys):
    key = peak.cache_key("CPU:ro-test", "float32")
    old = {"gflops": 90.0, "measured_at": "2020-01-01T00:00:00Z", "load": 0.0}  # stale: read again
    folder = read_only_cache(tmp_path / "ro", {key: old})
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(folder))
    monkeypatch.setattr(peak, "measure", lambda device, dtype: 150.0)
    assert peak.peak_reading("/cpu:0", "CPU:ro-test", "float32").gflops == 150.0
    assert json.loads((folder / "peak.json").read_text()) == {key: old}  # nothing cached
    # a file where the folder should be: nothing to read, measured, one line
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(afile))
    assert peak.peak_reading("/cpu:0", "CPU:ro-test", "float32").gflops == 150.0
    assert afile.read_text() == "not a folder"
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 2 and all("cannot be written" in line for line in lines), lines


def test_a_lock_refused_with_permission_denied_reads_and_measures(tmp_path, monkeypatch, capsys):
    """What a user who is not root gets from a chmod 555 cache folder: PermissionError from the lock."""
    key = peak.cache_key("CPU:ro-test", "float32")
    (tmp_path / "peak.json").write_text(json.dumps({key: fresh(77.0)}))
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", self.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", refused)
    monkeypatch.setattr(peak, "measure", no_measuring)
    assert peak.peak_reading("/cpu:0", "CPU:ro-test", "float32").gflops == 77.0
    monkeypatch.setattr(peak, "measure", lambda device, dtype: 150.0)
    assert peak.peak_reading("/cpu:0", "CPU:ro-test", "float32", tf32=True).gflops == 150.0  # not cached: measured
    assert list(json.loads((tmp_path / "peak.json").read_text())) == [key]
    [line] = warnings_in(capsys.readouterr().err)
    assert "Permission denied" in line


def test_a_cache_file_that_cannot_be_replaced_keeps_the_reading_with_a_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(peak, "measure", lambda device, dtype: 150.0)

    def refused(src, dst):
        raise PermissionError(1, "Operation not permitted", dst)

    monkeypatch.setattr(caches.os, "replace", refused)
    assert peak.peak_reading("/cpu:0", "CPU:immutable", "float32").gflops == 150.0
    [line] = warnings_in(capsys.readouterr().err)
    assert "Operation not permitted" in line and "not cached" in line
    assert sorted(os.listdir(tmp_path)) == ["peak.json.lock"]  # no temporary file left


@pytest.mark.parametrize(
    "entry",
    [
        {"gflops": "fast", "measured_at": "2026-11-30T12:00:00Z"},
        {"gflops": 100.0, "measured_at": "yesterday"},
        {"gflops": 100.0},
        {"gflops": -1.0, "measured_at": "2026-11-30T12:00:00Z"},
        {"gflops": 100.0, "measured_at": "2026-11-30T12:00:00Z", "readings": "two"},
        ["not", "an", "entry"],
        125.0,  # the version that kept no date
    ],
    ids=["gflops-text", "date-text", "no-date", "negative", "readings-text", "a-list", "older-version"],
)
def test_a_malformed_peak_entry_is_measured_again_with_a_line(tmp_path, monkeypatch, capsys, entry):
    key = peak.cache_key("CPU:bad-entry", "float32")
    other = peak.cache_key("CPU:other", "float32")
    (tmp_path / "peak.json").write_text(json.dumps({key: entry, other: fresh()}))
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(peak, "measure", lambda device, dtype: 150.0)
    got = peak.peak_reading("/cpu:0", "CPU:bad-entry", "float32")
    assert got.gflops == 150.0 and got.readings == 1
    cache = json.loads((tmp_path / "peak.json").read_text())
    assert cache[key]["gflops"] == 150.0 and cache[other] == json.loads(json.dumps(fresh()))
    [line] = warnings_in(capsys.readouterr().err)
    assert "malformed" in line and key in line


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["not-json", "a-list", "not-utf8"])
def test_an_unreadable_peak_cache_is_one_line_and_measured_again(tmp_path, monkeypatch, capsys, content):
    (tmp_path / "peak.json").write_bytes(content)
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(peak, "measure", lambda device, dtype: 150.0)
    assert peak.peak_reading("/cpu:0", "CPU:unreadable", "float32").gflops == 150.0
    [line] = warnings_in(capsys.readouterr().err)
    assert "peak FLOP/s cache" in line and str(tmp_path / "peak.json") in line
    assert json.loads((tmp_path / "peak.json").read_text())[peak.cache_key("CPU:unreadable", "float32")]


def test_the_sweep_plan_reads_a_malformed_peak_cache_as_none(tmp_path, monkeypatch):
    from sweeps import plan

    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    (tmp_path / "peak.json").write_text(json.dumps({"CPU:x|tf|float32|m": {"gflops": "fast"}, "CPU:y|float32": None}))
    assert plan.cached_peak_gflops("float32") is None
    (tmp_path / "peak.json").write_text(json.dumps({"CPU:x|tf|float32|m": {"gflops": 80.0}, "CPU:y|float32": "x"}))
    assert plan.cached_peak_gflops("float32") == 80.0


cli = functools.partial(python, "-m", "bench.run", timeout=300)


@pytest.mark.e2e
def test_bench_run_with_a_read_only_cache_is_one_warning_and_an_ok_row(tmp_path):
    cache = tmp_path / "cache"
    seed_peak_cache(str(cache))
    os.makedirs(cache / "peak.json.lock")  # root can write a chmod 555 folder; nobody can open a folder as a file
    before = (cache / "peak.json").read_bytes()
    results = tmp_path / "s.csv"
    proc = cli(*TINY, f"--results={results}", env={"RESNET_BENCH_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = warnings_in(proc.stderr)
    assert "cannot be written" in line and not [x for x in proc.stderr.splitlines() if x.startswith("error")]
    [row] = table.read_rows(str(results))
    assert row["status"] == "ok" and float(row["peak_gflops"]) == 100.0  # what the cache held
    assert (cache / "peak.json").read_bytes() == before


def test_caches_folder_follows_the_variable(monkeypatch):
    monkeypatch.setenv("RESNET_BENCH_CACHE", "/some/where")
    assert peak.cache_path() == "/some/where/peak.json"
    monkeypatch.delenv("RESNET_BENCH_CACHE")
    assert peak.cache_path() == os.path.join(os.path.expanduser("~"), ".cache", "resnet-bench", "peak.json")


def test_a_read_only_cache_folder_is_one_line_for_the_peak_and_the_autotune_caches(tmp_path, monkeypatch, capsys):
    from bench.runner import autotune

    folder = read_only_cache(tmp_path / "ro", {peak.cache_key("CPU:ro-test", "float32"): fresh(123.0)})
    os.makedirs(folder / "autotune.json.lock")
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(folder))
    monkeypatch.setattr(peak, "measure", no_measuring)
    assert peak.peak_reading("/cpu:0", "CPU:ro-test", "float32").gflops == 123.0
    assert autotune.write_cache("a key", {"settings": {}}) is False
    [line] = warnings_in(capsys.readouterr().err)
    assert f"the cache folder {folder} cannot be written" in line
    assert not (folder / "autotune.json").exists()


def test_the_peak_cache_commands_help_is_its_usage_and_exit_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_BENCH_CACHE", str(tmp_path))
    (tmp_path / "peak.json").write_text("{}")
    assert peak.main(["peak", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m bench.hardware.peak [--show]")
    assert (tmp_path / "peak.json").exists()  # --help clears nothing
