"""Read and write the tags of one audio file, through mutagen.

Formats and where the genre lives:

    mp3, wav, aiff   ID3v2.3/2.4 TCON (numeric references `(17)`, `17`, `(17)Rock` are resolved
                     through the ID3v1 table), or an ID3v1 tag alone; an APEv2 tag on an MP3
                     is read too (its Genre is used when the ID3 tag has none)
    flac, ogg, opus  Vorbis comment GENRE (multi-valued)
    m4a              MP4 `©gen`, or the numeric `gnre` atom (mutagen turns it into `©gen`)
    wma              ASF `WM/Genre`
    ape, wv, mpc ... APEv2 Genre

`read_tags` returns the raw genre values as the file holds them (numeric ID3 references
resolved to names, nothing else changed); mapping them to the station's canonical genres is
daemon.genres' job. Every failure is a `TagError(path, reason)` with a reason a person can
act on; a bad file is data, never a crash.

`set_genre` is what daemon.writer calls (inside its atomic copy + rename): it changes only
the genre, keeps every other frame, and saves ID3 in the version the file already had.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, Literal

import mutagen
from mutagen.aiff import AIFF
from mutagen.apev2 import APENoHeaderError, APEv2
from mutagen.asf import ASF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TALB, TCON, TIT2, TPE1
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.ogg import OggFileType
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from daemon.errors import TagError
from daemon.paths import display

FIELDS = ("title", "artist", "album", "genre")

# The tag key of each field per tag family.
ID3_FRAMES = {"title": TIT2, "artist": TPE1, "album": TALB, "genre": TCON}
VORBIS_KEYS = {"title": "title", "artist": "artist", "album": "album", "genre": "genre"}
MP4_KEYS = {"title": "\xa9nam", "artist": "\xa9ART", "album": "\xa9alb", "genre": "\xa9gen"}
ASF_KEYS = {"title": "Title", "artist": "Author", "album": "WM/AlbumTitle", "genre": "WM/Genre"}
APE_KEYS = {"title": "Title", "artist": "Artist", "album": "Album", "genre": "Genre"}

# ID3v1 genre names, index = the number in `(17)` / `17` / the v1 tag byte.
ID3V1_GENRES: tuple[str, ...] = tuple(TCON.GENRES)

GenreMode = Literal["replace", "add"]
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


def read_tags(path: str | os.PathLike) -> TrackTags:
    """Path -> TrackTags (raw genres, duration from the stream headers, format from the
    content rather than the name). Raises TagError naming the file and the reason."""
    with _open(path, "rb") as fileobj:
        audio = _parse(path, fileobj)
        fields = _read_fields(audio)
        if isinstance(audio, MP3):
            # An APEv2 tag (left by foobar2000, mp3gain, ...) fills what ID3 lacks.
            ape = _read_apev2(fileobj)
            if ape is not None:
                for name, values in _fields_from(ape, APE_KEYS).items():
                    if not fields.get(name):
                        fields[name] = values
    length = getattr(audio.info, "length", None)
    return TrackTags(
        title=_joined(fields.get("title")),
        artist=_joined(fields.get("artist")),
        album=_joined(fields.get("album")),
        genres=_unique(fields.get("genre", ())),
        duration=float(length) if length and length > 0 else None,
        format=format_of(audio),
    )


def write_tags(path: str | os.PathLike, *, title: str | None = None, artist: str | None = None,
               album: str | None = None, genre: str | None = None) -> None:
    """Set the given fields in place (None leaves a field as it is). For the demo library,
    fixtures and tools; the daemon's own writes go through set_genre. Raises TagError."""
    wanted = {"title": title, "artist": artist, "album": album, "genre": genre}
    wanted = {name: [value] for name, value in wanted.items() if value is not None}
    if not wanted:
        return
    with _open(path, "r+b") as fileobj:
        audio = _parse(path, fileobj)
        _ensure_tags(path, audio)
        for name, values in wanted.items():
            _set_field(audio, name, values)
        _save(path, audio, fileobj)


