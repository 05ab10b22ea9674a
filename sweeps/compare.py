"""python -m sweeps.compare: is B faster than A? Two settings run in ABBA order, or two results tables.

  python -m sweeps.compare --a="--precision fp32" --b="--precision bf16" --pairs 5 [bench.run flags for both]
  python -m sweeps.compare --base old.csv --new new.csv [--fail_on_regression 5]

Two arms: each run is an ordinary `python -m bench.run` process writing its own row to --results
(columns `comparison` and `arm`), in the order A B, B A, A B, ... Printed: each pair's ratio B/A of
images/sec, their mean ratio with a 95% confidence interval (Student's t over the pairs' log ratios),
and a verdict: faster, slower, no difference larger than the --band, or inconclusive with the number of
pairs that would likely settle it. Test accuracy compares the same way when both arms have real data.
Two tables: every configuration of both (matched as sweeps.report groups rows), the ratio new/base of
images/sec with its interval over the repeats, into compare.md and plots/compare.png.
Exit status: 0 done; 1 a run failed, or B slower than --fail_if_slower allows (a regression beyond
--fail_on_regression, or a configuration with no ok run on a side); 2 bad input (one line on stderr,
nothing run or written: both arms are checked before either runs); 130 / 143 stopped by Ctrl-C /
SIGTERM (the running bench.run is told, finishes its window and writes its `interrupted` row, which
the comparison waits for; the rows written so far stay in the table).
"""

from __future__ import annotations

import math
import os
import shlex
import time
import uuid

from bench.config import cli, exits, options, validation

# The modules below take a second or more to import: a Ctrl-C then is one line and 130, not a traceback.
with exits.leave_on_signals("the comparison"):
    from absl import app, flags

    from bench.config.options import ConfigError
    from bench.results import convergence, stats, table
    from bench.runner import benchmark, processes
    from sweeps import table_compare

ARM_FLAGS = ("a", "b", "pairs", "accuracy_band", "fail_if_slower")  # and every bench.run flag: a run comparison
TABLE_FLAGS = ("base", "new", "vary", "out_dir", "fail_on_regression")  # table against table
COMPARE_FLAGS = ARM_FLAGS[:2] + ("pairs", "band") + ARM_FLAGS[3:] + TABLE_FLAGS
FLAGS = flags.FLAGS


def define_flags(fv=flags.FLAGS):
    """The flags of sweeps.compare (defined when run as a command, so importing it defines none)."""
    cli.define_run_flags(fv)  # flags common to both arms: any bench.run flag
    flags.DEFINE_string(
        "a",
        None,
        'bench.run flags of arm A, in one string (e.g. --a="--precision fp32"; --a="" is the defaults).',
        flag_values=fv,
    )
    flags.DEFINE_string(
        "b", None, "bench.run flags of arm B (its ratio to A is reported: B/A > 1 is B faster).", flag_values=fv
    )
    flags.DEFINE_integer("pairs", 5, "A/B pairs, run in ABBA order (A B, B A, A B, ...); at least 2.", flag_values=fv)
    flags.DEFINE_float(
        "band",
        5.0,
        "Percent: a speed difference whose whole 95% interval lies inside ±band is "
        "'no difference' (of interest for you: smaller is stricter and needs more pairs).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "accuracy_band", 0.5, "Percentage points: the same for test accuracy (real data only).", flag_values=fv
    )
    flags.DEFINE_float(
        "fail_if_slower",
        None,
        "Exit 1 when B is slower than A by more than this percent with 95% confidence (for CI pipelines).",
        flag_values=fv,
    )
    flags.DEFINE_string("base", None, "Compare two tables: the results CSV of the baseline...", flag_values=fv)
    flags.DEFINE_string("new", None, "...and the one to compare with it (ratios new/base).", flag_values=fv)
    flags.DEFINE_list(
        "vary",
        [],
        "--base/--new: columns that may differ between the tables and still match (e.g. "
        "tf_version,keras_version for a TensorFlow upgrade, device for two machines).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "out_dir",
        None,
        "--base/--new: where compare.md and plots/compare.png go (default: next to --new).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "fail_on_regression",
        None,
        "--base/--new: exit 1 when a configuration is slower by more than this percent with 95% confidence.",
        flag_values=fv,
    )


