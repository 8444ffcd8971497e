"""The worker: queued tracks -> decoded clips -> features -> model -> pending suggestions.

One background thread (own stop event, close()) runs the pipeline top to bottom:

    claim     CLAIMABLE tracks (queued, or retrying whose backoff has passed) -> working
    features  what the active model needs (`classifier.needs`: the CNN's clips, the
              backbone's patches) from each kind's cache by fingerprint; the kinds
              missing are decoded in one pass in the ExtractPool's child processes (a
              crash, hang or leak there becomes a typed error for that one file), then
              stored (daemon.suggest.inputs)
    classify  several songs per onnxruntime run with the active model; the song
              embeddings it gives go to the embedding cache and, as the song's mean, on
              the claim for "sounds like" (`neighbours`); album/artist mates weigh in
    suggest   one pending Suggestion per track (an older pending one is superseded),
              track -> suggested, an Event row per file for `status`

A failed file: attempts += 1, last_error = the error's reason, retrying after
`backoff_seconds * 2**(attempts-1)`, quarantined once `max_attempts` is reached.

Settle is checked again at every step that could act on a half-copied file: before a
track (first attempt or retry) is decoded, before a failure is counted and before a
suggestion is made, the file's size and mtime must still be the ones it settled with. A
file that changed (a copy that stalled, then went on) is not decoded, not failed and not
suggested: it waits `settle_seconds` (retrying, no attempt counted) while the library
settles it again, which queues it afresh.

The active model (daemon.suggest.active.ActiveModel) and, on a host without its own
genres.toml, the genre map follow the database between batches; without a model nothing
is claimed: tracks stay queued until the first model exists.

Claims carry `worker_id` (its row in daemon.suggest.workers, beaten by the loop); start-up
hands back only dead workers' `working` tracks; close() stops claiming, waits up to
`drain_seconds` for files in flight, hands the rest back and closes the pool.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.extract import ExtractPool
from daemon.audio.features import BACKBONE_SPEC, DEFAULT_SPEC, BackboneSpec, FeatureSpec
from daemon.audio.fingerprint import fingerprint
from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Event, Track, utcnow
from daemon.core.errors import FileError, UnreadableAudio
from daemon.core.health import Health
from daemon.core.heap import release_free_memory
from daemon.core.paths import OutsideLibrary, filesystem_path, library_file
from daemon.core.retry import backoff
from daemon.core.states import TrackState, move
from daemon.library.walk import inode_ctime, same_stat
from daemon.suggest.active import ActiveModel
from daemon.suggest.inputs import SongInputs, WindowSpecs
from daemon.suggest.mates import batch_context
from daemon.suggest.queue import Claim, claim_tracks, prune_events, queue_depth, requeue_working
from daemon.suggest.suggestions import REJECTED_BEFORE, suggest
from daemon.suggest.workers import pulse, requeue_dead
from daemon.tags.live import Live, as_live
from daemon.tags.stored_genres import FollowedGenreMap

log = logging.getLogger(__name__)

# How often the worker looks for new work / a new model when there is none.
POLL_SECONDS = 0.5
NO_MODEL_SECONDS = 5.0
# A quiet drive keeps no decoder child alive (each holds ~60 MB of its own).
DECODER_IDLE_SECONDS = 60.0
# A batch waits at most this long for more songs before it is classified anyway.
BATCH_WAIT_SECONDS = 0.5
# The worker's own events are kept this long (status needs the last hour).
EVENT_DAYS = 7
WORKER_EVENTS = ("classified", "failed")


class Worker:
    """Background pipeline from queued tracks to pending suggestions. start()/close()."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 spec: FeatureSpec = DEFAULT_SPEC, backbone_spec: BackboneSpec = BACKBONE_SPEC,
                 drain_seconds: float = 15.0):
        self.live = as_live(config)
        self.sessions = sessions
        # The specs with the config's windows per song (a restart applies a new count).
        self.specs = WindowSpecs.for_windows(self.config.classifier.windows_per_song, spec,
                                             backbone_spec)
        self.drain_seconds = drain_seconds
        self.stop_event = threading.Event()
        self.root = Path(self.config.library.root)
        self.pool: ExtractPool | None = None
        self.inputs: SongInputs | None = None
        self.model = ActiveModel(sessions, self.specs)
        self.genres = FollowedGenreMap(self.live, sessions)  # no genres.toml here: the leader's
        # "Sounds like" (the service's daemon.suggest.neighbours; None: none): see _sounds_like.
        self.neighbours = None
        self._thread: threading.Thread | None = None
        self._claims: dict[int, Claim] = {}  # track id -> claim, in the pool or ready
        self._ready: list[Claim] = []  # features in hand, waiting for a batch
        self._failures: list[tuple[Claim, FileError]] = []  # waiting to be recorded
        self._changing: list[Claim] = []  # changed since they settled: waiting to be recorded
        self._token = 0
        self._last_pruned = 0.0
        self.beat = time.monotonic()  # last loop iteration (health)
        self.health = Health("worker")
        self.last_file: str | None = None
        self.classified = 0
        self.failed = 0
        self.worker_id: int | None = None  # set by the owner, who registered and retires it
        self._pulsed = 0.0

    @property
    def config(self) -> Config:
        return self.live.config

    @config.setter
    def config(self, config: Config) -> None:
        """Replace the running config (the Live's: every component sharing it sees it)."""
        self.live.replace(config)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Requeue what a crash left working, open the pool and cache, start the thread."""
        workers = self.config.workers
        requeue_dead(self.sessions, workers.dead_after_seconds, unclaimed=True)
        self.inputs = SongInputs(self.config.cache_dir, self.specs)
        self.pool = ExtractPool(workers.processes, spec=self.specs.cnn,
                                backbone_spec=self.specs.backbone,
                                timeout=workers.decode_timeout, nice=workers.nice,
                                max_tasks_per_child=workers.max_tasks_per_child,
                                memory_mb=workers.memory_max_mb)
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop claiming, finish what is in flight (up to drain_seconds, or `timeout`),
        requeue the rest."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=self.drain_seconds + 5 if timeout is None else timeout)
            if self._thread.is_alive():
                log.error("worker thread did not stop in time")
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def healthy(self, stale_seconds: float = 120.0) -> bool:
        """The thread runs and went round its loop recently."""
        return (self._thread is not None and self._thread.is_alive()
                and time.monotonic() - self.beat < stale_seconds)

    def health_report(self) -> dict:
        """daemon.core.health shape: alive = its thread runs; healthy = it also goes round."""
        return self.health.report(self._thread is not None and self._thread.is_alive(),
                                  healthy=self.healthy(), in_flight=len(self._claims))

    @property
    def in_flight(self) -> int:
        return len(self._claims)

    @property
    def classifier(self):
        return self.model.classifier

    @classifier.setter
    def classifier(self, classifier) -> None:
        self.model.classifier = classifier

    @property
    def model_id(self) -> int | None:
        return self.model.model_id

    # ---- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        was_busy = False
        while not self.stop_event.is_set():
            self.beat = time.monotonic()
            try:
                busy = self._step()
            except Exception as err:  # a DB hiccup or a bug must not end the thread
                log.exception("worker step failed; trying again in 5 s")
                self.health.failed(err)
                busy = False
                self.stop_event.wait(5)
            else:
                self.health.progress()
            if was_busy and not busy:
                release_free_memory()
            was_busy = busy
            if not busy:
                self.pool.retire_idle(DECODER_IDLE_SECONDS)
                self.stop_event.wait(POLL_SECONDS)
        self._drain()

    def _step(self) -> bool:
        """One round: keep the pool fed, collect results, classify a batch. True if busy."""
        self._pulsed = pulse(self.sessions, self.worker_id, self.classified + self.failed,
                             self._pulsed, {"genre_map": self.genres.refresh()})
        if not self.model.refresh(self.config):
            if self._claims:
                self._hand_back(list(self._claims.values()), "no active model")
            self.stop_event.wait(NO_MODEL_SECONDS)
            return True
        self._prune_events()
        self._record_failures()
        self._record_changing()
        claimed = self._claim_more()
        got = self._collect(timeout=0.2 if self.pool.pending else 0.0)
        classified = self._classify_ready(force=False)
        return bool(claimed or got or classified or self.pool.pending)

    def _target(self) -> int:
        # Enough claimed to keep every decoder busy and to fill one classifier batch.
        return max(self.config.classifier.batch_songs, 4 * self.config.workers.processes)

    def _claim_more(self) -> int:
        room = self._target() - len(self._claims)
        if room <= 0:
            return 0
        now = utcnow()
        rows = claim_tracks(self.sessions, room, set(self._claims), now, self.worker_id)
        for track, queued_since in rows:
            self._token += 1
            claim = Claim(track.id, track.path, track.size, track.mtime, queued_since,
                          track.canonical_genre, self._token)
            self._claims[track.id] = claim
            self._start_features(claim)
        return len(rows)

    def _start_features(self, claim: Claim) -> None:
        """Features the model needs all cached: straight to the batch; any missing: the
        missing kinds go to the decoders (one pass). A file that changed since it settled
        waits instead; one that leads outside the library fails without being opened."""
        try:
            path = library_file(self.root, claim.path)
        except FileError as err:
            self._failures.append((claim, err))
            return
        if not self._settled(claim):
            self._changing.append(claim)
            return
        try:
            claim.fingerprint = fingerprint(path)
        except OSError as err:
            self._failures.append((claim, UnreadableAudio(
                path, f"cannot read the file: {err.strerror or err}")))
            return
        needs = self.classifier.needs
        claim.features = self.inputs.cached(claim.fingerprint, needs)
        missing = needs - claim.features.keys()
        if not missing:
            claim.cached, claim.ready_at = True, time.monotonic()
            self._ready.append(claim)
        else:
            self.pool.submit(str(path), tag=(claim.track_id, claim.token), kinds=missing)

    def _collect(self, timeout: float) -> int:
        """Take finished files from the pool: features to the batch, errors to retry."""
        got = 0
        while True:
            item = self.pool.get(timeout=timeout if got == 0 else 0.0)
            if item is None:
                return got
            got += 1
            (track_id, token), result = item
            claim = self._claims.get(track_id)
            if claim is None or claim.token != token:
                continue  # handed back meanwhile; its result is stale
            if isinstance(result, FileError):
                self._failures.append((claim, result))
                continue
            fresh = result.by_kind()
            self.inputs.store(claim.fingerprint, fresh, claim.path)
            claim.features = {**claim.features, **fresh}
            claim.cached, claim.info, claim.ready_at = False, result.info, time.monotonic()
            self._ready.append(claim)

    def _classify_ready(self, force: bool) -> int:
        """Classify the waiting songs when a batch is full, nothing else is coming, or the
        oldest has waited long enough."""
        if not self._ready:
            return 0
        batch_songs = self.config.classifier.batch_songs
        oldest = min(c.ready_at for c in self._ready)
        if not (force or len(self._ready) >= batch_songs or self.pool.pending == 0
                or time.monotonic() - oldest >= BATCH_WAIT_SECONDS):
            return 0
        # Another model became active meanwhile and needs a kind these songs lack.
        needs = self.classifier.needs
        lacking = [c for c in self._ready if not needs <= c.features.keys()]
        if lacking:
            self._ready = [c for c in self._ready if needs <= c.features.keys()]
            for claim in lacking:
                self._start_features(claim)
        done = 0
        while self._ready:
            batch = self._ready[:batch_songs]
            prediction = self.classifier.predict([c.features for c in batch])
            self.inputs.keep_embeddings(batch, prediction.embeddings)
            self._suggest(batch, prediction.probs)  # on a DB error the batch stays ready
            self._ready = self._ready[len(batch):]
            for claim in batch:
                self._claims.pop(claim.track_id, None)
            done += len(batch)
        return done

    def _sounds_like(self, claim: Claim) -> list[dict] | None:
        """neighbours.nearest(mean embedding, exclude_track_id) -> [{"track_id", "path",
        "genre", "similarity"}...] for the suggestion; None when not known. A failure here
        costs the suggestion its "sounds like", nothing more."""
        if self.neighbours is None or claim.embedding is None:
            return None
        try:
            return self.neighbours.nearest(claim.embedding, exclude_track_id=claim.track_id)
        except Exception:
            log.exception("sounds like: no neighbours for %s", claim.path)
            return None

    # ---- results into the database -----------------------------------------------------

    def _still_ours(self, track: Track | None, claim: Claim) -> bool:
        """The track is still working on the same file bytes (not changed meanwhile)."""
        return (track is not None and track.state == TrackState.WORKING
                and track.claimed_by == self.worker_id  # not handed to another worker
                and track.size == claim.size and track.mtime == claim.mtime)

    def _suggest(self, batch: list[Claim], probs: np.ndarray) -> None:
        audit = self.config.classifier
        now = utcnow()
        suggested: list[tuple[Claim, str, float]] = []
        # Decoded from bytes that have changed since (a copy went on): no suggestion.
        changing = {c.track_id for c in batch if not self._settled(c)}
        with transaction(self.sessions) as session:
            probs, contexts = batch_context(session, self.config, self.classifier, [
                None if c.audit_genre else c.track_id for c in batch], probs)  # audits: sound
            for claim, row, context in zip(batch, probs, contexts, strict=True):
                track = locked(session, Track, claim.track_id)
                if claim.track_id in changing and self._still_ours(track, claim):
                    self._back_to_settling(track, claim, now)
                    continue
                if not self._still_ours(track, claim):
                    log.info("%s changed while being classified; it will be done again",
                             claim.path)
                    continue
                top = self.classifier.top(row, 3)
                genre, confidence = top[0]
                self._describe(track, claim)
                track.attempts, track.last_error, track.next_attempt_at = 0, None, None
                latency = ((now - claim.queued_since).total_seconds()
                           if claim.queued_since else None)
                session.add(Event(at=now, kind="classified", detail={
                    "path": claim.path, "genre": genre, "confidence": round(confidence, 4),
                    "model_id": self.model_id, "cached": claim.cached, "latency": latency}))
                verdict = suggest(session, track, top, model_id=self.model_id,
                                  audit_genre=claim.audit_genre,
                                  audit_min_confidence=audit.audit_min_confidence, now=now,
                                  sounds_like=self._sounds_like(claim), context=context)
                if verdict.why == REJECTED_BEFORE:
                    log.info("%s: %s again, which the reviewer rejected; not suggested",
                             claim.path, genre)
                if verdict.genre is not None:
                    self.last_file = claim.path
                    suggested.append((claim, genre, confidence))
        self.classified += len(batch)
        for claim, genre, confidence in suggested:  # logged once committed
            log.info("suggested %s for %s (%.0f%%%s)", genre, claim.path, confidence * 100,
                     ", cached features" if claim.cached else "")

    def _describe(self, track: Track, claim: Claim) -> None:
        """What decoding learned about the file: fingerprint, format, duration."""
        if claim.fingerprint:
            track.fingerprint = claim.fingerprint
        info = claim.info
        if info is not None:
            track.format = getattr(info, "format", None) or track.format
            track.duration = getattr(info, "duration", None) or track.duration

    def _record_failures(self) -> None:
        """Record failed files; one that cannot be recorded yet (DB busy) waits here."""
        while self._failures:
            claim, error = self._failures[0]
            self._fail(claim, error)
            self._failures.pop(0)
            self._claims.pop(claim.track_id, None)

    def _fail(self, claim: Claim, error: FileError) -> None:
        """One failed attempt: retry later with backoff, or quarantine."""
        workers = self.config.workers
        now = utcnow()
        with transaction(self.sessions) as session:
            track = locked(session, Track, claim.track_id)
            if not self._still_ours(track, claim):
                log.info("%s changed while being decoded; it will be done again", claim.path)
                return
            if not isinstance(error, OutsideLibrary) and not self._settled(claim):
                self._back_to_settling(track, claim, now)  # still being copied: no failure
                return
            track.attempts = (track.attempts or 0) + 1
            track.last_error = error.reason
            quarantined = track.attempts >= workers.max_attempts
            if quarantined:
                move(track, TrackState.QUARANTINED, now)
                track.next_attempt_at = None
                track.quarantined_ctime = inode_ctime(self.root / filesystem_path(claim.path))
            else:
                move(track, TrackState.RETRYING, now)
                track.next_attempt_at = now + timedelta(
                    seconds=backoff(track.attempts, workers.backoff_seconds))
            attempts = track.attempts
            session.add(Event(at=now, kind="failed", detail={
                "path": claim.path, "reason": error.reason, "error": type(error).__name__,
                "attempts": attempts, "quarantined": quarantined}))
        self.failed += 1
        self.last_file = claim.path
        if quarantined:
            log.warning("quarantined %s after %d attempts: %s", claim.path, attempts,
                        error.reason)
        else:
            log.warning("failed %s (attempt %d of %d, retrying): %s", claim.path, attempts,
                        workers.max_attempts, error.reason)

    def _settled(self, claim: Claim) -> bool:
        """The file still has the size and mtime it settled with (the track's row)."""
        try:
            st = (self.root / filesystem_path(claim.path)).stat()
        except (OSError, ValueError):
            return True  # gone or unreadable: decoding says so, as a failure
        return same_stat((st.st_size, st.st_mtime), (claim.size, claim.mtime))

    def _back_to_settling(self, track: Track, claim: Claim, now: datetime) -> None:
        """A file that changed since it settled waits settle_seconds (retrying, no attempt
        counted); the library settles it again meanwhile and queues it afresh."""
        move(track, TrackState.RETRYING, now)
        track.next_attempt_at = now + timedelta(
            seconds=max(self.config.library.settle_seconds, POLL_SECONDS))
        log.info("%s is still changing (being copied?); it waits to settle again",
                 claim.path)

    def _record_changing(self) -> None:
        """Claims whose file changed before decoding: back to waiting (DB busy: next time)."""
        while self._changing:
            claim = self._changing[0]
            with transaction(self.sessions) as session:
                track = locked(session, Track, claim.track_id)
                if self._still_ours(track, claim):
                    self._back_to_settling(track, claim, utcnow())
            self._changing.pop(0)
            self._claims.pop(claim.track_id, None)

    def _hand_back(self, claims: list[Claim], why: str) -> None:
        ids = [c.track_id for c in claims]
        moved = requeue_working(self.sessions, ids, self.worker_id)
        for track_id in ids:
            self._claims.pop(track_id, None)
        self._ready = [c for c in self._ready if c.track_id not in ids]
        self._failures = [(c, e) for c, e in self._failures if c.track_id not in ids]
        self._changing = [c for c in self._changing if c.track_id not in ids]
        if moved:
            log.info("handed %d track(s) back to the queue (%s)", moved, why)

    def _drain(self) -> None:
        """Shutdown: no new claims; finish in-flight files for a while, requeue the rest."""
        deadline = time.monotonic() + self.drain_seconds
        try:
            while (self.classifier is not None and self.pool is not None and self.pool.pending
                   and time.monotonic() < deadline):
                self._collect(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            self._record_failures()
            self._record_changing()
            if self.classifier is not None:
                self._classify_ready(force=True)
        except Exception:
            log.exception("finishing in-flight files failed")
        if self._claims:
            self._hand_back(list(self._claims.values()), "shutting down")

    # ---- bookkeeping -------------------------------------------------------------------

    def queued(self) -> int:
        """Tracks waiting for the worker (queued, retrying, working)."""
        with self.sessions() as session:
            return queue_depth(session)

    def _prune_events(self) -> None:
        now = time.monotonic()
        if now - self._last_pruned < 3600:
            return
        self._last_pruned = now
        prune_events(self.sessions, WORKER_EVENTS, EVENT_DAYS)
