"""The RIFF INFO list of a WAV file (`LIST` chunk of form `INFO`): read it, and set one of
its fields in place.

mutagen reads and writes only the ID3 chunk of a WAV, yet FFmpeg, exiftool, mediainfo and
TagLib all show the INFO fields (INAM title, IART artist, IPRD album, IGNR genre, ICMT
comment, ...), so the writer must keep IGNR in step. Only the INFO list is parsed and
rebuilt; every other chunk (fmt, data, id3, bext, ...) keeps its bytes, and the RIFF size
is adjusted by exactly what the list grew or shrank. Chunks are word-aligned: a chunk of
odd size is followed by one pad byte that its size does not count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from mutagen._util import resize_bytes  # mutagen's own in-place grow/shrink of a file region

# Text fields are NUL-terminated. There is no declared encoding: most writers use UTF-8
# (FFmpeg) or Latin-1; read UTF-8 and fall back to Latin-1, write UTF-8.
INFO_KEYS = {"title": "INAM", "artist": "IART", "album": "IPRD", "genre": "IGNR"}


class RiffInfoError(ValueError):
    """The RIFF structure is damaged in a way that makes an in-place edit unsafe."""


@dataclass(frozen=True)
class InfoList:
    offset: int            # where the LIST chunk header starts
    length: int            # the whole chunk: 8-byte header + data + pad byte if any
    fields: tuple[tuple[str, bytes], ...]  # (id, raw data incl. NUL) in file order


def _chunks(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        cid, size = struct.unpack_from("<4sI", data, pos)
        yield cid, pos, size
        pos += 8 + size + (size & 1)


def find_info(fileobj: BinaryIO) -> InfoList | None:
    """The file's INFO list, or None (not RIFF/WAVE, or no INFO list). Reads the chunk
    headers only, plus the INFO list itself."""
    fileobj.seek(0, 2)
    file_size = fileobj.tell()
    fileobj.seek(0)
    header = fileobj.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= file_size:
        fileobj.seek(pos)
        cid, size = struct.unpack("<4sI", fileobj.read(8))
        if cid == b"LIST" and size >= 4:
            body = fileobj.read(size)
            if body[:4] == b"INFO":
                fields = []
                for sub, at, sub_size in _chunks(body, 4, len(body)):
                    fields.append((sub.decode("latin-1"), body[at + 8:at + 8 + sub_size]))
                length = 8 + size + (size & 1 if pos + 8 + size < file_size else 0)
                return InfoList(pos, length, tuple(fields))
        pos += 8 + size + (size & 1)
    return None


def text(raw: bytes) -> str:
    raw = raw.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_info(fileobj: BinaryIO) -> dict[str, str]:
    """INFO id -> text (first occurrence of each id); {} when there is no INFO list."""
    info = find_info(fileobj)
    fields: dict[str, str] = {}
    for cid, raw in info.fields if info else ():
        fields.setdefault(cid, text(raw))
    return fields


def set_info_field(fileobj: BinaryIO, cid: str, value: str, *, create: bool) -> bool:
    """Set INFO field `cid` to `value` in place (a new field goes at the end of the list).

    With create=False a file without an INFO list is left alone; with create=True one is
    appended at the end of the file. Returns whether the file was changed."""
    return put_info_field(fileobj, cid, value.encode("utf-8") + b"\x00", create=create)


def put_info_field(fileobj: BinaryIO, cid: str, payload: bytes | None, *,
                   create: bool = False) -> bool:
    """set_info_field with the field's exact bytes; payload None removes the field (every
    copy of it) and leaves the rest of the list as it was. Returns whether the file was
    changed."""
    info = find_info(fileobj)
    if info is None and (not create or payload is None):
        return False
    new_field = b""
    if payload is not None:
        new_field = struct.pack("<4sI", cid.encode("latin-1"), len(payload)) + payload
        new_field += b"\x00" * (len(payload) & 1)
    body = bytearray(b"INFO")
    replaced = False
    for sub, raw in info.fields if info else ():
        if sub == cid:
            if replaced:
                continue  # a duplicate of the field we set would contradict it
            body += new_field
            replaced = True
        else:
            body += struct.pack("<4sI", sub.encode("latin-1"), len(raw)) + raw
            body += b"\x00" * (len(raw) & 1)
    if not replaced:
        if payload is None:
            return False
        body += new_field
    chunk = struct.pack("<4sI", b"LIST", len(body)) + bytes(body)
    fileobj.seek(0, 2)
    file_size = fileobj.tell()
    if info is None:
        offset, old_length = file_size + (file_size & 1), 0
        if file_size & 1:  # the last chunk lacked its pad byte
            chunk = b"\x00" + chunk
            offset -= 1
    else:
        offset, old_length = info.offset, info.length
    fileobj.seek(4)
    (riff_size,) = struct.unpack("<I", fileobj.read(4))
    new_riff_size = riff_size + len(chunk) - old_length
    if not 0 < new_riff_size < 2**32:
        raise RiffInfoError("RIFF size out of range")
    resize_bytes(fileobj, old_length, len(chunk), offset)
    fileobj.seek(offset)
    fileobj.write(chunk)
    fileobj.seek(4)
    fileobj.write(struct.pack("<I", new_riff_size))
    fileobj.flush()
    return True
