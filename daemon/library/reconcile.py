"""The Library component: the station's library and its tracks in the database.

    reconcile   walk the library (stat only, daemon.library.walk) and compare each file's
                (size, mtime) with the database (a quarantined file's ctime too: a chmod
                or chown may have fixed it): new and changed files go into settle
                tracking, vanished ones become `missing` -- unless the mount-loss guard
                (daemon.library.mounts) holds
    notice      the watcher reports one path; it goes into settle tracking
    settle_due  files whose size and mtime have not moved for `settle_seconds` go through
                the stages of daemon.library.settle: looked at, sorted out against their
                tracks, read (fingerprint, tags, audio header -- in a child process,
                daemon.library.read) and recorded (daemon.library.record): a new track, a
                changed track re-evaluated, or a moved track found again by its
                fingerprint (keeping its suggestions and decisions)

The mount-loss guard: when the root is missing or has no audio files while the database
knows some, or more than `missing_guard` of the known files vanish in one walk (or in
one wave of deletions reported by the watcher), nothing is marked missing; one loud log
line says so and the next walk tries again.

Paths. Tracks are stored relative to the root in the stored form of daemon.core.paths
(one-to-one with the bytes on disk; `stored_path` / `filesystem_path` convert).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import ServiceState, Track, utcnow
from daemon.core.health import Health
from daemon.core.paths import display, relative_inside, stored_path
from daemon.core.states import TrackState, can_move
from daemon.library.known import KNOWN_COLUMNS, Known, compare, known_tracks
from daemon.library.mounts import ROOT_MISSING, has_entries, log_mount_loss, mount_loss
from daemon.library.read import READER_IDLE_SECONDS, reader_pool
from daemon.library.record import mark_missing, record_readings, sweep_song_rules
from daemon.library.settle import (
    Readings,
    SettleTracker,
    Sorted,
    look,
    read_settled,
    sort_out,
)
from daemon.library.walk import (
    SKIPPED_SHOWN,
    is_library_file,
    is_library_folder,
    remove_leftovers,
    skipped_list,
    walk_library,
)
from daemon.tags.genres import GenreMap
from daemon.tags.live import Live, as_live

log = logging.getLogger(__name__)

S = TrackState

# Files read and written per database transaction while settling.
SETTLE_BATCH = 200
STATE_KEY = "last_reconcile"


@dataclass(frozen=True)
class ReconcileResult:
    """Counts from one reconciliation walk.

    files: library files found; new/changed: put into settle tracking (read once
    settled); ours: changed by our own tag write (recorded, not re-read); missing: marked
    missing; vanished: known files not found (missing unless guarded); guarded: the
    mount-loss guard held (reason says why); error: the database write failed (retried
    at the next walk); skipped: entries with a song's name that are not songs inside the
    library (folders, FIFOs, sockets, devices, broken links, loops, links leading
    outside), the first SKIPPED_SHOWN of them in skipped_files as {"path", "reason"};
    unreadable_folders: folders inside the library that could not be listed (the first
    SKIPPED_SHOWN; their songs are not marked missing), relative, ending in "/".
    """

    root: str
    files: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    ours: int = 0
    vanished: int = 0
    missing: int = 0
    known: int = 0
    guarded: bool = False
    reason: str | None = None
    error: str | None = None
    seconds: float = 0.0
    skipped: int = 0
    skipped_files: list = field(default_factory=list)
    unreadable_folders: list = field(default_factory=list)


class Library:
    """The station's library and its tracks in the database.

    `reconcile()` (start-up and every reconcile_minutes), `notice(path)` (watcher
    events) and `settle_due()` (about once a second) may run on different threads: one
    lock serialises the database work, another guards the settle tracker, so `notice`
    never waits for a walk. Times passed as `now` are time.monotonic() seconds.
    """

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session],
                 genre_map: GenreMap | None = None, readers: ExtractPool | None = None):
        self.live = as_live(config, genre_map)
        config = self.live.config
        # The child processes settled files are read in (the service shares its pool with
        # the review page); without one, the library starts and owns its own.
        self._own_readers = readers is None
        self.readers = readers if readers is not None else reader_pool(config)
        self.sessions = sessions
        self.root = os.path.abspath(os.fspath(config.library.root))
        self.extensions = tuple(config.library.extensions)
        self.tracker = SettleTracker()
        self.files_read = 0  # settled files read (fingerprint + tags + header) so far
        self.real_root = os.path.realpath(self.root)
        self._skips_logged: dict[str, str] = {}  # logged once each, until the reason changes
        self._tracker_lock = threading.Lock()
        self._db_lock = threading.Lock()
        self.settle_health = Health("settle")  # settle_due's record, for the settle thread

    @property
    def config(self) -> Config:
        return self.live.config

    @property
    def genre_map(self) -> GenreMap:
        return self.live.genre_map

    # ------------------------------------------------------------ watcher side

    def relpath(self, path: str) -> str | None:
        """Absolute path from an event -> relative library path, or None when it is not a
        library file (outside the root, hidden, temporary, not audio)."""
        rel = relative_inside(self.root, path)
        if rel is None:
            return None
        *folders, name = rel.split("/")
        if not all(is_library_folder(f) for f in folders):
            return None
        return rel if is_library_file(name, self.extensions) else None

    def notice(self, path: str, now: float | None = None) -> bool:
        """A watcher saw `path` (absolute) appear, change or go: track it until it settles.
        Cheap (one stat) and never raises; False when the path is not a library file."""
        rel = self.relpath(path)
        if rel is None:
            return False
        size = mtime = None
        try:
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):
                size, mtime = st.st_size, st.st_mtime
        except OSError:
            pass  # gone: settle_due decides once it has stayed gone
        with self._tracker_lock:
            self.tracker.observe(rel, size, mtime, _now(now))
        return True

    def close(self) -> None:
        """Stop the tag-reader children, if this library started them."""
        if self._own_readers:
            self.readers.close()

    @property
    def settling(self) -> int:
        """How many paths are waiting to settle."""
        with self._tracker_lock:
            return len(self.tracker)

    # --------------------------------------------------------------- reconcile

    def reconcile(self, now: float | None = None) -> ReconcileResult:
        """Walk the library and compare it with the database (see the module docstring).

        Returns the counts; never raises for a missing root or a locked database (the
        result says so and the next walk retries).
        """
        now = _now(now)
        started = time.perf_counter()
        with self._db_lock:
            result = self._reconcile(now)
        result = _with_seconds(result, time.perf_counter() - started)
        unrecorded = self._record(result)
        if unrecorded and not result.error:
            # The walk itself went through, but nobody can see it did: a failed walk too.
            result = _replace(result, error=f"cannot record the result: {unrecorded}")
        return result

    def _reconcile(self, now: float) -> ReconcileResult:
        root = self.root
        try:
            known = self._loadknown_tracks()
        except OperationalError as err:
            log.error("reconcile %s: database unavailable, retrying at the next walk: %s",
                      root, _brief(err))
            return ReconcileResult(root, error=_brief(err))
        present = {p: k for p, k in known.items() if k.state != S.MISSING}

        lost = ReconcileResult(root, known=len(present), vanished=len(present))
        if not os.path.isdir(root):
            return self._guard(lost, ROOT_MISSING)
        try:
            walk = walk_library(root, self.extensions)
        except OSError as err:
            return self._guard(lost, f"library root cannot be read: {err.strerror or err}")

        remove_leftovers(walk.leftovers)
        self._log_skipped(walk.skipped)
        new = changed = unchanged = 0
        ours: list[dict] = []
        with self._tracker_lock:
            for rel, st in walk.files.items():
                change = compare(known.get(rel), st, os.path.join(root, rel))
                if change == "unchanged":
                    unchanged += 1
                elif change == "ours":
                    ours.append({"id": known[rel].id, "size": st[0], "mtime": st[1]})
                else:  # new or changed: read once it has settled
                    self.tracker.observe(rel, st[0], st[1], now)
                    if change == "new":
                        new += 1
                    else:
                        changed += 1

        unread = tuple(walk.unreadable)  # "folder/" prefixes we could not look into
        vanished = [k.id for p, k in present.items()
                    if p not in walk.files and not (unread and p.startswith(unread))]
        result = ReconcileResult(root, files=len(walk.files), unchanged=unchanged, new=new,
                                 changed=changed, ours=len(ours), vanished=len(vanished),
                                 known=len(present), skipped=len(walk.skipped),
                                 skipped_files=skipped_list(walk.skipped),
                                 unreadable_folders=list(walk.unreadable[:SKIPPED_SHOWN]))
        reason = mount_loss(root, len(vanished), len(present), self.config.library.missing_guard,
                            empty=not walk.files, at_once="vanished in one walk")
        if reason:
            result = self._guard(result, reason)
            vanished = []

        try:
            missing = self._write_reconcile(ours, vanished)
            sweep_song_rules(self.sessions, self.config)  # exclude/min_song_seconds edited?
        except OperationalError as err:
            log.error("reconcile %s: database write failed, retrying at the next walk: %s",
                      root, _brief(err))
            return _replace(result, error=_brief(err))
        return _replace(result, missing=missing)

    def _loadknown_tracks(self) -> dict[str, Known]:
        # One query, compared in Python: 15,000 rows take a few tens of milliseconds.
        with self.sessions() as session:
            return known_tracks(session.execute(select(*KNOWN_COLUMNS)))

    def _guard(self, result: ReconcileResult, reason: str) -> ReconcileResult:
        log_mount_loss(reason, self.root, result.vanished, result.known,
                       f"not found, {result.files} found")
        return _replace(result, guarded=True, reason=reason)

    def _write_reconcile(self, ours: list[dict], vanished: list[int]) -> int:
        """Record our own writes' stats and mark vanished tracks missing, in one
        transaction. Returns how many tracks became missing."""
        if not ours and not vanished:
            return 0
        with transaction(self.sessions) as session:
            if ours:
                session.execute(update(Track), ours)
            gone = [track for chunk in _chunks(vanished, 500)
                    for track in session.scalars(select(Track).where(Track.id.in_(chunk)))
                    if track.state != S.MISSING and can_move(track.state, S.MISSING)]
            mark_missing(session, gone)
        missing = len(gone)
        if missing:
            log.info("marked %d track(s) missing under %s", missing, self.root)
        return missing

    def _record(self, result: ReconcileResult) -> str | None:
        """Publish the walk's counts as ServiceState "last_reconcile" (for `status`).
        Returns why that failed, or None."""
        level = logging.WARNING if result.guarded or result.error else logging.INFO
        log.log(level, "reconcile %s: %d files, %d new, %d changed, %d ours, %d missing%s "
                "in %.2f s", result.root, result.files, result.new, result.changed,
                result.ours, result.missing, " (guarded)" if result.guarded else "",
                result.seconds)
        detail = {**asdict(result), "at": utcnow().isoformat()}
        try:
            with transaction(self.sessions) as session:
                session.merge(ServiceState(key=STATE_KEY, value=detail, updated_at=utcnow()))
        except OperationalError as err:
            log.error("cannot record the reconcile result: %s", _brief(err))
            return _brief(err)
        return None

    def _log_skipped(self, skipped: dict[str, str], forget: bool = True) -> None:
        """One log line per skipped entry (again only when its reason changes). forget:
        `skipped` is a whole walk's, so entries no longer in it may be logged again."""
        fresh = {rel: why for rel, why in skipped.items()
                 if self._skips_logged.get(rel) != why}
        for rel, why in list(fresh.items())[:SKIPPED_SHOWN]:
            log.warning("skipped %s: %s", display(os.path.join(self.root, rel)), why)
        if len(fresh) > SKIPPED_SHOWN:
            log.warning("skipped %d more entries that are not songs (`status` counts them)",
                        len(fresh) - SKIPPED_SHOWN)
        if forget:
            self._skips_logged = dict(skipped)
        else:
            self._skips_logged.update(skipped)

    # ----------------------------------------------------------------- settling

    def settle_due(self, now: float | None = None, limit: int | None = None) -> int:
        """Read the files that have settled and write them to the database.

        Returns how many tracks were created, updated, moved or marked missing. A file
        that changed since it was last seen starts waiting again; a file that vanished
        before settling is forgotten. On a database error nothing is forgotten: the
        same files are tried again on the next call.
        """
        now = _now(now)
        with self._tracker_lock:
            due = self.tracker.due(now, self.config.library.settle_seconds, limit)
        if not due:
            self.readers.retire_idle(READER_IDLE_SECONDS)
            return 0  # nothing settled yet: neither progress nor a failure
        with self._db_lock:
            done, failed = 0, False
            for batch in _chunks(due, SETTLE_BATCH):
                try:
                    done += self._settle(batch, now)
                except OperationalError as err:
                    log.error("settling %d file(s): database unavailable, retrying on the "
                              "next tick: %s", len(batch), _brief(err))
                    self.settle_health.failed(err)
                    return done
                except Exception as err:
                    # A bug must not make the same batch fail every second forever: drop
                    # it; the next reconcile walk notices these files again.
                    log.exception("settling %d file(s) failed; the next walk retries them: "
                                  "%s", len(batch), ", ".join(batch[:5]))
                    self.settle_health.failed(err)
                    failed = True
                    with self._tracker_lock:
                        for rel in batch:
                            self.tracker.forget(rel)
            if not failed:
                self.settle_health.progress()
            return done

    def _settle(self, batch: list[str], now: float) -> int:
        """One batch of settled paths through the stages of daemon.library.settle, top to
        bottom. Returns how many tracks were created, updated, moved or marked missing."""
        looks = look(self.root, self.real_root, batch)
        self._log_skipped({seen.rel: seen.skipped for seen in looks if seen.skipped},
                          forget=False)
        with self._tracker_lock:
            looks = self.tracker.unchanged(looks, now)
        known = self._rows_for([seen.rel for seen in looks])
        settled = sort_out(looks, known, self.root)
        readings = read_settled(settled.to_read, self.root, self.readers)
        self.files_read += len(settled.to_read)
        for rel in readings.moving:  # changed or vanished while read: look again
            with self._tracker_lock:
                self.tracker.forget(rel)
            self.notice(os.path.join(self.root, rel), now)
        done = self._record_settled(settled, readings)
        with self._tracker_lock:
            for rel in (*settled.unchanged, *(rel for rel, _, _ in settled.ours),
                        *readings.read, *settled.gone):
                self.tracker.forget(rel)
        return done

    def _record_settled(self, settled: Sorted, readings: Readings) -> int:
        """The record stage: our own writes' stats, the files read and the settled
        deletions, in one transaction."""
        with transaction(self.sessions) as session:
            if settled.ours:
                session.execute(update(Track), [{"id": id_, "size": st[0], "mtime": st[1]}
                                                for _, id_, st in settled.ours])
            record_readings(session, readings.read, root=self.root,
                            genre_map=self.genre_map, audit=self.config.classifier.audit,
                            rules=self.config.library.song_rules)
            session.flush()  # moved tracks have their new paths before deletions are looked up
            return len(readings.read) + self._mark_gone(session, list(settled.gone))

    def _rows_for(self, rels: list[str]) -> dict[str, Known]:
        rows = {}
        with self.sessions() as session:
            for chunk in _chunks([stored_path(r) for r in rels], 500):
                rows.update(known_tracks(session.execute(
                    select(*KNOWN_COLUMNS).where(Track.path.in_(chunk)))))
        return rows

    def _mark_gone(self, session: Session, gone: list[str]) -> int:
        """Mark the tracks of settled deletions missing, unless the mount-loss guard holds
        (then the next walk looks again). Returns how many became missing."""
        if not gone:
            return 0
        tracks = []
        for chunk in _chunks([stored_path(r) for r in gone], 500):
            tracks += session.scalars(select(Track).where(
                Track.path.in_(chunk), Track.state != S.MISSING)).all()
        if not tracks:
            return 0  # never in the database: forgotten quietly
        present = session.scalar(select(func.count()).select_from(Track)
                                 .where(Track.state != S.MISSING)) or 0
        # Deletions settle in batches: judge the whole wave, not one batch of it.
        with self._tracker_lock:
            wave = max(len(tracks), self.tracker.gone())
        reason = mount_loss(self.root, wave, present, self.config.library.missing_guard,
                            empty=not has_entries(self.root), at_once="were deleted at once")
        if reason:
            log_mount_loss(reason, self.root, wave, present, "reported gone")
            with self._tracker_lock:
                self.tracker.forget_gone()  # the whole wave; the next walk judges it
            return 0
        mark_missing(session, tracks)
        log.info("missing: %s", ", ".join(t.path for t in tracks[:5])
                 + (f" and {len(tracks) - 5} more" if len(tracks) > 5 else ""))
        return len(tracks)


# ---------------------------------------------------------------------- helpers


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _brief(err: Exception) -> str:
    return str(getattr(err, "orig", None) or err).splitlines()[0]


def _replace(result: ReconcileResult, **changes) -> ReconcileResult:
    return ReconcileResult(**{**asdict(result), **changes})


def _with_seconds(result: ReconcileResult, seconds: float) -> ReconcileResult:
    return _replace(result, seconds=round(seconds, 3))
