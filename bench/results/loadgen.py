"""MLPerf LoadGen's logs read back: its verdict, its numbers, and the row's scenario columns. No TensorFlow.

LoadGen (`mlperf_loadgen`, run by `bench.runner.scenario`) writes per test, in its output folder:
`mlperf_log_summary.txt` (what MLPerf's tools and people read: "Result is : VALID" or "INVALID", the
conditions, LoadGen's recommendations), `mlperf_log_detail.txt` (one `:::MLLOG {json}` line per key:
the requested and effective settings, every result) and, in accuracy mode, `mlperf_log_accuracy.json`
(each sample's response bytes). Everything the row says comes from these files, never from the
harness's own clocks: the row is LoadGen's measurement.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

DETAIL_LOG = "mlperf_log_detail.txt"
SUMMARY_LOG = "mlperf_log_summary.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
MLLOG_PREFIX = ":::MLLOG "

# The percentile each scenario reports (MLPerf's rules; LoadGen's defaults) and where LoadGen puts it.
SCENARIO_PERCENTILE = {"SingleStream": 90, "MultiStream": 99, "Server": 99}
# The response each sample gets from the system under test: its predicted class as one little-endian int64.
RESPONSE_FORMAT = "<q"


@dataclasses.dataclass(frozen=True)
class Performance:
    """LoadGen's result of one performance run."""

    scenario: str
    valid: bool
    reason: str  # why INVALID, in LoadGen's words ("" when VALID)
    samples_per_sec: float
    latency_percentile: int | None  # the scenario's percentile (None: Offline reports throughput only)
    latency_ms: float | None  # that percentile: early-stopping estimate (SingleStream/MultiStream), measured (Server)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    queries: int
    samples_per_query: int
    duration_s: float  # queries x mean latency for the stream scenarios; LoadGen's own count otherwise
    min_duration_s: float  # LoadGen's effective settings
    min_query_count: int  # as asked (Offline counts samples: its one query holds them all)
    target_qps: float | None  # Server: the requested arrival rate
    target_latency_ms: float | None  # Server: the latency bound


@dataclasses.dataclass(frozen=True)
class Result:
    """What a scenario run measured, for its row: LoadGen's performance result, its accuracy, and where the logs are."""

    performance: Performance | None
    shortened: bool  # LoadGen's minimum duration or query count set below MLPerf's
    accuracy: float | None = None  # top-1 from LoadGen's accuracy log (accuracy mode)
    accuracy_correct: int | None = None
    accuracy_images: int | None = None
    evaluation_correct: int | None = None  # the training-mode evaluation of the same weights
    evaluation_images: int | None = None
    summary_log: str = ""
    detail_log: str = ""

    @property
    def accuracy_check(self):
        """'match (...)' when LoadGen's top-1 and the evaluation count the same correct images of the same
        number; else 'DIFFERS (...)'; '' without an accuracy run."""
        if self.accuracy_correct is None:
            return ""
        what = (
            f"loadgen {self.accuracy_correct}/{self.accuracy_images}, "
            f"evaluation {self.evaluation_correct}/{self.evaluation_images}"
        )
        same = (self.accuracy_correct, self.accuracy_images) == (self.evaluation_correct, self.evaluation_images)
        return f"match ({what})" if same else f"DIFFERS ({what})"


