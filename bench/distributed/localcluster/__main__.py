"""python -m bench.distributed.localcluster up|status|down: a local multi-host cluster from a shell."""

from __future__ import annotations

import argparse
import os
import sys

from bench.distributed.localcluster.cluster import ClusterError, LocalCluster


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # Bad input: one line, exit 2, no usage block.
        print(f"localcluster: {message}", file=sys.stderr)
        sys.exit(2)


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
