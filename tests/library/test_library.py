"""Finding files: the walk, settle tracking, reconcile against a real migrated SQLite file,
moves by fingerprint, our own writes, the mount-loss guard, a write-locked database.

Times passed to reconcile/settle_due are fixed numbers, so settling is exact here; the
watcher tests (test_watcher.py) run the same code against real observers and real time.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
from helpers import ODD_NAMES, hold_write_lock, make_not_songs
from mutagen.id3 import ID3
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from daemon.audio.fingerprint import fingerprint
from daemon.cli.demo import encode, synthesize
from daemon.cli.status_text import render_status
from daemon.core.config import parse_config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Decision, ServiceState, Suggestion, Track, utcnow
from daemon.core.paths import filesystem_path, library_file, stored_path
from daemon.core.states import TrackState as S
from daemon.library.reconcile import Library
from daemon.library.record import settled_state
from daemon.library.scan import scan_library
from daemon.library.settle import SettleTracker
from daemon.library.walk import is_library_file, walk_library
from daemon.review import decisions as review
from daemon.review.web import create_app
from daemon.review.writeback import Writer
from daemon.service.status import collect_status
from daemon.tags.genres import load_genre_map
from daemon.tags.write import write_tags

SETTLE = 1.0


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    """Short songs made by real encoders, each different (so each fingerprint differs)."""
    folder = tmp_path_factory.mktemp("masters")
    songs = {}
    for i, (name, genre) in enumerate([("rock.mp3", "Rock"), ("jazz.flac", "Jazz"),
                                       ("folk.ogg", "Folk"), ("blues.flac", "Blues")]):
        songs[name] = encode(folder / name, synthesize(genre, 3.0, 22_050, i, 2), 22_050)
    for i in range(10):
        songs[f"w{i}.wav"] = encode(folder / f"w{i}.wav",
                                    synthesize("Pop", 1.5, 22_050, 100 + i, 1), 22_050)
    return songs


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "library"
    folder.mkdir()
    return folder


def _library_maker(root, tmp_path, default_sessions):
    # parse_config rather than conftest's make_config, whose first parameter is named
    # `library` and so cannot take a [library] section.
    def make(sessions=None, **sections) -> Library:
        library = {"root": str(root), "settle_seconds": SETTLE, **sections.pop("library", {})}
        config = parse_config({"library": library, "state_dir": str(tmp_path / "state"),
                               **sections})
        return Library(config, sessions or default_sessions, load_genre_map())

    return make


@pytest.fixture
def make_library(root, tmp_path, any_database):
    """Library(...) on a migrated database: every test using it runs on SQLite and on
    PostgreSQL."""
    return _library_maker(root, tmp_path, any_database[1])


@pytest.fixture
def make_sqlite_library(root, tmp_path, database):
    """make_library on the SQLite file tmp_path/genretagger.db (the locked-file tests)."""
    return _library_maker(root, tmp_path, database[1])


def put(masters, root: Path, master: str, rel: str, **tags) -> Path:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(masters[master], target)
    if tags:
        write_tags(target, **tags)
    return target


class Clock:
    """Fixed times for reconcile/settle_due: each step moves past settle_seconds."""
    def __init__(self):
        self.now = 1000.0

    def settle(self, library: Library) -> tuple:
        """A walk, then a settle pass once settle_seconds have gone by."""
        result = library.reconcile(now=self.now)
        self.now += SETTLE
        done = library.settle_due(now=self.now)
        self.now += 1
        return result, done


def tracks(sessions) -> dict[str, Track]:
    with sessions() as session:
        return {t.path: t for t in session.scalars(select(Track))}


# ------------------------------------------------------------------ pure parts


def test_settle_tracker_waits_for_size_and_mtime_to_stay_put():
    tracker = SettleTracker()
    assert tracker.observe("a.mp3", 100, 1.0, now=0)
    assert tracker.due(9.9, 10) == []
    assert tracker.due(10, 10) == ["a.mp3"]
    # Growing (a copy in progress) restarts the clock; the same sighting does not.
    assert tracker.observe("a.mp3", 200, 2.0, now=5)
    assert not tracker.observe("a.mp3", 200, 2.0, now=8)
    assert tracker.due(14.9, 10) == []
    assert tracker.due(15, 10) == ["a.mp3"]
    # A path that went away is tracked as gone and settles like any other.
    assert tracker.observe("b.mp3", None, None, now=3)
    assert not tracker.observe("b.mp3", None, None, now=4)
    assert tracker.due(15, 10) == ["b.mp3", "a.mp3"]  # longest waiting first
    assert tracker.due(15, 10, limit=1) == ["b.mp3"]
    tracker.forget("b.mp3")
    assert "b.mp3" not in tracker and len(tracker) == 1


def test_the_settle_stages_run_one_after_another_on_real_files(masters, root, tmp_path):
    """look -> unchanged -> sort_out -> read_settled, called in a row as settle_due calls
    them: no database, no thread, no clock; each stage's record says what it found."""
    from daemon.library.known import Known
    from daemon.library.read import reader_pool
    from daemon.library.settle import look, read_settled, sort_out

    put(masters, root, "rock.mp3", "new.mp3", title="New")
    same = put(masters, root, "jazz.flac", "same.flac")
    ours = put(masters, root, "folk.ogg", "ours.ogg")
    outside = put(masters, tmp_path, "blues.flac", "outside.flac")
    (root / "link.flac").symlink_to(outside)
    batch = ["new.mp3", "same.flac", "ours.ogg", "gone.mp3", "link.flac"]
    real_root = os.path.realpath(root)

    looks = look(str(root), real_root, batch)
    stats = {seen.rel: seen.stat for seen in looks}
    assert stats["same.flac"] == (same.stat().st_size, same.stat().st_mtime)
    assert stats["gone.mp3"] is None and stats["link.flac"] is None
    assert {seen.rel: seen.skipped for seen in looks if seen.skipped} == {
        "link.flac": "leads outside the library"}
    tracker = SettleTracker()
    assert tracker.unchanged(looks, now=0) == []  # first sightings: all wait
    assert tracker.unchanged(looks, now=5) == looks  # as before: all settled
    os.utime(ours, (1, 1))
    moved = look(str(root), real_root, ["ours.ogg"])
    assert tracker.unchanged(moved, now=6) == []  # it moved: it waits again
    assert tracker.unchanged(moved, now=9) == moved
    looks = [seen for seen in looks if seen.rel != "ours.ogg"] + moved

    known = {"same.flac": Known(1, stats["same.flac"], None, S.SUGGESTED),
             "ours.ogg": Known(2, (1, 0.0), moved[0].stat, S.REVIEWED),
             "gone.mp3": Known(3, (10, 1.0), None, S.QUEUED)}
    settled = sort_out(looks, known, str(root))
    assert settled.to_read == (("new.mp3", stats["new.mp3"]),)
    assert settled.ours == (("ours.ogg", 2, moved[0].stat),)
    assert settled.unchanged == ("same.flac",)
    assert settled.gone == ("gone.mp3", "link.flac")

    readers = reader_pool(parse_config({"library": {"root": str(root)},
                                        "state_dir": str(tmp_path / "state")}))
    try:
        readings = read_settled(settled.to_read, str(root), readers)
    finally:
        readers.close()
    assert readings.moving == ()
    [(rel, reading)] = readings.read.items()
    assert rel == "new.mp3" and reading.tags.title == "New"
    assert reading.stat == stats["new.mp3"]
    assert reading.fingerprint == fingerprint(root / "new.mp3")


