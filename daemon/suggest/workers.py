"""The workers registry: every process that claims tracks has a row in `workers`.

The service (role "leader" / "standby") and each `genretagger worker` (role "worker"), on
any host, register at start, beat every HEARTBEAT_SECONDS with how many files they have
done, and retire when they stop. A track in `working` names its holder
(`tracks.claimed_by`); a holder that retired, whose heartbeat is older than
`[workers] dead_after_seconds`, or that was on this host under a pid no longer running
is dead, and `requeue_dead` hands its tracks back to the queue (the procrastinate way:
stalled jobs found by heartbeat age, no queue of our own beside the database).

files_per_minute comes from files_done deltas: each beat keeps a mark (time, files_done)
in `detail` and moves it on once it is RATE_WINDOW_SECONDS old, so the figure is the rate
over the last one to two minutes of beats, not since the process started.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.db.engine import transaction
from daemon.core.db.models import Track, Worker, utcnow
from daemon.core.health import pid_alive
from daemon.core.states import TrackState
from daemon.suggest.queue import requeue_held

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10  # how often a live worker beats
DEAD_AFTER_SECONDS = 60  # config: [workers] dead_after_seconds
RATE_WINDOW_SECONDS = 60.0
ROLES = ("worker", "leader", "standby")


def register(sessions: sessionmaker[Session], role: str, detail: dict | None = None) -> int:
    """A new row for this process (host and pid from the OS); returns its id."""
    if role not in ROLES:
        raise ValueError(f"worker role {role!r}: one of {', '.join(ROLES)}")
    now = utcnow()
    with transaction(sessions) as session:
        row = Worker(host=socket.gethostname(), pid=os.getpid(), role=role, started_at=now,
                     heartbeat_at=now, files_done=0,
                     detail={**(detail or {}), "mark_at": now.isoformat(), "mark_files": 0})
        session.add(row)
        session.flush()
        return row.id


def beat(sessions: sessionmaker[Session], worker_id: int, files_done: int,
         using: dict | None = None) -> None:
    """This worker is alive and has done `files_done` files since it registered.
    `using`: what it works with, kept in its row's detail (`genre_map`: the version of
    the published genre map it follows; None: its own genres.toml)."""
    now = utcnow()
    with transaction(sessions) as session:
        row = session.get(Worker, worker_id)
        if row is None:
            return
        detail = {**(row.detail or {}), **(using or {})}
        try:
            mark_at = datetime.fromisoformat(detail["mark_at"])
            mark_files = int(detail["mark_files"])
        except (KeyError, TypeError, ValueError):
            mark_at, mark_files = row.started_at, 0
        span = (now - mark_at).total_seconds()
        if span > 0:
            detail["files_per_minute"] = round((files_done - mark_files) * 60.0 / span, 2)
        if span >= RATE_WINDOW_SECONDS:
            detail["mark_at"], detail["mark_files"] = now.isoformat(), files_done
        row.heartbeat_at, row.files_done, row.detail = now, files_done, detail


def retire(sessions: sessionmaker[Session], worker_id: int) -> None:
    """This worker stops: stopped_at = now, and whatever it still holds goes back."""
    with transaction(sessions) as session:
        row = session.get(Worker, worker_id)
        if row is not None and row.stopped_at is None:
            row.stopped_at = utcnow()
    requeue_held(sessions, [worker_id])


def _dead(row: Worker, now: datetime, dead_after: float, host: str) -> bool:
    if row.stopped_at is not None:
        return True
    if (now - row.heartbeat_at).total_seconds() > dead_after:
        return True
    # On this host a pid that no longer runs says so at once (a crash, a SIGKILL).
    return row.host == host and row.pid != os.getpid() and not pid_alive(row.pid)


    return True


def dead_workers(session: Session, now: datetime, dead_after: float) -> list[int]:
    """Ids of the workers that hold tracks and are dead (see the module docstring)."""
    holders = select(Track.claimed_by).where(Track.state == TrackState.WORKING,
                                             Track.claimed_by.is_not(None)).distinct()
    held = set(session.scalars(holders).all())
    if not held:
        return []
    rows = {row.id: row for row in session.scalars(
        select(Worker).where(Worker.id.in_(held))).all()}
    host = socket.gethostname()
    # A holder with no row at all (deleted by hand) cannot beat either.
    return sorted(i for i in held if i not in rows or _dead(rows[i], now, dead_after, host))


def requeue_dead(sessions: sessionmaker[Session], dead_after: float, *,
                 unclaimed: bool = False) -> int:
    """Tracks held by dead workers back to `queued`; with `unclaimed` (a start-up with no
    one else claiming yet could still be legacy rows) also working tracks held by no
    worker. Returns how many moved."""
    with sessions() as session:
        dead = dead_workers(session, utcnow(), dead_after)
    moved = requeue_held(sessions, dead, unclaimed=unclaimed)
    if moved:
        log.warning("requeued %d track(s) held by dead worker(s) %s", moved,
                    ", ".join(map(str, dead)) or "none (unclaimed)")
    return moved


def list_workers(session: Session, now: datetime, dead_after: float = DEAD_AFTER_SECONDS,
                 stopped_hours: float = 24.0) -> list[dict[str, Any]]:
    """Every worker running, and those stopped in the last `stopped_hours`, oldest first:
    {"id", "host", "pid", "role", "name", "started_at", "heartbeat_at", "heartbeat_age",
    "files_done", "files_per_minute", "alive", "stopped_at"} (times as datetimes; name:
    `genretagger worker --name`, else None)."""
    since = now - timedelta(hours=stopped_hours)
    rows = session.scalars(select(Worker).where(
        or_(Worker.stopped_at.is_(None), Worker.stopped_at >= since),
        Worker.heartbeat_at >= since).order_by(Worker.id)).all()
    host = socket.gethostname()
    return [{"id": row.id, "host": row.host, "pid": row.pid, "role": row.role,
             "name": (row.detail or {}).get("name"),
             "started_at": row.started_at, "heartbeat_at": row.heartbeat_at,
             "heartbeat_age": round(max(0.0, (now - row.heartbeat_at).total_seconds()), 1),
             "files_done": row.files_done,
             "files_per_minute": float((row.detail or {}).get("files_per_minute", 0.0)),
             "genre_map": (row.detail or {}).get("genre_map"),
             "alive": not _dead(row, now, dead_after, host), "stopped_at": row.stopped_at}
            for row in rows]


def pulse(sessions: sessionmaker[Session], worker_id: int | None, files_done: int,
          last: float, using: dict | None = None) -> float:
    """Beat from the loop that does the work (a stuck loop stops beating), at most every
    HEARTBEAT_SECONDS since `last` (time.monotonic()); returns when it last beat. A worker
    with no row (None) does not beat."""
    now = time.monotonic()
    if worker_id is None or now - last < HEARTBEAT_SECONDS:
        return last
    beat(sessions, worker_id, files_done, using)
    return now
