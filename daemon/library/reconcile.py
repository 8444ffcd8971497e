"""Finding files: walk the library, reconcile it with the database, settle new files.

    reconcile   walk the library (stat only) and compare each file's (size, mtime) with
                the database: new and changed files go into settle tracking, vanished
                ones become `missing` -- unless the mount-loss guard holds
    notice      the watcher reports one path; it goes into settle tracking
    settle_due  files whose size and mtime have not moved for `settle_seconds` are read
                (fingerprint, tags, audio header -- in a child process, see read_file)
                and written to the database: a new track, a changed track re-evaluated,
                or a moved track found again by its fingerprint (keeping its suggestions
                and decisions)

Both the reconcile walk and watcher events feed the same SettleTracker, so a song still
being copied onto the drive is never read half-written, however it was noticed.

The mount-loss guard: when the root is missing or has no audio files while the database
knows some, or more than `missing_guard` of the known files vanish in one walk (or in
one wave of deletions reported by the watcher), nothing is marked missing; one loud log
line says so and the next walk tries again. A dropped SMB mount must not wipe the
database.

Paths. Tracks are stored relative to the root in the stored form of daemon.core.paths (one-to-one
with the bytes on disk): `db_path` / `fs_path` convert, `library_file(root, track.path)`
opens. `root / track.path` is the same for every valid UTF-8 name without a backslash.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.decode import AudioInfo
from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import ServiceState, Suggestion, Track, utcnow
from daemon.core.errors import FileError
from daemon.core.health import Health
from daemon.core.live import Live, as_live
from daemon.core.paths import display, filesystem_path, is_inside, stored_path
from daemon.core.states import SuggestionStatus, TrackState, can_move, move
from daemon.tags.genres import GenreMap
from daemon.tags.tagfile import MULTI_VALUE_SEPARATOR, TrackTags

log = logging.getLogger(__name__)

S = TrackState

# Files still being written by a download/copy tool, or editor backups.
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", "~")
# The tag writer builds each new version of a song in a hidden sibling whose name has this
# mark (daemon.review.writeback.temp_path). One left by an interrupted write (power cut, SIGKILL) is
# removed by the next walk once it is this old; a write holds it for seconds.
WRITER_TEMP_MARK = ".genretagger-tmp"
LEFTOVER_SECONDS = 3600.0
# NAS housekeeping folders: a file deleted on a Synology share is moved into #recycle,
# and must not look like a move there.
SKIPPED_FOLDERS = frozenset({
    "@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information",
    "lost+found",
})
# A tiny difference in how a float mtime was produced (st_mtime vs st_mtime_ns / 1e9)
# is not a change.
MTIME_TOLERANCE = 1e-6
# Files read and written per database transaction while settling.
SETTLE_BATCH = 200
# Skipped entries listed in the reconcile result (`status`); the count covers them all.
SKIPPED_SHOWN = 50
STATE_KEY = "last_reconcile"
# Settled files come in bursts (a walk, an album copied in): the tag-reader child goes
# once a burst is read, so it does not sit beside the decoders through the decoding that
# follows (~25 MB). A new one starts from the fork server in a fraction of a second.
READER_IDLE_SECONDS = 5.0

Stat = tuple[int, float]  # (size, mtime)


# ------------------------------------------------------------------------ paths


def db_path(relpath: str) -> str:
    """A relative path from the OS (surrogateescape str) -> the text stored in Track.path."""
    return stored_path(relpath)


def fs_path(stored: str) -> str:
    """Track.path -> the relative path the OS knows (the inverse of db_path)."""
    return filesystem_path(stored)


def library_file(root: Path | str, stored: str) -> Path:
    """The absolute file of a track: library root + Track.path (unchecked; the writer and
    the review page use daemon.core.paths.library_file, which checks it stays inside)."""
    return Path(root) / fs_path(stored)


def is_library_folder(name: str) -> bool:
    """Whether a folder of this name is walked (hidden and NAS housekeeping ones are not)."""
    return not name.startswith(".") and name not in SKIPPED_FOLDERS


def is_library_file(name: str, extensions: Iterable[str]) -> bool:
    """Whether a file of this name can be a song: an audio extension, and not hidden
    (which covers macOS `._*` and rsync's `.name.XXXXXX`) nor temporary/partial."""
    lower = name.lower()
    if name.startswith(".") or lower.endswith(TEMP_SUFFIXES):
        return False
    return lower.endswith(tuple(extensions))


# ------------------------------------------------------------------------- walk


@dataclass
class Walk:
    """What one walk found: relative path -> (size, mtime), and folders it could not read
    (their known files are not "missing": we did not look)."""

    files: dict[str, Stat] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # the writer's temp copies (paths)
    skipped: dict[str, str] = field(default_factory=dict)  # song names that are not songs


# Why an entry with a song's name is not read (`status`, `scan`, the log say so).
NOT_A_SONG = {
    stat.S_IFDIR: "is a directory, not an audio file",
    stat.S_IFIFO: "not a regular file: a pipe (FIFO)",
    stat.S_IFSOCK: "not a regular file: a socket",
    stat.S_IFCHR: "not a regular file: a device",
    stat.S_IFBLK: "not a regular file: a device",
}
LINK_LOOP = "symlink loop"
LINK_BROKEN = "broken symlink (what it points to is gone)"
LINK_OUTSIDE = "leads outside the library"


def examine(entry: os.DirEntry | str, real_root: str) -> tuple[Stat | None, str | None]:
    """A song-named entry (DirEntry, or absolute path) -> ((size, mtime), None) when it is
    a regular file inside the library, else (None, why it is skipped); (None, None) when
    it is gone. Only stats and resolves names: nothing is opened, so a link to a FIFO or
    a device outside the library never blocks and is never read."""
    path = entry.path if isinstance(entry, os.DirEntry) else entry
    try:
        is_link = (entry.is_symlink() if isinstance(entry, os.DirEntry)
                   else stat.S_ISLNK(os.lstat(path).st_mode))
        st = entry.stat() if isinstance(entry, os.DirEntry) else os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, LINK_LOOP
        return (None, LINK_BROKEN) if _is_link(path) else (None, None)
    if is_link and not is_inside(real_root, path):
        return None, LINK_OUTSIDE
    if stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime), None
    return None, NOT_A_SONG.get(stat.S_IFMT(st.st_mode), "not a regular file")


