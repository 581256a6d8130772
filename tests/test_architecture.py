"""The house rules of the package layout: the CLI is the top and nothing imports it, and no two
folders of `src/mmdistill` import each other, directly or round a longer loop. Imports inside
functions count (they are cycles that only wait for the call); `if TYPE_CHECKING:` ones do not."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmdistill"


def _unit(path: Path) -> str:
    """A top-level folder (`cache`, `run`, ...) or module (`cli`, `preflight`, ...)."""
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _package(path: Path) -> str:
    """The dotted package a file's relative imports start from (`mmdistill.run` for run/x.py)."""
    return ".".join(path.relative_to(SRC.parent).parent.parts)


def _imports(path: Path) -> set[str]:
    return _units_imported(path.read_text(), _package(path))


def _units_imported(source: str, package: str) -> set[str]:
    """The units of mmdistill that `source` (a module of `package`) imports, relative imports
    resolved: `from ..cli import main` is as much an import of the CLI as the absolute form."""
    tree = ast.parse(source)
    # only the body of `if TYPE_CHECKING:` is for the type checker; its `else:` runs
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                 for statement in node.body for n in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names = []
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mmdistill" and len(parts) > 1 and ((SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").is_file()):
                found.add(parts[1])
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        graph[unit] |= _imports(path) - {unit}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_nothing_imports_the_cli():
    importers = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                       if "cli" in _imports(p) and p.name not in ("cli.py", "__main__.py"))
    assert importers == []


def test_no_import_cycle_between_packages():
    assert _cycle(_graph()) is None


def test_the_checker_finds_a_cycle():
    """The check above could pass by finding nothing at all: make sure it sees a loop."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert {"config", "data"} <= _graph()["cache"]  # and that it reads real imports


def test_the_checker_reads_relative_imports():
    """A relative import of the CLI or of another folder is the same dependency as the absolute one."""
    assert _units_imported("from ...cli import main", "mmdistill.run.stages") == {"cli"}
    assert _units_imported("def f():\n    from ..cache import store", "mmdistill.run") == {"cache"}
    assert _units_imported("from . import store", "mmdistill.cache") == {"cache"}
    assert _units_imported("from .context import RunContext", "mmdistill.run") == {"run"}
    assert _units_imported("if TYPE_CHECKING:\n    from ..cli import main", "mmdistill.run") == set()


def test_the_checker_counts_what_runs_outside_type_checking():
    assert _units_imported("if TYPE_CHECKING:\n    pass\nelse:\n    from mmdistill.cli import main", "mmdistill") == {"cli"}
    assert _units_imported("if not TYPE_CHECKING:\n    from mmdistill.cli import main", "mmdistill") == {"cli"}


def test_a_run_reads_as_its_stages_on_one_screen():
    """Issue 13: `run_experiment` is the list of stages, not the stages' work."""
    import inspect

    from mmdistill.run.experiment import run_experiment

    assert len(inspect.getsource(run_experiment).splitlines()) <= 40
