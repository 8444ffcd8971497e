"""A song's tagged mates: the genres of the other songs on its album and by its artist, and
the context they give its suggestion (daemon.suggest.context holds the arithmetic).

A mate counts with its confirmed genre, else its tag's canonical genre; a song with
neither, or gone from the library (missing), is not counted. The album is
tracks.album_key (a compilation is one album); the artist is the song's own artist tag
(on a compilation too: never the album artist), compared as
daemon.library.albums.artist_key normalises it. The song itself is never its own mate.

How the two combine: the prior's counts are the album's counts plus ARTIST_SHARE times the
artist's counts from songs NOT on this album (those are already in the album's). An album
is one record, made at one time: its mates say more about a song than an artist's other
records, which can span a career of genres, so they count in full and the rest of the
catalogue at half; a song on an untagged album still gets its artist's other albums.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from daemon.core.config import Config
from daemon.core.db.models import Track
from daemon.core.states import TrackState
from daemon.library.albums import artist_key
from daemon.suggest.context import combine, context_prior, reason_text

# An artist's songs on other albums count this much of an album-mate (see above).
ARTIST_SHARE = 0.5


@dataclass(frozen=True)
class Mates:
    """One song's tagged mates: genre counts on its album and by its artist elsewhere."""

    album: dict[str, int]
    artist: dict[str, int]

    def counts(self) -> dict[str, float]:
        """The prior's counts: the album's plus ARTIST_SHARE x the artist's elsewhere."""
        out: dict[str, float] = dict(self.album)
        for genre, n in self.artist.items():
            out[genre] = out.get(genre, 0) + ARTIST_SHARE * n
        return out

    def __bool__(self) -> bool:
        return bool(self.album or self.artist)


@dataclass(frozen=True)
class ContextSettings:
    """weight and smoothing in use: the active model's fitted ones, else the config's."""

    weight: float
    smoothing: float


def _artist_of(track: Track) -> str | None:
    # A compilation's album artist is "Various Artists": the song's own artist only.
    if track.compilation:
        return artist_key(track.artist)
    return artist_key(track.artist or track.album_artist)


def mates_for(session: Session, track_ids: Sequence[int]) -> dict[int, Mates]:
    """Track ids -> each one's Mates (empty counts when none is tagged). Two queries for
    the whole batch (the batch's own rows, then every tagged song sharing an album or
    an artist with one of them), whatever its size; portable SQL."""
    tracks = session.execute(select(Track.id, Track.album_key, Track.artist,
                                    Track.album_artist, Track.compilation)
                             .where(Track.id.in_(list(track_ids)))).all()
    albums = {t.album_key for t in tracks if t.album_key}
    artists = {t.id: _artist_of(t) for t in tracks}
    # The spellings as stored and trimmed + lower-cased narrow the query (portable SQL);
    # artist_key decides in Python.
    raw = {t.artist for t in tracks if t.artist} | {t.album_artist for t in tracks
                                                   if t.album_artist and not t.compilation}
    genre = func.coalesce(Track.confirmed_genre, Track.canonical_genre)
    wanted = [Track.album_key.in_(albums)] if albums else []
    if raw:
        wanted += [Track.artist.in_(raw), func.lower(func.trim(Track.artist)).in_(
            {a.strip().lower() for a in raw})]
    # A missing song (gone from the library) no longer speaks for its album; a jingle
    # (not a song) never did.
    rows = session.execute(select(Track.id, Track.album_key, Track.artist, genre)
                           .where(genre.is_not(None),
                                  Track.state.not_in((TrackState.MISSING,
                                                      TrackState.NOT_A_SONG)),
                                  or_(*wanted))).all() if wanted else []
    by_album: dict[str, list[tuple[int, str]]] = {}
    by_artist: dict[str, list[tuple[int, str | None, str]]] = {}
    for mate_id, mate_album, mate_artist, mate_genre in rows:
        if mate_album:
            by_album.setdefault(mate_album, []).append((mate_id, mate_genre))
        key = artist_key(mate_artist)
        if key:
            by_artist.setdefault(key, []).append((mate_id, mate_album, mate_genre))
    out = {}
    for t in tracks:
        album = Counter(g for i, g in by_album.get(t.album_key, ()) if i != t.id) \
            if t.album_key else Counter()
        artist = Counter(g for i, a, g in by_artist.get(artists[t.id], ())
                         if i != t.id and (a is None or a != t.album_key)) \
            if artists[t.id] else Counter()
        out[t.id] = Mates(dict(album), dict(artist))
    return out


