"""The mount-loss guard: a share that drops leaves its mount point missing or empty, and
the guard keeps that from marking the whole library missing. (What filesystem a path is
on: daemon.core.filesystems.)
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

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