@pytest.mark.parametrize(("current", "maps", "audit", "same_audio", "history", "expected"), [
    (None, True, False, False, S.QUEUED, S.TAGGED),
    (None, False, False, False, S.QUEUED, S.QUEUED),
    (None, True, True, False, S.QUEUED, S.QUEUED),  # audit: tagged files are classified too
    (S.TAGGED, False, False, False, S.QUEUED, S.QUEUED),  # tag removed
    (S.QUARANTINED, False, False, True, S.QUEUED, S.QUEUED),  # changed: a fresh start
    (S.SUGGESTED, False, False, True, S.QUEUED, S.SUGGESTED),  # touched, same audio
    (S.SUGGESTED, False, False, False, S.QUEUED, S.QUEUED),  # new audio
    (S.WORKING, False, False, True, S.QUEUED, S.QUEUED),  # changed under the worker
    (S.REVIEWED, True, False, True, S.QUEUED, S.TAGGED),  # someone tagged it elsewhere
    (S.MISSING, False, False, True, S.SUGGESTED, S.SUGGESTED),  # back, with its history
    (S.MISSING, True, False, True, S.SUGGESTED, S.TAGGED),
])
def test_settled_state(current, maps, audit, same_audio, history, expected):
    assert settled_state(current, maps=maps, audit=audit, same_audio=same_audio,
                         history=history) == expected


