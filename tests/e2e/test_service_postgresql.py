"""The daemon as a real subprocess on a PostgreSQL database (tests/pgcluster.py's server):
`genretagger run` with database_url set. Files dropped into the library get one
suggestion each, bad input is quarantined, `status` reads the server, a review decision
made from the shell is written into the file by the daemon's writer, SIGTERM stops it.
The SQLite twin of this is tests/e2e/test_service.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import EXE, PostgresStation

from daemon.cli.demo import encode, synthesize
from daemon.tags.read import read_tags

pytestmark = pytest.mark.slow

SR = 22_050


@pytest.fixture
def station(tmp_path, trained_bundle, postgres):
    url = postgres.new_database()
    s = PostgresStation(tmp_path, trained_bundle, url)
    yield s
    s.kill()
    postgres.drop_database(url)


def song(path: Path, genre: str, seconds: float = 8.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode(path, synthesize(genre, seconds, SR, seed), SR)


def cli(station: PostgresStation, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(EXE + ["--config", str(station.config), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_daemon_runs_on_postgresql(station):
    station.start()
    song(station.library / "Incoming" / "metal one.mp3", "Metal", seed=1)
    song(station.library / "Incoming" / "classical one.flac", "Classical", seed=2)
    song(station.library / "Incoming" / "hiphop one.wav", "Hip-Hop", seed=3)
    (station.library / "Broken").mkdir()
    (station.library / "Broken" / "text.flac").write_text("not audio at all\n" * 40)
    good = ["Incoming/metal one.mp3", "Incoming/classical one.flac",
            "Incoming/hiphop one.wav"]
    station.wait("three suggestions", lambda: len(station.suggestions()) == 3, timeout=90)
    station.wait("bad input quarantined",
                 lambda: station.states().get("Broken/text.flac") == "quarantined")
    assert station.suggestions() == {p: 1 for p in good}
    for genre, confidence, top in station.query(
            "SELECT genre, confidence, top FROM suggestions"):
        top = json.loads(top) if isinstance(top, str) else top
        assert len(top) == 3 and top[0] == [genre, pytest.approx(confidence)]

    status = cli(station, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["daemon"]["running"] is True and data["daemon"]["pid"] == station.proc.pid
    assert data["tracks"]["by_state"]["suggested"] == 3 and data["quarantined_total"] == 1
    assert data["database"].startswith("postgresql+psycopg://")
    assert data["model"]["version"] == 1

    # A decision from the shell: the running daemon's writer puts it into the file.
    [(sid, genre)] = station.query(
        "SELECT s.id, s.genre FROM suggestions s JOIN tracks t ON t.id = s.track_id "
        "WHERE t.path = ?", good[1])
    accepted = cli(station, "review", "accept", str(sid))
    assert accepted.returncode == 0, accepted.stderr
    station.wait("the genre written", lambda: station.query(
        "SELECT write_status FROM decisions WHERE suggestion_id = ?", sid) == [("written",)])
    assert read_tags(station.library / good[1]).genres == (genre,)

    code, seconds = station.stop()
    assert code == 0 and seconds < 20, station.log_text()[-3000:]
    assert json.loads(cli(station, "status", "--json").stdout)["daemon"]["running"] is False
    assert "Traceback" not in station.log_text()
