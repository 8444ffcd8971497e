"""The worker: the suggest flow (daemon.suggest.flow) run in the background.

The stages are the flow's; what the worker adds is overlap, so that every core the
station gives (`workers.processes` decoder children, `classifier.threads` for the model)
is busy at once: while one batch is classified and suggested in the worker's classify
thread (onnxruntime runs outside the GIL), the worker's own thread keeps the decoder
children fed with the next songs. Each claimed track's latest record (Decode, Heard,
Failed, Changing: all frozen) is held by track id until a stage finishes it. Every round:

    record    Failed and Changing files into the database (a busy one: next round)
    claim     enough to keep every decoder busy and to fill one classifier batch besides
              the batch being classified; each is looked up in the caches and what is
              missing goes to the decoders
    collect   the decoders' answers -> Heard or Failed
    classify  the batch the classify thread finished leaves the held records; then the
              Heard songs go to it once a batch is full, nothing else is coming, or the
              oldest has waited BATCH_WAIT_SECONDS -> context -> suggest

The active model (daemon.suggest.active.ActiveModel) and, on a host without its own
genres.toml, the genre map follow the database between rounds; without a model nothing
is claimed: tracks stay queued until the first model exists, and what was held goes back.

Built complete: the config (a Live: a reload shows at the next round), the database, its
`worker_id` (its row in daemon.suggest.workers, beaten by the loop), "sounds like"
(`neighbours`) and `drain_seconds`. start() hands back only dead workers' `working`
tracks; stop() stops claiming; close() waits up to `drain_seconds` for files in flight,
hands the rest back and closes the pool.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.core.health import Health
from daemon.core.heap import release_free_memory
from daemon.suggest.flow import Changing, Decode, Failed, Flow, Heard, Outcome
from daemon.suggest.queue import prune_events, queue_depth
from daemon.suggest.workers import pulse, requeue_dead
from daemon.tags.live import Live
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
    """Background run of the suggest flow. start() / stop() / close() / health_report()."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 worker_id: int | None = None, neighbours=None, drain_seconds: float = 15.0,
                 **flow_options):
        self.flow = Flow(config, sessions, worker_id=worker_id, neighbours=neighbours,
                         **flow_options)
        self.sessions = sessions
        self.drain_seconds = drain_seconds
        self.stop_event = threading.Event()
        self.pool: ExtractPool | None = None
        self.genres = FollowedGenreMap(self.flow.live, sessions)  # no genres.toml: the leader's
        self._thread: threading.Thread | None = None
        self._held: dict[int, Outcome] = {}  # track id -> its latest record
        # The classify stage's thread, one batch at a time (its errors come back here).
        self._classifier = ThreadPoolExecutor(1, thread_name_prefix="classify")
        self._classifying: tuple[list[Heard], Future] | None = None
        self._last_pruned = 0.0
        self._pulsed = 0.0
        self.beat = time.monotonic()  # last loop iteration (health)
        self.health = Health("worker")
        self.last_file: str | None = None
        self.classified = 0
        self.failed = 0

    @property
    def config(self) -> Config:
        return self.flow.config

    @property
    def specs(self):
        return self.flow.specs

    @property
    def worker_id(self) -> int | None:
        return self.flow.worker_id

    @property
    def classifier(self):
        return self.flow.classifier

    @property
    def model_id(self) -> int | None:
        return self.flow.model.model_id

    @property
    def in_flight(self) -> int:
        return len(self._held)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Requeue what a crash left working, open the pool, start the thread."""
        requeue_dead(self.sessions, self.config.workers.dead_after_seconds, unclaimed=True)
        self.pool = self.flow.open_pool()
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming now; the files in flight go on finishing until close()."""
        self.stop_event.set()

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
        self._classifier.shutdown(wait=False)

    def healthy(self, stale_seconds: float = 120.0) -> bool:
        """The thread runs and went round its loop recently."""
        return (self._thread is not None and self._thread.is_alive()
                and time.monotonic() - self.beat < stale_seconds)

    def health_report(self) -> dict:
        """daemon.core.health shape: alive = its thread runs; healthy = it also goes round."""
        return self.health.report(self._thread is not None and self._thread.is_alive(),
                                  healthy=self.healthy(), in_flight=len(self._held))

    def queued(self) -> int:
        """Tracks waiting for the worker (queued, retrying, working)."""
        with self.sessions() as session:
            return queue_depth(session)

    # ---- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        was_busy = False
        while not self.stop_event.is_set():
            self.beat = time.monotonic()
            try:
                busy = self._round()
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

    def _round(self) -> bool:
        """One round of every stage (see the module docstring). True if busy."""
        flow = self.flow
        self._pulsed = pulse(self.sessions, flow.worker_id, self.classified + self.failed,
                             self._pulsed, {"genre_map": self.genres.refresh()})
        if not flow.model.refresh(self.config):
            if self._held:
                self._hand_back("no active model")
            self.stop_event.wait(NO_MODEL_SECONDS)
            return True
        self._prune_events()
        self._record()
        claimed = self._claim()
        got = self._collect(timeout=0.2 if self.pool.pending else 0.0)
        classified = self._classify(force=False)
        return bool(claimed or got or classified or self.pool.pending)

    def _claim(self) -> int:
        config = self.config
        # Enough claimed to keep every decoder busy and to fill one classifier batch;
        # while a batch is classified, the decoders stay a few songs ahead of it (more
        # would only wait, in memory, for a model slower than decoding).
        batch, ahead = config.classifier.batch_songs, 4 * config.workers.processes
        busy = len(self._classifying[0]) if self._classifying else 0
        target = busy + max(ahead, batch - busy)
        claims = self.flow.claim(target - len(self._held), self._held.keys())
        for claim in claims:
            self._look_up(claim)
        return len(claims)

    def _look_up(self, claim) -> None:
        outcome = self.flow.look_up(claim)
        if isinstance(outcome, Decode):
            self.flow.submit(self.pool, outcome)
        self._held[claim.track_id] = outcome

    def _collect(self, timeout: float) -> int:
        """The decoders' finished files -> Heard or Failed."""
        got = 0
        while (item := self.pool.get(timeout=timeout if got == 0 else 0.0)) is not None:
            got += 1
            (track_id, token), result = item
            held = self._held.get(track_id)
            if isinstance(held, Decode) and held.claim.token == token:
                self._held[track_id] = self.flow.heard(held, result)
            # else: handed back meanwhile; its result is stale
        return got

    def _classify(self, force: bool, wait: float = 0.0) -> int:
        """Take back the batch the classify thread finished (waiting up to `wait`), then
        hand it the Heard songs when a batch is full, nothing else is coming, or the
        oldest has waited long enough. Returns the songs finished or handed over."""
        done = self._classified(wait)
        if self._classifying is not None:
            return done
        ready = [h for h in self._held.values() if isinstance(h, Heard)]
        if not ready:
            return done
        batch_songs = self.config.classifier.batch_songs
        oldest = min(h.ready_at for h in ready)
        if not (force or len(ready) >= batch_songs or self.pool.pending == 0
                or time.monotonic() - oldest >= BATCH_WAIT_SECONDS):
            return done
        # Another model became active meanwhile and needs a kind these songs lack.
        for heard in ready:
            if not self.flow.fits(heard):
                self._look_up(heard.claim)
        batch = [h for h in ready if self.flow.fits(h)][:batch_songs]
        if batch:
            flow = self.flow
            self._classifying = (batch, self._classifier.submit(
                lambda: flow.suggest(flow.classify(batch))))
        return done + len(batch)

    def _classified(self, wait: float) -> int:
        """The classify thread's finished batch out of the held records. A batch that
        failed (the database busy, a model error) stays held and goes again."""
        if self._classifying is None:
            return 0
        batch, future = self._classifying
        try:
            suggested = future.result(timeout=wait)
        except TimeoutError:
            return 0
        finally:
            if future.done():
                self._classifying = None
        for heard in batch:
            self._held.pop(heard.claim.track_id, None)
        self.classified += len(batch)
        if suggested:
            self.last_file = suggested[-1].path
        return len(batch)

    def _record(self) -> None:
        """Failed and Changing files into the database; one that cannot be recorded yet
        (the database busy) stays held for the next round."""
        for outcome in [o for o in self._held.values() if isinstance(o, Failed | Changing)]:
            if self.flow.record(outcome):
                self.failed += 1
                self.last_file = outcome.claim.path
            del self._held[outcome.claim.track_id]

    def _hand_back(self, why: str) -> None:
        self.flow.hand_back(list(self._held), why)
        self._held.clear()

    def _drain(self) -> None:
        """Shutdown: no new claims; finish in-flight files for a while, requeue the rest."""
        deadline = time.monotonic() + self.drain_seconds
        try:
            while (self.classifier is not None and self.pool is not None and self.pool.pending
                   and time.monotonic() < deadline):
                self._collect(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            self._record()
            while self.classifier is not None and (self._classifying or any(
                    isinstance(h, Heard) for h in self._held.values())):
                left = deadline - time.monotonic()
                if left <= 0 or not self._classify(force=True, wait=left):
                    break
        except Exception:
            log.exception("finishing in-flight files failed")
        if self._held:
            self._hand_back("shutting down")

    def _prune_events(self) -> None:
        now = time.monotonic()
        if now - self._last_pruned < 3600:
            return
        self._last_pruned = now
        prune_events(self.sessions, WORKER_EVENTS, EVENT_DAYS)
