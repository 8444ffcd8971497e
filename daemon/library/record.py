"""Recording a settled, read file in the database.

A new file becomes a new track; a changed one is re-evaluated (settled_state); a file
that appears under a new name with a known fingerprint is that track moved, and keeps
its suggestions and decisions; a file its reader crashed, hung or ran out of memory on
is quarantined until it changes. A file's tags decide its album folder's album identities
(daemon.library.albums), so each folder a batch touched is recomputed once after it.
A file that is not a song (daemon.core.songrules) is `not_a_song`, with the reason, and
never quarantined.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.song import song_duration, song_format
from daemon.core.config import Config
from daemon.core.db.engine import locked, transaction
from daemon.core.db.models import Suggestion, Track, utcnow
from daemon.core.paths import filesystem_path, stored_path
from daemon.core.songrules import SongRules
from daemon.core.states import SuggestionStatus, TrackState, can_move, move
from daemon.library.albums import AlbumTags, album_folder, album_identities
from daemon.library.read import FileReading
from daemon.library.walk import inode_ctime
from daemon.tags.genres import GenreMap
from daemon.tags.read import MULTI_VALUE_SEPARATOR

log = logging.getLogger(__name__)

S = TrackState


def settled_state(current: TrackState | None, *, maps: bool, audit: bool, same_audio: bool,
                  history: TrackState = S.QUEUED) -> TrackState:
    """The state a track goes to once its (new or changed) file has settled and been read.

    current: the track's state (None for a new track); maps: its genre tag maps to a
    canonical genre; audit: classify tagged files too; same_audio: the fingerprint did not
    change (a touch or a tag edit elsewhere in the file); history: what its suggestions
    and decisions say it was (used when a missing track comes back).
    """
    if maps and not audit:
        return S.TAGGED
    if current is None:
        return S.QUEUED
    if current in (S.MISSING, S.NOT_A_SONG):
        return history
    if current == S.QUARANTINED:
        return S.QUEUED  # a quarantined file that changed gets a fresh start
    if same_audio and current in (S.QUEUED, S.RETRYING, S.SUGGESTED, S.REVIEWED):
        return current
    # A worker busy with the old bytes drops its result (daemon.suggest.worker checks the track
    # is still working on the size/mtime it claimed) and the file is done again.
    return S.QUEUED


def history_state(session: Session, track: Track) -> TrackState:
    """What a returning track was: suggested (a pending suggestion), reviewed (confirmed
    or decided), else queued."""
    statuses = set(session.scalars(
        select(Suggestion.status).where(Suggestion.track_id == track.id).distinct()))
    if SuggestionStatus.PENDING in statuses:
        return S.SUGGESTED
    decided = {SuggestionStatus.ACCEPTED, SuggestionStatus.OVERRIDDEN, SuggestionStatus.REJECTED}
    if track.confirmed_genre or statuses & decided:
        return S.REVIEWED
    return S.QUEUED


def record_readings(session: Session, readings: Mapping[str, FileReading], *, root: str,
                    genre_map: GenreMap, audit: bool, rules: SongRules | None = None) -> None:
    """Write settled files ({rel: reading}, rel relative to `root`): record_reading each,
    then recompute the album identities of every album folder they were in or left, once
    a folder however many of its files the batch holds."""
    folders: dict[str, None] = {}
    for rel, reading in readings.items():
        folders.update(dict.fromkeys(record_reading(session, rel, reading, root=root,
                                                    genre_map=genre_map, audit=audit,
                                                    rules=rules)))
    refresh_album_folders(session, folders)


def record_reading(session: Session, rel: str, reading: FileReading, *, root: str,
                   genre_map: GenreMap, audit: bool, rules: SongRules | None = None
                   ) -> tuple[str, ...]:
    """Write one settled file (`rel`, relative to `root`): update its track, find a moved
    track, or add one. audit: classify tagged files too (config.classifier.audit);
    rules: what is not a song (config.library.song_rules; None: every file is one).
    Returns the album folders whose identities its tags (or a move) may change: the caller
    passes them to refresh_album_folders (record_readings does)."""
    stored = stored_path(rel)
    track = session.scalars(select(Track).where(Track.path == stored)).first()
    left_folder = None
    if track is None and reading.fingerprint:
        track = _moved_track(session, root, reading.fingerprint)
        if track is not None:
            log.info("moved: %s -> %s (track %d keeps its history)",
                     track.path, stored, track.id)
            left_folder = album_folder(track.path)
            track.path = stored
    previous = TrackState(track.state) if track is not None else None
    same_audio = (track is not None and reading.fingerprint is not None
                  and track.fingerprint == reading.fingerprint)
    if track is None:
        track = Track(path=stored, attempts=0, first_seen=utcnow())
        session.add(track)

    genres = reading.tags.genres if reading.tags else ()
    canonical = genre_map.canonical_for(genres) if genres else None
    history = (history_state(session, track) if previous in (S.MISSING, S.NOT_A_SONG)
               else S.QUEUED)
    target = settled_state(previous, maps=canonical is not None, audit=audit,
                           same_audio=same_audio, history=history)

    track.size, track.mtime = reading.stat
    track.fingerprint = reading.fingerprint
    track.raw_genre = MULTI_VALUE_SEPARATOR.join(genres) or None
    track.canonical_genre = canonical
    tags, info = reading.tags, reading.info
    track.title = tags.title if tags else None
    track.artist = tags.artist if tags else None
    track.album = tags.album if tags else None
    track.album_artist = tags.album_artist if tags else None
    track.format, track.duration = song_format(info, tags), song_duration(info, tags)
    track.last_seen = utcnow()
    reason = rules.reason(stored, track.duration, track.song_mark) if rules else None
    if reason is not None:
        target = S.NOT_A_SONG
        if previous is not None:
            _leave_queue(session, track)
    track.not_song_reason = reason
    if previous is None or target != previous:
        move(track, target)
    if target == S.QUEUED and (previous != S.QUEUED or not same_audio):
        # New audio (or a quarantined file that changed): a fresh start.
        track.attempts = 0
        track.next_attempt_at = None
    if target in (S.QUEUED, S.TAGGED) or previous is None:
        track.last_error = reading.error
    if reading.quarantine and reason is None:
        _quarantine(track, reading.error, inode_ctime(Path(root) / filesystem_path(stored)))
    elif track.state != S.QUARANTINED:
        track.quarantined_ctime = None
    # Its tags may change its album mates' identity too (a compilation, the album its
    # folder's untagged files join), and a moved track's old folder loses a member.
    return tuple(dict.fromkeys(f for f in (album_folder(stored), left_folder) if f is not None))


def mark_missing(session: Session, tracks: Iterable[Track]) -> None:
    """Tracks whose files are gone from the library -> missing. A gone song no longer
    decides its folder's albums (the album its untagged mates join), so their folders are
    recomputed."""
    tracks = list(tracks)
    for track in tracks:
        move(track, S.MISSING)
    refresh_album_folders(session, (album_folder(t.path) for t in tracks))


def refresh_album_folders(session: Session, folders: Iterable[str]) -> None:
    """refresh_albums for each of `folders` (album folders, stored form), once each."""
    session.flush()  # the batch's new and moved tracks are in their folders' queries
    for folder in dict.fromkeys(folders):
        refresh_albums(session, folder)


def apply_song_rules(session: Session, track: Track, rules: SongRules, *,
                     audit: bool) -> bool:
    """Put `track` where the rules (and its song_mark) say, without reading its file:
    into not_a_song with the reason, or out of it to what its history says (tagged,
    reviewed, suggested or queued). A working track's worker drops its result. Returns
    whether the track's state changed (a missing track waits until it comes back)."""
    if track.state == S.MISSING:
        return False
    reason = rules.reason(track.path, track.duration, track.song_mark)
    if reason is not None:
        track.not_song_reason = reason
        if track.state == S.NOT_A_SONG:
            return False
        _leave_queue(session, track)
        move(track, S.NOT_A_SONG)
    else:
        if track.state != S.NOT_A_SONG:
            track.not_song_reason = None
            return False
        target = settled_state(S.NOT_A_SONG, maps=track.canonical_genre is not None,
                               audit=audit, same_audio=True,
                               history=history_state(session, track))
        move(track, target)
        track.not_song_reason = None
        if target == S.QUEUED:
            track.attempts, track.next_attempt_at = 0, None
    return True


