"""The conformance table: every command against every way a user, a shell or a machine can stop it or feed
it something it must refuse, with the outcome the README promises.

| condition                 | promise (every command)                                                          |
|---------------------------|----------------------------------------------------------------------------------|
| a foreign table           | one `error:` line, exit 2, the file untouched, nothing else written               |
| a binary table            | the same                                                                          |
| an unwritable output      | the same                                                                          |
| a read-only cache         | a warning, the run measured without caching: an `ok` row, exit 0                  |
| SIGINT / SIGTERM          | exit 130 / 143; every run that started ends in its `interrupted` row              |
| a second SIGINT           | exit 130 at once, also in the middle of a long window (a run: writing nothing)    |
| a closed stdout           | the rows are written and the exit status is what it would have been              |
| a bad value of a run flag | one `error:` line, exit 2, nothing written (every command that takes run flags)   |

Adding a command to the project means adding it to COMMANDS (and to the cells that apply to it). A new way
for a run to start is a row of its own (`RUNS`: a LoadGen scenario, plain multi-worker processes), and a
new output of a command is one of its cells (`bench.check`'s system description beside the table).
End-to-end: each cell is a real process (`-m e2e`). Two cells live beside the tests of their command, which
check more of them: SIGINT / SIGTERM to a comparison (tests/test_compare.py, a terminal's Ctrl-C to the whole
process group, the arm's `interrupted` row, no process left) and to a sweep (tests/test_sweeps.py, a first
and a resumed sweep stopped, the trials without a row named with the command that runs them).
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import arm_training, seed_peak_cache

from bench.results import table

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=12", "--warmup_steps=2"]
LONG = ["--data=synthetic", "--n=1", "--batch_size=16", "--steps=4000", "--warmup_steps=2"]
SCENARIO = ["--mode=inference", "--scenario=SingleStream", "--data=synthetic", "--n=1", "--warmup_steps=3"]
PLAIN = ["--strategy=multi_worker", "--workers=2", "--launcher=tf_config"]
# Every way `bench.run` starts a run: (tiny and valid, long enough to be signalled, the line that says it is
# under way, how far an interrupted row got). A LoadGen run issues queries, not steps: its row has no step count.
RUNS = {
    "bench.run": (TINY, [*LONG, "--steps_per_loop=2"], "step ", lambda row: 0 < int(row["total_steps"]) < 4000),
    "bench.run --scenario": (
        [*SCENARIO, "--min_duration_s=0.5", "--min_query_count=100"],
        [*SCENARIO, "--min_duration_s=300"],
        "LoadGen SingleStream performance",
        lambda row: row["scenario"] == "SingleStream" and row["loadgen_result"] == "",
    ),
    "bench.run --launcher tf_config": (
        [*PLAIN, *TINY],
        [*PLAIN, *LONG, "--steps_per_loop=2"],
        "step ",
        lambda row: row["launcher"] == "tf_config" and 0 < int(row["total_steps"]) < 4000,
    ),
}
UNWRITABLE = "/proc/conformance/out"  # nothing can be created under /proc, not even by root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("cache"))
    seed_peak_cache(folder)
    return folder


def env_for(cache):
    return {**os.environ, "PYTHONPATH": ROOT, "RESNET_BENCH_CACHE": cache, "RAY_AUTH_MODE": "disabled"}


def start(module, *args, cache, stdout=subprocess.PIPE):
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env_for(cache),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc, timeout=600):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, out or "", err or ""


def run(module, *args, cache, timeout=600):
    return finish(start(module, *args, cache=cache), timeout)


# ---- the commands -------------------------------------------------------------------------------------------------
# Each: how to point it at a table (or an output folder) it must take, with everything else tiny and valid.


def table_commands(results, other):
    """command -> argv that makes it read or write the table `results` (`other`: a second, valid table)."""
    return {
        **{name: ("bench.run", *tiny, f"--results={results}") for name, (tiny, *_) in RUNS.items()},
        "sweeps.tune": ("sweeps.tune", *TINY, "--n=1", "--shortcut=B", "--block=preact", f"--results={results}"),
        "sweeps.compare (arms)": (
            "sweeps.compare",
            "--a=--batch_norm=keras",
            "--b=--batch_norm=fused",
            "--pairs=2",
            *TINY,
            f"--results={results}",
        ),
        "sweeps.compare (tables)": ("sweeps.compare", f"--base={results}", f"--new={other}"),
        "sweeps.report": ("sweeps.report", f"--results={results}"),
        "bench.results upgrade": ("bench.results", "upgrade", results),
        "bench.check": ("bench.check", "--only=system_description", f"--results={results}"),  # writes beside it
    }


def output_commands(folder, results):
    """command -> argv that makes it write into `folder` (which cannot be created)."""
    return {
        **{name: ("bench.run", *tiny, f"--results={folder}/s.csv") for name, (tiny, *_) in RUNS.items()},
        "bench.check": ("bench.check", "--only=system_description", f"--results={folder}/s.csv"),
        "sweeps.tune": ("sweeps.tune", *TINY, "--shortcut=B", "--block=preact", f"--results={folder}/s.csv"),
        "sweeps.compare (arms)": (
            "sweeps.compare",
            "--a=--batch_norm=keras",
            "--b=--batch_norm=fused",
            *TINY,
            f"--results={folder}/s.csv",
        ),
        "sweeps.compare (tables)": ("sweeps.compare", f"--base={results}", f"--new={results}", f"--out_dir={folder}"),
        "sweeps.report": ("sweeps.report", f"--results={results}", f"--out_dir={folder}"),
    }


# every command of the project: the cells below cover each (a new command is added here and to its cells)
COMMANDS = sorted(
    set(table_commands("x", "y"))
    | {
        "bench.check",
        "bench.distributed.localcluster",
        "bench.hardware.peak",
        "bench.distributed.plain_worker",
        "bench.results ruleset",
    }
)


def a_valid_table(path):
    """A results table of this version with one ok row (what the table commands read)."""
    row = {c: "" for c in table.SCHEMA}
    row.update(
        run_id="r1",
        status="ok",
        strategy="default",
        n="1",
        depth="8",
        block="preact",
        shortcut="B",
        precision="float32",
        xla="false",
        global_batch_size="16",
        num_replicas="1",
        device="CPU: test",
        data="synthetic",
        images_per_sec="100.0",
        mode="train",
        loop="ctl",
    )
    table.save_row(str(path), row)
    return str(path)


def folder_listing(folder):
    return sorted(os.listdir(folder))


def refused(code, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err


FOREIGN = b"name,score\nalice,3\n"
BINARY = bytes(range(256)) * 4


@pytest.mark.parametrize("content", [FOREIGN, BINARY], ids=["foreign", "binary"])
@pytest.mark.parametrize("command", sorted(table_commands("x", "y")))
def test_a_foreign_or_binary_table_is_refused_untouched(command, content, tmp_path, cache):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    other = a_valid_table(tmp_path / "other.csv")
    before = folder_listing(tmp_path)
    code, out, err = run(*table_commands(str(path), other)[command], cache=cache)
    assert refused(code, err), (code, err[-2000:])
    assert path.read_bytes() == content
    assert folder_listing(tmp_path) == before


@pytest.mark.parametrize("command", sorted(output_commands("x", "y")))
def test_an_unwritable_output_is_refused(command, tmp_path, cache):
    results = a_valid_table(tmp_path / "t.csv")
    before = folder_listing(tmp_path)
    code, out, err = run(*output_commands(UNWRITABLE, results)[command], cache=cache)
    assert refused(code, err), (code, err[-2000:])
    assert folder_listing(tmp_path) == before


@pytest.mark.parametrize("way", sorted(RUNS))
def test_a_read_only_cache_is_a_warning_and_an_ok_row(way, tmp_path):
    results = tmp_path / "s.csv"
    code, out, err = run("bench.run", *RUNS[way][0], f"--results={results}", cache=UNWRITABLE)
    assert code == 0, err[-2000:]
    [row] = table.read_rows(str(results))
    assert row["status"] == "ok" and float(row["images_per_sec"]) > 0
    assert "cache" in err.lower() and "Traceback" not in err


# ---- signals ----------------------------------------------------------------------------------------------------------


def wait_for(proc, text, timeout=240):
    """Read the child's stdout until a line holds `text` (the run is past its setup)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never printed {text!r}:\n{''.join(seen)[-3000:]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("way", sorted(RUNS))
