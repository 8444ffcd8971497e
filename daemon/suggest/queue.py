"""The worker's queue in the database: what waits, claiming it, handing it back.

A track waits for the worker while it is CLAIMABLE (queued, or retrying) or being worked
on; `queue_depth` is that count, the one answer `status`, the service's status line and
the worker's "waiting for a model" message all give.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.db.engine import transaction
from daemon.core.db.models import Event, Track, utcnow
from daemon.core.states import CLAIMABLE, TrackState, move

# Tracks the worker still has to do.
WAITING = frozenset({*CLAIMABLE, TrackState.WORKING})


@dataclass(frozen=True)
class Claim:
    """A track this worker holds in `working`, as it was when claimed."""

    track_id: int
    path: str  # relative to the library root
    size: int
    mtime: float
    queued_since: datetime | None
    audit_genre: str | None  # a tagged file queued by audit mode: its canonical genre
    token: int  # tells this claim's decoding apart from an earlier claim of the track


def queue_depth(session: Session) -> int:
    """Tracks the worker still has to do (queued, retrying, working)."""
    return session.scalar(select(func.count()).select_from(Track).where(
        Track.state.in_(WAITING))) or 0


def requeue_working(sessions: sessionmaker[Session], ids: list[int],
                    worker_id: int | None = None) -> int:
    """These tracks, if still `working` (and, with `worker_id`, still held by that worker:
    one handed back meanwhile and claimed by another worker stays theirs), back to
    `queued`. Returns how many moved. What a worker gives back: files not finished at
    shutdown, or claimed while no model was there."""
    if not ids:
        return 0
    with transaction(sessions) as session:
        query = select(Track).where(Track.state == TrackState.WORKING, Track.id.in_(ids))
        if worker_id is not None:
            query = query.where(Track.claimed_by == worker_id)
        return _requeue(session.scalars(query).all())


def requeue_held(sessions: sessionmaker[Session], holders: list[int], *,
                 unclaimed: bool = False) -> int:
    """Tracks in `working` held by these workers (dead ones: daemon.suggest.workers), and
    with `unclaimed` the ones held by no worker (claimed before workers had ids, or by a
    process that gave none), back to `queued`. Returns how many moved."""
    held = Track.claimed_by.in_(holders) if holders else None
    if unclaimed:
        held = Track.claimed_by.is_(None) if held is None else or_(held,
                                                                    Track.claimed_by.is_(None))
    if held is None:
        return 0
    with transaction(sessions) as session:
        return _requeue(session.scalars(
            select(Track).where(Track.state == TrackState.WORKING, held)).all())


def _requeue(tracks: list[Track]) -> int:
    now = utcnow()
    for track in tracks:
        move(track, TrackState.QUEUED, now)  # clears claimed_by
    return len(tracks)


def claim_tracks(sessions: sessionmaker[Session], limit: int, exclude: set[int],
                 now: datetime, worker_id: int | None = None
                 ) -> list[tuple[Track, datetime | None]]:
    """Move up to `limit` claimable tracks (queued, or retrying and due) to `working`,
    oldest first, held by `worker_id`. Returns (detached track, when it entered its
    previous state) pairs.

    Several workers claim from one database: on PostgreSQL the rows are selected FOR
    UPDATE SKIP LOCKED, so a row another worker's claim has locked is passed over, never
    claimed twice; on SQLite (no row locks: the clause is left out) the transaction's
    BEGIN IMMEDIATE already lets one claim run at a time."""
    with transaction(sessions) as session:
        due = or_(Track.state == TrackState.QUEUED,
                  (Track.state == TrackState.RETRYING)
                  & (or_(Track.next_attempt_at.is_(None), Track.next_attempt_at <= now)))
        query = select(Track).where(due).order_by(Track.id).limit(limit)
        if exclude:
            query = query.where(Track.id.not_in(exclude))
        tracks = session.scalars(query.with_for_update(skip_locked=True)).all()
        claimed = []
        for track in tracks:
            queued_since = track.state_changed_at
            move(track, TrackState.WORKING, now)
            track.claimed_by = worker_id
            claimed.append((track, queued_since))
        session.flush()
        return claimed


def prune_events(sessions: sessionmaker[Session], kinds: tuple[str, ...], days: float) -> None:
    """Delete events of these kinds older than `days`."""
    cutoff = utcnow() - timedelta(days=days)
    with transaction(sessions) as session:
        session.execute(delete(Event).where(Event.kind.in_(kinds), Event.at < cutoff))


def retry_quarantined(sessions: sessionmaker[Session], paths: list[str] | None = None
                      ) -> tuple[list[str], list[str]]:
    """Quarantined tracks back to `queued` with a fresh start (attempts from 0): those
    with these stored paths, or (None) every one. By hand, for a fix the walk cannot see.
    Returns (the stored paths requeued, the given ones that are not quarantined)."""
    with transaction(sessions) as session:
        query = select(Track).where(Track.state == TrackState.QUARANTINED)
        if paths is not None:
            query = query.where(Track.path.in_(paths))
        tracks = session.scalars(query.order_by(Track.id)).all()
        now = utcnow()
        for track in tracks:
            move(track, TrackState.QUEUED, now)
            track.attempts, track.next_attempt_at = 0, None
            track.quarantined_ctime = None
        done = [t.path for t in tracks]
    left = [p for p in paths or [] if p not in set(done)]
    return done, left
