"""Decode only the clip windows of a song: seek, decode a second, resample.

A song's clips sit at `daemon.audio.features.clip_starts` positions; each is read by seeking to
its window and decoding just that, never the whole file (a 2-hour file costs the same as a
3-minute one). Two well-kept decoders do the work:

- libsndfile (soundfile) for WAV, AIFF and FLAC: sample-exact seeks, no codec state;
- FFmpeg (PyAV) for everything else (MP3, Ogg Vorbis, Opus, M4A/AAC, WMA): seek to a
  little before the window (codecs need a pre-roll after a seek), decode, and trim by the
  frames' timestamps to the exact window. Windows match a full decode sample for sample
  (tests/test_audio.py), except in MP3s over 20 minutes, which seek by bitrate (within a
  frame) rather than read every frame header up to the clip.

Each is the other's fallback for every format libsndfile reads (WAV, AIFF, FLAC, Ogg
Vorbis, Opus, MP3): when the first decoder refuses a file -- at opening or while decoding
-- the other one gets a go, and a file is unreadable only when neither decodes it (the
reason then names both decoders' errors). Real songs need this: an encoder that left
negative granule positions in an Ogg Vorbis file makes FFmpeg see no audio after the
first page, while libvorbis (through libsndfile) plays it whole.

Samples are downmixed to mono before resampling (cheaper) and resampled with soxr, the
resampler librosa uses by default. The file is opened once, by descriptor, without
following the name's extension: the content decides the format. Every failure is a typed
`FileError` naming the file and a human reason; decoder exceptions never escape untyped.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import math
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeVar

import av
import numpy as np
import soundfile as sf
import soxr

from daemon.audio.features import DEFAULT_SPEC, FeatureSpec, clip_starts
from daemon.core.errors import FileError, SilentAudio, TooMuchMemory, UnreadableAudio
from daemon.core.paths import display as _display

T = TypeVar("T")

FORMATS = ("mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff", "wma")

# Decoded around each window and cut off after resampling, so the resampler's edges
# never reach the clip.
MARGIN_SECONDS = 0.02
# Decoded before the window after a seek: MP3's bit reservoir, AAC/Vorbis MDCT overlap and
# Opus (which needs 80 ms) give wrong samples right after a decoder flush. Widened on
# demand when the seek lands late (see _PyAVReader.window).
PREROLL_SECONDS = 0.1
PREROLL_FRAMES = 8
# A clip may fall this short of its length at the very end of the song (header duration
# rounding) and is padded with zeros; any more and the file is truncated.
SHORT_TOLERANCE = 0.05
# Peak below this (-80 dBFS) in every clip: silence, nothing to classify.
SILENCE_PEAK = 1e-4
# MP3s longer than this seek by bitrate instead of scanning frame headers (see _PyAVReader).
LONG_MP3_SECONDS = 20 * 60
AVFMT_FLAG_FAST_SEEK = 0x80000
RESAMPLE_QUALITY = "HQ"  # librosa's default res_type is "soxr_hq"

# Content that libsndfile reads best (first 4 bytes): PCM containers and FLAC.
# Everything else, or what libsndfile refuses, goes to FFmpeg.
_SOUNDFILE_MAGIC = {b"RIFF", b"RIFX", b"RF64", b"BW64", b"FORM", b"fLaC"}
# Magic bytes -> what the file claims to be, for "corrupt or truncated X" messages.
_MAGIC = ((0, b"fLaC", "FLAC"), (0, b"RIFF", "WAV"), (0, b"FORM", "AIFF"), (0, b"OggS", "Ogg"),
          (0, b"ID3", "MP3"), (4, b"ftyp", "M4A"), (0, bytes.fromhex("3026b275"), "WMA"))
# What libsndfile (1.1+: mpg123, libvorbis, libopus) also reads, so it can stand in when
# FFmpeg refuses one: these claims (see _MAGIC) get the fallback.
_SOUNDFILE_FALLBACK = {"Ogg", "MP3", "FLAC", "WAV", "AIFF"}
# libsndfile container (and subtype, for Ogg) -> our format name.
_SOUNDFILE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "W64": "wav",
                      "AIFF": "aiff", "FLAC": "flac", "MP3": "mp3", "MPEG": "mp3",
                      "OGG/VORBIS": "ogg", "OGG/OPUS": "opus", "OGG/FLAC": "flac"}
# libsndfile subtypes named as FFmpeg names the codec.
_SOUNDFILE_CODECS = {"MPEG_LAYER_III": "mp3", "VORBIS": "vorbis", "OPUS": "opus"}
# FFmpeg codecs -> our format name, per container family.
_MP4_CODECS = {"aac", "alac", "mp3", "mp3float"}
_ASF_CODECS = {"wmav1", "wmav2", "wmapro", "wmalossless", "wmavoice"}


@dataclass(frozen=True)
class AudioInfo:
    """What the container/stream header says about a song."""

    format: str  # one of FORMATS, from the content (not the file name)
    codec: str
    duration: float  # seconds
    sample_rate: int
    channels: int


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


def read_clips(path: str | os.PathLike | bytes, spec: FeatureSpec = DEFAULT_SPEC,
               info: AudioInfo | None = None) -> np.ndarray:
    """The song's clips: (spec.clips_per_song, spec.clip_samples) float32 mono at
    spec.sample_rate, placed by `clip_starts` on the header's duration (or on
    `info.duration` when the caller passes an earlier probe). Raises UnreadableAudio
    (including truncated files), TooShort, SilentAudio."""
    return decode_clips(path, spec, info)[1]


def decode_clips(path: str | os.PathLike | bytes, spec: FeatureSpec = DEFAULT_SPEC,
                 info: AudioInfo | None = None) -> tuple[AudioInfo, np.ndarray]:
    """read_clips that also returns the header's AudioInfo (one open of the file)."""
    name = _display(path)
    return _decoding(path, lambda reader: _decode_clips(path, name, reader, spec, info))