@pytest.mark.parametrize(("name", "wanted"), [
    ("song.mp3", True), ("SONG.FLAC", True), ("song.mp3.part", False),
    ("song.mp3.tmp", False), ("song.mp3~", False), ("._song.mp3", False),
    (".song.mp3", False), ("cover.jpg", False), ("notes.txt", False),
    ("song.crdownload", False),
])
def test_which_names_are_library_files(name, wanted):
    assert is_library_file(name, (".mp3", ".flac")) is wanted


def test_paths_that_are_not_utf8_round_trip_through_the_database_form():
    raw = os.fsdecode(b"Caf\xe9/Ni\xf1a.mp3")  # Latin-1 bytes from an old Windows share
    stored = stored_path(raw)
    assert stored == "Caf\\xe9/Ni\\xf1a.mp3"
    stored.encode("utf-8")  # what SQLite needs: no lone surrogates
    assert filesystem_path(stored) == raw
    assert stored_path("Björk/Jóga.mp3") == "Björk/Jóga.mp3" == filesystem_path("Björk/Jóga.mp3")


# ------------------------------------------------------------------------- walk


def test_walk_skips_temp_hidden_and_other_files_and_survives_link_loops(masters, root):
    put(masters, root, "rock.mp3", "Artist/Album/01.mp3")
    put(masters, root, "rock.mp3", "Artist/Album/02.mp3.part")
    put(masters, root, "rock.mp3", "Artist/Album/._01.mp3")
    put(masters, root, "rock.mp3", ".hidden/03.mp3")
    put(masters, root, "rock.mp3", "#recycle/04.mp3")
    (root / "Artist/Album/cover.jpg").write_bytes(b"jpeg")
    (root / "Artist/Album/loop").symlink_to(root / "Artist")  # a loop
    (root / "elsewhere").symlink_to(root / "Artist/Album")  # a second way into a folder
    (root / "broken.mp3").symlink_to(root / "nowhere.mp3")
    walk = walk_library(root, (".mp3",))
    assert list(walk.files) in (["Artist/Album/01.mp3"], ["elsewhere/01.mp3"])
    assert walk.unreadable == []


# -------------------------------------------------------------- reconcile + settle


def test_new_files_are_read_once_after_settling(masters, root, make_library, any_database):
    put(masters, root, "rock.mp3", "Tagged/rock.mp3", genre="Rock", artist="A", title="T")
    put(masters, root, "jazz.flac", "Untagged/jazz.flac")
    put(masters, root, "folk.ogg", "Odd/folk.ogg", genre="Freak Folk Polka")  # maps to nothing
    (root / "Odd/broken.mp3").write_bytes(b"\0" * 5000)
    put(masters, root, "rock.mp3", "Untagged/partial.mp3.part")
    library = make_library()

    result = library.reconcile(now=0)
    assert (result.files, result.new, result.guarded) == (4, 4, False)
    assert library.settle_due(now=SETTLE - 0.1) == 0  # not settled yet: nothing read
    assert library.files_read == 0 and tracks(any_database[1]) == {}
    assert library.settle_due(now=SETTLE) == 4
    assert library.files_read == 4

    found = tracks(any_database[1])
    rock = found["Tagged/rock.mp3"]
    assert (rock.state, rock.canonical_genre, rock.raw_genre) == (S.TAGGED, "Rock", "Rock")
    assert (rock.format, rock.artist, rock.title) == ("mp3", "A", "T")
    assert rock.duration == pytest.approx(3.0, abs=0.1)
    assert rock.fingerprint == fingerprint(root / "Tagged/rock.mp3")
    assert found["Untagged/jazz.flac"].state == S.QUEUED
    odd = found["Odd/folk.ogg"]
    assert (odd.state, odd.raw_genre, odd.canonical_genre) == (S.QUEUED, "Freak Folk Polka", None)
    broken = found["Odd/broken.mp3"]
    assert broken.state == S.QUEUED and "audio" in broken.last_error  # the worker decides

    # A second walk: nothing changed, nothing to read.
    again = library.reconcile(now=10)
    assert (again.unchanged, again.new, again.changed) == (4, 0, 0)
    assert library.settle_due(now=20) == 0 and library.files_read == 4
    with any_database[1]() as session:
        recorded = session.get(ServiceState, "last_reconcile").value
    assert recorded["files"] == 4 and recorded["unchanged"] == 4 and not recorded["guarded"]


