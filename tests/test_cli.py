"""Flags are declared once (RunConfig fields) and both commands are built from them; checks live in config."""

import os
import subprocess
import sys

import pytest
from absl import flags

from bench.config import cli, options
from bench.config.options import RunConfig
from resnet import spec
from sweeps import space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag_values(define):
    values = flags.FlagValues()
    define(values)
    values(["prog"])
    return values


def test_every_field_is_a_flag_of_both_commands_with_the_same_default_and_help():
    run_flags, sweep_flags = _flag_values(cli.define_run_flags), _flag_values(cli.define_sweep_flags)
    fields = options.flag_fields()
    assert {f.name for f in fields} >= {"n", "precision", "xla", "strategy", "results", "steps_per_loop"}
    for f in fields:
        run_flag, sweep_flag = run_flags[f.name], sweep_flags[f.name]
        assert run_flag.help == sweep_flag.help and f.metadata["help"] in run_flag.help, f.name
        assert run_flag.value == f.default, f.name
        swept = options.axis_values(f, sweep_flag.value)
        expected = (
            [f.default] if not f.metadata["sweep_default"] else options.axis_values(f, f.metadata["sweep_default"])
        )
        assert swept == expected, f.name
    # bench.run's config from its defaults is RunConfig()
    assert cli.config_from_flags(run_flags) == RunConfig()


def test_a_sweep_axis_over_any_field_reaches_the_trials_config():
    two_values = {bool: "true,false", int: "2,3", float: "0.5,0.25", str: None}
    sweep_flags = _flag_values(cli.define_sweep_flags)
    axes = space.axes_from_flags(sweep_flags)
    axes.update(n=[1], shortcut=["A"], block=["preact"], steps=[20])
    checked = 0
    for f in options.flag_fields():
        if not f.metadata["axis"] or f.metadata["testing"] or f.name in ("steps", "epochs"):
            continue
        text = two_values[f.metadata["kind"]] if not f.metadata["choices"] else ",".join(f.metadata["choices"][:2])
        if text is None:
            continue
        values = options.axis_values(f, text)
        companions = {"strategy": ["mirrored"]} if f.name in ("cpu_replicas", "num_gpus") else {}
        if f.name in (
            "workers",
            "gpus_per_worker",
            "cpus_per_worker",
            "max_failures",
            "collective_timeout_s",
            "restart_timeout_s",
        ):
            companions = {"strategy": ["multi_worker"], "workers": [2], "batch_size": [12]}
        trials = space.build_trials({**axes, **companions, f.name: values}, 1, "s")
        seen = [getattr(t.config, f.name) for t in trials]
        assert seen == [spec.canonical_precision(v) if f.name == "precision" else v for v in values], f.name
        keys = [dict(part.split("=", 1) for part in t.key.split(",")) for t in trials]
        assert len({t.key for t in trials}) == 2 and all(f.name in key for key in keys), f.name
        checked += 1
    assert checked >= 15


def _help(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    return proc


@pytest.mark.e2e
def test_help_exits_0_lists_every_user_flag_and_flagfile_but_no_testing_flag():
    for module in ("bench.run", "sweeps.tune"):
        proc = _help(module)
        assert proc.returncode == 0, proc.stderr[-1000:]
        for f in options.flag_fields():
            shown = f"--{f.name}" in proc.stdout.split()
            assert shown != f.metadata["testing"], (module, f.name)
        assert "--flagfile" in proc.stdout
