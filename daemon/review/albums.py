"""Albums for review: one row per album with songs waiting for review (album-at-a-time
review), and the album consistency audit (albums whose labelled songs disagree).

Album identity is `tracks.album_key` (daemon.library.albums). Every page is aggregated in
SQL (GROUP BY album_key over the pending suggestions), paged there, and only the page's
albums' songs are then read. The review page reuses a page's aggregate while nothing it
depends on has moved (list_version); the songs are always read fresh.

A song's label is its confirmed genre, else its tag's canonical genre
(daemon.core.labels); "labelled" songs are the album's tagged and
confirmed songs.

JSON shapes (stable; `genretagger review album ... --json` prints them):

    album_json: {"key": str (16 hex), "title": str (the album tag, else its folder),
        "artist": str|null ("Various Artists" for a compilation), "compilation": bool,
        "folder": str, "songs": int (in the library now), "pending": int,
        "majority": str|null (the genre most pending songs are suggested), "agreeing": int
        (pending songs suggested the majority genre), "labelled": {genre: int} (tagged or
        confirmed songs), "disagreeing": [album_song_json, ...] (pending songs suggested
        another genre), "tracks": [album_song_json, ...] (every song; only in `show`)}
    album_song_json: {"track_id": int, "suggestion_id": int|null, "path": str,
        "title": str|null, "artist": str|null, "format": str|null, "state": str,
        "genre": str|null (suggested, pending songs), "confidence": float|null,
        "agrees": bool|null (suggested the majority genre; null: not pending),
        "label": str|null (tagged/confirmed genre)}
    `review album list --json`: {"total": int, "albums": [album_json, ...]}
    `review album mixed --json`: {"total": int, "albums": [album_json, ...]} (labelled
        holds two genres or more)
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Select, and_, case, func, literal_column, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Decision, Suggestion, Track, utcnow
from daemon.core.labels import LABEL
from daemon.core.states import Action, How, SuggestionStatus, TrackState, can_move
from daemon.library.albums import album_folder
from daemon.review.decisions import (
    NotPending,
    ReviewError,
    cancel_outstanding_writes,
    check_genre,
    decide,
    previous_genre_of,
    write_status_for,
)

S = SuggestionStatus
# Orders of the album list: most songs in agreement first (quickest to review), most songs
# waiting first, or by album name.
ALBUM_SORTS = ("agreeing", "pending", "album")
COMPILATION_ARTIST = "Various Artists"
# The longest a page's aggregate is reused while list_version stays the same (a change it
# does not see, such as a retagged album, shows within this).
AGGREGATE_REUSE_S = 30
# The columns albums_by_key reads: plain rows, not ORM objects (a page is some 250 songs,
# and fewer objects a request keep the collector's pauses out of the page's latency).
SONG_COLUMNS = (Track.id, Track.path, Track.title, Track.artist, Track.album,
                Track.album_artist, Track.album_key, Track.compilation, Track.format,
                Track.state, Track.confirmed_genre, Track.canonical_genre)
SUGGESTION_COLUMNS = (Suggestion.id.label("suggestion_id"),
                      Suggestion.genre.label("suggested"),
                      Suggestion.confidence.label("confidence"))


def majority_genre(suggestions: Iterable[PendingSuggestion]) -> str | None:
    """The genre most of `suggestions` name (ties: the more sure in total, then by name);
    None for none."""
    votes: dict[str, tuple[int, float]] = {}
    for s in suggestions:
        n, sure = votes.get(s.genre, (0, 0.0))
        votes[s.genre] = (n + 1, sure + float(s.confidence))
    return max(votes, key=lambda g: (*votes[g], g)) if votes else None


@dataclass(frozen=True)
class AlbumFilter:
    """What the album page and `review album list` show: albums with a pending song under
    `folder` / of `format`, whose majority suggested genre is `genre`."""

    genre: str | None = None
    folder: str | None = None
    format: str | None = None
    sort: str = "agreeing"


@dataclass(frozen=True, slots=True)
class PendingSuggestion:
    """What the album view shows of a song's pending suggestion."""

    id: int
    genre: str
    confidence: float


