"""A Ray cluster of K "hosts" on this one machine, for tests and for rehearsing the two-node recipe.

Each node is a `ray start --block` inside its own UTS and mount namespaces (`unshare --uts --mount`,
which needs root), so it has its own hostname (node-a, node-b, ...), its own loopback address
(127.0.0.3, .4, ...) and, except the head, its own /tmp. Every port a node would otherwise take at
a fixed default (GCS, client server, dashboard agent, metrics export, runtime-env agent, worker
ports) is picked free, so two clusters, or a test run next to someone's cluster, do not collide.
Everything Ray prints goes to files in one folder; nothing reaches the console.

    with LocalCluster(nodes=2, cpus_per_node=1, log_dir="logs") as cluster:
        cluster.address        # '127.0.0.3:PORT', for ray.init(address=...) or --address
        cluster.hosts          # [('node-a', '127.0.0.3'), ('node-b', '127.0.0.4')]
        cluster.kill_node(1)   # SIGKILL node-b's raylet: a lost host

From a shell (the cluster outlives the command; `down` may run from any other process):

    python -m bench.distributed.localcluster up --nodes 2 --cpus_per_node 1 --dir DIR
    python -m bench.distributed.localcluster status --dir DIR
    python -m bench.distributed.localcluster down --dir DIR

Teardown is by the ids of the processes this tool started, recorded in DIR/cluster.json with
their start times (so a recycled pid is never hit), never `ray stop`, which would end every Ray
cluster on the machine. The head keeps the machine's /tmp: a driver attaches to a cluster through
the head's socket files there. Its Ray temp folder is /tmp/lc-XXXX while it runs (Unix socket
paths must stay short) and is moved into DIR when the cluster stops.

Layout of DIR: cluster.json (the state), node-a.log, node-b.log ... (what `ray start` printed),
node-a/, node-b/ ... (each node's Ray temp folder: session_*/logs holds raylet.out, gcs_server.out).

No TensorFlow and no other `bench` module here; Ray is imported only to ask the GCS which nodes
are alive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time

STATE_FILE = "cluster.json"
FIRST_IP = 3  # 127.0.0.3: Ray turns --node-ip-address 127.0.0.1 into the machine's outside address
MAX_NODES = 26  # node-a ... node-z
START_TIMEOUT_S = 60
GRACE_S = 10  # SIGTERM first (Ray then stops its own children), SIGKILL what is left after this
OBJECT_STORE_BYTES = 256 * 1024**2  # the default (30% of RAM per node) overcommits /dev/shm with K nodes

# Runs inside the new namespaces: set the hostname, give the node a private /tmp if asked, then
# become `ray start --block`, so the pid we hold is the node's one parent process.
_NODE_SCRIPT = 'set -e; hostname "$1"; if [ -n "$2" ]; then mount --bind "$2" /tmp; fi; shift 2; exec "$@"'
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


def _free_port():
    # Bound on all addresses, so the port is free whichever address Ray binds it on.
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _stat(pid):
    """(state, ppid, start time in clock ticks) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name in (...) may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid, start):
    """Whether the process `pid` that started at `start` still runs (a zombie has ended)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[2] == start


def _descendants(pid):
    """The pids below `pid` in the process tree, now."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


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


def _port_open(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path, lines=1):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


