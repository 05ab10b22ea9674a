"""`LocalCluster`: K Ray nodes on this machine, each in its own namespaces (see the package docstring)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time

from bench.distributed.localcluster.procs import _alive, _comm, _descendants, _free_port, _port_open, _stat, _tail

STATE_FILE = "cluster.json"
FIRST_IP = 3  # 127.0.0.3: Ray turns --node-ip-address 127.0.0.1 into the machine's outside address
MAX_NODES = 26  # node-a ... node-z
START_TIMEOUT_S = 60
GRACE_S = 10  # SIGTERM first (Ray then stops its own children), SIGKILL what is left after this
OBJECT_STORE_BYTES = 256 * 1024**2  # the default (30% of RAM per node) overcommits /dev/shm with K nodes

# Runs inside the new namespaces: set the hostname, give the node a private /tmp if asked (with the
# folders of /tmp that it needs bound into it: see `_kept_in_tmp`), then become `ray start --block`,
# so the pid we hold is the node's one parent process.
# Arguments: hostname, private /tmp ("" for none), the count of kept folders, the folders, the command.
_NODE_SCRIPT = """set -e; hostname "$1"; priv=$2; n=$3; shift 3
while [ "$n" -gt 0 ]; do
  dest="$priv/${1#/tmp/}"
  if [ -d "$1" ]; then mkdir -p "$dest"; else touch "$dest"; fi
  mount --bind "$1" "$dest"; shift; n=$((n - 1))
done
if [ -n "$priv" ]; then mount --rbind "$priv" /tmp; fi
exec "$@"
"""
_UNSHARE = ["unshare", "--uts", "--mount", "--propagation", "private"]

_NODE_ENV = {
    "RAY_AUTH_MODE": "disabled",  # else every Ray process prints "Token authentication is enabled"
    "RAY_USAGE_STATS_ENABLED": "0",
    # SIGTERM to `ray start --block` first drains the node for up to 30 s (meant for Serve);
    # nothing here needs it and it would make every teardown slow.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
}


class ClusterError(RuntimeError):
    """A cluster that cannot start, or a folder that holds no cluster."""


def namespaces_available():
    """Whether this process may create the namespaces a node needs: (True, "") or (False, reason).

    Tests skip with the reason (not root, no `unshare`, or a sandbox that forbids namespaces).
    """
    if shutil.which("unshare") is None:
        return False, "the unshare command (util-linux) is not installed"
    if os.geteuid() != 0:
        return False, f"unshare --uts --mount needs root (running as uid {os.geteuid()})"
    # The same steps a non-head node takes: hostname and a mount, in throwaway namespaces.
    probe = "hostname lc-probe && mount -t tmpfs lc-probe /tmp"
    try:
        proc = subprocess.run(_UNSHARE + ["sh", "-c", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"unshare failed: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return False, f"namespaces not allowed here: {last}"
    return True, ""


def _kept_in_tmp(paths):
    """The top folders of /tmp that hold any of `paths`: a node's private /tmp keeps them (bound at the
    same place), so a clone or a virtualenv under /tmp still runs there. Ray's own folders stay private."""
    kept = set()
    for path in paths:
        if not path:
            continue
        for p in {os.path.abspath(path), os.path.realpath(path)}:
            parts = p.split(os.sep)
            if len(parts) > 2 and parts[1] == "tmp" and not parts[2].startswith("ray") and os.path.exists(p):
                kept.add(os.path.join("/tmp", parts[2]))
    return sorted(kept)


def _needed_paths():
    """What a node's processes read from this process's files: the interpreter and its environment,
    the import path (the clone) and the working folder."""
    return [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.executable, os.getcwd(), *sys.path]


def _node_command(hostname, private_tmp, args):
    """The command that starts one node: `args` in namespaces of its own, under `hostname`, with
    `private_tmp` (if any) mounted over /tmp and the folders of /tmp it needs bound into it."""
    kept = _kept_in_tmp(_needed_paths()) if private_tmp else []
    return _UNSHARE + ["sh", "-c", _NODE_SCRIPT, "sh", hostname, private_tmp, str(len(kept)), *kept, *args]


def _ray_cli():
    # The `ray` next to this interpreter: the one whose Ray version the driver imports.
    here = os.path.join(os.path.dirname(sys.executable), "ray")
    return here if os.path.exists(here) else (shutil.which("ray") or "ray")


