"""A track's training label, and the label queries the nightly retrain asks.

The rule, shared with the trainer (trainer.dataset reads files, the daemon reads rows):
the genre a reviewer confirmed wins; without one, the canonical genre the file's own tag
maps to; without either, the track is not a labelled song.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.core.db.models import Track
from daemon.core.states import TrackState
from daemon.tags.genres import GenreMap


def training_label(confirmed: str | None, tagged: str | None) -> str | None:
    """The label from a confirmed genre and the tag's canonical genre (None: unlabelled)."""
    return confirmed or tagged


def song_label(genre_map: GenreMap, confirmed: str | None,
               raw_genres: str | Iterable[str] | None) -> str | None:
    """training_label for a file read from the library: the confirmed genre in its
    canonical spelling (as given when the map does not know it), else the file's raw
    genre tag(s) through the genre map."""
    if confirmed:
        confirmed = genre_map.canonical_for(confirmed) or confirmed
    return training_label(confirmed, genre_map.canonical_for(raw_genres) if raw_genres else None)


# training_label in SQL: Track.canonical_genre is the tag's canonical genre.
LABEL = func.coalesce(Track.confirmed_genre, Track.canonical_genre)


def confirmed_labels(session: Session) -> dict[str, str]:
    """{relative path: genre} of every confirmed label on a track still in the library."""
    rows = session.execute(select(Track.path, Track.confirmed_genre).where(
        Track.confirmed_genre.is_not(None), Track.state != TrackState.MISSING))
    return {path: genre for path, genre in rows}


def count_new_labels(session: Session, since: datetime | None) -> int:
    """Confirmed labels (on tracks still in the library) newer than `since` (None: all)."""
    query = select(func.count()).select_from(Track).where(
        Track.confirmed_genre.is_not(None), Track.state != TrackState.MISSING)
    if since is not None:
        query = query.where(Track.confirmed_at > since)
    return session.scalar(query) or 0


def recent_label_paths(session: Session, since: datetime | None) -> set[str]:
    """Paths of the tracks whose label was confirmed after `since` (None: all)."""
    query = select(Track.path).where(Track.confirmed_genre.is_not(None))
    if since is not None:
        query = query.where(Track.confirmed_at > since)
    return set(session.scalars(query))


def trainable_genres(session: Session, min_songs: int) -> int:
    """Genres with >= min_songs labelled tracks still in the library."""
    counts = session.execute(select(LABEL, func.count()).where(
        LABEL.is_not(None), Track.state != TrackState.MISSING).group_by(LABEL)).all()
    return sum(1 for _genre, n in counts if n >= min_songs)


def current_labels(session: Session, paths: Iterable[str]) -> dict[str, str | None]:
    """{path: its training label now} for the paths the database knows."""
    return {path: training_label(confirmed, canonical)
            for path, confirmed, canonical in session.execute(
                select(Track.path, Track.confirmed_genre, Track.canonical_genre)
                .where(Track.path.in_(list(paths))))}
