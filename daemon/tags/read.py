"""Read the tags of one audio file, through mutagen.

Formats and where the genre lives:

    mp3, wav, aiff   ID3v2.3/2.4 TCON (numeric references `(17)`, `17`, `(17)Rock` are resolved
                     through the ID3v1 table), or an ID3v1 tag alone; an APEv2 tag on an MP3
                     is read too (its Genre is used when the ID3 tag has none)
    flac, ogg, opus  Vorbis comment GENRE (multi-valued)
    m4a              MP4 `©gen`, or the numeric `gnre` atom (mutagen turns it into `©gen`)
    wma              ASF `WM/Genre`
    wav              also the RIFF INFO list (INAM, IART, IPRD, IGNR) where ID3 lacks a field
    ape, wv, mpc ... APEv2 Genre

`read_tags` returns the raw genre values as the file holds them (numeric ID3 references
resolved to names, nothing else changed); mapping them to the station's canonical genres is
daemon.tags.genres' job. Every failure is a `TagError(path, reason)` with a reason a person can
act on; a bad file is data, never a crash. Writing is daemon.tags.write, which opens and
parses files the way this module does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import mutagen
from mutagen.aiff import AIFF
from mutagen.apev2 import APENoHeaderError, APEv2
from mutagen.asf import ASF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TALB, TCON, TIT2, TPE1, TPE2
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.ogg import OggFileType
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from daemon.core.errors import OS_REASONS, TagError, os_reason
from daemon.core.paths import display
from daemon.tags import riffinfo

# The tag key of each field per tag family. The album artist is where mutagen's EasyID3
# and EasyMP4 put "albumartist" (TPE2, aART), and what Picard and foobar2000 write elsewhere.
ID3_FRAMES = {"title": TIT2, "artist": TPE1, "album": TALB, "genre": TCON, "album_artist": TPE2}
VORBIS_KEYS = {"title": "title", "artist": "artist", "album": "album", "genre": "genre",
               "album_artist": "albumartist"}
MP4_KEYS = {"title": "\xa9nam", "artist": "\xa9ART", "album": "\xa9alb", "genre": "\xa9gen",
            "album_artist": "aART"}
ASF_KEYS = {"title": "Title", "artist": "Author", "album": "WM/AlbumTitle", "genre": "WM/Genre",
            "album_artist": "WM/AlbumArtist"}
APE_KEYS = {"title": "Title", "artist": "Artist", "album": "Album", "genre": "Genre",
            "album_artist": "Album Artist"}
# Other spellings of the album artist taggers leave (read, never written): foobar2000's
# Vorbis "ALBUM ARTIST", "ALBUM_ARTIST"; Mp3tag's APE "ALBUMARTIST". Both kinds of key are
# case-insensitive in mutagen.
VORBIS_ALIASES = {"album_artist": ("album artist", "album_artist")}
APE_ALIASES = {"album_artist": ("albumartist",)}

# ID3v1 genre names, index = the number in `(17)` / `17` / the v1 tag byte.
ID3V1_GENRES: tuple[str, ...] = tuple(TCON.GENRES)

# Multi-valued text (several artists, several raw genres in Track.raw_genre) as one string.
MULTI_VALUE_SEPARATOR = "; "


@dataclass(frozen=True)
class TrackTags:
    """What one file's tags say. Multi-valued text fields are joined with
    MULTI_VALUE_SEPARATOR."""

    title: str | None
    artist: str | None
    album: str | None
    genres: tuple[str, ...]
    duration: float | None
    format: str
    album_artist: str | None = None


def read_tags(path: str | os.PathLike) -> TrackTags:
    """Path -> TrackTags (raw genres, duration from the stream headers, format from the
    content rather than the name). Raises TagError naming the file and the reason."""
    with open_audio(path, "rb") as fileobj:
        audio = parse(path, fileobj)
        fields = read_fields(audio)
        if isinstance(audio, MP3):
            # An APEv2 tag (left by foobar2000, mp3gain, ...) fills what ID3 lacks.
            ape = read_apev2(fileobj)
            if ape is not None:
                for name, values in _fields_from(ape, APE_KEYS, APE_ALIASES).items():
                    if not fields.get(name):
                        fields[name] = values
        if isinstance(audio, WAVE):
            # The RIFF INFO list is what FFmpeg, exiftool and mediainfo show for a WAV.
            info = riffinfo.read_info(fileobj)
            for name, cid in riffinfo.INFO_KEYS.items():
                value = info.get(cid, "").strip()
                if value and not fields.get(name):
                    fields[name] = split_info_genre(value) if name == "genre" else [value]
    length = getattr(audio.info, "length", None)
    return TrackTags(
        title=_joined(fields.get("title")),
        artist=_joined(fields.get("artist")),
        album=_joined(fields.get("album")),
        genres=_unique(fields.get("genre", ())),
        duration=float(length) if length and length > 0 else None,
        format=format_of(audio),
        album_artist=_joined(fields.get("album_artist")),
    )


def format_of(audio: mutagen.FileType) -> str:
    """The station's name for a parsed file's format: mp3 flac ogg opus m4a wav aiff wma,
    or the mutagen type's name in lower case for anything rarer (ape, wavpack, ...)."""
    for kind, name in FORMAT_NAMES:
        if isinstance(audio, kind):
            return name
    return type(audio).__name__.lower()


FORMAT_NAMES: tuple[tuple[type, str], ...] = (
    (MP3, "mp3"), (FLAC, "flac"), (OggOpus, "opus"), (OggVorbis, "ogg"), (OggFileType, "ogg"),
    (MP4, "m4a"), (ASF, "wma"), (WAVE, "wav"), (AIFF, "aiff"),
)