def test_audit_mode_queues_tagged_files_too(masters, root, make_library, any_database):
    put(masters, root, "rock.mp3", "rock.mp3", genre="Rock")
    Clock().settle(make_library(classifier={"audit": True}))
    rock = tracks(any_database[1])["rock.mp3"]
    assert (rock.state, rock.canonical_genre) == (S.QUEUED, "Rock")


def test_a_file_that_vanishes_before_settling_is_forgotten(masters, root, make_library,
                                                          any_database):
    song = put(masters, root, "jazz.flac", "jazz.flac")
    library = make_library()
    library.reconcile(now=0)
    song.unlink()
    assert library.settle_due(now=SETTLE) == 0  # now it looks gone: wait for that to settle
    assert library.settle_due(now=2 * SETTLE) == 0
    assert library.settling == 0 and tracks(any_database[1]) == {} and library.files_read == 0


def test_changed_files_are_reread_and_requeued(masters, root, make_library, any_database):
    tagged = put(masters, root, "rock.mp3", "rock.mp3", genre="Rock")
    stuck = put(masters, root, "jazz.flac", "jazz.flac")
    touched = put(masters, root, "folk.ogg", "folk.ogg")
    library, clock = make_library(), Clock()
    clock.settle(library)
    with transaction(any_database[1]) as session:
        for track in session.scalars(select(Track)):
            if track.path == "jazz.flac":
                track.state, track.attempts, track.last_error = S.QUARANTINED, 4, "boom"
            if track.path == "folk.ogg":
                track.state = S.SUGGESTED

    tag = ID3(tagged)
    tag.delall("TCON")  # the genre removed by hand in a tag editor
    tag.save(tagged)
    shutil.copyfile(masters["blues.flac"], stuck)  # the quarantined file replaced
    os.utime(touched, (time.time(), time.time() + 60))  # only the mtime moves
    result, done = clock.settle(library)
    assert result.changed == 3 and done == 3
    found = tracks(any_database[1])
    assert (found["rock.mp3"].state, found["rock.mp3"].canonical_genre) == (S.QUEUED, None)
    jazz = found["jazz.flac"]
    assert (jazz.state, jazz.attempts, jazz.last_error) == (S.QUEUED, 0, None)
    assert found["folk.ogg"].state == S.SUGGESTED  # same audio: its suggestion still holds


def test_our_own_tag_write_is_not_requeued(masters, root, make_library, any_database):
    song = put(masters, root, "jazz.flac", "jazz.flac")
    library, clock = make_library(), Clock()
    clock.settle(library)
    with transaction(any_database[1]) as session:
        session.scalars(select(Track)).one().state = S.REVIEWED
    # What daemon.review.writeback does: write the genre, then record the file's new stat.
    write_tags(song, genre="Jazz")
    os.utime(song, (time.time(), time.time() + 5))
    st = song.stat()
    with transaction(any_database[1]) as session:
        track = session.scalars(select(Track)).one()
        track.written_size, track.written_mtime = st.st_size, st.st_mtime
    reads = library.files_read
    result, done = clock.settle(library)
    assert (result.ours, result.changed, done) == (1, 0, 0)
    track = tracks(any_database[1])["jazz.flac"]
    assert track.state == S.REVIEWED and (track.size, track.mtime) == (st.st_size, st.st_mtime)
    assert library.files_read == reads
    assert clock.settle(library)[0].unchanged == 1


