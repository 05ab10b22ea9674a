"""What every command-line entry point shares: absl parsing with the bad-input contract."""

from __future__ import annotations

import sys

from absl import flags


def parse_flags(argv):
    """absl parsing where a bad flag or a stray argument is one line on stderr and exit status 2."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if len(rest) > 1:
        print(f"error: unexpected arguments {' '.join(rest[1:])!r} (flags only; see --helpshort)", file=sys.stderr)
        sys.exit(2)
    return rest
