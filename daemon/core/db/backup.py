"""The SQLite database's backups: written, checked, kept, found, put back.

A backup is a copy made with SQLite's online backup API (consistent while the service
writes; WAL included), written under a temporary name, checked with
`PRAGMA integrity_check` and only then renamed to
`backups/genretagger-YYYYmmdd-HHMMSS-<why>.db` (why: daily or migration), so a
file with that name is always a whole, checked database. The service takes one every
day (daemon.service.scheduler) and before every migration (daemon.core.db.engine); the
newest `backup.keep` stay. `genretagger restore` puts one back while the service is
stopped; a database that fails its check at start-up stops `run` with DAMAGED_EXIT.

PostgreSQL keeps none of these: its database is the DBA's, backed up with pg_dump.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from datetime import datetime
from pathlib import Path

from daemon.core.errors import BackupFailed, DatabaseDamaged

log = logging.getLogger(__name__)

# `run`'s exit code for a damaged database: systemd does not restart it
# (RestartPreventExitStatus= in systemd/genretagger.service), a restore must come first.
DAMAGED_EXIT = 3
PREFIX = "genretagger-"
SUFFIX = ".db"
# SQLite's primary result codes for "this is not a (whole) database".
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _check(path: Path, pragma: str = "integrity_check") -> str | None:
    """None when the SQLite file at `path` passes the check, else the first problem."""
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error as err:
        return str(err)
    try:
        rows = conn.execute(f"PRAGMA {pragma}").fetchall()
    except sqlite3.Error as err:
        return str(err)
    finally:
        conn.close()
    first = rows[0][0] if rows else "no answer"
    return None if first == "ok" else str(first)


def is_damage(exc: BaseException) -> bool:
    """Did SQLite fail because the file is damaged or not a database at all?"""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def list_backups(folder: Path) -> list[Path]:
    """The backups in `folder`, newest first (by the time in their names)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob(f"{PREFIX}*{SUFFIX}") if p.is_file()),
                  key=lambda p: p.name, reverse=True)


def newest_good_backup(folder: Path) -> Path | None:
    """The newest backup in `folder` that passes SQLite's quick check, or None."""
    for path in list_backups(folder):
        if _check(path, "quick_check") is None:
            return path
        log.warning("backup %s fails its check; looking at an older one", path)
    return None


def backup_database(path: Path, folder: Path, why: str, keep: int | None = None) -> Path:
    """Copy the SQLite database at `path` into `folder` (online, consistent), check the
    copy, and keep the newest `keep` backups (None: all). Returns the backup's path;
    BackupFailed (nothing half-written left behind) when it cannot be made or checked."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = folder / f"{PREFIX}{stamp}-{why}{SUFFIX}"
    n = 1
    while target.exists():  # two in one second (a migration right after a restore)
        n += 1
        target = folder / f"{PREFIX}{stamp}-{why}{n}{SUFFIX}"
    partial = folder / f".{target.name}.partial"
    try:
        _copy(path, partial)
        problem = _check(partial)
        if problem is not None:
            raise BackupFailed(f"backup of {path} into {target} fails SQLite's integrity "
                               f"check: {problem}")
        os.replace(partial, target)
    except (OSError, sqlite3.Error) as err:
        raise BackupFailed(f"cannot back {path} up into {folder}: {err}") from err
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    if keep is not None:
        prune_backups(folder, keep)
    return target


def _copy(source: Path, target: Path) -> None:
    """SQLite's online backup of `source` into a new file `target` (any old one replaced)."""
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            # A backup is one file: no -wal beside it.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def prune_backups(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups; returns the deleted ones."""
    old = list_backups(folder)[keep:]
    for path in old:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return old


def restore_command(backup: Path | None) -> str:
    return "genretagger restore" + (f" {backup}" if backup is not None else "")


def check_database(path: Path, folder: Path) -> None:
    """Raise DatabaseDamaged, naming the newest good backup in `folder` and the command
    that puts it back, when the SQLite file at `path` fails SQLite's quick check. A file
    that does not exist yet is fine (it is about to be created)."""
    if not path.exists():
        return
    problem = _check(path, "quick_check")
    if problem is None:
        return
    raise DatabaseDamaged(damaged_message(path, problem, folder))


def damaged_message(path: Path, problem: str, folder: Path) -> str:
    """One line: which file, what is wrong, which backup to restore and how."""
    backup = newest_good_backup(folder)
    if backup is None:
        return (f"the database {path} is damaged ({problem}) and {folder} holds no good "
                f"backup: move it aside and start afresh (the library is walked again; "
                f"decisions already written into the files are kept there)")
    return (f"the database {path} is damaged ({problem}); the newest good backup is "
            f"{backup}: stop the service and run `{restore_command(backup)}`")


def restore_backup(path: Path, backup: Path) -> Path | None:
    """Put `backup` in place of the SQLite database at `path` (the service must be
    stopped: the caller holds the leader lock). The file it replaces, with its -wal and
    -shm, is kept beside it as <name>.replaced-<time>; returns that (None: there was
    none). BackupFailed when the backup fails its check (nothing changed then)."""
    problem = _check(backup)
    if problem is not None:
        raise BackupFailed(f"{backup} fails SQLite's integrity check ({problem}); "
                           "pick another (`genretagger restore --list`)")
    incoming = path.with_name(f".{path.name}.restoring")
    try:
        _copy(backup, incoming)
    except (OSError, sqlite3.Error) as err:
        with contextlib.suppress(OSError):
            incoming.unlink()
        raise BackupFailed(f"cannot copy {backup} to {path.parent}: {err}") from err
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.name}.replaced-{stamp}") if path.exists() else None
    for extension in ("", "-wal", "-shm"):
        current = path.with_name(path.name + extension)
        if current.exists():
            os.replace(current, path.with_name(f"{path.name}.replaced-{stamp}{extension}"))
    os.replace(incoming, path)
    return kept
