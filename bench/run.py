"""python -m bench.run: train one configuration and append its row to results/summary.csv.

Every flag is a field of bench.config.options.RunConfig (its help and allowed values are declared there).
Exit status: 0 ok, 1 failed (row written; or the table could not take the row: kept beside it, the
error says where; or an unexpected error before the run started, nothing written), 2 bad input
(nothing written), 3 diverged (row written), 130 / 143 stopped by Ctrl-C / SIGTERM (row written with
status=interrupted once the run started; nothing written before).
Whatever goes wrong is one line on stderr; a traceback goes to a file that line names.
"""

from __future__ import annotations

from bench.config import exits

# The modules below take a second or two to import: a Ctrl-C then is one line and 130, not a traceback.
with exits.leave_on_signals("the run"):
    from absl import app, flags

    from bench import launch
    from bench.config import cli, options
    from bench.runner import processes

FLAGS = flags.FLAGS
cli.define_run_flags(FLAGS)


def usage():
    return cli.usage_text(__doc__, [f.name for f in options.flag_fields()])


def main(argv):
    """Parse the flags into a config and launch the run; its outcome decides the exit status."""
    del argv
    cfg = cli.config_from_flags(FLAGS)
    return launch.launch(cfg, command=cli.typed_command("bench.run")).exit_code


def entry():
    processes.follow_parent()  # a child of another command (sweeps.compare, --autotune) ends with its parent
    app.run(
        lambda argv: exits.program(main, argv, what="the run", stopped="nothing written"),
        flags_parser=lambda argv: cli.parse_flags(argv, usage),
    )


if __name__ == "__main__":
    entry()
