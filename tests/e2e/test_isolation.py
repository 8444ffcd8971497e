"""Nothing parses a library file inside the service process: tag reading, probing and the
review page's media run in child processes with a timeout and a memory cap, and a file that
crashes, hangs or floods its reader costs that file only. And a song one decoder refuses
gets the other decoder.

Real things throughout: an MP3 with a real 150 MB picture frame, the daemon as a real
subprocess (its own memory read from /proc), real child processes stopped and killed with
real signals, the real web app, the real worker with a trained model.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    EXE,
    DaemonStation,
    add_suggested_track,
    negative_granule_ogg,
    ogg_nobody_decodes,
    wait_for,
)
from sqlalchemy import select

from daemon.core.config import parse_config
from daemon.core.db.models import Suggestion, Track
from daemon.core.states import TrackState
from daemon.library.reconcile import Library
from daemon.tags.genres import load_genre_map
from daemon.tags.write import write_tags

# The service's child processes on 150 MB files.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SR = 22_050
# A JPEG's first bytes, then noise: mutagen and FFmpeg read the whole frame either way.
JPEG_HEAD = bytes.fromhex("ffd8ffe000104a46494600010100000100010000")


def with_big_picture(path: Path, megabytes: int, title: str, genre: str) -> Path:
    """Tag the MP3 at `path` with a title, a genre and a cover picture of `megabytes` MB."""
    from mutagen.id3 import APIC, ID3

    write_tags(path, title=title, genre=genre)
    tags = ID3(path)
    picture = JPEG_HEAD + os.urandom((megabytes << 20) - len(JPEG_HEAD))
    tags.add(APIC(encoding=3, mime="image/jpeg", type=3, desc="cover", data=picture))
    tags.save(path)
    return path


@pytest.fixture(scope="module")
def big_cover(tmp_path_factory) -> Path:
    """A real 12-s MP3 (LAME, via daemon.cli.demo) carrying a real 150 MB cover picture."""
    from daemon.cli.demo import encode, synthesize

    folder = tmp_path_factory.mktemp("big-cover")
    path = encode(folder / "big cover.mp3", synthesize("Rock", 12.0, SR, 7, 2), SR)
    return with_big_picture(path, 150, "Big Cover", "Rock")


def assert_peak_unmoved(before: float, after: float, doing: str) -> None:
    """The service's peak memory (VmHWM, MB) grew by less than 50 MB while `doing`."""
    assert after - before < 50, f"the service's peak memory went {before:.0f} -> " \
                                f"{after:.0f} MB {doing}"


def vm_hwm_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


# ---- the service's own memory --------------------------------------------------------------

class ModelessDaemonStation(DaemonStation):
    """The daemon harness (helpers.DaemonStation), without a model: files are tracked, and
    nothing is classified. The backbone is off, so no cold-start model is built and
    loaded while the test measures the service's peak memory."""

    def _register(self, bundle) -> None:
        from daemon.core.config import load_config
        from daemon.core.db.engine import open_database

        text = self.config_path.read_text()
        self.config_path.write_text(
            text.replace("[classifier]\n", "[classifier]\nbackbone = false\n"))

        engine, _ = open_database(load_config(self.config_path).db_url)  # migrated, no model
        engine.dispose()


def test_a_150_mb_cover_picture_never_enters_the_service_process(tmp_path, big_cover,
                                                                 make_song):
    """The daemon settles a song with a 150 MB picture: it is tracked with its tags, and
    the main process's peak memory does not move (reading it in-process added ~400 MB)."""
    station = ModelessDaemonStation(tmp_path, None)
    make_song("small.mp3", seconds=4, folder=station.library, title="Small", genre_tag="Jazz")
    try:
        proc = station.start()
        station.wait("the small song tracked", lambda: station.query(
            "SELECT title FROM tracks WHERE path = 'small.mp3'") == [("Small",)])
        time.sleep(2)  # start-up done (the retrainer thread starts after the first settle)
        before = vm_hwm_mb(proc.pid)

        outside = tmp_path / "incoming"
        outside.mkdir()
        shutil.copyfile(big_cover, outside / "big cover.mp3")
        os.rename(outside / "big cover.mp3", station.library / "big cover.mp3")
        row = station.wait("the big song tracked with its tags", lambda: station.query(
            "SELECT title, raw_genre, state, last_error FROM tracks "
            "WHERE path = 'big cover.mp3'"), timeout=90)
        after = vm_hwm_mb(proc.pid)
        assert row == [("Big Cover", "Rock", TrackState.TAGGED, None)]
        assert_peak_unmoved(before, after, "reading a 150 MB picture")
        code, _ = station.stop()
        assert code == 0
    finally:
        station.kill()