def set_genre(path: str | os.PathLike, genre: str, mode: GenreMode = "replace") -> None:
    """Write `genre` into the file's own genre tag, in place, keeping every other tag.

    mode "replace": the file's genre becomes exactly `genre` (an APEv2 Genre beside ID3 too);
    mode "add": `genre` is appended to the existing values unless already there.
    ID3 keeps its version (v2.3 stays v2.3; an ID3v1-only file gains a v2.3 tag and its v1
    genre byte is updated). Raises TagError; the caller owns atomicity (copy + rename).
    """
    if mode not in ("replace", "add"):
        raise ValueError(f"mode must be 'replace' or 'add', not {mode!r}")
    genre = genre.strip()
    if not genre:
        raise TagError(display(path), "refusing to write an empty genre")
    with _open(path, "r+b") as fileobj:
        audio = _parse(path, fileobj)
        _ensure_tags(path, audio)
        current = list(_read_fields(audio).get("genre", ())) if mode == "add" else []
        _set_field(audio, "genre", _with_genre(current, genre))
        if isinstance(audio, MP4):
            # A numeric gnre the parser could not resolve is kept verbatim by mutagen and
            # would contradict the new ©gen in other players.
            getattr(audio.tags, "_failed_atoms", {}).pop("gnre", None)
        if isinstance(audio, ASF) and mode == "replace" and "WM/GenreID" in audio.tags:
            del audio.tags["WM/GenreID"]  # a numeric genre id beside WM/Genre
        _save(path, audio, fileobj)
        if isinstance(audio, MP3):
            _set_apev2_genre(path, fileobj, genre, mode)


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

