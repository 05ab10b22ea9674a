"""Bad input is fuzzed, not listed (issue #16): any argument list drawn from bench.run's real flags, with
values of every kind (empty, unicode, huge, negative, inf/nan, folders, FIFOs, binary files, /proc, files
that are not run.json), through the CLI's parse + validate path is either accepted or refused with a
one-line ConfigError (exit 2) - never another exception. No TensorFlow: absl parsing, `validate`
and the results table's check, in-process.

A few hundred examples run in the default suite; `pytest -m fuzz tests/test_fuzz_inputs.py` runs thousands.
"""

import os

import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.config import cli, options, validation
from bench.config.options import ConfigError
from bench.results import table

NAMES = [f.name for f in options.flag_fields()]
CHOICES = sorted({c for f in options.flag_fields() for c in (f.metadata["choices"] or ())})
EDGES = [
    "",
    " ",
    "0",
    "1",
    "-1",
    "2",
    "16",
    "inf",
    "-inf",
    "nan",
    "1e309",
    "-0.0",
    "0.5",
    "1e-320",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9" * 30,
    "-" + "9" * 30,
    "true",
    "false",
    "3,5",
    "3,100",
    "0,3",
    "5:1",
    "5:-1",
    "0:1:stall",
    "1:2:3",
    ":",
    ",",
    "auto",
    "ray://h:1",
    "h:x",
    "\udcff\udcfe",
    "١٢",
    "日本語",
    "a\x00b",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Paths of every kind, and a folder to run in (relative paths land there)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "folder").mkdir()
    os.mkfifo(root / "fifo")
    (root / "binary").write_bytes(bytes(range(256)))
    (root / "flags.txt").write_text("--n=2\n--steps=30\n--seed=7\n")
    (root / "not_utf8.txt").write_bytes(b"--n=1\n--tfds_dir=\xff\n")
    (root / "loop.txt").write_text(f"--flagfile={root / 'loop.txt'}\n")
    for name, text in (
        ("json_garbage", "{not json"),
        ("json_list", "[1,2]"),
        ("json_odd", '{"run_id": 1}'),
        ("json_ok", '{"run_id": "abc", "config": {"n": [1]}, "finished": false}'),
    ):
        (root / name).mkdir()
        (root / name / "run.json").write_text(text)
    (root / "run_json_folder" / "run.json").mkdir(parents=True)
    (root / "empty.csv").write_text("")
    (root / "foreign.csv").write_text("a,b\n1,2\n")
    names = [
        "folder",
        "fifo",
        "binary",
        "flags.txt",
        "not_utf8.txt",
        "loop.txt",
        "json_garbage",
        "json_list",
        "json_odd",
        "json_ok",
        "run_json_folder",
        "empty.csv",
        "foreign.csv",
        "missing/deeper",
        "folder/",
    ]
    paths = [str(root / n) for n in names] + [
        "/",
        "/proc",
        "/proc/self",
        "/proc/self/mem",
        "/proc/cpuinfo",
        "/proc/new.csv",
        "/dev/null",
        "/nonexistent/x",
        ".",
        "..",
        "~",
    ]
    return root, paths


def arguments(paths):
    value = st.one_of(
        st.sampled_from(EDGES),
        st.sampled_from(CHOICES),
        st.sampled_from(paths),
        st.integers(-(2**70), 2**70).map(str),
        st.floats().map(repr),
        st.text(max_size=12),
        st.lists(st.integers(-5, 300).map(str), min_size=1, max_size=3).map(",".join),
    )
    named = st.tuples(st.sampled_from(NAMES + ["flagfile"]), value).map(lambda nv: f"--{nv[0]}={nv[1]}")
    boolean = st.sampled_from(NAMES).flatmap(lambda n: st.sampled_from([f"--{n}", f"--no{n}"]))
    flagfile = st.sampled_from(paths).map(lambda p: f"--flagfile={p}")
    stray = st.sampled_from(["extra", "-", "--", "--undefined_flag=1", "--n", "-n=3"])
    return st.lists(st.one_of(named, named, named, boolean, flagfile, stray), max_size=6)


def outcome(argv):
    """'accepted' or 'refused' (a one-line ConfigError); any other exception propagates and fails the test."""
    values = flags.FlagValues()
    cli.define_run_flags(values)
    try:
        cli.parse_argv(["bench.run", *argv], values)
        cfg = validation.validate(cli.config_from_flags(values))
        table.check_results_path(cfg.results)
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message, message
        return "refused"
    return "accepted"


def check_examples(places, max_examples):
    root, paths = places

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(arguments(paths))
    def check(argv):
        # start from a small valid run so that one bad flag is judged, not only the first missing one
        seen.add(outcome([f"--results={root / 'r.csv'}", "--data=synthetic", "--steps=20", *argv]))

    seen = set()
    here = os.getcwd()
    os.chdir(root)  # relative paths land in the fuzz folder
    try:
        check()
    finally:
        os.chdir(here)
    assert seen == {"accepted", "refused"}  # the strategy reaches both sides
    assert not os.path.exists(root / "r.csv")  # nothing written
    assert not [n for n in os.listdir(root) if n.startswith(".bench-probe-")]


def test_any_flags_are_accepted_or_one_line_config_error(places):
    check_examples(places, 300)


@pytest.mark.fuzz
def test_any_flags_are_accepted_or_one_line_config_error_many(places):
    check_examples(places, 5000)


@pytest.mark.parametrize(
    "argv",
    [
        ["--seed=-1"],
        ["--seed=4294967296"],
        ["--epochs=inf"],
        ["--eval_every_epochs=nan"],
        ["--steps=100000000000000000000"],
        ["--steps=1000000000000"],
        ["--profile_steps=3,100"],
        ["--cifar_dir=a\x00b", "--data=files"],
        ["--n=1000000"],
        ["--steps_per_loop=2147483648"],
    ],
)
def test_found_by_fuzzing_or_by_the_issue(places, argv):
    root, _ = places
    assert outcome([f"--results={root / 'r.csv'}", "--data=synthetic", "--steps=20", *argv]) == "refused"
