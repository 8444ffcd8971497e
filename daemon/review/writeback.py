"""The one component that changes the station's files: accepted genres into their tags.

`Writer` is the background component that works through decisions whose genre still has
to reach the file (`write_status` pending or failed), each through
`daemon.tags.write.replace_atomically`: a file it cannot write (read-only,
drive offline, file vanished) keeps the decision "accepted, not yet written" with the
reason in `write_error`, retried with exponential backoff. After a write it records the
new size/mtime as `written_size`/`written_mtime` (so the reconcile recognises our own
change and does not re-queue the file), updates the fingerprint and relinks the feature
cache entry to it (so retraining never decodes the song again).

Each write first reads the file's genre fields as stored (`file_fields_before`); an undo's
write puts exactly those back (`daemon.tags.restore`): the earlier genre, or none where
the file had none. After every write the genre read back from the file is the decision's
`file_genre`, what the page and the CLI tell the director.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from daemon.audio.extract import ExtractPool
from daemon.audio.features import DEFAULT_SPEC
from daemon.audio.fingerprint import fingerprint
from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Decision, Track, utcnow
from daemon.core.errors import FileError
from daemon.core.health import Health, thread_alive
from daemon.core.paths import library_file
from daemon.core.retry import backoff
from daemon.core.states import WRITE_OUTSTANDING, Action, TrackState, WriteStatus
from daemon.suggest.inputs import SongInputs, WindowSpecs
from daemon.tags.live import Live, as_live
from daemon.tags.read import MULTI_VALUE_SEPARATOR
from daemon.tags.restore import (
    ChangedSinceWritten,
    GenreFields,
    restore_copy,
    write_copy_recorded,
)
from daemon.tags.write import GenreMode, Owner, WriteFailed, replace_atomically

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 6 * 3600.0
# A new version of a big song on a slow share: copy, tag, fsync, read back.
WRITE_TIMEOUT_SECONDS = 300.0




@dataclass(frozen=True)
class WriteRound:
    written: int = 0
    failed: int = 0


class Writer:
    """Background writer of decided genres into files. start() / close(); run_once() is
    one pass and is what tests call directly."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 interval: float = 2.0, batch: int = 50, first_backoff: float = BACKOFF_FIRST_S,
                 children: ExtractPool | None = None):
        self.live = as_live(config)
        # The service's child processes: each new version of a song is built there, so a
        # huge tag (a 150 MB cover) never enters the service. None: built in this process.
        self.children = children
        self.sessions = sessions
        self.interval = interval
        self.batch = batch
        self.first_backoff = first_backoff
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache = None
        self.health = Health("writer")

    @property
    def config(self) -> Config:
        return self.live.config

    def health_report(self) -> dict:
        """daemon.core.health shape: alive = its thread runs."""
        return self.health.report(thread_alive(self._thread))

    # ---- lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Write now rather than at the next interval (after a review action)."""
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as err:  # a DB hiccup must not end the writer; the next pass retries
                log.exception("writer pass failed")
                self.health.failed(err)
            else:
                self.health.progress()
            self._wake.wait(self.interval)
            self._wake.clear()

    # ---- work
    def due(self, session: Session, now=None) -> list[tuple[Decision, Track]]:
        """Decisions to write now, oldest first. A track's decision waits while an older
        one of the same track is still outstanding (an undo putting the file back, backing
        off after a failure): it must find the file as that one leaves it."""
        now = now or utcnow()
        older = aliased(Decision)
        waiting = exists().where(older.track_id == Decision.track_id, older.id < Decision.id,
                                 older.write_status.in_(WRITE_OUTSTANDING),
                                 older.undone.is_(False))
        return [(d, t) for d, t in session.execute(
            select(Decision, Track).join(Track, Decision.track_id == Track.id)
            .where(Decision.write_status.in_(WRITE_OUTSTANDING), Decision.undone.is_(False),
                   or_(Decision.next_write_at.is_(None), Decision.next_write_at <= now),
                   ~waiting)
            .order_by(Decision.id).limit(self.batch)).all()]

    def run_once(self, now=None) -> WriteRound:
        """Write every decision that is due; returns how many were written / failed."""
        with self.sessions() as session:
            due = [(d.id, d.genre, d.action, d.file_fields_before, d.undoes_id, t.id, t.path,
                    t.state) for d, t in self.due(session, now)]
        written = failed = 0
        for decision_id, genre, action, fields, undoes_id, track_id, rel, state in due:
            if self._stop.is_set():
                break
            # An undo with the file's earlier genre fields puts exactly those back; one
            # from before they were recorded writes its previous genre, as it always did.
            restoring = action == Action.UNDO and fields is not None
            mode = "replace" if action == Action.UNDO else self.config.review.tag_mode
            try:
                if state == TrackState.MISSING:
                    raise WriteFailed(rel, "the file is missing from the library")
                if genre is None and not restoring:
                    raise WriteFailed(rel, "decision has no genre to write")
                path = library_file(self.config.library.root, rel)
                old_fp = self._current_fingerprint(track_id)
                expect = functools.partial(self._expect_write, track_id)
                if restoring:
                    ours = self._written_genre(undoes_id)
                    st, genres = replace_atomically(
                        path, lambda real, tmp, owner, f=fields, w=ours: self._restore(
                            real, tmp, f, owner, w), before_replace=expect)
                    before = None
                else:
                    st, (before, genres) = replace_atomically(
                        path, lambda real, tmp, owner, g=genre, m=mode: self._build(
                            real, tmp, g, m, owner), before_replace=expect)
                self._record_written(decision_id, track_id, path, st, old_fp,
                                     before=before, genres=genres, restored=restoring)
                written += 1
                log.info("%s %s (decision %d)", "put back the genre of" if restoring else
                         f"wrote genre {genre!r} into", rel, decision_id)
            except ChangedSinceWritten as err:
                self._record_left_alone(decision_id, err.reason)
                log.warning("did not put back the genre of %s (decision %d): %s", rel,
                            decision_id, err.reason)
            except FileError as err:
                self._record_failure(decision_id, err.reason)
                failed += 1
                log.warning("could not write genre into %s (decision %d): %s; will retry",
                            rel, decision_id, err.reason)
        return WriteRound(written, failed)

    def _build(self, real: Path, tmp: Path, genre: str, mode: GenreMode,
               owner: Owner) -> tuple[GenreFields, tuple[str, ...]]:
        if self.children is None:
            return write_copy_recorded(real, tmp, genre, mode, owner)
        return self.children.call("write", real, tmp, genre, mode, owner,
                                  timeout=WRITE_TIMEOUT_SECONDS)

    def _restore(self, real: Path, tmp: Path, fields: GenreFields, owner: Owner,
                 written: str | None) -> tuple[str, ...]:
        if self.children is None:
            return restore_copy(real, tmp, fields, owner, written)
        return tuple(self.children.call("restore", real, tmp, fields, owner, written,
                                        timeout=WRITE_TIMEOUT_SECONDS))

    def _written_genre(self, decision_id: int | None) -> str | None:
        """What the undone decision's write left in the file (None: not known)."""
        with self.sessions() as session:
            return session.scalar(select(Decision.file_genre).where(
                Decision.id == decision_id))

    def _record_left_alone(self, decision_id: int, reason: str) -> None:
        with transaction(self.sessions) as session:
            decision = locked(session, Decision, decision_id)
            decision.write_attempts += 1
            decision.write_status = WriteStatus.NONE  # nothing to retry: the station's call
            decision.write_error = f"the file was not put back: {reason}"
            decision.next_write_at = None

    def _current_fingerprint(self, track_id: int) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Track.fingerprint).where(Track.id == track_id))

    def _feature_caches(self) -> list[SongInputs]:
        # The worker's (the config's windows per song: clips, patches, embeddings) and the
        # trainer's (the specs' own window count), which are the same folders by default.
        if self._cache is None:
            windows = {self.config.classifier.windows_per_song, DEFAULT_SPEC.clips_per_song}
            self._cache = [SongInputs(self.config.cache_dir, WindowSpecs.for_windows(n))
                           for n in sorted(windows)]
        return self._cache

    def _expect_write(self, track_id: int, st: os.stat_result) -> None:
        # Recorded before the rename: a reconcile in between already sees our write.
        with transaction(self.sessions) as session:
            track = session.get(Track, track_id)
            track.written_size, track.written_mtime = st.st_size, st.st_mtime

    def _record_written(self, decision_id: int, track_id: int, path: Path,
                        st: os.stat_result, old_fp: str | None, *,
                        before: GenreFields | None, genres: tuple[str, ...],
                        restored: bool) -> None:
        try:
            new_fp = fingerprint(path)
        except OSError:
            new_fp = None
        if old_fp and new_fp and old_fp != new_fp:
            try:
                for caches in self._feature_caches():
                    caches.link(old_fp, new_fp)
            except OSError as err:
                log.warning("feature cache relink %s -> %s failed: %s", old_fp, new_fp, err)
        with transaction(self.sessions) as session:
            # Locked (track, then decision: the order a review decision takes them), so
            # an undo committed while we wrote is seen below, not overwritten.
            track = locked(session, Track, track_id)
            decision = locked(session, Decision, decision_id)
            decision.write_status = WriteStatus.WRITTEN
            decision.write_error = None
            decision.next_write_at = None
            decision.write_attempts += 1
            track.size = track.written_size = st.st_size
            track.mtime = track.written_mtime = st.st_mtime
            if new_fp:
                track.fingerprint = new_fp
            decision.file_genre = MULTI_VALUE_SEPARATOR.join(genres)
            if before is not None:
                decision.file_fields_before = before
            if restored:
                # The file holds the station's own genre again: the track says so, read
                # from the file rather than assumed.
                track.raw_genre = decision.file_genre or None
                track.canonical_genre = (self.live.genre_map.canonical_for(genres)
                                         if genres else None)
            if decision.undone:
                # Undone while we were writing: the undo found nothing written, so it
                # must now put the previous genre back.
                self._restore_after_late_undo(session, decision)

    def _restore_after_late_undo(self, session: Session, decision: Decision) -> None:
        undo_row = session.scalar(select(Decision).where(Decision.undoes_id == decision.id))
        if undo_row is None or decision.file_fields_before is None:
            return
        undo_row.file_fields_before = decision.file_fields_before
        undo_row.write_status = (WriteStatus.PENDING if self.config.review.write_tags
                                 else WriteStatus.OFF)
        undo_row.write_error = None

    def _record_failure(self, decision_id: int, reason: str) -> None:
        with transaction(self.sessions) as session:
            decision = locked(session, Decision, decision_id)
            if decision.undone or decision.write_status not in WRITE_OUTSTANDING:
                return  # undone or replaced meanwhile: nothing left to retry
            decision.write_attempts += 1
            decision.write_status = WriteStatus.FAILED
            decision.write_error = reason
            decision.next_write_at = utcnow() + timedelta(
                seconds=backoff(decision.write_attempts, self.first_backoff, BACKOFF_MAX_S))


