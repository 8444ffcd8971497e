"""What the review page and `genretagger review list` show: the queue of suggestions, the
history of decisions, the write backlog, and their JSON shapes.

JSON shapes (stable; `genretagger review ... --json` prints them):

    suggestion_json: {"id": int, "track_id": int, "path": str (relative to the library),
        "artist": str|null, "title": str|null, "format": str|null,
        "raw_genre": str|null (the file's tag as found), "genre": str (suggested),
        "confidence": float 0..1, "top": [{"genre": str, "confidence": float}, ...] (best
        first, up to 3), "status": "pending"|"accepted"|"overridden"|"rejected"|"superseded",
        "model_id": int|null, "created_at": ISO-8601 UTC, "track_state": str,
        "confirmed_genre": str|null, "disagrees_with": str|null,
        "sounds_like": [{"track_id": int, "path": str, "genre": str, "similarity": float
                         (cosine -1..1)}, ...] (the nearest confirmed-or-tagged songs by
                         sound, most alike first, up to 3; [] when the model gave none),
        "unverified": bool (the model has not learned from the station's songs yet: the
                      cold-start model),
        "context": {"reason": str|null ("7 of 8 tagged songs on this album are Jazz"),
                    "album": {"counts": {genre: int}}, "artist": {"counts": {genre: int}}
                    (the artist's tagged songs on other albums), "weight": float,
                    "smoothing": float, "audio_top": [[genre, confidence], ...] (the
                    sound alone, best first), "changed": bool (the context changed the
                    sound's pick)} | null (no tagged mate weighed in; genre/top are then
                    the sound's own)}
    decision_json: {"id": int, "track_id": int, "suggestion_id": int|null, "path": str,
        "action": "accept"|"override"|"reject"|"undo",
        "how": "single"|"bulk"|"override"|"undo"|"album",
        "genre": str|null, "previous_genre": str|null, "who": str, "at": ISO-8601 UTC,
        "undoes_id": int|null, "undone": bool,
        "write_status": "pending"|"written"|"failed"|"off"|"none",
        "write_attempts": int, "write_error": str|null,
        "batch_id": str|null (shared by the decisions of one album or bulk action),
        "file_genre": str|null (the genre(s) the file read back after this decision's
        write, "; "-separated, "" for none; null until written)}
    `review list --json`: {"total": int, "suggestions": [suggestion_json, ...]}
    `review accept|set|reject|undo --json`: {"decisions": [decision_json, ...]}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from daemon.core.db.models import Decision, Model, Suggestion, Track
from daemon.core.labels import training_label
from daemon.core.states import WRITE_OUTSTANDING, QueueSort, SuggestionStatus, TrackState
from daemon.review.decisions import ReviewError, top_choices, waiting_for_review
from daemon.review.sureness import at_least, threshold_percent

S = SuggestionStatus
SORTS = tuple(QueueSort)
# The queue filter's statuses: every SuggestionStatus, or all of them.
STATUSES = (*S, "all")


@dataclass(frozen=True)
class QueueFilter:
    """What the queue page and `review list` show."""

    status: str = S.PENDING
    genre: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    folder: str | None = None  # relative folder; matches everything under it
    format: str | None = None
    sort: str = "confident"


def _like_prefix(folder: str) -> str:
    folder = folder.strip().strip("/")
    escaped = folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "/%"


def _filtered(query: Select, f: QueueFilter) -> Select:
    if f.status == S.PENDING:
        query = query.where(waiting_for_review())
    elif f.status != "all":
        query = query.where(Suggestion.status == f.status)
    if f.genre:
        query = query.where(Suggestion.genre == f.genre)
    if f.min_confidence is not None:
        query = query.where(at_least(Suggestion.confidence,
                                     threshold_percent(f.min_confidence)))
    if f.max_confidence is not None:
        query = query.where(Suggestion.confidence < f.max_confidence)
    if f.folder and f.folder.strip().strip("/"):
        # ILIKE: the folder as typed, any case, as SQLite's LIKE always matched (on SQLite
        # it renders lower() LIKE lower(), the same ASCII folding).
        query = query.where(Track.path.ilike(_like_prefix(f.folder), escape="\\"))
    if f.format:
        query = query.where(Track.format == f.format)
    return query


def list_suggestions(session: Session, f: QueueFilter = QueueFilter(), *, limit: int = 50,
                     offset: int = 0) -> tuple[list[tuple[Suggestion, Track]], int]:
    """(suggestion, track) pairs for one page of the queue, and the total that match."""
    if f.sort not in SORTS:
        raise ReviewError(f"sort must be one of {', '.join(SORTS)}, not {f.sort!r}")
    if f.status not in STATUSES:
        raise ReviewError(f"state must be one of {', '.join(STATUSES)}, not {f.status!r}")
    base = select(Suggestion, Track).join(Track, Suggestion.track_id == Track.id)
    # Ties broken in the same direction, so SQLite walks the (status, confidence) index
    # (whose entries end in the row id) without a sort.
    order = {
        "confident": (Suggestion.confidence.desc(), Suggestion.id.desc()),
        "uncertain": (Suggestion.confidence.asc(), Suggestion.id.asc()),
        "newest": (Suggestion.id.desc(),),
    }[f.sort]
    rows = session.execute(_filtered(base, f).order_by(*order).limit(limit).offset(offset)).all()
    count = select(func.count()).select_from(Suggestion)
    if f.folder or f.format or f.status == S.PENDING:  # only then does it need the tracks
        count = count.join(Track, Suggestion.track_id == Track.id)
    total = session.scalar(_filtered(count, f))
    return [(s, t) for s, t in rows], int(total or 0)


def count_above(session: Session, threshold: float) -> tuple[int, int | None]:
    """How many pending suggestions are shown at least as sure as `threshold` (0-1, as a
    whole percentage: daemon.review.sureness), and the highest id among them (pass it to
    `bulk_accept(up_to_id=...)` so suggestions that arrive after the count was shown are
    not accepted unseen)."""
    count, top_id = session.execute(
        select(func.count(), func.max(Suggestion.id))
        .join(Track, Suggestion.track_id == Track.id)
        .where(waiting_for_review(),
               at_least(Suggestion.confidence, threshold_percent(threshold)))
    ).one()
    return int(count), top_id


def bulk_songs(session: Session, threshold: float, up_to_id: int | None,
               limit: int) -> list[tuple[Suggestion, Track]]:
    """The songs a bulk accept at `threshold` takes (up to `limit` of them), most sure
    first, for its confirm page."""
    query = (select(Suggestion, Track).join(Track, Suggestion.track_id == Track.id)
             .where(Suggestion.status == SuggestionStatus.PENDING,
                    at_least(Suggestion.confidence, threshold_percent(threshold)))
             .order_by(Suggestion.confidence.desc(), Track.path).limit(limit))
    if up_to_id is not None:
        query = query.where(Suggestion.id <= up_to_id)
    return [(s, t) for s, t in session.execute(query).all()]


def pending_genres(session: Session, min_confidence: float | None = None
                   ) -> list[tuple[str, int]]:
    """(suggested genre, pending count), for the queue's genre filter and the bulk page."""
    query = (select(Suggestion.genre, func.count())
             .join(Track, Suggestion.track_id == Track.id).where(waiting_for_review()))
    if min_confidence is not None:
        query = query.where(at_least(Suggestion.confidence, threshold_percent(min_confidence)))
    return [(g, int(n)) for g, n in session.execute(
        query.group_by(Suggestion.genre).order_by(Suggestion.genre)).all()]


