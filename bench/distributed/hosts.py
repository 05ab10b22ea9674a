"""The hosts of a multi-worker run, seen from the driver.

- `check_paths`: before any worker starts, one tiny Ray task on every alive node tells whether that
  host sees the run's folders at the driver's paths (the CIFAR files, the tfds folder, and the
  checkpoint and TensorBoard folders, by a marker file the driver writes there); the judgement is
  `bench.config.setup_checks.check_paths_on_hosts` (bad input names the host that lacks a path).
- `lost_nodes`, `spare_capacity`: whether the node a failed worker ran on is gone (its raylet does not
  answer; the GCS itself takes ~13 s to say so), and whether the other nodes can hold the group.
- `last_checkpoint`: the latest checkpoint in a folder, from TensorFlow's plain-text `checkpoint` index.
- `ray_console_to_file`: what Ray prints in the driver (state dumps of dead raylets, C++ log lines)
  goes to a log file; the run's own lines keep the console.

Ray is imported inside the functions (the driver imports this module before it connects).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import tempfile
import uuid

from bench.config import cifar_files, setup_checks
from bench.config.options import ConfigError, RunConfig

PATH_CHECK_TIMEOUT_S = 60  # a node whose task has not answered by then is noted, not judged
PROBE_TIMEOUT_S = 2  # a raylet that does not accept a TCP connection within this is lost
MARKER_PREFIX = ".bench-host-check-"


def node_label(where):
    """`node-b (127.0.0.4)` from a worker's start record or a node's facts."""
    return f"{where.get('host') or '?'} ({where.get('ip') or '?'})"


def _paths_seen(paths):
    """Runs on one node (a Ray task): {name: whether every file named for it exists here}, host, pid."""
    seen = {
        name: all(os.path.exists(os.path.join(folder, f)) for f in files) if files else os.path.isdir(folder)
        for name, (folder, files) in paths.items()
    }
    return {"host": socket.gethostname(), "pid": os.getpid(), "seen": seen}


def _shared_paths(cfg: RunConfig):
    """{flag: (folder, files every host must see there)} and the marker files written for the check."""
    paths, markers = {}, []
    if cfg.cifar_dir and cfg.data in ("files", "auto"):
        train, test = cifar_files.find_files(cfg.cifar_dir)  # validated: the driver's host has them
        paths["cifar_dir"] = (cfg.cifar_dir, [os.path.relpath(p, cfg.cifar_dir) for p in train + test])
    if cfg.tfds_dir and os.path.isdir(cfg.tfds_dir):  # one the driver does not have yet, tfds creates
        paths["tfds_dir"] = (cfg.tfds_dir, [])
    for name in ("checkpoint_dir", "tensorboard_dir"):  # written by the chief, which may run on any host
        folder = getattr(cfg, name)
        if folder:
            os.makedirs(folder, exist_ok=True)
            marker = os.path.join(folder, MARKER_PREFIX + uuid.uuid4().hex[:12])
            open(marker, "w").close()
            markers.append(marker)
            paths[name] = (folder, [os.path.basename(marker)])
    return paths, markers


def check_paths(cfg: RunConfig, out):
    """Judge whether every alive node sees the run's folders at the driver's paths (ConfigError if not).

    Returns the facts of the nodes that answered ({host, ip, pid, seen}); a node that does not
    answer within PATH_CHECK_TIMEOUT_S gets a note on `out` (it may never host a worker).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths, markers = _shared_paths(cfg)
    if not paths:
        return []
    facts = []
    try:
        task = ray.remote(num_cpus=0)(_paths_seen)
        nodes = {
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths): n
            for n in ray.nodes()
            if n.get("Alive")
        }
        ready, late = ray.wait(list(nodes), num_returns=len(nodes), timeout=PATH_CHECK_TIMEOUT_S)
        for ref in ready:
            try:
                facts.append({**ray.get(ref), "ip": nodes[ref]["NodeManagerAddress"]})
            except Exception:  # noqa: BLE001 - the node went away meanwhile
                late.append(ref)
        for ref in late:
            node = nodes[ref]
            print(
                f"note: {node['NodeManagerHostname']} ({node['NodeManagerAddress']}) did not answer the path "
                f"check within {PATH_CHECK_TIMEOUT_S} s",
                file=out,
                flush=True,
            )
            ray.cancel(ref, force=True)
    finally:
        for marker in markers:
            with contextlib.suppress(OSError):
                os.remove(marker)
    setup_checks.check_paths_on_hosts({name: folder for name, (folder, _) in paths.items()}, facts)
    return facts


def lost_nodes(node_ids):
    """The nodes among `node_ids` that are gone: the GCS lists them dead, or their raylet does not answer."""
    import ray

    table = {n["NodeID"]: n for n in ray.nodes()}
    lost = set()
    for node_id in node_ids:
        node = table.get(node_id)
        if node is None or not node.get("Alive"):
            lost.add(node_id)
            continue
        try:
            socket.create_connection(
                (node["NodeManagerAddress"], node["NodeManagerPort"]), timeout=PROBE_TIMEOUT_S
            ).close()
        except OSError:
            lost.add(node_id)
    return lost


def spare_capacity(cfg: RunConfig, lost):
    """Whether the alive nodes other than `lost` can hold the whole worker group again."""
    import ray

    alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive") and n["NodeID"] not in lost]
    totals = {k: sum(r.get(k, 0) for r in alive) for k in ("CPU", "GPU")}
    try:
        setup_checks.check_ray_request(cfg, totals, alive)
    except ConfigError:
        return False
    return True


def last_checkpoint(folder):
    """(step, path) of the latest checkpoint in `folder`, from TensorFlow's `checkpoint` index; None if none."""
    try:
        with open(os.path.join(folder, "checkpoint")) as f:
            found = re.search(r'^model_checkpoint_path: "(.*)"$', f.read(), re.M)
    except (OSError, TypeError):
        return None
    if not found:
        return None
    path = os.path.join(folder, found.group(1))
    step = re.search(r"-(\d+)$", path)
    return (int(step.group(1)) if step else None), path


@contextlib.contextmanager
def ray_console_to_file():
    """Point this process's sys.stdout, sys.stderr and file descriptor 2 at a new log file meanwhile.

    Ray's error listener prints a dead raylet's state dump to whatever `sys.stdout` is when it
    prints (log_to_driver=False does not stop it), its loggers write to `sys.stderr`, its C++ core
    to descriptor 2. Yields (log path, a stream to the console's stderr); the run's own lines go to
    the `out` the caller already holds.
    """
    fd, path = tempfile.mkstemp(prefix="bench-multi-worker-ray-", suffix=".log")
    log = os.fdopen(fd, "a", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd2, saved = os.dup(2), (sys.stdout, sys.stderr)
    console_err = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:
        yield path, console_err
    finally:
        sys.stdout, sys.stderr = saved
        os.dup2(saved_fd2, 2)
        os.close(saved_fd2)
        console_err.close()
        log.close()