# How long the page and the CLI wait for an undo's write-back before answering.
REPORT_WAIT_S = 10.0


def wait_for_files(sessions: sessionmaker[Session], decision_ids: list[int], *,
                   timeout: float = REPORT_WAIT_S, poll: float = 0.1) -> list[Decision]:
    """The decisions, re-read once none is still waiting for its first write attempt
    (write_status pending with no attempt yet) or after `timeout` seconds, whichever
    comes first; detached, in the given order."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            rows = {d.id: d for d in session.scalars(
                select(Decision).where(Decision.id.in_(decision_ids)))}
            session.expunge_all()
        waiting = any(d.write_status == WriteStatus.PENDING and not d.write_attempts
                      for d in rows.values())
        if not waiting or time.monotonic() >= deadline:
            return [rows[i] for i in decision_ids if i in rows]
        time.sleep(poll)


def file_report(decision: Decision) -> str:
    """What the decision did to its file, in words, from what the writer read back from
    the file after its write (never assumed)."""
    status = decision.write_status
    undo = decision.action == Action.UNDO
    if status == WriteStatus.WRITTEN:
        genre = decision.file_genre
        return f"the file's genre now: {genre}" if genre else "the file has no genre now"
    if status == WriteStatus.PENDING:
        return ("the file is put back as it was when the writer gets to it" if undo
                else "the genre goes into the file when the writer gets to it")
    if status == WriteStatus.FAILED:
        return f"the file is not changed yet: {decision.write_error} (we keep trying)"
    if status == WriteStatus.OFF:
        return "writing is off: the file is not changed"
    if undo and decision.write_error:
        return decision.write_error
    return "the file was not changed" if undo else ""
