"""Inference side by side, in one sitting: the harness with its defaults, the harness tuned, PyTorch eager.

Not part of the suite (a speed claim is a ratio measured side by side, never a timed unit test):

  python tests/benchmarks/side_by_side.py --torch_python /tmp/torchvenv/bin/python --rounds 3
  python tests/benchmarks/side_by_side.py --torch_python /tmp/torchvenv/bin/python --rounds 5 --batches 1 \
      --batch1_steps 3000 --torch_channels_last
  python tests/benchmarks/side_by_side.py --torch_python /tmp/torchvenv/bin/python --rounds 3 \
      --scenario loadgen --bf16 --torch_channels_last

`--scenario loadgen` runs the harness's arms through MLPerf's LoadGen instead of the quick look:
batch 1 as SingleStream, a larger batch as Offline with dynamic batching up to it (`--min_duration_s`
each, so the rows say shortened); images/sec and p50 are then LoadGen's, LoadGen's overhead counted
against the harness. `--bf16` adds the harness with `--precision bf16` and PyTorch under bfloat16
autocast, only where the CPU has native bfloat16 (`bench.hardware.cpu_features`); elsewhere it says
why it skips them.

First `python -m bench.run --autotune` runs once per batch size (its probe table and duration are
printed; later rounds start from its cache). Then every round runs, at batch 1 and at batch 128, the
three arms as fresh processes, the order reversed every other round (A B C, C B A, ...) so a drift
over the sitting cancels. Printed: each run, then per batch and arm the median p50 latency and
images/sec, and each harness arm's ratio to PyTorch (geometric mean over the rounds with its 95%
interval, `bench.results.stats` as in `sweeps.compare`). The machine's load average is printed with
every run: on a shared machine it is part of the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.hardware import cpu_features  # noqa: E402
from bench.results import stats  # noqa: E402
from bench.runner import processes  # noqa: E402

LENGTH = {1: (300, 30), 128: (40, 5)}  # batch -> (steps, warm-up steps) of the quick look and of PyTorch


def load():
    return os.getloadavg()[0]


def length(batch, scenario, min_duration_s):
    """The flags that say how long one harness arm runs: fixed batches (the quick look), or LoadGen's minimum."""
    if scenario == "none":
        steps, warmup = LENGTH[batch]
        return [f"--steps={steps}", f"--warmup_steps={warmup}"]
    name = "SingleStream" if batch == 1 else "Offline"
    return [f"--scenario={name}", f"--min_duration_s={min_duration_s}", "--min_query_count=100", "--warmup_steps=5"]


def harness(batch, results, extra, scenario="none", min_duration_s=10.0):
    done = processes.run_bench(
        [
            "--mode=inference",
            f"--batch_size={batch}",
            "--data=synthetic",
            *length(batch, scenario, min_duration_s),
            f"--results={results}",
            *extra,
        ],
        results,
    )
    if not done.rows or done.rows[-1]["status"] != "ok":
        return None, done.last_line()
    row = done.rows[-1]
    return (float(row["images_per_sec"]), float(row["step_time_p50_ms"])), row