def test_writing_a_genre_into_a_150_mb_tag_never_enters_the_service_process(
        tmp_path, trained_bundle):
    """An untagged song with a 150 MB picture is suggested, accepted (the real CLI) and
    written by the running service: the genre is in the file, the picture is intact, and
    the main process's peak memory does not move (the write is built in a child)."""
    from mutagen.id3 import ID3

    from daemon.cli.demo import encode, synthesize
    from daemon.tags.read import read_tags

    station = DaemonStation(tmp_path, trained_bundle)
    song = encode(tmp_path / "big.mp3", synthesize("Metal", 12.0, SR, 3, 2), SR)
    with_big_picture(song, 150, "Big Untagged", "Rock")
    tags = ID3(song)
    tags.delall("TCON")  # untagged, so the model suggests it
    tags.save(song)
    picture = ID3(song).getall("APIC")[0].data
    try:
        proc = station.start()
        station.wait("start-up", lambda: "genretagger running" in station.log_text())
        time.sleep(2)  # start-up done (the retrainer thread starts after the first settle)
        before = vm_hwm_mb(proc.pid)
        shutil.copyfile(song, tmp_path / "incoming.mp3")
        os.rename(tmp_path / "incoming.mp3", station.library / "big.mp3")
        [(suggestion_id,)] = station.wait("a suggestion", lambda: station.query(
            "SELECT s.id FROM suggestions s JOIN tracks t ON t.id = s.track_id "
            "WHERE t.path = 'big.mp3' AND s.status = 'pending'"), timeout=120)
        accepted = subprocess.run(
            [*EXE, "--config", str(station.config_path), "review", "accept", str(suggestion_id)],
            capture_output=True, text=True, timeout=60)
        assert accepted.returncode == 0, accepted.stderr
        [(genre, status)] = station.wait("the genre written", lambda: station.query(
            "SELECT genre, write_status FROM decisions WHERE write_status = 'written'"),
            timeout=120)
        after = vm_hwm_mb(proc.pid)
        assert read_tags(station.library / "big.mp3").genres == (genre,)
        assert ID3(station.library / "big.mp3").getall("APIC")[0].data == picture
        assert_peak_unmoved(before, after, "writing into a 150 MB tag")
        code, _ = station.stop()
        assert code == 0
    finally:
        station.kill()


# ---- one pathological file costs that file -------------------------------------------------

class Settler:
    """A Library on a real database with a tag-reader pool, settled with fixed clock times."""

    def __init__(self, root: Path, state: Path, **workers):
        config = parse_config({"library": {"root": str(root), "settle_seconds": 1.0},
                               "state_dir": str(state), "workers": workers})
        from daemon.core.db.engine import open_database

        self.engine, self.sessions = open_database(config.db_url)
        self.library = Library(config, self.sessions, load_genre_map())
        self.now = 1000.0

    def settle(self) -> None:
        self.library.reconcile(now=self.now)
        self.now += 1.5
        self.library.settle_due(now=self.now)
        self.now += 1

    def track(self, rel: str) -> Track:
        with self.sessions() as session:
            return session.scalars(select(Track).where(Track.path == rel)).one()

    def reader_pid(self) -> int:
        """The tag-reader child's pid, started with a read of a good file if need be."""
        if not self.library.readers.child_pids():
            self.library.readers.call("probe", str(self.library.root) + "/good.mp3")
        (pid,) = self.library.readers.child_pids()
        return pid

    def close(self) -> None:
        self.library.close()
        self.engine.dispose()


def test_reading_that_floods_hangs_or_crashes_quarantines_that_file_only(tmp_path, big_cover,
                                                                        make_song):
    root = tmp_path / "library"
    make_song("good.mp3", seconds=4, folder=root, title="Good", genre_tag="Jazz")
    shutil.copyfile(big_cover, root / "flood.mp3")
    settler = Settler(root, tmp_path / "state", read_timeout=2.0, memory_max_mb=640)
    try:
        # A reader that needs more memory than its cap: that file is quarantined, saying so.
        settler.settle()
        flood = settler.track("flood.mp3")
        assert flood.state == TrackState.QUARANTINED
        assert flood.last_error == ("reading its tags and audio header needed more than "
                                    "640 MB")
        good = settler.track("good.mp3")
        assert (good.title, good.raw_genre, good.state) == ("Good", "Jazz", TrackState.TAGGED)

        # A reader that hangs (stopped: it cannot run at all) is killed after the timeout.
        child = settler.reader_pid()
        os.kill(child, signal.SIGSTOP)
        make_song("hangs.mp3", seconds=4, folder=root, seed=1, title="Hangs")
        started = time.monotonic()
        settler.settle()
        assert time.monotonic() - started < 6
        hangs = settler.track("hangs.mp3")
        assert hangs.state == TrackState.QUARANTINED
        assert hangs.last_error == "reading its tags and audio header took longer than 2 s"
        wait_for(lambda: not os.path.exists(f"/proc/{child}"), what="the hung reader gone")

        # A reader that crashes mid-file (SIGKILL while it works on it).
        child = settler.reader_pid()
        os.kill(child, signal.SIGSTOP)
        make_song("crashes.flac", seconds=4, folder=root, seed=2, title="Crashes")
        settling = threading.Thread(target=settler.settle)
        settling.start()
        wait_for(lambda: settler.library.readers.busy_pids() == [child],
                 what="the reader busy with crashes.flac")
        os.kill(child, signal.SIGKILL)
        settling.join(10)
        crashes = settler.track("crashes.flac")
        assert crashes.state == TrackState.QUARANTINED
        assert crashes.last_error == "the tag reader crashed (signal 9)"

        # The next file is read as usual by a fresh reader; the quarantined ones stay so.
        make_song("next.ogg", seconds=4, folder=root, seed=3, title="Next", genre_tag="Blues")
        settler.settle()
        after = settler.track("next.ogg")
        assert (after.title, after.raw_genre, after.state) == ("Next", "Blues",
                                                               TrackState.TAGGED)
        assert settler.library.readers.child_pids() not in ([], [child])
        assert settler.track("hangs.mp3").state == TrackState.QUARANTINED
    finally:
        settler.close()


