"""The results table: schema, provenance and a locked append that never rewrites the user's file.

No TensorFlow here: the Ray driver and the report read and write rows with it.

The table is the user's property. Every writer holds a file lock (`<table>.lock`, beside the
symlink-resolved file) while it reads the file, checks that it is a results table of this schema
(anything else is refused untouched) and replaces it with a new file of exactly the bytes it read
plus the row (temporary file, fsync, `os.replace`, the old file's mode; the file is compared with
what was read just before). A crash or a kill at any moment leaves either the old file or the new
one, never half a row. A row the table cannot take is kept beside it (`save_row`), never dropped.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import uuid

import filelock

from bench.config import validation
from bench.config.options import ConfigError

SCHEMA = (
    "run_id",
    "timestamp_utc",
    "status",  # ok | diverged | failed | stopped | interrupted
    "error",
    "sweep",
    "trial_key",
    "git_sha",
    "tf_version",
    "keras_version",
    "python_version",
    "host",
    "device",
    "num_replicas",
    "strategy",
    "loop",
    "n",
    "depth",
    "block",
    "shortcut",
    "sync_bn",
    "batch_norm",  # keras | fused
    "params",
    "flops_per_image",
    "precision",
    "xla",
    "onednn",  # oneDNN CPU kernels (TF_ENABLE_ONEDNN_OPTS) in effect
    "global_batch_size",
    "steps_per_loop",
    "warmup_steps",
    "timed_steps",
    "total_steps",
    "epochs",
    "data",
    "recipe",
    "images_per_sec",
    "images_per_sec_stderr",
    "jitter",
    "step_time_p50_ms",
    "step_time_p90_ms",
    "step_time_p99_ms",
    "compile_s",
    "time_to_first_step_s",
    "train_time_s",
    "peak_gflops",
    "mfu",
    "final_train_loss",
    "test_accuracy",
    "best_test_accuracy",
    "target_accuracy",
    "time_to_target_s",
    "seed",
    "deterministic",
    "command",
    # added later (a file of an older schema takes no rows until `python -m bench.results upgrade FILE`)
    "augment",  # device | host | none (synthetic data)
    "skipped_steps",  # mixed_float16: steps the loss scaling skipped (an overflow on any replica)
    "tf32",  # float32 matmuls/convs ran as TF32 (TensorFlow's default on Ampere and later GPUs)
    "peak_source",  # where the datasheet peak comes from, or why there is none
    "datasheet_tflops",  # dense datasheet peak of the devices used for this precision
    "mfu_datasheet",  # MFU against that datasheet peak (how the field reports MFU)
    "mode",  # train | inference (forward passes only; flops_per_image is then the forward pass's)
    "intra_op_threads",  # TensorFlow's thread pools in effect (0: TensorFlow's default)
    "inter_op_threads",
    "xla_scope",  # none | step (one compiled executable per step) | forward_backward (over replicas) | forward
    "num_workers",  # worker processes of a multi-worker run (empty otherwise)
    "restarts",  # worker-group restarts of a multi-worker run (empty otherwise)
    "comparison",  # id of the A/B comparison (sweeps.compare) the run belongs to (empty otherwise)
    "arm",  # A or B within that comparison
    "sweep_position",  # a sweep trial's 1-based place in the sweep's run order (empty for single runs)
    "peak_measured_at",  # when the measured peak's best reading was taken (UTC): MFU's denominator has a date
    "peak_readings",  # how many readings of the peak that best is over (bench.hardware.peak)
    "peak_load",  # 1-minute load average per core while it was read (above ~0.5: read under load)
    "num_hosts",  # distinct hosts (machines) the workers of a multi-worker run's last attempt ran on
    "peak_scope",  # what peak_gflops covers: one process's devices, or a sum over workers and hosts
    "tuned",  # how the tunable settings were chosen: the --autotune cache key, default or flag (probing: ended in it)
    "autotune_s",  # seconds --autotune took before the run (its probes, or reading its cache); not in time_to_first_step_s
    # MLPerf LoadGen scenario runs (bench.results.loadgen; images_per_sec and step_time_p* are then LoadGen's)
    "scenario",  # inference: SingleStream | MultiStream | Server | Offline, or none (the quick look)
    "loadgen_mode",  # performance | accuracy | both
    "loadgen_result",  # VALID | INVALID: LoadGen's verdict on the performance run
    "loadgen_invalid_reason",  # why INVALID, in LoadGen's words
    "loadgen_latency_percentile",  # the scenario's percentile: 90 (SingleStream), 99 (MultiStream, Server)
    "loadgen_latency_ms",  # that percentile: LoadGen's early-stopping estimate (Server: measured)
    "loadgen_queries",  # queries LoadGen issued in the performance run
    "loadgen_samples_per_query",
    "loadgen_target_qps",  # Server: the Poisson arrival rate asked for
    "loadgen_target_latency_ms",  # Server: the latency bound
    "loadgen_min_duration_s",  # LoadGen's effective minimums
    "loadgen_min_query_count",
    "loadgen_shortened",  # true: a minimum set below MLPerf's (a smoke run, not a result to publish)
    "loadgen_accuracy",  # top-1 from LoadGen's accuracy log over the whole test set
    "accuracy_check",  # match / DIFFERS: that top-1 against the training-mode evaluation of the same weights
    "loadgen_summary_log",  # LoadGen's logs, kept beside the table (<results folder>/loadgen/<run_id>/)
    "loadgen_detail_log",
    # what the run needed and the conditions it was measured in (bench.results.conditions; empty: machine_notes says why)
    "peak_rss_mb",  # peak resident memory of the run's processes during training, summed over workers (MB)
    "peak_rss_by_host",  # ... per host: "node-a 812; node-b 790"
    "peak_anon_mb",  # the highest anonymous resident memory at a window boundary, summed: no libraries' file pages
    "gpu_mem_peak_mb",  # the largest peak memory TensorFlow allocated on one of the run's GPUs (MB)
    "gpu_mem_peak_each_mb",  # ... each GPU's, in device order (over workers: rank order)
    "load_avg_1m",  # the highest 1-minute load average at the timed windows' ends
    "cpu_share",  # CPU time the run's process got in the timed windows / (their wall time x the cores it may use)
    "others_cpu_share",  # CPU time other processes (and a hypervisor's steal) took meanwhile / (wall x the machine's cores)
    "cpu_mhz",  # mean CPU frequency the OS reported at the timed windows' ends
    "contended",  # others_cpu_share >= 0.25: the CPU was shared
    "gpu_sm_clock_start_mhz",  # NVIDIA GPUs (NVML): SM clock at the first timed window's start (lowest GPU)
    "gpu_sm_clock_end_mhz",  # ... at the last timed window's end
    "gpu_power_limit_w",  # enforced power limit (lowest GPU)
    "gpu_max_temp_c",  # highest GPU temperature seen at a window boundary
    "gpu_throttle_reasons",  # clock-lowering reasons seen (power cap, thermal, hardware slowdown), or none
    "throttled",  # some GPU lowered its clocks during the timed windows
    "rate_cv",  # coefficient of variation of the timed windows' images/sec
    "slowest_window_ratio",  # the slowest timed window's time per step / the median window's
    "unstable",  # rate_cv >= 10% or slowest_window_ratio >= 1.5 (judged with 3 timed windows or more)
    "machine_notes",  # what the machine could not tell, and why ("GPU: no NVIDIA GPU")
    "total_flops",  # FLOPs of every step the run made: flops_per_image x global batch x total_steps
    "peak_origin",  # where MFU's peak came from: measured, the compute dtype, when, readings, load
    "system",  # the machine's system description: <results folder>/systems/<system>.json (workers: "; ")
    "launcher",  # multi-worker runs: ray (Ray Train) or tf_config (plain processes with TF_CONFIG)
    # #24 MLPerf: the run's log, and convergence (bench/results/mlperf_log.py, scoring.py, convergence.py)
    "epochs_to_target",  # epochs trained when the test accuracy first reached target_accuracy (empty: never)
    "samples_to_target",  # ... the same in training images
    "lr_scale",  # --lr_scale: the factor on the recipe's learning rates (1: the papers')
    "mlperf_log",  # the run's MLPerf log (mlperf_logging.mllog), relative to this table's folder
)

STATUSES = ("ok", "diverged", "failed", "stopped", "interrupted")  # stopped: by ASHA; interrupted: Ctrl-C, SIGTERM


UPGRADE_COMMAND = "python -m bench.results upgrade"  # bench/results/__main__.py


class ResultsError(ConfigError):
    """The results file cannot take rows (not a results table, an older schema, not writable, changed meanwhile).

    Bad input when found up front (exit 2); found while writing a finished run's row, the row is kept
    elsewhere (`save_row`)."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_sha(path=None):
    """HEAD of the checkout holding this code, `-dirty` if tracked files outside results/ changed; '' outside git."""
    where = path or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # results/ holds data, not code: a user's rows or regenerated examples never make a run "dirty"
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(exclude,top)results"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("-dirty" if dirty else "")


