"""Read and write the tags of one audio file, through mutagen.

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
act on; a bad file is data, never a crash.

`set_genre` is what daemon.review.writeback calls (inside its atomic copy + rename): it changes only
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
import mutagen._util
from mutagen.aiff import AIFF
from mutagen.apev2 import APENoHeaderError, APEv2
from mutagen.asf import ASF, ASFInfo, ASFTags, ASFUnicodeAttribute
from mutagen.asf import _objects as asf_objects
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TALB, TCON, TIT2, TPE1, ParseID3v1
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.ogg import OggFileType
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from daemon.core.errors import OS_REASONS, TagError, os_reason
from daemon.core.paths import display
from daemon.tags import riffinfo
from daemon.tags.riffinfo import RiffInfoError

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
        if isinstance(audio, WAVE):
            # The RIFF INFO list is what FFmpeg, exiftool and mediainfo show for a WAV.
            info = riffinfo.read_info(fileobj)
            for name, cid in riffinfo.INFO_KEYS.items():
                value = info.get(cid, "").strip()
                if value and not fields.get(name):
                    fields[name] = _split_info_genre(value) if name == "genre" else [value]
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
    """Write `genre` into every genre field the file carries, in place, and change nothing
    else a reader can see (the README's "What a write changes" says it per format).

    mode "replace": the file's genre becomes exactly `genre`;
    mode "add": `genre` comes first and the values already there follow it (single-value
    readers show the first value).
    ID3 keeps its version and every frame (v2.3 stays v2.3, multi-values null-separated);
    the ID3v1 tag, an APEv2 tag and a WAV's RIFF INFO list are kept and their genre set; a
    file without any tag gains ID3v2.3 (MP3, WAV, AIFF). Raises TagError; the caller owns
    atomicity (copy + rename).
    """
    if mode not in ("replace", "add"):
        raise ValueError(f"mode must be 'replace' or 'add', not {mode!r}")
    genre = genre.strip()
    if not genre:
        raise TagError(display(path), "refusing to write an empty genre")
    with _open(path, "r+b") as fileobj:
        audio = _parse(path, fileobj)
        try:
            if isinstance(audio, MP3):
                _set_mp3_genre(path, fileobj, genre, mode)
            elif isinstance(audio, (WAVE, AIFF)):
                _set_chunk_genre(path, audio, fileobj, genre, mode)
            elif isinstance(audio, ASF):
                _set_asf_genre(path, fileobj, genre, mode)
            else:
                _set_other_genre(path, audio, fileobj, genre, mode)
            fileobj.flush()
        except TagError:
            raise
        except (mutagen.MutagenError, OSError, RiffInfoError) as err:
            cause = err.__cause__ or err.__context__
            if isinstance(err, OSError) or isinstance(cause, OSError):
                reason = open_reason(path, err if isinstance(err, OSError) else cause)
            else:
                reason = str(err) or type(err).__name__
            raise TagError(display(path), f"cannot write tags: {reason}") from None


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
            raise TagError(display(self.path), open_reason(self.path, err)) from None
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


def open_reason(path: str | os.PathLike, err: OSError) -> str:
    """A short reason for an OSError met while opening `path` (daemon.core.errors'
    table; a broken symlink says where it pointed)."""
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symlink (target {os.readlink(path)!r} does not exist)"
    if err.errno in OS_REASONS:
        return os_reason(err)
    return f"cannot open: {err.strerror or err}"


def _parse(path: str | os.PathLike, fileobj: BinaryIO) -> mutagen.FileType:
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


def _with_genre(current: list[str], genre: str, mode: GenreMode) -> list[str]:
    """The genre values to store: the accepted genre first (what single-value readers
    show), then in add mode the values already there, each once."""
    if mode == "replace":
        return [genre]
    rest = [v for v in current if v.strip() and v.strip().casefold() != genre.casefold()]
    return [genre, *dict.fromkeys(rest)]


def _save(path: str | os.PathLike, audio: mutagen.FileType, fileobj: BinaryIO) -> None:
    """write_tags' save (demo and fixtures): ID3 keeps v2.4, anything else becomes v2.3."""
    kwargs = {}
    if isinstance(audio.tags, ID3):
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
            reason = open_reason(path, cause)
            raise TagError(display(path), f"cannot write tags: {reason}") from None
        raise TagError(display(path), f"cannot write tags: {err}") from None
    except OSError as err:
        raise TagError(display(path), f"cannot write tags: {open_reason(path, err)}") from None


# ID3. The tag is loaded untranslated (translate=False) and without merging ID3v1 into it
# (load_v1=False), so every frame is saved back as it was read: mutagen's update_to_v23()
# would drop the v2.4-only frames taggers put in v2.3 anyway (TSOP/TSOA/TSOT, TMOO, TSST,
# TDRL, RVA2, ...) and v1 merging would add a duplicate "ID3v1 Comment" COMM.
# Multi-values in v2.3 are null-separated like v2.4 (v23_sep=None): TagLib splits them,
# exiftool shows "A/B", FFmpeg and mediainfo show the first value, and a value holding a
# "/" stays one value.

def _load_id3(audio: mutagen.FileType, fileobj: BinaryIO) -> ID3 | None:
    fileobj.seek(0)
    tags = type(audio)(fileobj, translate=False, load_v1=False).tags
    if tags is not None and tags.version[:2] == (2, 2):
        # ID3v2.2's three-letter frames cannot be saved; they must be translated.
        fileobj.seek(0)
        tags = type(audio)(fileobj, load_v1=False).tags
        tags.update_to_v23()
    return tags


def _id3_save_version(tags: ID3) -> int:
    return 4 if tags.version[:2] == (2, 4) else 3


def _set_tcon(tags: ID3, genre: str, mode: GenreMode) -> None:
    old = tags.get("TCON")
    current = _id3_genres(old, tags.version) if old is not None and mode == "add" else []
    values = _with_genre(current, genre, mode)
    # v2.3 has no UTF-8: Latin-1 when it fits, else UTF-16.
    latin1 = all(_latin1(v) for v in values)
    encoding = 3 if _id3_save_version(tags) == 4 else 0 if latin1 else 1
    tags.delall("TCON")
    tags.add(TCON(encoding=encoding, text=values))


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _new_id3v23() -> ID3:
    tags = ID3()
    tags.version = (2, 3, 0)
    return tags


def _save_id3(tags: ID3, fileobj: BinaryIO, *, v1: int = 0) -> None:
    fileobj.seek(0)
    tags.save(fileobj, v1=v1, v2_version=_id3_save_version(tags), v23_sep=None)


ID3V1_SIZE = 128
ID3V1_NO_GENRE = 255


def _v1_genre_byte(genre: str) -> int | None:
    try:
        return ID3V1_GENRES.index(genre)
    except ValueError:
        folded = [g.casefold() for g in ID3V1_GENRES]
        return folded.index(genre.casefold()) if genre.casefold() in folded else None


def _take_id3v1(fileobj: BinaryIO) -> bytes | None:
    """Cut the 128-byte ID3v1 tag off the end of the file and return it (None if none)."""
    fileobj.seek(0, 2)
    size = fileobj.tell()
    if size < ID3V1_SIZE:
        return None
    fileobj.seek(size - ID3V1_SIZE)
    tail = fileobj.read(ID3V1_SIZE)
    if not tail.startswith(b"TAG"):
        return None
    fileobj.truncate(size - ID3V1_SIZE)
    return tail


def _set_mp3_genre(path, fileobj: BinaryIO, genre: str, mode: GenreMode) -> None:
    # Layout: [ID3v2][audio][APEv2][ID3v1]. mutagen rewrites ID3v1 from the v2 frames and
    # APEv2.save cuts the file after the APE tag, so the v1 tag is taken off first, the
    # other tags are written, and the v1 tag goes back with only its genre byte changed.
    audio = MP3(fileobj)
    tags = _load_id3(audio, fileobj)
    ape = _read_apev2(fileobj)
    v1 = _take_id3v1(fileobj)
    number = _v1_genre_byte(genre)
    if tags is None and ape is None and (v1 is None or number is None):
        # An untagged song gets v2.3, the most widely read. When ID3v1 cannot hold the
        # genre, the new v2.3 tag carries v1's fields, so FFmpeg (which reads v1 only when
        # there is no v2 tag) still shows them.
        tags = _id3_from_v1(v1) if v1 is not None else _new_id3v23()
    if ape is not None and ("Genre" in ape or tags is None and (v1 is None or number is None)):
        current = [_text(v) for v in ape.get("Genre", ())] if mode == "add" else []
        ape["Genre"] = _with_genre(current, genre, mode)
        fileobj.seek(0)
        ape.save(fileobj)
    if tags is not None:
        _set_tcon(tags, genre, mode)
        _save_id3(tags, fileobj, v1=0)
    if v1 is not None:
        if number is not None:
            v1 = v1[:127] + bytes([number])
        elif mode == "replace":
            v1 = v1[:127] + bytes([ID3V1_NO_GENRE])  # no v1 reader may show the old genre
        fileobj.seek(0, 2)
        fileobj.write(v1)


def _id3_from_v1(v1: bytes) -> ID3:
    tags = _new_id3v23()
    for frame in (ParseID3v1(v1, v2_version=3) or {}).values():
        if frame.FrameID == "COMM":
            frame = COMM(encoding=frame.encoding, lang=frame.lang, desc="", text=frame.text)
        if frame.FrameID != "TCON":
            tags.add(frame)
    return tags


def _set_chunk_genre(path, audio: mutagen.FileType, fileobj: BinaryIO, genre: str,
                     mode: GenreMode) -> None:
    """WAV and AIFF: the ID3 chunk's TCON, and a WAV's RIFF INFO IGNR."""
    tags = _load_id3(audio, fileobj)
    info = riffinfo.find_info(fileobj) if isinstance(audio, WAVE) else None
    if tags is None and info is None:
        audio.add_tags()  # the chunk-writing ID3 of WAVE / AIFF
        tags = audio.tags
        tags.version = (2, 3, 0)  # an untagged song: v2.3 is the most widely read
    if tags is not None:
        _set_tcon(tags, genre, mode)
        fileobj.seek(0)
        tags.save(fileobj, v2_version=_id3_save_version(tags), v23_sep=None)
    has_ignr = info is not None and any(cid == "IGNR" for cid, _ in info.fields)
    if info is not None and (has_ignr or tags is None):
        current = []
        if mode == "add" and has_ignr:
            current = _split_info_genre(riffinfo.read_info(fileobj).get("IGNR", ""))
        value = MULTI_VALUE_SEPARATOR.join(_with_genre(current, genre, mode))
        riffinfo.set_info_field(fileobj, "IGNR", value, create=False)


def _split_info_genre(value: str) -> list[str]:
    # RIFF INFO has no multi-value convention; we join with MULTI_VALUE_SEPARATOR.
    return [part.strip() for part in value.split(";") if part.strip()]


def _set_asf_genre(path, fileobj: BinaryIO, genre: str, mode: GenreMode) -> None:
    fileobj.seek(0)
    audio = _PlacedASF(fileobj)
    current = [_text(v) for v in audio.tags.get("WM/Genre", [])] if mode == "add" else []
    values = _with_genre(current, genre, mode)
    audio.set_genre(values, drop_genre_id=mode == "replace")
    fileobj.seek(0)
    audio.save(fileobj)


def _set_other_genre(path, audio: mutagen.FileType, fileobj: BinaryIO, genre: str,
                     mode: GenreMode) -> None:
    """FLAC, Ogg, Opus, M4A, APE/WavPack/...: one multi-valued genre key."""
    _ensure_tags(path, audio)
    current = list(_read_fields(audio).get("genre", ())) if mode == "add" else []
    _set_field(audio, "genre", _with_genre(current, genre, mode))
    if isinstance(audio, MP4):
        # A numeric gnre the parser could not resolve is kept verbatim by mutagen and
        # would contradict the new ©gen in other players.
        getattr(audio.tags, "_failed_atoms", {}).pop("gnre", None)
    fileobj.seek(0)
    audio.save(fileobj)


class _PlacedASF(ASF):
    """An ASF file whose attributes go back into the header object they came from.

    mutagen's ASF.save re-sorts attributes by name, which moves a second Author (FFmpeg
    writes one in each description object) into the Metadata Library and an Extended
    Content Description "Description" into the Content Description object, and mediainfo
    then shows neither. Here only WM/Genre moves: its first value where the old one was,
    further values in the Metadata Library (one Extended Content Description entry per
    name). Uses mutagen.asf._objects, the only way to the header objects."""

    PLACES = (asf_objects.ContentDescriptionObject.GUID,
              asf_objects.ExtendedContentDescriptionObject.GUID,
              asf_objects.MetadataObject.GUID, asf_objects.MetadataLibraryObject.GUID)

    @mutagen._util.loadfile()
    def load(self, filething):
        self.info = ASFInfo()
        self.tags = ASFTags()
        self._tags = {}
        self._header = asf_objects.HeaderObject.parse_full(self, filething.fileobj)
        self.places = {guid: self._tags.pop(guid, []) for guid in self.PLACES}
        for guid in self.PLACES:
            self.tags.extend(self.places[guid])

    def set_genre(self, values: list[str], drop_genre_id: bool) -> None:
        ecd, library = self.PLACES[1], self.PLACES[3]
        home = next((g for g in self.PLACES for name, _ in self.places[g]
                     if name == "WM/Genre"), ecd)
        dropped = {"WM/Genre", "WM/GenreID"} if drop_genre_id else {"WM/Genre"}
        first = ASFUnicodeAttribute(values[0])
        for guid in self.PLACES:
            kept, placed = [], False
            for name, value in self.places[guid]:
                if name == "WM/Genre" and guid == home and not placed:
                    kept.append((name, first))  # where the old genre was
                    placed = True
                elif name not in dropped:
                    kept.append((name, value))
            if guid == home and not placed:
                kept.append(("WM/Genre", first))
            self.places[guid] = kept
        self.places[library].extend(("WM/Genre", ASFUnicodeAttribute(v)) for v in values[1:])
        self.tags = ASFTags()
        for guid in self.PLACES:
            self.tags.extend(self.places[guid])

    @mutagen._util.loadfile(writable=True)
    def save(self, filething=None, padding=None):
        cdo, ecd, meta, library = self.PLACES
        self.to_content_description = dict(self.places[cdo])
        self.to_extended_content_description = {}
        self.to_metadata = dict(self.places[meta])
        self.to_metadata_library = list(self.places[library])
        for name, value in self.places[ecd]:
            if name in self.to_extended_content_description:
                self.to_metadata_library.append((name, value))
            else:
                self.to_extended_content_description[name] = value
        header = self._header
        if header.get_child(cdo) is None:
            header.objects.append(asf_objects.ContentDescriptionObject())
        if header.get_child(ecd) is None:
            header.objects.append(asf_objects.ExtendedContentDescriptionObject())
        header_ext = header.get_child(asf_objects.HeaderExtensionObject.GUID)
        if header_ext is None:
            header_ext = asf_objects.HeaderExtensionObject()
            header.objects.append(header_ext)
        if header_ext.get_child(meta) is None:
            header_ext.objects.append(asf_objects.MetadataObject())
        if header_ext.get_child(library) is None:
            header_ext.objects.append(asf_objects.MetadataLibraryObject())
        fileobj = filething.fileobj
        old_size = header.parse_size(fileobj)[0]
        data = header.render_full(self, fileobj, old_size, padding)
        mutagen._util.resize_bytes(fileobj, old_size, len(data), 0)
        fileobj.seek(0)
        fileobj.write(data)
