"""A song file's facts, read one way: its fingerprint, its tags and its audio header, and
why any of them could not be read.

The daemon reads a settled file with `read_song` in a tag-reader child
(daemon.library.read), `genretagger scan` in its threads (daemon.library.scan), the
trainer as it walks the library (trainer.dataset). What the three say about one file
(format, duration, tags, the reasons) is therefore the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from daemon.audio.decode import AudioInfo, probe
from daemon.audio.fingerprint import fingerprint
from daemon.core.errors import FileError, TagError, TooMuchMemory
from daemon.tags.read import TrackTags, read_tags


@dataclass(frozen=True)
class SongReading:
    """A file, read: its fingerprint, tags and audio header, and why any of them could not
    be read (each reason as the reader gave it, None when that part was read)."""

    fingerprint: str | None
    tags: TrackTags | None
    info: AudioInfo | None
    unread: str | None = None  # the bytes: why the fingerprint could not be taken
    tags_problem: str | None = None
    audio_problem: str | None = None

    @property
    def problems(self) -> tuple[str, ...]:
        """Every reason, each named by the part it stopped ("tags: ...")."""
        named = (("cannot read", self.unread), ("tags", self.tags_problem),
                 ("audio", self.audio_problem))
        return tuple(f"{part}: {why}" for part, why in named if why is not None)

    @property
    def format(self) -> str | None:
        return song_format(self.info, self.tags)

    @property
    def duration(self) -> float | None:
        return song_duration(self.info, self.tags)


def song_format(info: AudioInfo | None, tags: TrackTags | None) -> str | None:
    """The format from the audio header, else from the tags."""
    return info.format if info else (tags.format if tags else None)


def song_duration(info: AudioInfo | None, tags: TrackTags | None) -> float | None:
    """Seconds from the audio header (an MP3's frame count checked against its bytes),
    else from the tags."""
    return info.duration if info else (tags.duration if tags else None)


def read_song(path: str | os.PathLike | bytes, *,
              fingerprinted: bool = True) -> SongReading | None:
    """Path -> SongReading (fingerprint unless `fingerprinted` is False, tags, audio
    header); None when fingerprinting found the file gone. A file that makes a reader run
    out of memory raises TooMuchMemory (a child's pool says how much it may use); every
    other problem is data in the reading."""
    name = os.fsdecode(path)
    fp = tags = info = unread = tags_problem = audio_problem = None
    if fingerprinted:
        try:
            fp = fingerprint(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            unread = str(err.strerror or err)
    try:
        tags = read_tags(path)
    except TagError as err:
        if _out_of_memory(err):
            raise TooMuchMemory(name, "reading its tags ran out of memory") from None
        tags_problem = err.reason
    except FileError as err:
        tags_problem = err.reason
    except MemoryError:
        raise TooMuchMemory(name, "reading its tags ran out of memory") from None
    except Exception as err:  # a reader bug on an odd file must not stall settling
        tags_problem = f"{type(err).__name__}: {err}"
    try:
        info = probe(path)
    except TooMuchMemory:
        raise
    except FileError as err:
        audio_problem = err.reason
    except Exception as err:
        audio_problem = f"{type(err).__name__}: {err}"
    return SongReading(fp, tags, info, unread, tags_problem, audio_problem)


def _out_of_memory(err: BaseException) -> bool:
    """Whether a typed error was raised in place of a MemoryError (`raise ... from None`
    still keeps it as the context)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, MemoryError | TooMuchMemory):
            return True
        err, seen = err.__context__, seen + 1
    return False
