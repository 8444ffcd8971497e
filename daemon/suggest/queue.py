"""The classify queue: how many tracks the worker still has to do."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.core.db.models import Track
from daemon.core.states import CLAIMABLE, TrackState


def queue_depth(session: Session) -> int:
    """Tracks the worker still has to do (queued, retrying, working)."""
    return session.scalar(select(func.count()).select_from(Track).where(
        Track.state.in_([*CLAIMABLE, TrackState.WORKING]))) or 0
