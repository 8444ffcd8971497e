"""What filesystem a path lives on, from the mount table.

inotify only sees changes made through this kernel, so a library on SMB/NFS must be
polled; and SQLite's locking is unreliable on network filesystems. The watcher, the
database and `genretagger worker` all ask here.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.core.paths import within

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
        if within(point, target) and len(point) >= len(best):
            best, best_type = point, fstype
    return best_type


def is_network_filesystem(path: Path, mounts_text: str | None = None) -> bool:
    return filesystem_type(path, mounts_text) in NETWORK_FILESYSTEMS
