"""Tag write-back on real encoded files: every format, atomicity under SIGKILL, the
Writer's bookkeeping (retries, written size/mtime, fingerprint, feature cache), and
a reconcile that does not re-queue our own write."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from helpers import add_suggested_track, fill_disk, locks_waiting, small_tmpfs, wait_for
from mutagen.id3 import ID3
from sqlalchemy import select

from daemon.audio.decode import probe, read_window
from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import DEFAULT_SPEC
from daemon.audio.fingerprint import fingerprint
from daemon.core.db.models import Decision, Track, utcnow
from daemon.core.errors import FileError
from daemon.review import decisions as review
from daemon.review import listing
from daemon.review.writeback import Writer, build_copy
from daemon.tags.read import read_tags
from daemon.tags.replace import (
    WRITER_TEMP_MARK,
    Copy,
    WriteFailed,
    check_target,
    new_version,
    put_in_place,
    temp_path,
    verify,
)
from daemon.tags.restore import genre_fields
from daemon.tags.write import NewGenre, write_copy, write_genre_atomically

FORMATS = ("mp3", "flac", "ogg", "opus", "m4a", "wav", "aiff", "wma")


def id3_version(path: Path) -> int:
    return ID3(path).version[1]


@pytest.fixture
def mp3_v23(make_song):
    path = make_song("v23.mp3", seconds=3, title="Old Song", artist="Band")
    tags = ID3(path)
    tags.save(path, v2_version=3)
    assert id3_version(path) == 3
    return path


@pytest.mark.parametrize("ext", FORMATS)
def test_write_every_format_keeps_other_tags_and_audio(make_song, ext):
    path = make_song(f"song.{ext}", seconds=3, title="Old Song", artist="Band", genre="Blues")
    os.chmod(path, 0o640)
    os.chown(path, 1234, 2345)
    before = read_tags(path)
    # The writer's stages one after another, as write_genre_atomically runs them.
    change = NewGenre("Electronic")
    target = check_target(path)
    with new_version(target):
        copy = write_copy(target.real, target.temp, change.genre, change.mode, target.owner)
        expected = verify(target, change, copy)
        st = put_in_place(target)
    # What the writer records before the rename is what the file has after it.
    assert (expected.st_size, expected.st_mtime) == (st.st_size, st.st_mtime)
    after = read_tags(path)
    assert after.genres == ("Electronic",)
    assert (after.title, after.artist, after.format) == ("Old Song", "Band", before.format)
    assert abs(probe(path).duration - 3.0) < 0.2
    assert len(read_window(path, 1.0, 1.0)) > 20_000
    now = os.stat(path)
    assert (now.st_mode & 0o7777, now.st_uid, now.st_gid) == (0o640, 1234, 2345)
    assert (st.st_size, st.st_mtime) == (now.st_size, now.st_mtime)
    assert not temp_path(path).exists()
    # "add" keeps what was there, after the accepted genre.
    write_genre_atomically(path, "Jazz", "add")
    assert read_tags(path).genres == ("Jazz", "Electronic")


def test_id3_versions_are_kept(mp3_v23, make_song):
    write_genre_atomically(mp3_v23, "Jazz")
    assert id3_version(mp3_v23) == 3 and read_tags(mp3_v23).genres == ("Jazz",)
    v24 = make_song("v24.mp3", seconds=3, title="T")
    ID3(v24).save(v24, v2_version=4)
    write_genre_atomically(v24, "Folk")
    assert id3_version(v24) == 4 and read_tags(v24).genres == ("Folk",)


def test_symlinked_song_is_written_through_and_stays_a_link(make_song, tmp_path):
    real = make_song("real.flac", seconds=3)
    link = tmp_path / "songs" / "link.flac"
    link.symlink_to(real)
    write_genre_atomically(link, "Pop")
    assert link.is_symlink() and read_tags(real).genres == ("Pop",)


def test_failures_are_typed_and_leave_the_original(make_song, tmp_path):
    path = make_song("ro.mp3", seconds=3, genre="Rock")
    original = path.read_bytes()
    os.chmod(path, 0o444)
    with pytest.raises(WriteFailed, match="read-only"):
        write_genre_atomically(path, "Jazz")
    assert path.read_bytes() == original and not temp_path(path).exists()
    with pytest.raises(WriteFailed, match="gone"):
        write_genre_atomically(tmp_path / "nope.mp3", "Jazz")
    text = tmp_path / "songs" / "text.mp3"
    text.write_bytes(b"not audio at all " * 100)
    with pytest.raises(FileError):
        write_genre_atomically(text, "Jazz")
    assert not temp_path(text).exists()


def test_a_file_changed_while_its_copy_was_built_is_not_replaced(make_song):
    """Between building the new version and renaming it over the original, a tagger
    saves the song: verify refuses, the station's change stays, no temp file is left."""
    path = make_song("busy.mp3", seconds=3, genre_tag="Blues", title="Busy")
    change = NewGenre("Jazz")
    target = check_target(path)
    changed = pytest.raises(WriteFailed, match="changed while its tag was being written")
    with changed, new_version(target):
        copy = write_copy(target.real, target.temp, change.genre, change.mode, target.owner)
        with open(path, "ab") as song:  # someone else's save: more bytes
            song.write(b"\0" * 64)
        verify(target, change, copy)
        put_in_place(target)
    theirs = path.read_bytes()
    assert theirs.endswith(b"\0" * 64) and read_tags(path).genres == ("Blues",)
    assert not temp_path(path).exists()


