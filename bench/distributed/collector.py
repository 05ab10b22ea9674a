"""The collector: one small Ray actor per multi-worker run, through which the driver and the workers talk.

The workers report to it (where each runs, its final report, the chief's progress lines through
`LineForwarder`, fault-injection marks) and ask it after every window whether to stop; the Ray
Train controller tells it of every failed attempt (`failure_listener`); the driver reads what is
new while `fit()` runs (`news`), relays a Ctrl-C / SIGTERM (`request_stop`) and reads the whole
`state` at the end. It lives on the driver's node and outlives worker-group restarts.

Plain Python: the driver creates the actor (`ray.remote(Collector)`); Ray is imported only where
a Ray Train callback is built.
"""

from __future__ import annotations

import io
import time

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


class LineForwarder(io.TextIOBase):
    """The chief's progress output: echoed to its own stdout and sent line by line to the collector.

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
                self._collector.log.remote(line)
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
