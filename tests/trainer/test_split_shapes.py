"""The trainer's split on a station's shapes (no audio, no training: the split is a
function of songs, artists and genres): no class without a training song, every untested
genre says why, the context split never takes a genre's only training songs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from trainer.dataset import Dataset, DatasetError, LabelledSong, artist_key
from trainer.split import build_dataset, narrow
from trainer.train import keep_trained


def song(rel: str, genre: str, artist: str) -> LabelledSong:
    return LabelledSong(Path(rel), rel, genre, artist_key(artist, None, rel), rel.encode().hex())


def messy_songs(seed: int) -> list[LabelledSong]:
    """Genres of 1-40 songs by 1-6 artists, one artist singing two genres, ~10% of the
    labels naming another genre (a wrong tag lands on another genre's artist)."""
    rng = np.random.default_rng(seed)
    genres = [f"G{i}" for i in range(int(rng.integers(4, 9)))]
    songs = []
    for g in genres:
        n = 1 if g == genres[-1] else int(rng.integers(1, 41))
        artists = 1 if g == genres[-2] else int(rng.integers(1, 7))
        for i in range(n):
            artist = "Crossover" if g == genres[1] and i % 5 == 0 else f"{g} A{i % artists}"
            label = str(rng.choice(genres)) if rng.random() < 0.1 else g
            songs.append(song(f"{artist}/{g}-{i}.flac", label, artist))
    return songs


@pytest.mark.parametrize("seed", range(40))
def test_every_class_has_training_songs_and_every_untested_genre_says_why(seed):
    songs = messy_songs(seed)
    for min_songs in (1, 3, 5):
        try:
            data = build_dataset(songs, seed=seed, min_songs=min_songs)
        except DatasetError as err:  # a clear reason, never another exception
            assert "need" in str(err) or "no songs in the" in str(err)
            continue
        trained = {s.genre for s in data.train}
        assert set(data.classes) <= trained
        tested = {s.genre for s in data.test}
        assert set(data.untested) == set(data.classes) - tested
        assert all(why.endswith("trained on, not tested") for why in data.untested.values())
        splits = {name: {s.artist_key for s in data.split(name)}
                  for name in ("train", "validation", "test")}
        for a, b in itertools.combinations(splits.values(), 2):
            assert not a & b  # artists never share a split
        for genre, left in data.left_out.items():
            assert left["needs"] >= 1 and genre not in data.classes


def test_a_one_artist_genre_is_trained_on_and_not_tested_with_the_reason():
    songs = [song(f"A{a}/{g}{i}.flac", g, f"{g} A{a}") for g in ("Jazz", "Rock")
             for a in range(4) for i in range(3)]
    songs += [song(f"Solo/Polka{i}.flac", "Polka", "Solo") for i in range(4)]
    data = build_dataset(songs, seed=1, min_songs=3)
    assert "Polka" in data.classes and "Polka" not in {s.genre for s in data.test}
    assert data.untested["Polka"] == ("all 4 songs are by one artist, so it cannot be "
                                      "tested on an artist it was not trained on; trained "
                                      "on, not tested")


def test_narrow_leaves_out_a_class_that_lost_its_training_songs():
    a, b, c = (song("x/a.flac", "Jazz", "x"), song("y/b.flac", "Rock", "y"),
               song("z/c.flac", "Polka", "z"))
    data = Dataset(("Jazz", "Polka", "Rock"), (a, b), (), (c,),
                   song_counts={"Jazz": 1, "Polka": 1, "Rock": 1})
    narrowed = narrow(data, 1)
    assert narrowed.classes == ("Jazz", "Rock")
    assert narrowed.left_out == {"Polka": {"songs": 1, "needs": 1}}


def test_the_context_split_gives_back_a_genres_only_training_songs():
    a, b = song("x/a.flac", "Jazz", "x"), song("x/b.flac", "Jazz", "x")
    c = song("y/c.flac", "Polka", "y")
    data = Dataset(("Jazz", "Polka"), (a,), (), ())
    kept, carved = keep_trained(data, (b, c))
    assert carved == (b,) and set(kept.train) == {a, c}