def settings_for(config: Config, metadata: dict | None) -> ContextSettings | None:
    """The weight and smoothing to use: the bundle's fitted `context` metadata (trainer),
    else config [context]'s; None when [context] is switched off."""
    if not config.context.enabled:
        return None
    fitted = (metadata or {}).get("context") or {}
    try:
        return ContextSettings(float(fitted["weight"]), float(fitted["smoothing"]))
    except (KeyError, TypeError, ValueError):
        return ContextSettings(config.context.weight, config.context.smoothing)


def with_context(session: Session, track_ids: Sequence[int | None], probs: np.ndarray,
                 classes: Sequence[str], settings: ContextSettings | None,
                 ) -> tuple[np.ndarray, list[dict | None]]:
    """A batch's audio probabilities (rows in track_ids' order, columns `classes`) ->
    (the with-context probabilities, each song's `suggestions.context` dict or None).
    A song with no tagged mate, an id given as None (an audit: the sound alone is
    checked against the file's tag, which its album's tags would only echo), or context
    switched off (settings None) keeps its audio exactly and gets None."""
    probs = np.asarray(probs, dtype=np.float64)
    wanted = [i for i in track_ids if i is not None]
    if settings is None or not wanted:
        return probs, [None] * len(track_ids)
    mates = mates_for(session, wanted)
    combined, contexts = probs.copy(), []
    for i, track_id in enumerate(track_ids):
        found = mates.get(track_id) if track_id is not None else None
        if not found:
            contexts.append(None)
            continue
        prior = context_prior(found.counts(), classes, settings.smoothing)
        combined[i] = combine(probs[i], prior, settings.weight)
        contexts.append(context_json(found, probs[i], combined[i], classes, settings))
    return combined, contexts


def _top(row: np.ndarray, classes: Sequence[str], k: int = 3) -> list[list]:
    order = np.argsort(row)[::-1][:k]
    return [[classes[j], round(float(row[j]), 4)] for j in order]


def context_json(mates: Mates, audio: np.ndarray, combined: np.ndarray,
                 classes: Sequence[str], settings: ContextSettings) -> dict:
    """The contract's `suggestions.context` (ISSUE13_14.md): the reason for the with-context
    genre (the album's mates when any is tagged, else the artist's), both counts, the
    settings, the audio's own top 3 and whether the context changed the audio's pick."""
    genre = classes[int(np.argmax(combined))]
    reason = (reason_text(mates.album, genre) if mates.album
              else reason_text(mates.artist, genre, "by this artist"))
    return {"reason": reason, "album": {"counts": mates.album},
            "artist": {"counts": mates.artist}, "weight": settings.weight,
            "smoothing": settings.smoothing, "audio_top": _top(audio, classes),
            "changed": bool(np.argmax(combined) != np.argmax(audio))}


def batch_context(session: Session, config: Config, classifier,
                  track_ids: Sequence[int | None], probs: np.ndarray,
                  ) -> tuple[np.ndarray, list[dict | None]]:
    """with_context for a batch the classifier (daemon.suggest.classifier: its classes and
    its bundle's metadata) just scored, with the settings_for the running config."""
    settings = settings_for(config, getattr(classifier, "metadata", None))
    return with_context(session, track_ids, probs, classifier.classes, settings)