def base_provenance():
    """The fields that need no TensorFlow."""
    return {
        "git_sha": git_sha(),
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
    }


def table_path(path):
    """Where rows of `path` really go: symlinks followed (a link's target gets the row, the link stays)."""
    return os.path.realpath(path)


def _header_of(path):
    """The header's column names; None for an empty (0-byte) file. ResultsError if it is not text."""
    with open(path, "rb") as fh:
        raw = fh.readline(1 << 16)
    if not raw:
        return None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line = "\x00"
    if "\x00" in line:
        raise ResultsError(f"{path} is not a results table (not UTF-8 text: a binary file?)")
    return tuple(next(csv.reader([line]), []))


def _older_schema(header):
    """True if `header` is an earlier version of SCHEMA: only columns added since, order kept."""
    if not header or len(set(header)) != len(header) or not set(header) < set(SCHEMA):
        return False
    positions = [SCHEMA.index(c) for c in header]
    return positions == sorted(positions)


def _first_difference(header):
    """Where `header` stops matching SCHEMA, in words (names shown with repr: a BOM or a space is visible)."""
    if not header or header == ("",):
        return "the first line is empty"
    for i, (got, want) in enumerate(zip(header, SCHEMA)):
        if got != want:
            return f"column {i + 1} is {got!r}, expected {want!r}"
    if len(header) < len(SCHEMA):
        return f"it ends after column {len(header)}; column {len(header) + 1} should be {SCHEMA[len(header)]!r}"
    return f"column {len(SCHEMA) + 1} is {header[len(SCHEMA)]!r}, after the last one of ours"


