"""The local multi-host cluster (bench.distributed.localcluster): two Ray nodes that are two hosts.

Needs root for `unshare --uts --mount`; skipped with the reason elsewhere. About a minute on a
2-core machine (each cluster takes ~15 s to start; the GCS declares a killed node dead ~13 s later).
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from bench.distributed import localcluster
from bench.distributed.localcluster import LocalCluster

pytestmark = pytest.mark.e2e  # Ray clusters, namespaces, subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "bench.distributed.localcluster"]
LOST_NODE_BOUND_S = 90  # "does not hang", not a timing: the GCS health checks take ~13 s here

_available, _reason = localcluster.namespaces_available()
needs_namespaces = pytest.mark.skipif(not _available, reason=_reason or "namespaces available")


@pytest.fixture(scope="module")
def _shared(tmp_path_factory):
    holder = {}
    yield holder, tmp_path_factory
    if "cluster" in holder:
        holder["cluster"].stop()


@pytest.fixture
def cluster(_shared):
    """A 2-node cluster (1 CPU each) shared by this module's tests; a new one if a test broke it."""
    holder, factory = _shared
    current = holder.get("cluster")
    if current is None or not all(current.node_alive(i) for i in range(len(current.nodes))):
        if current is not None:
            current.stop()
        holder["cluster"] = LocalCluster(nodes=2, cpus_per_node=1, log_dir=str(factory.mktemp("cluster"))).start()
    return holder["cluster"]


