"""The library's tracks as the walk and the settle pass compare them with the files: one
bulk query's rows (path, size, mtime, our own write's stat, state, and a quarantined
file's ctime), and `compare`, the one rule for what a file's stat says about its track
(a quarantined file whose ctime moved is worth another look)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from daemon.core.db.models import Track
from daemon.core.paths import filesystem_path
from daemon.core.states import TrackState
from daemon.library.walk import Stat, inode_ctime, same_stat

S = TrackState


@dataclass(frozen=True)
class Known:
    """A track as reconcile sees it (one row of the bulk query)."""

    id: int
    stat: Stat
    written: Stat | None
    state: str
    quarantined_ctime: float | None = None


KNOWN_COLUMNS = (Track.id, Track.path, Track.size, Track.mtime, Track.written_size,
                 Track.written_mtime, Track.state, Track.quarantined_ctime)


def known_tracks(rows: Iterable) -> dict[str, Known]:
    """Rows of KNOWN_COLUMNS -> {relative path in filesystem form: Known}."""
    known = {}
    for id_, path, size, mtime, wsize, wmtime, state, qctime in rows:
        written = (wsize, wmtime) if wsize is not None and wmtime is not None else None
        known[filesystem_path(path)] = Known(id_, (size, mtime), written, state, qctime)
    return known


Change = Literal["new", "unchanged", "ours", "changed"]


def compare(known: Known | None, stat: Stat, path: str) -> Change:
    """What the file at `path` with (size, mtime) `stat` is to its track `known`: new (no
    track, or a missing one coming back), unchanged, ours (our own tag write: recorded,
    never read again) or changed (to be read once it settles)."""
    if known is None or known.state == S.MISSING:
        return "new"
    if same_stat(known.stat, stat) and not quarantine_lifted(known, path):
        return "unchanged"
    if known.written is not None and same_stat(known.written, stat):
        return "ours"
    return "changed"


def quarantine_lifted(known: Known, path: str) -> bool:
    """A quarantined file with the same size and mtime changed anyway: its ctime moved
    (a chmod or chown fixed what failed, or a copy kept the mtime), or it was quarantined
    before its ctime was kept. It goes back to the queue."""
    if known.state != S.QUARANTINED:
        return False
    ctime = inode_ctime(path)
    return ctime is not None and ctime != known.quarantined_ctime
