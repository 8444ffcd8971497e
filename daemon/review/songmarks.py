"""The reviewer's word on what a file is: "Not a song" (a jingle, sweeper or bed the
`[library]` rules missed) and "This is a song" (a short song, or one in an excluded
folder, the rules caught).

Each mark is a decision in the one audit log (action not_a_song / song, no genre, nothing
written into the file), undone like every other decision (daemon.review.decisions.undo,
the page's "u", History). The mark is kept on the track (`song_mark`) and wins over the
rules (daemon.core.songrules); the track's state follows through
daemon.library.record.apply_song_rules: a file marked not a song leaves the queue (its
pending suggestion is superseded) and training; undone, the suggestion is pending again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Decision, Suggestion, Track, utcnow
from daemon.core.paths import display_stored, relative_inside, stored_path
from daemon.core.songrules import MARKED_NOT_A_SONG, MARKED_SONG
from daemon.core.states import SONG_MARKS, Action, How, SuggestionStatus, TrackState, WriteStatus
from daemon.library.record import apply_song_rules
from daemon.review.decisions import (
    NotFound,
    NotPending,
    ReviewError,
    UnknownSuggestion,
    _standing_decisions,
    previous_genre_of,
)

MARK_OF = {Action.NOT_A_SONG: MARKED_NOT_A_SONG, Action.SONG: MARKED_SONG}


class UnknownTrack(NotFound):
    def __init__(self, what: str):
        self.what = what
        super().__init__(f"{what}: not a file of the library the daemon knows")


def _mark(session: Session, config: Config, track: Track, action: Action, *, who: str,
          how: str, batch_id: str | None = None) -> Decision:
    """One mark on a locked track, inside the caller's transaction."""
    mark = MARK_OF[action]
    if track.state == TrackState.MISSING:
        raise NotPending(f"{display_stored(track.path)} is gone from the library")
    if track.song_mark == mark:
        raise NotPending(f"{display_stored(track.path)} is already marked "
                         f"{'not a song' if action == Action.NOT_A_SONG else 'a song'}")
    if action == Action.SONG and track.state != TrackState.NOT_A_SONG:
        raise NotPending(f"{display_stored(track.path)} is already a song")
    pending = session.scalar(
        select(Suggestion.id).where(Suggestion.track_id == track.id,
                                    Suggestion.status == SuggestionStatus.PENDING)
        .order_by(Suggestion.id.desc()).limit(1))
    decision = Decision(
        track_id=track.id, suggestion_id=pending, action=action, how=how, genre=None,
        previous_genre=previous_genre_of(track), who=who, at=utcnow(), undone=False,
        write_status=WriteStatus.NONE, write_attempts=0, batch_id=batch_id)
    session.add(decision)
    track.song_mark = mark
    apply_song_rules(session, track, config.library.song_rules,
                     audit=config.classifier.audit)
    if action == Action.SONG and track.state == TrackState.NOT_A_SONG:
        raise ReviewError(f"{display_stored(track.path)}: {track.not_song_reason}")
    session.flush()
    return decision


def mark_tracks(sessions: sessionmaker[Session], config: Config, track_ids: Iterable[int],
                action: Action, *, who: str) -> list[Decision]:
    """Mark tracks (by id) not a song (action not_a_song) or a song (action song), all in
    one transaction; NotPending (nothing marked) when one is already so, or gone."""
    if action not in SONG_MARKS:
        raise ValueError(f"{action}: not a song mark")
    with transaction(sessions) as session:
        made = []
        for track_id in dict.fromkeys(int(i) for i in track_ids):
            track = locked(session, Track, track_id)
            if track is None:
                raise UnknownTrack(f"track {track_id}")
            made.append(_mark(session, config, track, action, who=who, how=How.SINGLE))
        return made


def mark_suggestion(sessions: sessionmaker[Session], config: Config, suggestion_id: int, *,
                    who: str) -> Decision:
    """"Not a song" on the review page: the song of a pending suggestion."""
    with transaction(sessions) as session:
        suggestion = locked(session, Suggestion, int(suggestion_id))
        if suggestion is None:
            raise UnknownSuggestion(suggestion_id)
        if suggestion.status != SuggestionStatus.PENDING:
            raise NotPending(f"suggestion {suggestion_id} is already {suggestion.status}")
        track = locked(session, Track, suggestion.track_id)
        return _mark(session, config, track, Action.NOT_A_SONG, who=who, how=How.SINGLE)


def list_not_songs(session: Session, *, limit: int, offset: int = 0) -> tuple[list[Track], int]:
    """The tracks that are not songs, by path -> (one page of them, how many in all)."""
    query = select(Track).where(Track.state == TrackState.NOT_A_SONG)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(Track.path).limit(limit).offset(offset))), total


def tracks_for_paths(session: Session, config: Config, paths: Iterable[str]) -> list[int]:
    """Track ids of library files given as the shell gives them: relative to the library
    root, or any path (absolute, or relative to the current folder) inside it. Raises
    UnknownTrack naming the first that is neither."""
    root = os.path.realpath(config.library.root)
    ids = []
    for given in paths:
        candidates = []
        if not os.path.isabs(given):
            candidates.append(stored_path(os.path.normpath(given)))
        inside = relative_inside(root, os.path.realpath(os.path.abspath(given)))
        if inside is not None:
            candidates.append(stored_path(inside))
        found = None
        for stored in candidates:
            found = session.scalar(select(Track.id).where(Track.path == stored))
            if found is not None:
                break
        if found is None:
            raise UnknownTrack(given)
        ids.append(found)
    return ids


def undo_mark(session: Session, config: Config, target: Decision, track: Track, *, who: str,
              batch_id: str | None = None) -> Decision:
    """Undo a locked, standing mark decision inside the caller's transaction: the track's
    mark goes back to the one before (or none), the rules decide again, and a suggestion
    the mark took out of the queue is pending again if the track is a song again."""
    standing = _standing_decisions(session, track.id)
    before = [d for d in standing if d.id != target.id and d.action in SONG_MARKS]
    track.song_mark = MARK_OF[Action(before[0].action)] if before else None
    now = utcnow()
    undo_row = Decision(
        track_id=track.id, suggestion_id=target.suggestion_id, action=Action.UNDO,
        how=How.UNDO, genre=None, previous_genre=previous_genre_of(track), who=who, at=now,
        undoes_id=target.id, undone=False, write_attempts=0, write_status=WriteStatus.NONE,
        batch_id=batch_id)
    target.undone = True
    session.add(undo_row)
    rules = config.library.song_rules
    if rules.reason(track.path, track.duration, track.song_mark) is None \
            and target.suggestion_id is not None:
        suggestion = locked(session, Suggestion, target.suggestion_id)
        newer = session.scalar(select(func.count()).select_from(Suggestion).where(
            Suggestion.track_id == track.id, Suggestion.id > target.suggestion_id))
        if suggestion is not None and not newer \
                and suggestion.status == SuggestionStatus.SUPERSEDED:
            suggestion.status = SuggestionStatus.PENDING
    apply_song_rules(session, track, rules, audit=config.classifier.audit)
    session.flush()
    return undo_row
