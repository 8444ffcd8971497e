""""Sounds like": the station's own songs nearest a new song, by the backbone's embedding.

The reference songs are the tracks with a training label (a confirmed genre, else the
canonical genre of the file's tag: daemon.core.labels), still in the library, with a
fingerprint whose embedding is in the embedding cache (FeatureCache(cache_dir,
EMBEDDING_SPEC): per patch (patches, 200)). A song's vector is the mean over its patches,
L2-normalised, so cosine similarity is one matrix-vector product over all of them.

Memory is one float32 matrix (songs x 200: 12 MB at 15,000 songs) plus, per song, its
track id, genre, path and fingerprint (bench/neighbours.py measures both). `refresh()`
is incremental: one query for the labelled tracks (cheap), then only new or changed ones
are read from the cache; a labelled song whose embedding is not cached yet is looked for
again only once its cache folder has changed.

`Neighbours` is also a service component (start / close / health_report): its thread
refreshes every REFRESH_SECONDS, so labels confirmed on the review page and embeddings
the worker or the trainer cache show up within a minute, and `nearest()` (the worker's
thread) never waits on the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import EMBEDDING_SPEC, EmbeddingSpec
from daemon.core.db.models import Track
from daemon.core.health import Health, thread_alive
from daemon.core.labels import LABEL
from daemon.core.states import TrackState

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
# The matrix grows by doubling from this many rows (a new station has few labels).
FIRST_CAPACITY = 256


@dataclass(frozen=True)
class Reference:
    """A labelled track as the database has it now."""

    track_id: int
    path: str
    genre: str
    fingerprint: str


def song_vector(embedding: np.ndarray) -> np.ndarray | None:
    """Per-patch (patches, dim) or a mean (dim,) embedding -> the unit-length song vector
    (float32), or None when it has no direction (all zeros, NaN)."""
    embedding = np.asarray(embedding, dtype=np.float64)
    vector = embedding.mean(axis=0) if embedding.ndim == 2 else embedding
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return (vector / norm).astype(np.float32)


class Neighbours:
    """The reference songs in memory and the nearest of them to a song."""

    def __init__(self, cache_dir: Path | str, spec: EmbeddingSpec = EMBEDDING_SPEC,
                 sessions: sessionmaker[Session] | None = None,
                 refresh_seconds: float = REFRESH_SECONDS):
        self.cache = FeatureCache(cache_dir, spec)
        self.dim = spec.dim
        self.sessions = sessions  # for the component's own refresh loop
        self.refresh_seconds = refresh_seconds
        self._vectors = np.zeros((FIRST_CAPACITY, self.dim), dtype=np.float32)
        self._refs: list[Reference] = []  # row i of the matrix is _refs[i]
        self._row: dict[int, int] = {}  # track id -> row
        # Labelled but not cached yet: track id -> (reference, its folder's mtime then).
        self._waiting: dict[int, tuple[Reference, int | None]] = {}
        self._lock = threading.Lock()  # the matrix and its rows vs nearest()
        self._refreshing = threading.Lock()  # one refresh at a time
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = time.time()
        self.health = Health("neighbours")
        self.last_refresh: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._refs)

    @property
    def matrix_bytes(self) -> int:
        """Bytes of the vector matrix as allocated (it grows by doubling)."""
        return self._vectors.nbytes

    # ---- refresh ----------------------------------------------------------------------

    def refresh(self, sessions: sessionmaker[Session]) -> dict[str, Any]:
        """Bring the reference songs up to date with the database and the cache.

        New labels and newly cached embeddings are added, changed genres and paths
        updated, songs that lost their label (or left the library, or whose audio
        changed) removed. Out: {"songs", "added", "removed", "updated", "waiting",
        "seconds"}.
        """
        with self._refreshing:
            started = time.monotonic()
            with sessions() as session:
                wanted = {ref.track_id: ref for ref in self._labelled(session)}
            current = {ref.track_id: ref for ref in self._refs}
            # A new fingerprint is new audio: its old vector goes, the new one is read.
            removed = {t for t, ref in current.items()
                       if t not in wanted or wanted[t].fingerprint != ref.fingerprint}
            updated = [ref for t, ref in wanted.items()
                       if t in current and t not in removed and ref != current[t]]
            added = self._load_new([ref for t, ref in wanted.items()
                                    if t not in current or t in removed])
            with self._lock:
                for ref in updated:  # another genre or path, the same audio
                    self._refs[self._row[ref.track_id]] = ref
                for track_id in removed:
                    self._remove_row(self._row[track_id])
                for ref, vector in added:
                    self._append(ref, vector)
            self.last_refresh = {
                "songs": len(self._refs), "added": len(added), "removed": len(removed),
                "updated": len(updated), "waiting": len(self._waiting),
                "seconds": round(time.monotonic() - started, 4)}
            return self.last_refresh

    @staticmethod
    def _labelled(session: Session) -> list[Reference]:
        rows = session.execute(
            select(Track.id, Track.path, LABEL, Track.fingerprint)
            .where(LABEL.is_not(None), Track.fingerprint.is_not(None),
                   Track.state.not_in((TrackState.MISSING, TrackState.NOT_A_SONG))))
        return [Reference(int(i), p, g, f) for i, p, g, f in rows]

    def _folder_mtime(self, fp: str) -> int | None:
        """The cache folder's mtime; -1 (matches nothing: look again next time) when it
        changed so lately that a write in the same clock tick could still follow."""
        try:
            mtime = os.stat(self.cache.path(fp).parent).st_mtime_ns
        except OSError:
            return None
        return -1 if time.time_ns() - mtime < 2_000_000_000 else mtime

    def _load_new(self, refs: list[Reference]) -> list[tuple[Reference, np.ndarray]]:
        """The song vectors of these references that the cache has; the rest wait. One
        already waiting is read again only when its cache folder changed since."""
        got = []
        still = {}
        for ref in refs:
            mtime = self._folder_mtime(ref.fingerprint)
            before = self._waiting.get(ref.track_id)
            if before is not None and before[0].fingerprint == ref.fingerprint \
                    and before[1] == mtime != -1:
                still[ref.track_id] = (ref, mtime)
                continue
            embedding = self.cache.get(ref.fingerprint) if mtime is not None else None
            vector = song_vector(embedding) if embedding is not None else None
            if vector is None:
                still[ref.track_id] = (ref, mtime)
            else:
                got.append((ref, vector))
        self._waiting = still
        return got

    def _append(self, ref: Reference, vector: np.ndarray) -> None:
        n = len(self._refs)
        if n == len(self._vectors):
            grown = np.zeros((2 * n, self.dim), dtype=np.float32)
            grown[:n] = self._vectors
            self._vectors = grown
        self._vectors[n] = vector
        self._refs.append(ref)
        self._row[ref.track_id] = n

    def _remove_row(self, row: int) -> None:
        """Remove a row by moving the last one into its place (O(1))."""
        last = len(self._refs) - 1
        del self._row[self._refs[row].track_id]
        if row != last:
            self._vectors[row] = self._vectors[last]
            self._refs[row] = self._refs[last]
            self._row[self._refs[row].track_id] = row
        self._refs.pop()

    # ---- the answer -------------------------------------------------------------------

    def nearest(self, embedding: np.ndarray, k: int = 3,
                exclude_track_id: int | None = None) -> list[dict[str, Any]]:
        """The k reference songs most like `embedding` (per-patch or mean), most alike
        first: [{"track_id", "path", "genre", "similarity" (cosine, -1..1)}]. The song
        itself (exclude_track_id) is never its own neighbour. [] without references or
        for an embedding with no direction."""
        vector = song_vector(embedding)
        if vector is None or vector.shape != (self.dim,):
            return []
        with self._lock:
            n = len(self._refs)
            if n == 0:
                return []
            similarity = self._vectors[:n] @ vector
            skip = self._row.get(exclude_track_id) if exclude_track_id is not None else None
            if skip is not None:
                similarity[skip] = -np.inf
            k = min(k, n - (skip is not None))
            if k <= 0:
                return []
            best = np.argpartition(-similarity, k - 1)[:k]
            best = best[np.argsort(-similarity[best], kind="stable")]
            return [{"track_id": self._refs[i].track_id, "path": self._refs[i].path,
                     "genre": self._refs[i].genre,
                     "similarity": round(float(similarity[i]), 4)} for i in best]

    # ---- the component ----------------------------------------------------------------

    def start(self) -> None:
        """Refresh in a thread of its own: at once, then every refresh_seconds or wake()."""
        if self.sessions is None:
            raise ValueError("Neighbours needs sessions to run as a component")
        self._started_at = time.time()
        self._thread = threading.Thread(target=self._run, name="neighbours", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Refresh soon (e.g. the trainer just cached many embeddings)."""
        self._wake.set()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.refresh(self.sessions)
            except Exception as err:  # a locked DB or a bad cache entry: next round
                log.exception("sounds-like refresh failed; trying again later")
                self.health.failed(err)
            else:
                self.health.progress()
            self._wake.wait(self.refresh_seconds)
            self._wake.clear()

    def close(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def health_report(self) -> dict[str, Any]:
        """Alive = its thread runs; healthy also needs a refresh within 3 periods."""
        alive = thread_alive(self._thread)
        last = self.health.last_progress_at
        since = last.timestamp() if last is not None else self._started_at
        fresh = time.time() - since < 3 * self.refresh_seconds + 30
        return self.health.report(alive, healthy=alive and fresh, songs=len(self._refs),
                                  waiting=len(self._waiting))
