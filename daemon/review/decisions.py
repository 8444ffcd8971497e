"""Review decisions as domain operations: accept, override, reject, undo, bulk accept.

Each operation is ONE transaction that writes a `decisions` row (the audit log: who,
when, what genre, the previous value, and how: single / bulk / override / undo) and
moves the track through `daemon.core.states.move` (suggested <-> reviewed). Accepted and
overridden genres become the track's confirmed label (`confirmed_genre`,
`confirmed_at`, `confirmed_decision_id`), the training label the nightly retrain uses.
Decisions that change a file's tag get `write_status = "pending"` (or `"off"` when
`review.write_tags` is false); `daemon.review.writeback.Writer` does the writing.

Album actions (daemon.review.albums.accept_album) and bulk accepts (bulk_accept) decide
many songs in one transaction: each song its own row (how "album" / "bulk"), all sharing
one `batch_id`, undone together (undo_batch).

The web UI and the `genretagger review` commands both call these functions; IDs given
to accept / set / reject are suggestion ids, undo takes a decision id.

The queue, the history and their JSON shapes: `daemon.review.listing`.

`previous_genre` is the genre the station had for the track just before the decision:
its confirmed label if it had one, else the file's raw tag.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Decision, Suggestion, Track, utcnow
from daemon.core.errors import GenretaggerError
from daemon.core.states import (
    SONG_MARKS,
    WRITE_OUTSTANDING,
    Action,
    How,
    SuggestionStatus,
    TrackState,
    WriteStatus,
    can_move,
    move,
)
from daemon.review.sureness import at_least, threshold_percent
from daemon.suggest.active import active_model

# The suggestion rule's own reading of the audit log; review callers import it from here too.
from daemon.suggest.suggestions import rejected_genres  # noqa: F401
from daemon.tags.genres import normalise
from daemon.tags.live import Live
from daemon.tags.stored_genres import host_genre_map


class ReviewError(GenretaggerError):
    """A review operation that cannot be done as asked; the message says why."""


class NotFound(ReviewError):
    """What the action names is not there (the page answers 404)."""


class UnknownSuggestion(NotFound):
    def __init__(self, suggestion_id: int):
        self.suggestion_id = suggestion_id
        super().__init__(f"no suggestion with id {suggestion_id}")


class UnknownDecision(NotFound):
    def __init__(self, decision_id: int):
        self.decision_id = decision_id
        super().__init__(f"no decision with id {decision_id}")


class NotPending(ReviewError):
    """The suggestion was already decided (or replaced), or its track is not reviewable."""


class UnknownGenre(ReviewError):
    def __init__(self, genre: str, known: Sequence[str]):
        self.genre = genre
        super().__init__(f"{genre!r} is not one of the station's genres: {', '.join(known)}")


class UnknownBatch(UnknownDecision):
    """No album or bulk action has this batch id (an unknown decision, to the page: a
    404)."""

    def __init__(self, batch_id: str):
        self.batch_id = batch_id
        ReviewError.__init__(self, f"no album or bulk action with batch id {batch_id!r}")


class CannotUndo(ReviewError):
    """The decision is already undone, is itself an undo, or a later one follows it."""




# ---------------------------------------------------------------- reading

def canonical_genres(session: Session, config: Config | Live) -> tuple[str, ...]:
    """The genres a reviewer may choose: the genre map's canonical list plus the active
    model's classes (normally the same set), sorted. Given the service's Live, its genre
    map; given a Config, this host's (its genres.toml, else the one the leader published)."""
    genres = set((config.genre_map if isinstance(config, Live)
                  else host_genre_map(config, session)).canonical)
    model = active_model(session)
    if model is not None:
        genres.update(str(c) for c in model.classes)
    return tuple(sorted(genres))


def top_choices(suggestion: Suggestion) -> list[tuple[str, float]]:
    """The suggestion's top genres, best first, as (genre, confidence)."""
    return [(str(g), float(c)) for g, c in (suggestion.top or [])]


def waiting_for_review() -> ColumnElement[bool]:
    """A suggestion the music director has to decide on: pending, for a song that is in
    the library. A missing song's pending suggestion leaves the queue (kept, not
    decided: it is back when the file is) and cannot be decided meanwhile."""
    return and_(Suggestion.status == SuggestionStatus.PENDING,
                Track.state != TrackState.MISSING)


# ---------------------------------------------------------------- deciding