def pending_formats(session: Session) -> list[str]:
    return [f for f in session.scalars(
        select(Track.format).join(Suggestion, Suggestion.track_id == Track.id)
        .where(waiting_for_review(), Track.format.is_not(None))
        .distinct().order_by(Track.format)).all()]


def list_decisions(session: Session, *, limit: int = 50, offset: int = 0,
                   write_status: Iterable[str] | None = None
                   ) -> tuple[list[tuple[Decision, Track]], int]:
    """The audit log, newest first, with each decision's track; and the total."""
    query = select(Decision, Track).join(Track, Decision.track_id == Track.id)
    count = select(func.count()).select_from(Decision)
    if write_status is not None:
        statuses = tuple(write_status)
        query = query.where(Decision.write_status.in_(statuses))
        count = count.where(Decision.write_status.in_(statuses))
    rows = session.execute(query.order_by(Decision.id.desc()).limit(limit).offset(offset)).all()
    return [(d, t) for d, t in rows], int(session.scalar(count) or 0)


def write_backlog(session: Session) -> dict[str, int]:
    """{"pending": n, "failed": n}: decided genres not yet in their files (for status)."""
    counts = dict(session.execute(
        select(Decision.write_status, func.count())
        .where(Decision.write_status.in_(WRITE_OUTSTANDING), Decision.undone.is_(False))
        .group_by(Decision.write_status)).all())
    return {s: int(counts.get(s, 0)) for s in WRITE_OUTSTANDING}


