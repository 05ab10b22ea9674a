"""python -m bench.distributed.localcluster up|status|down: a local multi-host cluster from a shell.

Enters through `bench.config.exits.command`: bad input (a bad flag, a folder without a cluster) is
one line and exit 2; a cluster that cannot start or stop is one line and exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.config import exits
from bench.config.options import ConfigError
from bench.distributed.localcluster.cluster import ClusterError, LocalCluster


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)  # bad input: one line, exit 2, no usage block


def _parser():
    parser = _Parser(
        prog="python -m bench.distributed.localcluster",
        description="A Ray cluster of several hosts on this machine (needs root).",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = commands.add_parser("up", help="start the nodes; return once they are up")
    up.add_argument("--nodes", type=int, default=2, help="how many nodes (hosts), the head included")
    up.add_argument("--cpus_per_node", type=int, default=1, help="CPUs each node offers to Ray")
    for name, text in [
        ("up", "folder for logs and state"),
        ("down", "folder given to up"),
        ("status", "folder given to up"),
    ]:
        sub = (
            up
            if name == "up"
            else commands.add_parser(
                name,
                help="stop the cluster of --dir by its pids"
                if name == "down"
                else "its nodes and whether they run (exit 1 when none does)",
            )
        )
        sub.add_argument("--dir", required=True, help=text)
    return parser


def _print_status(cluster):
    print(f"address {cluster.address}")
    for i, node in enumerate(cluster.nodes):
        role = "head" if node["head"] else "worker"
        state = "running" if cluster.node_alive(i) else "stopped"
        print(f"{node['hostname']} {node['ip']} {role} pid {node['pid']} {state}")


def _attach(folder):
    try:
        return LocalCluster.attach(folder)
    except ClusterError as e:  # no cluster state there
        raise ConfigError(str(e)) from None


def _up(args):
    try:
        cluster = LocalCluster(nodes=args.nodes, cpus_per_node=args.cpus_per_node, log_dir=args.dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cluster.start()
    _print_status(cluster)
    print(f"logs {cluster.log_dir}")
    print(f"connect: ray.init(address='{cluster.address}') or --address {cluster.address}")
    print(f"down: {sys.executable} -m bench.distributed.localcluster down --dir {cluster.log_dir}")


def main(argv=None):
    """The CLI: `up`, `status` and `down` of a cluster kept in --dir. Returns the exit code; bad input raises
    ConfigError."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            _up(args)
        elif args.command == "status":
            cluster = _attach(args.dir)
            _print_status(cluster)
            return exits.EXIT_OK if cluster.running() else exits.EXIT_FAILED
        else:
            _attach(args.dir).stop()
            print(f"stopped; logs in {os.path.abspath(args.dir)}")
    except ClusterError as e:  # the cluster would not start or stop: not a bug, one line
        exits.error(e)
        return exits.EXIT_FAILED
    return exits.EXIT_OK


if __name__ == "__main__":
    exits.program(main, sys.argv[1:], what="localcluster")
