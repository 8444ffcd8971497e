"""Put a song's genre fields back exactly as they were before our write.

`genre_fields(path)` reads every genre field a file carries, as it is stored (the ID3v2
TCON frame with its encoding and raw text, the ID3v1 genre byte, the APEv2 Genre item,
the RIFF INFO IGNR bytes, the ASF WM/Genre and WM/GenreID attributes where they sit,
the Vorbis GENRE comments where they sit, the MP4 genre) and which tags were absent, as
a JSON-able dict. The writer takes it from the copy it is about to change and stores it
with the decision; an undo hands it back to `restore_genre`, which sets each field back
to those values, removes the fields and the tags that were not there, and changes
nothing else (the same rule as `daemon.tags.write.set_genre`).

`restore_copy` is `write_copy`'s twin: it builds the restored version in the hidden temp
sibling, and the stages of `daemon.tags.replace` verify it against `PutBack` and put it
in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import mutagen
import mutagen.id3
from mutagen import asf as mutagen_asf
from mutagen.aiff import AIFF
from mutagen.aiff import delete as delete_aiff_id3
from mutagen.apev2 import APEv2
from mutagen.asf import ASF
from mutagen.flac import FLAC
from mutagen.id3 import ID3, TCON
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.ogg import OggFileType
from mutagen.wave import WAVE
from mutagen.wave import delete as delete_wave_id3

from daemon.core.errors import FileError, TagError, os_reason
from daemon.core.paths import display
from daemon.tags import riffinfo
from daemon.tags.asf import PlacedASF
from daemon.tags.read import (
    MULTI_VALUE_SEPARATOR,
    open_audio,
    open_reason,
    parse,
    read_apev2,
    read_tags,
)
from daemon.tags.replace import Copy, GenreFields, Owner, WriteFailed, copy_of, seal
from daemon.tags.riffinfo import RiffInfoError
from daemon.tags.write import (
    GenreMode,
    _id3_save_version,
    _load_id3,
    _read_id3v1,
    _take_id3v1,
    write_copy,
)

ASF_GENRE_NAMES = ("WM/Genre", "WM/GenreID")
MP4_GENRE = "\xa9gen"


def genre_fields(path: str | os.PathLike) -> GenreFields:
    """Every genre field of the file at `path` as stored, and which tags it lacks.
    Raises TagError naming the file."""
    with open_audio(path, "rb") as fileobj:
        audio = parse(path, fileobj)
        try:
            return _fields(audio, fileobj)
        except (mutagen.MutagenError, OSError, RiffInfoError) as err:
            raise TagError(display(path), f"cannot read its genre fields: {err}") from None


def _fields(audio: mutagen.FileType, fileobj: BinaryIO) -> GenreFields:
    if isinstance(audio, MP3):
        ape = read_apev2(fileobj)
        return {"id3": _tcon_state(_load_id3(audio, fileobj)),
                "id3v1": _peek_id3v1_genre(fileobj),
                "ape": None if ape is None else {"genre": _ape_genre(ape)}}
    if isinstance(audio, (WAVE, AIFF)):
        fields = {"id3": _tcon_state(_load_id3(audio, fileobj))}
        if isinstance(audio, WAVE):
            info = riffinfo.find_info(fileobj)
            fields["info"] = None if info is None else {"ignr": next(
                (raw.hex() for cid, raw in info.fields if cid == "IGNR"), None)}
        return fields
    if isinstance(audio, ASF):
        fileobj.seek(0)
        placed = PlacedASF(fileobj)
        return {"asf": [[i, guid_index, name, _asf_value(value)]
                        for guid_index, guid in enumerate(PlacedASF.PLACES)
                        for i, (name, value) in enumerate(placed.places[guid])
                        if name in ASF_GENRE_NAMES]}
    tags = audio.tags
    if tags is None:
        return {"tags": None}
    if isinstance(audio, MP4):
        return {"tags": {"mp4": list(tags[MP4_GENRE]) if MP4_GENRE in tags else None}}
    if isinstance(tags, APEv2):
        return {"tags": {"ape": _ape_genre(tags)}}
    if isinstance(audio, (FLAC, OggFileType)):
        return {"tags": {"vorbis": [[i, key, value] for i, (key, value) in enumerate(tags)
                                    if key.lower() == "genre"]}}
    raise TagError(display(audio.filename), "its genre fields cannot be read")


def _tcon_state(tags: ID3 | None) -> dict | None:
    if tags is None:
        return None
    frame = tags.get("TCON")
    return {"tcon": None if frame is None else
            {"encoding": int(frame.encoding), "text": [str(t) for t in frame.text]}}


def _peek_id3v1_genre(fileobj: BinaryIO) -> int | None:
    tail = _read_id3v1(fileobj)
    return None if tail is None else tail[127]


def _ape_genre(ape: APEv2) -> list[str] | None:
    return list(ape["Genre"]) if "Genre" in ape else None


def _asf_value(value) -> dict:
    raw = value.value
    return {"type": type(value).__name__, "language": value.language, "stream": value.stream,
            "value": raw.hex() if isinstance(raw, bytes) else raw}


def _asf_attribute(data: dict):
    kind = getattr(mutagen_asf, data["type"])
    value = bytes.fromhex(data["value"]) if kind is mutagen_asf.ASFByteArrayAttribute \
        else data["value"]
    return kind(value, language=data["language"], stream=data["stream"])


# ---------------------------------------------------------------- putting them back

def restore_genre(path: str | os.PathLike, fields: GenreFields) -> None:
    """Set every genre field of the file back to `fields` (from genre_fields), in place:
    a field that was absent is removed, a tag that was absent is removed, every other
    frame, item and chunk stays. Raises TagError; the caller owns atomicity."""
    with open_audio(path, "r+b") as fileobj:
        audio = parse(path, fileobj)
        try:
            if isinstance(audio, MP3):
                _restore_mp3(audio, fileobj, fields)
            elif isinstance(audio, (WAVE, AIFF)):
                _restore_chunks(audio, fileobj, fields)
            elif isinstance(audio, ASF):
                _restore_asf(fileobj, fields)
            else:
                _restore_other(path, audio, fileobj, fields)
            fileobj.flush()
        except TagError:
            raise
        except (mutagen.MutagenError, OSError, RiffInfoError, KeyError, TypeError,
                AttributeError) as err:
            cause = err.__cause__ or err.__context__
            if isinstance(err, OSError) or isinstance(cause, OSError):
                reason = open_reason(path, err if isinstance(err, OSError) else cause)
            else:
                reason = str(err) or type(err).__name__
            raise TagError(display(path), f"cannot put its genre back: {reason}") from None


def _put_tcon(tags: ID3, state: dict) -> None:
    tags.delall("TCON")
    if state["tcon"] is not None:
        tags.add(TCON(encoding=state["tcon"]["encoding"], text=state["tcon"]["text"]))


def _restore_mp3(audio: MP3, fileobj: BinaryIO, fields: GenreFields) -> None:
    # The same order as set_genre: v1 off, APE, ID3v2, v1 back with its old genre byte.
    tags = _load_id3(audio, fileobj)
    ape = read_apev2(fileobj)
    v1 = _take_id3v1(fileobj)
    if ape is not None and fields["ape"] is not None:
        _put_ape_genre(ape, fields["ape"]["genre"])
        fileobj.seek(0)
        ape.save(fileobj)
    if fields["id3"] is None:
        if tags is not None:  # the tag we added to an untagged song goes again
            mutagen.id3.delete(fileobj, delete_v1=False, delete_v2=True)
    elif tags is not None:
        _put_tcon(tags, fields["id3"])
        fileobj.seek(0)
        tags.save(fileobj, v1=0, v2_version=_id3_save_version(tags), v23_sep=None)
    if v1 is not None:
        if fields["id3v1"] is not None:
            v1 = v1[:127] + bytes([fields["id3v1"]])
        fileobj.seek(0, 2)
        fileobj.write(v1)


def _put_ape_genre(ape: APEv2, genre: list[str] | None) -> None:
    if genre is None:
        if "Genre" in ape:
            del ape["Genre"]
    else:
        ape["Genre"] = genre


def _restore_chunks(audio: mutagen.FileType, fileobj: BinaryIO, fields: GenreFields) -> None:
    tags = _load_id3(audio, fileobj)
    if fields["id3"] is None:
        if tags is not None:
            (delete_wave_id3 if isinstance(audio, WAVE) else delete_aiff_id3)(fileobj)
    elif tags is not None:
        _put_tcon(tags, fields["id3"])
        fileobj.seek(0)
        tags.save(fileobj, v2_version=_id3_save_version(tags), v23_sep=None)
    info = fields.get("info")
    if info is not None:
        raw = info["ignr"]
        riffinfo.put_info_field(fileobj, "IGNR", None if raw is None else bytes.fromhex(raw))


def _restore_asf(fileobj: BinaryIO, fields: GenreFields) -> None:
    fileobj.seek(0)
    placed = PlacedASF(fileobj)
    for guid in PlacedASF.PLACES:
        placed.places[guid] = [(n, v) for n, v in placed.places[guid]
                               if n not in ASF_GENRE_NAMES]
    # Ascending positions, so each goes back where it was among the others.
    for index, guid_index, name, value in sorted(fields["asf"], key=lambda e: (e[1], e[0])):
        placed.places[PlacedASF.PLACES[guid_index]].insert(index, (name, _asf_attribute(value)))
    placed.tags = mutagen_asf.ASFTags()
    for guid in PlacedASF.PLACES:
        placed.tags.extend(placed.places[guid])
    fileobj.seek(0)
    placed.save(fileobj)


def _restore_other(path, audio: mutagen.FileType, fileobj: BinaryIO,
                   fields: GenreFields) -> None:
    state = fields["tags"]
    tags = audio.tags
    if state is None:
        if tags is not None:  # the tag we added goes again
            fileobj.seek(0)
            audio.delete(fileobj)
        return
    if tags is None:
        raise TagError(display(path), "its tag is gone, so its genre cannot be put back")
    if "mp4" in state:
        if state["mp4"] is None:
            tags.pop(MP4_GENRE, None)
        else:
            tags[MP4_GENRE] = state["mp4"]
    elif "ape" in state:
        _put_ape_genre(tags, state["ape"])
    else:
        kept = [(k, v) for k, v in tags if k.lower() != "genre"]
        for index, key, value in sorted(state["vorbis"]):
            kept.insert(index, (key, value))
        list.clear(tags)
        list.extend(tags, kept)
    fileobj.seek(0)
    audio.save(fileobj)


class ChangedSinceWritten(FileError):
    """The file's genre is no longer the one we wrote (a tagger changed it since): an undo
    leaves it as it is rather than overwrite the station's own change."""


