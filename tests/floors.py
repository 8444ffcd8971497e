"""The floors of daemon/ and the imports that run up one: what tests/core/test_layout.py
enforces and bench/house.py prints. Works on a module's path and text, so the bench can
read any git revision."""

from __future__ import annotations

import ast
from pathlib import PurePosixPath

# The floors, lowest first: a module imports from its own package or a lower floor, never
# a higher one. Review reads what learn knows (the models, the runs, the labels); learn
# never reads review, so learn sits below it.
FLOORS = ("core", "tags", "audio", "library", "suggest", "learn", "review", "service", "cli")
# The one place the daemon reaches the trainer: the CLI hands `train`/`evaluate` over.
TRAINER_HANDOVER = "daemon/cli/commands.py"


def imported(rel: PurePosixPath, text: str) -> list[str]:
    """Every module the module at `rel` (relative to the repository) imports, as absolute
    dotted names: top-level and in-function imports, relative ones resolved,
    `from daemon import x` as daemon.x."""
    package = list(rel.with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += ([module] if "." in module
                      else [f"{module}.{alias.name}" for alias in node.names])
    return list(dict.fromkeys(names))


def floor_breaks(rel: PurePosixPath, text: str) -> list[str]:
    """`module -> import` for each import of the daemon module at `rel` that runs up a
    floor or reaches the trainer (the CLI's hand-over aside)."""
    own = FLOORS.index(rel.parts[1]) if len(rel.parts) > 2 else len(FLOORS)

    def runs_up(name: str) -> bool:
        parts = name.split(".")
        if parts[0] == "trainer":
            return rel.as_posix() != TRAINER_HANDOVER
        return (parts[0] == "daemon" and len(parts) > 1 and parts[1] in FLOORS
                and FLOORS.index(parts[1]) > own)

    return [f"{rel.as_posix()} -> {name}" for name in imported(rel, text) if runs_up(name)]
