"""Artist-disjoint, genre-stratified splits of the labelled songs (no TensorFlow here).

build_dataset: classes with enough songs, then splits. An artist's split starts from a
hash of its key with the seed, then is stratified by genre (every genre the model learns
gets test songs when two artists sing it): artists never share a split, and clips of one
song always stay with the song. The stratifying moves depend on the library, so an
artist can change split as it grows; the gate removes songs the active model trained on
from its holdout (daemon.learn.gate.holdout_for). A genre too small or with too few
artists to test is trained on and reported as not tested (untested_reasons).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable

from trainer.dataset import SPLITS, Dataset, DatasetError, LabelledSong

# Shares of artists per split (by hash): test, then validation, the rest train.
TEST_SHARE = 0.15
VALIDATION_SHARE = 0.15
# Stratifying passes (see stratify), and where each takes an artist from, preferred first.
STRATIFY_ORDER = ("train", "test", "validation")
TAKE_FROM = {"train": ("validation", "test"), "test": ("train", "validation"),
             "validation": ("train", "test")}


def split_of(key: str, seed: int) -> str:
    """An artist key's split from a hash of (seed, key): stable as the library grows."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    if share < TEST_SHARE:
        return "test"
    if share < TEST_SHARE + VALIDATION_SHARE:
        return "validation"
    return "train"


def _rank(seed: int, split: str, key: str) -> bytes:
    """Which artist moves first into `split`: the smallest hash of (seed, split, key)."""
    return hashlib.sha256(f"{seed}\0{split}\0{key}".encode()).digest()


def stratify(songs: list[LabelledSong], assigned: dict[str, str], genres: Collection[str],
             seed: int, pinned: Collection[str] = ()) -> dict[str, str]:
    """Move artists so every genre in `genres` has songs in train, then test, then
    validation, where its artists allow it; `assigned` is {artist key: split} by hash.

    Passes in that order (train first: a genre nobody trains on cannot be learned; test
    before validation: the gate judges on test). In a pass, a genre lacking the split
    takes one of its artists from another split: among those whose move leaves no genre
    without an artist in a split an earlier pass filled (so no pass undoes another), the
    one from the preferred split (TAKE_FROM), then with the smallest hash of
    (seed, split, key). `pinned` artists (the nightly
    --holdout's) stay in test. So a genre with songs by >= 2 artists gets test songs, by
    >= 3 also validation songs; one artist's genre is trained on, not tested.
    """
    assigned = dict(assigned)
    artists: dict[str, set[str]] = {}  # genre -> its artist keys
    genres_of: dict[str, set[str]] = {}  # artist key -> its genres
    for song in songs:
        artists.setdefault(song.genre, set()).add(song.artist_key)
        genres_of.setdefault(song.artist_key, set()).add(song.genre)

    def in_split(genre: str, split: str) -> int:
        return sum(assigned[a] == split for a in artists[genre])

    done: list[str] = []
    for split in STRATIFY_ORDER:
        for genre in sorted(genres):
            if in_split(genre, split):
                continue
            movable = [a for a in artists[genre] if a not in pinned and all(
                in_split(g, assigned[a]) >= 2 for g in genres_of[a]
                if g in genres and assigned[a] in done)]
            if movable:
                sources = TAKE_FROM[split]
                assigned[min(movable, key=lambda a: (sources.index(assigned[a]),
                                                     _rank(seed, split, a)))] = split
        done.append(split)
    return assigned


def needs(songs: int, min_songs: int) -> int:
    """How many more songs a left-out genre needs: to reach `min_songs`, else 1 (one by an
    artist who is not held out, so there is something to train on)."""
    return max(1, min_songs - songs)


