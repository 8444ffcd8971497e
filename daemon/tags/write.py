"""Change a song's genre and nothing else, atomically.

`write_copy` builds a song's new version with the genre set (`set_genre`, which keeps the
ID3 version and the other tags) in a hidden temp sibling; the stages of
`daemon.tags.replace` check the file, verify the copy and rename it over the original.
`write_genre_atomically` runs those stages in this process (tools, tests, benchmarks);
the service's writer runs them with the build in a child process
(`daemon.review.writeback`).

`set_genre` writes the genre into every genre field the file carries, in place: per format,
it changes only the genre, keeps every other frame, and saves ID3 in the version the file
already had. `write_tags` sets title/artist/album/genre in place, for the demo library,
fixtures and tools.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import mutagen
from mutagen.aiff import AIFF
from mutagen.apev2 import APEv2
from mutagen.asf import ASF
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TCON, ParseID3v1
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.ogg import OggFileType
from mutagen.wave import WAVE

from daemon.core.errors import TagError, os_reason
from daemon.core.paths import display
from daemon.tags import riffinfo
from daemon.tags.asf import PlacedASF
from daemon.tags.read import (
    APE_KEYS,
    ASF_KEYS,
    ID3_FRAMES,
    ID3V1_GENRES,
    MP4_KEYS,
    MULTI_VALUE_SEPARATOR,
    VORBIS_KEYS,
    format_of,
    id3_genres,
    open_audio,
    open_reason,
    parse,
    read_apev2,
    read_fields,
    read_tags,
    split_info_genre,
    text_of,
)
from daemon.tags.replace import (
    Copy,
    Owner,
    WriteFailed,
    check_target,
    copy_of,
    new_version,
    put_in_place,
    seal,
    verify,
)
from daemon.tags.riffinfo import RiffInfoError

GenreMode = Literal["replace", "add"]


@dataclass(frozen=True)
class NewGenre:
    """A decided genre to write: `mode` "replace" makes it the file's only genre, "add"
    puts it first before the genres already there."""

    genre: str
    mode: GenreMode = "replace"

    def mismatch(self, copy: Copy) -> str | None:
        """Why the new version's genres are not what was asked, or None."""
        wanted = (self.genre in copy.genres if self.mode == "add"
                  else copy.genres == (self.genre,))
        return None if wanted else (f"wrote genre {self.genre!r} but the file reads back "
                                    f"{copy.genres!r}")


def write_copy(real: Path, tmp: Path, genre: str, mode: GenreMode, owner: Owner) -> Copy:
    """Build the new version of `real` in `tmp`: a copy with the genre set, sealed
    (`daemon.tags.replace.seal`); returns the genres it reads back, for `verify`.

    The heavy part of a write (mutagen holds the whole tag, pictures included), so the
    service runs it in a child process (the "write" job). Raises TagError or WriteFailed
    naming `real`; `tmp` is the caller's to remove."""
    try:
        copy_of(real, tmp)
        set_genre(tmp, genre, mode)
        seal(tmp, owner)
        return Copy(tuple(read_tags(tmp).genres))
    except TagError as err:
        # set_genre/read_tags name the temp copy; the station knows the song.
        raise TagError(real, err.reason) from None
    except OSError as err:
        raise WriteFailed(real, os_reason(err)) from None


def write_genre_atomically(path: Path | str, genre: str,
                           mode: GenreMode = "replace") -> os.stat_result:
    """Write `genre` into `path`'s tag in this process, through the writer's stages
    (daemon.tags.replace); returns the new file's stat. Raises WriteFailed or TagError,
    the original then untouched. The service's writer runs the same stages with the build
    in a child process (daemon.review.writeback)."""
    change = NewGenre(genre.strip(), mode)
    target = check_target(path)
    with new_version(target):
        copy = write_copy(target.real, target.temp, change.genre, change.mode, target.owner)
        verify(target, change, copy)
        return put_in_place(target)