def _pending_suggestion(session: Session, suggestion_id: int) -> tuple[Suggestion, Track]:
    suggestion = locked(session, Suggestion, suggestion_id)
    if suggestion is None:
        raise UnknownSuggestion(suggestion_id)
    if suggestion.status != SuggestionStatus.PENDING:
        raise NotPending(f"suggestion {suggestion_id} is already {suggestion.status}")
    track = locked(session, Track, suggestion.track_id)
    if track.state == TrackState.MISSING:
        raise NotPending(f"suggestion {suggestion_id}: {track.path} is missing from the "
                         "library; it is back in the queue when the file is")
    if track.state != TrackState.REVIEWED and not can_move(track.state, TrackState.REVIEWED):
        raise NotPending(f"suggestion {suggestion_id}: {track.path} is {track.state}, "
                         "not waiting for review")
    return suggestion, track


def previous_genre_of(track: Track) -> str | None:
    return track.confirmed_genre if track.confirmed_genre is not None else track.raw_genre


def write_status_for(config: Config, writes: bool) -> str:
    if not writes:
        return WriteStatus.NONE
    return WriteStatus.PENDING if config.review.write_tags else WriteStatus.OFF


def cancel_outstanding_writes(session: Session, track: Track, reason: str) -> None:
    """Only the newest decision's genre goes into a file: older unwritten ones are dropped.
    An undo still to put the file back stays: the next write must find the file as it
    was before ours, and records that."""
    for older in session.scalars(select(Decision).where(
            Decision.track_id == track.id, Decision.write_status.in_(WRITE_OUTSTANDING),
            Decision.action != Action.UNDO)):
        older.write_status = WriteStatus.NONE
        older.write_error = reason
        older.next_write_at = None


def decide(session: Session, config: Config, suggestion: Suggestion, track: Track, *,
            action: str, how: str, genre: str | None, who: str,
            batch_id: str | None = None) -> Decision:
    now = utcnow()
    writes = action in (Action.ACCEPT, Action.OVERRIDE)
    decision = Decision(
        track_id=track.id, suggestion_id=suggestion.id, action=action, how=how, genre=genre,
        previous_genre=previous_genre_of(track), who=who, at=now, undone=False,
        write_status=write_status_for(config, writes), write_attempts=0, batch_id=batch_id,
    )
    if writes:
        cancel_outstanding_writes(session, track, "replaced by a later decision")
    session.add(decision)
    session.flush()  # the id becomes the label's provenance
    suggestion.status = {Action.ACCEPT: SuggestionStatus.ACCEPTED,
                         Action.OVERRIDE: SuggestionStatus.OVERRIDDEN,
                         Action.REJECT: SuggestionStatus.REJECTED}[action]
    if writes:
        track.confirmed_genre = genre
        track.confirmed_at = now
        track.confirmed_decision_id = decision.id
    if track.state != TrackState.REVIEWED:
        move(track, TrackState.REVIEWED, now)
    return decision


def check_genre(session: Session, config: Config, genre: str) -> str:
    known = canonical_genres(session, config)
    if genre in known:
        return genre
    # Let "hip hop" mean "Hip-Hop": reviewers type; the stored label stays canonical. The
    # genre map's own matching key, so the shell, the web page and tags agree on spellings.
    matches = {g for g in known if normalise(g) == normalise(genre)}
    if len(matches) == 1:
        return matches.pop()
    raise UnknownGenre(genre, known)


def accept(sessions: sessionmaker[Session], config: Config, suggestion_ids: Iterable[int], *,
           who: str, choice: int = 1) -> list[Decision]:
    """Accept suggestions (all in one transaction): choice 1 is the model's top genre;
    choice 2 or 3 picks that runner-up, recorded as an override of the top genre.
    Raises UnknownSuggestion, NotPending, ReviewError (no such choice); nothing is
    written when any id fails."""
    decisions = []
    with transaction(sessions) as session:
        for suggestion_id in dict.fromkeys(int(i) for i in suggestion_ids):
            suggestion, track = _pending_suggestion(session, suggestion_id)
            choices = top_choices(suggestion) or [(suggestion.genre, suggestion.confidence)]
            if not 1 <= choice <= len(choices):
                raise ReviewError(f"suggestion {suggestion_id} has {len(choices)} choice(s); "
                                  f"there is no choice {choice}")
            genre = choices[choice - 1][0]
            if choice == 1 or genre == suggestion.genre:
                decisions.append(decide(session, config, suggestion, track,
                                         action=Action.ACCEPT, how=How.SINGLE,
                                         genre=suggestion.genre, who=who))
            else:
                genre = check_genre(session, config, genre)
                decisions.append(decide(session, config, suggestion, track,
                                         action=Action.OVERRIDE, how=How.OVERRIDE,
                                         genre=genre, who=who))
    return decisions


