"""The suggest flow: a queued track -> its features -> the model -> its album -> a suggestion.

Read `suggest_songs` at the bottom first: the stages, once, top to bottom.

    claim     CLAIMABLE tracks (queued, or retrying whose backoff has passed) -> working,
              as frozen Claims (daemon.suggest.queue)
    features  look_up: what the active model needs (`classifier.needs`: the CNN's clips,
              the backbone's patches) from each kind's cache by fingerprint -> Heard when
              all are there, else Decode (the kinds missing, decoded in one pass in the
              ExtractPool's child processes: a crash, hang or leak there is a typed error
              for that one file); heard: the pool's answer -> Heard (stored in the caches).
              A bundle with the backbone (its members', or a cnn bundle's for "sounds
              like" alone) is split (ActiveModel): the children run its backbone and
              hand back per-patch embeddings, which the embedding cache keeps, and the
              model here runs the rest on them
    classify  several songs per onnxruntime run with the active model -> Classified; the
              song embeddings it gives go to the embedding cache, their mean on the record
              for "sounds like" (`neighbours`)
    context   the album/artist mates weigh in (daemon.suggest.mates)
    suggest   one pending Suggestion per track (an older pending one is superseded), track
              -> suggested, an Event row per file for `status`
    record    a Failed file: attempts += 1, last_error = the error's reason, retrying after
              `backoff_seconds * 2**(attempts-1)`, quarantined at `max_attempts`; a
              Changing one waits to settle again

Settle is checked again at every stage that could act on a half-copied file: before a
track is decoded, before a failure is counted and before a suggestion is made, the file's
size and mtime must still be the ones it settled with. A file that changed (a copy that
stalled, then went on) is not decoded, not failed and not suggested: it waits
`settle_seconds` (retrying, no attempt counted) while the library settles it again.

Every record is frozen; a stage returns a new one. The I/O sits in `Flow`'s edges (the
database, the caches, the ORT session); the child pool is the caller's. Tests run
`suggest_songs` with no threads; the service's Worker (daemon.suggest.worker) runs the same
stages in its thread, decoding the next songs while it classifies.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.extract import ExtractPool
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    DEFAULT_SPEC,
    BackboneSpec,
    FeatureSpec,
)
from daemon.audio.fingerprint import fingerprint
from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Event, Track, utcnow
from daemon.core.errors import FileError, UnreadableAudio
from daemon.core.paths import OutsideLibrary, filesystem_path, library_file
from daemon.core.retry import backoff
from daemon.core.states import TrackState, move
from daemon.library.walk import inode_ctime, same_stat
from daemon.suggest.active import MODEL_CHECK_SECONDS, ActiveModel
from daemon.suggest.embedded import EmbeddedClassifier
from daemon.suggest.inputs import SongInputs, WindowSpecs
from daemon.suggest.mates import batch_context
from daemon.suggest.queue import Claim, claim_tracks, requeue_working
from daemon.suggest.suggestions import REJECTED_BEFORE, suggest
from daemon.tags.live import Live, as_live

log = logging.getLogger(__name__)
NO_EMBEDDING = np.zeros((0, 0), np.float32)  # a song heard without the backbone

# A file that changed since it settled is looked at again no sooner than this.
MIN_SETTLE_WAIT_SECONDS = 0.5


# ---- the records -------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Decode:
    """A claimed song whose missing feature kinds the decoders must make."""

    claim: Claim
    fingerprint: str
    cached: Mapping[str, np.ndarray] = field(repr=False)  # the kinds found in the caches
    missing: frozenset[str]
    backbone: Path | None = None  # the backbone graph the decoders embed its patches by


@dataclass(frozen=True, eq=False)
class Heard:
    """A claimed song with every input the model needs, by feature kind."""

    claim: Claim
    fingerprint: str
    features: Mapping[str, np.ndarray] = field(repr=False)
    cached: bool  # all from the caches: nothing decoded this time
    info: object | None = None  # what the decoder learned (format, duration)
    ready_at: float = 0.0  # time.monotonic() when it was complete
    on_embeddings: bool = False  # its "backbone" input is per-patch embeddings, not patches


@dataclass(frozen=True, eq=False)
class Classified:
    """A song the model scored: song probabilities, and its mean embedding (or None); by
    `model` (the classifier and its model id; None: the flow's active one)."""

    heard: Heard
    probs: np.ndarray = field(repr=False)
    embedding: np.ndarray | None = field(default=None, repr=False)
    model: tuple | None = field(default=None, repr=False)

    @property
    def claim(self) -> Claim:
        return self.heard.claim


@dataclass(frozen=True)
class Failed:
    """A claimed file that cannot be heard this time, and why."""

    claim: Claim
    error: FileError


@dataclass(frozen=True)
class Changing:
    """A claimed file whose size or mtime moved since it settled (still being copied)."""

    claim: Claim


Outcome = Decode | Heard | Failed | Changing


@dataclass(frozen=True)
class Tally:
    """What one pass of the flow did."""

    claimed: int = 0
    classified: int = 0
    failed: int = 0
    changing: int = 0


# ---- the edges -----------------------------------------------------------------------------

class Flow:
    """The stages' edges: the database, the feature and embedding caches, the active model
    and "sounds like" (`neighbours`: daemon.suggest.neighbours, or None for none). Claims
    are held by `worker_id` (its row in daemon.suggest.workers; None: no row)."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 worker_id: int | None = None, neighbours=None,
                 spec: FeatureSpec = DEFAULT_SPEC, backbone_spec: BackboneSpec = BACKBONE_SPEC,
                 model_check_seconds: float = MODEL_CHECK_SECONDS,
                 backbone_in_decoders: bool = True):
        self.live = as_live(config)
        self.sessions = sessions
        self.worker_id = worker_id
        self.neighbours = neighbours
        # The specs with the config's windows per song (a restart applies a new count).
        self.specs = WindowSpecs.for_windows(self.config.classifier.windows_per_song, spec,
                                             backbone_spec)
        self.root = Path(self.config.library.root)
        self.inputs = SongInputs(self.config.cache_dir, self.specs)
        self.model = ActiveModel(sessions, self.specs, check_seconds=model_check_seconds,
                                 backbone_in_decoders=backbone_in_decoders)
        self._tokens = itertools.count(1)

    @property
    def config(self) -> Config:
        """The running config (the Live's: a reload shows here)."""
        return self.live.config

    @property
    def classifier(self):
        return self.model.classifier

    def open_pool(self) -> ExtractPool:
        """The decoder children this flow's songs are heard in, by the config's limits."""
        workers = self.config.workers
        return ExtractPool(workers.processes, spec=self.specs.cnn,
                           backbone_spec=self.specs.backbone, timeout=workers.decode_timeout,
                           nice=workers.nice, max_tasks_per_child=workers.max_tasks_per_child,
                           memory_mb=workers.memory_max_mb)

    # ---- claim ---------------------------------------------------------------------------

    def claim(self, room: int, held: frozenset[int] | set[int] = frozenset(),
              now: datetime | None = None) -> list[Claim]:
        """Up to `room` claimable tracks (not those `held`) -> working, as Claims."""
        if room <= 0:
            return []
        rows = claim_tracks(self.sessions, room, set(held), now or utcnow(), self.worker_id)
        return [Claim(track.id, track.path, track.size, track.mtime, queued_since,
                      track.canonical_genre, next(self._tokens))
                for track, queued_since in rows]

    # ---- features ------------------------------------------------------------------------

    def look_up(self, claim: Claim) -> Outcome:
        """What the model needs from the caches: Heard when all are there, Decode for the
        kinds missing; Changing for a file that changed since it settled; Failed for one
        that leads outside the library (never opened) or cannot be read."""
        try:
            path = library_file(self.root, claim.path)
        except FileError as err:
            return Failed(claim, err)
        if not self.settled(claim):
            return Changing(claim)
        try:
            fp = fingerprint(path)
        except OSError as err:
            return Failed(claim, UnreadableAudio(
                path, f"cannot read the file: {err.strerror or err}"))
        needs, backbone = self.needs, self.model.backbone
        cached = self.inputs.cached(fp, needs, on_embeddings=backbone is not None)
        missing = frozenset(needs - cached.keys())
        if missing:
            return Decode(claim, fp, cached, missing, backbone)
        return Heard(claim, fp, cached, cached=True, ready_at=time.monotonic(),
                     on_embeddings=backbone is not None)

    @property
    def needs(self) -> frozenset[str]:
        """The kinds a song needs: the model's, and with its backbone in the decoders the
        song's embedding too (a cnn bundle's members take none, "sounds like" does)."""
        needs = self.classifier.needs
        return needs | {BACKBONE} if self.model.backbone is not None else needs

    def fits(self, heard: Heard) -> bool:
        """The active model can classify `heard` as it is: it has every kind the model
        needs, the backbone's as patches or embeddings as the model takes it."""
        needs = self.needs
        return needs <= heard.features.keys() and (
            BACKBONE not in needs or heard.on_embeddings == (self.model.backbone is not None))

    def submit(self, pool: ExtractPool, decode: Decode) -> None:
        """The missing kinds to the decoders; the answer comes back tagged with the claim."""
        pool.submit(str(self.root / filesystem_path(decode.claim.path)),
                    tag=(decode.claim.track_id, decode.claim.token), kinds=decode.missing,
                    backbone=None if decode.backbone is None else str(decode.backbone))

    def heard(self, decode: Decode, result) -> Heard | Failed:
        """The decoders' answer (Extracted or FileError) for `decode` -> Heard (the fresh
        inputs stored in the caches) or Failed."""
        if isinstance(result, FileError):
            return Failed(decode.claim, result)
        fresh, on_embeddings = result.by_kind(), decode.backbone is not None
        self.inputs.store(decode.fingerprint, fresh, decode.claim.path, on_embeddings)
        return Heard(decode.claim, decode.fingerprint, {**decode.cached, **fresh},
                     cached=False, info=result.info, ready_at=time.monotonic(),
                     on_embeddings=on_embeddings)

    # ---- classify ------------------------------------------------------------------------

    def classify(self, batch: list[Heard]) -> list[Classified]:
        """One model run over the batch; embeddings to the embedding cache."""
        # The model of this batch, whichever becomes active meanwhile: its classes are
        # what the probabilities mean.
        model = (self.model.classifier, self.model.model_id)
        prediction = model[0].predict([h.features for h in batch])
        embeddings = prediction.embeddings
        if isinstance(model[0], EmbeddedClassifier):  # the decoders' backbone's, if any
            embeddings = [h.features.get(BACKBONE, NO_EMBEDDING) for h in batch]
        means = self.inputs.keep_embeddings([(h.fingerprint, h.claim.path) for h in batch],
                                            embeddings)
        return [Classified(h, row, mean, model)
                for h, row, mean in zip(batch, prediction.probs, means, strict=True)]

    # ---- context + suggest ---------------------------------------------------------------

    def suggest(self, batch: list[Classified]) -> list[Claim]:
        """Album/artist context, then one pending suggestion per song still ours and
        unchanged, in one transaction. Returns the claims that got a suggestion."""
        audit = self.config.classifier
        classifier, model_id = batch[0].model or (self.classifier, self.model.model_id)
        now = utcnow()
        done: list[tuple[Claim, str, float, bool]] = []
        # Decoded from bytes that have changed since (a copy went on): no suggestion.
        changing = {c.claim.track_id for c in batch if not self.settled(c.claim)}
        with transaction(self.sessions) as session:
            probs, contexts = batch_context(  # audits: the sound alone
                session, self.config, classifier,
                [None if c.claim.audit_genre else c.claim.track_id for c in batch],
                np.stack([c.probs for c in batch]))
            for song, row, context in zip(batch, probs, contexts, strict=True):
                claim = song.claim
                track = locked(session, Track, claim.track_id)
                if not self._still_ours(track, claim):
                    log.info("%s changed while being classified; it will be done again",
                             claim.path)
                    continue
                if claim.track_id in changing:
                    self._back_to_settling(track, claim, now)
                    continue
                top = classifier.top(row, 3)
                genre, confidence = top[0]
                _describe(track, song.heard)
                track.attempts, track.last_error, track.next_attempt_at = 0, None, None
                latency = ((now - claim.queued_since).total_seconds()
                           if claim.queued_since else None)
                session.add(Event(at=now, kind="classified", detail={
                    "path": claim.path, "genre": genre, "confidence": round(confidence, 4),
                    "model_id": model_id, "cached": song.heard.cached, "latency": latency}))
                verdict = suggest(session, track, top, model_id=model_id,
                                  audit_genre=claim.audit_genre,
                                  audit_min_confidence=audit.audit_min_confidence, now=now,
                                  sounds_like=self.sounds_like(song), context=context)
                if verdict.why == REJECTED_BEFORE:
                    log.info("%s: %s again, which the reviewer rejected; not suggested",
                             claim.path, genre)
                if verdict.genre is not None:
                    done.append((claim, genre, confidence, song.heard.cached))
        for claim, genre, confidence, cached in done:  # logged once committed
            log.info("suggested %s for %s (%.0f%%%s)", genre, claim.path, confidence * 100,
                     ", cached features" if cached else "")
        return [claim for claim, *_ in done]

    def sounds_like(self, song: Classified) -> list[dict] | None:
        """neighbours.nearest(mean embedding, exclude_track_id) -> [{"track_id", "path",
        "genre", "similarity"}...] for the suggestion; None when not known. A failure here
        costs the suggestion its "sounds like", nothing more."""
        if self.neighbours is None or song.embedding is None:
            return None
        try:
            return self.neighbours.nearest(song.embedding,
                                           exclude_track_id=song.claim.track_id)
        except Exception:
            log.exception("sounds like: no neighbours for %s", song.claim.path)
            return None

    # ---- record --------------------------------------------------------------------------

    def record(self, outcome: Failed | Changing) -> bool:
        """A failed attempt (retry with backoff, or quarantine) or a file still changing
        (back to settling) into the database. True when it counted as a failure."""
        claim, now = outcome.claim, utcnow()
        with transaction(self.sessions) as session:
            track = locked(session, Track, claim.track_id)
            if not self._still_ours(track, claim):
                log.info("%s changed while being decoded; it will be done again", claim.path)
                return False
            if isinstance(outcome, Changing) or (
                    not isinstance(outcome.error, OutsideLibrary) and not self.settled(claim)):
                self._back_to_settling(track, claim, now)  # still being copied: no failure
                return False
            quarantined, attempts = self._fail(session, track, outcome, now)
        workers = self.config.workers
        if quarantined:
            log.warning("quarantined %s after %d attempts: %s", claim.path, attempts,
                        outcome.error.reason)
        else:
            log.warning("failed %s (attempt %d of %d, retrying): %s", claim.path, attempts,
                        workers.max_attempts, outcome.error.reason)
        return True

    def _fail(self, session: Session, track: Track, failed: Failed, now: datetime
              ) -> tuple[bool, int]:
        workers = self.config.workers
        track.attempts = (track.attempts or 0) + 1
        track.last_error = failed.error.reason
        quarantined = track.attempts >= workers.max_attempts
        if quarantined:
            move(track, TrackState.QUARANTINED, now)
            track.next_attempt_at = None
            track.quarantined_ctime = inode_ctime(self.root / filesystem_path(failed.claim.path))
        else:
            move(track, TrackState.RETRYING, now)
            track.next_attempt_at = now + timedelta(
                seconds=backoff(track.attempts, workers.backoff_seconds))
        session.add(Event(at=now, kind="failed", detail={
            "path": failed.claim.path, "reason": failed.error.reason,
            "error": type(failed.error).__name__, "attempts": track.attempts,
            "quarantined": quarantined}))
        return quarantined, track.attempts

    def hand_back(self, track_ids: list[int], why: str) -> int:
        """These claims back to the queue (shutdown, no model); returns how many moved."""
        moved = requeue_working(self.sessions, track_ids, self.worker_id)
        if moved:
            log.info("handed %d track(s) back to the queue (%s)", moved, why)
        return moved

    # ---- the file as it settled ------------------------------------------------------------

    def settled(self, claim: Claim) -> bool:
        """The file still has the size and mtime it settled with (the track's row)."""
        try:
            st = (self.root / filesystem_path(claim.path)).stat()
        except (OSError, ValueError):
            return True  # gone or unreadable: decoding says so, as a failure
        return same_stat((st.st_size, st.st_mtime), (claim.size, claim.mtime))

    def _still_ours(self, track: Track | None, claim: Claim) -> bool:
        """The track is still working on the same file bytes (not changed meanwhile)."""
        return (track is not None and track.state == TrackState.WORKING
                and track.claimed_by == self.worker_id  # not handed to another worker
                and track.size == claim.size and track.mtime == claim.mtime)

    def _back_to_settling(self, track: Track, claim: Claim, now: datetime) -> None:
        """A file that changed since it settled waits settle_seconds (retrying, no attempt
        counted); the library settles it again meanwhile and queues it afresh."""
        move(track, TrackState.RETRYING, now)
        track.next_attempt_at = now + timedelta(
            seconds=max(self.config.library.settle_seconds, MIN_SETTLE_WAIT_SECONDS))
        log.info("%s is still changing (being copied?); it waits to settle again",
                 claim.path)


def _describe(track: Track, heard: Heard) -> None:
    """What decoding learned about the file: fingerprint, format, duration."""
    track.fingerprint = heard.fingerprint or track.fingerprint
    if heard.info is not None:
        track.format = getattr(heard.info, "format", None) or track.format
        track.duration = getattr(heard.info, "duration", None) or track.duration


# ---- the flow, once, top to bottom ---------------------------------------------------------

def hear(flow: Flow, pool: ExtractPool, claims: list[Claim]) -> list[Heard | Failed | Changing]:
    """The features stage for a set of claims: look each up, decode what is missing, wait
    for every answer."""
    looked = [flow.look_up(claim) for claim in claims]
    decodes = {(d.claim.track_id, d.claim.token): d for d in looked if isinstance(d, Decode)}
    for decode in decodes.values():
        flow.submit(pool, decode)
    answers = {}
    while len(answers) < len(decodes):
        item = pool.get()
        if item is None:  # the pool was closed under us
            raise RuntimeError("the decoder pool closed with songs in flight")
        tag, result = item
        if tag in decodes:
            answers[tag] = flow.heard(decodes[tag], result)
    return [answers[(o.claim.track_id, o.claim.token)] if isinstance(o, Decode) else o
            for o in looked]


def suggest_songs(flow: Flow, pool: ExtractPool, limit: int | None = None,
                  now: datetime | None = None) -> Tally:
    """Claim up to `limit` songs (default: one classifier batch) and take each through the
    stages in order, no threads: claim -> features -> classify -> context + suggest, then
    record the files that failed or are still changing. `now`: the claim's clock (a test
    may pass the time a retry is due). Nothing is claimed without an active model."""
    if not flow.model.refresh(flow.config):
        return Tally()
    batch_songs = flow.config.classifier.batch_songs
    claims = flow.claim(limit or batch_songs, now=now)
    outcomes = hear(flow, pool, claims)
    heard = [o for o in outcomes if isinstance(o, Heard)]
    classified = 0
    for start in range(0, len(heard), batch_songs):
        batch = heard[start:start + batch_songs]
        flow.suggest(flow.classify(batch))
        classified += len(batch)
    failed = sum(flow.record(o) for o in outcomes if isinstance(o, Failed))
    changing = [o for o in outcomes if isinstance(o, Changing)]
    for outcome in changing:
        flow.record(outcome)
    return Tally(len(claims), classified, failed, len(changing))
