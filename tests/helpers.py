"""Small builders shared by the tests (no assertions here). The step-function builders are the self-check's
(bench.selfcheck.env: make_step_functions, random_batch, batches, ...), with conftest's `check_env` fixture."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(*argv, env=None, cwd=ROOT, timeout=600):
    """`python ARGV` (`"-m", "bench.run", ...`) run to its end with this checkout's code: the finished process,
    its output as text. `env`: variables added to this process's (None removes one)."""
    merged = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    merged = {key: value for key, value in merged.items() if value is not None}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=merged, capture_output=True, text=True, timeout=timeout)


def seed_peak_cache(folder, intra=None):
    """A fresh, quiet peak reading for this CPU (oneDNN on and off; `intra`: a worker's thread count) in
    `folder`/peak.json, so a run there does not spend ~20 s measuring it (bench.hardware.peak.device_key's keys)."""
    import json

    import tensorflow as tf

    from bench.hardware import devices, peak
    from bench.results import table

    entry = {"gflops": 100.0, "measured_at": table.utc_now(), "load": 0.0}
    threads = f"|intra{intra}" if intra else ""
    keys = [
        peak.cache_key(f"CPU:{devices.cpu_model_name()}|tf{tf.__version__}{onednn}{threads}", "float32")
        for onednn in ("", "|onednn")
    ]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "peak.json"), "w") as fh:
        json.dump({key: entry for key in keys}, fh)


def mirrored_loss(folder, steps):
    """The final training loss of the one-process, 2-replica run of what a 2-worker test run computes (ResNet-8,
    synthetic batches of 16 per replica, the same seed, one step a window): a multi-worker run must match it."""
    import io

    from bench.config.options import RunConfig
    from bench.runner import benchmark

    cfg = RunConfig(
        strategy="mirrored",
        cpu_replicas=2,
        data="synthetic",
        n=1,
        batch_size=16,
        steps=steps,
        steps_per_loop=1,
        warmup_steps=1,
        results=os.path.join(folder, "mirrored.csv"),
    )
    return float(benchmark.run(cfg, write_row=False, out=io.StringIO()).row["final_train_loss"])


def compare_main(capsys, *args):
    """(exit status, stdout, stderr lines) of `python -m sweeps.compare ARGS`, run in this process."""
    from absl import flags

    from bench.config import cli, exits
    from sweeps import compare

    values = flags.FlagValues()
    compare.define_flags(values)
    cli.parse_argv(["sweeps.compare", *args], values)
    code = exits.command(compare.main, ["sweeps.compare"], values, what="the comparison")
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def children(pid):
    """The pids whose parent is `pid`."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def arm_training(proc, timeout=240):
    """The pid of the `bench.run` that the comparison `proc` runs, once it trains: its console (a file the
    comparison keeps, read through /proc) shows a step line, so a signal now meets its training, not its setup."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for child in children(proc.pid):
            try:
                with open(f"/proc/{child}/fd/1", errors="replace") as console:
                    if "step " in console.read():
                        return child
            except OSError:
                continue
        time.sleep(0.5)
    raise AssertionError(f"no arm of the comparison trained within {timeout} s (exit {proc.poll()})")
