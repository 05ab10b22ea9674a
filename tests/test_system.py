"""The system description beside the results table (issue #26, item 5): MLPerf's fields, one file per machine
and software stack, named by each row, written and checked by `python -m bench.check`."""

import functools
import json
import os

import pytest
from fake_nvml import FakeNvml, gpu
from helpers import python

from bench.hardware import nvml, system
from bench.results import systems, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_this_machine_is_described_in_mlperfs_fields():
    desc = system.describe()
    assert set(systems.MLPERF_FIELDS) <= set(desc)
    assert systems.missing_fields(desc) == ([], [])  # every field the issue asks for is filled
    assert desc["host_processor_vcpu_count"] == os.cpu_count() and desc["number_of_nodes"] == 1
    assert desc["framework"].startswith("TensorFlow 2.") and "Keras 3." in desc["framework"]
    assert desc["accelerators_per_node"] == 0 and desc["accelerator_model_name"] == "N/A"  # no NVIDIA GPU here
    assert "GPU: no NVIDIA GPU" in desc["hw_notes"] and "cooling" in desc["hw_notes"]  # what was not read
    assert desc["system_name"] == systems.name_of(desc) == system.describe()["system_name"]  # stable
    assert systems.name_of({**desc, "host_memory_capacity": "1.0 GiB"}) != desc["system_name"]


def test_gpus_are_described_from_nvml():
    fake = FakeNvml([gpu("GPU-a"), gpu("GPU-b")])
    desc = system.describe(open_gpus=lambda count, visible: nvml.Gpus.open(count, nvml=fake, visible=visible))
    assert desc["accelerators_per_node"] == 2 and desc["accelerator_model_name"] == "NVIDIA A100-SXM4-80GB"
    assert (
        desc["accelerator_memory_capacity"] == "80.0 GiB" and "NVIDIA driver 580.65.06" in desc["other_software_stack"]
    )


def test_a_description_is_written_once_and_checked(tmp_path):
    results = str(tmp_path / "summary.csv")
    desc = system.describe()
    name = systems.write(results, desc)
    path = systems.path_of(results, name)
    assert name == desc["system_name"] and json.load(open(path)) == desc
    stamp = os.stat(path).st_mtime_ns
    assert systems.write(results, desc) == name and os.stat(path).st_mtime_ns == stamp  # once
    good = systems.check(results, desc, row_systems=[name, ""])
    assert all(ok for ok, _ in good), good
    # a row naming a machine whose file is missing, and a file edited by hand, fail the check
    bad = systems.check(results, desc, row_systems=[f"{name}; other-12345678"])
    assert [ok for ok, _ in bad] == [True, True, False] and "other-12345678" in bad[-1][1]
    edited = {**json.load(open(path)), "host_memory_capacity": "1 TiB"}
    with open(path, "w") as fh:
        json.dump(edited, fh)
    failed = systems.check(results, desc)
    assert not failed[1][0] and "edited" in failed[1][1]


def test_an_unwritable_folder_never_costs_the_row(tmp_path, capsys):
    blocker = tmp_path / "systems"
    blocker.write_text("a file where the folder should be")
    assert systems.save(str(tmp_path / "summary.csv"), system.describe()) is None
    assert "could not be written" in capsys.readouterr().err


check_command = functools.partial(python, "-m", "bench.check")


@pytest.mark.e2e
def test_bench_check_writes_and_checks_the_description(tmp_path):
    results = tmp_path / "out" / "summary.csv"
    out = check_command("--only=system_description", f"--results={results}", cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    written = os.listdir(tmp_path / "out" / "systems")
    assert len(written) == 1 and written[0].startswith(f"{os.uname().nodename}-")
    assert "system_description" in out.stdout and "PASS" in out.stdout and "unedited" in out.stdout
    # a table whose row names a machine without its file: the check fails and says which
    row = {"run_id": "r1", "status": "ok", "system": "elsewhere-00000000"}
    table.append_row(str(results), row)
    failed = check_command("--only=system_description", f"--results={results}", cwd=str(tmp_path))
    assert failed.returncode == 1 and "elsewhere-00000000" in failed.stdout and "FAIL" in failed.stdout


@pytest.mark.e2e
def test_bench_check_refuses_a_bad_results_path(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    for bad, message in ((folder, "is a folder"), (foreign, "not a results table")):
        out = check_command("--only=system_description", f"--results={bad}", cwd=str(tmp_path), timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert sorted(os.listdir(tmp_path)) == ["folder", "foreign.csv"] and os.listdir(folder) == []