def check_header(path, older_ok=True):
    """Raise ResultsError unless the file at `path` is empty or has this schema (or, if `older_ok`, an earlier one).

    Nothing else counts as a results table: a user's other CSV, a file with a BOM or `, `
    between names, a binary file, or one whose first line is empty are refused untouched.
    """
    header = _header_of(path)
    if header is None or header == SCHEMA:
        return
    if _older_schema(header):
        if older_ok:
            return
        missing = [c for c in SCHEMA if c not in header]
        raise ResultsError(
            f"{path} was written by an older version (no columns {', '.join(missing)}): this version's rows "
            f"would lose them there, so nothing is appended; use a new --results file, or convert this one "
            f"once with: {UPGRADE_COMMAND} {path}"
        )
    hint = "; use another --results file" if not older_ok else ""  # appending there; reading names its own flag
    raise ResultsError(f"{path} is not a results table (header: {_first_difference(header)}){hint}")


def check_results_path(path):
    """Raise ResultsError unless rows can be appended to `path` (nothing is written).

    The thorough check of a user's path, which creates a probe file, is
    `bench.config.validation.validate`; this one guards every append.
    """
    real = table_path(path)
    if os.path.isdir(real):
        raise ResultsError(f"results path {path} is a folder; give a CSV file path")
    if os.path.exists(real):
        if not os.path.isfile(real):
            raise ResultsError(f"results path {path} is not a regular file")
        if not os.access(real, os.W_OK):
            raise ResultsError(f"results file {path} is not writable")
        links = os.stat(real).st_nlink
        if links > 1:  # the table is replaced by a new file: its other names would keep the old one
            raise ResultsError(
                f"results file {path} has {links} hard links; rows would reach only one of them "
                "(use a symlink or a copy)"
            )
        check_header(real, older_ok=False)


