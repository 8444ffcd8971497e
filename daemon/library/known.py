"""The library's tracks as the walk and the settle pass compare them with the files: one
bulk query's rows (path, size, mtime, our own write's stat, state, and a quarantined
file's ctime), and the rule that a quarantined file whose ctime moved is worth another
look."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from daemon.core.db.models import Track
from daemon.core.paths import filesystem_path
from daemon.core.states import TrackState
from daemon.library.walk import Stat, inode_ctime

S = TrackState


@dataclass
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


def quarantine_lifted(known: Known, path: str) -> bool:
    """A quarantined file with the same size and mtime changed anyway: its ctime moved
    (a chmod or chown fixed what failed, or a copy kept the mtime), or it was quarantined
    before its ctime was kept. It goes back to the queue."""
    if known.state != S.QUARANTINED:
        return False
    ctime = inode_ctime(path)
    return ctime is not None and ctime != known.quarantined_ctime
