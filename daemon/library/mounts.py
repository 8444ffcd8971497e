"""What filesystem a path lives on, from the mount table; and the mount-loss guard.

inotify only sees changes made through this kernel, so a library on SMB/NFS must be
polled; and SQLite's locking is unreliable on network filesystems. A share that drops
leaves its mount point missing or empty: the guard keeps that from marking the whole
library missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

NETWORK_FILESYSTEMS = frozenset({
    "cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "sshfs", "9p", "afs", "ceph",
    "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2", "fuse.rclone", "lustre", "ncpfs",
})


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def read_mount_table(text: str) -> list[tuple[str, str]]:
    """(mount point, fs type) pairs from /proc/mounts text."""
    table = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            table.append((_unescape(fields[1]), fields[2]))
    return table


def filesystem_type(path: Path, mounts_text: str | None = None) -> str:
    """The fs type of the longest mount point containing `path` ("unknown" if none)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    for point, fstype in read_mount_table(mounts_text):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fstype
    return best_type


def is_network_filesystem(path: Path, mounts_text: str | None = None) -> bool:
    return filesystem_type(path, mounts_text) in NETWORK_FILESYSTEMS


# ------------------------------------------------------------ the mount-loss guard

ROOT_MISSING = "library root is missing (unmounted?)"
ROOT_EMPTY = "library root is empty (unmounted?)"


def mount_loss(root: str, gone: int, known: int, share: float, *, empty: bool,
               at_once: str) -> str | None:
    """Why `gone` of the `known` present tracks must not be marked missing now, or None.

    A dropped SMB mount must not wipe the database: nothing is marked missing while the
    root is missing, or is empty (`empty`: the caller's look found nothing) while tracks
    are known, or when more than `share` (config.library.missing_guard) of them went at
    once. at_once says how they went, for the reason ("vanished in one walk")."""
    if not os.path.isdir(root):
        return ROOT_MISSING
    if known and empty:
        return ROOT_EMPTY
    if gone > share * known:
        return f"more than {share:.0%} of the known files {at_once}"
    return None


def log_mount_loss(reason: str, root: str, gone: int, known: int, how: str) -> None:
    """The one loud line when the guard holds; the next walk checks again."""
    log.error("MOUNT-LOSS GUARD: %s; library root %s: %d of %d known files %s; marking "
              "nothing missing, the next walk checks again", reason, root, gone, known, how)


def has_entries(folder: str) -> bool:
    """Whether `folder` lists anything at all (False when it cannot be listed)."""
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except OSError:
        return False
