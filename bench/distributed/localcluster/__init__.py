"""A Ray cluster of K "hosts" on this one machine, for tests and for rehearsing the two-node recipe.

Each node is a `ray start --block` inside its own UTS and mount namespaces (`unshare --uts --mount`,
which needs root), so it has its own hostname (node-a, node-b, ...), its own loopback address
(127.0.0.3, .4, ...) and, except the head, its own /tmp (which still holds the folders of the machine's
/tmp that the run comes from: a clone, its virtualenv or the working folder under /tmp). Every port a node would otherwise take at
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

No TensorFlow; from `bench` outside this package only the command's entry (`bench.config.exits`,
`ConfigError`). Ray is imported only to ask the GCS which nodes are alive.

Modules: `cluster` (LocalCluster: start, kill, stop by pid), `procs` (processes and ports read from
/proc), `__main__` (the command line).
"""

from bench.distributed.localcluster.cluster import (  # noqa: F401 - the public names
    FIRST_IP,
    MAX_NODES,
    STATE_FILE,
    ClusterError,
    LocalCluster,
    namespaces_available,
)
from bench.distributed.localcluster.procs import _alive, _stat  # noqa: F401 - tests check pids with them