def test_a_temp_copy_left_by_an_interrupted_tag_write_is_removed(masters, root,
                                                                  make_library, any_database):
    """A power cut between the writer's copy and its rename leaves a hidden temp copy next
    to the song; the next walk removes it once it is an hour old, and only it."""
    from daemon.tags.replace import temp_path

    song = put(masters, root, "jazz.flac", "A/jazz.flac")
    stale, fresh = temp_path(song), temp_path(put(masters, root, "rock.mp3", "B/rock.mp3"))
    for leftover in (stale, fresh):
        shutil.copyfile(masters["jazz.flac"], leftover)
    other_hidden = root / "A" / ".jazz.flac.rsync-partial"
    other_hidden.write_bytes(b"not ours")
    two_hours_ago = time.time() - 7200
    for path in (stale, other_hidden):
        os.utime(path, (two_hours_ago, two_hours_ago))
    library, clock = make_library(), Clock()
    result, done = clock.settle(library)
    assert (result.files, done) == (2, 2)
    assert not stale.exists()
    assert fresh.exists()  # may be a write in progress
    assert other_hidden.exists() and song.exists()
    assert set(tracks(any_database[1])) == {"A/jazz.flac", "B/rock.mp3"}


def test_our_own_write_reported_by_the_watcher_is_not_reread(masters, root, make_library,
                                                             any_database):
    song = put(masters, root, "jazz.flac", "jazz.flac")
    library, clock = make_library(), Clock()
    clock.settle(library)
    reads = library.files_read
    write_tags(song, genre="Jazz")  # daemon.review.writeback: the tag, then the stat it left behind
    st = song.stat()
    with transaction(any_database[1]) as session:
        track = session.scalars(select(Track)).one()
        track.size = track.written_size = st.st_size
        track.mtime = track.written_mtime = st.st_mtime
    assert library.notice(str(song), now=clock.now)  # the events of that write
    assert library.settle_due(now=clock.now + SETTLE) == 0
    assert library.files_read == reads and library.settling == 0


def test_notice_takes_only_library_files(root, make_library):
    library = make_library()
    for path in ["x.mp3.part", ".hidden/x.mp3", "#recycle/x.mp3", "cover.jpg", "a/._x.mp3"]:
        assert not library.notice(str(root / path))
    assert not library.notice(str(root.parent / "x.mp3"))  # outside the root
    assert library.notice(str(root / "a/x.mp3"))  # not there (yet): tracked as gone
    assert library.settling == 1


def test_a_moved_file_keeps_its_track_and_history(masters, root, make_library, any_database):
    for i in range(6):
        put(masters, root, f"w{i}.wav", f"Incoming/{i}.wav")
    library, clock = make_library(), Clock()
    clock.settle(library)
    with transaction(any_database[1]) as session:
        track = session.scalars(select(Track).where(Track.path == "Incoming/0.wav")).one()
        track.state = S.SUGGESTED
        session.add(Suggestion(track=track, genre="Pop", confidence=0.9,
                               top=[["Pop", 0.9], ["Rock", 0.05], ["Jazz", 0.05]]))
        session.flush()
        session.add(Decision(track_id=track.id, action="reject", how="single", who="md"))
        track_id = track.id

    (root / "Pop").mkdir()
    os.rename(root / "Incoming/0.wav", root / "Pop/0.wav")
    result = library.reconcile(now=clock.now)
    assert (result.missing, result.new) == (1, 1)  # old path missing, new path settling
    assert tracks(any_database[1])["Incoming/0.wav"].state == S.MISSING
    clock.now += SETTLE
    assert library.settle_due(now=clock.now) == 1

    found = tracks(any_database[1])
    assert "Incoming/0.wav" not in found and len(found) == 6
    moved = found["Pop/0.wav"]
    assert moved.id == track_id and moved.state == S.SUGGESTED  # back where it was
    with any_database[1]() as session:
        assert session.scalars(select(Suggestion.track_id)).all() == [track_id]
        assert session.scalars(select(Decision.track_id)).all() == [track_id]


def test_a_copy_is_a_new_track_not_a_move(masters, root, make_library, any_database):
    put(masters, root, "jazz.flac", "a/jazz.flac")
    library, clock = make_library(), Clock()
    clock.settle(library)
    shutil.copy2(root / "a/jazz.flac", root / "b.flac")
    clock.settle(library)
    found = tracks(any_database[1])
    assert set(found) == {"a/jazz.flac", "b.flac"}
    assert found["a/jazz.flac"].fingerprint == found["b.flac"].fingerprint


