"""Reading a settled file: fingerprint, tags and audio header, in a reader child process.

Nothing from a library file is parsed in the service process: a file whose reading
crashes, hangs past workers.read_timeout or needs more than workers.memory_max_mb costs
that file only, and a 150 MB cover picture never enters the service's memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from daemon.audio.decode import AudioInfo
from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.core.errors import FileError
from daemon.library.walk import Stat, same_stat
from daemon.tags.read import TrackTags

log = logging.getLogger(__name__)

# Settled files come in bursts (a walk, an album copied in): the tag-reader child goes
# once a burst is read, so it does not sit beside the decoders through the decoding that
# follows (~25 MB). A new one starts from the fork server in a fraction of a second.
READER_IDLE_SECONDS = 5.0


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

    Read in a child process of `readers` (daemon.audio.song.read_song), never in this one: a
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


def reader_pool(config: Config) -> ExtractPool:
    """The child processes settled files are read in (one; started on first use)."""
    workers = config.workers
    return ExtractPool(1, timeout=workers.read_timeout, nice=workers.nice,
                       max_tasks_per_child=workers.max_tasks_per_child,
                       memory_mb=workers.memory_max_mb, role="tag reader")
