"""The seed's log spectrogram: the one implementation of the model's input.

The trainer imports this module; the daemon runs it; the model bundle stores the
`FeatureSpec` it was trained with, and the classifier refuses a bundle whose spec differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from daemon.errors import TooShort


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


def _scaled_power(clips: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n, samples) -> (n, n_freqs, n_frames) float32 in [0, 1], each clip scaled alone."""
    # Imported here: scipy costs the daemon's main process ~100 MB and only the decoder
    # children (and a thumbnail cache miss) compute features.
    from scipy import signal

    _, _, power = signal.spectrogram(
        clips.astype(np.float64, copy=False),
        fs=spec.sample_rate,
        window=spec.window,
        nperseg=spec.nperseg,
        noverlap=spec.noverlap,
        detrend=spec.detrend,
        scaling=spec.scaling,
        axis=-1,
    )
    db = 10.0 * np.log10(power + spec.floor)
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
