"""Helpers the test modules share (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, what: str | None = None, every: float = 0.05):
    """Poll `predicate` until it returns something truthy, and return that; after
    `timeout` seconds the test fails, saying what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


# ---- Ogg pages: what a buggy encoder leaves, written on purpose --------------------------

def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        r = byte << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial 0, over
    the page with its checksum field zeroed."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every page of an Ogg file."""
    pages, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {pos}")
        segments = data[pos + 26]
        length = 27 + segments + sum(data[pos + 27:pos + 27 + segments])
        pages.append((pos, length))
        pos += length
    return pages


def shift_ogg_granules(data: bytes, shift: int, first_page: int = 2) -> bytes:
    """The Ogg file with `shift` taken off the granule position of every page from
    `first_page` on (2: the first audio page of a Vorbis file) and each page's checksum
    recomputed, as an encoder that counted from below zero leaves it."""
    import struct

    out = bytearray(data)
    for offset, length in ogg_pages(data)[first_page:]:
        granule = struct.unpack_from("<q", out, offset + 6)[0]
        struct.pack_into("<q", out, offset + 6, granule - shift)
        struct.pack_into("<I", out, offset + 22, 0)
        struct.pack_into("<I", out, offset + 22, ogg_crc(bytes(out[offset:offset + length])))
    return bytes(out)


def negative_granule_ogg(folder, seconds: float = 10.0, sr: int = 22_050, seed: int = 0,
                         name: str = "negative granule.ogg"):
    """A real Ogg Vorbis song (oggenc) whose audio pages all carry granule positions below
    zero (shifted past the song's length, CRCs rewritten): FFmpeg sees no audio after its
    first page, libvorbis plays it whole. Returns its path."""
    import subprocess
    from pathlib import Path

    import soundfile as sf

    from daemon.demo import synthesize

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wav, ogg = folder / f".{name}.wav", folder / f".{name}.src.ogg"
    sf.write(wav, synthesize("Rock", seconds, sr, seed, 2), sr)
    subprocess.run(["oggenc", "-Q", "-o", str(ogg), str(wav)], check=True)
    target = folder / name
    target.write_bytes(shift_ogg_granules(ogg.read_bytes(), int(3 * seconds * sr)))
    wav.unlink()
    ogg.unlink()
    return target


def ogg_nobody_decodes(folder, name: str = "headers then noise.ogg"):
    """A real Ogg Vorbis file's header pages followed by noise: neither FFmpeg nor
    libsndfile decodes it. Returns its path."""
    import random
    from pathlib import Path

    source = negative_granule_ogg(folder, 4.0, name=f".{name}.whole.ogg")
    data = source.read_bytes()
    source.unlink()
    audio_start = ogg_pages(data)[2][0]
    target = Path(folder) / name
    target.write_bytes(data[:audio_start] + random.Random(3).randbytes(60_000))
    return target