class LocalCluster:
    """K Ray nodes on this machine, each with its own hostname, 127.0.0.x address and /tmp.

    Use as a context manager (starts on enter, stops on exit), or call `start()` and `stop()`.
    `LocalCluster.attach(log_dir)` takes over a cluster started by another process (the CLI).
    """

    def __init__(self, nodes=2, cpus_per_node=1, log_dir=None, env=None,
                 object_store_bytes=OBJECT_STORE_BYTES, start_timeout_s=START_TIMEOUT_S):
        """`nodes` Ray nodes of `cpus_per_node` CPUs each, logging into `log_dir` (a new temporary
        folder if None). `env` adds environment variables to every node (e.g. Ray's `RAY_...`
        settings); it overrides this tool's own defaults."""
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
        cluster = cls(nodes=max(1, len(state["nodes"])), cpus_per_node=state["cpus_per_node"],
                      log_dir=log_dir)
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
        return raylets[0]

    def stop_node(self, i):
        """Stop node i by its pids (SIGTERM, then SIGKILL after the grace period)."""
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
        if head:
            ports.update({"port": _free_port(), "ray-client-server-port": _free_port()})
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
        args = [_ray_cli(), "start", "--block", "--node-ip-address", ip, "--num-cpus", str(self.cpus_per_node),
                "--temp-dir", temp_dir, "--object-store-memory", str(self._object_store_bytes),
                # 0 and 0: each worker binds a port the OS picks, not one of 10002-19999 (shared
                # by every Ray cluster on the machine)
                "--min-worker-port", "0", "--max-worker-port", "0",
                "--disable-usage-stats", "--log-style", "record", "--log-color", "false"]
        args += ["--head", "--include-dashboard", "false"] if head else ["--address", self.address]
        for flag, port in ports.items():
            args += [f"--{flag}", str(port)]
        log = os.path.join(self.log_dir, f"{hostname}.log")
        with open(log, "ab") as out:
            # A session of its own: Ctrl-C in the terminal that started the cluster does not
            # reach the nodes (`up` returns while they run on; `stop` ends them).
            proc = subprocess.Popen(_UNSHARE + ["sh", "-c", _NODE_SCRIPT, "sh", hostname, private_tmp] + args,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self._env, start_new_session=True)
        self._procs[proc.pid] = proc
        stat = _stat(proc.pid)
        self.nodes.append({"hostname": hostname, "ip": ip, "head": head, "pid": proc.pid,
                           "start": stat[2] if stat else None, "temp_dir": temp_dir, "log": log,
                           "ports": ports, "children": []})
        self._save()

    def _wait_until_up(self):
        """Wait until the GCS lists every node as alive; record each node's processes."""
        deadline = time.monotonic() + self._start_timeout_s
        head_ip, port = self.address.split(":")
        alive = set()
        while True:
            for node in self.nodes:
                if not self.node_alive(self.nodes.index(node)):
                    raise ClusterError(f"{node['hostname']} exited while starting: "
                                       f"{_tail(node['log'], 3)} (log: {node['log']})")
            if _port_open(head_ip, int(port)):
                try:
                    alive = _alive_node_ips(self.address, timeout=5)
                except Exception:  # the GCS is up but not answering yet
                    alive = set()
                if all(n["ip"] in alive for n in self.nodes):
                    break
            if time.monotonic() > deadline:
                late = [n["hostname"] for n in self.nodes if n["ip"] not in alive]
                raise ClusterError(f"{', '.join(late)} not up within {self._start_timeout_s} s "
                                   f"(logs: {self.log_dir})")
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
        for pid, start in self._running(targets):
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


# ---- command line ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # Bad input: one line, exit 2, no usage block.
        print(f"localcluster: {message}", file=sys.stderr)
        sys.exit(2)


def _parser():
    parser = _Parser(prog="python -m bench.distributed.localcluster",
                     description="A Ray cluster of several hosts on this machine (needs root).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = commands.add_parser("up", help="start the nodes; return once they are up")
    up.add_argument("--nodes", type=int, default=2, help="how many nodes (hosts), the head included")
    up.add_argument("--cpus_per_node", type=int, default=1, help="CPUs each node offers to Ray")
    for name, text in [("up", "folder for logs and state"), ("down", "folder given to up"),
                       ("status", "folder given to up")]:
        sub = up if name == "up" else commands.add_parser(
            name, help="stop the cluster of --dir by its pids" if name == "down"
            else "its nodes and whether they run (exit 1 when none does)")
        sub.add_argument("--dir", required=True, help=text)
    return parser


def _print_status(cluster):
    print(f"address {cluster.address}")
    for i, node in enumerate(cluster.nodes):
        role = "head" if node["head"] else "worker"
        state = "running" if cluster.node_alive(i) else "stopped"
        print(f"{node['hostname']} {node['ip']} {role} pid {node['pid']} {state}")


def main(argv=None):
    """The CLI: `up`, `status` and `down` of a cluster kept in --dir. Returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            cluster = LocalCluster(nodes=args.nodes, cpus_per_node=args.cpus_per_node, log_dir=args.dir)
            cluster.start()
            _print_status(cluster)
            print(f"logs {cluster.log_dir}")
            print(f"connect: ray.init(address='{cluster.address}') or --address {cluster.address}")
            print(f"down: {sys.executable} -m bench.distributed.localcluster down --dir {cluster.log_dir}")
        elif args.command == "status":
            cluster = LocalCluster.attach(args.dir)
            _print_status(cluster)
            return 0 if cluster.running() else 1
        else:
            LocalCluster.attach(args.dir).stop()
            print(f"stopped; logs in {os.path.abspath(args.dir)}")
    except ValueError as e:
        print(f"localcluster: {e}", file=sys.stderr)
        return 2
    except ClusterError as e:
        print(f"localcluster: {e}", file=sys.stderr)
        return 2 if "no cluster state" in str(e) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