def _decode_clips(path, name: str, reader: _Reader, spec: FeatureSpec,
                  info: AudioInfo | None) -> tuple[AudioInfo, np.ndarray]:
    duration = (info or reader.info).duration
    starts = clip_starts(duration, spec, name)
    clips = np.zeros((len(starts), spec.clip_samples), dtype=np.float32)
    for i, start in enumerate(starts):
        clip = _guarded(path, _resampled_window, reader, start, spec.clip_seconds,
                        spec.sample_rate)
        missing = spec.clip_samples - len(clip)
        if missing > SHORT_TOLERANCE * spec.clip_samples:
            gap = start + len(clip) / spec.sample_rate
            raise UnreadableAudio(
                name, f"truncated: the header says {duration:.1f} s but there is no "
                      f"audio at {gap:.1f} s")
        clips[i, :len(clip)] = clip[:spec.clip_samples]
    found = reader.info
    peak = float(np.abs(clips).max())
    if peak < SILENCE_PEAK:
        level = "digital silence" if peak == 0 else f"peak {20 * math.log10(peak):.0f} dBFS"
        raise SilentAudio(name, f"only silence in its {len(clips)} clips ({level})")
    return found, clips


# ---------------------------------------------------------------- opening


def _decoding(path: str | os.PathLike | bytes, work: Callable[[_Reader], T]) -> T:
    """Open the file by descriptor (typed errors for the usual file problems), pick the
    decoder from the content, run `work(reader)`; when that decoder refuses the file
    (UnreadableAudio, at opening or in `work`), the other decoder gets a go with `work`.
    Closes everything afterwards. Raises UnreadableAudio naming both decoders' errors
    when neither decodes it; TooShort and SilentAudio are the song's, not a decoder's."""
    name = _display(path)
    with _open_file(path) as file:
        head = _guarded(path, file.read, 16)
    looks_like = _looks_like(head)
    if head[:4] in _SOUNDFILE_MAGIC:
        decoders = ["libsndfile", "FFmpeg"]
    else:
        decoders = ["FFmpeg"] + (["libsndfile"] if looks_like in _SOUNDFILE_FALLBACK else [])
    refusals: list[tuple[str, str]] = []
    for decoder in decoders:
        # Each decoder opens the file afresh: one that failed may have closed the file
        # object or left its position anywhere.
        with _open_file(path) as file:
            try:
                if decoder == "libsndfile":
                    reader = _guarded(path, _SoundfileReader.open, file, name)
                else:
                    reader = _guarded(path, _PyAVReader.open, file, name, looks_like)
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


