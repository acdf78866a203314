"""The package's house rules, read from its source: small modules and functions, no import circles
(also none hidden by an import inside a function), no use of another module's private names, and
the layering of ARCHITECTURE.md (exporters and benchmarks never import stages)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "exporters", "benchmarks")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    """{'slimpipe.pipeline.cli': path, ...} for every module of the package."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["slimpipe." + ".".join(parts)] = path
    return out


MODULES = modules()


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every slimpipe import in a file, at any depth, except
    under `if TYPE_CHECKING:` (annotations only: nothing is imported when the code runs)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slimpipe."):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("slimpipe.")]
    return out


def target(module: str, name: str) -> str:
    """The module an import refers to: `from pkg import sub` imports the module pkg.sub."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def test_modules_and_functions_are_small():
    long_modules = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    long_functions = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name} ({length} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_no_module_uses_another_modules_private_names():
    found = []
    for module, path in MODULES.items():
        for imported, names, line in imports(path):
            for name in names:
                dunder = name.startswith("__") and name.endswith("__")
                if name.startswith("_") and not dunder and target(imported, name) != module:
                    found.append(f"{module}:{line} imports {imported}.{name}")
            if any(part.startswith("_") for part in imported.split(".")):
                found.append(f"{module}:{line} imports the private module {imported}")
    assert not found


def graph() -> dict[str, set[str]]:
    edges = {}
    for module, path in MODULES.items():
        deps = set()
        for imported, names, _ in imports(path):
            deps |= {target(imported, n) for n in names} if names else {imported}
        edges[module] = {d for d in deps if d in MODULES and d != module}
    return edges


def test_no_import_circles():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("lower", ["exporters", "benchmarks"])
def test_libraries_do_not_import_stages(lower):
    # benchmarks/bench_*.py is the pytest-benchmark suite, which runs whole recipes: not a library.
    found = [f"{m} imports {d}" for m, deps in graph().items() if m.startswith(f"slimpipe.{lower}")
             and not m.rsplit(".", 1)[-1].startswith("bench_") for d in deps if d.startswith("slimpipe.stages")]
    assert not found


def test_pipeline_knows_no_concrete_stage_but_in_the_cli():
    found = [f"{m} imports {d}" for m, deps in graph().items()
             if m.startswith("slimpipe.pipeline") and m != "slimpipe.pipeline.cli"
             for d in deps if d.startswith("slimpipe.stages")]
    assert not found