def _is_link(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def library_folders(root: Path | str, unlistable: list[str],
                    skipped: dict[str, str] | None = None,
                    ) -> Iterator[tuple[str, list[os.DirEntry]]]:
    """(relative folder path ending in "/" or "", its entries) for every library folder.

    The one traversal the daemon's walk and `scan` share. Symlinked folders are followed
    once: a folder already walked (same device and inode) is skipped, so a link loop or a
    second link to the same folder adds nothing. A folder link leading outside the
    library is not followed (recorded in `skipped`, relative path -> reason). Folders
    that cannot be listed are appended to `unlistable`; raises OSError only when the
    root itself cannot be listed.
    """
    real_root = os.path.realpath(root)
    visited: set[tuple[int, int]] = set()
    stack = [("", os.fspath(root))]
    while stack:
        rel, folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                continue
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as err:
            if not rel:
                raise
            log.warning("cannot list %s: %s", folder, err.strerror or err)
            unlistable.append(rel)
            continue
        for entry in entries:
            try:
                if entry.is_dir() and is_library_folder(entry.name):
                    if entry.is_symlink() and not is_inside(real_root, entry.path):
                        if skipped is not None:
                            skipped[rel + entry.name] = LINK_OUTSIDE
                        continue
                    stack.append((f"{rel}{entry.name}/", entry.path))
            except OSError:
                pass  # gone since the listing
        yield rel, entries


def walk_library(root: Path | str, extensions: Iterable[str]) -> Walk:
    """Stat every library file under `root` (os.scandir, no file is opened). Entries
    with a song's name that are not songs inside the library go into `skipped`."""
    extensions = tuple(extensions)
    real_root = os.path.realpath(root)
    walk = Walk()
    for rel, entries in library_folders(root, walk.unreadable, walk.skipped):
        for entry in entries:
            if not is_library_file(entry.name, extensions):
                if entry.name.startswith(".") and WRITER_TEMP_MARK in entry.name:
                    walk.leftovers.append(entry.path)
                continue
            seen, reason = examine(entry, real_root)
            if seen is not None:
                walk.files[rel + entry.name] = seen
            elif reason is not None:
                walk.skipped[rel + entry.name] = reason
    return walk


def skipped_list(skipped: dict[str, str]) -> list[dict[str, str]]:
    """The first SKIPPED_SHOWN skipped entries as {"path": display form, "reason"}."""
    return [{"path": display(rel), "reason": why}
            for rel, why in sorted(skipped.items())[:SKIPPED_SHOWN]]


def remove_leftovers(paths: Iterable[str], older_than: float = LEFTOVER_SECONDS) -> int:
    """Delete the tag writer's temp copies older than `older_than` seconds (an interrupted
    write left them; the song itself is intact). Returns how many were removed."""
    cutoff = time.time() - older_than
    removed = 0
    for path in paths:
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
                continue
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("could not remove %s, a temp copy left by an interrupted tag write: "
                        "%s", path, err.strerror or err)
            continue
        removed += 1
        log.warning("removed %s: a temp copy left by an interrupted tag write", path)
    return removed


# --------------------------------------------------------------------- settling


@dataclass
class _Sighting:
    stat: Stat | None  # None: the path was gone when last looked at
    since: float


class SettleTracker:
    """Which paths have kept the same (size, mtime) for `settle_seconds`.

    Pure bookkeeping with times passed in (no clock, no I/O, not thread-safe):
    `observe` records what a path looks like now, `due` lists the paths that have
    looked the same for long enough, `forget` drops a path once it has been handled.
    """

    def __init__(self, settle_seconds: float):
        self.settle_seconds = settle_seconds
        self._seen: dict[str, _Sighting] = {}

    def observe(self, relpath: str, size: int | None, mtime: float | None,
                now: float) -> bool:
        """Record a sighting (size/mtime None: the path is gone). True when the clock
        (re)started: the path is new here or looks different from its last sighting."""
        seen = None if size is None or mtime is None else (size, mtime)
        old = self._seen.get(relpath)
        if old is not None and same_stat(old.stat, seen):
            return False
        self._seen[relpath] = _Sighting(seen, now)
        return True

    def due(self, now: float, limit: int | None = None) -> list[str]:
        """Paths unchanged for at least settle_seconds as of `now`, longest-waiting first."""
        ready = [(s.since, p) for p, s in self._seen.items()
                 if now - s.since >= self.settle_seconds]
        ready.sort()
        return [p for _, p in ready[:limit]]

    def forget(self, relpath: str) -> None:
        self._seen.pop(relpath, None)

    def gone(self) -> int:
        """How many tracked paths were gone when last looked at."""
        return sum(1 for s in self._seen.values() if s.stat is None)

    def forget_gone(self) -> None:
        """Drop every path that was gone when last looked at."""
        self._seen = {p: s for p, s in self._seen.items() if s.stat is not None}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, relpath: object) -> bool:
        return relpath in self._seen


