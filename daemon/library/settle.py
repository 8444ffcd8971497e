"""Settle tracking: a file is read only once its size and mtime have stopped moving.

Both the reconcile walk and watcher events feed the same SettleTracker, so a song still
being copied onto the drive is never read half-written, however it was noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.library.walk import Stat, same_stat


@dataclass
class _Sighting:
    stat: Stat | None  # None: the path was gone when last looked at
    since: float


class SettleTracker:
    """Which paths have kept the same (size, mtime) for `settle_seconds`.

    Pure bookkeeping with times passed in (no clock, no I/O, not thread-safe):
    `observe` records what a path looks like now, `due` lists the paths that have
    looked the same for long enough, `forget` drops a path once it has been handled.
    """

    def __init__(self, settle_seconds: float):
        self.settle_seconds = settle_seconds
        self._seen: dict[str, _Sighting] = {}

    def observe(self, relpath: str, size: int | None, mtime: float | None,
                now: float) -> bool:
        """Record a sighting (size/mtime None: the path is gone). True when the clock
        (re)started: the path is new here or looks different from its last sighting."""
        seen = None if size is None or mtime is None else (size, mtime)
        old = self._seen.get(relpath)
        if old is not None and same_stat(old.stat, seen):
            return False
        self._seen[relpath] = _Sighting(seen, now)
        return True

    def due(self, now: float, limit: int | None = None) -> list[str]:
        """Paths unchanged for at least settle_seconds as of `now`, longest-waiting first."""
        ready = [(s.since, p) for p, s in self._seen.items()
                 if now - s.since >= self.settle_seconds]
        ready.sort()
        return [p for _, p in ready[:limit]]

    def forget(self, relpath: str) -> None:
        self._seen.pop(relpath, None)

    def gone(self) -> int:
        """How many tracked paths were gone when last looked at."""
        return sum(1 for s in self._seen.values() if s.stat is None)

    def forget_gone(self) -> None:
        """Drop every path that was gone when last looked at."""
        self._seen = {p: s for p, s in self._seen.items() if s.stat is not None}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, relpath: object) -> bool:
        return relpath in self._seen
