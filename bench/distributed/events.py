"""One console line per event of a multi-worker run, and the failed row's error line.

Events come from the collector (`bench.distributed.collector.Collector`): every rank of an attempt
started (where each runs), an attempt failed (each failed rank's error, from the Ray Train
controller's callback, and the step the workers had reached). A failed rank is placed by the host it
reported at start; whether its node is lost is asked of the node's raylet (`hosts.lost_nodes`).

    workers: 0 on node-a (127.0.0.3), 1 on node-b (127.0.0.4)
    node-b (127.0.0.4) lost at step 140; restarting from step 120
    node-b (127.0.0.4) lost at step 140; restarting from step 120 once a node can take its workers (up to --restart_timeout_s=120 s)
    worker 1 on node-b (127.0.0.4) died at step 6; no restarts left (--max_failures 0)
"""

from __future__ import annotations

from bench.config.options import RunConfig
from bench.distributed import hosts

_DEATHS = ("WorkerHealthCheckFailedError", "ActorDiedError", "actor died", "worker process has died")


def _died(error_line):
    return any(mark in error_line for mark in _DEATHS)


class EventLog:
    """Turns the collector's events into lines; remembers what a failed row must say."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.where = {}  # rank -> the latest start record (host, ip, node_id, pid, attempt)
        self.failures = 0
        self.lost = {}  # node id -> label of every node found lost
        self.last_failure = ""  # what happened, for the row's error ("node-b (127.0.0.4) lost at step 140")

    def line(self, event):
        """The console line of one collector event."""
        if event[0] == "started":
            _, attempt, started = event
            self.where.update(started)
            ranks = ", ".join(f"{r} on {hosts.node_label(w)}" for r, w in sorted(started.items()))
            return f"workers: {ranks}" if attempt == 1 else f"restarted (attempt {attempt}): workers {ranks}"
        _, attempt, errors, step = event
        self.failures += 1
        self.last_failure = self._what(errors, step)
        return f"{self.last_failure}; {self._then()}"

    def _what(self, errors, step):
        dead = sorted(r for r, e in errors.items() if _died(e))
        ranks = dead or sorted(errors)
        nodes = {self.where[r]["node_id"] for r in ranks if self.where.get(r, {}).get("node_id")}
        lost = hosts.lost_nodes(nodes) if nodes else set()
        parts, said = [], set()
        for r in ranks:
            where = self.where.get(r, {})
            node = where.get("node_id")
            if node in lost:
                if node not in said:
                    self.lost[node] = hosts.node_label(where)
                    parts.append(f"{hosts.node_label(where)} lost at step {step}")
                    said.add(node)
            elif r in dead:
                parts.append(f"worker {r} on {hosts.node_label(where)} died at step {step}")
            else:
                parts.append(f"worker {r} on {hosts.node_label(where)} failed at step {step} ({errors[r][:200]})")
        return ", ".join(parts)

    def _then(self):
        cfg = self.cfg
        if self.failures > cfg.max_failures:
            return f"no restarts left (--max_failures {cfg.max_failures})"
        then = f"restarting from {self.resume_point()}"
        if self.lost and not hosts.spare_capacity(cfg, set(self.lost)):
            then += f" once a node can take its workers (up to --restart_timeout_s={cfg.restart_timeout_s:g} s)"
        return then

    def resume_point(self):
        """`step 120`, or `the start (...)`: where a restart resumes."""
        if not self.cfg.checkpoint_dir:
            return "the start (no --checkpoint_dir)"
        found = hosts.last_checkpoint(self.cfg.checkpoint_dir)
        return f"step {found[0]}" if found and found[0] is not None else "the start (no checkpoint yet)"

    def checkpoint_note(self):
        """`last checkpoint: step 120 in DIR` for a failed row (the same command again resumes there)."""
        if not self.cfg.checkpoint_dir:
            return "no --checkpoint_dir: nothing to resume from"
        found = hosts.last_checkpoint(self.cfg.checkpoint_dir)
        if not found:
            return f"no checkpoint saved in {self.cfg.checkpoint_dir}"
        return f"last checkpoint: step {found[0]} in {self.cfg.checkpoint_dir}"

    def failure_line(self, exc):
        """One line for a run whose `fit()` raised: what failed (lost hosts first), why it ended, the checkpoint."""
        cause = getattr(exc, "controller_failure", None)
        if cause is not None:  # the controller gave up: no worker group could be started again
            if type(cause).__name__ == "WorkerGroupStartupTimeoutError":
                why = (
                    f"the workers could not be placed{' again' if self.failures else ''} within "
                    f"--restart_timeout_s={self.cfg.restart_timeout_s:g} s"
                )
            else:
                why = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
            text = f"{self.last_failure}; {why}" if self.last_failure else why
        else:
            text = self._worker_failures(getattr(exc, "worker_failures", None) or {}) or (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            )
        return f"{text}; {self.checkpoint_note()}"[:500]

    def _worker_failures(self, failures):
        """Every failed worker, root causes (lost nodes, dead processes) first."""
        parts = []
        for rank, err in sorted(failures.items()):
            text = str(err).strip()
            where = self.where.get(rank, {})
            on = f" on {hosts.node_label(where)}" if where else ""
            if where.get("node_id") in self.lost:
                parts.append((0, f"worker {rank}{on}: its node was lost"))
            elif isinstance(err, RuntimeError) and type(err) is RuntimeError:  # a worker's own failed run
                line = text.splitlines()[0] if text else "failed"
                if "DeadlineExceeded" in line:
                    line += (
                        f" (a collective waited longer than --collective_timeout_s={self.cfg.collective_timeout_s:g})"
                    )
                parts.append((1, f"worker {rank}{on}: {line}"))
            elif _died(f"{type(err).__name__} {text}"):
                parts.append((0, f"worker {rank}{on}: its process died ({type(err).__name__})"))
            else:
                first = f"{type(err).__name__}: {text}".splitlines()[0]
                parts.append((0, f"worker {rank}{on}: {first}"))
        return "; ".join(p for _, p in sorted(parts))
