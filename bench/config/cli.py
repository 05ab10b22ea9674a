"""Command lines built from `RunConfig`'s fields: the flags of `bench.run` and `sweeps.tune`, strict parsing, help.

Each field declares its flag once (`bench.config.options.option`); here it becomes
- for `python -m bench.run`: a typed absl flag (enum, integer, float, boolean, string);
- for `python -m sweeps.tune`: the same flag, with the same default and help, where
  axis fields take a comma list of values (`--n 3,5,9`) and the others one value.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import textwrap

from absl import flags

from bench.config import options
from bench.config.options import RunConfig

FLAGFILE_HELP = "Read flags from this file, one --flag=value per line (absl)."


def _define_typed(f, flag_values, default=dataclasses.MISSING, **extra):
    meta, name = f.metadata, f.name
    default = f.default if default is dataclasses.MISSING else default
    kwargs = dict(flag_values=flag_values, **extra)
    if meta["parse"] is not None or (meta["kind"] is str and not meta["choices"]):
        flags.DEFINE_string(name, default, meta["help"], **kwargs)
    elif meta["choices"]:
        flags.DEFINE_enum(name, default, list(meta["choices"]), meta["help"], **kwargs)
    elif meta["kind"] is bool:
        flags.DEFINE_boolean(name, default, meta["help"], **kwargs)
    elif meta["kind"] is int:
        flags.DEFINE_integer(name, default, meta["help"], **kwargs)
    elif meta["kind"] is float:
        flags.DEFINE_float(name, default, meta["help"], **kwargs)
    else:
        raise TypeError(f"RunConfig.{name}: no flag type for {meta['kind']}")


def define_run_flags(flag_values=flags.FLAGS):
    """Every RunConfig field as a typed flag (for `bench.run`)."""
    for f in options.flag_fields():
        _define_typed(f, flag_values)


def define_field_flags(overrides, flag_values=flags.FLAGS):
    """Some RunConfig fields as typed flags of another command (`bench.check`), the same help and choices.

    `overrides`: field name -> keyword arguments for its flag (e.g. another `default`, `lower_bound`).
    """
    fields = {f.name: f for f in options.flag_fields()}
    for name, extra in overrides.items():
        _define_typed(fields[name], flag_values, **extra)


def format_value(value):
    """A value as a flag's default text (`options.flag_text`), None as None (no default)."""
    return None if value is None else options.flag_text(value)


def define_sweep_flags(flag_values=flags.FLAGS):
    """Every RunConfig field as a flag of `sweeps.tune`: axis fields as comma lists, the rest as in bench.run."""
    for f in options.flag_fields():
        if f.metadata["axis"]:
            default = f.metadata["sweep_default"] or format_value(f.default)
            choices = f.metadata["choices"]
            help_text = f"<{'|'.join(choices)}>: {f.metadata['help']}" if choices else f.metadata["help"]
            flags.DEFINE_string(f.name, default, help_text, flag_values=flag_values)  # as absl words an enum
        else:
            _define_typed(f, flag_values)


def config_from_flags(values) -> RunConfig:
    """A RunConfig from parsed `bench.run` flags (validation is `validation.validate`'s)."""
    return RunConfig(**{f.name: values[f.name].value for f in options.flag_fields()})


def parse_flags(argv, usage=None):
    """absl parsing where a bad flag or a stray argument is one line on stderr and exit status 2.

    `--help` (or -h, --helpshort) prints `usage()` and exits 0; `--helpfull` adds absl's own flags.
    """
    if usage is not None and any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
        print(usage())
        sys.exit(0)
    try:
        return parse_argv(argv)
    except options.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def parse_argv(argv, flag_values=flags.FLAGS):
    """Parse `argv` into `flag_values`; return [program]. Raises ConfigError (one line) for anything wrong:
    an unknown flag, a bad value, a stray argument, a --flagfile that is not a readable UTF-8 text file."""
    flagfiles = _flagfiles(argv[1:])
    for path in flagfiles:  # absl would block on a FIFO, and reads a folder's error late
        if not os.path.isfile(path):
            raise options.ConfigError(f"--flagfile={path} is not a file")
    try:
        rest = flag_values(expand_bare_flags(argv))
    except flags.Error as err:
        raise options.ConfigError(" ".join(str(err).split())) from None
    except (OSError, ValueError) as err:  # reading a flag file: not UTF-8 (UnicodeDecodeError), unreadable
        raise options.ConfigError(
            f"cannot read --flagfile={', '.join(flagfiles) or '?'}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if len(rest) > 1:
        raise options.ConfigError(f"unexpected arguments {' '.join(rest[1:])!r} (flags only; see --help)")
    return rest


def _flagfiles(args):
    """The paths given to --flagfile in `args` (absl spells it --flagfile=PATH or --flagfile PATH)."""
    paths = []
    for i, arg in enumerate(args):
        if arg.startswith(("--flagfile=", "-flagfile=")):
            paths.append(arg.split("=", 1)[1])
        elif arg in ("--flagfile", "-flagfile") and i + 1 < len(args):
            paths.append(args[i + 1])
    return paths


def expand_bare_flags(argv):
    """`--autotune` given without a value (last, or before another flag) -> `--autotune=on` (the field's `bare`)."""
    bare = {f"--{f.name}": f"--{f.name}={f.metadata['bare']}" for f in options.flag_fields() if f.metadata.get("bare")}
    out = list(argv[:1])
    for i, arg in enumerate(argv[1:], start=1):
        following = argv[i + 1] if i + 1 < len(argv) else None
        takes_next = following is not None and not following.startswith("-")
        out.append(bare[arg] if arg in bare and not takes_next else arg)
    return out


def usage_text(doc, names, flag_values=flags.FLAGS, width=100):
    """Help for the named flags (testing-only RunConfig fields left out), then --flagfile."""
    testing = {f.name for f in options.flag_fields() if f.metadata["testing"]}
    lines = [doc.strip(), "", "flags:"]
    for name in names:
        if name in testing:
            continue
        flag = flag_values[name]
        default = "" if flag.default is None else f" (default: {format_value(flag.default)})"
        lines.append(f"  --{name}{default}")  # absl puts an enum's choices at the start of its help
        lines.extend(_wrap(flag.help, width))
    lines.append("  --flagfile")
    lines.extend(_wrap(FLAGFILE_HELP, width))
    lines.append("\n--helpfull lists every flag, absl's and the testing ones too.")
    return "\n".join(lines)


def _wrap(text, width):
    return textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ")


def typed_command(module):
    """The command as the user typed it: `python -m MODULE ARGS` rather than the module's file path."""
    program = os.path.basename(sys.argv[0])
    if program.endswith(".py") or program == "-m":
        program = f"python -m {module}"
    command = f"{program} {shlex.join(sys.argv[1:])}".strip()
    # an argument that was not UTF-8 arrives with surrogate escapes, which no UTF-8 file can hold
    return command.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
