"""How a finished run's row reads on the console: one aligned line per topic (the row itself is `rows`)."""

from __future__ import annotations

import os

from bench.results import conditions


def summary_text(row, results_path):
    """The console summary of a row, one aligned line per topic."""

    def fmt(key, spec=""):
        v = row.get(key)
        return "-" if v in (None, "") else format(v, spec)

    workers = (
        f", {row['num_workers']} workers on {row.get('host')}, restarts {fmt('restarts')}"
        if row.get("num_workers")
        else ""
    )
    lines = [
        ("status", fmt("status") + (f" ({row['error']})" if row.get("error") else "")),
        (
            "model",
            f"ResNet-{row['depth']} {row['block']}/{row['shortcut']}, {fmt('params', ',')} params, "
            f"{fmt('batch_norm')} BN",
        ),
        (
            "devices",
            f"{fmt('num_replicas')} x {fmt('device')} ({row['strategy']}, {row['precision']}"
            f"{', XLA' if row['xla'] else ''}{', oneDNN' if row.get('onednn') else ''}{workers})",
        ),
        (
            "images/sec",
            f"{fmt('images_per_sec', '.1f')} ± {fmt('images_per_sec_stderr', '.1f')} "
            f"(jitter {fmt('jitter', '.1f')}, {fmt('timed_steps')} timed steps"
            f"{', the chief' + chr(39) + 's windows' if workers else ''})",
        ),
        (
            "latency" if row.get("mode") == "inference" else "step time",
            f"p50 {fmt('step_time_p50_ms', '.1f')} / p90 {fmt('step_time_p90_ms', '.1f')} / "
            f"p99 {fmt('step_time_p99_ms', '.1f')} ms",
        ),
        ("compile", f"{fmt('compile_s', '.1f')} s (first step at {fmt('time_to_first_step_s', '.1f')} s)"),
        (
            "MFU",
            f"{fmt('mfu', '.1%')} of {fmt('peak_gflops', '.0f')} GFLOP/s measured peak"
            + (f" ({row['peak_scope']})" if workers and row.get("peak_scope") else "")
            + (
                f"; {fmt('mfu_datasheet', '.1%')} of the datasheet's {fmt('datasheet_tflops', '.1f')} TFLOP/s"
                f"{' (TF32)' if row.get('tf32') else ''}"
                if row.get("datasheet_tflops")
                else ""
            ),
        ),
        *(
            [("augment", f"{fmt('augment')}; skipped steps (fp16 overflow): {fmt('skipped_steps')}")]
            if row.get("mode") != "inference"
            else []
        ),
        (
            "test accuracy",
            f"{fmt('test_accuracy', '.4f')} (best {fmt('best_test_accuracy', '.4f')}, data {fmt('data')})",
        ),
        ("FLOPs", f"{fmt('total_flops', '.3g')} in all; MFU's peak {fmt('peak_origin')}"),
        ("machine", conditions.machine_line(row)),
        ("results", f"{results_path} (run {row['run_id']})"),
        *(
            [("MLPerf log", os.path.join(os.path.dirname(results_path), row["mlperf_log"]))]
            if row.get("mlperf_log")
            else []
        ),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join([f"{k:<{width}}  {v}" for k, v in lines] + conditions.warnings(row))
