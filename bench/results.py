"""The results table: schema, provenance and a locked, whole-row-or-nothing append.

No TensorFlow here: the Ray driver and the report read and write rows with it.
Every writer holds a file lock (`<csv>.lock`, via `filelock`) while it reads the
file, checks the header and replaces the file with a copy that has the new row
(write to a temporary file, fsync, `os.replace`). A crash or a kill at any
moment leaves either the old file or the new one, never half a row.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import socket
import subprocess
import tempfile
import uuid

import filelock

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
    # added later (older files are upgraded in place: these stay empty in their rows)
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
)

STATUSES = ("ok", "diverged", "failed", "stopped", "interrupted")  # stopped: by ASHA; interrupted: Ctrl-C, SIGTERM


class ResultsError(ValueError):
    """The results file cannot take rows (foreign header, not writable)."""


def new_run_id():
    return uuid.uuid4().hex[:12]


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


def _read_header(path):
    with open(path, newline="") as fh:
        first = fh.readline()
    if not first.strip():
        return None
    return tuple(next(csv.reader([first])))


def _older_schema(header):
    """True if `header` is an earlier version of SCHEMA: only columns added since, order kept.

    Such a file is upgraded in place by the next append (old rows get empty new columns).
    """
    if len(set(header)) != len(header) or not set(header) < set(SCHEMA):
        return False
    positions = [SCHEMA.index(c) for c in header]
    return positions == sorted(positions)


def check_header(path):
    """Raise ResultsError unless the file at `path` is empty or has this schema (or an earlier one)."""
    header = _read_header(path)
    if header is not None and header != SCHEMA and not _older_schema(header):
        raise ResultsError(
            f"results file {path} has a different header than this version's schema "
            f"({len(header)} columns vs {len(SCHEMA)}); use a new --results file"
        )


def check_results_path(path):
    """Raise ResultsError unless rows can be appended to `path` (nothing is written).

    The thorough check of a user's path, which creates a probe file, is
    `bench.config.validate`; this one guards every append.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ResultsError(f"results path {path} is a folder; give a CSV file path")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise ResultsError(f"results file {path} is not writable")
        check_header(path)


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
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(path, row, lock_timeout=120):
    """Append one row under the file lock, atomically. Returns False if its run_id is already there."""
    check_results_path(path)
    line = format_row(row)
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with filelock.FileLock(path + ".lock", timeout=lock_timeout):
        check_results_path(path)
        existing = ""
        if os.path.exists(path):
            with open(path, newline="") as fh:
                existing = fh.read()
        if existing.strip():
            reader = csv.DictReader(io.StringIO(existing))
            rows = list(reader)
            run_id = str(row.get("run_id", ""))
            if run_id and any(r.get("run_id") == run_id for r in rows):
                return False
            if tuple(reader.fieldnames) != SCHEMA:  # an older schema: rewrite its rows with the new columns
                existing = format_header() + "".join(_csv_line(r.get(c) or "" for c in SCHEMA) for r in rows)
            if not existing.endswith("\n"):
                existing += "\n"
        else:
            existing = format_header()
        fd, tmp = tempfile.mkstemp(prefix=".summary.", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", newline="") as fh:
                fh.write(existing + line)
                fh.flush()
                os.fsync(fh.fileno())
            if os.path.exists(path):
                os.chmod(tmp, os.stat(path).st_mode & 0o777)
            else:
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return True


def format_header():
    return _csv_line(SCHEMA)