def _format(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_row(row):
    """The CSV line (with newline) of a row dict; unknown keys are an error."""
    unknown = set(row) - set(SCHEMA)
    if unknown:
        raise KeyError(f"not in the results schema: {sorted(unknown)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}; got {row.get('status')!r}")
    return _csv_line(_format(row.get(c)) for c in SCHEMA)


def _csv_line(values):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


def read_rows(path):
    """All rows of a results file as dicts of strings ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _read_bytes(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""


def replace_atomically(path, data, mode=0o644, expect=None):
    """Make `path` hold `data` (bytes) all at once: a temporary file beside it, fsync, `os.replace`.

    Readers and a crash see the old file or the new one, never a part. The new file keeps the old
    one's permission bits (and, where allowed, its owner); a new file gets `mode`. With `expect`
    (bytes), the file is read again right before the replace and must still hold exactly them
    (b"": absent or empty); otherwise ResultsError, and the file stays as its other writer left it.
    """
    try:
        like = os.stat(path)
    except FileNotFoundError:
        like = None
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if expect is not None and _read_bytes(path) != expect:
            raise ResultsError(
                f"{path} changed while the row was being added (a program writing it without "
                "the lock?); it was left as that program wrote it"
            )
        os.chmod(tmp, like.st_mode & 0o7777 if like else mode)
        if like and (like.st_uid, like.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(OSError):  # only root may give a file away; the mode is kept either way
                os.chown(tmp, like.st_uid, like.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_row(path, row, lock_timeout=120):
    """Append one row to the table at `path`. Returns False if its run_id is already there.

    What was in the file is never rewritten: under the lock (`<table>.lock`, beside the symlink-
    resolved file, so writers through a link and through the target share it) the file is read,
    its header checked (this schema only: an older one is refused, see `check_header`), and a new
    file of exactly those bytes plus the row replaces it atomically (temporary file, fsync,
    `os.replace`), with the old file's mode. A crash or a kill at any moment leaves the old file
    or the new one, never half a row. Just before the replace the file is read again and compared
    with what the new file starts with: a program writing it without the lock (an editor) makes
    the append fail with ResultsError instead of losing its change.
    """
    line = format_row(row).encode("utf-8")
    real = table_path(path)
    check_results_path(path)
    os.makedirs(os.path.dirname(real), exist_ok=True)
    with filelock.FileLock(real + ".lock", timeout=lock_timeout):
        check_results_path(path)
        before = _read_bytes(real)
        if before:
            try:
                text = before.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ResultsError(f"{path} is not a results table (not UTF-8 text at byte {err.start})") from None
            run_id = str(row.get("run_id", ""))
            if run_id and any(r.get("run_id") == run_id for r in csv.DictReader(io.StringIO(text, newline=""))):
                return False
            new = before + (b"" if before.endswith(b"\n") else b"\n") + line
        else:
            new = format_header().encode("utf-8") + line
        replace_atomically(real, new, expect=before)
    return True


def save_row(path, row, err=None):
    """Append the row to the table, or, if the table cannot take it, keep it where the error line says.

    Returns where the row is: `path` (appended, or its run_id was already there), a fallback file
    beside the table (`<table>.unsaved-<run_id>.csv`, a one-row table of this schema), or "stderr"
    (the header and the row printed there). A measurement is never lost to an unwritable table.
    """
    err = err or sys.stderr
    try:
        append_row(path, row)
        return path
    except (ResultsError, OSError, filelock.Timeout) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    table = format_header() + format_row(row)
    fallback = f"{os.path.abspath(path)}.unsaved-{row.get('run_id') or uuid.uuid4().hex[:12]}.csv"
    try:
        with open(fallback, "x", newline="", encoding="utf-8") as fh:
            fh.write(table)
        print(f"error: the row was not added to {path} ({problem}); it is in {fallback}", file=err, flush=True)
        return fallback
    except OSError as exc:
        print(
            f"error: the row was not added to {path} ({problem}), nor saved beside it ({exc.strerror}); "
            f"here it is, with the header:\n{table}",
            file=err,
            end="",
            flush=True,
        )
        return "stderr"


def upgrade(path):
    """Rewrite a table of an older schema in this one, at the user's request (`UPGRADE_COMMAND`).

    Its rows keep every value and get empty new columns; the file is replaced atomically (mode kept)
    and the original bytes are kept beside it as `<table>.before-upgrade`. Returns that copy's path.
    An upgrade that fails (the file cannot be replaced: immutable, a read-only folder) leaves the file
    as it was and nothing beside it (neither the copy nor a lock it created), so it can simply be tried
    again; a copy of exactly these bytes left by an earlier version is taken as this one's, another
    file of that name is the user's and refused. Nothing is created for a path that is not a file.
    """
    real = table_path(path)
    if validation.not_a_table_file(path, real):
        raise ResultsError(validation.not_a_table_file(path, real))
    lock_path = real + ".lock"
    new_lock = not os.path.lexists(lock_path)
    try:
        with filelock.FileLock(lock_path, timeout=120):
            return _upgrade_locked(path, real)
    except BaseException:
        if new_lock:  # nothing changed: leave nothing behind (only our own upgrades wait on this new lock)
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
        raise


def _upgrade_locked(path, real):
    header = _header_of(real)
    if header == SCHEMA:
        raise ResultsError(f"{path} already has this version's header")
    if header is None:  # empty: no header, no rows, nothing to convert (the next run writes this version's header)
        raise ResultsError(f"{path} is empty: there is nothing to upgrade (a run writes this version's header there)")
    check_header(real)  # an older schema, or ResultsError
    before = _read_bytes(real)
    rows = list(csv.DictReader(io.StringIO(before.decode("utf-8"), newline="")))
    backup = real + ".before-upgrade"
    if os.path.lexists(backup):
        if not os.path.isfile(backup) or _read_bytes(backup) != before:
            raise ResultsError(f"{backup} exists and is not a copy of {path}; move it away, then upgrade again")
        made = False  # an earlier upgrade that failed left it: the same bytes
    else:
        with open(backup, "xb") as fh:
            fh.write(before)
        made = True
    new = format_header() + "".join(_csv_line(r.get(c) or "" for c in SCHEMA) for r in rows)
    try:
        replace_atomically(real, new.encode("utf-8"))
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.unlink(backup)
        raise
    return backup


def format_header():
    return _csv_line(SCHEMA)