# ---- the review page -----------------------------------------------------------------------

def test_review_page_media_are_decoded_in_children_with_a_timeout(tmp_path, make_config,
                                                                  database, make_song):
    from daemon.review.web import create_app

    library = tmp_path / "library"
    config = make_config(library, workers={"decode_timeout": 2.0})
    _, sessions = database
    ids = {}
    for i, name in enumerate(("one.ogg", "two.mp3", "three.flac")):
        path = make_song(name, genre="Jazz", seconds=12, seed=i, folder=library)
        st = path.stat()
        ids[name], _ = add_suggested_track(sessions, name, size=st.st_size, mtime=st.st_mtime,
                                           duration=12.0)
    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    children = app.extensions["children"]
    try:
        r = client.get(f"/tracks/{ids['one.ogg']}/preview.wav")
        assert r.status_code == 200 and r.mimetype == "audio/wav" and len(r.data) > 100_000
        (child,) = children.child_pids()  # decoded there, not in the web server

        os.kill(child, signal.SIGSTOP)  # a decoder that hangs
        started = time.monotonic()
        r = client.get(f"/tracks/{ids['two.mp3']}/spectrogram.png")
        assert time.monotonic() - started < 5
        assert r.status_code == 422
        assert "This song cannot be read: decoding took longer than 2 s" in r.get_data(
            as_text=True)

        r = client.get(f"/tracks/{ids['two.mp3']}/spectrogram.png")  # a fresh child
        assert r.status_code == 200 and r.mimetype == "image/png"
        (child,) = children.child_pids()
        os.kill(child, signal.SIGSTOP)
        answers = []
        asking = threading.Thread(target=lambda: answers.append(
            client.get(f"/tracks/{ids['three.flac']}/preview.wav")))
        asking.start()
        wait_for(lambda: children.busy_pids() == [child], what="the preview being decoded")
        os.kill(child, signal.SIGKILL)  # a decoder that crashes
        asking.join(10)
        assert answers[0].status_code == 422
        assert "This song cannot be played: decoder crashed (signal 9)" in \
            answers[0].get_data(as_text=True)
        r = client.get(f"/tracks/{ids['three.flac']}/preview.wav")
        assert r.status_code == 200 and r.mimetype == "audio/wav"
    finally:
        children.close()


# ---- decoder fallback through the service's path -------------------------------------------

@pytest.mark.slow
def test_a_song_ffmpeg_refuses_gets_a_suggestion_one_neither_reads_is_quarantined(
        tmp_path, trained_bundle):
    """Settled by the library, decoded by the worker's pool, classified: the negative
    granule Ogg (FFmpeg refuses it, libsndfile plays it) is suggested, not quarantined;
    a file neither decoder reads is quarantined with both decoders' reasons."""
    from daemon.learn.registry import activate, register_bundle
    from daemon.suggest.worker import Worker

    root = tmp_path / "library"
    negative_granule_ogg(root, name="buggy encoder.ogg")
    ogg_nobody_decodes(root, name="nobody.ogg")
    settler = Settler(root, tmp_path / "state", max_attempts=2, backoff_seconds=0.2,
                      processes=1, decode_timeout=20)
    worker = None
    try:
        settler.settle()
        for rel in ("buggy encoder.ogg", "nobody.ogg"):
            assert settler.track(rel).state == TrackState.QUEUED
        config = settler.library.config
        model = register_bundle(settler.sessions, config, trained_bundle)
        activate(settler.sessions, model.version)
        worker = Worker(config, settler.sessions)
        worker.start()
        wait_for(lambda: settler.track("buggy encoder.ogg").state == TrackState.SUGGESTED
                 and settler.track("nobody.ogg").state == TrackState.QUARANTINED,
                 timeout=120, what="one suggested, one quarantined")
        buggy = settler.track("buggy encoder.ogg")
        assert buggy.duration == pytest.approx(10.0, abs=0.05) and buggy.last_error is None
        with settler.sessions() as session:
            assert session.scalars(select(Suggestion).where(
                Suggestion.track_id == buggy.id)).all()
        reason = settler.track("nobody.ogg").last_error
        assert reason.startswith("FFmpeg: corrupt or truncated Ogg file; libsndfile: "), reason
    finally:
        if worker is not None:
            worker.close()
        settler.close()