def override(sessions: sessionmaker[Session], config: Config, suggestion_id: int, genre: str,
             *, who: str) -> Decision:
    """Set another canonical genre than the suggested one (UnknownGenre if it is not one).
    Setting the suggested genre itself counts as an accept."""
    with transaction(sessions) as session:
        suggestion, track = _pending_suggestion(session, int(suggestion_id))
        genre = check_genre(session, config, genre)
        if genre == suggestion.genre:
            return decide(session, config, suggestion, track, action=Action.ACCEPT,
                           how=How.SINGLE, genre=genre, who=who)
        return decide(session, config, suggestion, track, action=Action.OVERRIDE,
                       how=How.OVERRIDE, genre=genre, who=who)


def reject(sessions: sessionmaker[Session], config: Config, suggestion_ids: Iterable[int], *,
           who: str) -> list[Decision]:
    """The suggestion is wrong and the reviewer has no better genre: the track stays
    untagged and reviewed. No model suggests the rejected genre for it again; a newer
    model that hears another genre suggests that one (rejected_genres)."""
    with transaction(sessions) as session:
        decisions = []
        for suggestion_id in dict.fromkeys(int(i) for i in suggestion_ids):
            suggestion, track = _pending_suggestion(session, suggestion_id)
            decisions.append(decide(session, config, suggestion, track, action=Action.REJECT,
                                     how=How.SINGLE, genre=None, who=who))
        return decisions


def bulk_accept(sessions: sessionmaker[Session], config: Config, threshold: float, *, who: str,
                up_to_id: int | None = None) -> list[Decision]:
    """Accept every pending suggestion shown at least as sure as `threshold` (0-1, compared
    as the whole percentage the page shows: daemon.review.sureness) and with id <=
    up_to_id, when given, in one transaction; each gets its own decision row with how =
    "bulk", all sharing one batch_id (undo_batch takes them back in one step).
    Suggestions whose track is not waiting for review are left alone."""
    if not 0.0 <= threshold <= 1.0:
        raise ReviewError(f"confidence threshold must be between 0 and 1, not {threshold}")
    with transaction(sessions) as session:
        # Locked in id order (PostgreSQL re-checks a row's status after waiting for it).
        query = (select(Suggestion).join(Track, Suggestion.track_id == Track.id)
                 .where(waiting_for_review(),
                        at_least(Suggestion.confidence, threshold_percent(threshold)))
                 .order_by(Suggestion.id).with_for_update(of=Suggestion))
        if up_to_id is not None:
            query = query.where(Suggestion.id <= up_to_id)
        decisions, batch_id = [], uuid.uuid4().hex
        for suggestion in session.scalars(query).all():
            track = locked(session, Track, suggestion.track_id)
            if track.state != TrackState.REVIEWED and not can_move(track.state,
                                                                   TrackState.REVIEWED):
                continue
            decisions.append(decide(session, config, suggestion, track, action=Action.ACCEPT,
                                     how=How.BULK, genre=suggestion.genre, who=who,
                                     batch_id=batch_id))
        return decisions


def undo(sessions: sessionmaker[Session], config: Config, decision_id: int, *,
         who: str) -> Decision:
    """Undo a decision: its suggestion is pending again, the track's confirmed label goes
    back to what the previous standing decision set (or none), and when the genre had
    already been written into the file the previous genre is written back.

    Only the newest standing decision of a track can be undone (CannotUndo otherwise),
    so labels never go back to a state that a later decision replaced."""
    with transaction(sessions) as session:
        # Locks in the one order (suggestion, track, decision), so the decision's ids are
        # read first; then it is read again under its lock, and the track's decisions
        # are all there are (a new one needs the track's lock).
        target = session.get(Decision, int(decision_id))
        if target is None:
            raise UnknownDecision(decision_id)
        return _undo(session, config, target, who=who)


