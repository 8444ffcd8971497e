"""The shape of the house: modules per package, the longest modules and functions, and
every import that runs up a floor, for daemon/ and trainer/ at a git revision.

    .venv/bin/python bench/house.py [--rev REV] [--top 8]

Without --rev it reads the working tree; with it, the tree at that revision (e.g. the
commit before a refactor, to print before and after side by side). Figures, not a test:
tests/core/test_layout.py is what enforces the floors and the size caps.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
from collections import Counter
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
# The order tests/core/test_layout.py enforces.
FLOORS = {name: floor for floor, name in enumerate(
    ("core", "tags", "audio", "library", "suggest", "learn", "review", "service", "cli"))}


def sources(rev: str | None) -> dict[PurePosixPath, str]:
    """Every .py file under daemon/ and trainer/ with its text, at `rev` or on disk."""
    if rev is None:
        return {PurePosixPath(p.relative_to(REPO).as_posix()): p.read_text(encoding="utf-8")
                for top in ("daemon", "trainer") for p in (REPO / top).rglob("*.py")}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "daemon", "trainer"],
                           cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    return {PurePosixPath(n): subprocess.run(["git", "show", f"{rev}:{n}"], cwd=REPO, check=True,
                                             capture_output=True, text=True).stdout
            for n in names if n.endswith(".py")}


def imported(path: PurePosixPath, tree: ast.AST) -> list[str]:
    """Absolute module names `path` imports, relative imports resolved."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(path.parent.parts)[:len(path.parent.parts) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return names


def up_floor(path: PurePosixPath, names: list[str]) -> list[str]:
    """The imports of a daemon module that reach a higher floor, or into trainer/."""
    if path.parts[0] != "daemon" or len(path.parts) < 3:
        return []
    mine = FLOORS[path.parts[1]]
    found = []
    for name in names:
        parts = name.split(".")
        into_trainer = parts[0] == "trainer" and path.parts[1] != "cli"
        upward = parts[0] == "daemon" and len(parts) > 1 and FLOORS.get(parts[1], -1) > mine
        if into_trainer or upward:
            found.append(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    files = sources(args.rev)
    packages: Counter[str] = Counter()
    lines: dict[str, int] = {}
    functions: list[tuple[int, str]] = []
    ups: list[str] = []
    for path, text in sorted(files.items()):
        package = "/".join(path.parts[:2]) if len(path.parts) > 2 else path.parts[0]
        packages[package] += 1
        lines[str(path)] = text.count("\n")
        tree = ast.parse(text)
        functions += [(n.end_lineno - n.lineno + 1, f"{path}:{n.name}") for n in ast.walk(tree)
                      if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        ups += [f"{path} -> {name}" for name in sorted(set(up_floor(path, imported(path, tree))))]
    print(f"# house at {args.rev or 'the working tree'}: {len(files)} modules, "
          f"{sum(lines.values())} lines")
    print("modules per package: " + ", ".join(f"{p} {n}" for p, n in sorted(packages.items())))
    print("longest modules: " + ", ".join(
        f"{p} {n}" for p, n in sorted(lines.items(), key=lambda x: -x[1])[:args.top]))
    print(f"modules over 450 lines: {sum(n > 450 for n in lines.values())}")
    print("longest functions: " + ", ".join(
        f"{name} {n}" for n, name in sorted(functions, reverse=True)[:args.top]))
    print(f"functions over 60 lines: {sum(n > 60 for n, _ in functions)}")
    print(f"imports up a floor: {len(ups)}")
    for line in ups:
        print(f"  {line}")


if __name__ == "__main__":
    main()
