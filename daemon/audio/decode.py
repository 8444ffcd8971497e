"""Decode only the clip windows of a song: seek, decode a second, resample.

A song's clips sit at `daemon.audio.features.clip_starts` positions; each is read by seeking to
its window and decoding just that, never the whole file (a 2-hour file costs the same as a
3-minute one). Two well-kept decoders do the work:

- libsndfile (soundfile) for WAV, AIFF and FLAC: sample-exact seeks, no codec state;
- FFmpeg (PyAV) for everything else (MP3, Ogg Vorbis, Opus, M4A/AAC, WMA): seek to a
  little before the window (codecs need a pre-roll after a seek), decode, and trim by the
  frames' timestamps to the exact window. Windows match a full decode sample for sample
  (tests/audio/test_audio.py), except in MP3s over 20 minutes, which seek by bitrate (within a
  frame) rather than read every frame header up to the clip.

Each is the other's fallback for every format libsndfile reads (WAV, AIFF, FLAC, Ogg
Vorbis, Opus, MP3): when the first decoder refuses a file -- at opening or while decoding
-- the other one gets a go, and a file is unreadable only when neither decodes it (the
reason then names both decoders' errors). Real songs need this: an encoder that left
negative granule positions in an Ogg Vorbis file makes FFmpeg see no audio after the
first page, while libvorbis (through libsndfile) plays it whole.

One pass feeds both feature contracts (`decode_song`): window i of every feature kind is
decoded once at the file's rate -- the CNN's 1-s clip i lies inside the backbone's 3-s
patch i -- and resampled to each kind's rate from that one read, cut so each kind's
windows are exactly what decoding them alone gives.

Samples are downmixed to mono before resampling (cheaper) and resampled with soxr, the
resampler librosa uses by default. The file is opened by descriptor
(daemon.audio.header), without following the name's extension: the content decides the
format. Every failure is a typed
`FileError` naming the file and a human reason; decoder exceptions never escape untyped.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import av
import numpy as np
import soxr

from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    FEATURE_KINDS,
    BackboneSpec,
    FeatureSpec,
    clip_starts,
    padded_patch_seconds,
)
from daemon.audio.header import AudioInfo, looks_like, open_song
from daemon.audio.readers import _PyAVReader, _SoundfileReader
from daemon.core.errors import FileError, SilentAudio, TooMuchMemory, UnreadableAudio
from daemon.core.paths import display

T = TypeVar("T")
# What places and sizes a song's windows: the CNN's clips or the backbone's patches.
WindowSpec = FeatureSpec | BackboneSpec

# Decoded around each window and cut off after resampling, so the resampler's edges
# never reach the clip.
MARGIN_SECONDS = 0.02
# A clip may fall this short of its length at the very end of the song (header duration
# rounding) and is padded with zeros; any more and the file is truncated.
SHORT_TOLERANCE = 0.05
# Peak below this (-80 dBFS) in every clip: silence, nothing to classify.
SILENCE_PEAK = 1e-4
RESAMPLE_QUALITY = "HQ"  # librosa's default res_type is "soxr_hq"

# Content that libsndfile reads best (first 4 bytes): PCM containers and FLAC.
# Everything else, or what libsndfile refuses, goes to FFmpeg.
_SOUNDFILE_MAGIC = {b"RIFF", b"RIFX", b"RF64", b"BW64", b"FORM", b"fLaC"}
# What libsndfile (1.1+: mpg123, libvorbis, libopus) also reads, so it can stand in when
# FFmpeg refuses one: these claims (see header.looks_like) get the fallback.
_SOUNDFILE_FALLBACK = {"Ogg", "MP3", "FLAC", "WAV", "AIFF"}


class _Reader(Protocol):
    info: AudioInfo

    def window(self, first: int, count: int) -> tuple[np.ndarray, int]:
        """Mono float32 at info.sample_rate: `count` samples from sample index `first`
        (0 = the song's first decoded sample), shorter at the end of the audio, and the
        index its first sample really has."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- public functions


def probe(path: str | os.PathLike | bytes) -> AudioInfo:
    """Path -> AudioInfo from the header only; raises UnreadableAudio."""
    return _decoding(path, lambda reader: reader.info)


def read_window(path: str | os.PathLike | bytes, start: float, seconds: float,
                sr: int = 22_050) -> np.ndarray:
    """Mono float32 samples at `sr` of start..start+seconds, seeking and decoding only that.

    Shorter than seconds*sr when the audio ends inside the window; empty past the end.
    Raises UnreadableAudio (ValueError for a negative start or non-positive length).
    """
    if start < 0 or seconds <= 0:
        raise ValueError(f"bad window: start={start} seconds={seconds}")
    return _decoding(path, lambda reader: _guarded(path, _resampled_window, reader, start,
                                                   seconds, sr))


def read_clips(path: str | os.PathLike | bytes, spec: WindowSpec = DEFAULT_SPEC,
               info: AudioInfo | None = None) -> np.ndarray:
    """The song's clips: (spec.clips_per_song, spec.clip_samples) float32 mono at
    spec.sample_rate, placed by `clip_starts` on the header's duration (or on
    `info.duration` when the caller passes an earlier probe). Raises UnreadableAudio
    (including truncated files), TooShort, SilentAudio."""
    return decode_clips(path, spec, info)[1]


def decode_clips(path: str | os.PathLike | bytes, spec: WindowSpec = DEFAULT_SPEC,
                 info: AudioInfo | None = None) -> tuple[AudioInfo, np.ndarray]:
    """read_clips that also returns the header's AudioInfo (one open of the file)."""
    name = display(path)
    return _decoding(path, lambda reader: _decode_clips(path, name, reader, spec, info))


def _decode_clips(path, name: str, reader: _Reader, spec: WindowSpec,
                info: AudioInfo | None) -> tuple[AudioInfo, np.ndarray]:
    found, windows = _decode_windows(path, name, reader, {"clips": spec}, info)
    return found, windows["clips"]


def decode_song(path: str | os.PathLike | bytes, kinds: Iterable[str],
                cnn_spec: FeatureSpec = DEFAULT_SPEC,
                backbone_spec: BackboneSpec = BACKBONE_SPEC,
                info: AudioInfo | None = None) -> tuple[AudioInfo, dict[str, np.ndarray]]:
    """One decode pass for the feature kinds in `kinds` (features.CNN: cnn_spec's clips,
    features.BACKBONE: backbone_spec's patches) -> (the header's AudioInfo,
    {kind: (windows, spec.clip_samples) float32 mono at spec.sample_rate}).

    Window i of every kind is decoded once, natively, and resampled to each kind's rate:
    with the stock specs CNN clip i lies inside backbone patch i for any window count, so
    the backbone costs its resampling, not a second decode. Each kind's windows are sample
    for sample what decode_clips(path, its spec) gives. Raises as decode_clips does
    (TooShort when the song is shorter than one window of any asked kind)."""
    specs: dict[str, WindowSpec] = {CNN: cnn_spec, BACKBONE: backbone_spec}
    kinds = set(kinds)
    if not kinds or not kinds <= set(specs):
        raise ValueError(f"feature kinds {sorted(kinds)}: expected some of {FEATURE_KINDS}")
    chosen = {kind: specs[kind] for kind in FEATURE_KINDS if kind in kinds}
    name = display(path)
    return _decoding(path, lambda reader: _decode_windows(path, name, reader, chosen, info))


def _decode_windows(path, name: str, reader: _Reader, specs: dict[str, WindowSpec],
                    info: AudioInfo | None) -> tuple[AudioInfo, dict[str, np.ndarray]]:
    """Every kind's windows; window i of all kinds from one native read where they
    overlap (a single kind: one read per window, as reader.window always did)."""
    duration = (info or reader.info).duration
    native = reader.info.sample_rate
    by_index: dict[int, list[tuple[int, int, str, float]]] = {}
    held: dict[str, float] = {}  # kind -> seconds each window holds, when padded
    for kind, spec in specs.items():
        padded = (padded_patch_seconds(duration, spec) if isinstance(spec, BackboneSpec)
                  else None)
        if padded is not None:
            held[kind] = padded
            starts = [0.0] * spec.clips_per_song
        else:
            starts = clip_starts(duration, spec, name)
        for i, start in enumerate(starts):
            first, count = _native_span(start, held.get(kind, spec.clip_seconds), native,
                                        spec.sample_rate)
            by_index.setdefault(i, []).append((first, count, kind, start))
    windows = {kind: np.zeros((spec.clips_per_song, spec.clip_samples), dtype=np.float32)
               for kind, spec in specs.items()}
    for i, spans in by_index.items():
        for group in _overlapping(spans):
            first = group[0][0]
            count = max(f + c for f, c, _, _ in group) - first
            samples, got = _guarded(path, reader.window, first, count)
            for w_first, w_count, kind, start in group:
                spec = specs[kind]
                seconds = held.get(kind, spec.clip_seconds)
                want = int(round(seconds * spec.sample_rate)) if kind in held \
                    else spec.clip_samples
                part, part_got = _part(samples, got, w_first, w_count)
                clip = _guarded(path, _resampled_cut, part, part_got, native, start,
                                seconds, spec.sample_rate)
                missing = want - len(clip)
                if missing > SHORT_TOLERANCE * want:
                    gap = start + len(clip) / spec.sample_rate
                    raise UnreadableAudio(
                        name, f"truncated: the header says {duration:.1f} s but there is "
                              f"no audio at {gap:.1f} s")
                if kind in held and len(clip):
                    clip = np.resize(clip, spec.clip_samples)  # repeated to fill the patch
                windows[kind][i, :len(clip)] = clip[:spec.clip_samples]
    for clips in windows.values():
        peak = float(np.abs(clips).max())
        if peak < SILENCE_PEAK:
            level = ("digital silence" if peak == 0
                     else f"peak {20 * math.log10(peak):.0f} dBFS")
            raise SilentAudio(name, f"only silence in its {len(clips)} clips ({level})")
    return reader.info, windows


def _overlapping(spans: list[tuple[int, int, str, float]]
                 ) -> list[list[tuple[int, int, str, float]]]:
    """Native spans (first, count, ...) -> groups of overlapping ones, each read once."""
    groups: list[list[tuple[int, int, str, float]]] = []
    end = 0
    for span in sorted(spans):
        if groups and span[0] < end:
            groups[-1].append(span)
            end = max(end, span[0] + span[1])
        else:
            groups.append([span])
            end = span[0] + span[1]
    return groups


# ---------------------------------------------------------------- opening


def _decoding(path: str | os.PathLike | bytes, work: Callable[[_Reader], T]) -> T:
    """Open the file by descriptor (typed errors for the usual file problems), pick the
    decoder from the content, run `work(reader)`; when that decoder refuses the file
    (UnreadableAudio, at opening or in `work`), the other decoder gets a go with `work`.
    Closes everything afterwards. Raises UnreadableAudio naming both decoders' errors
    when neither decodes it; TooShort and SilentAudio are the song's, not a decoder's."""
    name = display(path)
    with open_song(path) as file:
        head = _guarded(path, file.read, 16)
    claims = looks_like(head)
    if head[:4] in _SOUNDFILE_MAGIC:
        decoders = ["libsndfile", "FFmpeg"]
    else:
        decoders = ["FFmpeg"] + (["libsndfile"] if claims in _SOUNDFILE_FALLBACK else [])
    refusals: list[tuple[str, str]] = []
    for decoder in decoders:
        # Each decoder opens the file afresh: one that failed may have closed the file
        # object or left its position anywhere.
        with open_song(path) as file:
            try:
                if decoder == "libsndfile":
                    reader = _guarded(path, _SoundfileReader.open, file, name)
                else:
                    reader = _guarded(path, _PyAVReader.open, file, name, claims)
            except UnreadableAudio as err:
                refusals.append((decoder, err.reason))
                continue
            if reader is None:  # libsndfile does not take this content at all
                continue
            try:
                return work(reader)
            except UnreadableAudio as err:
                refusals.append((decoder, err.reason))
            finally:
                with contextlib.suppress(Exception):
                    reader.close()
    if len(refusals) == 1:
        raise UnreadableAudio(name, refusals[0][1])
    raise UnreadableAudio(name, "; ".join(f"{d}: {r}" for d, r in refusals))


def _guarded(path, func, *args):
    """Call a decoder step; anything the decoders raise becomes UnreadableAudio."""
    try:
        return func(*args)
    except FileError:
        raise
    except av.FFmpegError as err:
        # FFmpeg's own error codes (EPERM: "cannot seek in this stream"), never the OS's:
        # the file itself was opened fine.
        what = "cannot seek in it" if err.errno == errno.EPERM else (err.strerror or err)
        raise UnreadableAudio(display(path), f"decode failed ({what})") from None
    except PermissionError:
        raise UnreadableAudio(display(path), "permission denied") from None
    except OSError as err:
        # EIO / ESTALE from a network mount that went away mid-read, and the like.
        raise UnreadableAudio(display(path),
                              f"read error: {err.strerror or err}") from None
    except MemoryError:
        # Typed apart: in a child process it means "over the memory cap", not "corrupt".
        raise TooMuchMemory(display(path), "decoder ran out of memory") from None
    except Exception as err:  # decoders raise many types; a bad file is data, not a crash
        raise UnreadableAudio(display(path),
                              f"decode failed ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- resampling


def _native_span(start: float, seconds: float, native: int, sr: int) -> tuple[int, int]:
    """The native samples (first, count) to decode for the window start..start+seconds at
    `sr`: a margin either side, starting on a sample whose time is also on the `sr` grid,
    so the resampled window lines up sample for sample with a resampled full decode."""
    step = native // math.gcd(native, sr)  # native samples between shared grid points
    lead = max(0, int(round((start - MARGIN_SECONDS) * native)))
    lead -= lead % step
    return lead, int(math.ceil((start + seconds + MARGIN_SECONDS) * native)) - lead


def _resampled_cut(samples: np.ndarray, got: int, native: int, start: float, seconds: float,
                   sr: int) -> np.ndarray:
    """Native samples read from `_native_span` (the first one at index `got`) -> the
    window resampled to `sr`, its margins cut off."""
    if len(samples) == 0:
        return np.zeros(0, dtype=np.float32)
    if native != sr:
        samples = soxr.resample(samples, native, sr, quality=RESAMPLE_QUALITY)
    want_first = int(round(start * sr))  # output-grid index of the clip's first sample
    skip = max(0, want_first - int(round(got * sr / native)))
    want = int(round(seconds * sr))
    return np.ascontiguousarray(samples[skip:skip + want], dtype=np.float32)


def _resampled_window(reader: _Reader, start: float, seconds: float, sr: int) -> np.ndarray:
    """Decode start-margin..start+seconds+margin natively, resample, cut the window."""
    native = reader.info.sample_rate
    first, count = _native_span(start, seconds, native, sr)
    samples, got = reader.window(first, count)
    return _resampled_cut(samples, got, native, start, seconds, sr)


def _part(samples: np.ndarray, got: int, first: int, count: int) -> tuple[np.ndarray, int]:
    """What reader.window(first, count) gives, cut from a longer read (samples from index
    `got`) that covers it: the decoders are sample-exact, so the two are the same."""
    lo = max(0, first - got)
    hi = max(lo, first + count - got)
    return samples[lo:hi], got + lo
