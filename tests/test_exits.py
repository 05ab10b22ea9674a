"""bench.config.exits: closed outputs never cost a row."""

import ast
import os
import sys

from bench.config import exits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STREAMS = {"sys.stdout", "sys.stderr", "sys.__stdout__", "sys.__stderr__"}


def test_no_function_binds_a_console_stream_when_its_module_is_imported():
    """`def f(out=sys.stdout)` keeps the stream of import time, before `exits.guard_streams` wraps it: a reader
    that went away (`| head -c1`) or a closed output would then fail the run. Streams are looked up when called."""
    found = []
    for package in ("bench", "sweeps", "resnet"):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                        defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
                        if any(ast.unparse(d) in STREAMS for d in defaults):
                            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not found


def test_an_output_closed_before_the_command_writes_nowhere(monkeypatch):
    """`>&-`: Python starts without sys.stdout; after the guard, writing to it is harmless."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # restored after the test (the guard replaces both)
    monkeypatch.setattr(sys, "stdout", None)
    exits.guard_streams()
    sys.stdout.write("step 1/100\n")
    sys.stdout.flush()
    print("summary", file=sys.stdout, flush=True)
    assert sys.stdout.isatty() is False