def read_detail(folder):
    """{key: value} of LoadGen's detail log (the last value of a key repeated)."""
    values = {}
    with open(os.path.join(folder, DETAIL_LOG), encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(MLLOG_PREFIX):
                entry = json.loads(line[len(MLLOG_PREFIX) :])
                values[entry["key"]] = entry["value"]
    return values


def read_conditions(folder):
    """The summary's conditions LoadGen found unmet ("Min duration satisfied : NO" -> "min duration not met")."""
    unmet = []
    with open(os.path.join(folder, SUMMARY_LOG), encoding="utf-8") as fh:
        for line in fh:
            what, sep, answer = line.strip().partition(":")
            if sep and what.strip().endswith("satisfied") and answer.strip().upper() == "NO":
                unmet.append(what.strip().removesuffix("satisfied").strip().lower() + " not met")
    return unmet


def _ms(ns):
    return None if ns in (None, 0) else float(ns) / 1e6


def performance(folder, scenario) -> Performance:
    """LoadGen's performance result from the logs in `folder`."""
    d = read_detail(folder)
    per_query = "_per_query" if scenario == "MultiStream" else ""

    def pct(q):
        return _ms(d.get(f"result_{q:.2f}_percentile{per_query}_latency_ns"))

    samples_per_query = int(d.get("effective_samples_per_query", 1))
    queries = int(d.get("result_query_count", 0))
    mean_ms = _ms(d.get(f"result_mean{'_query' if per_query else ''}_latency_ns")) or 0.0
    if scenario == "Offline":
        rate = float(d["result_samples_per_second"])
    elif scenario == "Server":
        rate = float(d["result_completed_samples_per_sec"])
    elif scenario == "SingleStream":
        rate = float(d["result_qps_with_loadgen_overhead"])
    else:  # MultiStream reports latencies only; its queries run back to back
        rate = samples_per_query * 1000.0 / mean_ms if mean_ms else 0.0
    percentile = SCENARIO_PERCENTILE.get(scenario)
    if scenario == "SingleStream":
        latency = _ms(d.get("early_stopping_latency_ss"))
    elif scenario == "MultiStream":
        latency = _ms(d.get("early_stopping_latency_ms"))
    else:
        latency = pct(99.0) if scenario == "Server" else None
    valid = d.get("result_validity") == "VALID"
    reason = "" if valid else _reason(d, read_conditions(folder))
    return Performance(
        scenario=scenario,
        valid=valid,
        reason=reason,
        samples_per_sec=rate,
        latency_percentile=percentile,
        latency_ms=latency,
        p50_ms=pct(50.0),
        p90_ms=pct(90.0),
        p99_ms=pct(99.0),
        queries=queries,
        samples_per_query=samples_per_query,
        duration_s=queries * samples_per_query / rate if rate else 0.0,
        min_duration_s=float(d.get("effective_min_duration_ms", 0)) / 1000.0,
        min_query_count=int(d.get("requested_min_query_count", 0)),  # Offline: samples (its one query)
        target_qps=float(d["effective_target_qps"]) if scenario == "Server" else None,
        target_latency_ms=_ms(d.get("effective_target_latency_ns")) if scenario == "Server" else None,
    )


def _reason(detail, unmet):
    """Why LoadGen said INVALID: the unmet conditions, its recommendation, its early-stopping note and errors."""
    parts = list(unmet)
    if detail.get("result_perf_constraints_met") is False and "performance constraints not met" not in parts:
        parts.append("performance constraints not met")
    for key in ("result_invalid_reason", "error_runtime"):
        text = " ".join(str(detail.get(key) or "").split())
        if text:
            parts.append(text)
    if detail.get("early_stopping_met") is False:
        parts.append("early stopping: " + " ".join(str(detail.get("early_stopping_result", "")).split()))
    return "; ".join(parts) or "LoadGen said INVALID (see its summary log)"


def predictions(folder):
    """{QSL index: predicted class} from LoadGen's accuracy log (each response one int64, `RESPONSE_FORMAT`)."""
    with open(os.path.join(folder, ACCURACY_LOG), encoding="utf-8") as fh:
        entries = json.load(fh)
    return {int(e["qsl_idx"]): struct.unpack(RESPONSE_FORMAT, bytes.fromhex(e["data"]))[0] for e in entries}


def top1(predicted, labels):
    """(correct, images): how many of LoadGen's responses name the label. Every QSL sample must be answered."""
    missing = len(labels) - len(predicted)
    if missing:
        raise ValueError(f"LoadGen's accuracy log answers {len(predicted)} of {len(labels)} images")
    return sum(int(predicted[i] == int(label)) for i, label in enumerate(labels)), len(labels)


def config_columns(cfg):
    """The scenario columns a row takes from its configuration (also a run that failed before measuring)."""
    if cfg.mode != "inference":
        return {}
    columns = {"scenario": cfg.scenario}
    if cfg.scenario != "none":
        columns["loadgen_mode"] = cfg.loadgen_mode
    return columns


def result_columns(result: Result | None):
    """The scenario columns of a row from LoadGen's result (nothing for a run without one)."""
    if result is None:
        return {}
    columns = {
        "loadgen_shortened": result.shortened,
        "loadgen_accuracy": result.accuracy,
        "accuracy_check": result.accuracy_check,
        "loadgen_summary_log": result.summary_log,
        "loadgen_detail_log": result.detail_log,
    }
    p = result.performance
    if p:
        columns.update(
            loadgen_result="VALID" if p.valid else "INVALID",
            loadgen_invalid_reason=p.reason,
            loadgen_latency_percentile=p.latency_percentile,
            loadgen_latency_ms=p.latency_ms,
            loadgen_queries=p.queries,
            loadgen_samples_per_query=p.samples_per_query,
            loadgen_target_qps=p.target_qps,
            loadgen_target_latency_ms=p.target_latency_ms,
            loadgen_min_duration_s=p.min_duration_s,
            loadgen_min_query_count=p.min_query_count,
        )
    return columns
