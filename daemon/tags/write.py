"""Change a song's genre and nothing else, atomically.

`write_genre_atomically` never leaves a half-written song: it copies the file inside its
own folder under a hidden temp name, sets the genre on the copy (`set_genre`, which keeps
the ID3 version and the other tags), fsyncs it, re-reads and checks the tag, gives it the
original's permissions, extended attributes (and owner, when running as root) and renames
it over the original (atomic within one filesystem), then fsyncs the folder. A file with
several hard links is refused (a new file would split them). A crash at any moment leaves
either the old file or the new one, plus at worst a hidden temp file, which a later library
walk removes (`daemon.library.walk.remove_leftovers`).

`set_genre` writes the genre into every genre field the file carries, in place: per format,
it changes only the genre, keeps every other frame, and saves ID3 in the version the file
already had. `write_tags` sets title/artist/album/genre in place, for the demo library,
fixtures and tools.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar

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

from daemon.core.durable import fsync_dir, fsync_file
from daemon.core.errors import FileError, TagError, os_reason
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
from daemon.tags.riffinfo import RiffInfoError

log = logging.getLogger(__name__)

GenreMode = Literal["replace", "add"]


class WriteFailed(FileError):
    """The genre could not be written into the file; `reason` says why (retried later)."""


# In every temp sibling's name: the library walk removes one a crash left behind.
WRITER_TEMP_MARK = ".genretagger-tmp"
# The longest extension kept on a temp name: with the 16-character digest and the mark it
# stays far below NAME_MAX, 255 bytes on every filesystem a station uses.
EXTENSION_MAX = 16


def temp_path(path: Path) -> Path:
    """The hidden sibling the new version is built in: the library walk and the watcher
    skip hidden files; the mark lets the walk remove one left by a crash; the extension
    stays last because mutagen weighs it. A digest of the name instead of the name itself,
    so the temp name fits NAME_MAX even beside a 255-byte song name."""
    digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:16]
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= EXTENSION_MAX else ""
    return path.with_name(f".{digest}{WRITER_TEMP_MARK}{suffix}")


def copy_xattrs(source: Path, target: Path) -> None:
    """Give `target` every extended attribute of `source` (Finder tags and comments,
    backup and indexer marks, ACLs). Nothing to copy on a filesystem without them; an
    attribute that cannot be set is an OSError, except SELinux labels (the new file gets
    its folder's label, as any new file does)."""
    try:
        names = os.listxattr(source)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        try:
            os.setxattr(target, name, os.getxattr(source, name))
        except OSError:
            if name.startswith("security."):
                continue
            raise


Owner = tuple[int, int, int]  # uid, gid, permission bits the new version gets


def write_copy(real: Path, tmp: Path, genre: str, mode: GenreMode,
               owner: Owner) -> tuple[str, ...]:
    """Build the new version of `real` in `tmp`: a copy with its extended attributes, the
    genre set, the original's owner and permissions, fsynced and read back; returns the
    genres it reads back.

    The heavy part of a write (mutagen holds the whole tag, pictures included), so the
    service runs it in a child process (the "write" job). Raises TagError or WriteFailed
    naming `real`; `tmp` is the caller's to remove."""
    try:
        shutil.copyfile(real, tmp)
        copy_xattrs(real, tmp)
        set_genre(tmp, genre, mode)
        uid, gid, permissions = owner
        if os.geteuid() == 0:
            os.chown(tmp, uid, gid)
        os.chmod(tmp, permissions)  # after chown, which may clear setgid
        fsync_file(tmp)
        genres = read_tags(tmp).genres
    except TagError as err:
        # set_genre/read_tags name the temp copy; the station knows the song.
        raise TagError(real, err.reason) from None
    except OSError as err:
        raise WriteFailed(real, os_reason(err)) from None
    if not (genre in genres if mode == "add" else genres == (genre,)):
        raise TagError(real, f"wrote genre {genre!r} but the file reads back {genres!r}")
    return tuple(genres)


def write_genre_atomically(path: Path | str, genre: str,
                           mode: GenreMode = "replace", *,
                           before_replace: Callable[[os.stat_result], None] | None = None,
                           build: Callable[[Path, Path, str, GenreMode, Owner], object]
                           = write_copy) -> os.stat_result:
    """Write `genre` into `path`'s tag atomically; returns the new file's stat.

    `build` makes the new version in a hidden temp sibling (`write_copy`, here or in a
    child process). The rest is `replace_atomically`'s."""
    genre = genre.strip()
    st, _ = replace_atomically(
        path, lambda real, tmp, owner: build(real, tmp, genre, mode, owner),
        before_replace=before_replace)
    return st


Built = TypeVar("Built")


def replace_atomically(path: Path | str, build: Callable[[Path, Path, Owner], Built], *,
                       before_replace: Callable[[os.stat_result], None] | None = None,
                       ) -> tuple[os.stat_result, Built]:
    """Replace `path` by the new version `build(real, tmp, owner)` makes in a hidden temp
    sibling (a genre written, or put back); returns the new file's stat and what `build`
    returned.

    `before_replace(stat)` is called with the finished copy's stat just before it is
    renamed over the original (a rename keeps size and mtime), so the caller can record
    the write before any observer can see the new file.
    Raises WriteFailed (file missing, read-only, drive trouble, changed while we wrote)
    or TagError (the tag could not be set or did not read back); the original is then
    untouched and no temp file is left.
    """
    path = Path(path)
    try:
        # Write the real file, not a symlink pointing at it (the link stays a link).
        real = path.resolve(strict=True)
        before = os.stat(real)
    except FileNotFoundError:
        raise WriteFailed(path, "the file is gone") from None
    except OSError as err:
        raise WriteFailed(path, os_reason(err)) from None
    if not os.access(real, os.W_OK) or not before.st_mode & 0o222:
        # Rename would succeed in a writable folder (and root may write anything); a song
        # marked read-only is the station's call, not ours.
        raise WriteFailed(path, "the file is read-only")
    if before.st_nlink > 1:
        # The new version is a new file: renamed over this name, it would leave the song's
        # other names (hard links) pointing at the old version.
        raise WriteFailed(path, f"the file has {before.st_nlink} hard links (names on the "
                          "drive); writing it would split them, so it is left as it is")
    tmp = temp_path(real)
    try:
        result = build(real, tmp, (before.st_uid, before.st_gid, before.st_mode & 0o7777))
        now = os.stat(real)
        if (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise WriteFailed(path, "the file changed while its tag was being written")
        if before_replace is not None:
            before_replace(os.stat(tmp))
        os.replace(tmp, real)
        fsync_dir(real.parent)
        return os.stat(real), result
    except (TagError, WriteFailed) as err:
        raise type(err)(path, err.reason) from None  # the song's name, as the caller knows it
    except OSError as err:
        raise WriteFailed(path, os_reason(err)) from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove temp file %s: %s", tmp, err)


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
