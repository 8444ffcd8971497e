"""Backups of the SQLite database: made online and checked, the newest kept, put back by
`genretagger restore` (never under a running service); a damaged database stops `run`
with one line naming the newest good backup, and an exit code systemd does not restart;
every command answers a damaged database with one line."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess

import pytest
from helpers import EXE, DaemonStation, genre_bundle

from daemon.core.db.backup import (
    DAMAGED_EXIT,
    backup_database,
    check_database,
    list_backups,
    newest_good_backup,
    restore_backup,
)
from daemon.core.db.engine import open_database
from daemon.core.errors import BackupFailed, DatabaseDamaged


def _database_with_rows(path, rows: int = 300) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO notes (note) VALUES (?)",
                         [(f"note {i} " + "x" * 200,) for i in range(rows)])
    conn.close()


def _damage(path) -> None:
    """A database file cut short as a dying disk or a full one leaves it: its last 8 KiB off."""
    subprocess.run(["truncate", "-s", "-8192", str(path)], check=True)


def test_backups_are_whole_checked_and_only_the_newest_kept(tmp_path):
    db, folder = tmp_path / "genretagger.db", tmp_path / "backups"
    _database_with_rows(db)
    writer = sqlite3.connect(db)  # a writer holding uncommitted WAL data does not matter
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO notes (note) VALUES ('not committed')")
    made = [backup_database(db, folder, "daily", keep=2) for _ in range(3)]
    writer.rollback()
    writer.close()
    assert list_backups(folder) == sorted(made[1:], reverse=True)  # the oldest pruned
    assert not made[0].exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in made[1:])
    with sqlite3.connect(made[-1]) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (300,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)

    _damage(db)
    with pytest.raises(DatabaseDamaged, match=rf"{db} is damaged .*{made[-1]}.*genretagger "
                                              rf"restore {made[-1]}"):
        check_database(db, folder)
    with pytest.raises(BackupFailed):  # a damaged file is never kept as a backup
        backup_database(db, folder, "daily", keep=2)
    assert len(list_backups(folder)) == 2 and not list(folder.glob(".*"))

    # The newest backup damaged too: the one before it is the newest good one.
    _damage(made[-1])
    assert newest_good_backup(folder) == made[1]
    kept = restore_backup(db, made[1])
    assert kept is not None and kept.exists()  # the damaged file is kept, not deleted
    check_database(db, folder)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (300,)
    with pytest.raises(BackupFailed, match="integrity check"):
        restore_backup(db, made[-1])


def test_a_migration_is_backed_up_into_the_backups_folder(tmp_path):
    db = tmp_path / "state" / "genretagger.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:  # from before the first migration
        conn.execute("CREATE TABLE station_notes (note TEXT)")
    engine, _ = open_database(f"sqlite:///{db}", backups_dir=tmp_path / "backups",
                              keep_backups=3)
    engine.dispose()
    (backup,) = list_backups(tmp_path / "backups")
    assert backup.name.endswith("-migration.db")
    with sqlite3.connect(backup) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [
            ("station_notes",)]


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.slow
def test_damaged_database_stops_run_and_restore_brings_it_back(tmp_path, make_song):
    station = DaemonStation(tmp_path, genre_bundle(tmp_path / "bundle", ("Jazz", "Rock"), "Rock"))
    make_song("a.flac", folder=station.library)
    make_song("b.mp3", "Jazz", seed=1, folder=station.library)
    exe = EXE + ["--config", str(station.config_path)]
    backups = station.state / "backups"
    station.start()
    try:
        # No backup from the last day: the daily job runs at once.
        station.wait("the first daily backup", lambda: list(backups.glob("*-daily.db")))
        station.wait("both songs suggested", lambda: len(station.suggestions()) == 2)
        assert station.stop()[0] == 0
    finally:
        station.kill()
    backup = backup_database(station.db, backups, "daily", keep=7)  # with the suggestions
    _damage(station.db)

    started = subprocess.run(exe + ["run"], capture_output=True, text=True, timeout=120)
    assert started.returncode == DAMAGED_EXIT
    line = [x for x in started.stderr.splitlines() if "cannot start" in x]
    assert len(line) == 1, started.stderr
    assert str(station.db) in line[0] and f"genretagger restore {backup}" in line[0]
    assert "NoneType" not in started.stderr and "Traceback" not in started.stderr

    for command in (["status"], ["status", "--json"], ["review", "list"], ["models", "list"]):
        done = subprocess.run(exe + command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (command, done.stderr)
        text = _one_line(done)
        assert str(station.db) in text and "genretagger restore" in text, (command, text)

    # Never under a running service: whoever holds the leader lock is named.
    fd = os.open(station.state / "leader.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        refused = subprocess.run(exe + ["restore"], capture_output=True, text=True,
                                 timeout=120)
    finally:
        os.close(fd)
    assert refused.returncode == 1
    assert f"the service is running (pid {os.getpid()})" in _one_line(refused)

    listed = subprocess.run(exe + ["restore", "--list"], capture_output=True, text=True,
                            timeout=120)
    assert str(backup) in listed.stdout.splitlines()[0]
    done = subprocess.run(exe + ["restore"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"from {backup}" in done.stdout
    assert list(station.state.glob("genretagger.db.replaced-*"))  # the damaged one kept
    assert len(station.suggestions()) == 2  # nothing the backup held is lost

    station.start()
    try:
        station.wait("status: running", lambda: "daemon:      running" in subprocess.run(
            exe + ["status"], capture_output=True, text=True, timeout=60).stdout)
        assert station.stop()[0] == 0
    finally:
        station.kill()
