"""Crash-safe steps for files we replace by renaming (tagged songs, model bundles).

A rename is atomic, but only durable once the data and then the folder entry reach the
disk; both the tag writer and the model registry go through these.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (read-only is enough: the mode may deny writing)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries, so a rename into it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