@dataclass
class AlbumSong:
    track: Row  # SONG_COLUMNS, by name (track.id, track.path, track.title, ...)
    suggestion: PendingSuggestion | None  # its pending suggestion, if any

    @property
    def label(self) -> str | None:
        return self.track.confirmed_genre or self.track.canonical_genre


@dataclass
class Album:
    """One album as the review shows it; `songs` in track order (path)."""

    key: str
    title: str
    artist: str | None
    compilation: bool
    folder: str
    songs: list[AlbumSong] = field(default_factory=list)

    @property
    def pending(self) -> list[AlbumSong]:
        return [s for s in self.songs if s.suggestion is not None]

    @cached_property  # read many times a row; songs are complete once the album is built
    def majority(self) -> str | None:
        """The genre most pending songs are suggested (majority_genre)."""
        return majority_genre(s.suggestion for s in self.pending)

    @property
    def agreeing(self) -> list[AlbumSong]:
        majority = self.majority
        return [s for s in self.pending if s.suggestion.genre == majority]

    @property
    def disagreeing(self) -> list[AlbumSong]:
        majority = self.majority
        return [s for s in self.pending if s.suggestion.genre != majority]

    @property
    def labelled(self) -> dict[str, int]:
        """{genre: songs} over the album's tagged and confirmed songs, most first."""
        counts = Counter(s.label for s in self.songs if s.label and s.suggestion is None)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def genres_present(self) -> list[str]:
        """Every genre on the album now (labels and pending suggestions), most songs first:
        the choices of "use X for all"."""
        counts = Counter(self.labelled)
        counts.update(s.suggestion.genre for s in self.pending)
        return [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _like_prefix(folder: str) -> str:
    folder = folder.strip().strip("/")
    escaped = folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def _pending_songs(f: AlbumFilter) -> Select:
    """(album_key, genre, songs) over pending suggestions of tracks on an album."""
    query = (select(Track.album_key.label("album_key"), Suggestion.genre.label("genre"),
                    func.count().label("n"))
             .select_from(Suggestion).join(Track, Suggestion.track_id == Track.id)
             .where(Suggestion.status == S.PENDING, Track.album_key.is_not(None),
                    Track.state != TrackState.MISSING))
    if (f.folder and f.folder.strip().strip("/")) or f.format:
        inner = select(Track.album_key).where(Track.album_key.is_not(None))
        if f.folder and f.folder.strip().strip("/"):
            inner = inner.where(Track.path.like(_like_prefix(f.folder), escape="\\"))
        if f.format:
            inner = inner.where(Track.format == f.format)
        query = query.where(Track.album_key.in_(inner))
    return query.group_by(Track.album_key, Suggestion.genre)


def list_albums(session: Session, f: AlbumFilter = AlbumFilter(), *, limit: int = 25,
                offset: int = 0, cache=None) -> tuple[list[Album], int]:
    """One page of albums with songs waiting for review, and how many albums match.

    cache: an LRU (daemon.review.web.common) to reuse the page's aggregate in while
    list_version stays the same (at most AGGREGATE_REUSE_S); the songs are read fresh."""
    if f.sort not in ALBUM_SORTS:
        raise ReviewError(f"sort must be one of {', '.join(ALBUM_SORTS)}, not {f.sort!r}")
    if cache is None:
        keys, total = album_keys(session, f, limit=limit, offset=offset)
    else:
        stamp = (list_version(session), int(time.monotonic() // AGGREGATE_REUSE_S))
        keys, total = cache.get_or_make((f, limit, offset, stamp), lambda: album_keys(
            session, f, limit=limit, offset=offset))
    return albums_by_key(session, keys), total


def list_version(session: Session) -> tuple:
    """What changes whenever list_albums' answer can: the pending suggestions (how many,
    the newest), the newest decision, the newest track move. Index lookups only."""
    pending = session.execute(select(func.count(), func.max(Suggestion.id))
                              .where(Suggestion.status == S.PENDING)).one()
    return (*pending, session.scalar(select(func.max(Decision.id))),
            session.scalar(select(func.max(Track.state_changed_at))))


def album_keys(session: Session, f: AlbumFilter, *, limit: int, offset: int
               ) -> tuple[list[str], int]:
    """list_albums' aggregate: the keys of one page of albums, in order, and the total."""
    per_genre = _pending_songs(f).subquery()
    pending, top = func.sum(per_genre.c.n), func.max(per_genre.c.n)
    # The total rides along on every row (a window over the grouped rows), so the
    # aggregate runs once a page; a page past the end counts separately.
    grouped = (select(per_genre.c.album_key, func.count().over().label("total"))
               .group_by(per_genre.c.album_key))
    if f.genre:
        # The filtered genre is (one of) the album's most suggested.
        grouped = grouped.having(func.max(case((per_genre.c.genre == f.genre, per_genre.c.n),
                                               else_=0)) == top)
    if f.sort == "album":
        name = (select(func.min(Track.album)).where(Track.album_key == per_genre.c.album_key)
                .scalar_subquery())
        order = (name,)
    else:  # top / pending as a float, portably
        share = top * literal_column("1.0") / pending
        order = (share.desc(), pending.desc()) if f.sort == "agreeing" else (pending.desc(),)
    rows = session.execute(grouped.order_by(*order, per_genre.c.album_key)
                           .limit(limit).offset(offset)).all()
    if rows:
        return [r.album_key for r in rows], int(rows[0].total)
    total = session.scalar(select(func.count()).select_from(
        grouped.with_only_columns(per_genre.c.album_key).subquery())) or 0
    return [], int(total)


def albums_by_key(session: Session, keys: list[str]) -> list[Album]:
    """The albums of `keys` (in that order; unknown keys left out), each with every song
    in the library now and its pending suggestion: one query for all of them."""
    if not keys:
        return []
    rows = session.execute(
        select(*SONG_COLUMNS, *SUGGESTION_COLUMNS)
        .outerjoin(Suggestion, and_(Suggestion.track_id == Track.id,
                                    Suggestion.status == S.PENDING))
        .where(Track.album_key.in_(keys), Track.state != TrackState.MISSING)
        .order_by(Track.path, Suggestion.id)).all()
    found: dict[str, Album] = {}
    seen: dict[int, AlbumSong] = {}
    for row in rows:
        pending = None if row.suggestion_id is None else PendingSuggestion(
            row.suggestion_id, row.suggested, float(row.confidence))
        if row.id in seen:  # two pending suggestions: the newer one stands
            seen[row.id].suggestion = pending
            continue
        album = found.get(row.album_key)
        if album is None:
            album = found[row.album_key] = _album_of(row)
        song = seen[row.id] = AlbumSong(row, pending)
        album.songs.append(song)
    for album in found.values():
        _name_album(album)
    return [found[k] for k in keys if k in found]


def _album_of(track: Row) -> Album:
    return Album(key=track.album_key, title="", artist=None,
                 compilation=bool(track.compilation), folder=album_folder(track.path))


def _name_album(album: Album) -> None:
    """Title and artist as the album's tracks spell them (daemon.library.albums.label)."""
    tracks = [s.track for s in album.songs]
    album.title = next((t.album.strip() for t in tracks if t.album and t.album.strip()),
                       album.folder or "(library root)")
    album.compilation = any(t.compilation for t in tracks)
    if album.compilation:
        album.artist = COMPILATION_ARTIST
        return
    album.artist = next((t.album_artist.strip() for t in tracks
                         if t.album_artist and t.album_artist.strip()), None) or next(
        (t.artist.strip() for t in tracks if t.artist and t.artist.strip()), None)


def get_album(session: Session, key: str) -> Album:
    """The album of `key` (ReviewError when no song in the library is on it)."""
    albums = albums_by_key(session, [key])
    if not albums:
        raise UnknownAlbum(key)
    return albums[0]


class UnknownAlbum(ReviewError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(f"no album with key {key!r} (see `genretagger review album list`)")


# ---------------------------------------------------------------- consistency audit

def _mixed_keys() -> Select:
    return (select(Track.album_key)
            .where(Track.album_key.is_not(None), Track.state != TrackState.MISSING,
                   LABEL.is_not(None),
                   # Songs with a pending suggestion are counted by the review, not here.
                   or_(Track.state.in_((TrackState.TAGGED, TrackState.REVIEWED)),
                       Track.confirmed_genre.is_not(None)))
            .group_by(Track.album_key).having(func.count(func.distinct(LABEL)) > 1))


def count_mixed(session: Session) -> int:
    """How many albums' tagged/confirmed songs carry two canonical genres or more."""
    return int(session.scalar(select(func.count()).select_from(_mixed_keys().subquery())) or 0)


def list_mixed(session: Session, *, limit: int = 25, offset: int = 0
               ) -> tuple[list[Album], int]:
    """One page of the albums count_mixed counts (by key: a stable order), and the total."""
    rows = session.execute(_mixed_keys().add_columns(func.count().over().label("total"))
                           .order_by(Track.album_key).limit(limit).offset(offset)).all()
    total = rows[0].total if rows else count_mixed(session)
    return albums_by_key(session, [r.album_key for r in rows]), int(total)


# ---------------------------------------------------------------- JSON shapes

def album_song_json(song: AlbumSong, majority: str | None) -> dict:
    t, s = song.track, song.suggestion
    return {"track_id": t.id, "suggestion_id": s.id if s else None, "path": t.path,
            "title": t.title, "artist": t.artist, "format": t.format, "state": t.state,
            "genre": s.genre if s else None,
            "confidence": round(float(s.confidence), 4) if s else None,
            "agrees": (s.genre == majority) if s else None, "label": song.label}


def album_json(album: Album, *, songs: bool = False) -> dict:
    majority = album.majority
    data = {"key": album.key, "title": album.title, "artist": album.artist,
            "compilation": album.compilation, "folder": album.folder,
            "songs": len(album.songs), "pending": len(album.pending), "majority": majority,
            "agreeing": len(album.agreeing), "labelled": album.labelled,
            "disagreeing": [album_song_json(s, majority) for s in album.disagreeing]}
    if songs:
        data["tracks"] = [album_song_json(s, majority) for s in album.songs]
    return data


# ---------------------------------------------------------------- the confirm step

@dataclass(frozen=True)
class ActionPreview:
    """What an album action will do, shown before it is done: `songs` decisions (of them
    `overrides` give a genre other than the suggested or tagged one), `files` tag writes
    (0 with review.write_tags off); pass `up_to_id` to accept_album."""

    key: str
    genre: str
    scope: str
    relabel: bool
    songs: int
    overrides: int
    files: int
    up_to_id: int | None


def preview_action(session: Session, config: Config, key: str, genre: str, *, scope: str = "all",
                   relabel: bool = False) -> ActionPreview:
    """The confirm step's figures for accept_album(key, genre, scope, relabel)."""
    steps = album_plan(session, config, key, genre, scope=scope, relabel=relabel)
    ids = [s.suggestion.id for s in steps if s.suggestion is not None]
    return ActionPreview(
        key=key, genre=steps[0].genre if steps else genre, scope=scope, relabel=relabel,
        songs=len(steps), overrides=sum(s.action == "override" for s in steps),
        files=len(steps) if config.review.write_tags else 0,
        up_to_id=max(ids) if ids else None)


# ---------------------------------------------------------------- album actions

ALBUM_SCOPES = ("all", "agreeing")


@dataclass(frozen=True)
class AlbumStep:
    """One song's part of an album action: the decision it will get."""

    track: Track
    suggestion: Suggestion | None  # None: a tagged/confirmed song relabelled
    action: str
    genre: str


def album_plan(session: Session, config: Config, album_key: str, genre: str, *,
               scope: str = "all", relabel: bool = False,
               up_to_id: int | None = None) -> list[AlbumStep]:
    """What an album action would decide, song by song (nothing is changed): scope "all"
    gives every pending song `genre` (an accept where it was suggested, else an
    override); "agreeing" accepts only the songs suggested `genre`. relabel (the
    consistency audit's "use X for all") also overrides the album's tagged and confirmed
    songs whose genre is not `genre`. Suggestions newer than up_to_id (when given) are
    left alone, so songs that arrive after the confirm step are not decided unseen.
    Every step writes a file when review.write_tags is on."""
    if scope not in ALBUM_SCOPES:
        raise ReviewError(f"scope must be one of {', '.join(ALBUM_SCOPES)}, not {scope!r}")
    genre = check_genre(session, config, genre)
    query = (select(Suggestion).join(Track, Suggestion.track_id == Track.id)
             .where(Track.album_key == album_key, Suggestion.status == SuggestionStatus.PENDING,
                    # A song gone from the library is not on the album page either.
                    Track.state != TrackState.MISSING)
             .order_by(Track.path, Suggestion.id).with_for_update(of=Suggestion))
    if up_to_id is not None:
        query = query.where(Suggestion.id <= up_to_id)
    steps: dict[int, AlbumStep] = {}
    for suggestion in session.scalars(query).all():
        track = suggestion.track
        if track.state != TrackState.REVIEWED and not can_move(track.state, TrackState.REVIEWED):
            continue
        same = suggestion.genre == genre
        if same or scope == "all":  # the newest pending suggestion of a track stands
            steps[track.id] = AlbumStep(track, suggestion,
                                        Action.ACCEPT if same else Action.OVERRIDE, genre)
    if relabel:
        for track in session.scalars(
                select(Track).where(Track.album_key == album_key,
                                    Track.state.in_((TrackState.TAGGED, TrackState.REVIEWED)))
                .order_by(Track.path)).all():
            label = track.confirmed_genre or track.canonical_genre
            if track.id not in steps and label is not None and label != genre:
                steps[track.id] = AlbumStep(track, None, Action.OVERRIDE, genre)
    return list(steps.values())


def accept_album(sessions: sessionmaker[Session], config: Config, album_key: str, genre: str,
                 *, scope: str = "all", who: str, relabel: bool = False,
                 up_to_id: int | None = None) -> list[Decision]:
    """Do album_plan's steps in one transaction: each song its own decision (how
    "album"), all sharing one batch_id (undo_batch takes them back in one step). Raises
    ReviewError when nothing on the album would change."""
    with transaction(sessions) as session:
        steps = album_plan(session, config, album_key, genre, scope=scope, relabel=relabel,
                           up_to_id=up_to_id)
        if not steps:
            raise NotPending(f"album {album_key}: no song would change to {genre}")
        batch_id = uuid.uuid4().hex
        made = []
        for step in steps:
            if step.suggestion is not None:
                made.append(decide(session, config, step.suggestion, step.track,
                                    action=step.action, how=How.ALBUM, genre=step.genre,
                                    who=who, batch_id=batch_id))
            else:
                made.append(_relabel(session, config, step.track, step.genre, who, batch_id))
        return made


def _relabel(session: Session, config: Config, track: Track, genre: str, who: str,
             batch_id: str) -> Decision:
    """An override of a tagged or confirmed song with no suggestion waiting: its label and
    its file's tag become `genre`; its state stays (tagged or reviewed)."""
    now = utcnow()
    decision = Decision(track_id=track.id, suggestion_id=None, action=Action.OVERRIDE,
                        how=How.ALBUM, genre=genre, previous_genre=previous_genre_of(track),
                        who=who, at=now, undone=False, write_attempts=0, batch_id=batch_id,
                        write_status=write_status_for(config, True))
    cancel_outstanding_writes(session, track, "replaced by a later decision")
    session.add(decision)
    session.flush()
    track.confirmed_genre, track.confirmed_at, track.confirmed_decision_id = (
        genre, now, decision.id)
    return decision