@dataclass(frozen=True)
class PutBack:
    """An undo's change: the file's genre fields back to `fields` (from genre_fields).
    `written`: the genre(s) our write left in the file ("; "-joined); a file that reads
    otherwise now was changed by the station since, and is left as it is."""

    fields: GenreFields
    written: str | None = None

    def mismatch(self, copy: Copy) -> str | None:
        """Why the new version's genre fields are not the ones put back, or None."""
        return None if copy.fields == self.fields else (
            f"put its genre fields back but they read {copy.fields!r}, not {self.fields!r}")


def restore_copy(real: Path, tmp: Path, fields: GenreFields, owner: Owner,
                 written: str | None = None) -> Copy:
    """Build `real` with its genre fields put back to `fields` in `tmp` (write_copy's
    twin: a copy with the fields put back, sealed); returns what the new version reads
    back (its genres and genre fields), for `verify` against PutBack(fields). `written`:
    see PutBack; when the file reads otherwise now, ChangedSinceWritten. Raises TagError
    or WriteFailed naming `real`; `tmp` is the caller's to remove."""
    if written is not None:
        now = MULTI_VALUE_SEPARATOR.join(read_tags(real).genres)
        if now != written:
            raise ChangedSinceWritten(real, f"its genre was changed since we wrote "
                                      f"{written or 'none'!r} (it reads {now or 'none'!r} "
                                      "now), so it is left as it is")
    try:
        copy_of(real, tmp)
        restore_genre(tmp, fields)
        seal(tmp, owner)
        return Copy(tuple(read_tags(tmp).genres), fields=genre_fields(tmp))
    except TagError as err:
        raise TagError(real, err.reason) from None
    except OSError as err:
        raise WriteFailed(real, os_reason(err)) from None


def write_copy_recorded(real: Path, tmp: Path, genre: str, mode: GenreMode,
                        owner: Owner) -> Copy:
    """write_copy that first reads `real`'s genre fields, what an undo puts back; they
    come back as the Copy's `before`."""
    before = genre_fields(real)
    return Copy(write_copy(real, tmp, genre, mode, owner).genres, before=before)
