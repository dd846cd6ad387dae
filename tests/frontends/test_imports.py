"""The frontends sit on the IR and the op table only: they import nothing from the passes or the backend, and
their own modules import each other without a cycle."""

import ast
import os
import subprocess
import sys

import networkx as nx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FRONTENDS = os.path.join(ROOT, "frontends")
ALLOWED = ("compiler.ir", "compiler.ops", "runtime.errors")  # what the frontends may import of ours


def _modules() -> dict[str, str]:
    """Module name -> file, for every module under frontends/."""
    found = {}
    for folder, _, files in os.walk(FRONTENDS):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return found


def _imports(name: str, path: str, modules) -> set[str]:
    """Every module `name` imports, lazily (inside functions) too; `from X import y` counts as X.y where that is a
    module of ours (`from compiler import ops` is compiler.ops, `from compiler import compile_model` is not allowed)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix("tensorforge.") for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").removeprefix("tensorforge.")
            if node.level:  # relative: `.` is the package, each further dot one package up
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                ours = f"{base}.{a.name}" in modules or base in ("compiler", "runtime")
                out.add(f"{base}.{a.name}" if ours else base)
    return out


def test_frontends_import_only_the_ir_and_the_ops_of_ours():
    modules = _modules()
    bad = {(name, m) for name, path in modules.items() for m in _imports(name, path, modules)
           if m.split(".")[0] in ("compiler", "runtime") and not m.startswith(ALLOWED)}
    assert not bad, sorted(bad)


def test_no_import_cycle_among_frontends():
    modules = _modules()
    g = nx.DiGraph()
    for name, path in modules.items():
        g.add_node(name)
        g.add_edges_from((name, m) for m in _imports(name, path, modules) if m in modules and m != name)
    assert nx.is_directed_acyclic_graph(g), list(nx.simple_cycles(g))


def test_importing_the_frontends_loads_no_pass_or_backend():
    # tensorforge/compiler/__init__.py is lazy (PEP 562): what is loaded is what the frontends themselves import
    code = ("import sys\n"
            "import tensorforge.frontends.onnx, tensorforge.frontends.onnx.docs, tensorforge.frontends.torch\n"
            "import tensorforge.frontends.nn, tensorforge.frontends.trainable\n"
            "print(' '.join(m for m in sys.modules if m.startswith('tensorforge.compiler.')))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    loaded = [m.removeprefix("tensorforge.") for m in out.split()]
    assert any(m.startswith("compiler.ops") for m in loaded), loaded
    assert all(m.startswith(("compiler.ir", "compiler.ops")) for m in loaded), loaded
