"""Component health: is each background thread alive, when did it last get something done,
what went wrong last and when.

Every background component (worker, watcher, settle, writer, web, scheduler and its
reconcile job, retrainer) owns a `Health` it updates from its own loop: `progress()`
after a round that worked, `failed(err)` when one did not (the loop logs and goes on).
`report()` turns it into the JSON the service publishes for `status` (a separate
process) in state_dir/health.json, written atomically every heartbeat:

    {"pid": int, "written_at": ISO str, "healthy": bool,
     "components": {name: {"alive": bool, "healthy": bool, "last_progress_at": str|null,
                           "last_error": str|null, "last_error_at": str|null,
                           "errors": int, "failing": bool, ...component extras}}}

Every component the service runs follows one protocol, `Component`: start(), close(timeout)
(its share of the stop deadline, in seconds) and health_report() (one report, or
{name: report} for a component with several parts). The service starts them in order and
closes them in reverse.

`describe_failure(err)` is the one place that words an exception for a person:
"database busy" only for lock errors (SQLite's; PostgreSQL's lock timeouts and
deadlocks), "disk full" for a full disk, else the error's type and message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

BUSY_MARKERS = ("database is locked", "database table is locked", "database is busy",
                # PostgreSQL's lock_timeout / statement_timeout, deadlock, serialization
                "due to lock timeout", "due to statement timeout", "deadlock detected",
                "could not serialize access")
FULL_MARKERS = ("database or disk is full", "no space left on device")


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else ""


def describe_failure(err: BaseException) -> str:
    """An exception -> what went wrong, in words for `status` and `systemctl status`."""
    message = _first_line(err)
    lowered = str(err).lower()
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"disk full: {message}"
    if any(marker in lowered for marker in FULL_MARKERS):
        return f"disk full: {message}"
    if any(marker in lowered for marker in BUSY_MARKERS):
        return f"database busy: {message}"
    name = type(getattr(err, "orig", None) or err).__name__
    return f"{name}: {message}" if message else name


class Component(Protocol):
    """What the service runs: started in order, closed in reverse within the stop deadline."""

    def start(self) -> None: ...

    def close(self, timeout: float) -> None: ...

    def health_report(self) -> dict[str, Any]: ...


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Health:
    """One component's record: last progress, last error (worded), counts. Thread-safe."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self.last_progress_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.errors = 0
        self.failing = False  # the last round failed (cleared by the next that works)

    def progress(self) -> None:
        with self._lock:
            self.last_progress_at = datetime.now(UTC)
            self.failing = False

    def failed(self, err: BaseException | str) -> None:
        text = err if isinstance(err, str) else describe_failure(err)
        with self._lock:
            self.last_error, self.last_error_at = text, datetime.now(UTC)
            self.errors += 1
            self.failing = True

    def report(self, alive: bool, healthy: bool | None = None, **extra: Any) -> dict[str, Any]:
        """The JSON shape above; `healthy` defaults to `alive`."""
        with self._lock:
            return {"alive": bool(alive), "healthy": bool(alive if healthy is None else healthy),
                    "last_progress_at": _iso(self.last_progress_at),
                    "last_error": self.last_error, "last_error_at": _iso(self.last_error_at),
                    "errors": self.errors, "failing": self.failing, **extra}


def thread_alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def write_health(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` with `data` as JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_health(path: Path) -> dict[str, Any] | None:
    """The published health file, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this host (EPERM: it does, as another
    user)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
