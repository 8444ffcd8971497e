"""A track's label: the genre a reviewer confirmed wins; without one, the canonical genre
the file's own tag maps to; without either, the track is not a labelled song.

One rule in two forms: `training_label` for values in hand, `LABEL` for SQL over the
tracks table (Track.canonical_genre is the tag's canonical genre). The nightly retrain,
the review page's albums, the album/artist context and "sounds like" all count by it;
daemon.learn.labels says which tracks' labels count.
"""

from __future__ import annotations

from sqlalchemy import func

from daemon.core.db.models import Track


def training_label(confirmed: str | None, tagged: str | None) -> str | None:
    """The label from a confirmed genre and the tag's canonical genre (None: unlabelled)."""
    return confirmed or tagged


LABEL = func.coalesce(Track.confirmed_genre, Track.canonical_genre)