def same_stat(a: Stat | None, b: Stat | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and abs(a[1] - b[1]) <= MTIME_TOLERANCE


# ------------------------------------------------------------- state decisions


def settled_state(current: TrackState | None, *, maps: bool, audit: bool, same_audio: bool,
                  history: TrackState = S.QUEUED) -> TrackState:
    """The state a track goes to once its (new or changed) file has settled and been read.

    current: the track's state (None for a new track); maps: its genre tag maps to a
    canonical genre; audit: classify tagged files too; same_audio: the fingerprint did not
    change (a touch or a tag edit elsewhere in the file); history: what its suggestions
    and decisions say it was (used when a missing track comes back).
    """
    if maps and not audit:
        return S.TAGGED
    if current is None:
        return S.QUEUED
    if current == S.MISSING:
        return history
    if current == S.QUARANTINED:
        return S.QUEUED  # a quarantined file that changed gets a fresh start
    if same_audio and current in (S.QUEUED, S.RETRYING, S.SUGGESTED, S.REVIEWED):
        return current
    # A worker busy with the old bytes drops its result (daemon.suggest.worker checks the track
    # is still working on the size/mtime it claimed) and the file is done again.
    return S.QUEUED


def history_state(session: Session, track: Track) -> TrackState:
    """What a returning track was: suggested (a pending suggestion), reviewed (confirmed
    or decided), else queued."""
    statuses = set(session.scalars(
        select(Suggestion.status).where(Suggestion.track_id == track.id).distinct()))
    if SuggestionStatus.PENDING in statuses:
        return S.SUGGESTED
    decided = {SuggestionStatus.ACCEPTED, SuggestionStatus.OVERRIDDEN, SuggestionStatus.REJECTED}
    if track.confirmed_genre or statuses & decided:
        return S.REVIEWED
    return S.QUEUED


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True)
class FileReading:
    """One settled file, read: what goes into its Track row."""

    stat: Stat
    fingerprint: str | None
    tags: TrackTags | None
    info: AudioInfo | None
    error: str | None  # why tags/audio could not be read (the worker decides)
    # The reader crashed, hung or ran out of memory on it: quarantined with `error`.
    quarantine: bool = False


