"""A run's identity: its run id, and `run.json` in the checkpoint folder that ties the restarts of one run together."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid

from bench.config.options import MULTI_WORKER, ConfigError, RunConfig

_UNFINGERPRINTED = (
    "results",
    "tensorboard_dir",
    "profile_steps",
    "profile_dir",
    "checkpoint_every_steps",
    # the folder run.json lives in is the run's, however it is spelled or wherever it moved
    "checkpoint_dir",
    # how a multi-worker run reaches its result does not change which run it is
    "address",
    "max_failures",
    "collective_timeout_s",
    "restart_timeout_s",
    "fail_worker_at_step",
    "launcher",
    "comparison",
    "arm",
    "sweep_position",  # labels of the run, not what it runs
    "autotune",
    "tuned",
    "submission_org",  # who ran it and the platform's name: labels of the MLPerf log
    "submission_platform",
)  # how the settings were chosen (the settings themselves count)
_INPUT_FOLDERS = ("cifar_dir", "tfds_dir")  # compared as the folders they name (`./data`, `data/`, `$PWD/data`)
RUN_FILE = "run.json"


def fingerprint(cfg: RunConfig):
    """The fields that must not change between the restarts of one checkpointed run (JSON-safe)."""
    return comparable(json.loads(json.dumps(dataclasses.asdict(cfg))))


def comparable(config):
    """A fingerprint (a saved one too, written by an earlier version) with paths normalised, unfingerprinted
    fields dropped."""
    kept = {k: v for k, v in config.items() if k not in _UNFINGERPRINTED}
    for name in _INPUT_FOLDERS:
        if isinstance(kept.get(name), str):
            kept[name] = os.path.realpath(os.path.expanduser(kept[name]))
    return kept


def saved_run(cfg: RunConfig):
    """The `run.json` of `cfg.checkpoint_dir` as a dict, or None. ConfigError if it is not one this harness wrote."""
    if not cfg.checkpoint_dir or cfg.scenario != "none":  # a LoadGen run only reads weights there: not its run
        return None
    path = os.path.join(cfg.checkpoint_dir, RUN_FILE)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as err:  # ValueError: not UTF-8, not JSON
        raise ConfigError(
            f"{path} is not a readable run file ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"remove it or use a new --checkpoint_dir"
        ) from None
    if not (isinstance(saved, dict) and isinstance(saved.get("run_id"), str) and isinstance(saved.get("config"), dict)):
        raise ConfigError(
            f"{path} is not a run file of this harness (expected an object with run_id and config); "
            f"remove it or use a new --checkpoint_dir"
        )
    return saved


def new_run_id():
    return uuid.uuid4().hex[:12]


def stable_run_id(cfg: RunConfig):
    """A sweep trial's run id: the same over driver restarts, so its row is written once."""
    return hashlib.sha1(f"{cfg.sweep}|{cfg.trial_key}".encode()).hexdigest()[:12]


def run_id_for(cfg: RunConfig):
    """The run id of a new run: stable for a sweep's trial, random otherwise."""
    return stable_run_id(cfg) if cfg.trial_key else new_run_id()


def task_index():
    """This process's worker index from TF_CONFIG (set by Ray Train for multi-worker runs), 0 without one."""
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    except ValueError:
        return 0
    return int(task.get("index", 0))


def is_chief(cfg: RunConfig):
    """True where a run's own files are written: every single-process run, worker 0 of a multi-worker run."""
    return cfg.strategy != MULTI_WORKER or task_index() == 0


class RunIdentity:
    """`run.json` in the checkpoint folder: one run id for all restarts of the same configuration."""

    def __init__(self, cfg: RunConfig):
        # only the chief of a multi-worker run writes run.json (every single-process run is its own chief)
        writes = cfg.checkpoint_dir and cfg.scenario == "none"  # a LoadGen run only reads weights there
        self.path = os.path.join(cfg.checkpoint_dir, RUN_FILE) if writes and is_chief(cfg) else None
        self.fingerprint = fingerprint(cfg)
        saved = saved_run(cfg)  # validate() made sure it is this configuration's
        self.run_id = saved["run_id"] if saved else run_id_for(cfg)
        self.finished = bool(saved and saved.get("finished"))
        self.saved = saved is not None  # run.json exists (this run wrote it, or an earlier attempt did)
        self.row_in = saved.get("row_in") if saved else None  # where a finished run's row went, if not the table

    def finished_line(self, cfg: RunConfig):
        """What the same command says when its run already finished (no second row)."""
        where = self.row_in or f"the results ({cfg.results})"
        return f"run {self.run_id} in {cfg.checkpoint_dir} already finished; its row is in {where}"

    def conclude(self, row_run_id, status, row_in=None):
        """After the row: ok/diverged runs are finished; a failed or interrupted one may be run again,
        which resumes from its checkpoint as a new measurement with a new run id (its row is written).
        `row_in`: where the row went when the table could not take it (the finished line names it)."""
        done = status in ("ok", "diverged")
        self.run_id = row_run_id if done else new_run_id()
        self.save(finished=done, row_in=row_in)

    def save(self, finished=False, row_in=None):
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        saved = {"run_id": self.run_id, "config": self.fingerprint, "finished": finished}
        if row_in:
            saved["row_in"] = row_in
        with open(tmp, "w") as fh:
            json.dump(saved, fh, indent=1)
        os.replace(tmp, self.path)
        self.saved = True