def write_tags(path: str | os.PathLike, *, title: str | None = None, artist: str | None = None,
               album: str | None = None, genre: str | None = None,
               album_artist: str | None = None) -> None:
    """Set the given fields in place (None leaves a field as it is). For the demo library,
    fixtures and tools; the daemon's own writes go through set_genre. Raises TagError."""
    wanted = {"title": title, "artist": artist, "album": album, "genre": genre,
              "album_artist": album_artist}
    wanted = {name: [value] for name, value in wanted.items() if value is not None}
    if not wanted:
        return
    with open_audio(path, "r+b") as fileobj:
        audio = parse(path, fileobj)
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
    with open_audio(path, "r+b") as fileobj:
        audio = parse(path, fileobj)
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
        reason = open_reason(path, cause) if isinstance(cause, OSError) else str(err)
        raise TagError(display(path), f"cannot write tags: {reason}") from None
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
    current = id3_genres(old, tags.version) if old is not None and mode == "add" else []
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


def _read_id3v1(fileobj: BinaryIO) -> bytes | None:
    """The 128-byte ID3v1 tag at the end of the file (None if none)."""
    fileobj.seek(0, 2)
    size = fileobj.tell()
    if size < ID3V1_SIZE:
        return None
    fileobj.seek(size - ID3V1_SIZE)
    tail = fileobj.read(ID3V1_SIZE)
    return tail if tail.startswith(b"TAG") else None


def _take_id3v1(fileobj: BinaryIO) -> bytes | None:
    """Cut the 128-byte ID3v1 tag off the end of the file and return it (None if none)."""
    tail = _read_id3v1(fileobj)
    if tail is not None:
        fileobj.truncate(fileobj.tell() - ID3V1_SIZE)
    return tail


def _set_mp3_genre(path, fileobj: BinaryIO, genre: str, mode: GenreMode) -> None:
    # Layout: [ID3v2][audio][APEv2][ID3v1]. mutagen rewrites ID3v1 from the v2 frames and
    # APEv2.save cuts the file after the APE tag, so the v1 tag is taken off first, the
    # other tags are written, and the v1 tag goes back with only its genre byte changed.
    audio = MP3(fileobj)
    tags = _load_id3(audio, fileobj)
    ape = read_apev2(fileobj)
    v1 = _take_id3v1(fileobj)
    number = _v1_genre_byte(genre)
    if tags is None and ape is None and (v1 is None or number is None):
        # An untagged song gets v2.3, the most widely read. When ID3v1 cannot hold the
        # genre, the new v2.3 tag carries v1's fields, so FFmpeg (which reads v1 only when
        # there is no v2 tag) still shows them.
        tags = _id3_from_v1(v1) if v1 is not None else _new_id3v23()
    if ape is not None and ("Genre" in ape or tags is None and (v1 is None or number is None)):
        current = [text_of(v) for v in ape.get("Genre", ())] if mode == "add" else []
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
            current = split_info_genre(riffinfo.read_info(fileobj).get("IGNR", ""))
        value = MULTI_VALUE_SEPARATOR.join(_with_genre(current, genre, mode))
        riffinfo.set_info_field(fileobj, "IGNR", value, create=False)


def _set_asf_genre(path, fileobj: BinaryIO, genre: str, mode: GenreMode) -> None:
    fileobj.seek(0)
    audio = PlacedASF(fileobj)
    current = [text_of(v) for v in audio.tags.get("WM/Genre", [])] if mode == "add" else []
    values = _with_genre(current, genre, mode)
    audio.set_genre(values, drop_genre_id=mode == "replace")
    fileobj.seek(0)
    audio.save(fileobj)


def _set_other_genre(path, audio: mutagen.FileType, fileobj: BinaryIO, genre: str,
                     mode: GenreMode) -> None:
    """FLAC, Ogg, Opus, M4A, APE/WavPack/...: one multi-valued genre key."""
    _ensure_tags(path, audio)
    current = list(read_fields(audio).get("genre", ())) if mode == "add" else []
    _set_field(audio, "genre", _with_genre(current, genre, mode))
    if isinstance(audio, MP4):
        # A numeric gnre the parser could not resolve is kept verbatim by mutagen and
        # would contradict the new ©gen in other players.
        getattr(audio.tags, "_failed_atoms", {}).pop("gnre", None)
    fileobj.seek(0)
    audio.save(fileobj)
