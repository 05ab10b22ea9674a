"""MLPerf Inference scenarios: MLPerf's LoadGen drives the harness's compiled forward function (`--scenario`).

`python -m bench.run --mode inference --scenario SingleStream|MultiStream|Server|Offline` measures
inference the way MLPerf Inference does: LoadGen (`mlperf_loadgen`, MLCommons' own load generator)
issues the queries, times them, applies its minimum duration and query count with early stopping,
and says VALID or INVALID in its own logs; the row is read from those logs (`bench.results.loadgen`).

    QuerySampleLibrary    the test images of --data (synthetic, tfds or files) as one NumPy array, read once
    SystemUnderTest       queries queue up; one worker thread takes what is queued, up to the scenario's
                          batch (SingleStream 1, MultiStream its samples per query, Server and Offline
                          --batch_size: dynamic batching), pads it to a bucket (powers of two up to the
                          batch: XLA compiles one executable per shape) and calls `Inference.predict` (the
                          model, precision, XLA and BN setting the run resolved); each sample's response is
                          its predicted class
    ScenarioRun           warm-up of every bucket (the compile, and the latency LoadGen is told to expect),
                          LoadGen's performance and/or accuracy test, then `Measured` for the row

LoadGen's settings are MLPerf's (its built-in mlperf.conf for a model it does not know: every model's
defaults, 600 s minimum duration), with the run's overrides (`--min_duration_s`, `--min_query_count`,
`--target_qps`, `--target_latency_ms`, `--samples_per_query`); a minimum below MLPerf's marks the row
shortened. The accuracy test answers every test image once through the same system; its top-1 is
checked against the training mode's evaluation of the same weights (`Inference.evaluate`), and a
difference fails the run. Logs: `<results folder>/loadgen/<run_id>/<performance|accuracy>/`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import threading
import time

import mlperf_loadgen as lg
import numpy as np

from bench.config import exits, options
from bench.results import loadgen, metrics
from bench.results.rows import Measured
from bench.training import data

MODEL_NAME = "resnet-cifar"  # not an MLPerf model: mlperf.conf's settings for every model ("*") apply
# Stream scenarios: LoadGen is told to expect a quarter of the warm-up's latency, so it generates ~4x the
# queries its minimums need; it stops issuing once they are met (a generated query costs ~100 bytes).
STREAM_EXPECTATION = 0.25
# Offline issues one query of every sample it generated and cannot stop early: generated for 1.5x the
# warm-up's fastest call's rate, a real rate faster than the warm-up's still fills the minimum duration
# (with the median instead, a sweep's loaded warm-up left a shortened run INVALID: "Increase expected QPS").
OFFLINE_EXPECTATION = 1.5
MIN_WARMUP_CALLS = 2  # per bucket: the first compiles, the rest give the latency to expect
STOP_GRACE_S = 3.0  # after a stop request, how long LoadGen's test may take to end before it is left running


def max_batch(cfg):
    """The largest batch the system under test runs (`options.scenario_batch`)."""
    return options.scenario_batch(cfg)


def samples_per_query(cfg):
    return cfg.samples_per_query or options.MULTISTREAM_SAMPLES


def buckets(largest):
    """Batch sizes the system runs (a batch is padded up to the next): powers of two below `largest`, and it."""
    sizes = [1 << k for k in range(largest.bit_length()) if 1 << k < largest]
    return sizes + [largest]


def mlperf_settings(scenario, mode="performance"):
    """LoadGen's `TestSettings` with MLPerf's defaults for `scenario` (its built-in mlperf.conf)."""
    settings = lg.TestSettings()
    if settings.FromConfig(os.devnull, MODEL_NAME, scenario, 0):  # 0: mlperf.conf only, no user.conf
        raise RuntimeError(f"LoadGen could not read its mlperf.conf for {scenario}")
    settings.scenario = getattr(lg.TestScenario, scenario)
    settings.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    return settings


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What the warm-up measured, told to LoadGen so it generates enough queries."""

    latency_s: dict  # bucket -> median seconds per call after the compiling one
    compile_s: float  # the first calls (trace and compile) beyond a typical call, summed over buckets
    fastest_s: dict = dataclasses.field(default_factory=dict)  # bucket -> the fastest call after the compiling one


