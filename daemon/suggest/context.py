"""The album/artist context prior and how it meets the audio. Pure functions: counting
the tagged songs around a track and fitting weight and smoothing are later work.

For a song, `counts` holds how many of the other songs on its album (or by its artist)
carry each canonical genre, tagged (mapped) or confirmed. The prior is the mean of the
Dirichlet posterior those counts give from a symmetric Dirichlet(smoothing) start:

    prior[c] = (counts[c] + smoothing) / (total + K * smoothing)

and the song's probabilities are the audio's reweighted by it, in log space:

    p[c] ∝ audio[c] * prior[c] ** weight

weight 0 is the audio alone; weight 1 is Bayes' rule with the prior as the genre's base
rate on this album. No tagged mates gives a uniform prior, which leaves the audio exactly
as it was whatever the weight: a song on an untagged album loses nothing. Smoothing keeps
a genre the mates do not carry possible (7 Jazz mates do not forbid Blues), and the more
mates there are, the less it matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def context_prior(counts: Mapping[str, int], classes: Sequence[str],
                  smoothing: float) -> np.ndarray:
    """Genre counts of a song's tagged mates -> prior probabilities over `classes` (in that
    order, float64, summing to 1). Genres not among the model's classes cannot be weighed
    and are left out. smoothing: the symmetric Dirichlet's concentration, > 0."""
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, not {smoothing!r}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"genre counts cannot be negative: {dict(counts)!r}")
    alpha = np.array([counts.get(c, 0) for c in classes], dtype=np.float64) + smoothing
    return alpha / alpha.sum()


def combine(audio_probs: np.ndarray, prior: np.ndarray, weight: float) -> np.ndarray:
    """The audio's calibrated probabilities (one song, or a batch along the last axis)
    times prior ** weight, renormalised. weight >= 0; 0 returns the audio's. A class the
    audio gives probability 0 stays at 0."""
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, not {weight!r}")
    audio = np.asarray(audio_probs, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if audio.shape[-1] != prior.shape[-1]:
        raise ValueError(f"audio has {audio.shape[-1]} classes, the prior {prior.shape[-1]}")
    with np.errstate(divide="ignore"):
        logits = np.log(audio) + weight * np.log(prior)
    logits -= logits.max(axis=-1, keepdims=True)
    combined = np.exp(logits)
    return combined / combined.sum(axis=-1, keepdims=True)


def reason_text(counts: Mapping[str, int], genre: str,
                where: str = "on this album") -> str | None:
    """Why the context points at `genre`, in the music director's words:
    "7 of 8 tagged songs on this album are Jazz". None when no mate is tagged."""
    total = sum(counts.values())
    if total <= 0:
        return None
    agree = counts.get(genre, 0)
    songs = "song" if total == 1 else "songs"
    verb = "is" if agree == 1 else "are"
    return f"{agree} of {total} tagged {songs} {where} {verb} {genre}"
