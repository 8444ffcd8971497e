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
from helpers import EXE, PostgresDaemonStation

from daemon.cli.demo import encode, synthesize
from daemon.tags.read import read_tags

pytestmark = pytest.mark.slow

SR = 22_050


@pytest.fixture
def postgres_daemon_station(tmp_path, trained_bundle, postgres):
    url = postgres.new_database()
    s = PostgresDaemonStation(tmp_path, trained_bundle, url)
    yield s
    s.kill()
    postgres.drop_database(url)


def song(path: Path, genre: str, seconds: float = 8.0, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return encode(path, synthesize(genre, seconds, SR, seed), SR)


def cli(station: PostgresDaemonStation, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(EXE + ["--config", str(station.config_path), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_daemon_runs_on_postgresql(postgres_daemon_station):
    postgres_daemon_station.start()
    song(postgres_daemon_station.library / "Incoming" / "metal one.mp3", "Metal", seed=1)
    song(postgres_daemon_station.library / "Incoming" / "classical one.flac", "Classical", seed=2)
    song(postgres_daemon_station.library / "Incoming" / "hiphop one.wav", "Hip-Hop", seed=3)
    (postgres_daemon_station.library / "Broken").mkdir()
    (postgres_daemon_station.library / "Broken" / "text.flac").write_text("not audio at all\n" * 40)
    good = ["Incoming/metal one.mp3", "Incoming/classical one.flac",
            "Incoming/hiphop one.wav"]
    postgres_daemon_station.wait(
        "three suggestions", lambda: len(postgres_daemon_station.suggestions()) == 3, timeout=90)
    postgres_daemon_station.wait("bad input quarantined",
                 lambda: postgres_daemon_station.states().get("Broken/text.flac") == "quarantined")
    assert postgres_daemon_station.suggestions() == {p: 1 for p in good}
    for genre, confidence, top in postgres_daemon_station.query(
            "SELECT genre, confidence, top FROM suggestions"):
        top = json.loads(top) if isinstance(top, str) else top
        assert len(top) == 3 and top[0] == [genre, pytest.approx(confidence)]

    status = cli(postgres_daemon_station, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["daemon"]["running"] is True
    assert data["daemon"]["pid"] == postgres_daemon_station.proc.pid
    assert data["tracks"]["by_state"]["suggested"] == 3 and data["quarantined_total"] == 1
    assert data["database"].startswith("postgresql+psycopg://")
    assert data["model"]["version"] == 1

    # A decision from the shell: the running daemon's writer puts it into the file.
    [(sid, genre)] = postgres_daemon_station.query(
        "SELECT s.id, s.genre FROM suggestions s JOIN tracks t ON t.id = s.track_id "
        "WHERE t.path = ?", good[1])
    accepted = cli(postgres_daemon_station, "review", "accept", str(sid))
    assert accepted.returncode == 0, accepted.stderr
    postgres_daemon_station.wait("the genre written", lambda: postgres_daemon_station.query(
        "SELECT write_status FROM decisions WHERE suggestion_id = ?", sid) == [("written",)])
    assert read_tags(postgres_daemon_station.library / good[1]).genres == (genre,)

    code, seconds = postgres_daemon_station.stop()
    assert code == 0 and seconds < 20, postgres_daemon_station.log_text()[-3000:]
    after = json.loads(cli(postgres_daemon_station, "status", "--json").stdout)
    assert after["daemon"]["running"] is False
    assert "Traceback" not in postgres_daemon_station.log_text()