def test_a_signal_to_a_run_ends_in_its_interrupted_row(way, sig, tmp_path, cache):
    _, long, under_way, got_somewhere = RUNS[way]
    results = tmp_path / "s.csv"
    proc = start("bench.run", *long, f"--results={results}", cache=cache)
    wait_for(proc, under_way)
    if way == "bench.run --scenario":
        time.sleep(3)  # LoadGen is issuing queries
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == 128 + sig and "Traceback" not in err, err[-2000:]
    [row] = table.read_rows(str(results))
    assert row["status"] == "interrupted" and got_somewhere(row), row


def test_a_signal_to_the_self_check_is_one_line(tmp_path, cache):
    proc = start("bench.check", cache=cache)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130 and "Traceback" not in err, err[-2000:]


def test_a_second_sigint_exits_at_once_even_inside_a_long_window(tmp_path, cache):
    results = tmp_path / "s.csv"
    # Windows of 20,000 steps: tens of seconds each even for ResNet-8 at batch 16 (a window of 400 steps
    # could end, and the run with it, before the second signal: the process then died of it while exiting).
    proc = start("bench.run", *LONG, "--steps=100000", "--steps_per_loop=20000", f"--results={results}", cache=cache)
    wait_for(proc, "step ")  # the first (compiling) step is done; the warm-up's second takes milliseconds
    time.sleep(3)  # the first window of 20,000 steps is running
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code, _, err = finish(proc)
    assert code == 130 and time.monotonic() - sent < 5, err[-2000:]
    assert "again: exiting now" in err and not results.exists()