def read_file(path: str, readers: ExtractPool) -> FileReading | None:
    """Settled file -> FileReading (fingerprint, tags, audio header); None when the file
    vanished or changed while it was being read.

    Read in a child process of `readers` (daemon.audio.extract.read_song), never in this one: a
    file whose reading crashes, hangs past workers.read_timeout or needs more than
    workers.memory_max_mb costs that file only (a FileReading to quarantine, naming why),
    and a 150 MB cover picture never enters the service's memory."""
    try:
        before = os.stat(path)
    except OSError:
        return None
    stat_before = (before.st_size, before.st_mtime)
    try:
        song = readers.call("read", path)
    except FileError as err:
        log.warning("cannot read %s: %s", path, err.reason)
        return FileReading(stat_before, None, None, None, err.reason, quarantine=True)
    if song is None:
        return None
    try:
        after = os.stat(path)
    except OSError:
        return None
    if not same_stat(stat_before, (after.st_size, after.st_mtime)):
        return None
    return FileReading(stat_before, song.fingerprint, song.tags, song.info,
                       "; ".join(song.problems) or None)


# ---------------------------------------------------------------------- library


@dataclass(frozen=True)
class ReconcileResult:
    """Counts from one reconciliation walk.

    files: library files found; new/changed: put into settle tracking (read once
    settled); ours: changed by our own tag write (recorded, not re-read); missing: marked
    missing; vanished: known files not found (missing unless guarded); guarded: the
    mount-loss guard held (reason says why); error: the database write failed (retried
    at the next walk); skipped: entries with a song's name that are not songs inside the
    library (folders, FIFOs, sockets, devices, broken links, loops, links leading
    outside), the first SKIPPED_SHOWN of them in skipped_files as {"path", "reason"}.
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


@dataclass
class _Known:
    """A track as reconcile sees it (one row of the bulk query)."""

    id: int
    stat: Stat
    written: Stat | None
    state: str


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
        self.tracker = SettleTracker(config.library.settle_seconds)
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
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        rel = path[len(prefix):]
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
            known = self._load_known()
        except OperationalError as err:
            log.error("reconcile %s: database unavailable, retrying at the next walk: %s",
                      root, _brief(err))
            return ReconcileResult(root, error=_brief(err))
        present = {p: k for p, k in known.items() if k.state != S.MISSING}

        lost = ReconcileResult(root, known=len(present), vanished=len(present))
        if not os.path.isdir(root):
            return self._guard(lost, "library root is missing (unmounted?)")
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
                k = known.get(rel)
                if k is None or k.state == S.MISSING:
                    new += 1
                    self.tracker.observe(rel, st[0], st[1], now)
                elif same_stat(k.stat, st):
                    unchanged += 1
                elif k.written is not None and same_stat(k.written, st):
                    ours.append({"id": k.id, "size": st[0], "mtime": st[1]})
                else:
                    changed += 1
                    self.tracker.observe(rel, st[0], st[1], now)

        unread = tuple(walk.unreadable)  # "folder/" prefixes we could not look into
        vanished = [k.id for p, k in present.items()
                    if p not in walk.files and not (unread and p.startswith(unread))]
        result = ReconcileResult(root, files=len(walk.files), unchanged=unchanged, new=new,
                                 changed=changed, ours=len(ours), vanished=len(vanished),
                                 known=len(present), skipped=len(walk.skipped),
                                 skipped_files=skipped_list(walk.skipped))
        reason = None
        if present and not walk.files:
            reason = "library root is empty (unmounted?)"
        elif len(vanished) > self.config.library.missing_guard * len(present):
            reason = (f"more than {self.config.library.missing_guard:.0%} of the known files "
                      "vanished in one walk")
        if reason:
            result = self._guard(result, reason)
            vanished = []

        try:
            missing = self._write_reconcile(ours, vanished)
        except OperationalError as err:
            log.error("reconcile %s: database write failed, retrying at the next walk: %s",
                      root, _brief(err))
            return _replace(result, error=_brief(err))
        return _replace(result, missing=missing)

    def _load_known(self) -> dict[str, _Known]:
        # One query, compared in Python: 15,000 rows take a few tens of milliseconds.
        cols = (Track.id, Track.path, Track.size, Track.mtime, Track.written_size,
                Track.written_mtime, Track.state)
        with self.sessions() as session:
            rows = session.execute(select(*cols)).all()
        known = {}
        for id_, path, size, mtime, wsize, wmtime, state in rows:
            written = (wsize, wmtime) if wsize is not None and wmtime is not None else None
            known[fs_path(path)] = _Known(id_, (size, mtime), written, state)
        return known

    def _guard(self, result: ReconcileResult, reason: str) -> ReconcileResult:
        log.error("MOUNT-LOSS GUARD: %s; library root %s: %d of %d known files not found, "
                  "%d found; marking nothing missing, retrying at the next walk",
                  reason, self.root, result.vanished, result.known, result.files)
        return _replace(result, guarded=True, reason=reason)

    def _write_reconcile(self, ours: list[dict], vanished: list[int]) -> int:
        """Record our own writes' stats and mark vanished tracks missing, in one
        transaction. Returns how many tracks became missing."""
        if not ours and not vanished:
            return 0
        missing = 0
        with transaction(self.sessions) as session:
            if ours:
                session.execute(update(Track), ours)
            for chunk in _chunks(vanished, 500):
                for track in session.scalars(select(Track).where(Track.id.in_(chunk))):
                    if track.state != S.MISSING and can_move(track.state, S.MISSING):
                        move(track, S.MISSING)
                        track.state_changed_at = utcnow()
                        missing += 1
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
            due = self.tracker.due(now, limit)
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
        ready: dict[str, Stat] = {}
        gone: list[str] = []
        with self._tracker_lock:
            for rel in batch:
                # Checked before anything is opened: a link leading outside is never read.
                seen, reason = examine(os.path.join(self.root, rel), self.real_root)
                if reason is not None:
                    self._log_skipped({rel: reason}, forget=False)
                if self.tracker.observe(rel, *(seen or (None, None)), now):
                    continue  # changed since the last sighting: wait again
                if seen is None:
                    gone.append(rel)
                else:
                    ready[rel] = seen

        known = self._rows_for([*ready, *gone])
        handled: list[str] = []
        ours: list[dict] = []
        for rel, st in list(ready.items()):
            k = known.get(rel)
            if k is not None and k.state != S.MISSING:
                if same_stat(k.stat, st):
                    handled.append(rel)  # nothing changed (an open/close, our own read)
                    del ready[rel]
                elif k.written is not None and same_stat(k.written, st):
                    ours.append({"id": k.id, "size": st[0], "mtime": st[1]})
                    handled.append(rel)
                    del ready[rel]

        readings: dict[str, FileReading] = {}
        for rel in ready:
            reading = read_file(os.path.join(self.root, rel), self.readers)
            self.files_read += 1
            if reading is None:
                # Changed or vanished while being read: look again from scratch.
                with self._tracker_lock:
                    self.tracker.forget(rel)
                self.notice(os.path.join(self.root, rel), now)
                continue
            readings[rel] = reading

        done = 0
        with transaction(self.sessions) as session:
            if ours:
                session.execute(update(Track), ours)
            for rel, reading in readings.items():
                self._upsert(session, rel, reading)
                handled.append(rel)
                done += 1
            session.flush()  # moved tracks have their new paths before deletions are looked up
            done += self._mark_gone(session, gone)
            handled.extend(gone)
        with self._tracker_lock:
            for rel in handled:
                self.tracker.forget(rel)
        return done

    def _rows_for(self, rels: list[str]) -> dict[str, _Known]:
        rows = {}
        cols = (Track.id, Track.path, Track.size, Track.mtime, Track.written_size,
                Track.written_mtime, Track.state)
        with self.sessions() as session:
            for chunk in _chunks([db_path(r) for r in rels], 500):
                for id_, path, size, mtime, wsize, wmtime, state in session.execute(
                        select(*cols).where(Track.path.in_(chunk))):
                    written = (wsize, wmtime) if wsize is not None and wmtime is not None \
                        else None
                    rows[fs_path(path)] = _Known(id_, (size, mtime), written, state)
        return rows

    def _upsert(self, session: Session, rel: str, reading: FileReading) -> None:
        """Write one settled file: update its track, find a moved track, or add one."""
        stored = db_path(rel)
        track = session.scalars(select(Track).where(Track.path == stored)).first()
        if track is None and reading.fingerprint:
            track = self._moved_track(session, reading.fingerprint)
            if track is not None:
                log.info("moved: %s -> %s (track %d keeps its history)",
                         track.path, stored, track.id)
                track.path = stored
        previous = TrackState(track.state) if track is not None else None
        same_audio = (track is not None and reading.fingerprint is not None
                      and track.fingerprint == reading.fingerprint)
        if track is None:
            track = Track(path=stored, attempts=0, first_seen=utcnow())
            session.add(track)

        genres = reading.tags.genres if reading.tags else ()
        canonical = self.genre_map.canonical_for(genres) if genres else None
        history = history_state(session, track) if previous == S.MISSING else S.QUEUED
        target = settled_state(previous, maps=canonical is not None,
                               audit=self.config.classifier.audit, same_audio=same_audio,
                               history=history)

        track.size, track.mtime = reading.stat
        track.fingerprint = reading.fingerprint
        track.raw_genre = MULTI_VALUE_SEPARATOR.join(genres) or None
        track.canonical_genre = canonical
        tags, info = reading.tags, reading.info
        track.title = tags.title if tags else None
        track.artist = tags.artist if tags else None
        track.album = tags.album if tags else None
        track.format = info.format if info else (tags.format if tags else None)
        track.duration = info.duration if info else (tags.duration if tags else None)
        track.last_seen = utcnow()
        if previous is None:
            track.state = target
            track.state_changed_at = utcnow()
        elif target != previous:
            move(track, target)
            track.state_changed_at = utcnow()
        if target == S.QUEUED and (previous != S.QUEUED or not same_audio):
            # New audio (or a quarantined file that changed): a fresh start.
            track.attempts = 0
            track.next_attempt_at = None
        if target in (S.QUEUED, S.TAGGED) or previous is None:
            track.last_error = reading.error
        if reading.quarantine:
            _quarantine(track, reading.error)

    def _moved_track(self, session: Session, fp: str) -> Track | None:
        """The track a new file with fingerprint `fp` was moved from: same fingerprint, and
        missing, or its old name no longer listed in its folder (gone; or renamed in case
        only on a case-insensitive SMB share, where the old name still opens the file).
        Missing ones first, then the oldest."""
        candidates = session.scalars(select(Track).where(Track.fingerprint == fp)
                                     .order_by(Track.id)).all()
        candidates.sort(key=lambda t: t.state != S.MISSING)
        for track in candidates:
            if track.state == S.MISSING or not _listed(library_file(self.root, track.path)):
                return track
        return None

    def _mark_gone(self, session: Session, gone: list[str]) -> int:
        """Mark the tracks of settled deletions missing, unless the mount-loss guard holds
        (then the next walk looks again). Returns how many became missing."""
        if not gone:
            return 0
        tracks = []
        for chunk in _chunks([db_path(r) for r in gone], 500):
            tracks += session.scalars(select(Track).where(
                Track.path.in_(chunk), Track.state != S.MISSING)).all()
        if not tracks:
            return 0  # never in the database: forgotten quietly
        present = session.scalar(select(func.count()).select_from(Track)
                                 .where(Track.state != S.MISSING)) or 0
        # Deletions settle in batches: judge the whole wave, not one batch of it.
        with self._tracker_lock:
            wave = max(len(tracks), self.tracker.gone())
        reason = None
        if not os.path.isdir(self.root):
            reason = "library root is missing (unmounted?)"
        elif not _has_entries(self.root):
            reason = "library root is empty (unmounted?)"
        elif wave > self.config.library.missing_guard * present:
            reason = (f"more than {self.config.library.missing_guard:.0%} of the known files "
                      "were deleted at once")
        if reason:
            log.error("MOUNT-LOSS GUARD: %s; library root %s: %d of %d known files reported "
                      "gone; marking nothing missing, the next walk checks again",
                      reason, self.root, wave, present)
            with self._tracker_lock:
                self.tracker.forget_gone()  # the whole wave; the next walk judges it
            return 0
        for track in tracks:
            move(track, S.MISSING)
            track.state_changed_at = utcnow()
        log.info("missing: %s", ", ".join(t.path for t in tracks[:5])
                 + (f" and {len(tracks) - 5} more" if len(tracks) > 5 else ""))
        return len(tracks)


# ---------------------------------------------------------------------- helpers


def reader_pool(config: Config) -> ExtractPool:
    """The child processes settled files are read in (one; started on first use)."""
    workers = config.workers
    return ExtractPool(1, timeout=workers.read_timeout, nice=workers.nice,
                       max_tasks_per_child=workers.max_tasks_per_child,
                       memory_mb=workers.memory_max_mb)


def _quarantine(track: Track, reason: str | None) -> None:
    """A file its reader crashed, hung or ran out of memory on: reading it again would do
    the same, so it waits, quarantined with the reason, until the file changes."""
    if track.state != S.QUARANTINED:
        if not can_move(track.state, S.QUARANTINED):
            move(track, S.QUEUED)
        move(track, S.QUARANTINED)
    track.last_error = reason
    track.next_attempt_at = None
    track.state_changed_at = utcnow()
    log.warning("quarantined %s: %s", track.path, reason)


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now


def _listed(path: Path) -> bool:
    """Whether this exact name is in its folder's listing (not just openable)."""
    try:
        return path.name in os.listdir(path.parent)
    except OSError:
        return False


def _has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except OSError:
        return False


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _brief(err: Exception) -> str:
    return str(getattr(err, "orig", None) or err).splitlines()[0]


def _replace(result: ReconcileResult, **changes) -> ReconcileResult:
    return ReconcileResult(**{**asdict(result), **changes})


def _with_seconds(result: ReconcileResult, seconds: float) -> ReconcileResult:
    return _replace(result, seconds=round(seconds, 3))