def test_settings(cfg, mode, expect: Expectation):
    """(LoadGen's settings for this run and mode, shortened): MLPerf's, with the run's overrides."""
    settings = mlperf_settings(cfg.scenario, mode)
    defaults = (settings.min_duration_ms, settings.min_query_count)
    if cfg.min_duration_s is not None:
        settings.min_duration_ms = max(1, round(cfg.min_duration_s * 1000))
    if cfg.min_query_count is not None:
        settings.min_query_count = cfg.min_query_count
    largest = max_batch(cfg)
    if cfg.scenario == "SingleStream":
        settings.single_stream_expected_latency_ns = max(1, int(expect.latency_s[1] * 1e9 * STREAM_EXPECTATION))
    elif cfg.scenario == "MultiStream":
        settings.multi_stream_samples_per_query = samples_per_query(cfg)
        calls = math.ceil(samples_per_query(cfg) / largest)
        latency = expect.latency_s[largest] * calls
        settings.multi_stream_expected_latency_ns = max(1, int(latency * 1e9 * STREAM_EXPECTATION))
    elif cfg.scenario == "Server":
        settings.server_target_qps = cfg.target_qps
        if cfg.target_latency_ms is not None:
            settings.server_target_latency_ns = round(cfg.target_latency_ms * 1e6)
    else:
        fastest = expect.fastest_s.get(largest, expect.latency_s[largest])  # the warm-up's best: loaded calls lie low
        settings.offline_expected_qps = largest / fastest * OFFLINE_EXPECTATION
    shortened = settings.min_duration_ms < defaults[0] or settings.min_query_count < defaults[1]
    return settings, shortened


class SystemUnderTest:
    """LoadGen's system under test: queries queue up, one worker thread answers them in batches.

    `predict(uint8 images) -> classes` is the harness's compiled forward function. The worker takes
    everything queued, up to `largest` samples, pads it with blank images to the next bucket and
    answers each sample with its predicted class (`loadgen.RESPONSE_FORMAT`). A failure in the worker
    answers the rest without computing (LoadGen would otherwise wait forever) and is raised by `raise_failure`;
    so does a stop request (Ctrl-C, SIGTERM): LoadGen then ends within seconds and the run says it was
    stopped.
    """

    def __init__(self, predict, images, largest):
        self.predict, self.images, self.largest = predict, images, largest
        self.sizes = buckets(largest)
        self.stop_requested = None  # a signal's name: answer without computing
        self.failure = None
        self.completed = 0
        self._queue = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._blank = np.zeros((largest,) + data.IMAGE_SHAPE, np.uint8)
        self._worker = threading.Thread(target=self._serve, name="sut-worker", daemon=True)
        self._worker.start()

    def bucket(self, n):
        return next(size for size in self.sizes if size >= n)

    def classes(self, indices):
        """Predicted classes of the QSL images at `indices` (padded to a bucket, the padding dropped)."""
        batch = self.images[np.asarray(indices)]
        padded = self.bucket(len(indices))
        if padded > len(indices):
            batch = np.concatenate([batch, self._blank[: padded - len(indices)]])
        return np.asarray(self.predict(batch))[: len(indices)].astype(np.int64)

    # -- LoadGen's callbacks (its threads) --

    def issue_queries(self, samples):
        with self._ready:
            self._queue.extend((s.id, s.index) for s in samples)
            self._ready.notify()

    def flush_queries(self):
        pass  # every query is answered as soon as it is computed

    # -- the worker --

    def _serve(self):
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                taken = [self._queue.popleft() for _ in range(min(self.largest, len(self._queue)))]
            ids = [i for i, _ in taken]
            if self.failure is None and not self.stop_requested:
                try:
                    answers = self.classes([index for _, index in taken])
                except Exception as exc:  # noqa: BLE001 - raised on the main thread once LoadGen has ended
                    self.failure = exc
            if self.failure is not None or self.stop_requested:
                answers = np.full(len(ids), -1, np.int64)
            self._complete(ids, answers)

    def _complete(self, ids, answers):
        buffer = np.ascontiguousarray(answers, dtype=np.dtype(loadgen.RESPONSE_FORMAT))
        size = buffer.itemsize
        base = buffer.ctypes.data
        responses = [lg.QuerySampleResponse(qid, base + k * size, size) for k, qid in enumerate(ids)]
        lg.QuerySamplesComplete(responses)  # LoadGen copies what it logs before returning: `buffer` may go
        self.completed += len(ids)

    def close(self):
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._worker.join()

    def raise_failure(self):
        if self.failure is not None:
            raise self.failure