def build_dataset(songs: list[LabelledSong], *, seed: int = 0, min_songs: int = 20,
                  holdout: Collection[str] = ()) -> Dataset:
    """Labelled songs with features -> classes and artist-disjoint splits.

    An artist's split starts from a hash of (seed, artist key); `holdout`: relative paths
    whose artists go to test whatever their hash says (the nightly retrain holds out some
    of the newly confirmed labels this way, so its gate always judges on fresh songs).
    Then the split is stratified by genre (`stratify`): every genre with >= `min_songs`
    songs gets training songs, test songs when it has songs by >= 2 artists and
    validation songs by >= 3, while no artist is in two splits.

    Classes: genres with >= `min_songs` songs and a training song, sorted by name; the
    rest go into `left_out` as {genre: {"songs": n, "needs": more songs needed}}.
    Raises DatasetError when fewer than 2 classes remain or test/validation are empty.
    """
    counts = Counter(s.genre for s in songs)
    keys = sorted({s.artist_key for s in songs})
    held = {s.artist_key for s in songs if s.rel in holdout}
    assigned = {k: "test" if k in held else split_of(k, seed) for k in keys}
    enough = {g for g, n in counts.items() if n >= min_songs}
    assigned = stratify([s for s in songs if s.genre in enough], assigned, enough, seed, held)
    trained = {s.genre for s in songs if assigned[s.artist_key] == "train"}
    classes = tuple(sorted(g for g in enough if g in trained))
    left_out = {g: {"songs": n, "needs": needs(n, min_songs)}
                for g, n in sorted(counts.items()) if g not in classes}
    if len(classes) < 2:
        raise DatasetError(
            f"need at least 2 genres with >= {min_songs} songs and a training artist; "
            f"found {dict(sorted(counts.items()))}")
    kept = [s for s in songs if s.genre in classes]
    parts = {name: tuple(s for s in kept if assigned[s.artist_key] == name) for name in SPLITS}
    for name in ("validation", "test"):
        if not parts[name]:
            raise DatasetError(f"no songs in the {name} split: the library needs songs "
                               "by at least 3 different artists")
    return Dataset(classes, parts["train"], parts["validation"], parts["test"], left_out,
                   dict(sorted(counts.items())), untested_reasons(classes, kept, parts["test"]))


def untested_reasons(classes: Collection[str], songs: Iterable[LabelledSong],
                     test: Iterable[LabelledSong]) -> dict[str, str]:
    """{genre: why it has no test song} for the classes without one, in the station's words:
    a genre sung by one artist cannot be tested on an artist it was not trained on."""
    tested = {s.genre for s in test}
    artists: dict[str, set[str]] = {}
    counts: Counter = Counter()
    for song in songs:
        artists.setdefault(song.genre, set()).add(song.artist_key)
        counts[song.genre] += 1
    reasons = {}
    for genre in sorted(set(classes) - tested):
        n, k = counts[genre], len(artists.get(genre, ()))
        if k <= 1:
            why = ("its only song is the one it learns from" if n == 1 else
                   f"all {n} songs are by one artist, so it cannot be tested on an artist "
                   "it was not trained on")
        else:
            why = (f"its {k} artists are all needed to learn it, so none is left to test "
                   "it on")
        reasons[genre] = f"{why}; trained on, not tested"
    return reasons


def narrow(dataset: Dataset, min_songs: int) -> Dataset:
    """The same splits for a family that needs `min_songs` songs per genre: classes with
    fewer songs leave every split and join `left_out` (with what they need)."""
    trained = {s.genre for s in dataset.train}
    classes = tuple(g for g in dataset.classes
                    if dataset.song_counts.get(g, 0) >= min_songs and g in trained)
    if len(classes) < 2:
        raise DatasetError(f"need at least 2 genres with >= {min_songs} songs; found "
                           f"{dataset.song_counts}")
    # A class without a training song (none left by its artists) needs one more song.
    left_out = {g: {"songs": n, "needs": needs(n, min_songs) if g in dataset.classes
                    else dataset.left_out[g]["needs"]}
                for g, n in dataset.song_counts.items() if g not in classes}
    parts = [tuple(s for s in dataset.split(name) if s.genre in classes) for name in SPLITS]
    return Dataset(classes, *parts, left_out=left_out, song_counts=dataset.song_counts,
                   untested={g: w for g, w in dataset.untested.items() if g in classes})
