"""The seed's log spectrogram: the one implementation of the model's input.

The trainer imports this module; the daemon runs it; the model bundle stores the
`FeatureSpec` it was trained with, and the classifier refuses a bundle whose spec differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from daemon.core.errors import TooShort


@dataclass(frozen=True)
class FeatureSpec:
    """Every number that decides what the model sees."""

    sample_rate: int = 22_050
    clip_seconds: float = 1.0
    clips_per_song: int = 5
    # Clips sit evenly spaced inside this share of the song (skips intros and outros).
    region_start: float = 0.10
    region_end: float = 0.90
    # scipy.signal.spectrogram defaults, written out so a scipy change cannot move them.
    nperseg: int = 256
    noverlap: int = 32
    window: tuple[str, float] = ("tukey", 0.25)
    detrend: str = "constant"
    scaling: str = "density"
    floor: float = 1e-10
    top_db: float = 80.0

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_freqs(self) -> int:
        return self.nperseg // 2 + 1

    @property
    def n_frames(self) -> int:
        step = self.nperseg - self.noverlap
        return (self.clip_samples - self.noverlap) // step

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Model input per clip: (freqs, frames, 1)."""
        return (self.n_freqs, self.n_frames, 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        data = json.loads(text)
        data["window"] = tuple(data["window"])
        return cls(**data)

    @property
    def key(self) -> str:
        """Short stable hash; names feature-cache entries."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


DEFAULT_SPEC = FeatureSpec()


def clip_starts(duration: float, spec: FeatureSpec, path: object = "") -> list[float]:
    """Start times (s) of the song's clips.

    Evenly spaced inside region_start..region_end of the duration; a song whose region is
    shorter than one clip gets its clips spread evenly over what exists.
    """
    clip = spec.clip_seconds
    if duration < clip:
        raise TooShort(path, f"{duration:.2f} s is shorter than one {clip:g} s clip")
    first, last = spec.region_start * duration, spec.region_end * duration - clip
    if last < first:
        first, last = 0.0, duration - clip
    return [float(x) for x in np.linspace(first, last, spec.clips_per_song)]


@functools.lru_cache(maxsize=4)
def _tukey(n: int, alpha: float) -> np.ndarray:
    """scipy.signal.get_window(("tukey", alpha), n): the periodic Tukey window (the
    symmetric one of n + 1 points without its last)."""
    m = n + 1
    k = np.arange(m, dtype=np.float64)
    width = int(np.floor(alpha * (m - 1) / 2.0))
    window = np.ones(m)
    rise, fall = k[:width + 1], k[m - width - 1:]
    window[:width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * rise / alpha / (m - 1))))
    window[m - width - 1:] = 0.5 * (1 + np.cos(
        np.pi * (-2.0 / alpha + 1 + 2.0 * fall / alpha / (m - 1))))
    window = window[:n]
    window.setflags(write=False)
    return window


def _power_density(clips: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """scipy.signal.spectrogram(clips, fs, window, nperseg, noverlap, detrend="constant",
    scaling="density") in numpy: (n, samples) -> (n, n_freqs, n_frames) float64.

    scipy.signal would cost every decoder child ~50 MB (its import pulls in most of
    scipy); tests/audio/test_features.py holds this to scipy's own call."""
    if spec.window[0] != "tukey" or spec.detrend != "constant" or spec.scaling != "density":
        raise ValueError(f"only a Tukey window, constant detrend and density scaling are "
                         f"implemented, not {spec.window!r}/{spec.detrend!r}/{spec.scaling!r}")
    window = _tukey(spec.nperseg, float(spec.window[1]))
    frames = np.lib.stride_tricks.sliding_window_view(
        clips.astype(np.float64, copy=False), spec.nperseg, axis=-1)[:, ::spec.nperseg
                                                                        - spec.noverlap]
    frames = frames - frames.mean(axis=-1, keepdims=True)
    spectrum = np.fft.rfft(frames * window, axis=-1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2) / (spec.sample_rate * (window ** 2).sum())
    # One-sided: every bin but DC (and Nyquist, for an even segment) counts twice.
    power[..., 1:-1 if spec.nperseg % 2 == 0 else None] *= 2
    return power.transpose(0, 2, 1)


def _scaled_power(clips: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n, samples) -> (n, n_freqs, n_frames) float32 in [0, 1], each clip scaled alone."""
    db = 10.0 * np.log10(_power_density(clips, spec) + spec.floor)
    top = db.max(axis=(1, 2), keepdims=True)
    db = np.clip(db, top - spec.top_db, top)
    return ((db - (top - spec.top_db)) / spec.top_db).astype(np.float32)


def log_spectrogram(clip: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """One clip of mono samples -> (n_freqs, n_frames) float32 in [0, 1]."""
    if clip.shape != (spec.clip_samples,):
        raise ValueError(f"clip has shape {clip.shape}, expected ({spec.clip_samples},)")
    return _scaled_power(clip[np.newaxis], spec)[0]


def song_features(clips: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """(clips, samples) -> model input (clips, n_freqs, n_frames, 1) float32.

    One spectrogram call for all clips (the costliest step per song after decoding).
    """
    if clips.ndim != 2 or clips.shape[1] != spec.clip_samples:
        raise ValueError(f"clips have shape {clips.shape}, expected (n, {spec.clip_samples})")
    return _scaled_power(clips, spec)[..., np.newaxis]


# ---------------------------------------------------------------- feature contract 2
# The pretrained backbone's input (musicnn, MSD): a log mel spectrogram as musicnn's own
# extractor computes it (musicnn/extractor.py: librosa.feature.melspectrogram with
# librosa's defaults, then log10(10000 x + 1)), in numpy so the daemon needs no librosa.


@dataclass(frozen=True)
class BackboneSpec:
    """Every number that decides what the backbone sees.

    Patches are placed by `clip_starts` exactly as the CNN's clips are (same region, same
    count), with `clip_seconds` the patch's length; each CNN clip then lies inside the
    backbone patch of the same index, so one decode per window can feed both contracts.
    """

    sample_rate: int = 16_000
    patch_frames: int = 187  # musicnn's 3-s input: time_to_frames(3 s) + 1
    n_fft: int = 512
    hop: int = 256
    window: str = "hann"  # periodic, as librosa's get_window("hann", fftbins=True)
    power: float = 2.0
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float = 8_000.0
    mel_scale: str = "slaney"  # librosa's htk=False
    mel_norm: str = "slaney"  # each band's area 1 in Hz
    log_multiplier: float = 10_000.0  # log10(log_multiplier * mel + 1)
    dtype: str = "float32"  # never float16: 10000 * mel overflows it on loud songs
    clips_per_song: int = 5
    region_start: float = 0.10
    region_end: float = 0.90

    @property
    def patch_samples(self) -> int:
        """Samples one patch's frames span (frames never reach past the window)."""
        return (self.patch_frames - 1) * self.hop + self.n_fft

    # clip_samples / clip_seconds: the names clip_starts and the decoder read.
    @property
    def clip_samples(self) -> int:
        return self.patch_samples

    @property
    def clip_seconds(self) -> float:
        return self.patch_samples / self.sample_rate

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def input_shape(self) -> tuple[int, int]:
        """Model input per patch: (frames, mel bands)."""
        return (self.patch_frames, self.n_mels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackboneSpec:
        return cls(**json.loads(text))

    @property
    def key(self) -> str:
        """Short stable hash; names feature-cache entries."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


BACKBONE_SPEC = BackboneSpec()


def padded_patch_seconds(duration: float, spec: BackboneSpec = BACKBONE_SPEC) -> float | None:
    """A song shorter than one backbone patch but at least one seed CNN clip long (a
    2-s song) is still heard: each of its patches holds the whole song, from its start,
    repeated until the patch is full (repeating, not silence, so the patch sounds like
    the song). -> the seconds of audio each patch holds then, or None for a song at least
    one patch long (patches placed by clip_starts, exactly as always) or too short for
    any model (clip_starts raises TooShort)."""
    if DEFAULT_SPEC.clip_seconds <= duration < spec.clip_seconds:
        return duration
    return None


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox scale: linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz,
                    min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep,
                    hz / f_sp)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                    f_sp * mel)


@functools.lru_cache(maxsize=4)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                    fmax: float) -> np.ndarray:
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax),
                                          n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, np.newaxis] - fft_hz[np.newaxis, :]
    rising = -ramps[:-2] / widths[:-1, np.newaxis]
    falling = ramps[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, np.newaxis]  # Slaney norm: area 1
    weights = weights.astype(np.float32)
    weights.setflags(write=False)  # cached and shared: nobody may change it
    return weights


def mel_filterbank(spec: BackboneSpec = BACKBONE_SPEC) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 Slaney mel weights, computed once per spec.

    Equal to librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False,
    norm="slaney") (tests/trainer/test_backbone.py compares them).
    """
    if spec.mel_scale != "slaney" or spec.mel_norm != "slaney":
        raise ValueError(f"only Slaney mel bands are implemented, not {spec.mel_scale!r}/"
                         f"{spec.mel_norm!r}")
    return _mel_filterbank(spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax)


@functools.lru_cache(maxsize=4)
def _hann(n: int) -> np.ndarray:
    # Periodic Hann (the DFT-even window librosa's stft uses).
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    window.setflags(write=False)
    return window


def backbone_patches(windows: np.ndarray, spec: BackboneSpec = BACKBONE_SPEC) -> np.ndarray:
    """(patches, spec.patch_samples) mono samples at 16 kHz -> backbone input
    (patches, spec.patch_frames, spec.n_mels) float32.

    Frame t of a window covers samples t*hop .. t*hop+n_fft of it, so a window starting
    at sample s - n_fft/2 of a song gives exactly the frames musicnn's centred STFT of
    the whole song has from the frame at s on (its padding only touches the song's first
    and last frame, which no patch inside the song reaches).
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] != spec.patch_samples:
        raise ValueError(f"windows have shape {windows.shape}, "
                         f"expected (n, {spec.patch_samples})")
    if spec.window != "hann" or spec.dtype != "float32":
        raise ValueError(f"only a Hann window and float32 are implemented, not "
                         f"{spec.window!r}/{spec.dtype!r}")
    frames = np.lib.stride_tricks.sliding_window_view(
        windows.astype(np.float64, copy=False), spec.n_fft, axis=-1)[:, ::spec.hop]
    spectrum = np.fft.rfft(frames * _hann(spec.n_fft), axis=-1)
    power = np.abs(spectrum) ** spec.power
    mel = power @ mel_filterbank(spec).T.astype(np.float64)
    return np.log10(spec.log_multiplier * mel + 1.0).astype(np.float32)


# ---------------------------------------------------------------- what a song's input is
# The feature kinds a bundle's inputs take (metadata "members"/"embedding" name them):
# CNN -> "clips" (clips, n_freqs, n_frames, 1) by FeatureSpec; BACKBONE -> "patches"
# (patches, patch_frames, n_mels) by BackboneSpec. A song's features are a dict by kind.
CNN, BACKBONE = "cnn", "backbone"
FEATURE_KINDS = (CNN, BACKBONE)
INPUT_NAMES = {CNN: "clips", BACKBONE: "patches"}


@dataclass(frozen=True)
class EmbeddingSpec:
    """What a cached song embedding is: the backbone's per-patch output `output` (dim
    values per patch) for patches made by `backbone`, from the checkpoint in the wheel
    with sha256 `wheel_sha256`. "Sounds like" uses the mean over patches; the backbone
    head is fitted on the same vectors."""

    backbone: BackboneSpec = BACKBONE_SPEC
    output: str = "penultimate"
    dim: int = 200
    # trainer.backbone.WHEEL_SHA256 (written out: the daemon never imports the trainer).
    wheel_sha256: str = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"

    @property
    def input_shape(self) -> tuple[int]:
        """Per patch: (dim,)."""
        return (self.dim,)

    def to_json(self) -> str:
        return json.dumps({"backbone": json.loads(self.backbone.to_json()),
                           "output": self.output, "dim": self.dim,
                           "wheel_sha256": self.wheel_sha256}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EmbeddingSpec:
        data = json.loads(text)
        return cls(BackboneSpec(**data["backbone"]), data["output"], int(data["dim"]),
                   data["wheel_sha256"])

    @property
    def key(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


EMBEDDING_SPEC = EmbeddingSpec()
