"""The shape of the code base, checked by the field's tools rather than by review.

- the layers (pyproject.toml, [tool.importlinter]) by import-linter;
- lint and format by ruff (its complexity rule instead of line-count caps);
- no import cycle between project modules, counting the imports made inside functions;
- no file cites a document that is not in this repository.
"""

import ast
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bench", "sweeps", "resnet")


def _tool(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def _sources(folders=PACKAGES + ("tests",)):
    return sorted(p for f in folders for p in glob.glob(os.path.join(ROOT, f, "**", "*.py"), recursive=True))


def test_import_contracts_are_kept():
    proc = subprocess.run(
        [_tool("lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 3, proc.stdout[-2000:]


def test_ruff_check_and_format_pass():
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}"


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path, name):
    """Every project module `path` imports, at the top or inside a function."""
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def import_graph():
    """module -> the project modules it imports (a package's __init__ counts as the package)."""
    paths = {_module_name(p): p for p in _sources(PACKAGES)}
    return {name: {m for m in _imports(path, name) if m in paths and m != name} for name, path in paths.items()}


def find_cycle(graph):
    """One import cycle as a list of modules, or None. A package importing its own submodules (its
    `__init__` re-exporting them) is not a cycle: only imports between sibling modules are."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):  # a package's __init__ importing its own children
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle_through_a_function_level_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) is None


def test_no_import_cycle_counting_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


OUTSIDE_DOCUMENTS = re.compile(r"TF-STACK-NOTES|MULTI-WORKER-NOTES|STYLE\.md|\.\./shared|shared/[A-Z]")


def test_no_file_cites_a_document_outside_the_repository():
    files = _sources() + [os.path.join(ROOT, f) for f in ("README.md", "WORKSPACE.md", "pyproject.toml")]
    files.remove(os.path.abspath(__file__))  # the pattern above names them
    citing = [os.path.relpath(p, ROOT) for p in files if OUTSIDE_DOCUMENTS.search(open(p, encoding="utf-8").read())]
    assert not citing, citing