def torch(batch, python, extra=()):
    steps, warmup = LENGTH[batch]
    proc = subprocess.run(
        [
            python,
            os.path.join(ROOT, "tests", "benchmarks", "torch_resnet20.py"),
            f"--batch_size={batch}",
            f"--steps={steps}",
            f"--warmup={warmup}",
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        return None, proc.stderr.strip().splitlines()[-1:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return (result["images_per_sec"], result["step_time_p50_ms"]), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch_python", required=True, help="a Python with torch installed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,128")
    parser.add_argument(
        "--scenario", choices=("none", "loadgen"), default="none", help="harness arms: the quick look, or LoadGen"
    )
    parser.add_argument("--min_duration_s", type=float, default=10.0, help="LoadGen's minimum per harness arm")
    parser.add_argument("--bf16", action="store_true", help="add bfloat16 arms (where the CPU has it natively)")
    parser.add_argument("--torch_channels_last", action="store_true", help="PyTorch in channels_last memory format")
    parser.add_argument(
        "--batch1_steps",
        type=int,
        default=LENGTH[1][0],
        help="timed steps of each batch-1 run, both sides (more: a p50 less moved by a busy second)",
    )
    args = parser.parse_args()
    LENGTH[1] = (args.batch1_steps, LENGTH[1][1])
    batches = [int(b) for b in args.batches.split(",")]
    folder = tempfile.mkdtemp(prefix="side-by-side-")
    results = os.path.join(folder, "summary.csv")
    print(f"rows in {results}; load average at start {load():.2f}", flush=True)
    for batch in batches:
        started = time.perf_counter()
        done = processes.run_bench(
            [
                "--autotune=refresh",
                "--mode=inference",
                f"--batch_size={batch}",
                "--data=synthetic",
                *length(batch, args.scenario, args.min_duration_s),
                f"--results={results}",
            ],
            results,
        )
        lines = [
            x
            for x in done.stdout.splitlines()
            if x.startswith(("autotune", "setting", "onednn", "xla", "batch_norm", "inter_op", "intra_op"))
        ]
        print(
            "\n".join(lines) + f"\n(autotune and its run: {time.perf_counter() - started:.0f} s, exit "
            f"{done.returncode})",
            flush=True,
        )
    run = dict(scenario=args.scenario, min_duration_s=args.min_duration_s)
    torch_flags = ["--channels_last"] if args.torch_channels_last else []
    arms = {
        "default": lambda b: harness(b, results, [], **run),
        "tuned": lambda b: harness(b, results, ["--autotune"], **run),
        "pytorch": lambda b: torch(b, args.torch_python, torch_flags),
    }
    if args.bf16:
        emulated = cpu_features.emulated_precision("mixed_bfloat16")
        if emulated:
            print(f"--bf16: no bfloat16 arms ({emulated})", flush=True)
        else:
            arms["bf16"] = lambda b: harness(b, results, ["--precision=bf16"], **run)
            arms["pytorch-bf16"] = lambda b: torch(b, args.torch_python, torch_flags + ["--bf16"])
    measured = {(b, a): [] for b in batches for a in arms}
    for r in range(1, args.rounds + 1):
        order = list(arms) if r % 2 else list(arms)[::-1]
        for batch in batches:
            for arm in order:
                value, detail = arms[arm](batch)
                measured[batch, arm].append(value)
                what = f"{value[0]:9.1f} img/s  p50 {value[1]:7.2f} ms" if value else f"failed: {detail}"
                print(f"round {r} batch {batch:>3} {arm:<12} {what}  (load {load():.2f})", flush=True)
    report(measured, batches, list(arms))


def report(measured, batches, arms):
    print(
        "\nbatch  arm           p50 latency ms  images/sec  images/sec vs pytorch  p50 latency: pytorch's / this "
        "(95% CI over rounds; > 1: faster than pytorch)"
    )
    for batch in batches:
        for arm in arms:
            torch_runs = measured[batch, "pytorch-bf16" if arm == "bf16" else "pytorch"]
            runs = [v for v in measured[batch, arm] if v]
            if not runs:
                print(f"{batch:>5}  {arm:<12}  no ok run")
                continue
            p50 = statistics.median(v[1] for v in runs)
            ips = statistics.median(v[0] for v in runs)
            ratios = []
            for index, invert in ((0, False), (1, True)):  # images/sec; latency (smaller is better: inverted)
                pairs = [
                    (t[index], h[index]) if not invert else (h[index], t[index])
                    for t, h in zip(torch_runs, measured[batch, arm])
                    if t and h
                ]
                if arm.startswith("pytorch") or len(pairs) < 2:
                    ratios.append("")
                    continue
                est = stats.paired_interval(stats.log_ratios(pairs))
                ratios.append("{:.2f}x [{:.2f}-{:.2f}]".format(*(math.exp(x) for x in (est.effect, est.low, est.high))))
            print(f"{batch:>5}  {arm:<12}  {p50:14.2f}  {ips:10.1f}  {ratios[0]:<21}  {ratios[1]}")


if __name__ == "__main__":
    main()
