"""Settling: from a path the walk or the watcher noticed to a file worth reading.

Both the reconcile walk and watcher events feed the same SettleTracker, so a song still
being copied onto the drive is never read half-written, however it was noticed. Once a
path has kept its size and mtime for `settle_seconds`, a batch of them goes through the
stages below, in this order (`daemon.library.reconcile.Library.settle_due` runs them;
tests call it with fixed times, the service's settle thread once a second):

    look          stat each path, opening nothing (a link leading outside is never read)
    unchanged     SettleTracker: a path that moved since its last sighting waits again
    sort_out      against the tracks: unchanged, our own write, gone, or to be read
    read_settled  fingerprint, tags and header, in a reader child (daemon.library.read)
    record        the tracks (daemon.library.record), in one transaction: the Library's

Each stage takes and returns frozen records; only `look` and `read_settled` touch the
drive, only the Library the database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from daemon.audio.extract import ExtractPool
from daemon.library.known import Known, compare
from daemon.library.read import FileReading, read_file
from daemon.library.walk import Stat, examine, same_stat


@dataclass(frozen=True)
class Sighting:
    stat: Stat | None  # None: the path was gone when last looked at
    since: float


@dataclass(frozen=True)
class Look:
    """One path of a settling batch as it is now: its (size, mtime), None when it is gone
    or is no song inside the library, and then `skipped` says why (None: gone)."""

    rel: str
    stat: Stat | None
    skipped: str | None = None


@dataclass(frozen=True)
class Sorted:
    """A settled batch against the tracks: files to read (new or changed), our own tag
    writes (track id and the stat to record), files as their tracks have them, and
    settled deletions."""

    to_read: tuple[tuple[str, Stat], ...] = ()
    ours: tuple[tuple[str, int, Stat], ...] = ()
    unchanged: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()


@dataclass(frozen=True)
class Readings:
    """The files read ({rel: FileReading}) and those that changed or vanished while
    being read (they start settling again)."""

    read: Mapping[str, FileReading]
    moving: tuple[str, ...] = ()


class SettleTracker:
    """Which paths have kept the same (size, mtime) for a settle time.

    Pure bookkeeping with times passed in (no clock, no I/O, not thread-safe):
    `observe` records what a path looks like now, `due` lists the paths that have
    looked the same for long enough, `forget` drops a path once it has been handled.
    """

    def __init__(self):
        self._seen: dict[str, Sighting] = {}

    def observe(self, relpath: str, size: int | None, mtime: float | None,
                now: float) -> bool:
        """Record a sighting (size/mtime None: the path is gone). True when the clock
        (re)started: the path is new here or looks different from its last sighting."""
        seen = None if size is None or mtime is None else (size, mtime)
        old = self._seen.get(relpath)
        if old is not None and same_stat(old.stat, seen):
            return False
        self._seen[relpath] = Sighting(seen, now)
        return True

    def due(self, now: float, settle_seconds: float, limit: int | None = None) -> list[str]:
        """Paths unchanged for at least `settle_seconds` as of `now`, longest-waiting
        first (the settle time is the running config's, read by the caller each time)."""
        ready = [(s.since, p) for p, s in self._seen.items()
                 if now - s.since >= settle_seconds]
        ready.sort()
        return [p for _, p in ready[:limit]]

    def unchanged(self, looks: Iterable[Look], now: float) -> list[Look]:
        """The looks whose path still looks as at its last sighting; the others are
        sighted anew and wait again."""
        return [look for look in looks
                if not self.observe(look.rel, *(look.stat or (None, None)), now)]

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


def look(root: str, real_root: str, batch: Iterable[str]) -> list[Look]:
    """Each path of `batch` (relative to `root`) as it is now: stat only."""
    return [Look(rel, *examine(os.path.join(root, rel), real_root)) for rel in batch]


def sort_out(looks: Iterable[Look], known: Mapping[str, Known], root: str) -> Sorted:
    """Settled looks against their tracks (`known`, by relative path): a file reads only
    when it is new or changed (daemon.library.known.compare)."""
    to_read, ours, unchanged, gone = [], [], [], []
    for seen in looks:
        if seen.stat is None:
            gone.append(seen.rel)
            continue
        k = known.get(seen.rel)
        change = compare(k, seen.stat, os.path.join(root, seen.rel))
        if change == "unchanged":
            unchanged.append(seen.rel)  # an open/close, our own read
        elif change == "ours":
            ours.append((seen.rel, k.id, seen.stat))
        else:
            to_read.append((seen.rel, seen.stat))
    return Sorted(tuple(to_read), tuple(ours), tuple(unchanged), tuple(gone))


def read_settled(to_read: Iterable[tuple[str, Stat]], root: str,
                 readers: ExtractPool) -> Readings:
    """Read each file in a child process of `readers` (daemon.library.read.read_file)."""
    read: dict[str, FileReading] = {}
    moving: list[str] = []
    for rel, _ in to_read:
        reading = read_file(os.path.join(root, rel), readers)
        if reading is None:
            moving.append(rel)
        else:
            read[rel] = reading
    return Readings(read, tuple(moving))
