"""What a song file is before it is decoded: how it is opened, what its first bytes claim,
what its header says (AudioInfo), and whether an MP3's Xing/VBRI frame count is possible.

Everything here reads bytes with os calls only; the decoders are daemon.audio.readers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from daemon.core.errors import UnreadableAudio
from daemon.core.paths import display

# Magic bytes -> what the file claims to be, for "corrupt or truncated X" messages.
_MAGIC = ((0, b"fLaC", "FLAC"), (0, b"RIFF", "WAV"), (0, b"FORM", "AIFF"), (0, b"OggS", "Ogg"),
          (0, b"ID3", "MP3"), (4, b"ftyp", "M4A"), (0, bytes.fromhex("3026b275"), "WMA"))


@dataclass(frozen=True)
class AudioInfo:
    """What the container/stream header says about a song."""

    format: str  # mp3 flac ogg opus m4a wav aiff wma, from the content (not the file name)
    codec: str
    duration: float  # seconds
    sample_rate: int
    channels: int


@contextlib.contextmanager
def open_song(path: str | os.PathLike | bytes) -> Iterator[BinaryIO]:
    """The file, opened by descriptor for reading; UnreadableAudio for a missing, unreadable,
    empty or not regular file."""
    name = display(path)
    # O_NONBLOCK: opening a FIFO must not wait for a writer (that would hang forever);
    # fstat on the open descriptor then rejects it without a race.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnreadableAudio(name, "broken symlink (its target does not exist)") from None
        raise UnreadableAudio(name, "file vanished (no such file)") from None
    except PermissionError:
        raise UnreadableAudio(name, "permission denied") from None
    except OSError as err:
        raise UnreadableAudio(name, f"cannot open: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UnreadableAudio(name, "is a directory, not an audio file")
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableAudio(name, "not a regular file (a pipe, socket or device)")
        if st.st_size == 0:
            raise UnreadableAudio(name, "file is empty")
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb", buffering=1 << 16)
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def looks_like(head: bytes) -> str | None:
    """What the first bytes claim the file is ("FLAC", "MP3", ...), None for no known magic."""
    return next((kind for at, magic, kind in _MAGIC if head[at:at + len(magic)] == magic), None)


# MPEG audio layer III frame headers: bitrates (kbps) by index, sample rates by index, for
# MPEG-1 and for MPEG-2/2.5 (which halve the samples per frame).
_MP3_KBPS = {1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
             2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
MP3_FRAMES_SAMPLED = 100  # frame headers averaged for the size-based estimate
MP3_LOWEST_MIN_BPS = 32_000  # MPEG-1's lowest bitrate; MPEG-2/2.5 go down to 8 kbps


def sane_mp3_duration(file: BinaryIO, info: AudioInfo) -> AudioInfo:
    """`info` with the duration _sane_mp3_seconds gives."""
    seconds = _sane_mp3_seconds(file, info.duration)
    return info if seconds == info.duration else dataclasses.replace(info, duration=seconds)


def _sane_mp3_seconds(file: BinaryIO, seconds: float) -> float:
    """The header's duration, unless the file cannot hold that much audio: a Xing/VBRI
    frame count claiming more frames than the bytes could make even at the lowest
    bitrate of its MPEG version (a damaged or hand-edited tag: 10 million frames made a
    200 kB file a 72-hour song). Then the duration is estimated from the file's size and
    the average length of its first frames."""
    if seconds <= 0 or os.fstat(file.fileno()).st_size * 8 / seconds >= MP3_LOWEST_MIN_BPS:
        return seconds  # a plausible bitrate for every MPEG version: no need to look
    frames = _mp3_frames(file)
    if frames is None:
        return seconds
    start, lengths, samples_per_frame, sample_rate, min_frame_bytes, audio_bytes = frames
    claimed_frames = seconds * sample_rate / samples_per_frame
    if claimed_frames * min_frame_bytes <= audio_bytes * 1.01:  # 1%: rounding, padding
        return seconds
    return audio_bytes / (sum(lengths) / len(lengths)) * samples_per_frame / sample_rate


def _mp3_frames(file: BinaryIO) -> tuple | None:
    """(first frame offset, lengths of the first frames (the Xing/Info/VBRI frame left
    out), samples per frame, sample rate, the smallest frame's length, audio bytes) from
    the MPEG layer III frame headers at the start of the file; None when they cannot be
    walked. Read with pread: FFmpeg owns the file position."""
    fd = file.fileno()
    size = os.fstat(fd).st_size
    head = os.pread(fd, 10, 0)
    start = 0
    if head[:3] == b"ID3" and len(head) == 10:
        start = 10
        for byte in head[6:10]:
            start = (start << 7) | (byte & 0x7F)
        start += 10
    data = os.pread(fd, 1 << 17, start)
    sync = 0
    while True:
        sync = data.find(b"\xff", sync)
        if sync < 0 or sync + 4 > len(data):
            return None
        if _mp3_header(data[sync:sync + 4]) is not None:
            break
        sync += 1
    lengths, at, first = [], sync, None
    while at + 4 <= len(data) and len(lengths) <= MP3_FRAMES_SAMPLED:
        header = _mp3_header(data[at:at + 4])
        if header is None:
            break
        length, spf, rate, min_length = header
        if first is None:
            first = (spf, rate, min_length)
            if not any(tag in data[at:at + length] for tag in (b"Xing", b"Info", b"VBRI")):
                lengths.append(length)
        elif (spf, rate) == first[:2]:
            lengths.append(length)
        at += length
    if first is None or not lengths:
        return None
    tail = os.pread(fd, 3, size - 128) if size >= 128 else b""
    audio_bytes = size - start - sync - (128 if tail == b"TAG" else 0)
    return start + sync, lengths, first[0], first[1], first[2], audio_bytes


def _mp3_header(b: bytes) -> tuple[int, int, int, int] | None:
    """4 header bytes -> (frame length, samples per frame, sample rate, the length of the
    shortest frame this MPEG version allows at this rate), or None if not layer III."""
    if len(b) < 4 or b[0] != 0xFF or b[1] & 0xE0 != 0xE0:
        return None
    version, layer = (b[1] >> 3) & 3, (b[1] >> 1) & 3
    kbps_index, rate_index, padding = b[2] >> 4, (b[2] >> 2) & 3, (b[2] >> 1) & 1
    if version == 1 or layer != 1 or kbps_index in (0, 15) or rate_index == 3:
        return None
    table = _MP3_KBPS[1 if version == 3 else 2]
    rate = _MP3_RATES[version][rate_index]
    spf = 1152 if version == 3 else 576

    def length_at(kbps: int, pad: int) -> int:
        return spf // 8 * kbps * 1000 // rate + pad

    return length_at(table[kbps_index], padding), spf, rate, length_at(table[1], 0)


def has_cbr_tag(file: BinaryIO) -> bool:
    """Whether the first MP3 frame holds a LAME/FFmpeg "Info" tag (constant bitrate;
    VBR files say "Xing"). Read with pread: FFmpeg owns the file position."""
    head = os.pread(file.fileno(), 1 << 16, 0)
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # skip an ID3v2 tag: syncsafe size
        size = 0
        for byte in head[6:10]:
            size = (size << 7) | (byte & 0x7F)
        start = 10 + size
        if start + 200 > len(head):
            head = os.pread(file.fileno(), 1 << 12, start)
            start = 0
    sync = head.find(b"\xff", start)
    while sync >= 0 and sync + 1 < len(head) and (head[sync + 1] & 0xE0) != 0xE0:
        sync = head.find(b"\xff", sync + 1)
    return sync >= 0 and b"Info" in head[sync:sync + 200]