def test_a_copy_that_does_not_read_back_the_genre_is_not_put_in_place(make_song):
    path = make_song("odd.flac", seconds=2, genre_tag="Blues")
    original = path.read_bytes()
    target = check_target(path)
    wrong = pytest.raises(FileError, match="wrote genre 'Jazz' but the file reads back")
    with wrong, new_version(target):
        copy = write_copy(target.real, target.temp, "Soul", "replace", target.owner)
        verify(target, NewGenre("Jazz"), copy)
        put_in_place(target)
    assert path.read_bytes() == original and not temp_path(path).exists()
    # add mode asks only that the genre is among those read back.
    assert NewGenre("Jazz", "add").mismatch(Copy(("Jazz", "Blues"))) is None


# A writer process, forked from a helper that imported the writer once (so 30+ rounds
# stay fast), rewrites genres in a loop until the test SIGKILLs it.
FORK_HELPER = """
import os, sys
from daemon.tags.write import write_genre_atomically
paths, child = sys.argv[1:], None
for line in sys.stdin:
    if line.strip() == "wait":
        _, status = os.waitpid(child, 0)
        print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
        continue
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        i = 0
        while True:
            for p in paths:
                write_genre_atomically(p, ("Rock", "Jazz")[i % 2])
            i += 1
            if i == 1:
                os.write(w, b"r")
    os.close(w)
    os.read(r, 1)
    os.close(r)
    print(child, flush=True)
"""