def model_unverified(model: Model) -> bool:
    """A model that has not learned from the station's songs (the cold-start model: its
    metrics say family "coldstart" or unverified)."""
    metrics = model.metrics or {}
    return bool(metrics.get("unverified")) or metrics.get("family") == "coldstart"


def unverified_model_ids(session: Session) -> set[int]:
    """Ids of the models whose suggestions are marked unverified (a handful of rows)."""
    return {m.id for m in session.scalars(select(Model)) if model_unverified(m)}


def song_name(track: Track) -> str:
    """A song as the director knows it: "Title by Artist", else the file's name."""
    name = track.title or track.path.rsplit("/", 1)[-1]
    return f"{name} by {track.artist}" if track.title and track.artist else name


def sounds_like(session: Session, suggestions: Iterable[Suggestion]) -> dict[int, list[dict]]:
    """{suggestion id: the songs it sounds like, as the review page shows them}: each
    {"track_id", "name" (song_name), "genre" (the song's label now: a genre corrected
    since is shown corrected), "similarity"}; songs no longer in the library are left out
    (nothing to play). One query for the whole page."""
    suggestions = list(suggestions)
    ids = {n["track_id"] for s in suggestions for n in s.sounds_like or []}
    tracks = {t.id: t for t in session.scalars(select(Track).where(Track.id.in_(ids)))} \
        if ids else {}
    shown: dict[int, list[dict]] = {}
    for suggestion in suggestions:
        rows = []
        for near in suggestion.sounds_like or []:
            track = tracks.get(near["track_id"])
            if track is None or track.state == TrackState.MISSING:
                continue
            rows.append({"track_id": track.id, "name": song_name(track),
                         "genre": training_label(track.confirmed_genre,
                                                 track.canonical_genre) or near["genre"],
                         "similarity": float(near["similarity"])})
        shown[suggestion.id] = rows
    return shown


# ---------------------------------------------------------------- JSON shapes

def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def suggestion_json(suggestion: Suggestion, track: Track, *, unverified: bool = False) -> dict:
    return {
        "id": suggestion.id, "track_id": track.id, "path": track.path,
        "artist": track.artist, "title": track.title, "format": track.format,
        "raw_genre": track.raw_genre, "genre": suggestion.genre,
        "confidence": round(float(suggestion.confidence), 4),
        "top": [{"genre": g, "confidence": round(c, 4)} for g, c in top_choices(suggestion)],
        "status": suggestion.status, "model_id": suggestion.model_id,
        "created_at": _iso(suggestion.created_at), "track_state": track.state,
        "confirmed_genre": track.confirmed_genre, "disagrees_with": suggestion.disagrees_with,
        "sounds_like": [{"track_id": n["track_id"], "path": n["path"], "genre": n["genre"],
                         "similarity": round(float(n["similarity"]), 4)}
                        for n in suggestion.sounds_like or []],
        "unverified": bool(unverified),
        "context": suggestion.context or None,
    }


def decision_json(decision: Decision, track: Track) -> dict:
    return {
        "id": decision.id, "track_id": decision.track_id,
        "suggestion_id": decision.suggestion_id, "path": track.path,
        "action": decision.action, "how": decision.how, "genre": decision.genre,
        "previous_genre": decision.previous_genre, "who": decision.who,
        "at": _iso(decision.at), "undoes_id": decision.undoes_id,
        "undone": bool(decision.undone), "write_status": decision.write_status,
        "write_attempts": decision.write_attempts, "write_error": decision.write_error,
        "batch_id": decision.batch_id, "file_genre": decision.file_genre,
    }