RUN_LABELS = ("comparison", "arm")  # set here for each run, never passed through
CONDITION_FLAGS = ("unstable", "contended", "throttled")  # a run's row says so (bench.results.conditions)


# ---------------------------------------------------------------------------
# The arms


def common_args(values=FLAGS):
    """The bench.run flags given on the command line, as text for every arm's process."""
    return [
        values[f.name].serialize() for f in options.flag_fields() if values[f.name].present and f.name not in RUN_LABELS
    ]


def arm_config(common, text):
    """(the checked RunConfig of one arm, its own flags): the common flags, then the arm's own (which win),
    parsed as bench.run parses them and checked as it checks them before a run (`benchmark.check`)."""
    values = flags.FlagValues()
    cli.define_run_flags(values)
    arm = shlex.split(text)
    cli.parse_argv(["bench.run", *common, *arm], values)
    return benchmark.check(cli.config_from_flags(values)), arm


def arm_texts(values=FLAGS):
    """(--a, --b) as given: None where not given, "" for an arm of the defaults."""
    return tuple(values[name].value or "" if values[name].present else None for name in ("a", "b"))


def given(values, names):
    return [f"--{name}" for name in names if values[name].present]


def comparison_id():
    return time.strftime("cmp-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def process_runner(common, arms, comparison, results_path, seeds=None):
    """runner(pair, arm, position) -> stats.Run: one `python -m bench.run` process, its row read back.

    `seeds`: {arm: its first seed}; pair k runs seed + k - 1 on both arms (a pair shares its seed, no two
    runs of an arm do: MLPerf's rule for the runs of a result, and what makes epochs-to-target vary)."""
    seeds = seeds or {}

    def run(pair, arm, position):
        seed = [f"--seed={seeds[arm] + pair - 1}"] if arm in seeds else []
        try:
            done = processes.run_bench(
                [*common, *arms[arm], *seed, f"--comparison={comparison}", f"--arm={arm}"], results_path
            )
        except processes.Stopped as stop:  # relayed to the run, which has ended: say where its row is
            print(stopped_line(pair, arm, stop), flush=True)
            raise
        rows = [r for r in done.rows if r["comparison"] == comparison and r["arm"] == arm]
        if done.returncode == exits.EXIT_BAD_INPUT and not rows:
            raise BadArm(arm, done.error_line())
        if not rows:
            return stats.Run(pair, arm, position, "failed", error=f"exit {done.returncode}: {done.last_line()}")
        row = rows[-1]
        return stats.Run(
            pair,
            arm,
            position,
            row["status"],
            processes.number(row["images_per_sec"]),
            processes.number(row["test_accuracy"]),
            row["error"],
            row["run_id"],
            flags=tuple(flag for flag in CONDITION_FLAGS if row.get(flag) == "true"),
            epochs_to_target=processes.number(row.get("epochs_to_target", "")),
            time_to_target_s=processes.number(row.get("time_to_target_s", "")),
        )

    return run


class BadArm(ConfigError):
    """bench.run refused an arm at setup (exit 2): what only the devices can tell, e.g. --num_gpus."""

    def __init__(self, arm, message):
        super().__init__(f"arm {arm}: {message}")


# ---------------------------------------------------------------------------
# What is printed


def stopped_line(pair, arm, stop):
    done = stop.finished
    if done is None:
        return f"pair {pair} {arm}: stopped by {stop.name} before its run started"
    if not done.rows:
        return (
            f"pair {pair} {arm}: stopped by {stop.name}; it wrote no row (exit {done.returncode}: {done.last_line()})"
        )
    row = done.rows[-1]
    return f"pair {pair} {arm}: stopped by {stop.name}; its {row['status']} row is in {done.where}"


def progress_line(run, done, total):
    what = f"{run.images_per_sec:.1f} img/s" if run.status == "ok" and run.images_per_sec else run.status
    accuracy = f", accuracy {run.test_accuracy:.4f}" if run.test_accuracy is not None else ""
    if run.epochs_to_target is not None:
        accuracy += f", target at epoch {run.epochs_to_target:.3g}"
    error = f" ({run.error})" if run.error else ""
    flags = f" [{', '.join(run.flags)}]" if run.flags else ""
    return f"[{done}/{total}] pair {run.pair} {run.arm}: {what}{accuracy}{flags}{error}"


def speed_text(est, band_pct):
    """The ratio line and the verdict line of images/sec B/A."""
    ratio, low, high = (math.exp(x) for x in (est.effect, est.low, est.high))
    v = stats.verdict(est, *stats.speed_band(band_pct))
    if no_spread(est):  # a zero-width "interval" is no interval: say what the pairs showed, and that alone
        line = f"images/sec B/A: {ratio:.3f}x in each of the {est.n} pairs (no spread between them: no interval)"
        if v.kind == "same":
            return line, "A and B gave the same images/sec in every pair (no spread: no interval to judge by)"
        return line, (
            f"B was {'faster' if ratio > 1 else 'slower'} than A by {abs(ratio - 1):.1%} in every pair "
            f"(no spread: no interval to judge by)"
        )
    ratio_line = (
        f"images/sec B/A: {ratio:.3f}x (95% CI {low:.3f}-{high:.3f}x; t over the log ratios of "
        f"{est.n} pairs; median pair {math.exp(est.median):.3f}x)"
    )
    if v.kind == "higher":
        text = f"B is faster than A by {ratio - 1:.1%} (the 95% CI excludes 1)"
    elif v.kind == "lower":
        text = f"B is slower than A by {1 - ratio:.1%} (the 95% CI excludes 1)"
    elif v.kind == "same":
        text = (
            f"no difference larger than ±{stats.ratio_bound(est):.1%} (the whole 95% CI lies inside the "
            f"±{band_pct:g}% band)"
        )
    else:
        text = f"inconclusive: the 95% CI includes 1 and reaches beyond the ±{band_pct:g}% band; " + _more(v, est)
    return ratio_line, text


def no_spread(est):
    """Every pair gave the same effect: Student's t then makes an interval of width zero, which claims a
    certainty no benchmark has (identical numbers in every pair say more about the runs than the arms)."""
    return est.high - est.low == 0


def accuracy_text(est, band_pp):
    """The difference line and the verdict line of test accuracy B - A (percentage points)."""
    pp = lambda x: f"{100 * x:+.2f}"  # noqa: E731
    v = stats.verdict(est, -band_pp / 100, band_pp / 100)
    if no_spread(est):
        line = f"test accuracy B-A: {pp(est.effect)} pp in each of the {est.n} pairs (no spread: no interval)"
        if est.effect == 0:
            return line, "A and B reached the same test accuracy in every pair (no spread: no interval to judge by)"
        more = "more" if est.effect > 0 else "less"
        return line, f"B was {more} accurate by {abs(100 * est.effect):.2f} pp in every pair (no spread: no interval)"
    line = f"test accuracy B-A: {pp(est.effect)} pp (95% CI {pp(est.low)} to {pp(est.high)} pp; {est.n} pairs)"
    text = {
        "higher": "B is more accurate (the 95% CI excludes 0)",
        "lower": "B is less accurate (the 95% CI excludes 0)",
        "same": f"no difference larger than ±{100 * max(-est.low, est.high, 0.0):.2f} pp (inside the ±{band_pp:g} pp band)",
    }.get(v.kind) or f"inconclusive at ±{band_pp:g} pp; " + _more(v, est)
    return line, text


def _more(v, est):
    if v.pairs_needed is None:
        return f"the difference is below what {stats.MAX_PAIRS} pairs could show on this machine"
    return f"about {v.pairs_needed} pairs in all would likely settle it ({v.pairs_needed - est.n} more)"


def conditions_lines(runs):
    """What the runs' rows say about the conditions they were measured in (none: no line)."""
    ok = [r for r in runs if r.status == "ok"]
    counts = {flag: sum(flag in r.flags for r in ok) for flag in CONDITION_FLAGS}
    if not any(counts.values()):
        return []
    said = ", ".join(f"{n} of {len(ok)} {flag}" for flag, n in counts.items() if n)
    return [
        f"conditions: {said} (each row says why; bench.results.conditions). The pairs' interval already carries "
        "the noise this added; a quieter machine (or more pairs) narrows it."
    ]


def convergence_lines(runs, target):
    """With a target accuracy: each arm's epochs to it, the guard (does B need more epochs than A?) and
    B's speed-up per step and to the target."""
    arm = {name: [r for r in runs if r.arm == name] for name in stats.ARMS}
    epochs = {name: [r.epochs_to_target if r.status == "ok" else None for r in arm[name]] for name in stats.ARMS}
    lines = [f"epochs to target {target:g}:"]
    for name in stats.ARMS:
        reached, missed = convergence.split(epochs[name])
        each = ", ".join(f"{e:.3g}" for e in reached) or "none"
        lines.append(f"  {name}: {each}" + (f" ({missed} run(s) never reached it)" if missed else ""))
    guard = convergence.guard(epochs["A"], epochs["B"])
    lines.append("convergence: " + guard.text(("A", "B")).replace("**", ""))
    speed = convergence.speedup(
        [r.images_per_sec for r in arm["A"] if r.status == "ok"],
        [r.images_per_sec for r in arm["B"] if r.status == "ok"],
        [r.time_to_target_s for r in arm["A"] if r.status == "ok"],
        [r.time_to_target_s for r in arm["B"] if r.status == "ok"],
    )
    lines.append("B's " + speed.text())
    return lines


def report_lines(runs, band_pct, accuracy_band, target=None):
    """Pairs, ratio, verdicts (and the failed runs) of a finished comparison; with a target accuracy, the
    convergence of each arm (`convergence_lines`)."""
    lines = []
    failed = [r for r in runs if r.status != "ok"]
    for r in failed:
        lines.append(
            f"run failed: pair {r.pair} {r.arm} ({r.status}{': ' + r.error if r.error else ''}); its pair is left out"
        )
    speed = stats.paired_values(runs)
    lines.append("pair  A img/s  B img/s  B/A")
    lines.extend(f"{p:>4}  {a:7.1f}  {b:7.1f}  {b / a:.3f}" for p, (a, b) in speed.items())
    if len(speed) < 2:
        lines.append(f"only {len(speed)} complete pair(s): no interval")
        return lines + (convergence_lines(runs, target) if target is not None else []), None
    est = stats.paired_interval(stats.log_ratios(speed.values()))
    ratio_line, verdict_line = speed_text(est, band_pct)
    lines += [ratio_line, "verdict: " + verdict_line]
    lines += conditions_lines(runs)
    accuracy = stats.paired_values(runs, "test_accuracy")
    if len(accuracy) >= 2:
        acc = stats.paired_interval([b - a for a, b in accuracy.values()])
        lines += list(accuracy_text(acc, accuracy_band))
    if target is not None:
        lines += convergence_lines(runs, target)
    return lines, est


# ---------------------------------------------------------------------------
# The command


def run_arms(values=FLAGS):
    """Check both arms, run the pairs, print; return the exit status. Bad input (an arm bench.run would
    refuse, found before either runs, or refused by bench.run later all the same) raises ConfigError."""
    texts = arm_texts(values)
    validation.check_comparison(
        values.pairs,
        values.band,
        values.fail_if_slower,
        arms=texts,
        accuracy_band=values.accuracy_band,
        max_pairs=stats.MAX_PAIRS,
        other_mode=given(values, TABLE_FLAGS[2:]),
    )
    common = common_args(values)
    cfgs, arms, runs_as = {}, {}, {}
    for name, text in zip("AB", texts):
        try:
            cfgs[name], arms[name] = arm_config(common, text)
        except table.ResultsError:  # the table is common to both arms: its own line, whole
            raise
        except ValueError as err:  # ConfigError is a ValueError, as is an unbalanced quote: one line either way
            raise ConfigError(f"--{name.lower()}={text!r}: {err}") from None
    validation.check_arms(cfgs["A"], cfgs["B"])
    for name, text in zip("AB", texts):  # what only the devices tell, as far as it is known before a run starts
        try:
            runs_as[name] = benchmark.expected_setup(cfgs[name])
        except ConfigError as err:
            raise ConfigError(f"--{name.lower()}={text!r}: {err}") from None
    validation.check_arms_differ(runs_as["A"], runs_as["B"], *texts)
    comparison = values.comparison or comparison_id()
    results_path = os.path.abspath(cfgs["A"].results)
    print(
        f"comparison {comparison}: A = {texts[0]!r}, B = {texts[1]!r}, {values.pairs} pairs in ABBA order; "
        f"common flags: {shlex.join(common) or '(none)'}; rows in {results_path}",
        flush=True,
    )
    runner = process_runner(common, arms, comparison, results_path, {name: cfg.seed for name, cfg in cfgs.items()})
    try:
        runs = stats.run_pairs(runner, values.pairs, on_run=lambda r, k, n: print(progress_line(r, k, n), flush=True))
    except (KeyboardInterrupt, exits.Interrupted):  # the exit status and the error line: exits.command
        print(f"comparison {comparison} stopped; the rows written so far stay in {results_path}", flush=True)
        raise
    lines, est = report_lines(runs, values.band, values.accuracy_band, cfgs["B"].target_accuracy)
    print("\n".join(lines), flush=True)
    failed = est is None or any(r.status != "ok" for r in runs)
    if (
        est is not None
        and values.fail_if_slower is not None
        and stats.slower_with_confidence(est, values.fail_if_slower)
    ):
        print(f"FAIL: B is slower than A by more than {values.fail_if_slower:g}% with 95% confidence")
        failed = True
    return exits.EXIT_FAILED if failed else exits.EXIT_OK


def usage():
    return cli.usage_text(__doc__, list(COMPARE_FLAGS) + [f.name for f in options.flag_fields()])


def main(argv, values=FLAGS):
    """The command; bad input raises ConfigError (a table that is not a results table: ResultsError, one too)."""
    del argv  # cli.parse_flags refused stray arguments
    if values.base or values.new:
        validation.check_comparison(
            band_pct=values.band,
            fail_pct=values.fail_on_regression,
            base=values.base,
            new=values.new,
            arms=arm_texts(values),
            unknown_vary=[c for c in values.vary if c not in table_compare.match_columns()],
            other_mode=given(values, ARM_FLAGS[2:]) + given(values, [f.name for f in options.flag_fields()]),
            out_files=table_compare.output_paths(table_compare.out_dir(values)) if values.new else (),
        )
        for flag, path in (("--base", values.base), ("--new", values.new)):
            try:
                table.check_header(path)  # another file's header: ResultsError
            except table.ResultsError as err:
                raise table.ResultsError(f"{flag}: {err}") from None
        return table_compare.run(values)
    return run_arms(values)


def entry():
    define_flags()
    app.run(
        lambda argv: exits.program(main, argv, what="the comparison"),
        flags_parser=lambda argv: cli.parse_flags(argv, usage),
    )


if __name__ == "__main__":
    entry()
