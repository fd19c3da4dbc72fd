"""The package's modules import one another without cycles, and the pipeline's stage modules stay small (issue 8).

The imports are read from the source with ``ast`` (top-level and inside functions alike: an import inside a function
is still a dependency), so nothing is imported to check them.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "csp_observatory"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "csp_observatory":
                out |= {a.name for a in node.names if a.name in modules}
            elif node.module.startswith("csp_observatory."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("csp_observatory.")}
    return out - {path.stem}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package, with the package's modules it imports."""
    modules = {p.stem for p in package.glob("*.py")}
    return {p.stem: _imports(p, modules) & modules for p in package.glob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_of_the_package_imports_itself_back_through_others():
    graph = import_graph()
    assert {"pipeline", "pipeline_supply", "reporting", "loading", "stamp"} <= set(graph)
    assert cycles(graph) == []


def test_the_stage_modules_do_not_import_the_pipeline_facade_and_stay_small():
    """``pipeline.py`` names the stages for the DAG; the stage modules and what they call never import it back."""
    graph = import_graph()
    stages = [m for m in graph if m.startswith("pipeline_")]
    assert {"pipeline_supply", "pipeline_collect", "pipeline_parse", "pipeline_geo", "pipeline_load",
            "pipeline_report"} <= set(stages)
    assert not [m for m in stages if "pipeline" in graph[m]]
    assert not [m for m in ("reporting", "loading", "stamp") if "pipeline" in graph[m]]
    too_long = {m: n for m in ["pipeline", *stages]
                if (n := len((PACKAGE / f"{m}.py").read_text(encoding="utf-8").splitlines())) > 400}
    assert too_long == {}
