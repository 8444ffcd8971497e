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
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from floors import floor_breaks  # noqa: E402  (the check tests/core/test_layout.py runs)


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
        if path.parts[0] == "daemon":
            ups += floor_breaks(path, text)
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