def test_a_second_sigint_to_a_comparison_exits_130_at_once(tmp_path, cache):
    """Its running arm is told again (it exits at once, as a run does) and the comparison stops waiting."""
    results = tmp_path / "s.csv"
    proc = start(
        "sweeps.compare", "--a=--batch_norm=keras", "--b=--batch_norm=fused", *LONG, "--steps=100000",
        "--steps_per_loop=20000", f"--results={results}", cache=cache,
    )  # fmt: skip
    arm_training(proc)  # the first arm is inside its first window of 20,000 steps
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    code, _, err = finish(proc)
    assert code == 130 and time.monotonic() - sent < 10, (code, err[-2000:])
    assert "again" in err and "Traceback" not in err


# ---- a closed stdout ----------------------------------------------------------------------------------------------


def closed_stdout(module, *args, cache):
    """Run with a stdout whose reader went away at once (`... | head -c0`)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = start(module, *args, cache=cache, stdout=write)
    finally:
        os.close(write)
    return finish(proc)


@pytest.mark.parametrize("way", sorted(RUNS))
def test_a_closed_stdout_costs_a_run_nothing(way, tmp_path, cache):
    results = tmp_path / "s.csv"
    code, _, err = closed_stdout("bench.run", *RUNS[way][0], f"--results={results}", cache=cache)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    [row] = table.read_rows(str(results))
    assert row["status"] == "ok" and row["error"] == ""


def test_a_closed_stdout_costs_the_system_description_nothing(tmp_path, cache):
    results = tmp_path / "s.csv"
    code, _, err = closed_stdout("bench.check", "--only=system_description", f"--results={results}", cache=cache)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert len(os.listdir(tmp_path / "systems")) == 1


def test_a_closed_stdout_costs_a_comparison_nothing(tmp_path, cache):
    results = tmp_path / "s.csv"
    code, _, err = closed_stdout(
        "sweeps.compare", "--a=--batch_norm=keras", "--b=--batch_norm=fused", "--pairs=2", *TINY,
        f"--results={results}", cache=cache,
    )  # fmt: skip
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert [r["status"] for r in table.read_rows(str(results))] == ["ok"] * 4


def test_a_closed_stdout_still_writes_the_report(tmp_path, cache):
    results = a_valid_table(tmp_path / "t.csv")
    code, _, err = closed_stdout("sweeps.report", f"--results={results}", cache=cache)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert (tmp_path / "summary.md").exists()


BAD_INPUT = {
    "bench.check": ("bench.check", "--only=no_such_check"),
    "bench.distributed.localcluster": ("bench.distributed.localcluster", "up", "--nodes=0"),
    "bench.distributed.plain_worker": ("bench.distributed.plain_worker", "no-such-folder", "0", "1"),  # not by hand
    "bench.hardware.peak": ("bench.hardware.peak", "--no-such-flag"),
    "bench.results upgrade": ("bench.results", "downgrade", "x.csv"),
    "bench.results ruleset": ("bench.results", "ruleset", "extra"),
}


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_to_the_other_commands_is_one_line_exit_2(command, tmp_path, cache):
    code, out, err = run(*BAD_INPUT[command], cache=cache)
    assert refused(code, err), (code, err[-2000:])


# issue #24's flags: a bad value is refused by every command that takes run flags, before anything is written
BAD_RUN_FLAGS = {
    "--lr_scale": ("--lr_scale=0", "--lr_scale must be in (0, 100]"),
    "--submission_org": ("--submission_org=", "--submission_org must not be empty"),
    "--submission_platform": ("--submission_platform=two\nlines", "--submission_platform must be one printable"),
    "--diverge_seeds": ("--diverge_seeds=one", "--diverge_seeds takes SEED[,SEED...]"),
}


def run_flag_commands(results, flag):
    """command -> argv of each command that takes bench.run's flags, given `flag` (common to a comparison's arms)."""
    return {
        "bench.run": ("bench.run", *TINY, flag, f"--results={results}"),
        "sweeps.tune": ("sweeps.tune", *TINY, "--shortcut=B", "--block=preact", flag, f"--results={results}"),
        "sweeps.compare (arms)": (
            "sweeps.compare",
            "--a=--batch_norm=keras",
            "--b=--batch_norm=fused",
            *TINY,
            flag,
            f"--results={results}",
        ),
    }


@pytest.mark.parametrize("flag", sorted(BAD_RUN_FLAGS))
@pytest.mark.parametrize("command", sorted(run_flag_commands("x", "y")))
def test_a_bad_value_of_a_run_flag_is_one_line_exit_2_nothing_written(command, flag, tmp_path, cache):
    value, message = BAD_RUN_FLAGS[flag]
    before = folder_listing(tmp_path)
    code, out, err = run(*run_flag_commands(str(tmp_path / "s.csv"), value)[command], cache=cache)
    assert refused(code, err) and message in err, (code, err[-2000:])
    assert folder_listing(tmp_path) == before


def test_the_ruleset_command_prints_a_file_and_a_closed_stdout_costs_it_nothing(tmp_path, cache):
    """A reader that left wanted nothing more (exit 0); a stdout that cannot take the answer (a full disk) fails."""
    code, out, err = run("bench.results", "ruleset", cache=cache)
    assert code == 0 and os.path.isfile(out.strip()) and out.strip().endswith(".yaml"), (code, out, err)
    code, _, err = closed_stdout("bench.results", "ruleset", cache=cache)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    with open("/dev/full", "w") as full:
        code, _, err = finish(start("bench.results", "ruleset", cache=cache, stdout=full))
    assert code == 1 and "could not be written" in err and "Traceback" not in err, (code, err[-2000:])


def test_a_closed_stdout_costs_clearing_the_cache_nothing(tmp_path):
    cache = str(tmp_path / "cache")
    seed_peak_cache(cache)
    code, _, err = closed_stdout("bench.hardware.peak", cache=cache)
    assert code == 0 and not os.path.exists(os.path.join(cache, "peak.json")), err[-2000:]


def test_every_command_is_in_the_table():
    """A new entry point (a `[project.scripts]` line or a module run with `python -m`) must be added here."""
    import glob

    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        scripts = {s.split(":")[0] for s in tomllib.load(fh)["project"]["scripts"].values()}
    mains = set()
    for path in glob.glob(os.path.join(ROOT, "bench", "**", "*.py"), recursive=True) + glob.glob(
        os.path.join(ROOT, "sweeps", "*.py")
    ):
        if '__name__ == "__main__"' in open(path, encoding="utf-8").read():
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            mains.add(module.removesuffix(".__main__"))
    covered = {c.split(" ")[0] for c in COMMANDS}
    assert scripts | mains <= covered, sorted((scripts | mains) - covered)
