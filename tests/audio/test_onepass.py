"""One decode pass for both feature kinds (daemon.audio.decode.decode_song, jobs.extract,
the ExtractPool's children): each window is decoded once and resampled to both rates, and
each kind's windows are what decoding that kind alone gives."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import assert_matches, full_decode

from daemon.audio import readers
from daemon.audio.decode import decode_clips, decode_song
from daemon.audio.extract import ExtractPool
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    backbone_patches,
    clip_starts,
    song_features,
)
from daemon.audio.jobs import Extracted, SongSpecs, extract
from daemon.cli.demo import encode, synthesize
from daemon.core.errors import TooShort

pytestmark = pytest.mark.timeout(120)

BOTH = (CNN, BACKBONE)
# Formats whose seek-decoded windows equal a full decode (tests/audio/test_audio.py), and the
# two lossy ones whose decoders, after a seek, only converge near it.
EXACT = [".mp3", ".flac", ".ogg", ".wav"]
CONVERGING = [".opus", ".m4a"]


def specs(windows: int):
    return (dataclasses.replace(DEFAULT_SPEC, clips_per_song=windows),
            dataclasses.replace(BACKBONE_SPEC, clips_per_song=windows))


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """A 40 s song per format at 44.1 kHz stereo (Opus: 48 kHz), encoded by the real
    encoders."""
    folder = tmp_path_factory.mktemp("onepass")
    samples = synthesize("Rock", 40.0, 44_100, seed=3)
    return {ext: encode(folder / f"song{ext}", samples, 44_100) for ext in EXACT + CONVERGING}


@pytest.mark.parametrize("windows", [5, 8, 12])
def test_every_cnn_clip_lies_inside_the_backbone_patch_of_its_index(windows):
    """What lets one read serve both: for any duration a backbone patch fits in and any
    window count, clip i (1 s at 22,050 Hz) is inside patch i (3.008 s at 16 kHz)."""
    cnn, backbone = specs(windows)
    for duration in [*np.linspace(BACKBONE_SPEC.clip_seconds, 12, 60), 37.3, 240.0, 7200.0]:
        clips, patches = clip_starts(duration, cnn), clip_starts(duration, backbone)
        assert len(clips) == len(patches) == windows
        for clip, patch in zip(clips, patches, strict=True):
            assert patch - 1e-9 <= clip
            assert clip + cnn.clip_seconds <= patch + backbone.clip_seconds + 1e-9


@pytest.mark.parametrize("windows", [5, 8, 12])
@pytest.mark.parametrize("ext", EXACT)
def test_one_pass_windows_are_what_decoding_each_kind_alone_gives(songs, ext, windows):
    cnn, backbone = specs(windows)
    info, found = decode_song(songs[ext], BOTH, cnn, backbone)
    alone_info, clips = decode_clips(songs[ext], cnn)
    _, patches = decode_clips(songs[ext], backbone)
    assert info == alone_info
    assert found[CNN].shape == (windows, 22_050) and found[BACKBONE].shape == (windows, 48_128)
    assert np.array_equal(found[BACKBONE], patches)
    if ext == ".ogg":
        # FFmpeg's float Vorbis decoder rounds the last bit differently when its overlap
        # buffer was primed from another seek point: seen up to 4.5e-8 (12 windows), a
        # thousandth of one 16-bit step; any real misalignment is ~1e-1.
        np.testing.assert_allclose(found[CNN], clips, rtol=0, atol=1e-6)
    else:
        assert np.array_equal(found[CNN], clips)


@pytest.mark.parametrize("ext", CONVERGING)
def test_one_pass_windows_of_lossy_seeking_formats_match_a_full_decode(songs, ext):
    """Opus and AAC decoders converge after a seek only to within ~1% of a full decode,
    wherever the seek lands; one pass keeps decode_clips' contract: every window is the
    full decode at its position (no lag, correlation >= 0.99)."""
    info, found = decode_song(songs[ext], BOTH)
    for kind, spec in ((CNN, DEFAULT_SPEC), (BACKBONE, BACKBONE_SPEC)):
        reference = full_decode(songs[ext], spec.sample_rate)
        for start, window in zip(clip_starts(info.duration, spec), found[kind], strict=True):
            assert assert_matches(window, reference, start, sr=spec.sample_rate) == 0


def test_each_window_is_decoded_once_for_both_kinds(songs, monkeypatch):
    """The native decode runs once per window index whatever the kinds asked (counted on
    the real FFmpeg reader, which still does all the decoding)."""
    calls = []
    real = readers._PyAVReader.window

    def counted(self, first, count):
        calls.append((first, count))
        return real(self, first, count)

    monkeypatch.setattr(readers._PyAVReader, "window", counted)
    decode_song(songs[".mp3"], BOTH)
    assert len(calls) == DEFAULT_SPEC.clips_per_song
    # Each read is about one 3-s patch with margins, not a clip and a patch apart.
    assert all(3.0 * 44_100 < count < 3.1 * 44_100 for _, count in calls)
    calls.clear()
    decode_clips(songs[".mp3"])
    decode_clips(songs[".mp3"], BACKBONE_SPEC)
    assert len(calls) == 2 * DEFAULT_SPEC.clips_per_song


@pytest.mark.parametrize("ext", [".flac", ".mp3"])
def test_extract_gives_both_contracts_from_one_pass(songs, ext):
    both = extract(songs[ext], kinds=BOTH)
    assert np.array_equal(both.patches,
                          backbone_patches(decode_clips(songs[ext], BACKBONE_SPEC)[1]))
    assert np.array_equal(both.features, song_features(decode_clips(songs[ext])[1]))
    assert both.patches.shape == (5, 187, 96) and both.patches.dtype == np.float32
    assert set(both.by_kind()) == {CNN, BACKBONE}
    cnn_only = extract(songs[ext])
    assert cnn_only.patches is None and np.array_equal(cnn_only.features, both.features)
    backbone_only = extract(songs[ext], kinds=(BACKBONE,))
    assert backbone_only.features is None
    assert np.array_equal(backbone_only.patches, both.patches)
    assert set(backbone_only.by_kind()) == {BACKBONE}


def test_a_song_shorter_than_a_patch_fills_its_patches_and_one_shorter_than_a_clip_is_too_short(
        tmp_path):
    path = encode(tmp_path / "short.flac", synthesize("Pop", 2.0, 22_050), 22_050)
    cnn_only = extract(path)
    both = extract(path, kinds=BOTH)
    assert np.array_equal(both.features, cnn_only.features)
    assert both.patches.shape == (5, 187, 96)
    assert np.array_equal(both.patches,
                          backbone_patches(decode_clips(path, BACKBONE_SPEC)[1]))
    path = encode(tmp_path / "blip.flac", synthesize("Pop", 0.6, 22_050), 22_050)
    with pytest.raises(TooShort) as err:
        extract(path, kinds=BOTH)
    assert "blip.flac" in str(err.value) and "1 s clip" in err.value.reason


def test_unknown_or_no_kinds_are_refused(songs):
    for kinds in ((), ("cnn", "mfcc")):
        with pytest.raises(ValueError, match="feature kinds"):
            decode_song(songs[".wav"], kinds)


def test_song_specs_travel_to_the_children_as_json():
    cnn, backbone = specs(8)
    assert SongSpecs.from_json(SongSpecs(cnn, backbone).to_json()) == SongSpecs(cnn, backbone)
    # A bare FeatureSpec (what a child got before the backbone existed) still reads.
    assert SongSpecs.from_json(cnn.to_json()) == SongSpecs(cnn, BACKBONE_SPEC)


def test_the_pools_children_return_both_kinds_with_the_pools_window_count(songs):
    cnn, backbone = specs(8)
    with ExtractPool(1, cnn, timeout=60, backbone_spec=backbone) as pool:
        pool.submit(songs[".ogg"], "both", kinds=BOTH)
        pool.submit(songs[".flac"], "cnn")
        pool.submit(songs[".flac"], "backbone", kinds=[BACKBONE])
        results = dict(pool.get(timeout=60) for _ in range(3))
    assert all(isinstance(r, Extracted) for r in results.values()), results
    local = extract(songs[".ogg"], cnn, backbone, BOTH)
    assert results["both"].features.shape == (8, 129, 98, 1)
    assert results["both"].patches.shape == (8, 187, 96)
    assert np.array_equal(results["both"].features, local.features)
    assert np.array_equal(results["both"].patches, local.patches)
    assert results["cnn"].patches is None and results["cnn"].features.shape[0] == 8
    assert results["backbone"].features is None
    assert np.array_equal(results["backbone"].patches,
                          extract(songs[".flac"], cnn, backbone, [BACKBONE]).patches)
