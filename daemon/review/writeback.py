"""The one component that changes the station's files: accepted genres into their tags.

`write_genre_atomically` never leaves a half-written song: it copies the file inside its
own folder under a hidden temp name, sets the genre on the copy (`daemon.tags.tagfile.set_genre`,
which keeps the ID3 version and the other tags), fsyncs it, re-reads and checks the tag,
gives it the original's permissions, extended attributes (and owner, when running as
root) and renames it over the original (atomic within one filesystem), then fsyncs the
folder. A file with several hard links is refused (a new file would split them). A crash at any
moment leaves either the old file or the new one, plus at worst a hidden temp file,
which a later library walk removes (`daemon.library.reconcile.remove_leftovers`).

`Writer` is the background component that works through decisions whose genre still has
to reach the file (`write_status` pending or failed): a file it cannot write (read-only,
drive offline, file vanished) keeps the decision "accepted, not yet written" with the
reason in `write_error`, retried with exponential backoff. After a write it records the
new size/mtime as `written_size`/`written_mtime` (so the reconcile recognises our own
change and does not re-queue the file), updates the fingerprint and relinks the feature
cache entry to it (so retraining never decodes the song again).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Decision, Track, utcnow
from daemon.core.durable import fsync_dir, fsync_file
from daemon.core.errors import FileError, TagError, os_reason
from daemon.core.health import Health, thread_alive
from daemon.core.live import Live, as_live
from daemon.core.paths import OutsideLibrary, library_file  # noqa: F401 - OutsideLibrary: re-exported
from daemon.core.retry import backoff
from daemon.core.states import WRITE_OUTSTANDING, Action, TrackState, WriteStatus
from daemon.library.reconcile import WRITER_TEMP_MARK

log = logging.getLogger(__name__)

TEMP_SUFFIX = WRITER_TEMP_MARK
BACKOFF_FIRST_S = 30.0
BACKOFF_MAX_S = 6 * 3600.0


class WriteFailed(FileError):
    """The genre could not be written into the file; `reason` says why (retried later)."""


# A name the filesystem takes: NAME_MAX is 255 bytes on every filesystem a station uses.
NAME_MAX = 255
EXTENSION_MAX = 16


def temp_path(path: Path) -> Path:
    """The hidden sibling the new version is built in: the library walk and the watcher
    skip hidden files; the mark lets the walk remove one left by a crash; the extension
    stays last because mutagen weighs it. A digest of the name instead of the name itself,
    so the temp name fits NAME_MAX even beside a 255-byte song name."""
    digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= EXTENSION_MAX else ""
    return path.with_name(f".{digest}{TEMP_SUFFIX}{suffix}")


def copy_xattrs(source: Path, target: Path) -> None:
    """Give `target` every extended attribute of `source` (Finder tags and comments,
    backup and indexer marks, ACLs). Nothing to copy on a filesystem without them; an
    attribute that cannot be set is an OSError, except SELinux labels (the new file gets
    its folder's label, as any new file does)."""
    try:
        names = os.listxattr(source)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        try:
            os.setxattr(target, name, os.getxattr(source, name))
        except OSError:
            if name.startswith("security."):
                continue
            raise


def write_genre_atomically(path: Path | str, genre: str,
                           mode: Literal["replace", "add"] = "replace", *,
                           before_replace: Callable[[os.stat_result], None] | None = None
                           ) -> os.stat_result:
    """Write `genre` into `path`'s tag atomically; returns the new file's stat.

    `before_replace(stat)` is called with the finished copy's stat just before it is
    renamed over the original (a rename keeps size and mtime), so the caller can record
    the write before any observer can see the new file.
    Raises WriteFailed (file missing, read-only, drive trouble, changed while we wrote)
    or TagError (the tag could not be set or did not read back); the original is then
    untouched and no temp file is left.
    """
    from daemon.tags.tagfile import read_tags, set_genre

    path = Path(path)
    genre = genre.strip()
    try:
        # Write the real file, not a symlink pointing at it (the link stays a link).
        real = path.resolve(strict=True)
        before = os.stat(real)
    except FileNotFoundError:
        raise WriteFailed(path, "the file is gone") from None
    except OSError as err:
        raise WriteFailed(path, os_reason(err)) from None
    if not os.access(real, os.W_OK) or not before.st_mode & 0o222:
        # Rename would succeed in a writable folder (and root may write anything); a song
        # marked read-only is the station's call, not ours.
        raise WriteFailed(path, "the file is read-only")
    if before.st_nlink > 1:
        # The new version is a new file: renamed over this name, it would leave the song's
        # other names (hard links) pointing at the old version.
        raise WriteFailed(path, f"the file has {before.st_nlink} hard links (names on the "
                          "drive); writing it would split them, so it is left as it is")
    tmp = temp_path(real)
    try:
        shutil.copyfile(real, tmp)
        copy_xattrs(real, tmp)
        set_genre(tmp, genre, mode)
        if os.geteuid() == 0:
            os.chown(tmp, before.st_uid, before.st_gid)
        os.chmod(tmp, before.st_mode & 0o7777)  # after chown, which may clear setgid
        fsync_file(tmp)
        genres = read_tags(tmp).genres
        ok = genre in genres if mode == "add" else genres == (genre,)
        if not ok:
            raise TagError(path, f"wrote genre {genre!r} but the file reads back {genres!r}")
        now = os.stat(real)
        if (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise WriteFailed(path, "the file changed while its tag was being written")
        if before_replace is not None:
            before_replace(os.stat(tmp))
        os.replace(tmp, real)
        fsync_dir(real.parent)
        return os.stat(real)
    except TagError as err:
        # set_genre/read_tags name the temp copy; the station knows the song.
        raise TagError(path, err.reason) from None
    except OSError as err:
        raise WriteFailed(path, os_reason(err)) from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove temp file %s: %s", tmp, err)


@dataclass(frozen=True)
class WriteRound:
    written: int = 0
    failed: int = 0


class Writer:
    """Background writer of decided genres into files. start() / close(); run_once() is
    one pass and is what tests call directly."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 interval: float = 2.0, batch: int = 50, first_backoff: float = BACKOFF_FIRST_S):
        self.live = as_live(config)
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
        now = now or utcnow()
        return [(d, t) for d, t in session.execute(
            select(Decision, Track).join(Track, Decision.track_id == Track.id)
            .where(Decision.write_status.in_(WRITE_OUTSTANDING), Decision.undone.is_(False),
                   or_(Decision.next_write_at.is_(None), Decision.next_write_at <= now))
            .order_by(Decision.id).limit(self.batch)).all()]

    def run_once(self, now=None) -> WriteRound:
        """Write every decision that is due; returns how many were written / failed."""
        with self.sessions() as session:
            due = [(d.id, d.genre, d.action, t.id, t.path, t.state)
                   for d, t in self.due(session, now)]
        written = failed = 0
        for decision_id, genre, action, track_id, rel, state in due:
            if self._stop.is_set():
                break
            mode = "replace" if action == Action.UNDO else self.config.review.tag_mode
            try:
                if state == TrackState.MISSING:
                    raise WriteFailed(rel, "the file is missing from the library")
                if genre is None:
                    raise WriteFailed(rel, "decision has no genre to write")
                path = library_file(self.config.library.root, rel)
                old_fp = self._current_fingerprint(track_id)
                st = write_genre_atomically(
                    path, genre, mode,
                    before_replace=lambda new, tid=track_id: self._expect_write(tid, new))
                self._record_written(decision_id, track_id, path, st, old_fp)
                written += 1
                log.info("wrote genre %r into %s (decision %d)", genre, rel, decision_id)
            except FileError as err:
                self._record_failure(decision_id, err.reason)
                failed += 1
                log.warning("could not write genre into %s (decision %d): %s; will retry",
                            rel, decision_id, err.reason)
        return WriteRound(written, failed)

    def _current_fingerprint(self, track_id: int) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Track.fingerprint).where(Track.id == track_id))

    def _feature_cache(self):
        if self._cache is None:
            from daemon.audio.featurecache import FeatureCache
            from daemon.audio.features import DEFAULT_SPEC

            self._cache = FeatureCache(self.config.cache_dir, DEFAULT_SPEC)
        return self._cache

    def _expect_write(self, track_id: int, st: os.stat_result) -> None:
        # Recorded before the rename: a reconcile in between already sees our write.
        with transaction(self.sessions) as session:
            track = session.get(Track, track_id)
            track.written_size, track.written_mtime = st.st_size, st.st_mtime

    def _record_written(self, decision_id: int, track_id: int, path: Path,
                        st: os.stat_result, old_fp: str | None) -> None:
        from daemon.library.fingerprint import fingerprint

        try:
            new_fp = fingerprint(path)
        except OSError:
            new_fp = None
        if old_fp and new_fp and old_fp != new_fp:
            try:
                self._feature_cache().link(old_fp, new_fp)
            except OSError as err:
                log.warning("feature cache relink %s -> %s failed: %s", old_fp, new_fp, err)
        with transaction(self.sessions) as session:
            decision = session.get(Decision, decision_id)
            track = session.get(Track, track_id)
            decision.write_status = WriteStatus.WRITTEN
            decision.write_error = None
            decision.next_write_at = None
            decision.write_attempts += 1
            track.size = track.written_size = st.st_size
            track.mtime = track.written_mtime = st.st_mtime
            if new_fp:
                track.fingerprint = new_fp
            if decision.undone:
                # Undone while we were writing: the undo found nothing written, so it
                # must now put the previous genre back.
                self._restore_after_late_undo(session, decision)

    def _restore_after_late_undo(self, session: Session, decision: Decision) -> None:
        undo_row = session.scalar(select(Decision).where(Decision.undoes_id == decision.id))
        if undo_row is None or decision.previous_genre is None:
            return
        undo_row.genre = decision.previous_genre
        undo_row.write_status = (WriteStatus.PENDING if self.config.review.write_tags
                                 else WriteStatus.OFF)
        undo_row.write_error = None

    def _record_failure(self, decision_id: int, reason: str) -> None:
        with transaction(self.sessions) as session:
            decision = session.get(Decision, decision_id)
            if decision.undone or decision.write_status not in WRITE_OUTSTANDING:
                return  # undone or replaced meanwhile: nothing left to retry
            decision.write_attempts += 1
            decision.write_status = WriteStatus.FAILED
            decision.write_error = reason
            decision.next_write_at = utcnow() + timedelta(
                seconds=backoff(decision.write_attempts, self.first_backoff, BACKOFF_MAX_S))
