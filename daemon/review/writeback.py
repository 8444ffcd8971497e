"""The one component that changes the station's files: accepted genres into their tags.

`Writer` is the background component that works through decisions whose genre still has
to reach the file (`write_status` pending or failed). `Writer.write` is the flow from a
decision to the bytes in the file, top to bottom: the decision as read (`Due`), the file
checked, the new version built in a child process, verified, recorded as expected, put
in place, recorded as written (the file stages are `daemon.tags.replace`'s). A file it
cannot write (read-only, drive offline, file vanished) keeps the decision "accepted, not
yet written" with the reason in `write_error`, retried with exponential backoff. A write
records the new size/mtime as `written_size`/`written_mtime` (so the reconcile recognises
our own change and does not re-queue the file), updates the fingerprint and relinks the
feature cache entry to it (so retraining never decodes the song again).

Each write first reads the file's genre fields as stored (`file_fields_before`); an undo's
write puts exactly those back (`daemon.tags.restore`): the earlier genre, or none where
the file had none. After every write the genre read back from the file is the decision's
`file_genre`, what the page and the CLI tell the director.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

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
from daemon.tags.replace import (
    Copy,
    Target,
    WriteFailed,
    check_target,
    new_version,
    put_in_place,
    verify,
)
from daemon.tags.restore import ChangedSinceWritten, PutBack, restore_copy, write_copy_recorded
from daemon.tags.write import GenreMode, NewGenre

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 6 * 3600.0
# A new version of a big song on a slow share: copy, tag, fsync, read back.
WRITE_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class WriteRound:
    written: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Due:
    """A decision whose genre is to reach its file, as the database has it."""

    decision_id: int
    track_id: int
    path: str  # the stored library path
    change: NewGenre | PutBack | None  # what the file is to become
    problem: str | None  # why it cannot be written at all, or None
    fingerprint: str | None  # the track's before the write: its feature cache entry

    @property
    def restoring(self) -> bool:
        return isinstance(self.change, PutBack)


def as_due(decision: Decision, track: Track, written: str | None,
               tag_mode: GenreMode) -> Due:
    """The Due for a decision and its track. An undo with the file's earlier genre fields
    puts exactly those back (`written`: what the undone write left in the file); one from
    before they were recorded writes its previous genre, as it always did."""
    undo = decision.action == Action.UNDO
    change: NewGenre | PutBack | None = None
    if undo and decision.file_fields_before is not None:
        change = PutBack(decision.file_fields_before, written)
    elif decision.genre is not None:
        change = NewGenre(decision.genre.strip(), "replace" if undo else tag_mode)
    problem = ("the file is missing from the library" if track.state == TrackState.MISSING
               else "decision has no genre to write" if change is None else None)
    return Due(decision.id, track.id, track.path, change, problem, track.fingerprint)


def build_copy(target: Target, change: NewGenre | PutBack,
               children: ExtractPool | None = None) -> Copy:
    """The new version of `target` in its temp file: the genre written (with the genre
    fields before, what an undo puts back) or the fields put back. Built in one of
    `children` (the service's tag readers), or in this process without them."""
    if isinstance(change, PutBack):
        args = (target.real, target.temp, change.fields, target.owner, change.written)
        if children is None:
            return restore_copy(*args)
        return children.call("restore", *args, timeout=WRITE_TIMEOUT_SECONDS)
    args = (target.real, target.temp, change.genre, change.mode, target.owner)
    if children is None:
        return write_copy_recorded(*args)
    return children.call("write", *args, timeout=WRITE_TIMEOUT_SECONDS)


class Writer:
    """Background writer of decided genres into files. start() / close(); run_once() is
    one pass and is what tests call directly, and each decision goes through `write`:
    due -> build copy -> verify -> replace -> record.

    `decision_made`: set after every review decision (the review page and the writer are
    given the same Event), so the writer writes now rather than at its next interval."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 interval: float = 2.0, batch: int = 50, first_backoff: float = BACKOFF_FIRST_S,
                 children: ExtractPool | None = None,
                 decision_made: threading.Event | None = None):
        self.live = as_live(config)
        # The service's child processes: each new version of a song is built there, so a
        # huge tag (a 150 MB cover) never enters the service. None: built in this process.
        self.children = children
        self.sessions = sessions
        self.interval = interval
        self.batch = batch
        self.first_backoff = first_backoff
        self.decision_made = decision_made or threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.health = Health("writer")
        # The worker's (the config's windows per song: clips, patches, embeddings) and the
        # trainer's (the specs' own window count), which are the same folders by default.
        windows = {self.config.classifier.windows_per_song, DEFAULT_SPEC.clips_per_song}
        self.caches = [SongInputs(self.config.cache_dir, WindowSpecs.for_windows(n))
                       for n in sorted(windows)]

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
        """Write now rather than at the next interval."""
        self.decision_made.set()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.decision_made.set()
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
            self.decision_made.wait(self.interval)
            self.decision_made.clear()

    # ---- the flow
    def run_once(self, now=None) -> WriteRound:
        """Write every decision that is due; returns how many were written / failed."""
        written = failed = 0
        for due in self.due(now):
            if self._stop.is_set():
                break
            try:
                self.write(due)
            except ChangedSinceWritten as err:
                self.record_left_alone(due, err.reason)
                log.warning("did not put back the genre of %s (decision %d): %s", due.path,
                            due.decision_id, err.reason)
            except FileError as err:
                self.record_failure(due, err.reason)
                failed += 1
                log.warning("could not write genre into %s (decision %d): %s; will retry",
                            due.path, due.decision_id, err.reason)
            else:
                written += 1
        return WriteRound(written, failed)

    def write(self, due: Due) -> None:
        """One decision into its file, the stages top to bottom. Raises FileError (the
        file then untouched): WriteFailed, TagError, ChangedSinceWritten."""
        if due.problem is not None:
            raise WriteFailed(due.path, due.problem)
        target = check_target(library_file(self.config.library.root, due.path))
        with new_version(target):
            copy = build_copy(target, due.change, self.children)
            st = verify(target, due.change, copy)
            self.record_expected(due, st)
            st = put_in_place(target)
        self.record_written(due, copy, st)
        log.info("%s %s (decision %d)", "put back the genre of" if due.restoring else
                 f"wrote genre {due.change.genre!r} into", due.path, due.decision_id)

    def due(self, now=None) -> list[Due]:
        """Decisions to write now, oldest first. A track's decision waits while an older
        one of the same track is still outstanding (an undo putting the file back, backing
        off after a failure): it must find the file as that one leaves it."""
        now = now or utcnow()
        older, undone = aliased(Decision), aliased(Decision)
        waiting = exists().where(older.track_id == Decision.track_id, older.id < Decision.id,
                                 older.write_status.in_(WRITE_OUTSTANDING),
                                 older.undone.is_(False))
        with self.sessions() as session:
            rows = session.execute(
                select(Decision, Track, undone.file_genre)
                .join(Track, Decision.track_id == Track.id)
                .outerjoin(undone, undone.id == Decision.undoes_id)
                .where(Decision.write_status.in_(WRITE_OUTSTANDING), Decision.undone.is_(False),
                       or_(Decision.next_write_at.is_(None), Decision.next_write_at <= now),
                       ~waiting)
                .order_by(Decision.id).limit(self.batch)).all()
            return [as_due(d, t, written, self.config.review.tag_mode)
                    for d, t, written in rows]

    # ---- the database's side
    def record_expected(self, due: Due, st: os.stat_result) -> None:
        """The new version's size and mtime, recorded before the rename: a reconcile in
        between already sees our write."""
        with transaction(self.sessions) as session:
            track = session.get(Track, due.track_id)
            track.written_size, track.written_mtime = st.st_size, st.st_mtime

    def record_written(self, due: Due, copy: Copy, st: os.stat_result) -> None:
        """The write done: the decision says so, with the genre read back from the file;
        the track gets the file's new size, mtime and fingerprint (its feature cache entry
        follows it)."""
        path = library_file(self.config.library.root, due.path)
        try:
            new_fp = fingerprint(path)
        except OSError:
            new_fp = None
        if due.fingerprint and new_fp and due.fingerprint != new_fp:
            try:
                for caches in self.caches:
                    caches.link(due.fingerprint, new_fp)
            except OSError as err:
                log.warning("feature cache relink %s -> %s failed: %s", due.fingerprint,
                            new_fp, err)
        with transaction(self.sessions) as session:
            # Locked (track, then decision: the order a review decision takes them), so
            # an undo committed while we wrote is seen below, not overwritten.
            track = locked(session, Track, due.track_id)
            decision = locked(session, Decision, due.decision_id)
            decision.write_status = WriteStatus.WRITTEN
            decision.write_error = None
            decision.next_write_at = None
            decision.write_attempts += 1
            track.size = track.written_size = st.st_size
            track.mtime = track.written_mtime = st.st_mtime
            if new_fp:
                track.fingerprint = new_fp
            decision.file_genre = MULTI_VALUE_SEPARATOR.join(copy.genres)
            if copy.before is not None:
                decision.file_fields_before = copy.before
            if due.restoring:
                # The file holds the station's own genre again: the track says so, read
                # from the file rather than assumed.
                track.raw_genre = decision.file_genre or None
                track.canonical_genre = (self.live.genre_map.canonical_for(copy.genres)
                                         if copy.genres else None)
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

    def record_left_alone(self, due: Due, reason: str) -> None:
        with transaction(self.sessions) as session:
            decision = locked(session, Decision, due.decision_id)
            decision.write_attempts += 1
            decision.write_status = WriteStatus.NONE  # nothing to retry: the station's call
            decision.write_error = f"the file was not put back: {reason}"
            decision.next_write_at = None

    def record_failure(self, due: Due, reason: str) -> None:
        with transaction(self.sessions) as session:
            decision = locked(session, Decision, due.decision_id)
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