@contextlib.contextmanager
def _open_file(path: str | os.PathLike | bytes) -> Iterator[BinaryIO]:
    name = _display(path)
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


def _looks_like(head: bytes) -> str | None:
    return next((kind for at, magic, kind in _MAGIC if head[at:at + len(magic)] == magic), None)


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
        raise UnreadableAudio(_display(path), f"decode failed ({what})") from None
    except PermissionError:
        raise UnreadableAudio(_display(path), "permission denied") from None
    except OSError as err:
        # EIO / ESTALE from a network mount that went away mid-read, and the like.
        raise UnreadableAudio(_display(path),
                              f"read error: {err.strerror or err}") from None
    except MemoryError:
        # Typed apart: in a child process it means "over the memory cap", not "corrupt".
        raise TooMuchMemory(_display(path), "decoder ran out of memory") from None
    except Exception as err:  # decoders raise many types; a bad file is data, not a crash
        raise UnreadableAudio(_display(path),
                              f"decode failed ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------- resampling


def _resampled_window(reader: _Reader, start: float, seconds: float, sr: int) -> np.ndarray:
    """Decode start-margin..start+seconds+margin natively, resample, cut the window.

    The native read starts on a sample whose time is also on the output grid, so the
    resampled window lines up sample for sample with a resampled full decode.
    """
    native = reader.info.sample_rate
    step = native // math.gcd(native, sr)  # native samples between shared grid points
    want_first = int(round(start * sr))  # output-grid index of the clip's first sample
    lead = max(0, int(round((start - MARGIN_SECONDS) * native)))
    lead -= lead % step
    count = int(math.ceil((start + seconds + MARGIN_SECONDS) * native)) - lead
    samples, got = reader.window(lead, count)
    if len(samples) == 0:
        return np.zeros(0, dtype=np.float32)
    if native != sr:
        samples = soxr.resample(samples, native, sr, quality=RESAMPLE_QUALITY)
    skip = max(0, want_first - int(round(got * sr / native)))
    want = int(round(seconds * sr))
    return np.ascontiguousarray(samples[skip:skip + want], dtype=np.float32)


# ---------------------------------------------------------------- libsndfile


class _SoundfileReader:
    """WAV/AIFF/FLAC through libsndfile: exact sample seeks."""

    def __init__(self, sound: sf.SoundFile, info: AudioInfo, name: str):
        self.sound = sound
        self.info = info
        self.name = name

    @classmethod
    def open(cls, file: BinaryIO, name: str) -> _SoundfileReader | None:
        """None when the content is in a container we do not take from libsndfile;
        UnreadableAudio when libsndfile refuses it (either way FFmpeg gets a go)."""
        file.seek(0)
        try:
            sound = sf.SoundFile(file)
        except sf.LibsndfileError as err:
            reason = (err.error_string or "refused").strip().rstrip(".")
            if "not a regular file" in reason:
                # What libsndfile says when its format probes find nothing in content
                # given as a stream; the file is regular (checked when it was opened).
                reason = "format not recognised"
            raise UnreadableAudio(name, reason[:1].lower() + reason[1:]) from None
        except (RuntimeError, TypeError) as err:
            raise UnreadableAudio(name, f"refused ({err})") from None
        fmt = _SOUNDFILE_FORMATS.get(sound.format) or _SOUNDFILE_FORMATS.get(
            f"{sound.format}/{sound.subtype}")
        if fmt is None:
            sound.close()
            return None
        if sound.frames <= 0 or sound.samplerate <= 0:
            sound.close()
            raise UnreadableAudio(name, "no audio frames in it")
        info = AudioInfo(format=fmt, codec=_SOUNDFILE_CODECS.get(sound.subtype,
                                                                 sound.subtype.lower()),
                         duration=sound.frames / sound.samplerate,
                         sample_rate=sound.samplerate, channels=sound.channels)
        return cls(sound, info, name)

    def window(self, first: int, count: int) -> tuple[np.ndarray, int]:
        if first >= self.sound.frames:
            return np.zeros(0, dtype=np.float32), first
        try:
            self.sound.seek(first)
            block = self.sound.read(min(count, self.sound.frames - first), dtype="float32",
                                    always_2d=True)
        except sf.LibsndfileError as err:
            # FLAC's header promises samples that are not there (an interrupted copy).
            raise UnreadableAudio(self.name, (
                f"truncated or corrupt: cannot read at {first / self.info.sample_rate:.1f} s "
                f"of {self.info.duration:.1f} s ({err.error_string})")) from None
        return _downmix_interleaved(block), first

    def close(self) -> None:
        self.sound.close()


def _downmix_interleaved(block: np.ndarray) -> np.ndarray:
    if block.shape[1] == 1:
        return block[:, 0]
    return block.mean(axis=1, dtype=np.float32)


# ---------------------------------------------------------------- FFmpeg


class _PyAVReader:
    """Compressed formats through FFmpeg: seek before the window, trim by timestamps."""

    def __init__(self, container, stream, info: AudioInfo, name: str, cbr: bool = False):
        self.container = container
        self.stream = stream
        self.info = info
        self.name = name
        self.packet_pos = -1  # byte offset of the packet being decoded
        self.data_start, self.data_start_pts = -1, 0  # the first audio packet's
        self.origin = _first_pts(self)  # pts of the song's first decoded sample
        self.samples_per_tick = float(stream.time_base) * info.sample_rate
        # Coarse timestamps (ASF counts milliseconds): snap positions to whole frames.
        self.coarse = self.samples_per_tick > 1.0
        # FFmpeg's exact MP3 seek reads every frame header up to the target: 60% of an
        # MP3 song's decode time, and 90% of a 2-hour mix (hundreds of MB over SMB).
        # Constant-bitrate files (LAME "Info" tag) seek by bitrate instead and place each
        # packet by its byte offset, which for CBR is exact to the frame; long files
        # without that tag seek by bitrate too, then exact to about a frame.
        self.frame_size = stream.codec_context.frame_size or 0
        self.bit_rate = stream.bit_rate or container.bit_rate or 0
        self.cbr = cbr and self.frame_size > 0 and self.bit_rate > 0 and self.data_start >= 0
        self.long = info.format == "mp3" and info.duration > LONG_MP3_SECONDS
        self.byte_timed = False  # per window, see _decode

    @classmethod
    def open(cls, file: BinaryIO, name: str, looks_like: str | None = None) -> _PyAVReader:
        try:
            container = av.open(file, "r")
        except av.FFmpegError:
            reason = (f"corrupt or truncated {looks_like} file" if looks_like
                      else "not an audio file (unrecognised content)")
            raise UnreadableAudio(name, reason) from None
        try:
            info, stream = _stream_info(container, name)
            cbr = info.format == "mp3" and _has_cbr_tag(file)
            if info.format == "mp3":
                info = _sane_mp3_duration(file, info)
            return cls(container, stream, info, name, cbr)
        except BaseException:
            container.close()
            raise

    def window(self, first: int, count: int) -> tuple[np.ndarray, int]:
        # At least a few codec frames: an MP3's bit reservoir reaches back several frames
        # (VBR files needed 8 in tests), and at 8 kHz one frame lasts 72 ms.
        frame_seconds = (self.stream.codec_context.frame_size or 0) / self.info.sample_rate
        preroll = max(PREROLL_SECONDS, PREROLL_FRAMES * frame_seconds)
        while True:
            samples, got_first = self._decode(first, count, preroll)
            # The seek landed too late for the pre-roll (long frames, sparse seek points):
            # go back further, a few times at most.
            if got_first <= first or preroll > 8 or first / self.info.sample_rate < preroll:
                return samples, got_first
            preroll *= 4

    def _decode(self, first: int, count: int, preroll: float) -> tuple[np.ndarray, int]:
        stream, tb = self.stream, self.stream.time_base
        rate = self.info.sample_rate
        target = max(0.0, first / rate - preroll)
        target_pts = self.origin + int(target / tb)
        # Byte timing stays clear of the last seconds, where the decoder trims the
        # encoder's padding and frames no longer follow the packets one to one.
        self.byte_timed = self.cbr and (first + count) / rate < self.info.duration - 2.0
        if self.byte_timed or self.long:
            self.container.flags |= AVFMT_FLAG_FAST_SEEK
        else:
            self.container.flags &= ~AVFMT_FLAG_FAST_SEEK
        self.container.seek(target_pts, stream=stream, backward=True)
        stream.codec_context.flush_buffers()
        end = first + count
        frames, positions = [], []
        skip_before = target_pts if self.info.format in ("ogg", "opus") else None
        for frame in self._frames(skip_before):
            if frame.sample_rate != rate:
                raise UnreadableAudio(self.name, "sample rate changes mid-stream")
            at = self._position(frame)
            frames.append(frame)
            positions.append(at)
            if at is not None and at + frame.samples >= end:
                break
        # Some frames carry a timestamp that is off by a block: right after a seek (Vorbis
        # packet durations depend on the packet before, which the demuxer never saw) and at
        # Vorbis long-to-short block switches. Sample counts are right, so each frame with
        # a pts implies where the first frame starts; the most common answer wins.
        implied, counted = collections.Counter(), 0
        for frame, at in zip(frames, positions, strict=True):
            if at is not None:
                implied[at - counted] += 1
            counted += frame.samples
        if not implied:
            if frames:
                raise UnreadableAudio(self.name, "cannot seek: frames carry no timestamps")
            return np.zeros(0, dtype=np.float32), first
        position = implied.most_common(1)[0][0]
        pieces: list[np.ndarray] = []  # raw decoder arrays, trimmed to the window
        got_first, layout = first, None
        for frame in frames:
            n = frame.samples
            if position + n > first and position < end:
                lo, hi = max(0, first - position), min(n, end - position)
                shape = (frame.format.name, frame.format.is_planar, frame.layout.nb_channels)
                if layout is None:
                    got_first, layout = position + lo, shape  # later than `first`: overshot
                elif shape != layout:
                    raise UnreadableAudio(self.name, "sample format changes mid-stream")
                data = frame.to_ndarray()
                pieces.append(data[:, lo:hi] if layout[1] else data.reshape(n, -1)[lo:hi])
            position += n
        if not pieces:
            return np.zeros(0, dtype=np.float32), first
        return _to_mono(pieces, *layout), got_first

    def _position(self, frame) -> int | None:
        """The frame's first sample index from its timestamp (None without one)."""
        if self.byte_timed and self.packet_pos >= 0:
            at = (self.packet_pos - self.data_start) * 8 * self.info.sample_rate / self.bit_rate
            at = int(round(at / self.frame_size)) * self.frame_size
            return at + int(round((self.data_start_pts - self.origin) * self.samples_per_tick))
        if frame.pts is None:
            return None
        at = int(round((frame.pts - self.origin) * self.samples_per_tick))
        if self.coarse and frame.samples:  # millisecond pts: snap to whole frames
            at = int(round(at / frame.samples)) * frame.samples
        return at

    def _frames(self, skip_before: int | None = None):
        """Decoded frames from the current position; corrupt packets are skipped (as
        players do), but a stream made only of corrupt packets is an error.

        Packets ending before pts `skip_before` are not decoded: Ogg seeks land on a page
        start, up to a second early, and the pre-roll is already in `skip_before`. (Not
        for other formats: their seeks land on the target, and WMA superframes span
        packets, so skipping one upsets the decoder.)
        """
        bad = 0
        for packet in self.container.demux(self.stream):
            if skip_before is not None:
                if (packet.pts is not None and packet.duration
                        and packet.pts + packet.duration < skip_before):
                    continue
                skip_before = None  # from here on every packet, so the decoder is continuous
            self.packet_pos = packet.pos if packet.pos is not None else -1
            if self.data_start < 0 and self.packet_pos >= 0:
                self.data_start, self.data_start_pts = self.packet_pos, packet.pts or 0
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                bad += 1
                if bad > 50:
                    raise
                continue
            yield from frames

    def close(self) -> None:
        self.container.close()


def _first_pts(reader: _PyAVReader) -> int:
    """The pts of the first decoded frame: the full decode's sample 0. Usually the
    stream's start_time, but not for every demuxer (ASF starts at its preroll)."""
    for frame in reader._frames():
        if frame.pts is not None:
            return frame.pts
        break
    return reader.stream.start_time or 0


# MPEG audio layer III frame headers: bitrates (kbps) by index, sample rates by index, for
# MPEG-1 and for MPEG-2/2.5 (which halve the samples per frame).
_MP3_KBPS = {1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
             2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
MP3_FRAMES_SAMPLED = 100  # frame headers averaged for the size-based estimate
MP3_LOWEST_MIN_BPS = 32_000  # MPEG-1's lowest bitrate; MPEG-2/2.5 go down to 8 kbps


def _sane_mp3_duration(file: BinaryIO, info: AudioInfo) -> AudioInfo:
    """`info` with the duration _sane_mp3_seconds gives."""
    seconds = _sane_mp3_seconds(file, info.duration)
    return info if seconds == info.duration else dataclasses.replace(info, duration=seconds)


def sane_mp3_seconds(path: str | os.PathLike | bytes, seconds: float) -> float:
    """An MP3's duration as a header reader took it (mutagen reads the same Xing count),
    checked as `probe` checks it. Raises UnreadableAudio when the file cannot be opened."""
    with _open_file(path) as file:
        return _sane_mp3_seconds(file, seconds)


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


def _has_cbr_tag(file: BinaryIO) -> bool:
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


def _stream_info(container, name: str) -> tuple[AudioInfo, object]:
    if not container.streams.audio:
        raise UnreadableAudio(name, f"not an audio file (no audio stream in "
                                    f"{container.format.name} content)")
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    codec = ctx.name
    fmt = _format_name(container.format.name, codec)
    if fmt is None:
        raise UnreadableAudio(name, f"unsupported audio format "
                                    f"({container.format.name}/{codec})")
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        raise UnreadableAudio(name, "not an audio file (no duration in the header)")
    if not ctx.sample_rate or not ctx.channels or duration <= 0:
        raise UnreadableAudio(name, "not an audio file (no sample rate or channels)")
    info = AudioInfo(format=fmt, codec=codec, duration=duration,
                     sample_rate=ctx.sample_rate, channels=ctx.channels)
    return info, stream


def _format_name(container: str, codec: str) -> str | None:
    families = set(container.split(","))
    if "mp3" in families and codec.startswith("mp3"):
        return "mp3"
    if "flac" in families:
        return "flac"
    if "ogg" in families:
        return {"vorbis": "ogg", "opus": "opus", "flac": "flac"}.get(codec)
    if "mp4" in families or "m4a" in families:
        return "m4a" if codec in _MP4_CODECS else None
    if "asf" in families:
        return "wma" if codec in _ASF_CODECS else None
    if "wav" in families or "w64" in families:
        return "wav"
    if "aiff" in families:
        return "aiff"
    return None


_INT_SCALE = {"s16": 1 / 32768, "s32": 1 / 2**31, "s64": 1 / 2**63}


def _to_mono(pieces: list[np.ndarray], sample_format: str, planar: bool,
             channels: int) -> np.ndarray:
    """Decoded frames' arrays (planar: (channels, n); packed: (n, channels)) -> mono
    float32 in [-1, 1]: one concatenate and one channel mean (as librosa downmixes)."""
    axis = 0 if planar else 1
    data = np.concatenate(pieces, axis=1 - axis)
    fmt = sample_format.rstrip("p")
    if fmt == "u8":
        data = data.astype(np.float32) - 128.0
        scale = 1 / 128
    else:
        scale = _INT_SCALE.get(fmt, 1.0)
    if channels > 1:
        mono = data.mean(axis=axis, dtype=np.float32)
    else:
        mono = data[0] if planar else data[:, 0]
    if scale != 1.0:
        mono = mono * np.float32(scale)
    return mono.astype(np.float32, copy=False)
