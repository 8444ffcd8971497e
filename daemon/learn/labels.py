"""A track's training label, and the label queries the nightly retrain asks.

The rule (daemon.core.labels), shared with the trainer (trainer.dataset reads files, the
daemon reads rows): the genre a reviewer confirmed wins; without one, the canonical genre
the file's own tag maps to; without either, the track is not a labelled song. The file's
own tag is the station's, never one we wrote: an undone or rejected genre confirms
nothing, an undo puts the file's genre back, and for a file we wrote the trainer takes the
tag the service read before our write (daemon.learn.trainer_process.known_files), not what
the file says. A track that is not a song (state not_a_song: a jingle, a sweeper, a "Not a
song" mark) is never a label, whatever its tag or confirmed genre says.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.core.config import Config
from daemon.core.db.models import Track
from daemon.core.labels import LABEL, training_label
from daemon.core.states import TrackState
from daemon.tags.genres import GenreMap
from daemon.tags.stored_genres import host_genre_map


def song_label(genre_map: GenreMap, confirmed: str | None,
               raw_genres: str | Iterable[str] | None) -> str | None:
    """training_label for a file read from the library: the confirmed genre in its
    canonical spelling (as given when the map does not know it), else the file's raw
    genre tag(s) through the genre map."""
    if confirmed:
        confirmed = genre_map.canonical_for(confirmed) or confirmed
    return training_label(confirmed, genre_map.canonical_for(raw_genres) if raw_genres else None)


# The tracks whose labels count: songs still in the library.
LABELLED_SONG = Track.state.not_in((TrackState.MISSING, TrackState.NOT_A_SONG))


def not_songs(session: Session) -> dict[str, str]:
    """{relative path: why it is not a song} of every not_a_song track (the trainer's
    --not-songs: it walks the library itself and must leave these out)."""
    return {path: reason or "not a song" for path, reason in session.execute(
        select(Track.path, Track.not_song_reason).where(
            Track.state == TrackState.NOT_A_SONG))}


def confirmed_labels(session: Session) -> dict[str, str]:
    """{relative path: genre} of every confirmed label on a track still in the library."""
    rows = session.execute(select(Track.path, Track.confirmed_genre).where(
        Track.confirmed_genre.is_not(None), LABELLED_SONG))
    return {path: genre for path, genre in rows}


def count_new_labels(session: Session, since: datetime | None) -> int:
    """Confirmed labels (on tracks still in the library) newer than `since` (None: all)."""
    query = select(func.count()).select_from(Track).where(
        Track.confirmed_genre.is_not(None), LABELLED_SONG)
    if since is not None:
        query = query.where(Track.confirmed_at > since)
    return session.scalar(query) or 0


def recent_label_paths(session: Session, since: datetime | None) -> set[str]:
    """Paths of the tracks whose label was confirmed after `since` (None: all)."""
    query = select(Track.path).where(Track.confirmed_genre.is_not(None), LABELLED_SONG)
    if since is not None:
        query = query.where(Track.confirmed_at > since)
    return set(session.scalars(query))


def current_labels(session: Session, paths: Iterable[str]) -> dict[str, str | None]:
    """{path: its training label now} for the paths the database knows (None for a
    track that is not a song)."""
    return {path: None if state == TrackState.NOT_A_SONG
            else training_label(confirmed, canonical)
            for path, confirmed, canonical, state in session.execute(
                select(Track.path, Track.confirmed_genre, Track.canonical_genre, Track.state)
                .where(Track.path.in_(list(paths))))}


def label_counts(session: Session) -> dict[str, int]:
    """{genre: labelled tracks still in the library} by training_label."""
    return {genre: int(n) for genre, n in session.execute(
        select(LABEL, func.count()).where(LABEL.is_not(None), LABELLED_SONG)
        .group_by(LABEL)).all()}


def min_songs_per_genre(config: Config) -> int:
    """Labelled songs a genre needs before a model learns it: few with the pretrained
    backbone (a head on its embedding learns from a handful), more for the seed CNN."""
    return (config.min_songs_per_genre_backbone if config.classifier.backbone
            else config.min_songs_per_genre)


def cannot_suggest_yet(counts: dict[str, int], genres: Iterable[str], known: Iterable[str],
                       min_songs: int) -> dict[str, dict[str, int]]:
    """The station's genres a model does not suggest, and why: {genre: {"songs": labelled
    songs now, "needs": how many more it needs (0: enough now; the next retrain learns
    it)}}. In: label_counts, the station's genres, the model's classes (none: no model),
    the threshold (min_songs_per_genre)."""
    known = set(known)
    return {genre: {"songs": counts.get(genre, 0),
                    "needs": max(0, min_songs - counts.get(genre, 0))}
            for genre in dict.fromkeys([*genres, *sorted(counts)]) if genre not in known}


def station_cannot_suggest(session: Session, config: Config,
                           classes: Iterable[str]) -> dict[str, dict[str, int]]:
    """cannot_suggest_yet for the station now: its genre map's genres (this host's
    genres.toml, else the leader's: daemon.tags.stored_genres) and any other labelled
    genre, against a model's classes, counted live from the database."""
    return cannot_suggest_yet(label_counts(session), host_genre_map(config, session).canonical,
                              classes, min_songs_per_genre(config))
