"""The import structure (REDESIGN.md): no import cycle among the modules of compiler/, frontends/ and runtime/ except
the IR parser's use of the op table; arrows point down (ops import neither passes, backend nor autodiff; the
runtime imports nothing of the compiler or the frontends; the frontends nothing of passes or backend). Every import
counts, those inside functions too. Also: no Python file over ~500 lines without a reason at its top."""

import ast
import pathlib

import networkx as nx
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("compiler", "frontends", "runtime")
ALLOWED = {("compiler.ir.parser", "compiler.ops")}  # the text format needs the op table, as MLIR's parser a context


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[_canonical(name)] = path
    return found


def _canonical(name: str) -> str:
    """Module names as this checkout spells them, with or without the `tensorforge.` namespace."""
    return name.removeprefix("tensorforge.")


def import_graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # imports for annotations only: no arrow at run time
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [_canonical(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = ""
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                elif node.module == "tensorforge":  # `from tensorforge import runtime`
                    targets = [a.name for a in node.names]
                    mod = None
                else:
                    mod = _canonical(node.module or "")
                # `from pkg import sub` names the submodule where there is one, else the package
                if mod is not None:
                    targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import a.b.c` of a non-module attribute: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    g.add_edge(name, t)
    return g


def test_no_import_cycles():
    g = import_graph()
    g.remove_edges_from([e for e in list(g.edges) if any(e[0] == a and e[1].startswith(b) for a, b in ALLOWED)])
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("lower, forbidden", [
    ("compiler.ops", ("compiler.backend", "compiler.passes", "compiler.autodiff", "tensorforge.compiler.api", "tensorforge.compiler.driver")),
    ("compiler.ir", ("compiler.backend", "compiler.passes", "compiler.autodiff", "tensorforge.compiler.api", "tensorforge.compiler.driver")),
    ("runtime", ("compiler", "frontends")),
    ("frontends", ("compiler.backend", "compiler.passes", "tensorforge.compiler.api", "tensorforge.compiler.driver")),
    ("compiler.passes", ("compiler.backend", "tensorforge.compiler.api", "tensorforge.compiler.driver")),
    ("compiler.backend", ("tensorforge.compiler.api", "tensorforge.compiler.driver", "tensorforge.compiler.report", "tensorforge.compiler.tune")),
    ("compiler.autodiff", ("tensorforge.compiler.api", "tensorforge.compiler.driver", "tensorforge.compiler.report", "compiler.backend")),
])
def test_imports_point_down(lower, forbidden):
    g = import_graph()
    up = [(a, b) for a, b in g.edges if (a == lower or a.startswith(lower + "."))
          and any(b == f or b.startswith(f + ".") for f in forbidden) and (a, b) not in ALLOWED
          and not any(a == x and b.startswith(y) for x, y in ALLOWED)]
    assert not up, f"{lower} imports upward: " + ", ".join(f"{a} -> {b}" for a, b in up)


def test_frontends_use_only_the_ir_the_ops_and_the_errors():
    """What the frontends may import of ours: the IR, the op table and the exception hierarchy."""
    allowed = ("frontends", "compiler.ir", "compiler.ops", "runtime.errors")
    g = import_graph()
    bad = [(a, b) for a, b in g.edges if a.startswith("frontends")
           and not any(b == x or b.startswith(x + ".") for x in allowed)]
    assert not bad, "frontends import: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_files_stay_small_or_say_why():
    long = []
    for pkg in PACKAGES + ("tests", "benchmarks"):
        for path in (ROOT / pkg).rglob("*.py"):
            lines = path.read_text().splitlines()
            if len(lines) > 520 and "500 lines" not in "\n".join(lines[:5]):
                long.append(f"{path.relative_to(ROOT)} ({len(lines)} lines)")
    assert not long, "over ~500 lines without a reason at the top: " + ", ".join(long)
