"""The context prior (daemon.suggest.context): the Dirichlet prior, its combination with
the audio's probabilities and the reason shown to the music director."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.suggest.context import combine, context_prior, reason_text

CLASSES = ("Blues", "Jazz", "Rock")


def test_the_prior_is_the_smoothed_share_of_tagged_mates():
    prior = context_prior({"Jazz": 7, "Blues": 1}, CLASSES, smoothing=1.0)
    np.testing.assert_allclose(prior, [2 / 11, 8 / 11, 1 / 11])
    # Genres the model does not know are left out; no mates is uniform.
    np.testing.assert_allclose(context_prior({"Polka": 5, "Rock": 1}, CLASSES, 0.5),
                               [0.5 / 2.5, 0.5 / 2.5, 1.5 / 2.5])
    np.testing.assert_allclose(context_prior({}, CLASSES, 2.0), [1 / 3] * 3)
    # More smoothing pulls toward uniform; less lets the mates speak.
    strong = context_prior({"Jazz": 7}, CLASSES, 0.1)
    weak = context_prior({"Jazz": 7}, CLASSES, 10.0)
    assert strong[1] > weak[1] > 1 / 3


@pytest.mark.parametrize("smoothing", [0.0, -1.0, float("nan")])
def test_the_prior_needs_positive_smoothing(smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        context_prior({"Jazz": 1}, CLASSES, smoothing)
    with pytest.raises(ValueError, match="negative"):
        context_prior({"Jazz": -1}, CLASSES, 1.0)


def test_combine_is_audio_times_prior_to_the_weight():
    audio = np.array([0.3, 0.3, 0.4])
    prior = context_prior({"Jazz": 7, "Blues": 1}, CLASSES, 1.0)
    for weight in (0.5, 1.0, 2.0):
        expected = audio * prior ** weight
        np.testing.assert_allclose(combine(audio, prior, weight), expected / expected.sum())
    np.testing.assert_allclose(combine(audio, prior, 0.0), audio)
    assert combine(audio, prior, 1.0).argmax() == 1  # Jazz mates tip a near tie
    confident = np.array([0.02, 0.03, 0.95])
    assert combine(confident, prior, 1.0).argmax() == 2  # clear audio still wins


def test_no_tagged_mates_leaves_the_audio_as_it_is():
    audio = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]])
    uniform = context_prior({}, CLASSES, 1.0)
    for weight in (0.0, 1.0, 5.0):
        np.testing.assert_allclose(combine(audio, uniform, weight), audio)


def test_combine_takes_batches_and_keeps_impossible_classes_impossible():
    audio = np.array([[0.0, 0.5, 0.5], [1e-300, 0.0, 1.0]])
    prior = context_prior({"Blues": 100}, CLASSES, 1.0)
    out = combine(audio, prior, 3.0)
    np.testing.assert_allclose(out.sum(axis=1), [1.0, 1.0])
    assert out[0, 0] == 0.0 and out[1, 1] == 0.0 and np.isfinite(out).all()
    with pytest.raises(ValueError, match="classes"):
        combine(audio, prior[:2], 1.0)
    with pytest.raises(ValueError, match="weight"):
        combine(audio, prior, -0.5)


def test_the_reason_in_words():
    counts = {"Jazz": 7, "Blues": 1}
    assert reason_text(counts, "Jazz") == "7 of 8 tagged songs on this album are Jazz"
    assert reason_text(counts, "Blues") == "1 of 8 tagged songs on this album is Blues"
    assert reason_text({"Jazz": 1}, "Jazz") == "1 of 1 tagged song on this album is Jazz"
    assert reason_text(counts, "Rock", where="by this artist") == (
        "0 of 8 tagged songs by this artist are Rock")
    assert reason_text({}, "Jazz") is None and reason_text({"Jazz": 0}, "Jazz") is None
