"""Walking the library: which names are songs, and what each song-named entry is.

The one traversal the daemon's reconcile walk, `genretagger scan` and the trainer's
dataset share. Only stats and resolves names: nothing is opened, so a link to a FIFO or
a device never blocks and is never read. Entries with a song's name that are not songs
inside the library are skipped with a reason (`status`, `scan` and the log say which).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from daemon.core.paths import display, is_inside
from daemon.tags.replace import WRITER_TEMP_MARK

log = logging.getLogger(__name__)

# Files still being written by a download/copy tool, or editor backups.
TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", "~")
# The tag writer builds each new version of a song in a hidden sibling whose name has
# WRITER_TEMP_MARK (daemon.tags.replace.temp_path). One left by an interrupted write (power
# cut, SIGKILL) is removed by the next walk once it is this old; a write holds it for seconds.
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
# Skipped entries listed in the reconcile result (`status`); the count covers them all.
SKIPPED_SHOWN = 50

Stat = tuple[int, float]  # (size, mtime)


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


def same_stat(a: Stat | None, b: Stat | None) -> bool:
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and abs(a[1] - b[1]) <= MTIME_TOLERANCE


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


def inode_ctime(path: str | os.PathLike) -> float | None:
    """The file's ctime (it moves on chmod and chown too, which leave size and mtime
    alone), or None when it cannot be looked at."""
    try:
        return os.stat(path).st_ctime
    except OSError:
        return None


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
