"""The layout keeps showing the pipeline: daemon/'s top level is its stage packages, no
module grows past 500 lines nor any function past 80, and no test module imports another
(shared helpers live in helpers.py and conftest.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
STAGES = {"core", "library", "audio", "tags", "suggest", "review", "learn", "service", "cli"}


def _modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_daemon_top_level_is_the_stage_packages():
    top = {p.name for p in (REPO / "daemon").iterdir() if p.name != "__pycache__"}
    assert top == STAGES | {"__init__.py"}
    assert all((REPO / "daemon" / stage / "__init__.py").exists() for stage in STAGES)


@pytest.mark.parametrize("path", _modules("daemon", "trainer"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= 500, f"{path.name}: {text.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > 80]
    assert not long, f"{path.name}: {', '.join(long)}"


def test_no_test_module_imports_another():
    tests = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    found = []
    for path in (REPO / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            found += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in tests]
    assert not found, found
