"""`python -m bench.results upgrade FILE`: convert a results table of an older schema to this version's."""

from __future__ import annotations

import sys

from bench.results import table


def main(argv):
    """`python -m bench.results upgrade FILE`: convert a table of an older schema (the only command)."""
    if len(argv) != 2 or argv[0] != "upgrade":
        print(f"usage: {table.UPGRADE_COMMAND} FILE", file=sys.stderr)
        return 2
    try:
        backup = table.upgrade(argv[1])
    except (table.ResultsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"upgraded {argv[1]} to this version's columns; the original is in {backup}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