class ScenarioRun:
    """One `--scenario` run: warm-up, LoadGen's test(s), the record the row is built from (`run() -> Measured`).

    It replaces the controller for this run (`bench.runner.benchmark` calls `run`, or `measured` after a
    crash; a signal sets `stop_requested`).
    """

    def __init__(self, cfg, workload, source, run_id, out=None, monitor=None):
        self.cfg, self.workload, self.out = cfg, workload, out or sys.stdout
        # the machine's state (bench.hardware.machine.MachineMonitor), read around the warm-up and LoadGen's
        # tests as the controller reads it around windows: the performance test is the timed window
        self.monitor = monitor
        self.log_root = os.path.join(os.path.dirname(os.path.abspath(cfg.results)), "loadgen", run_id)
        self.weights = workload.restore_weights(cfg.checkpoint_dir) if cfg.checkpoint_dir else "fresh (seed)"
        self.images, self.labels = data.test_arrays(source, cfg.seed)
        self.sut = None
        self.step = 0
        self._stop = None
        self._record = {}

    @property
    def stop_requested(self):
        return self._stop

    @stop_requested.setter
    def stop_requested(self, name):
        self._stop = name
        if self.sut is not None:
            self.sut.stop_requested = name

    def say(self, text):
        print(text, file=self.out, flush=True)

    def run(self) -> Measured:
        """Warm up, run LoadGen's test(s), check the accuracy; return what was measured."""
        cfg = self.cfg
        self.sut = SystemUnderTest(self.workload.predict, self.images, max_batch(cfg))
        self.sut.stop_requested = self._stop
        if self.monitor:
            self.monitor.start()
        try:
            with self._window("warmup"):
                expect = self.warm_up()
            self._record.update(compile_s=expect.compile_s, first_step_at=time.perf_counter())
            modes = ("performance", "accuracy") if cfg.loadgen_mode == "both" else (cfg.loadgen_mode,)
            for mode in modes:
                if self._stop:
                    break
                with self._window("timed" if mode == "performance" else "untimed"):
                    self._record[mode] = self.loadgen_test(mode, expect)
        finally:
            self.sut.close()
        return self.measured()

    @contextlib.contextmanager
    def _window(self, kind):
        """The monitor's readings just before and just after a stretch of work of `kind` (as a window's)."""
        if self.monitor:
            self.monitor.before(kind)
        try:
            yield
        finally:
            if self.monitor:
                self.monitor.after(kind)

    def warm_up(self) -> Expectation:
        """Every bucket called `max(--warmup_steps, 2)` times: the first compiles; the median of the rest is
        the latency LoadGen is told to expect."""
        calls = max(self.cfg.warmup_steps, MIN_WARMUP_CALLS)
        latency, fastest, compile_s = {}, {}, 0.0
        for size in self.sut.sizes:
            indices = np.arange(size) % len(self.images)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                self.sut.classes(indices)  # the classes are read back: the call has finished
                times.append(time.perf_counter() - start)
            latency[size], fastest[size] = statistics.median(times[1:]), min(times[1:])
            compile_s += max(0.0, times[0] - latency[size])
        shown = ", ".join(f"{b}: {t * 1e3:.2f} ms" for b, t in latency.items())
        self.say(f"warm-up ({calls} calls per batch size; median latency {shown}); compile {compile_s:.1f} s")
        return Expectation(latency, compile_s, fastest)

    def loadgen_test(self, mode, expect):
        """One LoadGen test (performance or accuracy) through the system; its logs' folder and its wall time."""
        cfg = self.cfg
        settings, shortened = test_settings(cfg, mode, expect)
        folder = os.path.join(self.log_root, mode)
        os.makedirs(folder, exist_ok=True)
        output = lg.LogOutputSettings()
        output.outdir = folder
        log_settings = lg.LogSettings()
        log_settings.log_output = output
        log_settings.enable_trace = False
        what = (
            "every test image once"
            if mode == "accuracy"
            else (
                f"min duration {settings.min_duration_ms / 1000:g} s, min queries {settings.min_query_count}"
                + (" (shortened: not MLPerf's minimums)" if shortened else "")
            )
        )
        self.say(f"LoadGen {cfg.scenario} {mode}: {what}; {len(self.images)} images; logs in {folder}")
        count = len(self.images)
        sut = lg.ConstructSUT(self.sut.issue_queries, self.sut.flush_queries)
        qsl = lg.ConstructQSL(count, count, lambda _: None, lambda _: None)  # every image is in memory already
        started = time.perf_counter()
        # In a thread of its own, so that this (main) thread still runs the signal handlers
        test = threading.Thread(
            target=lg.StartTestWithLogSettings, args=(sut, qsl, settings, log_settings), daemon=True
        )
        test.start()
        abandoned = False
        try:
            abandoned = self._wait(test)
        finally:
            if not abandoned:  # LoadGen still holds them while its test runs
                lg.DestroyQSL(qsl)
                lg.DestroySUT(sut)
        seconds = time.perf_counter() - started
        self.sut.raise_failure()
        self.step = self.sut.completed  # samples answered by the system so far, over every test of the run
        return {"folder": folder, "seconds": seconds, "shortened": shortened, "abandoned": abandoned}

    def _wait(self, test):
        """Wait for LoadGen's test; True when a stop request made this thread leave it running.

        After a stop the system answers every query unrun, so SingleStream, MultiStream and Offline end in
        moments; a Server test issues its queries on a clock until its minimum duration (up to 600 s), and
        LoadGen has no way to cancel a test. Past `STOP_GRACE_S` the test is left running: the run goes on
        to its interrupted row, and the command ends its process at once when it has its exit status
        (`exits.left_running`), instead of waiting for LoadGen's clock.
        """
        stopped_at = None
        while test.is_alive():
            test.join(0.2)
            if self._stop and stopped_at is None:
                stopped_at = time.monotonic()
            if stopped_at is not None and test.is_alive() and time.monotonic() - stopped_at > STOP_GRACE_S:
                exits.left_running(f"LoadGen's {self.cfg.scenario} test (it has no way to be cancelled)")
                return True
        return False

    def measured(self, status=None, error=None) -> Measured:
        """The record of what was measured (`status`/`error` override: a crash)."""
        record, cfg = self._record, self.cfg
        perf = acc = None
        # after a stop the queries still issued were answered without computing: LoadGen's numbers would count them
        if "performance" in record and not self._stop:
            perf = loadgen.performance(record["performance"]["folder"], cfg.scenario)
            p = perf
            self.say(
                f"LoadGen: {'VALID' if p.valid else 'INVALID'}"
                + (f" ({p.reason})" if not p.valid else "")
                + f"; {p.samples_per_sec:.1f} samples/s"
                + (f"; p{p.latency_percentile} {p.latency_ms:.2f} ms" if p.latency_ms is not None else "")
                + f"; p50 {p.p50_ms:.2f} / p90 {p.p90_ms:.2f} / p99 {p.p99_ms:.2f} ms over {p.queries} queries"
            )
        eval_accuracy = None
        if "accuracy" in record and not self._stop:
            acc, eval_accuracy = self._accuracy(record["accuracy"]["folder"])
        shown = record.get("performance") or record.get("accuracy") or {}
        folder = shown.get("folder")
        result = loadgen.Result(
            performance=perf,
            shortened=bool(shown.get("shortened")),
            **acc or {},
            # a test left running after a stop has written no summary yet (its detail log is partly written)
            summary_log=os.path.join(folder, loadgen.SUMMARY_LOG) if folder and not shown.get("abandoned") else "",
            detail_log=os.path.join(folder, loadgen.DETAIL_LOG) if folder else "",
        )
        status = status or ("interrupted" if self._stop else "ok")
        if error is None and self._stop:
            error = f"stopped by {self._stop}; no result (LoadGen's logs count the queries answered unrun after it)"
            if shown.get("abandoned"):
                error = f"stopped by {self._stop}; no result (LoadGen's {cfg.scenario} test was left unfinished)"
        error = error or ""
        if status == "ok" and result.accuracy_check.startswith("DIFFERS"):
            status, error = (
                "failed",
                f"LoadGen's top-1 differs from the evaluation of the same weights: {result.accuracy_check}",
            )
        timed = None
        if perf and perf.samples_per_sec:
            timed = metrics.Throughput(
                images_per_sec=perf.samples_per_sec,
                images_per_sec_stderr=None,
                jitter=None,
                step_time_p50_ms=perf.p50_ms,
                step_time_p90_ms=perf.p90_ms,
                step_time_p99_ms=perf.p99_ms,
                timed_steps=perf.queries,
                timed_seconds=perf.duration_s,
                windows=perf.queries,
            )
        return Measured(
            status=status,
            error=error,
            steps=self.step,
            timed=timed,
            compile_s=record.get("compile_s"),
            first_step_at=record.get("first_step_at"),
            train_time_s=sum(r["seconds"] for m, r in record.items() if m in ("performance", "accuracy")) or None,
            final_loss=None,
            last_accuracy=eval_accuracy,
            best_accuracy=eval_accuracy,
            time_to_target_s=None,
            steps_to_target=None,
            skipped_steps=None,
            xla_scope=self.workload.xla_scope,
            scenario_result=result,
            machine=self.monitor.state() if self.monitor else None,
        )

    def _accuracy(self, folder):
        """({accuracy fields of loadgen.Result}, the evaluation's accuracy): LoadGen's top-1 against the training
        mode's evaluation of the same weights."""
        correct, images = loadgen.top1(loadgen.predictions(folder), self.labels)
        accuracy, _, evaluated = self.workload.evaluate()
        evaluation_correct = round(accuracy * evaluated)
        self.say(
            f"LoadGen accuracy: top-1 {correct / images:.4f} ({correct}/{images}); the training mode's evaluation "
            f"of the same weights ({self.weights}): {accuracy:.4f} ({evaluation_correct}/{evaluated})"
        )
        fields = dict(
            accuracy=correct / images,
            accuracy_images=images,
            accuracy_correct=correct,
            evaluation_correct=evaluation_correct,
            evaluation_images=evaluated,
        )
        return fields, accuracy
