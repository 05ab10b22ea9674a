"""The collector: one per multi-worker run, through which the driver and the workers talk.

The workers report to it (where each runs, its final report, the chief's progress lines through
`LineForwarder`, fault-injection marks) and ask it after every window whether to stop; the Ray
Train controller tells it of every failed attempt (`failure_listener`); the driver reads what is
new while `fit()` runs (`news`), relays a Ctrl-C / SIGTERM (`request_stop`) and reads the whole
`state` at the end. It lives on the driver's node and outlives worker-group restarts.

Plain Python: under Ray Train the driver creates it as an actor (`ray.remote(Collector)`) and the
workers reach it through `ActorClient`; with `--launcher tf_config` it is kept in a file under a lock
(`FileCollector`), the same object with the same rules, which plain processes share. Workers only ever
call a client's methods (`start`, `poll`, `report`, `log`, `fire_once`), whichever it is. Ray is
imported only where a Ray Train callback is built or an actor is called.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import time

import filelock

from bench.config.exits import first_line


class Collector:
    """One per run (a Ray actor on the driver's node): what the workers tell the driver, kept across
    worker-group restarts, and the driver's stop request.

    A stop request must end every worker after the same window (a worker that trains one more
    window waits in its all-reduce for peers that stopped). Every worker asks after each window
    (`poll`) and all end at the same window boundaries, so the rule is: the request stops a
    worker at the first boundary beyond every step a worker of the attempt was told to go on from.
    """

    def __init__(self, workers=0):
        self._workers = workers  # the group's size: a "started" event once every rank of an attempt started
        self.starts = {}  # rank -> how many times its training function started
        self.where = {}  # rank -> {host, ip, node_id, pid, attempt} of its latest start
        self.reports = {}  # rank -> the latest attempt's report
        self.lines = []  # the chief's progress lines
        self.events = []  # ("started", attempt, where) and ("failed", attempt, {rank: error}, step), in order
        self.fired = {}  # fault-injection key -> when it fired (time.time() on the worker's node)
        self.stop_reason = None
        self._go_on_from = {}  # attempt -> the highest step a worker was told to go on from
        self.last_step = {}  # attempt -> the highest step a worker reached

    def start(self, rank, where=None):
        self.starts[rank] = self.starts.get(rank, 0) + 1
        attempt = self.starts[rank]
        self.where[rank] = {**(where or {}), "attempt": attempt}
        started = {r: w for r, w in self.where.items() if w["attempt"] == attempt}
        if len(started) == self._workers and not any(e[0] == "started" and e[1] == attempt for e in self.events):
            self.events.append(("started", attempt, started))
        return attempt

    def poll(self, rank, attempt, step):
        self.last_step[attempt] = max(self.last_step.get(attempt, 0), step)
        if self.stop_reason is None:
            self._go_on_from[attempt] = max(self._go_on_from.get(attempt, -1), step)
            return None
        return self.stop_reason if step > self._go_on_from.get(attempt, -1) else None

    def request_stop(self, reason):
        self.stop_reason = self.stop_reason or reason

    def group_failed(self, failures):
        """From the Ray Train controller (`failure_listener`): {rank: error line} of a failed attempt."""
        attempt = max(self.starts.values(), default=1)
        self.events.append(("failed", attempt, failures, self.last_step.get(attempt, 0)))

    def report(self, rank, attempt, info):
        self.reports[rank] = info

    def log(self, line):
        self.lines.append(line)

    def news(self, lines_seen, events_seen):
        return self.lines[lines_seen:], self.events[events_seen:]

    def fire_once(self, key):
        if key in self.fired:
            return False
        self.fired[key] = time.time()
        return True

    def state(self):
        attempt = max(self.starts.values(), default=1)
        return {
            "starts": dict(self.starts),
            "reports": dict(self.reports),
            "fired": dict(self.fired),
            "where": dict(self.where),
            "events": list(self.events),
            "last_step": self.last_step.get(attempt),
        }


class ActorClient:
    """A worker's view of the collector actor (Ray): its calls, waited for where the worker needs the answer."""

    POLL_TIMEOUT_S = 30

    def __init__(self, actor):
        self._actor = actor

    def start(self, rank, where):
        import ray

        return ray.get(self._actor.start.remote(rank, where))

    def poll(self, rank, attempt, step):
        import ray

        try:
            return ray.get(self._actor.poll.remote(rank, attempt, step), timeout=self.POLL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the driver is gone or slow: training goes on (Ray ends an orphaned job)
            return None

    def report(self, rank, attempt, info):
        import ray

        ray.get(self._actor.report.remote(rank, attempt, info))

    def log(self, line):
        self._actor.log.remote(line)  # progress lines: not waited for

    def fire_once(self, key):
        import ray

        return ray.get(self._actor.fire_once.remote(key))


class FileCollector:
    """The run's `Collector` kept in a file (`collector.pickle` in `folder`) under a file lock, for processes
    without Ray: every call loads it, calls the same method and saves it back whole (temporary file, rename).

    The driver creates it (`create`), then the workers and the driver call its methods by name. One call
    takes a few milliseconds; the workers make one per window (`poll`), between windows.
    """

    def __init__(self, folder):
        self.folder = folder
        self._path = os.path.join(folder, "collector.pickle")
        self._lock = filelock.FileLock(self._path + ".lock")

    @classmethod
    def create(cls, folder, workers):
        collector = cls(folder)
        with collector._lock:
            collector._save(Collector(workers))
        return collector

    def _save(self, state):
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".collector-")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(state, fh)
        os.replace(tmp, self._path)

    def _call(self, method, *args):
        with self._lock:
            with open(self._path, "rb") as fh:
                state = pickle.load(fh)  # our own file, in the run's private temporary folder
            result = getattr(state, method)(*args)
            if method not in ("news", "state"):  # the readers change nothing
                self._save(state)
        return result

    def start(self, rank, where):
        return self._call("start", rank, where)

    def poll(self, rank, attempt, step):
        return self._call("poll", rank, attempt, step)

    def report(self, rank, attempt, info):
        self._call("report", rank, attempt, info)

    def log(self, line):
        self._call("log", line)

    def fire_once(self, key):
        return self._call("fire_once", key)

    def news(self, lines_seen, events_seen):
        return self._call("news", lines_seen, events_seen)

    def request_stop(self, reason):
        self._call("request_stop", reason)

    def group_failed(self, failures):
        self._call("group_failed", failures)

    def state(self):
        return self._call("state")


class LineForwarder(io.TextIOBase):
    """The chief's progress output: echoed to its own stdout and sent line by line to the collector (a client).

    Forwarding stops at the run summary ("status ..."): the driver prints its own for the whole run.
    """

    def __init__(self, collector, echo):
        self._collector, self._echo = collector, echo
        self._buffer = ""
        self._forward = True

    def writable(self):
        return True

    def write(self, text):
        self._echo.write(text)
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.startswith("status "):
                self._forward = False
            if self._forward:
                self._collector.log(line)
        return len(text)

    def flush(self):
        self._echo.flush()


def failure_listener(collector):
    """A Ray Train callback (it runs in the Train controller) that tells the collector of every failed attempt."""
    import ray.train

    class FailureListener(ray.train.UserCallback):
        def after_exception(self, run_context, worker_exceptions):
            collector.group_failed.remote({rank: first_line(err) for rank, err in worker_exceptions.items()})

    return FailureListener()
