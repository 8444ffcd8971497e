"""The track state machine (every state a track can be in and every allowed move), and
every other status the daemon stores or shows, each as a StrEnum: a suggestion's status,
a decision's action and how it was made, a decision's write-back status, a model's
status in the registry, a training run's status and trigger. The CLI's choices, the
review page and the stored rows all read these.

This is the only place that knows the transitions; code that changes `Track.state`
goes through `move()`, which refuses anything not listed here and stamps
`Track.state_changed_at` (the time `status` and the review page show as "since").

    queued ──claim──> working ──ok──> suggested ──review──> reviewed
      ^  ^              │  │                ^                  │
      │  └──backoff── retrying <─error─┘     └──────undo───────┘
      │                 │
      │          (max attempts) -> quarantined ──file changed──> queued
      └── file changed / tag removed ── tagged, suggested, reviewed, missing

    queued -> quarantined   reading the settled file crashed, hung or ran out of memory
    working -> reviewed     the model's genre is one the reviewer rejected for the song
    reviewed -> suggested   undo; or a new model hears a genre not rejected for it
                            (daemon.review.decisions.rejected_genres)

  tagged:   the file's own genre tag maps to a canonical genre; nothing to suggest.
  reviewed: decided by the reviewer (accepted, overridden or rejected).
  missing:  gone from the library; comes back (same fingerprint) with its history.
  not_a_song: a station ID, sweeper, liner or bed ([library] exclude, min_song_seconds,
            or the reviewer's "Not a song"): listed with its reason, never queued, never
            a training label, never quarantined. Any state can become it (a worker busy
            with it drops its result); it goes back to what its history says when the
            rule or the mark no longer holds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from daemon.core.errors import GenretaggerError


class TrackState(StrEnum):
    QUEUED = "queued"
    WORKING = "working"
    RETRYING = "retrying"
    QUARANTINED = "quarantined"
    SUGGESTED = "suggested"
    REVIEWED = "reviewed"
    TAGGED = "tagged"
    MISSING = "missing"
    NOT_A_SONG = "not_a_song"


S = TrackState

TRANSITIONS: dict[TrackState, frozenset[TrackState]] = {
    # Quarantined straight away when reading the settled file crashed, hung or ran out of
    # memory (daemon.library.reconcile): the worker would only meet the same.
    S.QUEUED: frozenset({S.WORKING, S.TAGGED, S.MISSING, S.QUARANTINED}),
    # A worker finishes (suggested), fails (retrying/quarantined), finds the file tagged
    # meanwhile, or hands the file back on shutdown (queued).
    S.WORKING: frozenset({S.SUGGESTED, S.RETRYING, S.QUARANTINED, S.QUEUED, S.TAGGED, S.MISSING,
                          S.REVIEWED}),
    S.RETRYING: frozenset({S.WORKING, S.QUEUED, S.TAGGED, S.MISSING}),
    S.QUARANTINED: frozenset({S.QUEUED, S.TAGGED, S.MISSING}),
    S.SUGGESTED: frozenset({S.REVIEWED, S.QUEUED, S.TAGGED, S.MISSING, S.SUGGESTED}),
    S.REVIEWED: frozenset({S.SUGGESTED, S.QUEUED, S.TAGGED, S.MISSING}),
    S.TAGGED: frozenset({S.QUEUED, S.MISSING, S.SUGGESTED}),
    S.MISSING: frozenset(set(TrackState) - {S.MISSING, S.WORKING}),
    S.NOT_A_SONG: frozenset({S.QUEUED, S.SUGGESTED, S.REVIEWED, S.TAGGED, S.MISSING}),
}
# Every state but missing can become not_a_song (the rules are read at each settle and walk).
for _state in set(TrackState) - {S.MISSING, S.NOT_A_SONG}:
    TRANSITIONS[_state] = TRANSITIONS[_state] | {S.NOT_A_SONG}

# States the worker may claim (retrying only once its backoff has passed).
CLAIMABLE = frozenset({S.QUEUED, S.RETRYING})


class InvalidTransition(GenretaggerError, ValueError):
    """A move the state machine does not allow (a bug or a race, never the user's input);
    a GenretaggerError, so the CLI reports it as an error line, not a traceback."""

    def __init__(self, old: TrackState, new: TrackState, path: str = ""):
        super().__init__(f"{path}: track cannot go from {old} to {new}")


def can_move(old: TrackState | str, new: TrackState | str) -> bool:
    return TrackState(new) in TRANSITIONS[TrackState(old)]


def move(track, new: TrackState, now: datetime | None = None) -> None:
    """Set `track.state` to `new` and `track.state_changed_at` to `now` (default: this
    moment, UTC), or raise InvalidTransition. A new track (state None) enters at any state;
    a move to the state it is in stamps the time again."""
    if track.state is not None:
        old = TrackState(track.state)
        if old != new and not can_move(old, new):
            raise InvalidTransition(old, new, getattr(track, "path", ""))
    track.state = new
    track.state_changed_at = now or datetime.now(UTC)
    if new != TrackState.WORKING and getattr(track, "claimed_by", None) is not None:
        track.claimed_by = None  # only a working track is held by a worker


class SuggestionStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    OVERRIDDEN = "overridden"
    REJECTED = "rejected"
    # Replaced by a newer suggestion (new model, or the file changed).
    SUPERSEDED = "superseded"


class QueueSort(StrEnum):
    """The orders the review queue can be read in."""

    CONFIDENT = "confident"
    UNCERTAIN = "uncertain"
    NEWEST = "newest"


class Action(StrEnum):
    """What a decision did."""

    ACCEPT = "accept"
    OVERRIDE = "override"
    REJECT = "reject"
    UNDO = "undo"
    # The reviewer says the file is not a song (a jingle, a sweeper) / is one after all
    # (a short song the length rule or an exclude pattern caught). No genre, no write.
    NOT_A_SONG = "not_a_song"
    SONG = "song"


# Actions that mark what a file is rather than decide its genre.
SONG_MARKS = (Action.NOT_A_SONG, Action.SONG)


class How(StrEnum):
    """How a decision was made."""

    SINGLE = "single"
    BULK = "bulk"
    OVERRIDE = "override"
    UNDO = "undo"
    ALBUM = "album"  # one of an album-at-a-time action's decisions (they share a batch_id)


class WriteStatus(StrEnum):
    """Where a decision's genre is on its way into the file."""

    PENDING = "pending"
    WRITTEN = "written"
    FAILED = "failed"
    OFF = "off"  # review.write_tags is false
    NONE = "none"  # nothing to write (a reject)


# Decisions whose genre still has to reach the file.
WRITE_OUTSTANDING = (WriteStatus.PENDING, WriteStatus.FAILED)


class ModelStatus(StrEnum):
    """A model version in the registry."""

    CANDIDATE = "candidate"
    ACTIVE = "active"
    RETIRED = "retired"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class RunStatus(StrEnum):
    """A training run."""

    RUNNING = "running"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED = "skipped"


class RunTrigger(StrEnum):
    """What started a training run."""

    INITIAL = "initial"
    NIGHTLY = "nightly"
    MANUAL = "manual"