def _undo(session: Session, config: Config, target: Decision, *, who: str,
          batch_id: str | None = None) -> Decision:
    """undo()'s work on one decision inside the caller's transaction."""
    decision_id = target.id
    suggestion = (locked(session, Suggestion, target.suggestion_id)
                  if target.suggestion_id else None)
    track = locked(session, Track, target.track_id)
    target = locked(session, Decision, target.id)
    if target.action == Action.UNDO:
        raise CannotUndo(f"decision {decision_id} is itself an undo; decide again instead")
    if target.undone:
        raise CannotUndo(f"decision {decision_id} is already undone")
    standing = _standing_decisions(session, target.track_id)
    if standing and standing[0].id != target.id:
        raise CannotUndo(f"decision {decision_id}: decision {standing[0].id} on the same "
                         "track came later; undo that one first")
    if target.action in SONG_MARKS:
        from daemon.review.songmarks import undo_mark  # it builds on this module

        return undo_mark(session, config, target, track, who=who, batch_id=batch_id)
    now = utcnow()
    # Ours reached the file: the file's genre fields go back to what they were just
    # before that write (the earlier genre, or none), every other tag untouched.
    restore_file = target.write_status == WriteStatus.WRITTEN
    fields = target.file_fields_before if restore_file else None
    previous = [d for d in standing[1:] if d.action in (Action.ACCEPT, Action.OVERRIDE)]
    back_to = previous[0] if previous else None
    undo_row = Decision(
        track_id=track.id, suggestion_id=target.suggestion_id, action=Action.UNDO,
        how=How.UNDO, genre=None, file_fields_before=fields,
        previous_genre=previous_genre_of(track), who=who, at=now, undoes_id=target.id,
        undone=False, write_attempts=0, write_status=WriteStatus.NONE, batch_id=batch_id,
    )
    if target.write_status in WRITE_OUTSTANDING:
        target.write_status = WriteStatus.NONE
        target.write_error = "undone before it was written"
        target.next_write_at = None
    if fields is not None:
        undo_row.write_status = write_status_for(config, True)
    elif restore_file:
        # Written before the file's genre fields were recorded: its previous genre goes
        # back, or, where it had none, ours stays until the next decision replaces it.
        undo_row.genre = target.previous_genre
        if target.previous_genre is not None:
            undo_row.write_status = write_status_for(config, True)
        else:
            undo_row.write_error = (f"the file keeps {target.genre!r}: it had no genre "
                                    "tag before, and the next decision will replace it")
    target.undone = True
    session.add(undo_row)
    session.flush()

    if target.action in (Action.ACCEPT, Action.OVERRIDE):
        track.confirmed_genre = back_to.genre if back_to else None
        track.confirmed_at = back_to.at if back_to else None
        track.confirmed_decision_id = back_to.id if back_to else None
    newer = session.scalar(select(func.count()).select_from(Suggestion).where(
        Suggestion.track_id == track.id, Suggestion.id > (target.suggestion_id or 0)))
    if suggestion is not None and not newer:
        suggestion.status = SuggestionStatus.PENDING
        if track.state == TrackState.REVIEWED:
            move(track, TrackState.SUGGESTED, now)
    return undo_row


def _standing_decisions(session: Session, track_id: int) -> list[Decision]:
    """The track's decisions that still stand (not undone, not undos), newest first."""
    return list(session.scalars(
        select(Decision).where(Decision.track_id == track_id, Decision.undone.is_(False),
                               Decision.action != Action.UNDO)
        .order_by(Decision.id.desc())).all())


def last_undoable(session: Session, who: str | None = None) -> Decision | None:
    """The newest standing decision (of `who`, when given): what the "u" key undoes."""
    query = select(Decision).where(Decision.undone.is_(False), Decision.action != Action.UNDO)
    if who is not None:
        query = query.where(Decision.who == who)
    for decision in session.scalars(query.order_by(Decision.id.desc()).limit(20)):
        standing = _standing_decisions(session, decision.track_id)
        if standing and standing[0].id == decision.id:
            return decision
    return None


# ---------------------------------------------------------------- albums

def undo_batch(sessions: sessionmaker[Session], config: Config, batch_id: str, *,
               who: str) -> list[Decision]:
    """Undo every decision of an album or bulk action in one transaction (each as undo() does);
    CannotUndo, and nothing undone, when any of them cannot be (a later decision on one of
    its songs, or the batch already undone)."""
    with transaction(sessions) as session:
        batch = list(session.scalars(
            select(Decision).where(Decision.batch_id == batch_id,
                                   Decision.action != Action.UNDO)
            .order_by(Decision.id.desc())).all())  # _undo locks each, in the one order
        if not batch:
            raise UnknownBatch(batch_id)
        standing = [d for d in batch if not d.undone]
        if not standing:
            raise CannotUndo(f"that action ({batch_id}) is already undone")
        undo_id = uuid.uuid4().hex
        return [_undo(session, config, d, who=who, batch_id=undo_id) for d in standing]


def last_batch(session: Session, who: str | None = None) -> str | None:
    """The batch id of the newest album action (of `who`) not undone: what "u" undoes on
    the album page."""
    query = select(Decision.batch_id).where(
        Decision.batch_id.is_not(None), Decision.undone.is_(False),
        Decision.action != Action.UNDO, Decision.how == How.ALBUM)
    if who is not None:
        query = query.where(Decision.who == who)
    return session.scalar(query.order_by(Decision.id.desc()).limit(1))
