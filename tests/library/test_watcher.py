"""The watcher with real watchdog observers (inotify and polling) on temp folders: slow
copies settle before they are read, temp files are ignored, moves keep the track, a root
that goes away (unmounted share) marks nothing missing and is watched again when back.

settle_seconds is 1 s and the polling observer polls every 0.2 s, so each test takes a
few seconds of real time.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import wait_for
from sqlalchemy import select

from daemon.audio.fingerprint import fingerprint
from daemon.cli.demo import encode, synthesize
from daemon.core.config import parse_config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Suggestion, Track
from daemon.core.states import TrackState as S
from daemon.library.reconcile import Library
from daemon.library.watcher import Watcher, observer_kind
from daemon.tags.genres import load_genre_map

SETTLE = 1.0
KINDS = ["native", "polling"]


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("masters")
    songs = {}
    # ~700 KB: eleven 64 KiB chunks, so a slow copy takes longer than settle_seconds.
    for i, genre in enumerate(["Rock", "Jazz"]):
        songs[f"big{i}.wav"] = encode(folder / f"big{i}.wav",
                                      synthesize(genre, 4.0, 44_100, i, 2), 44_100)
    for i in range(10):
        songs[f"w{i}.wav"] = encode(folder / f"w{i}.wav",
                                    synthesize("Pop", 1.5, 22_050, 100 + i, 1), 22_050)
    return songs


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "library"
    folder.mkdir()
    return folder


@pytest.fixture
def watched(root, tmp_path, database):
    """watched(kind) -> (library, watcher), started; closed after the test."""
    started = []

    def make(kind: str) -> tuple[Library, Watcher]:
        config = parse_config({
            "library": {"root": str(root), "settle_seconds": SETTLE, "watch": kind,
                        "poll_seconds": 0.2},
            "state_dir": str(tmp_path / "state")})
        library = Library(config, database[1], load_genre_map())
        watcher = Watcher(config.library, library, settle_interval=0.2)
        watcher.start()
        started.append(watcher)
        wait_for(lambda: watcher.watching)
        return library, watcher

    yield make
    for watcher in started:
        watcher.close()


def copy_slowly(src: Path, dst: Path, pause: float = 0.15, stop_after: int | None = None):
    """Copy in 64 KiB chunks with pauses, like a song arriving over SMB."""
    data = src.read_bytes()
    with open(dst, "wb") as out:
        for n, start in enumerate(range(0, len(data), 64 * 1024)):
            if stop_after is not None and n == stop_after:
                return
            out.write(data[start:start + 64 * 1024])
            out.flush()
            time.sleep(pause)


def tracks(sessions) -> dict[str, Track]:
    with sessions() as session:
        return {t.path: t for t in session.scalars(select(Track))}


def test_observer_kind_follows_the_filesystem_unless_configured():
    assert observer_kind("auto", network=False) == "native"
    assert observer_kind("auto", network=True) == "polling"  # inotify misses SMB/NFS peers
    assert observer_kind("native", network=True) == "native"
    assert observer_kind("polling", network=False) == "polling"


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_copy_is_read_once_after_it_settles(kind, masters, root, watched, database):
    library, watcher = watched(kind)
    assert watcher.kind == kind
    (root / "Incoming").mkdir()
    target = root / "Incoming/song.wav"
    started = time.monotonic()
    copy_slowly(masters["big0.wav"], target)
    copy_slowly(masters["big1.wav"], root / "Incoming/other.wav.part", pause=0.01)
    assert time.monotonic() - started > SETTLE  # the copy outlasted settle_seconds ...
    assert library.files_read == 0  # ... and nothing was read while it ran

    track = wait_for(lambda: tracks(database[1]).get("Incoming/song.wav"))
    assert track.size == target.stat().st_size
    assert track.fingerprint == fingerprint(target)
    assert track.duration == pytest.approx(4.0, abs=0.05) and track.state == S.QUEUED
    time.sleep(SETTLE + 0.5)
    assert library.files_read == 1
    assert list(tracks(database[1])) == ["Incoming/song.wav"]  # the .part file is ignored


def test_a_file_replaced_while_copying_is_read_once_as_the_new_file(masters, root, watched,
                                                                    database):
    library, _ = watched("native")
    target = root / "song.wav"
    copy_slowly(masters["big0.wav"], target, stop_after=5)  # the copy is abandoned ...
    target.unlink()
    copy_slowly(masters["big1.wav"], target)  # ... and another song copied in its place
    track = wait_for(lambda: tracks(database[1]).get("song.wav"))
    assert track.fingerprint == fingerprint(masters["big1.wav"])
    time.sleep(SETTLE + 0.5)
    assert library.files_read == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_renamed_folder_keeps_its_tracks_and_history(kind, masters, root, watched,
                                                       database):
    for i in range(3):
        (root / "Album").mkdir(exist_ok=True)
        shutil.copyfile(masters[f"w{i}.wav"], root / f"Album/{i}.wav")
    library, _ = watched(kind)
    library.reconcile()
    wait_for(lambda: len(tracks(database[1])) == 3)
    with transaction(database[1]) as session:
        track = session.scalars(select(Track).where(Track.path == "Album/0.wav")).one()
        track.state = S.SUGGESTED
        session.add(Suggestion(track=track, genre="Pop", confidence=0.8,
                               top=[["Pop", 0.8], ["Rock", 0.1], ["Jazz", 0.1]]))
    ids = {p: t.id for p, t in tracks(database[1]).items()}

    os.rename(root / "Album", root / "Album (2019)")
    wait_for(lambda: set(tracks(database[1])) == {f"Album (2019)/{i}.wav" for i in range(3)})
    after = tracks(database[1])
    assert {p.replace(" (2019)", ""): t.id for p, t in after.items()} == ids
    assert after["Album (2019)/0.wav"].state == S.SUGGESTED
    assert library.files_read == 6  # 3 on arrival, each moved file once more (fingerprint)
    with database[1]() as session:
        assert session.scalars(select(Suggestion.track_id)).all() == [ids["Album/0.wav"]]


@pytest.mark.parametrize("kind", KINDS)
def test_root_unmounted_while_running_marks_nothing_missing(kind, masters, root, watched,
                                                            database, caplog):
    for i in range(5):
        shutil.copyfile(masters[f"w{i}.wav"], root / f"{i}.wav")
    library, watcher = watched(kind)
    library.reconcile()
    wait_for(lambda: len(tracks(database[1])) == 5)

    away = root.with_name("unmounted")
    root.rename(away)
    wait_for(lambda: not watcher.watching)
    assert library.reconcile().guarded
    time.sleep(SETTLE + 0.5)
    assert {t.state for t in tracks(database[1]).values()} == {S.QUEUED}
    assert any("is gone" in r.getMessage() for r in caplog.records)

    away.rename(root)  # mounted again
    wait_for(lambda: watcher.watching and watcher.rearmed >= 1)
    shutil.copyfile(masters["w5.wav"], root / "5.wav")  # and watched again
    wait_for(lambda: "5.wav" in tracks(database[1]))
    assert {t.state for t in tracks(database[1]).values()} == {S.QUEUED}


def test_polling_an_emptied_mount_point_marks_nothing_missing(masters, root, watched,
                                                             database, caplog):
    for i in range(10):
        (root / f"Artist {i}").mkdir()
        shutil.copyfile(masters[f"w{i}.wav"], root / f"Artist {i}/{i}.wav")
    library, _ = watched("polling")
    library.reconcile()
    wait_for(lambda: len(tracks(database[1])) == 10)

    (root / "Artist 0/0.wav").unlink()  # one song deleted: really missing
    wait_for(lambda: tracks(database[1])["Artist 0/0.wav"].state == S.MISSING)

    # The share drops and leaves its empty mount point: the poller sees every file vanish.
    away = root.with_name("share")
    away.mkdir()
    for child in root.iterdir():
        child.rename(away / child.name)
    wait_for(lambda: any("MOUNT-LOSS GUARD" in r.getMessage() for r in caplog.records))
    states = {p: t.state for p, t in tracks(database[1]).items()}
    assert sum(s == S.MISSING for s in states.values()) == 1
    assert library.settling == 0


def test_close_stops_the_observer_and_the_settle_thread(root, watched):
    _, watcher = watched("native")
    thread, observer = watcher._thread, watcher._observer
    started = time.monotonic()
    watcher.close()
    assert time.monotonic() - started < 3
    assert not thread.is_alive() and not observer.is_alive()
