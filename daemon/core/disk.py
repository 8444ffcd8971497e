"""The state disk and the database file, as `status`, /metrics and the CLI describe them.

A full state disk, or a database the service cannot write, is a named condition rather
than a mystery: the service cannot write its heartbeat then, so `status` looks at the
disk itself (free space of state_dir, whether the database file can be written) and at
the leader lock's holder for a sign of life (daemon.service.leader.lock_holder).

`database_problem(err, ...)` words a database error for a person in one line: which
database, what is wrong, what to do. Every CLI command answers with it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

# Less than this free on the state disk counts as full: SQLite needs room for its WAL
# and the service for health.json before a write can go through.
FULL_BYTES = 1 << 20
# SQLite's primary result codes: read-only, cannot open, I/O error.
_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_IOERR = 8, 14, 10


def state_disk(state_dir: Path) -> dict[str, Any]:
    """{"path", "free_bytes", "total_bytes", "full"} for the disk holding `state_dir`
    (free/total None when it cannot be looked at)."""
    try:
        usage = shutil.disk_usage(state_dir)
    except OSError:
        return {"path": str(state_dir), "free_bytes": None, "total_bytes": None,
                "full": False}
    return {"path": str(state_dir), "free_bytes": usage.free, "total_bytes": usage.total,
            "full": usage.free < FULL_BYTES}


def unwritable_reason(path: Path) -> str | None:
    """Why the SQLite database at `path` cannot be written (its file or its folder, where
    SQLite keeps the -wal and -shm) and what to do, or None. A read-only filesystem counts
    even for root."""
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            if _read_only_mount(target):
                return f"{target} is on a read-only filesystem: mount it read-write"
            return (f"no write permission on {target}: give the service's user write "
                    "access to it")
    return None


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _sqlite_code(err: BaseException) -> int | None:
    orig = getattr(err, "orig", None) or err
    code = getattr(orig, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def database_unwritable(err: BaseException) -> bool:
    """SQLite refused a write because the file or its folder is read-only (or could not
    be opened or written at all)."""
    return _sqlite_code(err) in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_IOERR)


def first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
