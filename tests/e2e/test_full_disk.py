"""A full state disk while the service runs: `status` names the full disk (never "did it
crash?"), /metrics says the database component is unhealthy and how little is free, a
command prints one line; space freed, the service carries on without a restart and
nothing is lost. A read-only state disk: every command says so in one line. The state
dir is a real, small tmpfs (the tests run as root)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import urllib.request

import pytest
from helpers import (
    EXE,
    DaemonStation,
    add_suggested_track,
    fill_disk,
    genre_bundle,
    small_tmpfs,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from daemon.core.config import load_config
from daemon.core.db.engine import open_database

pytestmark = pytest.mark.slow  # runs the service on a real tmpfs

TMPFS_BYTES = 24 << 20


@pytest.fixture
def small_state_disk(tmp_path):
    """tmp_path/state on a tmpfs of TMPFS_BYTES, unmounted afterwards."""
    with small_tmpfs(tmp_path / "state", TMPFS_BYTES) as state:
        yield state


def metrics(port: int) -> dict[str, dict[str, float]]:
    """name -> {component label or "": value}, scraped from the running service."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[s.labels.get("component", "")] = s.value
    return found


@pytest.mark.slow
def test_full_state_disk_is_named_and_survived(tmp_path, make_song, small_state_disk):
    station = DaemonStation(tmp_path, genre_bundle(tmp_path / "bundle", ("Jazz", "Rock"), "Rock"))
    assert station.state == small_state_disk
    make_song("a.flac", folder=station.library)
    make_song("b.mp3", "Jazz", seed=1, folder=station.library)
    exe = EXE + ["--config", str(station.config_path)]
    port = load_config(station.config_path).review.port

    def status() -> dict:
        done = subprocess.run(exe + ["status", "--json"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    filler = station.state / "filler"
    station.start()
    try:
        station.wait("both songs suggested", lambda: len(station.suggestions()) == 2)
        station.wait("web up", lambda: _scrapes(port))
        (suggestion,) = station.query("SELECT s.id FROM suggestions s JOIN tracks t ON "
                                      "t.id = s.track_id WHERE t.path = 'a.flac'")[0:1]
        # An empty WAL first: the next write must grow the files, as on a busy station.
        with contextlib.closing(sqlite3.connect(station.db, timeout=30)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fill_disk(filler)

        full = station.wait("status names the full disk", lambda: (
            lambda s: s if s["storage"]["disk_full"] and not s["daemon"]["publishing"]
            else None)(status()), timeout=90)
        assert full["daemon"]["running"] and full["daemon"]["pid"] == station.proc.pid
        assert "state disk full" in full["storage"]["condition"]
        text = subprocess.run(exe + ["status"], capture_output=True, text=True,
                              timeout=60).stdout
        assert f"running (pid {station.proc.pid}), but it cannot publish" in text
        assert "state disk full" in text and "did it crash" not in text

        m = metrics(port)
        assert m["genretagger_component_healthy"]["database"] == 0
        assert m["genretagger_state_disk_free_bytes"][""] < 1 << 20

        refused = subprocess.run(exe + ["review", "accept", str(suggestion[0])],
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert str(station.db) in line and "the disk is full" in line, line

        filler.unlink()  # space again: no restart
        station.wait("status: publishing again", lambda: (
            lambda s: s["daemon"]["publishing"] and s["components"].get("database", {})
            .get("healthy") and not s["storage"]["condition"])(status()), timeout=90)
        assert metrics(port)["genretagger_component_healthy"]["database"] == 1
        done = subprocess.run(exe + ["review", "accept", str(suggestion[0])],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        station.wait("the accepted genre written into the file", lambda: station.query(
            "SELECT write_status FROM decisions") == [("written",)], timeout=60)
        assert len(station.suggestions()) == 1  # the other one still waits, nothing lost
        assert station.stop()[0] == 0
    finally:
        station.kill()


def _scrapes(port: int) -> bool:
    try:
        return "genretagger_component_healthy" in metrics(port)
    except OSError:
        return False


def test_a_read_only_state_disk_is_one_line_from_every_command(tmp_path, small_state_disk):
    library = tmp_path / "library"
    library.mkdir()
    config_path = write_config(tmp_path / "config.toml", library, small_state_disk)
    engine, sessions = open_database(load_config(config_path).db_url)
    _, suggestion_id = add_suggested_track(sessions, "a.mp3")
    engine.dispose()
    subprocess.run(["mount", "-o", "remount,ro", str(small_state_disk)], check=True)
    db = small_state_disk / "genretagger.db"
    for command in (["status"], ["review", "list"], ["review", "accept", str(suggestion_id)],
                    ["models", "list"]):
        done = subprocess.run(EXE + ["--config", str(config_path), *command],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip() == (
            f"error: the database {db} cannot be written: {db} is on a read-only "
            "filesystem: mount it read-write, then try again"), command
