"""THE suggestion rule: a track's model output and its decisions -> what (if anything) to store.

One rule for every place a model's opinion becomes a suggestion: the worker (a song just
classified), the nightly re-scoring of pending suggestions after a promotion, and the
second chance a new model gives rejected songs. In words:

    rejected   the model's top genre is one the reviewer turned down for this song:
               nothing is suggested, whichever model says it (README: "a rejected genre
               is never suggested for that song again")
    audit      a tagged file checked in audit mode: suggested only while the model
               strongly disagrees with the file's own tag; otherwise it stays tagged
    otherwise  a pending suggestion (top-3, confidence, model) replacing (superseding)
               any older pending one

`decide()` is the pure rule; `suggest()` carries it out on a track in a session (the
suggestion row, the track's state).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.core.db.models import Suggestion, Track, utcnow
from daemon.core.states import SuggestionStatus, TrackState, move

SUGGESTED, AGREES_WITH_TAG, REJECTED_BEFORE = "suggested", "agrees with tag", "rejected before"


@dataclass(frozen=True)
class Verdict:
    """What the rule says: store a suggestion of `genre` (None: store nothing), the state
    the track goes to, and why (one of SUGGESTED, AGREES_WITH_TAG, REJECTED_BEFORE)."""

    genre: str | None
    confidence: float
    top: tuple[tuple[str, float], ...]
    state: TrackState
    why: str
    disagrees_with: str | None = None


def top_genres(probs: Sequence[float], classes: Sequence[str],
               k: int = 3) -> list[tuple[str, float]]:
    """One song's probabilities (in `classes` order) -> its k most likely (genre,
    probability), best first: the top-k every suggestion and its context store."""
    order = np.argsort(probs)[::-1][:k]
    return [(classes[i], float(probs[i])) for i in order]


def decide(top: Sequence[tuple[str, float]], *, rejected: Collection[str],
           audit_genre: str | None, audit_min_confidence: float) -> Verdict:
    """The rule, pure. In: the model's top-k (best first), the genres rejected for the
    track, the file's own canonical genre when the track is an audit (else None) and
    classifier.audit_min_confidence. Out: the Verdict."""
    top = tuple((str(g), float(c)) for g, c in top)
    genre, confidence = top[0]
    if audit_genre is not None and (genre == audit_genre
                                    or confidence < audit_min_confidence):
        return Verdict(None, confidence, top, TrackState.TAGGED, AGREES_WITH_TAG)
    if genre in rejected:
        return Verdict(None, confidence, top,
                       TrackState.TAGGED if audit_genre is not None else TrackState.REVIEWED,
                       REJECTED_BEFORE)
    return Verdict(genre, confidence, top, TrackState.SUGGESTED, SUGGESTED, audit_genre)


def rejected_genres(session: Session, track_id: int) -> set[str]:
    """Genres the reviewer turned down for this track (an undone reject no longer counts)."""
    return set(session.scalars(select(Suggestion.genre).where(
        Suggestion.track_id == track_id, Suggestion.status == SuggestionStatus.REJECTED)))


def suggest(session: Session, track: Track, top: Sequence[tuple[str, float]], *,
            model_id: int | None, audit_genre: str | None, audit_min_confidence: float,
            replaces_id: int | None = None, now: datetime | None = None,
            sounds_like: list[dict[str, Any]] | None = None,
            context: dict[str, Any] | None = None) -> Verdict:
    """Decide for `track` (reading its rejected genres) and apply the verdict.

    Pending suggestions of the track are superseded whatever the verdict (a newer model's
    opinion replaces an older one's, also when it is "nothing to suggest"). The new
    suggestion replaces the newest of them, else `replaces_id` (e.g. the rejected one a
    second chance follows). `sounds_like` (daemon.suggest.neighbours: the nearest
    confirmed-or-tagged songs) is stored on the new suggestion as given; it does not
    change the verdict. `context` (daemon.suggest.mates.context_json: the album/artist
    mates that weighed in, None: none) is stored likewise; `top` is then the with-context
    top-k. Out: the Verdict applied.
    """
    verdict = decide(top, rejected=rejected_genres(session, track.id),
                     audit_genre=audit_genre, audit_min_confidence=audit_min_confidence)
    now = now or utcnow()
    pending = session.scalars(select(Suggestion).where(
        Suggestion.track_id == track.id, Suggestion.status == SuggestionStatus.PENDING)
        .order_by(Suggestion.id)).all()
    for old in pending:
        old.status = SuggestionStatus.SUPERSEDED
    if verdict.genre is not None:
        session.add(Suggestion(
            track_id=track.id, model_id=model_id, genre=verdict.genre,
            confidence=verdict.confidence, top=[[g, c] for g, c in verdict.top],
            status=SuggestionStatus.PENDING, disagrees_with=verdict.disagrees_with,
            replaces_id=pending[-1].id if pending else replaces_id, created_at=now,
            sounds_like=list(sounds_like) if sounds_like else None,
            context=dict(context) if context else None))
    if track.state != verdict.state:
        move(track, verdict.state, now)
    return verdict
