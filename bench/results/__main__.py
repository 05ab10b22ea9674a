"""`python -m bench.results upgrade FILE`: convert a results table of an older schema to this version's."""

from __future__ import annotations

import sys

from bench.config import exits
from bench.config.options import ConfigError
from bench.results import table


def main(argv):
    """`python -m bench.results upgrade FILE`: convert a table of an older schema (the only command)."""
    if len(argv) != 2 or argv[0] != "upgrade":
        raise ConfigError(f"usage: {table.UPGRADE_COMMAND} FILE")
    try:
        backup = table.upgrade(argv[1])
    except OSError as exc:
        raise ConfigError(f"cannot upgrade {argv[1]}: {exc.strerror or exc}") from None
    print(f"upgraded {argv[1]} to this version's columns; the original is in {backup}")
    return exits.EXIT_OK


if __name__ == "__main__":
    sys.exit(exits.command(main, sys.argv[1:], what="the upgrade"))