def test_a_name_that_is_not_utf8_is_stored_and_found_again(masters, root, make_library,
                                                          any_database):
    name = os.fsdecode(b"Caf\xe9 del Mar.wav")
    shutil.copyfile(masters["w0.wav"], os.path.join(os.fsencode(root), os.fsencode(name)))
    library, clock = make_library(), Clock()
    clock.settle(library)
    (stored,) = tracks(any_database[1])
    assert stored == "Caf\\xe9 del Mar.wav"
    assert library_file(root, stored).is_file()
    assert clock.settle(library)[0].unchanged == 1  # the same file, not new every walk


# ------------------------------------------------------------ mount-loss guard


def _settled_library(masters, root, make_library, n=10):
    for i in range(n):
        put(masters, root, f"w{i}.wav", f"Artist {i}/{i}.wav")
    library, clock = make_library(), Clock()
    clock.settle(library)
    return library, clock


def _states(sessions) -> set[str]:
    return {t.state for t in tracks(sessions).values()}


def test_root_renamed_away_marks_nothing_missing(masters, root, make_library, any_database,
                                                 caplog):
    library, clock = _settled_library(masters, root, make_library)
    root.rename(root.with_name("away"))  # an unmounted share
    result = library.reconcile(now=clock.now)
    assert result.guarded and "missing" in result.reason and result.missing == 0
    assert _states(any_database[1]) == {S.QUEUED}
    guard_lines = [r for r in caplog.records if "MOUNT-LOSS GUARD" in r.getMessage()]
    assert len(guard_lines) == 1 and str(root) in guard_lines[0].getMessage()
    with any_database[1]() as session:
        assert session.get(ServiceState, "last_reconcile").value["guarded"] is True

    root.with_name("away").rename(root)  # mounted again: back to normal
    result = library.reconcile(now=clock.now)
    assert not result.guarded and result.unchanged == 10


def test_empty_mount_point_marks_nothing_missing(masters, root, make_library, any_database):
    library, clock = _settled_library(masters, root, make_library)
    away = root.with_name("away")
    away.mkdir()
    for child in list(root.iterdir()):
        child.rename(away / child.name)  # what is left of an unmounted share: an empty dir
    result = library.reconcile(now=clock.now)
    assert result.guarded and "empty" in result.reason and result.vanished == 10
    assert _states(any_database[1]) == {S.QUEUED}


def test_more_than_a_fifth_vanishing_at_once_is_guarded(masters, root, make_library,
                                                        any_database):
    library, clock = _settled_library(masters, root, make_library)
    for i in range(3):
        shutil.rmtree(root / f"Artist {i}")
    result = library.reconcile(now=clock.now)
    assert result.guarded and result.vanished == 3 and result.missing == 0
    assert _states(any_database[1]) == {S.QUEUED}
    # Exactly a fifth is not "more than": those are really gone.
    put(masters, root, "w0.wav", "Artist 0/0.wav")
    result = library.reconcile(now=clock.now + 1)
    assert not result.guarded and result.missing == 2
    assert sorted(p for p, t in tracks(any_database[1]).items() if t.state == S.MISSING) == [
        "Artist 1/1.wav", "Artist 2/2.wav"]


def test_a_wave_of_watched_deletions_is_judged_whole(masters, root, make_library, any_database):
    library, clock = _settled_library(masters, root, make_library)
    for i in range(3):  # 30% of the library reported gone, settling one file at a time
        (root / f"Artist {i}/{i}.wav").unlink()
        library.notice(str(root / f"Artist {i}/{i}.wav"), now=clock.now)
    for _ in range(3):
        assert library.settle_due(now=clock.now + SETTLE, limit=1) == 0
    assert _states(any_database[1]) == {S.QUEUED} and library.settling == 0
    # One deletion on its own is just a deletion.
    (root / "Artist 3/3.wav").unlink()
    library.notice(str(root / "Artist 3/3.wav"), now=clock.now + 5)
    assert library.settle_due(now=clock.now + 5 + SETTLE) == 1
    assert tracks(any_database[1])["Artist 3/3.wav"].state == S.MISSING


# ------------------------------------------------------------ a locked database

def test_a_write_locked_database_makes_reconcile_wait_not_fail(masters, root, make_sqlite_library,
                                                               database, tmp_path):
    library, clock = _settled_library(masters, root, make_sqlite_library)
    (root / "Artist 0/0.wav").unlink()
    holder = hold_write_lock(tmp_path / "genretagger.db", 2.5)
    started = time.monotonic()
    result = library.reconcile(now=clock.now)  # waits on the busy timeout
    assert time.monotonic() - started >= 2.0
    assert (result.error, result.missing) == (None, 1)
    assert holder.wait(10) == 0


