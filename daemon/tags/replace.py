"""A new version of a song file, built beside it and renamed over it: the stages every
change to a station's file goes through, a genre written or put back alike.

    target = check_target(path)        # the file as it is now: real, writable, one name
    with new_version(target):          # errors name the song; the temp never outlives it
        copy = <build>(target...)      # write_copy / restore_copy, in a child process
        st = verify(target, change, copy)   # reads back as asked; the original unchanged
        <record st>                    # the caller's: before any observer sees the file
        st = put_in_place(target)      # rename over the original, fsync the folder

The build copies the file inside its own folder under a hidden temp name (`copy_of`),
changes its tag and gives it the original's owner and permissions (`seal`). A crash at
any moment leaves either the old file or the new one, plus at worst a hidden temp file,
which a later library walk removes (`daemon.library.walk`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from daemon.core.durable import fsync_dir, fsync_file
from daemon.core.errors import FileError, TagError, os_reason

log = logging.getLogger(__name__)

Owner = tuple[int, int, int]  # uid, gid, permission bits the new version gets
GenreFields = dict[str, Any]  # a file's genre fields as stored (daemon.tags.restore)


# In every temp sibling's name: the library walk removes one a crash left behind.
WRITER_TEMP_MARK = ".genretagger-tmp"


class WriteFailed(FileError):
    """The genre could not be written into the file; `reason` says why (retried later)."""


# The longest extension kept on a temp name: with the 16-character digest and the mark it
# stays far below NAME_MAX, 255 bytes on every filesystem a station uses.
EXTENSION_MAX = 16


def temp_path(path: Path) -> Path:
    """The hidden sibling the new version is built in: the library walk and the watcher
    skip hidden files; the mark lets the walk remove one left by a crash; the extension
    stays last because mutagen weighs it. A digest of the name instead of the name itself,
    so the temp name fits NAME_MAX even beside a 255-byte song name."""
    digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= EXTENSION_MAX else ""
    return path.with_name(f".{digest}{WRITER_TEMP_MARK}{suffix}")


@dataclass(frozen=True)
class Target:
    """The song a new version is for: the name the caller knows it by, the real file
    behind it (a symlink stays a link), the hidden sibling the new version is built in,
    and the file's stat when it was checked."""

    path: Path
    real: Path
    temp: Path
    before: os.stat_result

    @property
    def owner(self) -> Owner:
        return self.before.st_uid, self.before.st_gid, self.before.st_mode & 0o7777


@dataclass(frozen=True)
class Copy:
    """What the new version in the temp reads back: its genres; its genre fields as stored
    (a put-back is checked against them); the original's genre fields before a write (what
    an undo puts back)."""

    genres: tuple[str, ...]
    fields: GenreFields | None = None
    before: GenreFields | None = None


class Change(Protocol):
    """What a new version is asked to be (daemon.tags.write.NewGenre,
    daemon.tags.restore.PutBack)."""

    def mismatch(self, copy: Copy) -> str | None:
        """Why `copy` is not what was asked, or None."""


def check_target(path: Path | str) -> Target:
    """The file at `path`, checked for a new version. Raises WriteFailed: the file is gone,
    read-only, or has several names (hard links) a new file would split."""
    path = Path(path)
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
        raise WriteFailed(path, f"the file has {before.st_nlink} hard links (names on the "
                          "drive); writing it would split them, so it is left as it is")
    return Target(path, real, temp_path(real), before)


@contextmanager
def new_version(target: Target) -> Iterator[None]:
    """Around building, verifying and placing a new version of `target`: a TagError or
    WriteFailed names the song as the caller knows it, an OSError becomes WriteFailed, and
    the temp file is gone afterwards whatever happened (the original is then untouched)."""
    try:
        yield
    except (TagError, WriteFailed) as err:
        raise type(err)(target.path, err.reason) from None
    except OSError as err:
        raise WriteFailed(target.path, os_reason(err)) from None
    finally:
        try:
            target.temp.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove temp file %s: %s", target.temp, err)


def copy_of(real: Path, tmp: Path) -> None:
    """Start the new version: `real`'s bytes and extended attributes in `tmp`."""
    shutil.copyfile(real, tmp)
    copy_xattrs(real, tmp)


def seal(tmp: Path, owner: Owner) -> None:
    """Finish the new version: the original's owner (when running as root) and
    permissions, and its bytes on the drive."""
    uid, gid, permissions = owner
    if os.geteuid() == 0:
        os.chown(tmp, uid, gid)
    os.chmod(tmp, permissions)  # after chown, which may clear setgid
    fsync_file(tmp)


def verify(target: Target, change: Change, copy: Copy) -> os.stat_result:
    """The new version reads back what `change` asked and the original is still the file
    `check_target` saw; returns the new version's stat (a rename keeps size and mtime, so
    this is what to record before it). Raises TagError or WriteFailed."""
    problem = change.mismatch(copy)
    if problem is not None:
        raise TagError(target.path, problem)
    now = os.stat(target.real)
    if (now.st_size, now.st_mtime_ns) != (target.before.st_size, target.before.st_mtime_ns):
        raise WriteFailed(target.path, "the file changed while its tag was being written")
    return os.stat(target.temp)


def put_in_place(target: Target) -> os.stat_result:
    """Rename the new version over the original (atomic within one filesystem), fsync the
    folder; returns the song's stat now."""
    os.replace(target.temp, target.real)
    fsync_dir(target.real.parent)
    return os.stat(target.real)


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