def sweep_song_rules(sessions: sessionmaker[Session], config: Config) -> int:
    """apply_song_rules to every track the rules judge otherwise than its state says:
    after an edit of [library] exclude or min_song_seconds the file did not change, so
    it is not read again. Reads paths, durations and marks; writes (one transaction)
    only when a track moves. Returns how many tracks moved."""
    rules, audit = config.library.song_rules, config.classifier.audit
    with sessions() as session:
        rows = session.execute(select(Track.id, Track.path, Track.duration, Track.song_mark,
                                      Track.state, Track.not_song_reason)
                               .where(Track.state != S.MISSING)).all()
    stale = [id_ for id_, path, duration, mark, state, stored in rows
             if (reason := rules.reason(path, duration, mark)) != stored
             or (reason is None) != (state != S.NOT_A_SONG)]
    if not stale:
        return 0
    moved = 0
    with transaction(sessions) as session:
        for id_ in stale:
            track = locked(session, Track, id_)
            if track is not None and apply_song_rules(session, track, rules, audit=audit):
                moved += 1
    if moved:
        log.info("[library] exclude / min_song_seconds: %d track(s) changed between song "
                 "and not a song", moved)
    return moved


def _leave_queue(session: Session, track: Track) -> None:
    """A track becoming not_a_song: its pending suggestion leaves the review queue
    (superseded; an undone "Not a song" mark brings it back) and nothing is retried."""
    for suggestion in session.scalars(select(Suggestion).where(
            Suggestion.track_id == track.id,
            Suggestion.status == SuggestionStatus.PENDING)):
        suggestion.status = SuggestionStatus.SUPERSEDED
    track.attempts, track.next_attempt_at, track.last_error = 0, None, None


