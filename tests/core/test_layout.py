"""The layout keeps showing the pipeline: daemon/'s top level is its stage packages, no
import runs up a floor, no module grows past 500 lines nor any function past 80, the test
modules sit in folders that mirror the packages, and no test module imports another (shared
helpers live in tests/: helpers.py, conftest.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path, PurePosixPath

import floors
import pytest
from floors import FLOORS

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


def _test_modules() -> list[Path]:
    return sorted((REPO / "tests").rglob("test_*.py"))


def test_no_test_module_imports_another():
    tests = {p.stem for p in _test_modules()}
    found = []
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            found += [f"{path.relative_to(REPO)} imports {n}" for n in names
                      if n.split(".")[0] in tests]
    assert not found, found


def test_test_modules_sit_in_the_folder_of_what_they_test():
    """tests/<package>/ mirrors daemon/'s stage packages, plus trainer/ and e2e/ (the daemon
    as a subprocess, the browser, several processes); tests/ itself holds only the shared
    helpers. Folders have no __init__.py, so pytest imports each test module by its own
    name: two modules of one name in different folders would collide."""
    folders = STAGES | {"trainer", "e2e"}
    modules = _test_modules()
    misplaced = [str(p.relative_to(REPO)) for p in modules
                 if p.parent.parent != REPO / "tests" or p.parent.name not in folders]
    assert not misplaced, misplaced
    names = [p.name for p in modules]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert not list((REPO / "tests").rglob("__init__.py"))


def test_station_means_one_thing():
    """`station` is conftest's fixture and `Station` tests/stations.py's class: a module's
    own kind of station takes its own name, so a reader knows what either is anywhere."""
    found = []
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.FunctionDef) and node.name == "station"
                    and path.name != "conftest.py"):
                found.append(f"{path.relative_to(REPO)} defines station()")
            if (isinstance(node, ast.ClassDef) and node.name == "Station"
                    and path.name != "stations.py"):
                found.append(f"{path.relative_to(REPO)} defines class Station")
    assert not found, found


def floor_breaks(path: Path) -> list[str]:
    """tests/floors.py's check of the daemon module at `path`."""
    return floors.floor_breaks(PurePosixPath(path.relative_to(REPO).as_posix()),
                               path.read_text(encoding="utf-8"))


def test_the_floors_name_every_stage_once():
    assert sorted(FLOORS) == sorted(STAGES)


def test_no_import_runs_up_a_floor():
    found = [line for path in _modules("daemon") for line in floor_breaks(path)]
    assert not found, "imports that run up a floor:\n" + "\n".join(found)


def test_the_floor_check_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The check itself: absolute, relative and in-function imports up a floor are named;
    imports down a floor and inside the package are not."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    module = tmp_path / "daemon" / "tags" / "sample.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from daemon.core.errors import FileError\n"
        "from daemon.tags import genres\n"
        "from . import read\n"
        "import daemon.library.walk\n"
        "from ..audio.decode import decode\n"
        "def later():\n"
        "    from daemon import suggest\n"
        "    import trainer.backbone\n")
    assert floor_breaks(module) == [
        "daemon/tags/sample.py -> daemon.library.walk",
        "daemon/tags/sample.py -> daemon.audio.decode",
        "daemon/tags/sample.py -> daemon.suggest",
        "daemon/tags/sample.py -> trainer.backbone",
    ]
