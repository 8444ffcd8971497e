"""The two decoders behind daemon.audio.decode: libsndfile (soundfile) with exact sample
seeks, and FFmpeg (PyAV), which seeks a little before the window and trims by the frames'
timestamps. Each reads mono float32 windows at the file's own sample rate.
"""

from __future__ import annotations

import collections
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from daemon.audio.header import AudioInfo, has_cbr_tag, sane_mp3_duration
from daemon.core.errors import UnreadableAudio

# Decoded before the window after a seek: MP3's bit reservoir, AAC/Vorbis MDCT overlap and
# Opus (which needs 80 ms) give wrong samples right after a decoder flush. Widened on
# demand when the seek lands late (see _PyAVReader.window).
PREROLL_SECONDS = 0.1
PREROLL_FRAMES = 8
# MP3s longer than this seek by bitrate instead of scanning frame headers (see _PyAVReader).
LONG_MP3_SECONDS = 20 * 60
AVFMT_FLAG_FAST_SEEK = 0x80000

# libsndfile container (and subtype, for Ogg) -> our format name.
_SOUNDFILE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "W64": "wav",
                      "AIFF": "aiff", "FLAC": "flac", "MP3": "mp3", "MPEG": "mp3",
                      "OGG/VORBIS": "ogg", "OGG/OPUS": "opus", "OGG/FLAC": "flac"}
# libsndfile subtypes named as FFmpeg names the codec.
_SOUNDFILE_CODECS = {"MPEG_LAYER_III": "mp3", "VORBIS": "vorbis", "OPUS": "opus"}
# FFmpeg codecs -> our format name, per container family.
_MP4_CODECS = {"aac", "alac", "mp3", "mp3float"}
_ASF_CODECS = {"wmav1", "wmav2", "wmapro", "wmalossless", "wmavoice"}


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
            cbr = info.format == "mp3" and has_cbr_tag(file)
            if info.format == "mp3":
                info = sane_mp3_duration(file, info)
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