@pytest.fixture
def driver(cluster):
    """This process connected to `cluster` as a Ray driver (quietly), disconnected afterwards."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


def _alive_ips(ray):
    return {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


@needs_namespaces
def test_each_node_is_its_own_host(cluster, driver):
    ray = driver
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    assert cluster.hosts == [("node-a", "127.0.0.3"), ("node-b", "127.0.0.4")]
    assert cluster.address.startswith("127.0.0.3:")
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert sorted((n["NodeManagerHostname"], n["NodeManagerAddress"]) for n in nodes) == cluster.hosts

    @ray.remote(num_cpus=1)
    def where():
        return socket.gethostname(), ray.util.get_node_ip_address(), sorted(os.listdir("/tmp"))

    pinned = [
        where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    seen = ray.get(pinned, timeout=60)
    assert sorted((host, ip) for host, ip, _ in seen) == cluster.hosts
    # node-b's /tmp is private: it holds only Ray's own folder, unlike the machine's (and, for a clone or a
    # virtualenv under /tmp, the folders of /tmp they are in)
    from bench.distributed.localcluster import cluster as lc

    kept = [os.path.basename(folder) for folder in lc._kept_in_tmp(lc._needed_paths())]
    assert [tmp for host, _, tmp in seen if host == "node-b"] == [sorted(["ray", *kept])]
    assert os.path.isdir(os.path.join(cluster.log_dir, "node-b", "ray"))  # where that /tmp really is


@needs_namespaces
def test_cli_up_status_down_next_to_another_cluster(cluster, tmp_path):
    folder = str(tmp_path / "cli")
    up = subprocess.run(
        CLI + ["up", "--nodes", "2", "--cpus_per_node", "1", "--dir", folder],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert up.returncode == 0, up.stderr
        assert up.stderr == ""  # Ray's output went to the log folder
        lines = up.stdout.splitlines()
        address = lines[0].split()[1]
        assert address.startswith("127.0.0.3:") and address != cluster.address  # its own GCS port
        assert lines[1].split()[:4] == ["node-a", "127.0.0.3", "head", "pid"]
        assert lines[2].split()[:4] == ["node-b", "127.0.0.4", "worker", "pid"]
        assert f"down --dir {folder}" in up.stdout

        status = subprocess.run(CLI + ["status", "--dir", folder], cwd=ROOT, capture_output=True, text=True)
        assert status.returncode == 0 and status.stdout.count(" running") == 2
        with open(os.path.join(folder, localcluster.STATE_FILE)) as f:
            nodes = json.load(f)["nodes"]
        assert {n["ports"]["metrics-export-port"] for n in nodes}.isdisjoint(
            {n["ports"]["metrics-export-port"] for n in cluster.nodes}
        )
        head_tmp = nodes[0]["temp_dir"]
        assert head_tmp.startswith("/tmp/lc-") and os.path.isdir(head_tmp)
    finally:
        down = subprocess.run(CLI + ["down", "--dir", folder], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    stopped = LocalCluster.attach(folder)
    assert not stopped.running()  # every recorded pid has ended
    # The head's Ray folder moved from /tmp into the log folder.
    assert not os.path.exists(head_tmp) and glob.glob(os.path.join(folder, "node-a", "session_*", "logs", "raylet.out"))
    status = subprocess.run(CLI + ["status", "--dir", folder], cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 1 and status.stdout.count(" stopped") == 2
    # The other cluster was torn down by its own pids only: this one still runs.
    assert cluster.node_alive(0) and cluster.node_alive(1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["up", "--nodes", "0", "--dir", "x"], "nodes must be a whole number from 1 to 26"),
        (["up", "--nodes", "2"], "the following arguments are required: --dir"),
        (["status", "--dir", "/nonexistent/lc"], "no cluster state in /nonexistent/lc"),
        (["down", "--dir", "/nonexistent/lc"], "no cluster state in /nonexistent/lc"),
        (["sideways"], "invalid choice: 'sideways'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    proc = subprocess.run(CLI + args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


@needs_namespaces
def test_killed_node_leaves_the_cluster_and_stop_ends_every_pid(cluster, driver):
    ray = driver
    assert _alive_ips(ray) == {"127.0.0.3", "127.0.0.4"}
    raylet = cluster.kill_node(1)
    deadline = time.monotonic() + LOST_NODE_BOUND_S
    while "127.0.0.4" in _alive_ips(ray):
        assert time.monotonic() < deadline, "the killed node is still listed as alive"
        time.sleep(1)
    assert _alive_ips(ray) == {"127.0.0.3"}
    assert not cluster.node_alive(1)  # `ray start --block` ended the node when its raylet died
    stat = localcluster._stat(raylet)
    assert stat is None or stat[0] == "Z"  # gone, or a zombie waiting for its parent
    ray.shutdown()

    recorded = cluster.recorded_pids()
    assert len(recorded) >= 4  # two `ray start`s, at least a raylet each, the head's gcs_server
    cluster.stop()
    assert not [pid for pid, start in recorded if localcluster._alive(pid, start)]
    cluster.stop()  # idempotent
    assert os.path.isdir(os.path.join(cluster.log_dir, "node-a"))  # the head's Ray logs, moved in


@needs_namespaces
def test_a_node_keeps_the_folders_of_tmp_it_runs_from_and_nothing_else(tmp_path, monkeypatch):
    """A clone and its virtualenv under /tmp (#23 row 26): the node's private /tmp still holds them."""
    from bench.distributed.localcluster import cluster as lc

    kept, hidden = (tempfile.mkdtemp(prefix="lc-kept-", dir="/tmp") for _ in range(2))
    try:
        with open(os.path.join(kept, "clone.txt"), "w") as f:
            f.write("the clone\n")
        open(os.path.join(hidden, "other.txt"), "w").close()
        monkeypatch.setattr(lc, "_needed_paths", lambda: [os.path.join(kept, "clone.txt"), "/tmp", "/tmp/ray"])
        assert lc._kept_in_tmp(lc._needed_paths()) == [kept]
        private = tmp_path / "node-b"
        private.mkdir()
        script = f"cat {kept}/clone.txt; test ! -e {hidden}/other.txt; touch /tmp/made-by-node"
        proc = subprocess.run(
            lc._node_command("lc-test", str(private), ["sh", "-c", script]), capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "the clone\n"
        assert (private / "made-by-node").exists()  # the node's /tmp is its own ...
        assert not os.path.exists("/tmp/made-by-node")  # ... not the machine's
    finally:
        for folder in (kept, hidden):
            shutil.rmtree(folder, ignore_errors=True)
