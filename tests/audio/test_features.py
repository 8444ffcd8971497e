"""The seed's feature contract, pinned: shapes, placement, scaling and a golden vector."""

from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from daemon.audio.features import (
    DEFAULT_SPEC,
    FeatureSpec,
    clip_starts,
    log_spectrogram,
    song_features,
)
from daemon.core.errors import TooShort

GOLDEN = Path(__file__).parents[1] / "data" / "golden_features.npz"


def golden_input(spec: FeatureSpec) -> np.ndarray:
    """A chirp over seeded noise: PCG64 streams are stable across numpy versions."""
    t = np.arange(spec.clip_samples) / spec.sample_rate
    noise = np.random.default_rng(20261126).standard_normal(spec.clip_samples)
    return (0.6 * signal.chirp(t, 80, t[-1], 6000) + 0.1 * noise).astype(np.float32)


def test_shapes_for_one_and_two_second_clips():
    assert DEFAULT_SPEC.input_shape == (129, 98, 1)
    two = FeatureSpec(clip_seconds=2.0)
    assert two.input_shape == (129, 196, 1)
    x = np.zeros(two.clip_samples, np.float32)
    assert log_spectrogram(x, two).shape == (129, 196)


def test_matches_scipy_defaults_and_scaling():
    x = golden_input(DEFAULT_SPEC)
    _, _, power = signal.spectrogram(x.astype(np.float64), fs=22050)  # the seed's call
    db = 10 * np.log10(power + 1e-10)
    expected = (np.clip(db, db.max() - 80, db.max()) - (db.max() - 80)) / 80
    got = log_spectrogram(x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() == 1.0


def test_golden_vector_never_drifts():
    got = log_spectrogram(golden_input(DEFAULT_SPEC))
    stored = np.load(GOLDEN)
    assert stored["spec"].item() == DEFAULT_SPEC.to_json()
    np.testing.assert_allclose(got, stored["features"], atol=1e-5)


def test_song_features_stacks_clips_with_a_channel_axis():
    clips = np.stack([golden_input(DEFAULT_SPEC)] * 5)
    assert song_features(clips).shape == (5, 129, 98, 1)


def test_clips_sit_evenly_inside_ten_to_ninety_percent():
    starts = clip_starts(200.0, DEFAULT_SPEC)
    assert starts == pytest.approx([20.0, 59.75, 99.5, 139.25, 179.0])
    assert starts[-1] + 1.0 == pytest.approx(0.9 * 200)


def test_short_song_spreads_clips_over_what_exists():
    starts = clip_starts(2.0, DEFAULT_SPEC)  # region 0.2..1.8 s is only 1.6 s: fits
    assert starts[0] == pytest.approx(0.2) and starts[-1] == pytest.approx(0.8)
    starts = clip_starts(1.1, DEFAULT_SPEC)  # region 0.11..0.99 s is shorter than a clip
    assert starts[0] == 0.0 and starts[-1] == pytest.approx(0.1)


def test_shorter_than_one_clip_is_a_typed_error():
    with pytest.raises(TooShort, match=r"song\.mp3: 0\.50 s is shorter than one 1 s clip"):
        clip_starts(0.5, DEFAULT_SPEC, "song.mp3")


def test_spec_round_trips_through_json_and_keys_differ():
    assert FeatureSpec.from_json(DEFAULT_SPEC.to_json()) == DEFAULT_SPEC
    assert FeatureSpec(clip_seconds=2.0).key != DEFAULT_SPEC.key


def test_batched_song_features_equal_clip_by_clip():
    rng = np.random.default_rng(7)
    clips = np.stack([golden_input(DEFAULT_SPEC) * g for g in (1.0, 0.01, 3.0)]
                     + [rng.standard_normal(DEFAULT_SPEC.clip_samples).astype(np.float32)])
    batched = song_features(clips)
    for clip, features in zip(clips, batched, strict=True):
        np.testing.assert_array_equal(features[..., 0], log_spectrogram(clip))


@pytest.mark.parametrize("n", [64, 255, 256, 257])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
def test_the_tukey_window_is_scipys(n, alpha):
    from daemon.audio.features import _tukey

    np.testing.assert_allclose(_tukey(n, alpha), signal.get_window(("tukey", alpha), n),
                               rtol=0, atol=1e-15)


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, FeatureSpec(clip_seconds=2.0),
                                  FeatureSpec(nperseg=255, noverlap=31,
                                              window=("tukey", 0.5))])
def test_the_power_density_is_scipys_spectrogram(spec):
    from daemon.audio.features import _power_density

    clips = np.random.default_rng(3).standard_normal((3, spec.clip_samples)) + 0.2
    _, _, expected = signal.spectrogram(clips, fs=spec.sample_rate, window=spec.window,
                                        nperseg=spec.nperseg, noverlap=spec.noverlap,
                                        detrend=spec.detrend, scaling=spec.scaling, axis=-1)
    got = _power_density(clips, spec)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_a_decoder_never_imports_scipy(tmp_path):
    """scipy would cost every decoder child ~50 MB: a song's features, for both models,
    come from numpy alone."""
    import subprocess
    import sys

    from daemon.cli.demo import encode, synthesize

    song = encode(tmp_path / "song.flac", synthesize("Rock", 12.0, 22_050, seed=1), 22_050)
    code = ("import sys\n"
            "from daemon.audio.jobs import extract\n"
            "from daemon.audio.features import BACKBONE, CNN\n"
            f"got = extract({str(song)!r}, kinds=(CNN, BACKBONE))\n"
            "assert got.features is not None and got.patches is not None\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