def _alive_node_ips(address, timeout):
    """The node IPs the cluster's GCS lists as alive.

    Uses Ray's internal GCS client: the public `ray.nodes()` needs a connected driver, which
    would register a job in the cluster and cost seconds on every poll.
    """
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    nodes = GcsClient(address=address).get_all_node_info(timeout=timeout)
    return {n.node_manager_address for n in nodes.values() if n.state == GcsNodeInfo.GcsNodeState.ALIVE}


def _port_in(args):
    """The GCS port a head's `ray start` arguments name (`--port=P` or `--port P`)."""
    for i, arg in enumerate(args):
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
        if arg == "--port" and i + 1 < len(args):
            return int(args[i + 1])
    raise ValueError(f"the head's ray start arguments must name its --port: {args}")


class LocalCluster:
    """K Ray nodes on this machine, each with its own hostname, 127.0.0.x address and /tmp.

    Use as a context manager (starts on enter, stops on exit), or call `start()` and `stop()`.
    `LocalCluster.attach(log_dir)` takes over a cluster started by another process (the CLI).
    """

    def __init__(
        self,
        nodes=2,
        cpus_per_node=1,
        log_dir=None,
        env=None,
        object_store_bytes=OBJECT_STORE_BYTES,
        start_timeout_s=START_TIMEOUT_S,
        role_args=None,
    ):
        """`nodes` Ray nodes of `cpus_per_node` CPUs each, logging into `log_dir` (a new temporary
        folder if None). `env` adds environment variables to every node (e.g. Ray's `RAY_...`
        settings); it overrides this tool's own defaults. `role_args`: (head's, other nodes')
        `ray start` arguments used as given instead of the tool's `--head --port P` / `--address A`,
        e.g. a recipe's `["--head", "--port=6379"], ["--address=127.0.0.3:6379"]` (the head's must
        name its port); the tool still adds each node's address, ports, CPUs and folders."""
        if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be a whole number from 1 to {MAX_NODES}, got {nodes!r}")
        if isinstance(cpus_per_node, bool) or not isinstance(cpus_per_node, int) or cpus_per_node < 0:
            raise ValueError(f"cpus_per_node must be a whole number >= 0, got {cpus_per_node!r}")
        self.log_dir = os.path.abspath(log_dir or tempfile.mkdtemp(prefix="localcluster-"))
        self._wanted = nodes
        self.cpus_per_node = cpus_per_node
        self._env = {**os.environ, **_NODE_ENV, **(env or {})}
        self._object_store_bytes = object_store_bytes
        self._start_timeout_s = start_timeout_s
        self.nodes = []  # one dict per node, the same as in the state file
        self.address = None
        self._procs = {}  # pid -> Popen, to reap the nodes this process started
        self._role_args = [list(a) for a in role_args] if role_args else None

    # ---- public API -------------------------------------------------------------------------

    @classmethod
    def attach(cls, log_dir):
        """The cluster whose state is in `log_dir`, as started by another process."""
        path = os.path.join(os.path.abspath(log_dir), STATE_FILE)
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            raise ClusterError(f"no cluster state in {log_dir} (no readable {STATE_FILE})") from None
        cluster = cls(nodes=max(1, len(state["nodes"])), cpus_per_node=state["cpus_per_node"], log_dir=log_dir)
        cluster.nodes, cluster.address = state["nodes"], state["address"]
        return cluster

    @property
    def hosts(self):
        """(hostname, ip) of every node, head first."""
        return [(n["hostname"], n["ip"]) for n in self.nodes]

    def node_alive(self, i):
        """Whether node i's `ray start` process still runs."""
        node = self.nodes[i]
        self._reap()
        return _alive(node["pid"], node["start"])

    def running(self):
        """Whether any process this cluster started still runs."""
        self._reap()
        return any(_alive(pid, start) for pid, start in self.recorded_pids())

    def start(self):
        """Start the head, then the other nodes; return once the GCS lists every node as alive."""
        ok, reason = namespaces_available()
        if not ok:
            raise ClusterError(reason)
        if os.path.exists(self._state_path()) and LocalCluster.attach(self.log_dir).running():
            raise ClusterError(f"a cluster started from {self.log_dir} still runs: stop it first")
        os.makedirs(self.log_dir, exist_ok=True)
        try:
            self._launch(head=True)
            self._wait_until_up()
            for _ in range(self._wanted - 1):
                self._launch(head=False)  # all at once: each takes seconds to start
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self):
        """Start one more node (the next hostname and address); return its index once it is up."""
        self._launch(head=False)
        try:
            self._wait_until_up()
        except ClusterError:
            self.stop_node(len(self.nodes) - 1)
            raise
        return len(self.nodes) - 1

    def kill_node(self, i):
        """SIGKILL node i's raylet, as if the host were lost; return the raylet's pid.

        `ray start --block` then kills the node's other processes and exits. The GCS notices the
        raylet is gone only through its health checks (seconds later, see RAY_health_check_*).
        """
        node = self.nodes[i]
        raylets = [p for p in _descendants(node["pid"]) if _comm(p) == "raylet"]
        if not raylets:
            raise ClusterError(f"{node['hostname']} has no raylet running")
        os.kill(raylets[0], signal.SIGKILL)
        node["gone"] = True  # a node added later does not wait for this one
        self._save()
        return raylets[0]

    def stop_node(self, i):
        """Stop node i by its pids (SIGTERM, then SIGKILL after the grace period)."""
        self.nodes[i]["gone"] = True
        self._terminate([self.nodes[i]])

    def stop(self):
        """Stop every node by the pids this cluster recorded; idempotent.

        SIGTERM to each node's `ray start` (which stops its own children), SIGKILL to anything
        left after the grace period, then wait until none of the processes runs. The head's Ray
        temp folder is moved into the log folder afterwards.
        """
        self._terminate(self.nodes)
        for node in self.nodes:
            if node["head"] and node["temp_dir"] != os.path.join(self.log_dir, node["hostname"]):
                self._collect_head_logs(node)
        if self.nodes:
            self._save()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- starting ---------------------------------------------------------------------------

    def _launch(self, head):
        i = len(self.nodes)
        if i >= MAX_NODES:
            raise ClusterError(f"at most {MAX_NODES} nodes")
        hostname, ip = f"node-{string.ascii_lowercase[i]}", f"127.0.0.{FIRST_IP + i}"
        ports = {
            "dashboard-agent-listen-port": _free_port(),
            "dashboard-agent-grpc-port": _free_port(),
            "metrics-export-port": _free_port(),
            "runtime-env-agent-port": _free_port(),
            "node-manager-port": _free_port(),
            "object-manager-port": _free_port(),
        }
        role = self._role_args[0 if head else 1] if self._role_args else None
        if head:
            ports.update({"port": _port_in(role) if role else _free_port(), "ray-client-server-port": _free_port()})
            self.address = f"{ip}:{ports['port']}"
            # Shares the machine's /tmp (the driver attaches through the head's sockets); a folder
            # of its own keeps it out of /tmp/ray, where `ray.init(address="auto")` looks.
            temp_dir, private_tmp = tempfile.mkdtemp(prefix="lc-", dir="/tmp"), ""
        else:
            # The node's private /tmp is a folder of the log dir mounted over /tmp: its Ray logs
            # stay readable after it stops. Ray's socket paths there are short (/tmp/ray/...).
            private_tmp = os.path.join(self.log_dir, hostname)
            os.makedirs(private_tmp, exist_ok=True)
            temp_dir = "/tmp/ray"
        args = [
            _ray_cli(),
            "start",
            "--block",
            "--node-ip-address",
            ip,
            "--num-cpus",
            str(self.cpus_per_node),
            "--temp-dir",
            temp_dir,
            "--object-store-memory",
            str(self._object_store_bytes),
            # 0 and 0: each worker binds a port the OS picks, not one of 10002-19999 (shared
            # by every Ray cluster on the machine)
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",
            "--disable-usage-stats",
            "--log-style",
            "record",
            "--log-color",
            "false",
        ]
        if role:  # the caller's own role arguments, as given
            args += role + (["--include-dashboard", "false"] if head else [])
        else:
            args += ["--head", "--include-dashboard", "false"] if head else ["--address", self.address]
        for flag, port in ports.items():
            if not (role and flag == "port"):
                args += [f"--{flag}", str(port)]
        log = os.path.join(self.log_dir, f"{hostname}.log")
        with open(log, "ab") as out:
            # A session of its own: Ctrl-C in the terminal that started the cluster does not
            # reach the nodes (`up` returns while they run on; `stop` ends them).
            proc = subprocess.Popen(
                _node_command(hostname, private_tmp, args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )
        self._procs[proc.pid] = proc
        stat = _stat(proc.pid)
        self.nodes.append(
            {
                "hostname": hostname,
                "ip": ip,
                "head": head,
                "pid": proc.pid,
                "start": stat[2] if stat else None,
                "temp_dir": temp_dir,
                "log": log,
                "ports": ports,
                "children": [],
            }
        )
        self._save()

    def _wait_until_up(self):
        """Wait until the GCS lists every node as alive; record each node's processes."""
        deadline = time.monotonic() + self._start_timeout_s
        head_ip, port = self.address.split(":")
        alive = set()
        expected = [n for n in self.nodes if not n.get("gone")]  # not the nodes killed or stopped on purpose
        while True:
            for node in expected:
                if not self.node_alive(self.nodes.index(node)):
                    raise ClusterError(
                        f"{node['hostname']} exited while starting: {_tail(node['log'], 3)} (log: {node['log']})"
                    )
            if _port_open(head_ip, int(port)):
                try:
                    alive = _alive_node_ips(self.address, timeout=5)
                except Exception:  # the GCS is up but not answering yet
                    alive = set()
                if all(n["ip"] in alive for n in expected):
                    break
            if time.monotonic() > deadline:
                late = [n["hostname"] for n in expected if n["ip"] not in alive]
                raise ClusterError(f"{', '.join(late)} not up within {self._start_timeout_s} s (logs: {self.log_dir})")
            time.sleep(0.5)
        for node in self.nodes:
            # raylet, gcs_server, agents: recorded so that `down` can end them even if their
            # parent is gone. Workers are the raylet's children and end with it.
            node["children"] = [[p, _stat(p)[2]] for p in _descendants(node["pid"]) if _stat(p)]
        self._save()

    # ---- stopping ---------------------------------------------------------------------------

    def recorded_pids(self, nodes=None):
        """(pid, start time) of every process recorded for `nodes` (all by default)."""
        pairs = []
        for node in self.nodes if nodes is None else nodes:
            if node["start"] is not None:
                pairs.append((node["pid"], node["start"]))
            pairs += [tuple(child) for child in node["children"]]
        return pairs

    def _terminate(self, nodes):
        self._reap()
        # Everything that runs now below the nodes (workers included), found before any parent
        # ends and its children are handed to init.
        targets = {(pid, start) for pid, start in self.recorded_pids(nodes) if _alive(pid, start)}
        for node in nodes:
            if _alive(node["pid"], node["start"]):
                targets |= {(p, _stat(p)[2]) for p in _descendants(node["pid"]) if _stat(p)}
        for node in nodes:
            if _alive(node["pid"], node["start"]):
                os.kill(node["pid"], signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while self._running(targets) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, _start in self._running(targets):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + GRACE_S
        while self._running(targets) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self._running(targets)
        if left:
            raise ClusterError(f"processes still running after SIGKILL: {sorted(p for p, _ in left)}")

    def _running(self, targets):
        self._reap()
        return [(pid, start) for pid, start in targets if _alive(pid, start)]

    def _reap(self):
        # Nodes this process started stay zombies until waited for.
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]

    def _collect_head_logs(self, node):
        target = os.path.join(self.log_dir, node["hostname"])
        os.makedirs(target, exist_ok=True)
        source = node["temp_dir"]
        if os.path.isdir(source):
            for entry in os.listdir(source):
                src, dst = os.path.join(source, entry), os.path.join(target, entry)
                if os.path.lexists(dst) or os.path.islink(src):
                    continue  # session_latest: an absolute link into the old folder
                try:
                    os.rename(src, dst)
                except OSError:  # another file system: copy what can be copied (not sockets)
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("sockets"), dirs_exist_ok=True)
            shutil.rmtree(source, ignore_errors=True)
        node["temp_dir"] = target

    # ---- state ------------------------------------------------------------------------------

    def _state_path(self):
        return os.path.join(self.log_dir, STATE_FILE)

    def _save(self):
        state = {"address": self.address, "cpus_per_node": self.cpus_per_node, "nodes": self.nodes}
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self._state_path())  # a reader never sees half a file
