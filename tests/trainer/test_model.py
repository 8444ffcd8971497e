"""The seed CNN, training from the feature cache, and the ONNX export.

Features here come from daemon.audio.features on daemon.cli.demo.synthesize output (no decoding);
tests/trainer/test_trainer.py runs the whole pipeline on encoded, tagged files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import DEFAULT_SPEC, clip_starts, song_features
from daemon.cli.demo import synthesize
from daemon.suggest.classifier import Classifier, read_metadata, song_probabilities
from trainer.dataset import LabelledSong
from trainer.export import ParityError, export_bundle  # noqa: E402
from trainer.fit import class_weights, configure, fit, load_warm_start, predict_clips  # noqa: E402
from trainer.model import build_model  # noqa: E402

pytestmark = pytest.mark.slow  # trains the seed CNN

GENRES = ("Classical", "Hip-Hop", "Metal")


def test_seed_cnn_is_exactly_the_seed():
    import keras

    model = build_model(10, (129, 98, 1))
    assert model.count_params() == 211_450
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == ["Conv2D", "BatchNormalization", "Conv2D", "MaxPooling2D", "Conv2D",
                     "BatchNormalization", "Conv2D", "MaxPooling2D", "Flatten", "Dropout",
                     "Dense"]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 16, 32, 32]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    # Keras' default 0.99 leaves small libraries' inference at chance (see trainer/model.py).
    assert all(layer.momentum == 0.9 for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    assert model.layers[-1].activation.__name__ == "softmax"


def test_two_second_clips_build_and_run():
    model = build_model(4, (129, 196, 1))
    out = model(np.zeros((2, 129, 196, 1), np.float32), training=False)
    assert tuple(out.shape) == (2, 4)


def test_class_weights_balance_the_classes():
    weights = class_weights(np.array([0, 0, 0, 0, 1, 1, 2]), 4)
    assert weights[3] == 0
    assert weights[0] * 4 == pytest.approx(weights[1] * 2) == pytest.approx(weights[2])


@pytest.fixture(scope="module")
def small_library(tmp_path_factory):
    """A cache of 3 genres x 12 songs of real features; 9 songs per genre train, 3 validate."""
    cache = FeatureCache(tmp_path_factory.mktemp("cache"), DEFAULT_SPEC)
    spec = DEFAULT_SPEC
    train, validation = [], []
    for g, genre in enumerate(GENRES):
        for i in range(12):
            seconds = 6.0
            mono = synthesize(genre, seconds, spec.sample_rate, seed=100 * g + i,
                              channels=1)[:, 0]
            clips = np.stack([mono[int(s * spec.sample_rate):][:spec.clip_samples]
                              for s in clip_starts(seconds, spec)])
            fp = f"{g:02d}{i:030d}"
            cache.put(fp, song_features(clips, spec))
            song = LabelledSong(cache.path(fp), f"{genre}/{i}.wav", genre, f"artist:{genre}{i}",
                                fp)
            (validation if i >= 9 else train).append(song)
    return cache, train, validation


@pytest.fixture(scope="module")
def trained(small_library):
    cache, train, validation = small_library
    configure(seed=7, threads=2)
    model, info = fit(train, validation, GENRES, cache, epochs=5, seed=7, verbose=0)
    return model, info


def test_a_small_library_trains_to_inference_accuracy(small_library, trained):
    """The moving-statistics trap: inference (training=False) must work after a few epochs."""
    cache, _, validation = small_library
    model, info = trained
    assert 1 <= info["epochs_run"] <= 5 and 1 <= info["best_epoch"] <= info["epochs_run"]
    clip_probs = predict_clips(model, validation, cache, len(GENRES))
    labels = np.array([GENRES.index(s.genre) for s in validation])
    song_accuracy = (song_probabilities(clip_probs).argmax(axis=1) == labels).mean()
    assert song_accuracy >= 0.85, info["history"]
    # The first BatchNorm's inference mean is its input's real mean over training clips
    # (with Keras' plain moving average at 0.99 it was measured 78% off here).
    import keras

    train = small_library[1]
    layer = next(x for x in model.layers if isinstance(x, keras.layers.BatchNormalization))
    inputs = np.concatenate([cache.get(s.fingerprint) for s in train])
    activations = np.asarray(keras.Model(model.inputs[0], layer.input)(inputs, training=False))
    mean = activations.mean(axis=(0, 1, 2))
    drift = np.abs(np.asarray(layer.moving_mean) - mean).sum() / np.abs(mean).sum()
    assert drift < 0.05


def test_fitting_is_deterministic(small_library):
    cache, train, validation = small_library
    weights = []
    for _ in range(2):
        configure(seed=3, threads=2)
        model, _ = fit(train[:6], validation[:3], GENRES, cache, epochs=1, seed=3, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_export_agrees_with_keras_and_serves_through_the_classifier(small_library, trained,
                                                                   tmp_path):
    cache, _, validation = small_library
    model, _ = trained
    clips = np.concatenate([cache.get(s.fingerprint) for s in validation])
    metadata = {"classes": list(GENRES), "feature_spec": json.loads(DEFAULT_SPEC.to_json()),
                "temperature": 1.25, "clips_per_song": 5, "metrics": {"test": {}},
                "training_set": {"songs": 27}, "training_set_hash": "ab" * 32,
                "created_at": "2026-01-01T00:00:00+00:00", "parent_model": "",
                "trainer_version": "test"}
    diff = export_bundle(model, tmp_path / "m.onnx", metadata, clips)
    assert diff <= 1e-4
    assert read_metadata(tmp_path / "m.onnx") == metadata
    classifier = Classifier.load(tmp_path / "m.onnx", DEFAULT_SPEC)
    songs = [cache.get(s.fingerprint) for s in validation]
    keras_songs = song_probabilities(predict_clips(model, validation, cache, len(GENRES)), 1.25)
    np.testing.assert_allclose(classifier.predict_songs(songs), keras_songs, atol=1e-4)
    # An export that does not reproduce Keras is refused and leaves no file behind.
    with pytest.raises(ParityError, match="bundle not written"):
        export_bundle(model, tmp_path / "refused.onnx", metadata, clips, tolerance=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_warm_start_keeps_the_convolutions_when_the_genres_change(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "model.keras")
    (tmp_path / "report.json").write_text(json.dumps({"classes": list(GENRES)}))
    warm, how = load_warm_start(tmp_path, GENRES, DEFAULT_SPEC.input_shape)
    assert warm is not None and how == "warm: same genres"
    np.testing.assert_array_equal(warm.get_weights()[0], model.get_weights()[0])
    # Two genres more (one new at each end): warm convolutions, a new output layer whose
    # columns of the genres both know are the old ones.
    wider = ("AAA", *GENRES, "Zydeco")
    grown, how = load_warm_start(tmp_path, wider, DEFAULT_SPEC.input_shape)
    assert grown is not None and "new output layer" in how
    assert grown.output_shape[-1] == len(wider)
    for old, new in zip(model.get_weights()[:-2], grown.get_weights()[:-2], strict=True):
        np.testing.assert_array_equal(old, new)
    old_kernel, new_kernel = model.get_weights()[-2], grown.get_weights()[-2]
    np.testing.assert_array_equal(new_kernel[:, 1:1 + len(GENRES)], old_kernel)
    clips = np.zeros((2, *DEFAULT_SPEC.input_shape), np.float32)
    assert grown.predict_on_batch(clips).shape == (2, len(wider))
    assert load_warm_start(tmp_path, GENRES, (129, 196, 1))[0] is None
    assert load_warm_start(tmp_path / "nowhere", GENRES, DEFAULT_SPEC.input_shape)[0] is None


def test_going_on_from_a_fit_trains_a_copy_until_the_loss_it_reached(small_library, trained):
    """The refit's start: a copy of the held-out fit, trained on every song until an
    epoch's training loss is down to the held-out fit's at its best epoch."""
    cache, train, validation = small_library
    model, info = trained
    before = [np.array(w) for w in model.get_weights()]
    target = info["history"]["loss"][info["best_epoch"] - 1]
    configure(seed=7, threads=2)
    refit, refit_info = fit(train + validation, [], GENRES, cache, epochs=info["best_epoch"],
                            seed=7, start_from=model, stop_at_loss=target, verbose=0)
    for old, now in zip(before, model.get_weights(), strict=True):  # the original untouched
        np.testing.assert_array_equal(old, now)
    assert refit is not model and refit_info["warm_start_how"] == "continued from the held-out fit"
    losses = refit_info["history"]["loss"]
    assert 1 <= len(losses) <= info["best_epoch"]
    assert all(loss > target for loss in losses[:-1])  # it stopped at the first one there
    assert losses[-1] <= target or len(losses) == info["best_epoch"]
    # From trained weights its first epoch fits far better than the fit from scratch did.
    assert losses[0] < info["history"]["loss"][0]


def test_an_epoch_above_the_ceiling_streams_only_its_sample(small_library):
    """27 training songs, a ceiling of 6: each epoch's stream gives 6 songs' clips (2 per
    genre) and validation is one fixed sample of 6 of its 9 songs."""
    cache, train, validation = small_library
    configure(seed=4, threads=2)
    _, info = fit(train, validation, GENRES, cache, epochs=2, seed=4, songs_per_epoch=6,
                  patience=5, verbose=0)
    clips = cache.spec.clips_per_song
    assert info["songs_per_epoch"] == 6 and info["validation_songs"] == 6
    assert info["epoch_clips"] == [6 * clips, 6 * clips]
    assert len(info["epoch_seconds"]) == len(info["validation_seconds"]) == 2
    assert all(0 < v < e for v, e in zip(info["validation_seconds"], info["epoch_seconds"],
                                         strict=True))
    # Without a ceiling: every training song every epoch, as before.
    configure(seed=4, threads=2)
    _, every = fit(train, validation, GENRES, cache, epochs=1, seed=4, verbose=0)
    assert every["epoch_clips"] == [len(train) * clips] and every["validation_songs"] == 9


def test_warm_start_takes_the_cnns_genres_not_the_winners(trained, tmp_path):
    """A night the backbone head won with more genres than the CNN knew: report.json's
    top-level classes are the head's, model.keras the CNN's; the CNN still starts warm."""
    model, _ = trained
    model.save(tmp_path / "model.keras")
    (tmp_path / "report.json").write_text(json.dumps({
        "classes": [*GENRES, "Jazz", "Folk"], "families": {"cnn": {"classes": list(GENRES)},
                                                       "backbone": {"classes": ["x"]}}}))
    warm, how = load_warm_start(tmp_path, GENRES, DEFAULT_SPEC.input_shape)
    assert warm is not None and how == "warm: same genres"
    np.testing.assert_array_equal(warm.get_weights()[0], model.get_weights()[0])
