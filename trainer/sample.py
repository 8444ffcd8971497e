"""Which songs an epoch trains on: at most `ceiling` songs, balanced across genres.

A night's CNN fit costs its epochs times the clips of one epoch. Without a ceiling an
epoch is every training song, so the night grows with the library (at 15,000 songs one
epoch is ~9 minutes on 2 cores). With it an epoch is a fresh seeded sample of at most
`ceiling` songs: the cost per epoch stops growing, and a large library simply shows the
model other songs each epoch. Below the ceiling an epoch is every song, as before.

The sample is balanced: each genre gets an equal share of the ceiling, a genre with
fewer songs than its share brings all of them, and what it leaves goes to the others
(so a rare genre is never drowned by a common one). Within a genre the songs are taken
in turns from a seeded permutation, so every song is seen within
ceil(songs / share) epochs, and no song twice in one epoch. Pure numpy: the same
(labels, ceiling, seed, epoch) always gives the same songs.
"""

from __future__ import annotations

import numpy as np


def genre_shares(counts: np.ndarray, ceiling: int) -> np.ndarray:
    """Songs per genre in one epoch: equal shares of `ceiling`, smaller genres taking
    all their songs and leaving the rest to the larger ones. Sums to
    min(ceiling, counts.sum()); every genre with songs gets one at least when the
    ceiling allows it (the ceiling is raised to the number of such genres)."""
    counts = np.asarray(counts, dtype=np.int64)
    shares = np.zeros_like(counts)
    present = [int(g) for g in np.argsort(counts, kind="stable") if counts[g] > 0]
    left = max(int(ceiling), len(present))
    for i, g in enumerate(present):  # smallest first: what they leave goes further up
        shares[g] = min(int(counts[g]), left // (len(present) - i))
        left -= int(shares[g])
    return shares


def epoch_songs(labels: np.ndarray, ceiling: int | None, seed: int, epoch: int) -> np.ndarray:
    """Indices (ascending) of the songs epoch `epoch` trains on; `labels` the songs'
    genre indices. Every song when there are no more than `ceiling` (or no ceiling)."""
    labels = np.asarray(labels, dtype=np.int64)
    if ceiling is None or len(labels) <= ceiling:
        return np.arange(len(labels))
    counts = np.bincount(labels)
    picked = []
    for genre, share in enumerate(genre_shares(counts, ceiling)):
        if not share:
            continue
        members = np.flatnonzero(labels == genre)
        n = len(members)
        # One permutation of the genre's songs lasts ceil(n / share) epochs, a share each
        # (the last share wraps round to the permutation's first songs): every song is
        # seen once per round, none twice in an epoch.
        rounds = -(-n // share)
        turn, part = divmod(epoch, rounds)
        order = np.random.default_rng([seed, genre, turn]).permutation(n)
        picked.append(members[order[(part * share + np.arange(share)) % n]])
    return np.sort(np.concatenate(picked))
