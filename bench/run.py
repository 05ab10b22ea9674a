"""python -m bench.run: train one configuration and append its row to results/summary.csv.

Every flag is a field of bench.config.options.RunConfig (its help and allowed values are declared there).
Exit status: 0 ok, 1 failed (row written; or the table could not take the row: kept beside it, the
error says where; or an unexpected error before the run started, nothing written), 2 bad input
(nothing written), 3 diverged (row written), 130 / 143 stopped by Ctrl-C / SIGTERM (row written with
status=interrupted once the run started; nothing written before).
Whatever goes wrong is one line on stderr; a traceback goes to a file that line names.
"""

from __future__ import annotations

import sys

from absl import app, flags

from bench.config import cli, options
from bench.config.options import ConfigError
from bench.distributed import driver
from bench.runner import loop

FLAGS = flags.FLAGS
cli.define_run_flags(FLAGS)


def usage():
    return cli.usage_text(__doc__, [f.name for f in options.flag_fields()])


def main(argv):
    """The one place that decides the exit status (see the module docstring)."""
    del argv
    try:
        cfg = cli.config_from_flags(FLAGS)
        runner = driver.run if cfg.strategy == options.MULTI_WORKER else loop.run  # Ray Train drives the workers
        outcome = runner(cfg, command=cli.typed_command("bench.run"))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return loop.EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before the run installed its own handler (or a multi-worker driver): no row
        print("error: interrupted (SIGINT) before the run could write a row; nothing written", file=sys.stderr)
        return loop.EXIT_SIGNAL["SIGINT"]
    except Exception as exc:  # noqa: BLE001 - a bug included: one line, the traceback kept in a file
        log = loop.save_traceback(exc)
        print(f"error: {loop.first_line(exc)} (unexpected; traceback: {log})", file=sys.stderr)
        return loop.EXIT_FAILED
    return outcome.exit_code


def entry():
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, usage))


if __name__ == "__main__":
    entry()
