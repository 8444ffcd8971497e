"""The state disk, the database file and the library root, as the service watches them and
`status` reports them.

- `StorageWatch`: the service's "database" component. The heartbeat is the service's
  own write probe: while it fails for want of space or write access (not for a lock),
  or the state disk is full, the component is unhealthy (/metrics:
  genretagger_component_healthy{component="database"} 0) with the reason in words. It
  never stops the watchdog pings: a restart cannot make room, and the service goes on
  by itself once there is some.
- `open_checked(config)` / `damaged_start(err, config)`: a damaged SQLite file stops the
  start, naming the newest good backup (the service exits with DAMAGED_EXIT).
- `storage_status`, `library_problem`, `storage_lines`: `status`'s "storage" and
  "library" parts and their lines.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.backup import check_database, damaged_message, is_damage
from daemon.core.db.engine import database_busy, database_problem, open_database, sqlite_path
from daemon.core.disk import human_bytes, state_disk, unwritable_reason
from daemon.core.errors import DatabaseDamaged, os_reason
from daemon.core.health import Health, describe_failure
from daemon.core.paths import display

# The service's component that says whether it can write (health.json, /metrics).
STORAGE_COMPONENT = "database"


class StorageWatch:
    """The "database" component's record: fed by every heartbeat write."""

    def __init__(self) -> None:
        self.health = Health(STORAGE_COMPONENT)

    def wrote(self) -> None:
        self.health.progress()

    def failed(self, err: BaseException, config: Config) -> None:
        """A heartbeat write failed: a lock only delays it; anything else (full,
        read-only, damaged) fails every write until someone fixes it."""
        if not database_busy(err):
            self.health.failed(database_problem(err, config.db_url, config.backups_dir))

    def report(self, state_dir: Path) -> dict[str, Any]:
        disk = state_disk(state_dir)
        report = self.health.report(True, healthy=not disk["full"],
                                    disk_free_bytes=disk["free_bytes"])
        if report["failing"]:
            report["healthy"] = False
        return report


def open_checked(config: Config) -> tuple[Engine, sessionmaker[Session]]:
    """The service's database, opened and migrated (a SQLite file backed up into
    state_dir/backups first); DatabaseDamaged, naming the newest good backup, when the
    SQLite file fails SQLite's quick check."""
    path = sqlite_path(config.db_url)
    if path is not None:
        check_database(path, config.backups_dir)
    return open_database(config.db_url, busy_timeout=config.database_busy_seconds,
                         backups_dir=config.backups_dir, keep_backups=config.backup.keep)


def damaged_start(err: BaseException, config: Config) -> str | None:
    """The one line for a start-up that failed on a damaged database, or None."""
    if isinstance(err, DatabaseDamaged):
        return str(err)
    path = sqlite_path(config.db_url)
    if path is not None and is_damage(err):  # damaged past the quick check's reach
        return damaged_message(path, describe_failure(err), config.backups_dir)
    return None


def storage_status(config: Config, components: dict[str, dict]) -> dict[str, Any]:
    """The state disk and the database file: free space, can it be written, and what is
    wrong in words (the service's own "database" component's error, when it has one)."""
    disk = state_disk(config.state_dir)
    path = sqlite_path(config.db_url)
    unwritable = unwritable_reason(path) if path is not None else None
    reported = components.get(STORAGE_COMPONENT) or {}
    condition = None
    if disk["full"]:
        condition = (f"state disk full: {human_bytes(disk['free_bytes'])} free on "
                     f"{config.state_dir}; free space there (the service goes on by itself)")
    elif unwritable:
        condition = f"the database cannot be written: {unwritable}"
    elif reported and not reported.get("healthy") and reported.get("last_error"):
        condition = reported["last_error"]
    return {"state_dir": str(config.state_dir), "free_bytes": disk["free_bytes"],
            "total_bytes": disk["total_bytes"], "disk_full": disk["full"],
            "database_unwritable": unwritable, "condition": condition}


def library_problem(root: Path) -> str | None:
    """Why the library root cannot be read (gone, not a folder, no permission), or None."""
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except NotADirectoryError:
        return "not a folder"
    except OSError as err:
        return os_reason(err) if err.errno != errno.ENOENT else "does not exist (not mounted?)"
    return None


def storage_lines(storage: dict[str, Any], library: dict[str, Any]) -> list[str]:
    """`status`'s lines for the state disk and an unreadable library (root or folders)."""
    lines = []
    if storage:
        lines.append(f"state disk:  {human_bytes(storage['free_bytes'])} free of "
                     f"{human_bytes(storage['total_bytes'])} on {storage['state_dir']}"
                     + (f"; PROBLEM: {storage['condition']}" if storage["condition"] else ""))
    if library.get("problem"):
        lines.append(f"library:     CANNOT READ {library['root']}: {library['problem']} "
                     "(nothing is marked missing while it cannot be read)")
    folders = library.get("unreadable_folders") or []
    if folders:
        lines.append(f"library:     CANNOT READ {len(folders)} folder(s) in {library['root']} "
                     "(their songs are not marked missing; check the permissions):")
        lines += [f"  {display(folder)}" for folder in folders]
    return lines
