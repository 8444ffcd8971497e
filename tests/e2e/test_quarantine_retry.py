"""Quarantine is not forever: a quarantined file whose ctime moved (chmod, chown: size and
mtime stay) goes back to the queue on the next walk; `genretagger review retry` and the
history page's "Try again" send songs back by hand.

The tests run as root, and root reads a chmod 000 file anyway: the daemon runs here
without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv drops them from its bounding
set), so the permission bits bind it as they bind the service's own user."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from helpers import EXE, DaemonStation, genre_bundle, write_config
from sqlalchemy import select

from daemon.core.config import load_config
from daemon.core.db.engine import open_database, transaction
from daemon.core.db.models import Track, utcnow
from daemon.core.states import TrackState
from daemon.library.reconcile import Library
from daemon.review.web import create_app
from daemon.tags.genres import load_genre_map

NO_ROOT_READS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _quarantine(sessions, path: str, ctime: float | None) -> None:
    with transaction(sessions) as session:
        track = session.scalars(select(Track).where(Track.path == path)).one()
        track.state, track.last_error = TrackState.QUARANTINED, "permission denied"
        track.attempts, track.quarantined_ctime = 3, ctime


def _states(sessions) -> dict[str, str]:
    with sessions() as session:
        return {t.path: t.state for t in session.scalars(select(Track))}


def test_the_walk_requeues_a_quarantined_file_whose_ctime_moved(tmp_path, make_song,
                                                                make_config, database):
    _, sessions = database
    root = tmp_path / "library"
    song = make_song("a.flac", folder=root)
    make_song("b.mp3", "Jazz", seed=1, folder=root)
    library = Library(make_config(root, library={"settle_seconds": 1}), sessions,
                      load_genre_map())
    try:
        library.reconcile(now=0)
        assert library.settle_due(now=2) == 2
        _quarantine(sessions, "a.flac", os.stat(song).st_ctime)
        _quarantine(sessions, "b.mp3", os.stat(root / "b.mp3").st_ctime)
        assert library.reconcile(now=10).unchanged == 2  # nothing changed: stays put

        before = os.stat(song)
        os.chmod(song, 0o600)  # permissions only: size and mtime as they were
        after = os.stat(song)
        assert (after.st_size, after.st_mtime) == (before.st_size, before.st_mtime)
        result = library.reconcile(now=20)
        assert (result.changed, result.unchanged) == (1, 1)
        assert library.settle_due(now=22) == 1
        assert _states(sessions) == {"a.flac": "queued", "b.mp3": "quarantined"}
        with sessions() as session:
            track = session.scalars(select(Track).where(Track.path == "a.flac")).one()
            assert track.attempts == 0 and track.quarantined_ctime is None
    finally:
        library.close()


def test_review_retry_and_the_history_page_send_songs_back(tmp_path):
    library, state = tmp_path / "library", tmp_path / "state"
    library.mkdir()
    config_path = write_config(tmp_path / "config.toml", library, state)
    config = load_config(config_path)
    engine, sessions = open_database(config.db_url)
    with transaction(sessions) as session:
        for name in ("a.mp3", "b.mp3", "c.mp3", "d.mp3", "ok.mp3"):
            now = utcnow()
            session.add(Track(path=name, size=1, mtime=1.0, state=TrackState.QUARANTINED,
                              attempts=3, last_error="permission denied", first_seen=now,
                              last_seen=now, state_changed_at=now))
    with transaction(sessions) as session:
        session.scalars(select(Track).where(Track.path == "ok.mp3")).one().state = "tagged"
    exe = EXE + ["--config", str(config_path)]

    done = subprocess.run(exe + ["review", "retry", str(library / "a.mp3"), "ok.mp3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1  # one of the two was not quarantined: said so
    assert done.stdout.strip() == "queued again: a.mp3"
    assert done.stderr.strip() == "not quarantined: ok.mp3"
    outside = subprocess.run(exe + ["review", "retry", str(tmp_path / "elsewhere.mp3")],
                             capture_output=True, text=True, timeout=120)
    assert outside.returncode == 2 and "not inside the library" in outside.stderr

    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    page = client.get("/history").get_data(as_text=True)
    assert "Songs that could not be read" in page and page.count(">Try again<") == 3
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    r = client.post("/quarantined/retry", data={"csrf_token": token, "path": "b.mp3",
                                                "next": "/history"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/history")
    assert "The song will be tried again." in client.get("/history").get_data(as_text=True)
    r = client.post("/quarantined/retry", data={"path": "b.mp3"},
                    headers={"X-CSRFToken": token, "Accept": "application/json"})
    assert r.status_code == 409 and r.get_json()["ok"] is False
    assert _states(sessions)["b.mp3"] == "queued"

    done = subprocess.run(exe + ["review", "retry", "--all-quarantined"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["queued again: c.mp3", "queued again: d.mp3"]
    assert _states(sessions) == {"a.mp3": "queued", "b.mp3": "queued", "c.mp3": "queued",
                                 "d.mp3": "queued", "ok.mp3": "tagged"}
    with sessions() as session:
        assert {t.attempts for t in session.scalars(select(Track))
                if t.state == "queued"} == {0}
    engine.dispose()


@pytest.mark.slow
def test_chmod_000_quarantines_and_chmod_644_brings_it_back_on_the_next_walk(
        tmp_path, make_song):
    station = DaemonStation(tmp_path, genre_bundle(tmp_path / "bundle", ("Jazz", "Rock"), "Rock"))
    # Walks every 3 s; the watcher polls once an hour, so only a walk can see the fix.
    write_config(station.config_path, station.library, station.state, reconcile_minutes="0.05",
                 max_attempts="2")
    station.config_path.write_text(station.config_path.read_text().replace(
        'watch = "native"', 'watch = "polling"\npoll_seconds = 3600'))
    make_song("ok.flac", folder=station.library)
    locked = make_song("locked.mp3", "Jazz", seed=1, folder=station.library)
    locked.chmod(0o000)
    make_song("in a locked folder.flac", folder=station.library / "Locked")
    (station.library / "Locked").chmod(0o000)
    with open(station.log, "a") as log:
        station.proc = subprocess.Popen(
            NO_ROOT_READS + EXE + ["--config", str(station.config_path), "run"],
            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        station.wait("locked.mp3 quarantined", lambda: station.states().get("locked.mp3")
                     == "quarantined")
        assert station.states()["ok.flac"] == "suggested"
        (reason,) = station.query("SELECT last_error FROM tracks WHERE path = 'locked.mp3'")
        assert "Permission denied" in reason[0]
        status = subprocess.run(EXE + ["--config", str(station.config_path), "status"],
                                capture_output=True, text=True, timeout=60).stdout
        assert "locked.mp3: cannot read the file: Permission denied" in status
        assert f"CANNOT READ 1 folder(s) in {station.library}" in status
        assert "\n  Locked/\n" in status

        locked.chmod(0o644)
        station.wait("locked.mp3 suggested after the fix", lambda: station.states().get(
            "locked.mp3") == "suggested", timeout=60)
        assert station.suggestions() == {"ok.flac": 1, "locked.mp3": 1}
        (station.library / "Locked").chmod(0o755)
        assert station.stop()[0] == 0
    finally:
        station.kill()
