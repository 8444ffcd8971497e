"""Each epoch's songs under the ceiling (trainer.sample): pure numpy, no TensorFlow."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from trainer.sample import epoch_songs, genre_shares

# An unbalanced library: one big genre, two middling, one rare, as stations are.
UNBALANCED = np.repeat(np.arange(4), [600, 120, 90, 7])


def test_below_the_ceiling_every_song_trains_every_epoch():
    labels = np.repeat(np.arange(3), [5, 9, 2])
    for epoch in range(4):
        np.testing.assert_array_equal(epoch_songs(labels, 16, seed=3, epoch=epoch),
                                      np.arange(16))
        np.testing.assert_array_equal(epoch_songs(labels, None, seed=3, epoch=epoch),
                                      np.arange(16))


def test_shares_are_equal_and_the_small_genres_leave_theirs_to_the_others():
    assert genre_shares(np.array([600, 120, 90, 7]), 200).tolist() == [65, 64, 64, 7]
    assert genre_shares(np.array([600, 120, 20, 7]), 100).tolist() == [37, 36, 20, 7]
    assert genre_shares(np.array([600, 120, 90, 7]), 2000).tolist() == [600, 120, 90, 7]
    assert genre_shares(np.array([50, 50, 50]), 100).tolist() == [33, 33, 34]
    # A genre index without songs takes nothing; a ceiling below the genres' count is
    # raised so every genre with songs keeps one.
    assert genre_shares(np.array([10, 0, 10]), 6).tolist() == [3, 0, 3]
    assert genre_shares(np.array([10, 3, 10, 1]), 2).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("ceiling", [40, 100, 300])
def test_an_epoch_is_bounded_balanced_and_never_repeats_a_song(ceiling):
    for epoch in range(6):
        picked = epoch_songs(UNBALANCED, ceiling, seed=11, epoch=epoch)
        assert len(picked) == ceiling
        assert len(np.unique(picked)) == len(picked)
        assert (picked >= 0).all() and (picked < len(UNBALANCED)).all()
        per_genre = Counter(UNBALANCED[picked].tolist())
        expected = genre_shares(np.bincount(UNBALANCED), ceiling)
        assert [per_genre[g] for g in range(4)] == expected.tolist()
        # The rare genre brings every song it has, or its full equal share.
        assert per_genre[3] == min(7, ceiling // 4)


def test_every_song_is_seen_within_one_round_of_its_genre():
    ceiling = 40  # shares 11, 11, 11, 7: the 600-song genre's round is 55 epochs
    shares = genre_shares(np.bincount(UNBALANCED), ceiling)
    assert shares.tolist() == [11, 11, 11, 7]
    seen: set[int] = set()
    for epoch in range(55):
        seen.update(epoch_songs(UNBALANCED, ceiling, seed=2, epoch=epoch).tolist())
    assert seen == set(range(len(UNBALANCED)))
    # The 120-song genre's round is 11 epochs of 11 songs: each song once, but the one
    # share that wrapped round to the round's first song.
    middling = np.flatnonzero(UNBALANCED == 1)
    counts = Counter(i for epoch in range(11)
                     for i in epoch_songs(UNBALANCED, ceiling, seed=2, epoch=epoch).tolist()
                     if UNBALANCED[i] == 1)
    assert sorted(counts) == middling.tolist()
    assert sorted(counts.values()) == [1] * 119 + [2]


def test_the_sample_is_fixed_by_seed_and_epoch_and_changes_with_either():
    one = epoch_songs(UNBALANCED, 100, seed=5, epoch=3)
    np.testing.assert_array_equal(one, epoch_songs(UNBALANCED, 100, seed=5, epoch=3))
    assert not np.array_equal(one, epoch_songs(UNBALANCED, 100, seed=5, epoch=4))
    assert not np.array_equal(one, epoch_songs(UNBALANCED, 100, seed=6, epoch=3))
    # Labels need not be sorted: the sample follows each song's genre, wherever it sits.
    order = np.random.default_rng(0).permutation(len(UNBALANCED))
    shuffled = UNBALANCED[order]
    picked = epoch_songs(shuffled, 100, seed=5, epoch=0)
    assert Counter(shuffled[picked].tolist()) == Counter(UNBALANCED[one].tolist())


@pytest.mark.slow
def test_nights_under_a_tiny_ceiling_train_each_epoch_on_at_most_its_songs(tmp_path):
    """trainer.train.train on a real encoded, unbalanced library (3 genres: 24, 12 and 8
    songs) with a ceiling of 6 songs an epoch, two nights: every epoch of the held-out
    fits and of the refits streams exactly 6 songs' clips, validation is one fixed sample
    of at most 6; the first night's refit starts from zero, the warm night's goes on from
    its held-out fit's weights."""
    from daemon.cli.demo import make_library
    from trainer.train import train

    library = tmp_path / "library"
    for genre, songs, seed in (("Classical", 24, 1), ("Metal", 12, 2), ("Hip-Hop", 8, 3)):
        make_library(library, songs_per_genre=songs, genres=(genre,), untagged_share=0.0,
                     seconds=(3, 4), formats=(".flac",), artists_per_genre=4, broken=0,
                     seed=seed)
    reports = []
    for night, warm_start in (("one", None), ("two", tmp_path / "one")):
        reports.append(train(library, tmp_path / night, cache_dir=tmp_path / "cache",
                             epochs=4, min_songs=5, backbone=False, seed=1,
                             songs_per_epoch=6, warm_start=warm_start, progress=False))
    for report in reports:
        clips = report["feature_spec"]["clips_per_song"]
        held_out = report["families"]["cnn"]["fit"]
        trained = report["families"]["cnn"]["training_set"]["songs"]
        assert trained["train"] > 6 and held_out["songs_per_epoch"] == 6
        assert held_out["validation_songs"] == min(6, trained["validation"])
        # What the stream gave, epoch by epoch: the ceiling's clips, never the split's.
        assert held_out["epoch_clips"] == [6 * clips] * held_out["epochs_run"]
        assert len(held_out["epoch_seconds"]) == held_out["epochs_run"]
        refit = report["served"]["cnn_fit"]
        assert refit["epoch_clips"] == [6 * clips] * refit["epochs_run"]
        assert 1 <= refit["epochs_run"] <= held_out["best_epoch"]
        # Every labelled song was eligible for the served model.
        assert report["served"]["songs"] == 44
    cold, warm = reports
    assert cold["served"]["cnn_fit"]["warm_start_how"] == "cold: no earlier model"
    assert cold["served"]["cnn_fit"]["epochs_run"] == cold["families"]["cnn"]["fit"][
        "best_epoch"]
    assert warm["families"]["cnn"]["fit"]["warm_start_how"] == "warm: same genres"
    refit, held_out = warm["served"]["cnn_fit"], warm["families"]["cnn"]["fit"]
    assert refit["warm_start_how"] == "continued from the held-out fit"
    # Going on from trained weights, its first epoch fits far better than the first
    # night's first epoch from scratch did.
    assert refit["loss"][0] < cold["families"]["cnn"]["fit"]["history"]["loss"][0]
