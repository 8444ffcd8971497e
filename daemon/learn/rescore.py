"""Re-scoring after a new model is activated, from the feature cache (no decoding).

Pending suggestions of older models get the new model's verdict, and songs the reviewer
rejected get a second chance, both through THE suggestion rule
(daemon.suggest.suggestions.suggest): rejected genres stay rejected, an audit stands only
while the model strongly disagrees with the file's tag, history is kept (supersede).

The album/artist context is computed afresh from the new model's audio and today's tagged
mates (daemon.suggest.mates), as the worker does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Suggestion, Track, utcnow
from daemon.core.states import SuggestionStatus, TrackState
from daemon.suggest.classifier import Classifier
from daemon.suggest.embedded import (
    EmbeddedClassifier,
    cached_features,
    load_on_embeddings,
    member_caches,
)
from daemon.suggest.inputs import SongInputs, WindowSpecs
from daemon.suggest.mates import batch_context
from daemon.suggest.suggestions import suggest


def _caches(config: Config, classifier: Classifier) -> SongInputs:
    """The worker's caches (its windows per song), whatever windows the classifier was
    loaded with."""
    return SongInputs(config.cache_dir, WindowSpecs.for_windows(
        config.classifier.windows_per_song, classifier.spec, classifier.backbone_spec))


def _cached_predictions(classifier: Classifier, cache: SongInputs,
                        rows: list[tuple[int, str | None]], batch: int,
                        counts: dict[str, int]) -> Iterator[tuple[list[int], np.ndarray]]:
    """(id, fingerprint) rows -> (ids, song probabilities) per batch, from the cache
    only: the songs' embeddings through the model's head where it carries the backbone
    (daemon.suggest.embedded: never the backbone again), else each kind its members take;
    rows without them are counted in counts["no_features"]."""
    model = classifier if isinstance(classifier, EmbeddedClassifier) else load_on_embeddings(
        classifier.path, classifier.spec, classifier.backbone_spec)
    feeding = member_caches(model, cache.caches, cache.embeddings)
    for start in range(0, len(rows), batch):
        ids, songs = [], []
        for row_id, fingerprint in rows[start:start + batch]:
            features = cached_features(fingerprint or "", feeding)
            if features is None:
                counts["no_features"] += 1
                continue
            ids.append(row_id)
            songs.append(features)
        if ids:
            yield ids, model.predict_songs(songs)


def rescore_pending(sessions: sessionmaker[Session], config: Config, classifier: Classifier,
                    model_id: int, batch: int = 64) -> dict[str, int]:
    """Re-score every pending suggestion of another model with `classifier`, from the cache.

    Each one becomes superseded and a new pending suggestion (model_id, replaces_id -> the
    old one) takes its place. Tracks without cached features keep their suggestion (the
    worker never decodes twice for this). Out: counts rescored / no_features / changed.
    """
    cache = _caches(config, classifier)
    with sessions() as session:
        todo = session.execute(
            select(Suggestion.id, Track.fingerprint, Track.id, Suggestion.disagrees_with)
            .join(Track)
            .where(Suggestion.status == SuggestionStatus.PENDING,
                   (Suggestion.model_id != model_id) | Suggestion.model_id.is_(None))
            .order_by(Suggestion.id)).all()
    # An audit is the sound alone against the file's tag (daemon.suggest.mates).
    track_of = {suggestion_id: None if audit else track_id
                for suggestion_id, _, track_id, audit in todo}
    counts = {"rescored": 0, "no_features": 0, "changed": 0, "dropped": 0}
    rows = [(suggestion_id, fp) for suggestion_id, fp, _, _ in todo]
    for ids, probs in _cached_predictions(classifier, cache, rows, batch, counts):
        with transaction(sessions) as session:
            probs, contexts = batch_context(session, config, classifier,
                                            [track_of[i] for i in ids], probs)
            for suggestion_id, row, context in zip(ids, probs, contexts, strict=True):
                _replace_suggestion(session, config, classifier.top(row, 3), suggestion_id,
                                    model_id, counts, context)
    return counts


def resuggest_rejected(sessions: sessionmaker[Session], config: Config, classifier: Classifier,
                       model_id: int, batch: int = 64) -> dict[str, int]:
    """Give songs the reviewer rejected a second chance with a new model, from the cache.

    A rejected, still unlabelled track gets a pending suggestion again only when the new
    model's genre is one the reviewer has not rejected for it (daemon.review.decisions.
    rejected_genres); otherwise it stays reviewed. Out: counts resuggested /
    still_rejected / no_features.
    """
    cache = _caches(config, classifier)
    rejected = select(Suggestion.track_id).where(
        Suggestion.status == SuggestionStatus.REJECTED)
    with sessions() as session:
        todo = session.execute(
            select(Track.id, Track.fingerprint)
            .where(Track.state == TrackState.REVIEWED, Track.confirmed_genre.is_(None),
                   Track.id.in_(rejected))
            .order_by(Track.id)).all()
    counts = {"resuggested": 0, "still_rejected": 0, "no_features": 0}
    for ids, probs in _cached_predictions(classifier, cache, todo, batch, counts):
        with transaction(sessions) as session:
            now = utcnow()
            probs, contexts = batch_context(session, config, classifier, ids, probs)
            for track_id, row, context in zip(ids, probs, contexts, strict=True):
                track = locked(session, Track, track_id)
                if (track is None or track.state != TrackState.REVIEWED
                        or track.confirmed_genre is not None):
                    continue  # decided, changed or gone meanwhile
                last_rejected = session.scalars(
                    select(Suggestion).where(Suggestion.track_id == track_id,
                                             Suggestion.status == SuggestionStatus.REJECTED)
                    .order_by(Suggestion.id.desc()).limit(1)).first()
                verdict = suggest(session, track, classifier.top(row, 3), model_id=model_id,
                                  audit_genre=None,
                                  audit_min_confidence=config.classifier.audit_min_confidence,
                                  replaces_id=last_rejected.id if last_rejected else None,
                                  now=now, sounds_like=(last_rejected.sounds_like
                                                        if last_rejected else None),
                                  context=context)
                counts["resuggested" if verdict.genre else "still_rejected"] += 1
    return counts


def _replace_suggestion(session: Session, config: Config, top: list[tuple[str, float]],
                        old_id: int, model_id: int, counts: dict[str, int],
                        context: dict | None = None) -> None:
    """A pending suggestion -> the new model's verdict through THE suggestion rule."""
    # Locked and read afresh: a reviewer may have decided it meanwhile (PostgreSQL).
    old = locked(session, Suggestion, old_id)
    # Only if still pending: a reviewer may have decided it meanwhile.
    if old is None or old.status != SuggestionStatus.PENDING:
        return
    track = locked(session, Track, old.track_id)
    if track.state != TrackState.SUGGESTED:
        return  # queued again or gone meanwhile: the worker decides afresh
    # The embedding comes from the backbone, not from the model: the song still sounds
    # like the same songs, so their list is kept.
    verdict = suggest(session, track, top, model_id=model_id, audit_genre=old.disagrees_with,
                      audit_min_confidence=config.classifier.audit_min_confidence,
                      sounds_like=old.sounds_like, context=context)
    if verdict.genre is None:
        counts["dropped"] += 1
        return
    counts["rescored"] += 1
    counts["changed"] += verdict.genre != old.genre