def test_sigkill_mid_write_leaves_old_or_new_file(make_song, tmp_path):
    paths = [make_song(f"kill.{ext}", seconds=2, genre="Blues", title="K") for ext in FORMATS]
    rng = random.Random(5)
    mid_write = 0
    helper = subprocess.Popen([sys.executable, "-c", FORK_HELPER, *map(str, paths)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        for _ in range(32):
            helper.stdin.write("go\n")
            helper.stdin.flush()
            writer_pid = int(helper.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(writer_pid, signal.SIGKILL)
            helper.stdin.write("wait\n")
            helper.stdin.flush()
            assert int(helper.stdout.readline()) == signal.SIGKILL
            mid_write += any(temp_path(p).exists() for p in paths)
            for path in paths:
                tags = read_tags(path)
                assert tags.genres in (("Rock",), ("Jazz",)), (path, tags.genres)
                assert tags.title == "K"
                samples = read_window(path, 0.5, 1.0)
                assert len(samples) > 15_000 and np.isfinite(samples).all()
    finally:
        helper.stdin.close()
        helper.wait(10)
    assert mid_write > 0  # some kills did land inside a write
    # A temp file left by a kill is hidden, and the next write replaces it.
    for path in paths:
        write_genre_atomically(path, "Pop")
        assert read_tags(path).genres == ("Pop",) and not temp_path(path).exists()


# ----------------------------------------------------------------- the Writer component

def add_song(sessions, library: Path, make_song, rel: str, **kw):
    path = make_song(Path(rel).name, seconds=3, folder=library / Path(rel).parent, title="S")
    st = path.stat()
    fp = fingerprint(path)
    track_id, sid = add_suggested_track(sessions, rel, size=st.st_size, mtime=st.st_mtime,
                                        fingerprint=fp, **kw)
    return path, track_id, sid, fp


def test_writer_writes_accepted_genres_and_records_its_write(station, make_song):
    config, sessions, library = station.config, station.sessions, station.library
    path, track_id, sid, old_fp = add_song(sessions, library, make_song, "A/one.mp3")
    cache = FeatureCache(config.cache_dir, DEFAULT_SPEC)
    features = np.random.default_rng(0).random((5, *DEFAULT_SPEC.input_shape), np.float32)
    cache.put(old_fp, features)
    [decision] = review.accept(sessions, config, [sid], who="t")
    writer = Writer(config, sessions)
    assert writer.run_once().written == 1
    assert read_tags(path).genres == ("Rock",)
    st = path.stat()
    with sessions() as session:
        track = session.get(Track, track_id)
        assert (track.written_size, track.written_mtime) == (st.st_size, st.st_mtime)
        assert (track.size, track.mtime) == (st.st_size, st.st_mtime)
        assert track.fingerprint == fingerprint(path) != old_fp
        assert session.get(Decision, decision.id).write_status == "written"
    np.testing.assert_allclose(cache.get(track.fingerprint), cache.get(old_fp))
    assert writer.run_once().written == 0  # nothing left


def test_writer_relinks_every_cache_the_worker_and_trainer_read(tmp_path, make_config,
                                                                database, make_song):
    """After our tag write the song's new fingerprint finds its backbone patches and its
    embedding too, at the config's windows per song and at the trainer's."""
    from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC
    from daemon.suggest.inputs import WindowSpecs

    library = tmp_path / "library"
    config = make_config(library, classifier={"windows_per_song": 8})
    _, sessions = database
    path, track_id, sid, old_fp = add_song(sessions, library, make_song, "A/two.flac")
    rng = np.random.default_rng(1)
    caches = []
    for windows in (8, DEFAULT_SPEC.clips_per_song):
        specs = WindowSpecs.for_windows(windows)
        for spec in (specs.cnn, specs.backbone):
            caches.append(FeatureCache(config.cache_dir, spec))
            caches[-1].put(old_fp, rng.random((windows, *spec.input_shape), np.float32))
    assert caches[-1].spec == BACKBONE_SPEC
    caches.append(FeatureCache(config.cache_dir, EMBEDDING_SPEC))
    caches[-1].put(old_fp, rng.standard_normal((8, 200)).astype(np.float32))
    review.accept(sessions, config, [sid], who="t")
    assert Writer(config, sessions).run_once().written == 1
    new_fp = fingerprint(path)
    assert new_fp != old_fp
    for cache in caches:
        assert np.array_equal(cache.get(new_fp), cache.get(old_fp)), cache.spec


def test_writer_retries_with_backoff_and_keeps_the_decision_visible(station, make_song):
    config, sessions, library = station.config, station.sessions, station.library
    path, track_id, sid, _ = add_song(sessions, library, make_song, "B/ro.flac")
    review.accept(sessions, config, [sid], who="t", choice=2)
    os.chmod(path, 0o444)
    writer = Writer(config, sessions, first_backoff=60)
    assert writer.run_once().failed == 1
    with sessions() as session:
        [decision] = session.scalars(select(Decision)).all()
        assert decision.write_status == "failed" and "read-only" in decision.write_error
        assert decision.next_write_at > utcnow() + timedelta(seconds=50)
        assert listing.write_backlog(session) == {"pending": 0, "failed": 1}
    assert writer.run_once().failed == 0  # not due yet
    os.chmod(path, 0o644)
    later = utcnow() + timedelta(seconds=61)
    assert writer.run_once(now=later).written == 1
    assert read_tags(path).genres == ("Metal",)
    # A vanished file fails the same way (and an undo of it is not retried).
    gone, _, sid2, _ = add_song(sessions, library, make_song, "B/gone.wav")
    [d2] = review.accept(sessions, config, [sid2], who="t")
    gone.unlink()
    assert writer.run_once().failed == 1
    review.undo(sessions, config, d2.id, who="t")
    assert writer.run_once(now=utcnow() + timedelta(hours=1)) == writer.run_once()
    with sessions() as session:
        assert session.get(Decision, d2.id).write_status == "none"


@pytest.fixture
def small_library_disk(tmp_path):
    """tmp_path/library on a 4 MB tmpfs."""
    with small_tmpfs(tmp_path / "library", 4 << 20) as library:
        yield library


def test_a_full_library_drive_keeps_the_song_and_the_decision_until_there_is_room(
        small_library_disk, make_config, database, make_song):
    """The new version is built in the child process, as the service does it; the drive
    fills up: the song stays as it was, no temp file is left, the decision waits with the
    reason and is written once there is room again."""
    from daemon.library.read import reader_pool

    library = small_library_disk
    config = make_config(library)
    _, sessions = database
    path, _, sid, _ = add_song(sessions, library, make_song, "Full/song.flac")
    original = path.read_bytes()
    review.accept(sessions, config, [sid], who="t")
    filler = library / ".filler"
    fill_disk(filler)
    children = reader_pool(config)
    try:
        writer = Writer(config, sessions, children=children, first_backoff=60)
        assert writer.run_once().failed == 1
        assert path.read_bytes() == original and not temp_path(path).exists()
        with sessions() as session:
            [decision] = session.scalars(select(Decision)).all()
            assert (decision.write_status, decision.write_error) == ("failed",
                                                                     "the drive is full")
        filler.unlink()
        assert writer.run_once(now=utcnow() + timedelta(seconds=61)).written == 1
    finally:
        children.close()
    assert read_tags(path).genres == ("Rock",) and read_tags(path).title == "S"


def test_writer_thread_starts_and_closes(station, make_song):
    config, sessions, library = station.config, station.sessions, station.library
    path, _, sid, _ = add_song(sessions, library, make_song, "C/t.ogg")
    writer = Writer(config, sessions, interval=0.05)
    writer.start()
    try:
        review.accept(sessions, config, [sid], who="t")
        writer.wake()
        deadline = time.monotonic() + 10
        while read_tags(path).genres != ("Rock",) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_tags(path).genres == ("Rock",)
    finally:
        started = time.monotonic()
        writer.close()
        assert time.monotonic() - started < 2


def test_a_decision_on_the_page_wakes_the_writer_through_the_event_both_share(
        station, make_song):
    """The review page and the writer are built with the same Event: an accept on the
    page wakes the writer at once, long before its interval comes round."""
    import re
    import threading

    from daemon.review.web.app import create_app

    config, sessions, library = station.config, station.sessions, station.library
    path, _, sid, _ = add_song(sessions, library, make_song, "W/woken.flac")
    decision_made = threading.Event()
    writer = Writer(config, sessions, interval=3600, decision_made=decision_made)
    client = create_app(config, sessions, decision_made=decision_made).test_client()
    writer.start()
    try:
        # Its first pass (nothing due) is over: from here it waits out its hour.
        wait_for(lambda: writer.health.last_progress_at is not None, 10, "the first pass")
        page = client.get("/").get_data(as_text=True)
        token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        started = time.monotonic()
        r = client.post(f"/suggestions/{sid}/accept", data={},
                        headers={"X-CSRFToken": token, "Accept": "application/json"})
        assert r.status_code == 200, r.get_data(as_text=True)
        wait_for(lambda: read_tags(path).genres == ("Rock",), 10, "the genre in the file")
        assert time.monotonic() - started < 10
    finally:
        writer.close()
    client.application.extensions["children"].close()


def test_undo_after_write_puts_the_old_genre_back(station, make_song):
    config, sessions, library = station.config, station.sessions, station.library
    path, _, sid, _ = add_song(sessions, library, make_song, "D/u.m4a", raw_genre="Blues")
    from daemon.tags.write import write_tags

    write_tags(path, genre="Blues")
    with sessions() as session, session.begin():
        track = session.scalar(select(Track).where(Track.path == "D/u.m4a"))
        track.size, track.mtime = path.stat().st_size, path.stat().st_mtime
    [decision] = review.accept(sessions, config, [sid], who="t")
    writer = Writer(config, sessions)
    writer.run_once()
    assert read_tags(path).genres == ("Rock",)
    review.undo(sessions, config, decision.id, who="t")
    writer.run_once()
    assert read_tags(path).genres == ("Blues",)


def test_accept_write_then_reconcile_does_not_requeue(station, make_song):
    from daemon.library.reconcile import Library
    from daemon.tags.genres import load_genre_map

    config, sessions, library = station.config, station.sessions, station.library
    path, track_id, sid, _ = add_song(sessions, library, make_song, "E/r.opus")
    genre_map = load_genre_map()
    lib = Library(config, sessions, genre_map)
    lib.reconcile()
    with sessions() as session:
        assert session.get(Track, track_id).state == "suggested"
    review.accept(sessions, config, [sid], who="t")
    assert Writer(config, sessions).run_once().written == 1
    result = lib.reconcile()
    lib.settle_due(now=time.time() + 3600)
    with sessions() as session:
        track = session.get(Track, track_id)
        assert track.state == "reviewed", result
        assert track.confirmed_genre == "Rock"


def test_writer_never_writes_outside_the_library(station, make_song, tmp_path):
    config, sessions, library = station.config, station.sessions, station.library
    outside = make_song("outside.mp3", seconds=3, genre="Blues", folder=tmp_path / "private")
    library.mkdir(parents=True, exist_ok=True)
    (library / "link.mp3").symlink_to(outside)
    before = outside.read_bytes()
    sids = [add_suggested_track(sessions, rel)[1]
            for rel in ("link.mp3", "../private/outside.mp3", str(outside))]
    review.accept(sessions, config, sids, who="t")
    assert Writer(config, sessions).run_once().failed == 3
    assert outside.read_bytes() == before
    with sessions() as session:
        errors = sorted(d.write_error for d in session.scalars(select(Decision)))
    assert errors == ["leads outside the library", "not a path inside the library",
                      "not a path inside the library"]


def test_undo_that_lands_while_the_tag_is_being_written(station, make_song):
    config, sessions, library = station.config, station.sessions, station.library
    path, _, sid, _ = add_song(sessions, library, make_song, "F/late.flac", raw_genre="Folk")
    from daemon.tags.write import write_tags

    write_tags(path, genre="Folk")
    [decision] = review.accept(sessions, config, [sid], who="t")
    writer = Writer(config, sessions)
    # Writer.write's stages one at a time, the undo landing between copy and rename.
    [due] = writer.due()
    target = check_target(path)
    with new_version(target):
        copy = build_copy(target, due.change)
        st = verify(target, due.change, copy)
        review.undo(sessions, config, decision.id, who="t")  # the reviewer presses u
        writer.record_expected(due, st)
        st = put_in_place(target)
    writer.record_written(due, copy, st)
    assert read_tags(path).genres == ("Rock",)  # that write did land ...
    writer.run_once()
    assert read_tags(path).genres == ("Folk",)  # ... and the undo put the old genre back
    with sessions() as session:
        undo_row = session.scalar(select(Decision).where(Decision.undoes_id == decision.id))
        assert undo_row.write_status == "written"


def test_a_name_that_is_not_utf8_is_found_and_written(make_song, tmp_path):
    import os

    from daemon.core.paths import library_file, stored_path
    from daemon.tags.read import read_tags
    from daemon.tags.write import write_genre_atomically

    root = tmp_path / "library"
    root.mkdir()
    song = make_song("plain.mp3", seconds=3, genre_tag="Rock")
    odd = os.fsdecode(b"caf\xe9 song.mp3")
    os.rename(song, root / odd)
    stored = stored_path(odd)
    assert "\\xe9" in stored  # what the database holds
    path = library_file(root, stored)
    write_genre_atomically(path, "Jazz")
    assert read_tags(root / odd).genres == ("Jazz",)


def test_extended_attributes_survive_a_write(make_song):
    path = make_song("xattr.flac", seconds=2, title="X")
    os.setxattr(path, "user.station.note", b"played at 3am")
    os.setxattr(path, "user.xdg.comment", "k\u00e4se".encode())
    write_genre_atomically(path, "Jazz")
    assert read_tags(path).genres == ("Jazz",)
    assert os.getxattr(path, "user.station.note") == b"played at 3am"
    assert os.getxattr(path, "user.xdg.comment") == "k\u00e4se".encode()
    assert sorted(os.listxattr(path)) == ["user.station.note", "user.xdg.comment"]


def test_a_255_byte_name_is_written(make_song, tmp_path):
    name = "\u00e9" * 125 + "x.mp3"  # 255 bytes in UTF-8, the most a filesystem allows
    assert len(os.fsencode(name)) == 255
    path = make_song(name, seconds=2, title="Long")
    tmp = temp_path(path)
    assert len(os.fsencode(tmp.name)) <= 255 and tmp.name.startswith(".")
    assert WRITER_TEMP_MARK in tmp.name and tmp.suffix == ".mp3"
    write_genre_atomically(path, "Jazz")
    assert read_tags(path).genres == ("Jazz",) and read_tags(path).title == "Long"
    assert sorted(p.name for p in path.parent.iterdir()) == [name]


def test_hard_linked_song_is_refused_and_the_reason_is_shown(station, make_song):
    from daemon.cli.status_text import render_status
    from daemon.review.web.app import create_app
    from daemon.service.status import collect_status

    config, sessions, library = station.config, station.sessions, station.library
    path, _, sid, _ = add_song(sessions, library, make_song, "H/linked.mp3")
    (library / "H" / "other name.mp3").hardlink_to(path)
    original = path.read_bytes()
    with pytest.raises(WriteFailed, match="2 hard links"):
        write_genre_atomically(path, "Jazz")
    review.accept(sessions, config, [sid], who="t")
    assert Writer(config, sessions).run_once().failed == 1
    assert path.read_bytes() == original and os.stat(path).st_nlink == 2
    data = collect_status(config, sessions)
    assert data["write_failures_total"] == 1
    [failure] = data["write_failures"]
    assert failure["path"] == "H/linked.mp3" and "hard links" in failure["reason"]
    assert "H/linked.mp3: the file has 2 hard links" in render_status(data)
    client = create_app(config, sessions).test_client()
    page = client.get("/history?show=unwritten").get_data(as_text=True)
    assert "Not written yet: the file has 2 hard links" in page


def test_an_undo_committed_while_the_writer_records_its_write_is_not_lost(station, make_song):
    """PostgreSQL (READ COMMITTED) and SQLite alike: the reviewer undoes a decision while
    the writer is putting its genre into the file. The undo is waiting for the track (held
    here by another writer) when the writer comes to record its write; the undo goes
    first, so the writer must see it and queue the file's earlier genre fields back, not
    record "written" over it and leave the undone genre in the file."""
    import threading

    from daemon.core.db.engine import locked, transaction

    config, sessions, library = station.config, station.sessions, station.library
    path, track_id, sid, _ = add_song(sessions, library, make_song, "R/race.mp3",
                                           raw_genre="Blues")
    [decision] = review.accept(sessions, config, [sid], who="t")
    writer = Writer(config, sessions)
    [due] = writer.due()
    before = genre_fields(path)
    st = write_genre_atomically(path, "Rock", "replace")  # the writer's file write
    postgres = sessions.kw["bind"].dialect.name == "postgresql"

    done = []
    with transaction(sessions) as holder:
        locked(holder, Track, track_id)  # someone else's write unit holds the track
        undo = threading.Thread(target=lambda: done.append(
            review.undo(sessions, config, decision.id, who="t")))
        undo.start()
        if postgres:  # the undo queues for the track first, then the writer
            wait_for(lambda: locks_waiting(sessions) == 1, 10, "the undo waiting")
        else:
            time.sleep(0.3)
        record = threading.Thread(target=lambda: done.append(writer.record_written(
            due, Copy(("Rock",), before=before), st)))
        record.start()
        if postgres:
            wait_for(lambda: locks_waiting(sessions) >= 2, 10, "the writer waiting")
        else:
            time.sleep(0.3)
    undo.join(30)
    record.join(30)
    assert len(done) == 2
    with sessions() as db:
        undo_row = db.scalar(select(Decision).where(Decision.undoes_id == decision.id))
        assert db.get(Decision, decision.id).undone is True
        assert (undo_row.file_fields_before, undo_row.write_status) == (before, "pending")
    assert writer.run_once().written == 1
    # The song had no genre tag (the row's "Blues" is only the database's): none again.
    assert read_tags(path).genres == ()
    assert genre_fields(path) == before