class _open:
    """Open by descriptor, turning OS errors into TagErrors with a reason a person
    understands. O_NONBLOCK so a FIFO named like a song cannot block us forever."""

    def __init__(self, path: str | os.PathLike, mode: str):
        self.path, self.mode = path, mode
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        flags = (os.O_RDWR if "+" in self.mode else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except OSError as err:
            raise TagError(display(self.path), os_reason(self.path, err)) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise TagError(display(self.path), "is a directory, not an audio file")
            if not stat.S_ISREG(info.st_mode):
                raise TagError(display(self.path), "not a regular file (a pipe, socket or device)")
            if info.st_size == 0:
                raise TagError(display(self.path), "empty file (0 bytes)")
            os.set_blocking(fd, True)
            self.file = os.fdopen(fd, self.mode)
            # mutagen weighs the file name's extension when it guesses the format.
            self.file.raw.name = os.fsdecode(self.path)
        except BaseException:
            os.close(fd)
            raise
        return self.file

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def os_reason(path: str | os.PathLike, err: OSError) -> str:
    """A short human reason for an OSError met while opening `path`."""
    if err.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"broken symlink (target {os.readlink(path)!r} does not exist)"
        return "file vanished (deleted or moved before it could be read)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if err.errno == errno.EISDIR:
        return "is a directory, not an audio file"
    if err.errno == errno.ENAMETOOLONG:
        return "file name too long for the filesystem"
    if err.errno == errno.EROFS:
        return "read-only filesystem"
    if err.errno == errno.ELOOP:
        return "symlink loop"
    return f"cannot open: {err.strerror or err}"


def _parse(path: str | os.PathLike, fileobj: BinaryIO) -> mutagen.FileType:
    try:
        audio = mutagen.File(fileobj)
    except mutagen.MutagenError as err:
        # mutagen wraps I/O errors (a share going away mid-read) in its own error type.
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise TagError(display(path), os_reason(path, cause)) from None
        raise TagError(display(path), _parse_reason(err)) from None
    except OSError as err:
        raise TagError(display(path), os_reason(path, err)) from None
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

def _read_fields(audio: mutagen.FileType) -> dict[str, list[str]]:
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
        return _fields_from(tags, APE_KEYS)
    if isinstance(audio, (FLAC, OggFileType)):
        return _fields_from(tags, VORBIS_KEYS)
    return {}


def _id3_fields(tags: ID3) -> dict[str, list[str]]:
    fields = {}
    for name, frame_type in ID3_FRAMES.items():
        frame = tags.get(frame_type.__name__)
        if frame is None:
            continue
        if name == "genre":
            fields[name] = _id3_genres(frame, tags.version)
        else:
            fields[name] = [str(text) for text in frame.text]
    return fields


def _id3_genres(frame: TCON, version: tuple[int, int, int]) -> list[str]:
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


def _fields_from(tags, keys: dict[str, str]) -> dict[str, list[str]]:
    fields = {}
    for name, key in keys.items():
        values = tags.get(key)
        if values is None:
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            values = [values]
        fields[name] = [_text(value) for value in values]
    return fields


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    # ASF attributes and APE values are objects; str() of them is their text.
    return str(getattr(value, "value", value))


def _read_apev2(fileobj: BinaryIO) -> APEv2 | None:
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


# --- writing -------------------------------------------------------------------------------

def _ensure_tags(path: str | os.PathLike, audio: mutagen.FileType) -> None:
    if audio.tags is not None:
        return
    try:
        audio.add_tags()
    except Exception as err:  # noqa: BLE001 - formats without tag support say so here
        reason = f"cannot add tags to a {format_of(audio)} file: {err}"
        raise TagError(display(path), reason) from None


def _set_field(audio: mutagen.FileType, name: str, values: list[str]) -> None:
    tags = audio.tags
    if isinstance(tags, ID3):
        frame_type = ID3_FRAMES[name]
        tags.delall(frame_type.__name__)
        tags.add(frame_type(encoding=3, text=values))
    elif isinstance(audio, MP4):
        tags[MP4_KEYS[name]] = values
    elif isinstance(audio, ASF):
        tags[ASF_KEYS[name]] = values
    elif isinstance(tags, APEv2):
        tags[APE_KEYS[name]] = values
    elif isinstance(audio, (FLAC, OggFileType)):
        tags[VORBIS_KEYS[name]] = values
    else:
        raise TagError(display(audio.filename), f"writing {format_of(audio)} tags is not supported")


def _with_genre(current: list[str], genre: str) -> list[str]:
    if any(value.strip().casefold() == genre.casefold() for value in current):
        return current
    return [*current, genre]


def _save(path: str | os.PathLike, audio: mutagen.FileType, fileobj: BinaryIO) -> None:
    kwargs = {}
    if isinstance(audio.tags, ID3):
        # Keep the version the file had; v1-only files get v2.3, the most widely read.
        if audio.tags.version[:2] == (2, 4):
            kwargs["v2_version"] = 4
        else:
            audio.tags.update_to_v23()
            kwargs["v2_version"] = 3
    fileobj.seek(0)
    try:
        audio.save(fileobj, **kwargs)
        fileobj.flush()
    except mutagen.MutagenError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise TagError(display(path), f"cannot write tags: {os_reason(path, cause)}") from None
        raise TagError(display(path), f"cannot write tags: {err}") from None
    except OSError as err:
        raise TagError(display(path), f"cannot write tags: {os_reason(path, err)}") from None


def _set_apev2_genre(path: str | os.PathLike, fileobj: BinaryIO, genre: str,
                     mode: GenreMode) -> None:
    ape = _read_apev2(fileobj)
    if ape is None or "Genre" not in ape:
        return
    current = [_text(v) for v in ape["Genre"]] if mode == "add" else []
    ape["Genre"] = _with_genre(current, genre)
    fileobj.seek(0)
    try:
        ape.save(fileobj)
        fileobj.flush()
    except (mutagen.MutagenError, OSError) as err:
        raise TagError(display(path), f"cannot write the APEv2 genre: {err}") from None

