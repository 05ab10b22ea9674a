"""python -m bench.check: a one-minute self-check of this machine and the harness. Run it first on GPUs.

Trains a small ResNet (n=1, 16 images per replica) for a few steps on the devices a run would use
(every visible GPU; without GPUs the CPU split into --cpu_replicas logical devices) and prints one
line per check, PASS, FAIL or SKIP, with the numbers it compared:

  replicas_match_one_device  one step on 1 device vs N replicas (synchronized BN): loss and weights agree
  bn_statistics_agree        BN moving statistics identical on every replica after a training call
  xla_matches                one step with and without XLA: loss and weights agree
  fp16_overflow_skipped      mixed_float16, inf on the last replica only: skipped on every replica
  mixed_precision_finite     mixed_bfloat16 and mixed_float16 steps stay finite
  peak_vs_datasheet          measured matmul peak per GPU within 0.3x-1.1x of the datasheet figure
  augment_distribution       device and host crops/flips uniform over the 81 offsets x 2 flips
  system_description         this machine's system description (MLPerf's fields) complete, written once
                             beside --results (systems/<name>.json) and unedited; every row's system has its file

The numeric checks run with TF32 off (their tolerances are for float32 arithmetic); the peak check
measures with TF32 as a run has it. Writes only the system description: no results row, no peak cache.
Exit status: 0 every check passed or was skipped, 1 a check failed, 2 bad flags.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from bench.config import exits

# TensorFlow first, through the device setup's import (it makes the oneDNN choice, fixed at TensorFlow's
# import); the self-check's modules import TensorFlow themselves. A Ctrl-C during these seconds is one line.
with exits.leave_on_signals("the self-check"):
    from absl import app, flags

    from bench.config import cli, validation
    from bench.config.exits import first_line
    from bench.hardware import devices
    from bench.results import table
    from resnet import spec

    devices.import_tensorflow()
    from bench.selfcheck.checks import CHECKS, MEASURES_AS_RUN  # noqa: E402
    from bench.selfcheck.env import FAIL_PREFIX, Result, header, setup  # noqa: E402

# -- running and printing --------------------------------------------------------


@contextlib.contextmanager
def float32_exact(tf):
    """TF32 off (Ampere+ GPUs): float32 matmuls/convs keep float32 precision, which the tolerances assume."""
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def run_check(env, name):
    """Run one check; its own exception is a FAIL with the error's first line (no traceback)."""
    start = time.perf_counter()
    exact = contextlib.nullcontext() if name in MEASURES_AS_RUN else float32_exact(env.tf)
    try:
        with exact:
            result = CHECKS[name](env)
    except Exception as err:  # noqa: BLE001 - a failing check is reported, the others still run
        result = Result(name, "FAIL", [FAIL_PREFIX + "error: " + first_line(err)])
    result.seconds = time.perf_counter() - start
    return result


def format_result(result, width):
    head = f"{result.name:<{width}}  {result.status:<4}  {result.seconds:5.1f}s  "
    pad = " " * len(head)
    return "\n".join(head + line if i == 0 else pad + line for i, line in enumerate(result.lines or [""]))


def run(names, cpu_replicas=2, precision="float32", out=None, results="results/summary.csv"):
    """Set up the devices, run the named checks, print the table; return the exit status (0 or 1)."""
    out = out or sys.stdout
    start = time.perf_counter()
    env = setup(cpu_replicas, precision, results)
    print(header(env, cpu_replicas), file=out, flush=True)
    width = max(len(n) for n in CHECKS)
    print(f"\n{'check':<{width}}  result  time  compared", file=out, flush=True)
    results = []
    for name in names:
        results.append(run_check(env, name))
        print(format_result(results[-1], width), file=out, flush=True)
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "SKIP", "FAIL")}
    print(
        f"\n{len(results)} checks: {counts['PASS']} passed, {counts['SKIP']} skipped, {counts['FAIL']} failed "
        f"in {time.perf_counter() - start:.0f} s",
        file=out,
        flush=True,
    )
    return 1 if counts["FAIL"] else 0


# -- command line ------------------------------------------------------------------


def known_checks(names):
    if names is not None and not names:
        raise flags.ValidationError("needs at least one check name")
    unknown = [n for n in names or [] if n not in CHECKS]
    if unknown:
        raise flags.ValidationError(f"unknown check {', '.join(unknown)}; the checks: {', '.join(CHECKS)}")
    return True


def define_flags(flag_values=flags.FLAGS):
    """The flags of bench.check (defined when run as a command, so importing it defines none)."""
    flags.DEFINE_list(
        "only", None, f"Run only these checks (comma list of: {', '.join(CHECKS)}).", flag_values=flag_values
    )
    flags.register_validator("only", known_checks, flag_values=flag_values)
    # the run's own flags, with the self-check's defaults (two replicas: something to compare)
    cli.define_field_flags(
        {"cpu_replicas": dict(default=2, lower_bound=1), "precision": {}, "results": {}}, flag_values
    )


def usage():
    return cli.usage_text(__doc__, ["only", "cpu_replicas", "precision", "results"])


def main(argv):
    del argv
    f = flags.FLAGS
    validation.check_results_table(f.results)  # the system description goes beside it: bad input before any work
    if os.path.isfile(f.results):
        table.check_header(f.results)  # a file that is not a results table: one line, exit 2
    return run(f.only or list(CHECKS), f.cpu_replicas, spec.canonical_precision(f.precision), results=f.results)


def entry():
    define_flags()
    app.run(
        lambda argv: exits.program(main, argv, what="the self-check"),
        flags_parser=lambda argv: cli.parse_flags(argv, usage),
    )


if __name__ == "__main__":
    entry()