def refresh_albums(session: Session, folder: str) -> None:
    """Set album_key and compilation on every track of album folder `folder` (stored form,
    "" for the root; daemon.library.albums.album_folder): the tracks in it and in its
    disc folders that are in the library, and nothing else. One query. A missing track
    (gone from the library) has no say in the folder's albums and keeps its key until it
    comes back."""
    mates = [t for t in session.scalars(select(Track).where(*_in_album_folder(session, folder),
                                                            Track.state != S.MISSING)
                                        .order_by(Track.id))
             if album_folder(t.path) == folder]
    found = album_identities([AlbumTags(t.path, t.album, t.album_artist, t.artist)
                              for t in mates])
    for track, identity in zip(mates, found, strict=True):
        if track.album_key != identity.key:
            track.album_key = identity.key
        if track.compilation != identity.compilation:
            track.compilation = identity.compilation


def _in_album_folder(session: Session, folder: str) -> list:
    """Where-clauses for the tracks directly in `folder` or one folder below it."""
    if not folder:
        return [~Track.path.contains("/")]
    prefix = folder + "/"
    below = prefix.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%/%/%"
    clauses = [Track.path.startswith(prefix, autoescape=True),
               ~Track.path.like(below, escape="!")]
    if session.get_bind().dialect.name == "sqlite":
        # SQLite's LIKE ignores case, so it cannot use the path index; its text compares
        # byte by byte, so every path starting "folder/" lies in ["folder/", "folder0").
        clauses += [Track.path >= prefix, Track.path < folder + "0"]
    return clauses


def _moved_track(session: Session, root: str, fp: str) -> Track | None:
    """The track a new file with fingerprint `fp` was moved from: same fingerprint, and
    missing, or its old name no longer listed in its folder (gone; or renamed in case
    only on a case-insensitive SMB share, where the old name still opens the file).
    Missing ones first, then the oldest."""
    candidates = session.scalars(select(Track).where(Track.fingerprint == fp)
                                 .order_by(Track.id)).all()
    candidates.sort(key=lambda t: t.state != S.MISSING)
    for track in candidates:
        if track.state == S.MISSING or not _listed(Path(root) / filesystem_path(track.path)):
            return track
    return None


def _quarantine(track: Track, reason: str | None, ctime: float | None) -> None:
    """A file its reader crashed, hung or ran out of memory on: reading it again would do
    the same, so it waits, quarantined with the reason, until the file changes (its
    `ctime` then is how the walk sees a chmod or chown)."""
    track.quarantined_ctime = ctime
    if track.state != S.QUARANTINED and not can_move(track.state, S.QUARANTINED):
        move(track, S.QUEUED)
    move(track, S.QUARANTINED)  # an already quarantined track's "since" is now too
    track.last_error = reason
    track.next_attempt_at = None
    log.warning("quarantined %s: %s", track.path, reason)


def _listed(path: Path) -> bool:
    """Whether this exact name is in its folder's listing (not just openable)."""
    try:
        return path.name in os.listdir(path.parent)
    except OSError:
        return False
