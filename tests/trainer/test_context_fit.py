"""Fitting the context's weight and smoothing on held-out songs (trainer.context): a library
whose albums are consistent gets a weight > 0 and better held-out figures; one whose album
labels are random gets ~0, so the prior does no harm."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.context import context_report, held_out_mates
from trainer.dataset import LabelledSong

CLASSES = ("Blues", "Jazz", "Rock")


def _library(consistent: bool, seed: int = 0):
    """12 albums of 6 songs by one artist each; a consistent album is one genre, else each
    song's genre is drawn at random. Audio probabilities are right 60% of the time."""
    rng = np.random.default_rng(seed)
    songs, probs = [], []
    for a in range(12):
        album_genre = CLASSES[a % 3]
        for i in range(6):
            genre = album_genre if consistent else CLASSES[rng.integers(3)]
            rel = f"Artist {a}/Album {a}/{i}.mp3"
            songs.append(LabelledSong(Path(rel), rel, genre, f"artist:artist {a}",
                                      f"{a:02d}{i:062d}", artist=f"Artist {a}",
                                      album_key=f"{a:016d}"))
            heard = genre if rng.random() < 0.6 else CLASSES[rng.integers(3)]
            row = np.full(3, 0.25)
            row[CLASSES.index(heard)] = 0.5
            probs.append(row)
    return songs, np.array(probs)


def test_mates_are_the_albums_other_labels_never_the_song():
    songs, _ = _library(consistent=True)
    mates = held_out_mates(songs[:1], songs)
    assert mates[0].album == {"Blues": 5} and mates[0].artist == {}


def test_consistent_albums_get_weight_and_random_ones_almost_none():
    songs, probs = _library(consistent=True)
    fitted = context_report(probs, songs, songs, CLASSES)
    assert fitted["weight"] > 0.5
    assert fitted["with_context"]["song_accuracy"] > fitted["audio"]["song_accuracy"]
    assert fitted["with_context"]["log_likelihood"] > fitted["audio"]["log_likelihood"]

    songs, probs = _library(consistent=False, seed=1)
    random = context_report(probs, songs, songs, CLASSES)
    assert random["weight"] <= 0.25
    assert random["with_context"]["log_likelihood"] >= random["audio"]["log_likelihood"] - 0.05


def test_too_few_songs_with_mates_is_not_fitted():
    songs, probs = _library(consistent=True)
    alone = [LabelledSong(s.path, f"{i}.mp3", s.genre, f"artist:solo {i}", s.fingerprint,
                          artist=f"Solo {i}")
             for i, s in enumerate(songs[:10])]
    report = context_report(probs[:10], alone, alone, CLASSES)
    assert report["weight"] is None and "fewer than" in report["why"]


def test_carve_keeps_one_song_per_big_album_out_of_training_only():
    from trainer.context import carve
    from trainer.dataset import Dataset

    songs, _ = _library(consistent=True)
    small = [LabelledSong(s.path, f"Small/{i}.mp3", s.genre, "artist:small", s.fingerprint[::-1],
                          artist="Small", album_key="small album")
             for i, s in enumerate(songs[:2])]
    dataset = Dataset(CLASSES, tuple(songs[:48]) + tuple(small), tuple(songs[48:60]),
                      tuple(songs[60:]))
    kept, carved = carve(dataset, seed=0)
    # 8 training albums of 6 songs can give one each, within 15% of 50 songs: 7; the
    # 2-song album keeps both.
    assert len(carved) == 7
    assert len({s.rel.rsplit("/", 1)[0] for s in carved}) == 7
    assert not {s.rel for s in carved} & {s.rel for s in kept.train}
    assert len(kept.train) == 50 - 7 and "Small/0.mp3" in {s.rel for s in kept.train}
    assert (kept.validation, kept.test) == (dataset.validation, dataset.test)
    assert carve(dataset, seed=0)[1] == carved  # stable
    # Too few albums to fit on: training keeps every song.
    few = Dataset(CLASSES, tuple(songs[:18]), dataset.validation, dataset.test)
    assert carve(few, seed=0) == (few, ())
