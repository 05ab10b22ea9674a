"""`python -m bench.results upgrade FILE`: convert a results table of an older schema to this version's.
`python -m bench.results ruleset`: the path of the project's MLPerf compliance-checker ruleset (for `--config`)."""

from __future__ import annotations

import sys

from bench.config import exits
from bench.config.options import ConfigError
from bench.results import mlperf_log, table


def main(argv):
    """`upgrade FILE`: convert a table of an older schema; `ruleset`: print the MLPerf ruleset's path."""
    if argv == ["ruleset"]:  # its output is the answer: a write that failed (not a reader gone) is a failure
        print(mlperf_log.ruleset_path(), flush=True)
        failed = getattr(sys.stdout, "failed_write", None)
        if failed is not None:
            reason = getattr(failed, "strerror", None) or failed
            exits.error(f"the ruleset's path could not be written to standard output ({reason})")
            return exits.EXIT_FAILED
        return exits.EXIT_OK
    if len(argv) != 2 or argv[0] != "upgrade":
        raise ConfigError(f"usage: {table.UPGRADE_COMMAND} FILE, or python -m bench.results ruleset")
    try:
        backup = table.upgrade(argv[1])
    except OSError as exc:
        raise ConfigError(f"cannot upgrade {argv[1]}: {exc.strerror or exc}") from None
    print(f"upgraded {argv[1]} to this version's columns; the original is in {backup}")
    return exits.EXIT_OK


if __name__ == "__main__":
    exits.program(main, sys.argv[1:], what="the upgrade")
