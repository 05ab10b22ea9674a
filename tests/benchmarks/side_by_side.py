"""Inference side by side, in one sitting: the harness with its defaults, the harness tuned, PyTorch eager.

Not part of the suite (a speed claim is a ratio measured side by side, never a timed unit test):

  python tests/benchmarks/side_by_side.py --torch_python /tmp/torchvenv/bin/python --rounds 3

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

from bench.results import stats  # noqa: E402
from bench.runner import processes  # noqa: E402

LENGTH = {1: (300, 30), 128: (40, 5)}  # batch -> (steps, warm-up steps)


def load():
    return os.getloadavg()[0]


def harness(batch, results, extra):
    steps, warmup = LENGTH[batch]
    done = processes.run_bench(
        [
            "--mode=inference",
            f"--batch_size={batch}",
            "--data=synthetic",
            f"--steps={steps}",
            f"--warmup_steps={warmup}",
            f"--results={results}",
            *extra,
        ],
        results,
    )
    if not done.rows or done.rows[-1]["status"] != "ok":
        return None, done.last_line()
    row = done.rows[-1]
    return (float(row["images_per_sec"]), float(row["step_time_p50_ms"])), row


def torch(batch, python):
    steps, warmup = LENGTH[batch]
    proc = subprocess.run(
        [
            python,
            os.path.join(ROOT, "tests", "benchmarks", "torch_resnet20.py"),
            f"--batch_size={batch}",
            f"--steps={steps}",
            f"--warmup={warmup}",
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
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    folder = tempfile.mkdtemp(prefix="side-by-side-")
    results = os.path.join(folder, "summary.csv")
    print(f"rows in {results}; load average at start {load():.2f}", flush=True)
    for batch in batches:
        started = time.perf_counter()
        steps, warmup = LENGTH[batch]
        done = processes.run_bench(
            [
                "--autotune=refresh",
                "--mode=inference",
                f"--batch_size={batch}",
                "--data=synthetic",
                f"--steps={steps}",
                f"--warmup_steps={warmup}",
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
    arms = {
        "default": lambda b: harness(b, results, []),
        "tuned": lambda b: harness(b, results, ["--autotune"]),
        "pytorch": lambda b: torch(b, args.torch_python),
    }
    measured = {(b, a): [] for b in batches for a in arms}
    for r in range(1, args.rounds + 1):
        order = list(arms) if r % 2 else list(arms)[::-1]
        for batch in batches:
            for arm in order:
                value, detail = arms[arm](batch)
                measured[batch, arm].append(value)
                what = f"{value[0]:9.1f} img/s  p50 {value[1]:7.2f} ms" if value else f"failed: {detail}"
                print(f"round {r} batch {batch:>3} {arm:<8} {what}  (load {load():.2f})", flush=True)
    report(measured, batches, list(arms))


def report(measured, batches, arms):
    print(
        "\nbatch  arm       p50 latency ms  images/sec  images/sec vs pytorch  p50 latency: pytorch's / this "
        "(95% CI over rounds; > 1: faster than pytorch)"
    )
    for batch in batches:
        torch_runs = measured[batch, "pytorch"]
        for arm in arms:
            runs = [v for v in measured[batch, arm] if v]
            if not runs:
                print(f"{batch:>5}  {arm:<8}  no ok run")
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
                if arm == "pytorch" or len(pairs) < 2:
                    ratios.append("")
                    continue
                est = stats.paired_interval(stats.log_ratios(pairs))
                ratios.append("{:.2f}x [{:.2f}-{:.2f}]".format(*(math.exp(x) for x in (est.effect, est.low, est.high))))
            print(f"{batch:>5}  {arm:<8}  {p50:14.2f}  {ips:10.1f}  {ratios[0]:<21}  {ratios[1]}")


if __name__ == "__main__":
    main()