def test_settling_survives_a_lock_that_outlasts_the_busy_timeout(masters, root, make_sqlite_library,
                                                                 database, tmp_path):
    # A short busy timeout stands in for a lock held longer than the real 30 s one.
    impatient = create_engine(f"sqlite:///{tmp_path / 'genretagger.db'}",
                              connect_args={"timeout": 0.2})
    library = make_sqlite_library(sessions=sessionmaker(impatient, expire_on_commit=False))
    put(masters, root, "jazz.flac", "jazz.flac")
    library.reconcile(now=0)
    holder = hold_write_lock(tmp_path / "genretagger.db", 2.0)
    assert library.settle_due(now=SETTLE) == 0  # logged, not raised
    assert library.settling == 1  # still waiting to be written
    assert holder.wait(10) == 0
    assert library.settle_due(now=SETTLE + 1) == 1
    assert tracks(database[1])["jazz.flac"].state == S.QUEUED
    impatient.dispose()


def test_a_reloaded_settle_time_applies_to_the_next_settle_pass(masters, root,
                                                                make_library):
    """SIGHUP replaces the running config; the library reads its settle time from it on
    every pass, so nothing is set on the library from outside."""
    library = make_library()
    put(masters, root, "rock.mp3", "a.mp3")
    library.reconcile(now=1000.0)
    config = library.config
    slower = config.model_copy(update={"library": config.library.model_copy(
        update={"settle_seconds": 30.0})})
    library.live.replace(slower, library.genre_map)
    assert library.settle_due(now=1000.0 + SETTLE) == 0  # the old time has passed ...
    assert library.settle_due(now=1029.0) == 0
    assert library.settle_due(now=1030.0) == 1  # ... the new one counts


def test_first_seen_is_recorded(masters, root, make_library, any_database):
    before = utcnow()
    put(masters, root, "w1.wav", "w1.wav")
    Clock().settle(make_library())
    track = tracks(any_database[1])["w1.wav"]
    assert track.first_seen >= before and track.last_seen >= track.first_seen


# --------------------------------------------------------------------- names

def test_odd_names_each_get_their_own_track_that_stays_put(masters, root, make_library,
                                                           any_database):
    _, sessions = any_database
    for i, raw in enumerate(ODD_NAMES.values()):
        target = os.fsencode(root) + b"/" + raw
        os.makedirs(os.path.dirname(target), exist_ok=True)
        encode(os.fsdecode(target), synthesize("Rock", 1.5, 22_050, 200 + i, 1), 22_050)
    library, clock = make_library(), Clock()
    clock.settle(library)
    rows = tracks(sessions)
    assert sorted(os.fsencode(filesystem_path(p)) for p in rows) == sorted(ODD_NAMES.values())
    assert len({t.fingerprint for t in rows.values()}) == len(ODD_NAMES)
    for path, track in rows.items():
        assert library_file(root, path).is_file() and track.state == S.QUEUED
    result, done = clock.settle(library)  # the next walk: nothing new, nothing re-read
    assert (result.new, result.changed, done) == (0, 0, 0)
    assert {p: t.fingerprint for p, t in tracks(sessions).items()} == \
        {p: t.fingerprint for p, t in rows.items()}