# --- opening and parsing ------------------------------------------------------------------

@contextlib.contextmanager
def open_audio(path: str | os.PathLike, mode: str) -> Iterator[BinaryIO]:
    """Open by descriptor, turning OS errors into TagErrors with a reason a person
    understands. O_NONBLOCK so a FIFO named like a song cannot block us forever."""
    flags = (os.O_RDWR if "+" in mode else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise TagError(display(path), open_reason(path, err)) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise TagError(display(path), "is a directory, not an audio file")
        if not stat.S_ISREG(info.st_mode):
            raise TagError(display(path), "not a regular file (a pipe, socket or device)")
        if info.st_size == 0:
            raise TagError(display(path), "empty file (0 bytes)")
        os.set_blocking(fd, True)
        file = os.fdopen(fd, mode)
        # mutagen weighs the file name's extension when it guesses the format.
        file.raw.name = os.fsdecode(path)
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def open_reason(path: str | os.PathLike, err: OSError) -> str:
    """A short reason for an OSError met while opening `path` (daemon.core.errors'
    table; a broken symlink says where it pointed)."""
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink (target {os.readlink(path)!r} does not exist)"
    if err.errno in OS_REASONS:
        return os_reason(err)
    return f"cannot open: {err.strerror or err}"


def parse(path: str | os.PathLike, fileobj: BinaryIO) -> mutagen.FileType:
    try:
        audio = mutagen.File(fileobj)
    except mutagen.MutagenError as err:
        # mutagen wraps I/O errors (a share going away mid-read) in its own error type.
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise TagError(display(path), open_reason(path, cause)) from None
        raise TagError(display(path), _parse_reason(err)) from None
    except OSError as err:
        raise TagError(display(path), open_reason(path, err)) from None
    except Exception as err:  # noqa: BLE001 - mutagen's parsers raise anything on junk bytes
        raise TagError(display(path), f"damaged file: {type(err).__name__}: {err}") from None
    if audio is None:
        raise TagError(display(path), "not a recognised audio file (no known header)")
    return audio


def _parse_reason(err: mutagen.MutagenError) -> str:
    """mutagen's messages, phrased for the music director and the log."""
    text = str(err).strip("'\" ")
    name = type(err).__name__
    if name == "HeaderNotFoundError":
        return "not an MP3 or damaged: no MPEG audio frames found"
    if "NoHeaderError" in name:
        kind = type(err).__module__.rsplit(".", 1)[-1].upper()
        return f"not a valid {kind} file (no header found)"
    return f"damaged or unsupported file: {text or name}"


# --- reading fields ------------------------------------------------------------------------

def read_fields(audio: mutagen.FileType) -> dict[str, list[str]]:
    tags = audio.tags
    if tags is None:
        return {}
    if isinstance(tags, ID3):
        return _id3_fields(tags)
    if isinstance(audio, MP4):
        return _fields_from(tags, MP4_KEYS)
    if isinstance(audio, ASF):
        return _fields_from(tags, ASF_KEYS)
    if isinstance(tags, APEv2):
        return _fields_from(tags, APE_KEYS, APE_ALIASES)
    if isinstance(audio, (FLAC, OggFileType)):
        return _fields_from(tags, VORBIS_KEYS, VORBIS_ALIASES)
    return {}


def _id3_fields(tags: ID3) -> dict[str, list[str]]:
    fields = {}
    for name, frame_type in ID3_FRAMES.items():
        frame = tags.get(frame_type.__name__)
        if frame is None:
            continue
        if name == "genre":
            fields[name] = id3_genres(frame, tags.version)
        else:
            fields[name] = [str(text) for text in frame.text]
    return fields


def id3_genres(frame: TCON, version: tuple[int, int, int]) -> list[str]:
    # frame.genres resolves `(17)`, `17`, `(17)Rock`. ID3v2.3 has no multi-value separator:
    # mutagen (and many taggers) join values with "/", so split it unless the whole value is
    # a genre name that contains a slash itself ("Pop/Funk").
    genres = list(frame.genres)
    if version[:2] != (2, 3):
        return genres
    split = []
    for value in genres:
        if "/" in value and value not in ID3V1_GENRES:
            split.extend(part for part in value.split("/") if part.strip())
        else:
            split.append(value)
    return split


def _fields_from(tags, keys: dict[str, str],
                 aliases: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[str]]:
    fields = {}
    for name, key in keys.items():
        values = tags.get(key)
        for alias in (aliases or {}).get(name, ()):
            if values is not None:
                break
            values = tags.get(alias)
        if values is None:
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            values = [values]
        fields[name] = [text_of(value) for value in values]
    return fields


def text_of(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    # ASF attributes and APE values are objects; str() of them is their text.
    return str(getattr(value, "value", value))


def read_apev2(fileobj: BinaryIO) -> APEv2 | None:
    fileobj.seek(0)
    try:
        return APEv2(fileobj)
    except APENoHeaderError:
        return None
    except Exception:  # noqa: BLE001 - a damaged APE tag must not hide a good ID3 tag
        return None


def _joined(values: list[str] | None) -> str | None:
    cleaned = [v.strip() for v in values or () if v and v.strip()]
    return MULTI_VALUE_SEPARATOR.join(dict.fromkeys(cleaned)) or None


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    cleaned = [v.strip().strip("\x00") for v in values if v]
    return tuple(dict.fromkeys(v for v in cleaned if v))


def split_info_genre(value: str) -> list[str]:
    # RIFF INFO has no multi-value convention; we join with MULTI_VALUE_SEPARATOR.
    return [part.strip() for part in value.split(";") if part.strip()]
