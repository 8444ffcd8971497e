"""Fingerprints and the feature cache, on real encoded files and real features."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import DEFAULT_SPEC, clip_starts, song_features
from daemon.audio.fingerprint import fingerprint
from daemon.cli.demo import synthesize


def features_of(genre: str, seconds: float = 8.0, seed: int = 0, spec=DEFAULT_SPEC):
    """Real features of a synthesized song: the daemon's own feature code."""
    mono = synthesize(genre, seconds, spec.sample_rate, seed, channels=1)[:, 0]
    starts = clip_starts(seconds, spec)
    clips = np.stack([mono[int(s * spec.sample_rate):][:spec.clip_samples] for s in starts])
    return song_features(clips, spec)


def test_fingerprint_is_stable_across_moves_and_changes_with_content(make_song, tmp_path):
    song = make_song("a.flac", genre="Jazz", seconds=30)
    other = make_song("b.flac", genre="Jazz", seconds=30, seed=1)
    fp = fingerprint(song)
    assert len(fp) == 32 and int(fp, 16) >= 0
    moved = tmp_path / "elsewhere" / "renamed.flac"
    moved.parent.mkdir()
    shutil.move(song, moved)
    assert fingerprint(moved) == fp
    assert fingerprint(other) != fp
    # One byte changed inside a sampled block (the middle of the file) changes it.
    data = bytearray(moved.read_bytes())
    assert len(data) > 5 * 64 * 1024
    data[len(data) // 2] ^= 0xFF
    moved.write_bytes(bytes(data))
    assert fingerprint(moved) != fp


def test_fingerprint_of_small_and_empty_files(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    small = tmp_path / "small.mp3"
    small.write_bytes(b"x" * 1000)
    assert fingerprint(empty) != fingerprint(small)
    with pytest.raises(OSError):
        fingerprint(tmp_path / "missing.mp3")


def test_put_get_roundtrip_is_float16_on_disk(tmp_path):
    cache = FeatureCache(tmp_path / "cache", DEFAULT_SPEC)
    features = features_of("Rock")
    assert features.shape == (5, 129, 98, 1)
    assert cache.get("ab" * 16) is None and not cache.has("ab" * 16)
    cache.put("ab" * 16, features)
    assert cache.has("ab" * 16)
    path = cache.path("ab" * 16)
    assert path == tmp_path / "cache" / DEFAULT_SPEC.key / "ab" / f"{'ab' * 16}.npy"
    assert np.load(path).dtype == np.float16
    back = cache.get("ab" * 16)
    assert back.dtype == np.float32 and back.shape == features.shape
    # float16 keeps the [0, 1] features to better than 1e-3.
    assert np.abs(back - features).max() < 1e-3
    assert not list(path.parent.glob("*.tmp"))


def test_a_different_spec_never_sees_another_specs_entries(tmp_path):
    one = FeatureCache(tmp_path, DEFAULT_SPEC)
    two_spec = dataclasses.replace(DEFAULT_SPEC, clip_seconds=2.0)
    two = FeatureCache(tmp_path, two_spec)
    one.put("cd" * 16, features_of("Pop"))
    assert not two.has("cd" * 16) and two.get("cd" * 16) is None
    wide = features_of("Pop", seconds=12, spec=two_spec)
    assert wide.shape == (5, 129, 196, 1)
    two.put("cd" * 16, wide)
    assert one.get("cd" * 16).shape[2] == 98 and two.get("cd" * 16).shape[2] == 196
    with pytest.raises(ValueError):
        one.put("ef" * 16, wide)


def test_link_serves_the_same_features_under_the_new_fingerprint(tmp_path):
    cache = FeatureCache(tmp_path, DEFAULT_SPEC)
    features = features_of("Blues")
    cache.put("11" * 16, features)
    assert cache.link("11" * 16, "22" * 16)
    np.testing.assert_array_equal(cache.get("22" * 16), cache.get("11" * 16))
    assert not cache.link("33" * 16, "44" * 16)
    assert not cache.has("44" * 16)


def test_corrupt_entry_reads_as_absent_and_is_dropped(tmp_path):
    cache = FeatureCache(tmp_path, DEFAULT_SPEC)
    cache.put("aa" * 16, features_of("Folk"))
    cache.path("aa" * 16).write_bytes(b"\x93NUMPY garbage")
    assert cache.get("aa" * 16) is None
    assert not cache.has("aa" * 16)


def _patches_of(genre: str, windows: int = 5, seconds: float = 12.0):
    """Real backbone patches of a synthesized song: the daemon's own mel code."""
    from daemon.audio.features import BACKBONE_SPEC, backbone_patches

    spec = dataclasses.replace(BACKBONE_SPEC, clips_per_song=windows)
    mono = synthesize(genre, seconds, spec.sample_rate, 0, channels=1)[:, 0]
    return backbone_patches(np.stack([mono[int(s * spec.sample_rate):][:spec.clip_samples]
                                      for s in clip_starts(seconds, spec)]), spec)


def test_every_spec_gets_its_own_cache_and_round_trips(tmp_path):
    """The CNN's features, the backbone's patches and the backbone's embeddings, each
    under its spec's key, each back as float32 of the shape put in."""
    from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC

    fp = "9f" * 16
    cnn, backbone = FeatureCache(tmp_path, DEFAULT_SPEC), FeatureCache(tmp_path, BACKBONE_SPEC)
    embeddings = FeatureCache(tmp_path, EMBEDDING_SPEC)
    assert len({cnn.folder, backbone.folder, embeddings.folder}) == 3
    features, patches = features_of("Metal"), _patches_of("Metal")
    embedding = np.random.default_rng(0).standard_normal((5, 200)).astype(np.float32) * 4
    cnn.put(fp, features)
    backbone.put(fp, patches)
    embeddings.put(fp, embedding)
    assert np.load(backbone.path(fp)).dtype == np.float16
    back = backbone.get(fp)
    assert back.dtype == np.float32 and back.shape == (5, 187, 96)
    # float16 keeps the log mel bands (0 .. ~5 here) to 3 significant digits.
    assert patches.max() > 1.0
    np.testing.assert_allclose(back, patches, rtol=1e-3, atol=1e-3)
    # Embeddings are stored as the backbone gave them.
    assert np.load(embeddings.path(fp)).dtype == np.float32
    assert np.array_equal(embeddings.get(fp), embedding)
    assert cnn.get(fp).shape == (5, 129, 98, 1)


def test_each_cache_refuses_and_drops_what_is_not_its_shape(tmp_path):
    from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC

    cnn, backbone = FeatureCache(tmp_path, DEFAULT_SPEC), FeatureCache(tmp_path, BACKBONE_SPEC)
    embeddings = FeatureCache(tmp_path, EMBEDDING_SPEC)
    features, patches = features_of("Jazz"), _patches_of("Jazz")
    wrong = [(cnn, patches), (cnn, features[..., 0]), (backbone, features),
             (backbone, patches[:, :100]), (backbone, patches[0]),
             (embeddings, np.zeros((5, 199), np.float32)), (embeddings, np.zeros(200)),
             (embeddings, np.zeros((0, 200)))]
    for cache, array in wrong:
        with pytest.raises(ValueError, match="do not fit"):
            cache.put("77" * 16, array)
        assert not cache.has("77" * 16)
    # A foreign entry found on disk (another version's layout) is absent, and dropped.
    path = backbone.path("88" * 16)
    path.parent.mkdir(parents=True)
    np.save(path, features.astype(np.float16))
    assert backbone.get("88" * 16) is None and not path.exists()


def test_the_window_count_is_part_of_the_cache_key(tmp_path):
    """windows_per_song 8 makes 8-window entries in a folder of their own: a 5-window
    entry is never served where 8 are expected."""
    from daemon.audio.features import BACKBONE_SPEC

    eight_cnn = dataclasses.replace(DEFAULT_SPEC, clips_per_song=8)
    eight_backbone = dataclasses.replace(BACKBONE_SPEC, clips_per_song=8)
    assert eight_cnn.key != DEFAULT_SPEC.key and eight_backbone.key != BACKBONE_SPEC.key
    five, eight = FeatureCache(tmp_path, BACKBONE_SPEC), FeatureCache(tmp_path, eight_backbone)
    five.put("66" * 16, _patches_of("Rock"))
    assert eight.get("66" * 16) is None
    eight.put("66" * 16, _patches_of("Rock", windows=8))
    assert eight.get("66" * 16).shape == (8, 187, 96) and five.get("66" * 16).shape[0] == 5
