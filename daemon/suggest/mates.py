"""A song's tagged mates: the genres of the other songs on its album and by its artist, and
the context they give its suggestion (daemon.suggest.context holds the arithmetic).

A mate counts with its confirmed genre, else its tag's canonical genre; a song with
neither, or gone from the library (missing), is not counted. The album is
tracks.album_key (daemon.library.albums: a compilation is one album, and a tagless file
in a folder of one album is on it); the artist is daemon.library.albums.song_artist (its
artist tag, else its album artist; on a compilation its own artist only, never "Various
Artists"). The song itself is never its own mate. count_mates is the one count: the
daemon's mates_for and the trainer's context fit (trainer.context) both call it.

How the two combine: the prior's counts are the album's counts plus ARTIST_SHARE times the
artist's counts from songs NOT on this album (those are already in the album's). An album
is one record, made at one time: its mates say more about a song than an artist's other
records, which can span a career of genres, so they count in full and the rest of the
catalogue at half; a song on an untagged album still gets its artist's other albums.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from daemon.core.config import Config
from daemon.core.db.models import Track
from daemon.core.labels import LABEL
from daemon.core.states import TrackState
from daemon.library.albums import artist_key, song_artist
from daemon.suggest.context import combine, context_prior, reason_text
from daemon.suggest.suggestions import top_genres

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


@dataclass(frozen=True)
class MateSong:
    """What counting mates needs of one song: an id (a track's; the trainer's: its path),
    its album (tracks.album_key, None: on no album), its artist (song_artist, None: no
    usable artist) and its label (confirmed, else its tag's canonical genre; None: it is
    nobody's mate)."""

    id: Hashable
    album: str | None
    artist: str | None
    genre: str | None

    @classmethod
    def of(cls, id: Hashable, album_key: str | None, artist: str | None,
           album_artist: str | None, compilation: bool, genre: str | None) -> MateSong:
        """From a song's stored album identity and its artist tags as read."""
        return cls(id, album_key, song_artist(artist, album_artist, compilation), genre)


def count_mates(songs: Sequence[MateSong], library: Iterable[MateSong]) -> list[Mates]:
    """Each of `songs`' Mates among `library`'s labelled songs (`songs` may be in it): the
    labels on its album, and its artist's labels on other albums (or on none). A song is
    never its own mate (same id)."""
    by_album: dict[str, list[MateSong]] = {}
    by_artist: dict[str, list[MateSong]] = {}
    for mate in library:
        if mate.genre is None:
            continue
        if mate.album:
            by_album.setdefault(mate.album, []).append(mate)
        if mate.artist:
            by_artist.setdefault(mate.artist, []).append(mate)
    out = []
    for song in songs:
        album = Counter(m.genre for m in by_album.get(song.album, ()) if m.id != song.id) \
            if song.album else Counter()
        artist = Counter(m.genre for m in by_artist.get(song.artist, ())
                         if m.id != song.id and (m.album is None or m.album != song.album)) \
            if song.artist else Counter()
        out.append(Mates(dict(album), dict(artist)))
    return out


def _mate_song(row) -> MateSong:
    return MateSong.of(row.id, row.album_key, row.artist, row.album_artist,
                       bool(row.compilation), row.genre)


def mates_for(session: Session, track_ids: Sequence[int]) -> dict[int, Mates]:
    """Track ids -> each one's Mates (empty counts when none is tagged). Two queries for
    the whole batch (the batch's own rows, then every tagged song sharing an album or
    an artist with one of them), whatever its size; portable SQL; count_mates counts."""
    genre = LABEL.label("genre")
    columns = (Track.id, Track.album_key, Track.artist, Track.album_artist,
               Track.compilation, genre)
    rows = session.execute(select(*columns).where(Track.id.in_(list(track_ids)))).all()
    tracks = [_mate_song(row) for row in rows]
    albums = {t.album for t in tracks if t.album}
    # The batch's artist spellings as stored, and trimmed + lower-cased, narrow the query
    # (portable SQL); song_artist decides in Python. Never "Various Artists": it would
    # fetch every compilation.
    spellings = {name for row in rows
                 for name in (row.artist, None if row.compilation else row.album_artist)
                 if artist_key(name)}
    wanted = [Track.album_key.in_(albums)] if albums else []
    if spellings:
        folded = {name.strip().lower() for name in spellings}
        wanted += [Track.artist.in_(spellings), Track.album_artist.in_(spellings),
                   func.lower(func.trim(Track.artist)).in_(folded),
                   func.lower(func.trim(Track.album_artist)).in_(folded)]
    # A missing song (gone from the library) no longer speaks for its album; a jingle
    # (not a song) never did.
    library = [_mate_song(row) for row in session.execute(
        select(*columns).where(genre.is_not(None),
                               Track.state.not_in((TrackState.MISSING, TrackState.NOT_A_SONG)),
                               or_(*wanted)))] if wanted else []
    return {t.id: m for t, m in zip(tracks, count_mates(tracks, library), strict=True)}


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


def context_json(mates: Mates, audio: np.ndarray, combined: np.ndarray,
                 classes: Sequence[str], settings: ContextSettings) -> dict:
    """The stored `suggestions.context`: the reason for the with-context
    genre (the album's mates when any is tagged, else the artist's), both counts, the
    settings, the audio's own top 3 and whether the context changed the audio's pick."""
    genre = classes[int(np.argmax(combined))]
    reason = (reason_text(mates.album, genre) if mates.album
              else reason_text(mates.artist, genre, "by this artist"))
    return {"reason": reason, "album": {"counts": mates.album},
            "artist": {"counts": mates.artist}, "weight": settings.weight,
            "smoothing": settings.smoothing,
            "audio_top": [[g, round(p, 4)] for g, p in top_genres(audio, classes)],
            "changed": bool(np.argmax(combined) != np.argmax(audio))}


def batch_context(session: Session, config: Config, classifier,
                  track_ids: Sequence[int | None], probs: np.ndarray,
                  ) -> tuple[np.ndarray, list[dict | None]]:
    """with_context for a batch the classifier (daemon.suggest.classifier: its classes and
    its bundle's metadata) just scored, with the settings_for the running config."""
    settings = settings_for(config, getattr(classifier, "metadata", None))
    return with_context(session, track_ids, probs, classifier.classes, settings)
