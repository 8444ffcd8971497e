"""When to retrain, and which new labels the candidate must not train on (pure).

should_retrain(): enough confirmed labels since the active model's training set was frozen,
or a genre newly learnable (or forced, or no model yet). holdout_share(): the share of
those new labels held out of training so the gate judges both models on songs neither
has seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from datetime import datetime

from daemon.core.db.models import Model
from daemon.learn.coldstart import is_unverified

# Share of the newly confirmed labels held out of training for the gate.
RECENT_HOLDOUT_SHARE = 0.25


def should_retrain(now: datetime, active: Model | None, new_labels: int, min_new_labels: int,
                   forced: bool, *, trainable_genres: int | None = None,
                   new_genres: Collection[str] = ()) -> tuple[bool, str]:
    """Whether to train now, and why (the reason is logged and stored on the run).

    In: the current time, the active model (None: none yet), how many confirmed labels
    arrived since its training set was frozen, the threshold, whether an operator asked
    (`retrain --now`), optionally how many genres have enough tagged songs to train, and
    the genres the active model does not know that now have enough songs to be learned (a
    station that adds "Reggae" with five songs gets Reggae suggestions the next morning,
    however few labels that is against min_new_labels).
    An active unverified cold-start model counts as no model: the first trained model
    replaces it as soon as the labels suffice, however few arrived since it was built.
    Out: (train?, reason).
    """
    if active is None or is_unverified(active):
        so_far = ("no model yet" if active is None else
                  f"only the unverified cold-start model v{active.version:04d} so far")
        if trainable_genres is not None and trainable_genres < 2 and not forced:
            return False, (f"{so_far}, and {trainable_genres} genre(s) have enough tagged "
                           "songs; the first trained model needs at least 2")
        return True, f"{so_far}: training the first model"
    frozen = active.trained_until or active.created_at
    since = f"since v{active.version:04d}'s data was frozen {_age(now, frozen)}"
    if forced:
        return True, f"requested by an operator ({new_labels} new confirmed label(s) {since})"
    if new_genres:
        names = ", ".join(sorted(new_genres))
        return True, (f"{names} now {'has' if len(new_genres) == 1 else 'have'} enough songs "
                      f"to be learned ({new_labels} new confirmed label(s) {since})")
    if new_labels >= min_new_labels:
        return True, f"{new_labels} new confirmed label(s) {since} (threshold {min_new_labels})"
    return False, (f"nothing to learn: {new_labels} new confirmed label(s) {since}, "
                   f"{min_new_labels} needed")


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "(unknown time)"
    hours = (now - then).total_seconds() / 3600
    return f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} days ago"



def holdout_share(recent: Collection[str], share: float = RECENT_HOLDOUT_SHARE) -> list[str]:
    """The recent confirmed labels the candidate must not train on, so the gate always
    judges both models on songs neither has seen: a fixed share (at least one), chosen
    by a hash of the path (deterministic, no clock)."""
    if not recent:
        return []
    ranked = sorted(recent, key=lambda p: hashlib.sha256(p.encode()).digest())
    return sorted(ranked[:max(1, math.ceil(share * len(ranked)))])

