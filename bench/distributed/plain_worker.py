"""One worker of a `--launcher tf_config` run: `python -m bench.distributed.plain_worker FOLDER RANK DRIVER_PID`.

Started by `bench.distributed.plain` with TF_CONFIG in its environment; runs
`bench.distributed.worker.run_worker` (the code path of a Ray Train worker) with the run's collector
kept in FOLDER (`collector.FileCollector`). It dies with its driver: Linux delivers SIGTERM when the
parent goes (prctl PR_SET_PDEATHSIG), and a worker whose driver is already gone does not start.
Exit status: 0 the run ended (ok, interrupted or diverged: the report says which), 1 it failed (or its
driver was gone), 2 bad input (reported; the driver refuses the run), or arguments that are not a run's
folder, a rank and the driver's pid (one `error:` line: it is started by the driver, not by hand).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import traceback

PR_SET_PDEATHSIG = 1
USAGE = "python -m bench.distributed.plain_worker FOLDER RANK DRIVER_PID (started by bench.run --launcher tf_config)"


def die_with_parent(driver_pid):
    """SIGTERM to this process when its parent (the driver) ends (Linux); False if the driver is already gone."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the driver's end kills the workers it started
        pass
    return os.getppid() == driver_pid


def arguments(argv):
    """(folder, rank, driver pid) from the command line, or None when they are not a run's."""
    if len(argv) != 4 or not os.path.isfile(os.path.join(argv[1], "run.json")):
        return None
    try:
        return argv[1], int(argv[2]), int(argv[3])
    except ValueError:
        return None


def main(argv):
    parsed = arguments(argv)
    if parsed is None:
        print(f"error: usage: {USAGE}", file=sys.stderr, flush=True)
        return 2
    folder, rank, driver_pid = parsed
    if not die_with_parent(driver_pid):
        print(f"error: its driver (pid {driver_pid}) is gone; not started", file=sys.stderr, flush=True)
        return 1
    from bench.config import options
    from bench.config.options import ConfigError
    from bench.distributed import worker
    from bench.distributed.collector import FileCollector

    with open(os.path.join(folder, "run.json")) as fh:
        spec = json.load(fh)
    where = {
        "host": socket.gethostname(),
        "ip": "127.0.0.1",
        "node_id": "",
        "pid": os.getpid(),
        "machine": worker.machine_id(),
    }
    try:
        outcome = worker.run_worker(options.from_dict(spec["cfg"]), spec["command"], rank, where, FileCollector(folder))
    except ConfigError:
        return 2
    except BaseException:  # noqa: BLE001 - reported to the collector already; the traceback goes to this worker's log
        traceback.print_exc()
        return 1
    return 1 if outcome.status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