@pytest.mark.parametrize("kind", ODD_NAMES)
def test_odd_names_go_through_scan_suggestion_accept_and_write(kind, masters, root,
                                                               make_library, any_database):
    """scan -> the library's track -> a suggestion -> accept -> the writer -> read back
    by exiftool, for each kind of name."""
    _, sessions = any_database
    raw = ODD_NAMES[kind]
    target = os.fsencode(root) + b"/" + raw
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(masters["rock.mp3"], target)
    [report] = scan_library(root, load_genre_map()).files
    assert report.error is None and report.format == "mp3"
    library = make_library()
    Clock().settle(library)
    [track] = tracks(sessions).values()
    assert os.fsencode(filesystem_path(track.path)) == raw
    with transaction(sessions) as session:  # what the worker leaves (tests/suggest/test_worker.py)
        suggestion = Suggestion(track_id=track.id, genre="Jazz", confidence=0.9,
                                top=[["Jazz", 0.9]], status="pending")
        session.add(suggestion)
        session.get(Track, track.id).state = S.SUGGESTED
        session.flush()
        sid = suggestion.id
    review.accept(sessions, library.config, [sid], who="t")
    assert Writer(library.config, sessions).run_once().written == 1
    out = subprocess.run(["exiftool", "-s3", "-Genre", os.fsdecode(target)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Jazz"


# ------------------------------------------------------------- what the walk skips


def test_everything_the_walk_skips_is_logged_and_in_status(masters, root, make_library,
                                                          any_database, tmp_path, caplog):
    """No track for any of them, one log line each (not again at the next walk), the
    reasons in `status` (JSON and text); the links leading outside are never opened: the
    one to a FIFO would block this test, also when the watcher reports it."""
    _, sessions = any_database
    put(masters, root, "rock.mp3", "Artist/song.mp3")
    made = make_not_songs(root, tmp_path / "outside", masters["rock.mp3"])
    library, clock = make_library(), Clock()
    with caplog.at_level("WARNING", logger="daemon.library.reconcile"):
        result, _ = clock.settle(library)
    assert list(tracks(sessions)) == ["Artist/song.mp3"]
    assert result.skipped == len(made)
    assert {e["path"]: e["reason"] for e in result.skipped_files}.keys() == made.keys()
    for entry in result.skipped_files:
        assert made[entry["path"]] in entry["reason"]
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(logged) == len(made)
    for rel, reason in made.items():
        assert any(rel in line and reason in line for line in logged), rel

    caplog.clear()
    with caplog.at_level("WARNING", logger="daemon.library.reconcile"):
        clock.settle(library)
    assert not [r for r in caplog.records if r.getMessage().startswith("skipped")]

    # The watcher reports the links (a new one appeared): settling checks before it reads.
    for rel in ("Skip/outside-fifo.mp3", "Skip/outside-song.mp3", "Skip/loop.mp3"):
        assert library.notice(str(root / rel), now=clock.now)
    clock.now += SETTLE
    library.settle_due(now=clock.now)
    clock.now += SETTLE
    library.settle_due(now=clock.now)
    assert list(tracks(sessions)) == ["Artist/song.mp3"] and library.files_read == 1

    data = collect_status(library.config, sessions)
    assert data["skipped_total"] == len(made)
    assert {e["path"] for e in data["skipped"]} == set(made)
    text = render_status(data)
    for rel, reason in made.items():
        assert any(rel in line and reason in line for line in text.splitlines()), rel


def test_a_track_whose_file_became_a_link_outside_is_never_read(masters, root, make_library,
                                                                any_database, tmp_path):
    _, sessions = any_database
    put(masters, root, "rock.mp3", "a.mp3")
    put(masters, root, "jazz.flac", "b.flac")
    library, clock = make_library(library={"missing_guard": 0.9}), Clock()
    clock.settle(library)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(outside / "fifo")
    (root / "a.mp3").unlink()
    (root / "a.mp3").symlink_to(outside / "fifo")
    reads = library.files_read
    result, _ = clock.settle(library)
    assert result.skipped == 1 and result.skipped_files[0]["reason"] == \
        "leads outside the library"
    clock.settle(library)
    assert tracks(sessions)["a.mp3"].state == S.MISSING and library.files_read == reads


def test_the_review_pages_preview_plays_songs_with_odd_names(masters, root, make_library,
                                                             any_database):
    """Backslashes and raw bytes in a name: the preview and spectrogram are served (the
    checked resolution takes them), not a 404."""
    _, sessions = any_database
    for i, raw in enumerate((b"AC\\DC - Back\\In Black.mp3", b"caf\xe9.mp3",
                             b"collide_\\xe9.mp3")):
        target = os.fsencode(root) + b"/" + raw
        encode(os.fsdecode(target), synthesize("Jazz", 12.0, 22_050, 300 + i, 1), 22_050)
    library = make_library()
    Clock().settle(library)
    client = create_app(library.config, sessions, decision_made=threading.Event()).test_client()
    for track in tracks(sessions).values():
        r = client.get(f"/tracks/{track.id}/preview.wav")
        assert r.status_code == 200, (track.path, r.status_code)
        samples, _ = sf.read(io.BytesIO(r.data))
        assert len(samples) > 0
        assert client.get(f"/tracks/{track.id}/spectrogram.png").status_code == 200
