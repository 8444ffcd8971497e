"""The database: Alembic migrations agree with the models (and their data migrations keep
every row) on SQLite and PostgreSQL; SQLite's WAL and backups before migrating; write units
that read then write see no lost update on either backend; a PostgreSQL server that cannot
be reached is a clear error."""

import sqlite3
import time
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from daemon.core.db.engine import migrate, open_database, pending_migrations
from daemon.core.db.models import Base, Track, utcnow
from daemon.core.states import InvalidTransition, TrackState, can_move, move


def test_migrations_match_models(any_database):
    engine, _ = any_database
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    assert pending_migrations(engine) == []


def test_sqlite_runs_in_wal_with_a_busy_timeout(database):
    engine, _ = database
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_pending_migration_backs_the_file_up_first(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a database from before the first migration
        conn.execute("CREATE TABLE station_notes (note TEXT)")
        conn.execute("INSERT INTO station_notes VALUES ('keep me')")
    engine, sessions = open_database(f"sqlite:///{path}")
    backups = list((tmp_path / "backups").glob("genretagger-*-migration.db"))
    assert len(backups) == 1
    with sqlite3.connect(backups[0]) as conn:
        assert conn.execute("SELECT note FROM station_notes").fetchone() == ("keep me",)
    assert migrate(engine) is None  # nothing pending: no second backup
    engine.dispose()


def test_only_the_service_migrates_an_existing_database(tmp_path):
    """After a package upgrade the old service may still run on the database: commands
    (status, review, models) do not migrate it under it; they say to restart the service.
    A database that does not exist yet is created by any command."""
    import subprocess
    import sys

    from daemon.core.errors import SchemaBehind

    state, library = tmp_path / "state", tmp_path / "library"
    state.mkdir()
    library.mkdir()
    path = state / "genretagger.db"
    with sqlite3.connect(path) as conn:  # from before the first migration
        conn.execute("CREATE TABLE station_notes (note TEXT)")
    with pytest.raises(SchemaBehind, match=r"\d+ schema migration\(s\) behind .* restart"):
        open_database(f"sqlite:///{path}", upgrade=False)
    assert not (state / "backups").exists()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\n[library]\nroot = "{library}"\n')
    status = [sys.executable, "-m", "daemon.cli", "--config", str(config), "status"]
    done = subprocess.run(status, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "systemctl restart genretagger" in done.stderr
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"station_notes"}  # untouched

    engine, _ = open_database(f"sqlite:///{path}")  # the service's start
    engine.dispose()
    assert subprocess.run(status, capture_output=True, timeout=120).returncode == 0
    fresh = tmp_path / "fresh.db"
    engine, _ = open_database(f"sqlite:///{fresh}", upgrade=False)
    assert pending_migrations(engine) == []
    engine.dispose()


def test_times_come_back_timezone_aware(any_database):
    _, sessions = any_database
    with sessions.begin() as session:
        session.add(Track(path="a/b.mp3", size=1, mtime=1.0, first_seen=utcnow()))
    with sessions() as session:
        track = session.scalars(select(Track)).one()
        assert track.first_seen.tzinfo is not None
        assert track.state == TrackState.QUEUED


def test_state_machine_allows_only_listed_moves():
    assert can_move("queued", "working")
    assert not can_move("queued", "reviewed")
    assert can_move("working", "reviewed")  # a genre the reviewer rejected comes back

    class T:
        state, path = TrackState.SUGGESTED, "x.mp3"

    track = T()
    move(track, TrackState.REVIEWED)
    assert track.state == TrackState.REVIEWED
    with pytest.raises(InvalidTransition, match="x.mp3: track cannot go from reviewed to working"):
        move(track, TrackState.WORKING)


def test_a_move_stamps_when_the_state_changed(database):
    """move() is the one place state_changed_at is set: the given time or now, a refused
    move stamps nothing, and a new row enters at any state."""
    _, sessions = database
    at = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
    with sessions() as session:
        track = Track(path="new.mp3", size=1, mtime=1.0, attempts=0)
        move(track, TrackState.TAGGED, at)
        session.add(track)
        session.commit()
        assert (track.state, track.state_changed_at) == (TrackState.TAGGED, at)
        before = utcnow()
        move(track, TrackState.QUEUED)
        assert track.state_changed_at >= before
        stamped = track.state_changed_at
        with pytest.raises(InvalidTransition):
            move(track, TrackState.REVIEWED, at)
        assert (track.state, track.state_changed_at) == (TrackState.QUEUED, stamped)
        move(track, TrackState.QUEUED, at)  # the same state: stamped again
        session.commit()
        assert session.get(Track, track.id).state_changed_at == at


def test_write_units_take_the_lock_up_front(database):
    """A read-then-write unit must not fail when another writer commits in between."""
    import threading

    from daemon.core.db.engine import transaction

    _, sessions = database
    with transaction(sessions) as session:
        session.add(Track(path="a.mp3", size=1, mtime=1.0))
    other_done = threading.Event()

    def other_writer():
        with transaction(sessions) as session:
            session.get(Track, 1).attempts = 5
        other_done.set()

    with transaction(sessions) as session:
        track = session.get(Track, 1)
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert not other_done.wait(0.5)  # it waits for our lock instead of racing us
        track.size = 2
    thread.join(10)
    assert other_done.is_set()
    with sessions() as session:
        track = session.get(Track, 1)
        assert (track.size, track.attempts) == (2, 5)


def test_migration_0002_rewrites_old_track_paths_one_to_one(blank_database_url, tmp_path):
    """A database at revision 0001 holding paths in the old escaping (a raw byte as
    \\xNN, a literal backslash as itself) is upgraded: every row now names, in the new
    stored form, the very file the old code opened."""
    import os

    from alembic import command
    from sqlalchemy import create_engine, text

    from daemon.core.db.engine import alembic_config
    from daemon.core.paths import filesystem_path

    engine = create_engine(blank_database_url)
    command.upgrade(alembic_config(engine), "0001")
    old_rows = {  # old stored form -> the bytes of the file the old code opened
        "Artist/Song.mp3": b"Artist/Song.mp3",
        "Caf\\xe9/Ni\\xf1a.mp3": b"Caf\xe9/Ni\xf1a.mp3",
        "AC\\DC/Back In Black.mp3": b"AC\\DC/Back In Black.mp3",
        # two literal backslashes: what the row above becomes (the rewrite must not meet it)
        "AC\\\\DC/Back In Black.mp3": b"AC\\\\DC/Back In Black.mp3",
        "trailing\\": b"trailing\\",
        "a\\\\xe9.mp3": b"a\\\xe9.mp3",  # a literal backslash, then the raw byte
        "low\\x41.mp3": b"low\\x41.mp3",  # not an escape in either form
        "100% Hits/x_y.mp3": b"100% Hits/x_y.mp3",
    }
    with engine.begin() as conn:
        for stored in old_rows:  # one at a time: ids follow this order on both backends
            conn.execute(text("INSERT INTO tracks (path, size, mtime, state, attempts, "
                              "first_seen, last_seen, state_changed_at) VALUES (:p, 1, 1.0, "
                              "'queued', 0, :t, :t, :t)"),
                         {"p": stored, "t": utcnow()})
    assert pending_migrations(engine)[0] == "0002"  # and any later revisions
    engine.dispose()

    engine, sessions = open_database(blank_database_url)  # the service's start: migrates
    if blank_database_url.startswith("sqlite"):
        assert list((tmp_path / "backups").glob("genretagger-*-migration.db"))  # backed up first
    assert pending_migrations(engine) == []
    with sessions() as session:
        stored = {t.id: t.path for t in session.scalars(select(Track))}
    engine.dispose()
    on_disk = [os.fsencode(filesystem_path(stored[i + 1])) for i in range(len(old_rows))]
    assert on_disk == list(old_rows.values())
    assert stored[1] == "Artist/Song.mp3" and stored[2] == "Caf\\xe9/Ni\\xf1a.mp3"
    assert stored[3] == "AC\\\\DC/Back In Black.mp3"  # the literal backslash doubled
    assert stored[8] == "100% Hits/x_y.mp3"


def test_migration_0004_fills_album_keys_on_both_backends(blank_database_url):
    """0004's data step (album keys from the tags already read) on a database at 0003 with
    rows, on SQLite and PostgreSQL alike: the same keys album_identities gives."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from daemon.core.db.engine import alembic_config
    from daemon.library.albums import AlbumTags, album_identities

    engine = create_engine(blank_database_url)
    command.upgrade(alembic_config(engine), "0003")
    rows = [("Soul/01.mp3", "Ann Peebles", "Soul Hits"), ("Soul/02.mp3", "Al Green", "soul hits"),
            ("Blue/01.mp3", "Joni Mitchell", "Blue"), ("loose.mp3", "X", None)]
    with engine.begin() as conn:
        for rel, artist, album in rows:
            conn.execute(text("INSERT INTO tracks (path, size, mtime, state, attempts, "
                              "first_seen, last_seen, state_changed_at, artist, album) VALUES "
                              "(:p, 7, 2.5, 'queued', 0, :t, :t, :t, :a, :b)"),
                         {"p": rel, "t": utcnow(), "a": artist, "b": album})
    engine.dispose()
    engine, sessions = open_database(blank_database_url)
    with sessions() as session:
        got = [(t.album_key, t.compilation)
               for t in session.scalars(select(Track).order_by(Track.id))]
    engine.dispose()
    expected = [(i.key, i.compilation) for i in album_identities(
        [AlbumTags(rel, album, None, artist) for rel, artist, album in rows])]
    assert got == expected
    assert got[0] == got[1] and got[0][1] is True and got[3] == (None, False)


def test_migration_0003_adds_sounds_like_and_keeps_every_row(tmp_path):
    """A database made at revision 0002 with a track, a suggestion and a decision is
    upgraded: the rows are all there, unchanged, with sounds_like NULL; a new suggestion
    can store its nearest songs."""
    from alembic import command
    from sqlalchemy import create_engine

    from daemon.core.db.engine import alembic_config
    from daemon.core.db.models import Decision, Suggestion

    path = tmp_path / "station.db"
    engine = create_engine(f"sqlite:///{path}")
    command.upgrade(alembic_config(engine), "0002")
    # Only what is not applied yet (0001 and 0002 are).
    assert pending_migrations(engine)[0] == "0003"  # and any later revisions
    engine.dispose()
    stamp = "'2026-11-30 10:00:00'"
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO tracks (path, size, mtime, state, attempts, first_seen, "
                     f"last_seen, state_changed_at) VALUES ('A/b.mp3', 7, 2.5, 'suggested', "
                     f"0, {stamp}, {stamp}, {stamp})")
        conn.execute("INSERT INTO suggestions (track_id, genre, confidence, top, status, "
                     "created_at) VALUES (1, 'Jazz', 0.75, '[[\"Jazz\", 0.75]]', 'pending', "
                     f"{stamp})")
        conn.execute("INSERT INTO decisions (track_id, suggestion_id, action, how, genre, "
                     "who, at, undone, write_status, write_attempts) VALUES (1, 1, 'accept', "
                     f"'single', 'Jazz', 'director', {stamp}, 0, 'none', 0)")
    engine, sessions = open_database(f"sqlite:///{path}")
    assert pending_migrations(engine) == []
    with sessions() as session, session.begin():
        suggestion = session.get(Suggestion, 1)
        assert (suggestion.genre, suggestion.confidence, suggestion.top) == (
            "Jazz", 0.75, [["Jazz", 0.75]])
        assert suggestion.sounds_like is None
        assert session.get(Track, 1).path == "A/b.mp3"
        assert session.get(Decision, 1).genre == "Jazz"
        nearest = [{"track_id": 1, "path": "A/b.mp3", "genre": "Jazz", "similarity": 0.9}]
        session.add(Suggestion(track_id=1, genre="Pop", confidence=0.5, top=[["Pop", 0.5]],
                               status="pending", sounds_like=nearest))
    with sessions() as session:
        assert session.get(Suggestion, 2).sounds_like == nearest
    engine.dispose()


def test_read_then_write_under_a_row_lock_loses_no_update(any_database):
    """Two write units that read a count and write it back plus one: on SQLite the second
    waits for BEGIN IMMEDIATE's lock, on PostgreSQL (READ COMMITTED) for the row lock
    `locked` takes, and reads the first one's result: 2, not 1."""
    import threading

    from daemon.core.db.engine import locked, transaction

    _, sessions = any_database
    with transaction(sessions) as session:
        session.add(Track(path="a.mp3", size=1, mtime=1.0, attempts=0))
    first_read = threading.Event()

    def add_one(pause: float) -> None:
        with transaction(sessions) as session:
            track = locked(session, Track, 1)
            seen = track.attempts
            first_read.set()
            time.sleep(pause)  # the other unit tries to read meanwhile
            track.attempts = seen + 1

    first = threading.Thread(target=add_one, args=(0.5,))
    first.start()
    assert first_read.wait(10)
    add_one(0.0)
    first.join(10)
    with sessions() as session:
        assert session.get(Track, 1).attempts == 2


def test_an_unreachable_postgresql_server_is_a_clear_error(tmp_path):
    """No server where the URL points: a typed error naming the server and the reason,
    never its password; `status` says it in one line with exit code 1, no traceback."""
    import subprocess
    import sys

    from daemon.core.errors import DatabaseUnreachable

    url = "postgresql+psycopg://station:s3cret@127.0.0.1:9/genretagger"  # discard port
    with pytest.raises(DatabaseUnreachable) as caught:
        open_database(url, upgrade=False)
    message = str(caught.value)
    assert "127.0.0.1" in message and "refused" in message and "s3cret" not in message
    state, library = tmp_path / "state", tmp_path / "library"
    state.mkdir()
    library.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\ndatabase_url = "{url}"\n'
                      f'[library]\nroot = "{library}"\n')
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config),
                           "status"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: cannot reach the database postgresql+psycopg://"
                                  "station:***@127.0.0.1:9/genretagger: ")
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_a_postgresql_database_is_backed_up_by_its_owner_not_by_us(postgres, caplog):
    """Migrating a PostgreSQL database with tables writes no file of ours; the log says
    how to take a backup (pg_dump) first."""
    import logging

    from alembic import command
    from sqlalchemy import create_engine

    from daemon.core.db.engine import alembic_config

    url = postgres.new_database(migrated=False)
    try:
        engine = create_engine(url)
        command.upgrade(alembic_config(engine), "0004")
        engine.dispose()
        with caplog.at_level(logging.WARNING, logger="daemon.core.db.engine"):
            engine, _ = open_database(url)
        engine.dispose()
        assert "pg_dump -Fc -d test_" in caplog.text and "without a backup" in caplog.text
    finally:
        postgres.drop_database(url)


def test_a_postgresql_database_behind_names_itself_without_password(postgres):
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from daemon.core.db.engine import alembic_config
    from daemon.core.errors import SchemaBehind

    url = postgres.new_database(migrated=False)
    try:
        engine = create_engine(url)
        command.upgrade(alembic_config(engine), "0004")
        engine.dispose()
        secret = make_url(url).set(password="s3cret").render_as_string(hide_password=False)
        with pytest.raises(SchemaBehind) as caught:
            open_database(secret, upgrade=False)
        assert "postgresql+psycopg://genretagger:***@/test_" in str(caught.value)
        assert "s3cret" not in str(caught.value)
    finally:
        postgres.drop_database(url)
