"""Models and the genre map shared through the database: a host with an empty state_dir
(another `genretagger worker` or a standby) gets the leader's bundle and genre map from
a real PostgreSQL database, never from a mount or a copy made by hand; SQLite (one host)
keeps its bundles as files only.

Bundles are real ONNX models (helpers.genre_bundle) loaded by onnxruntime; the leader
and the other host are two configs with state dirs of their own on one database.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess

import pytest
from helpers import EXE, PostgresDaemonStation, genre_bundle, wait_for, write_config
from sqlalchemy import create_engine, func, select, text

from daemon.cli.demo import make_library
from daemon.core.config import load_config
from daemon.core.db.engine import alembic_config, open_database
from daemon.core.db.models import BundleChunk, BundleFile, Model, StoredGenreMap
from daemon.learn import registry
from daemon.suggest.active import ActiveModel
from daemon.suggest.inputs import WindowSpecs
from daemon.suggest.stored_bundles import (
    CHUNK_BYTES,
    BundleUnavailable,
    file_sha256,
    local_bundle,
)
from daemon.tags.genres import default_genres_text
from daemon.tags.live import Live
from daemon.tags.stored_genres import (
    FollowedGenreMap,
    host_genre_map,
    publish_genre_map,
)

GENRES = ("Classical", "Hip-Hop", "Metal")


@pytest.fixture
def hosts(tmp_path, make_config, postgres):
    """(leader config, other host's config, sessions) on one new PostgreSQL database."""
    url = postgres.new_database()
    library = tmp_path / "library"
    library.mkdir()
    leader = make_config(library, database_url=url, state_dir=str(tmp_path / "leader"))
    other = make_config(library, database_url=url, state_dir=str(tmp_path / "other"))
    engine, sessions = open_database(url)
    yield leader, other, sessions
    engine.dispose()
    postgres.drop_database(url)


def big_bundle(out, hears: str):
    """A real bundle with a model.keras of a few chunks beside it, so the bytes go to and
    from the database in more than one piece."""
    folder = genre_bundle(out, GENRES, hears)
    (folder / "model.keras").write_bytes(os.urandom(2 * CHUNK_BYTES + 12345))
    (folder / "split.json").write_text('{"test": [], "validation": [], "train": []}')
    return folder


def test_a_host_with_an_empty_state_dir_rebuilds_the_bundle_from_the_database(hosts, tmp_path):
    leader, other, sessions = hosts
    model = registry.register_bundle(sessions, leader, big_bundle(tmp_path / "run", "Metal"))
    registry.activate(sessions, model.version)
    with sessions() as session:
        stored = {f.name: f for f in session.scalars(select(BundleFile))}
        chunks = session.scalar(select(func.count()).select_from(BundleChunk))
    assert sorted(stored) == ["model.keras", "model.onnx", "split.json"]
    assert stored["model.onnx"].sha256 == model.sha256
    assert chunks == 3 + 1 + 1  # model.keras in three pieces

    assert not other.state_dir.exists()
    folder = local_bundle(sessions, other, model)
    assert folder == other.models_dir / "v0001"
    for name, row in stored.items():
        assert file_sha256(folder / name) == row.sha256
        assert (folder / name).read_bytes() == (leader.models_dir / "v0001" / name).read_bytes()
    assert [p.name for p in other.models_dir.iterdir()] == ["v0001"]  # no temp left

    # A copy already right is used as it is; a damaged one is replaced by a checked copy.
    made = (folder / "model.onnx").stat().st_mtime_ns
    assert local_bundle(sessions, other, model) == folder
    assert (folder / "model.onnx").stat().st_mtime_ns == made
    with open(folder / "model.keras", "r+b") as f:
        f.seek(CHUNK_BYTES + 7)
        f.write(b"\x00\x01\x02")
    assert local_bundle(sessions, other, model) == folder
    assert file_sha256(folder / "model.keras") == stored["model.keras"].sha256

    # The worker's model follower loads this host's copy and classifies with it.
    (other.models_dir / "v0001" / "model.onnx").unlink()
    active = ActiveModel(sessions, WindowSpecs.for_windows(5))
    assert active.refresh(other)
    assert active.model_id == model.id
    assert active.classifier.classes == GENRES
    assert file_sha256(folder / "model.onnx") == model.sha256
    # The gate and the warm start find split.json and model.keras here too.
    assert registry.bundle_dir(sessions, other, model) == folder


def test_a_damaged_stored_copy_is_refused_and_leaves_nothing_behind(hosts, tmp_path, caplog):
    leader, other, sessions = hosts
    first = registry.register_bundle(sessions, leader, big_bundle(tmp_path / "a", "Metal"))
    registry.activate(sessions, first.version)
    second = registry.register_bundle(sessions, leader, genre_bundle(tmp_path / "b", GENRES,
                                                                     "Classical"))
    with sessions.begin() as session:
        chunk = session.get(BundleChunk, (second.sha256, 0))
        chunk.data = chunk.data[:-3] + b"\x00\x00\x00"
    with pytest.raises(BundleUnavailable, match="v0002: the database's copy of model.onnx "
                                                "does not match its sha256"):
        local_bundle(sessions, other, second)
    assert not other.models_dir.exists() or list(other.models_dir.iterdir()) == []
    with pytest.raises(registry.RegistryError, match="does not match its sha256"):
        registry.activate(sessions, second.version)

    # Activated behind the registry's back: the worker keeps the model it has, and says so.
    active = ActiveModel(sessions, WindowSpecs.for_windows(5))
    assert active.refresh(other) and active.model_id == first.id
    with sessions.begin() as session:
        session.execute(text("UPDATE models SET status = CASE WHEN id = :b THEN 'active' "
                             "ELSE 'retired' END"), {"b": second.id})
    active._checked = 0.0  # the follower looks every MODEL_CHECK_SECONDS
    with caplog.at_level(logging.ERROR, logger="daemon.suggest.active"):
        assert active.refresh(other)
    assert active.model_id == first.id
    assert "does not match its sha256" in caplog.text


def test_sqlite_keeps_bundles_as_files_only(tmp_path, make_config):
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library)
    engine, sessions = open_database(config.db_url)
    model = registry.register_bundle(sessions, config, genre_bundle(tmp_path / "run", GENRES,
                                                                    "Metal"))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(BundleFile)) == 0
        assert session.scalar(select(func.count()).select_from(BundleChunk)) == 0
    assert local_bundle(sessions, config, model) == config.models_dir / "v0001"
    registry.activate(sessions, model.version)
    engine.dispose()


def test_migration_0010_stores_the_bundles_still_on_disk(postgres, tmp_path, make_config):
    from alembic import command

    url = postgres.new_database(migrated=False)
    engine = create_engine(url)
    command.upgrade(alembic_config(engine), "0005")
    kept = genre_bundle(tmp_path / "models" / "v0001", GENRES, "Metal")
    (kept / "report.json").write_text('{"test": {}}')
    gone = tmp_path / "models" / "v0002" / "model.onnx"
    with engine.begin() as conn:
        for version, path, sha256 in ((1, kept / "model.onnx", file_sha256(kept / "model.onnx")),
                                      (2, gone, "0" * 64)):
            conn.execute(text(
                "INSERT INTO models (version, path, sha256, status, classes, metrics, n_songs, "
                "created_at) VALUES (:v, :p, :s, 'retired', '[]', '{}', 0, now())"),
                {"v": version, "p": str(path), "s": sha256})
    engine.dispose()
    engine, sessions = open_database(url)
    with sessions() as session:
        files = session.execute(select(BundleFile.model_id, BundleFile.name)
                                .order_by(BundleFile.name)).all()
        models = {m.version: m for m in session.scalars(select(Model))}
    assert files == [(models[1].id, "model.onnx"), (models[1].id, "report.json")]
    library = tmp_path / "library"
    library.mkdir()
    other = make_config(library, database_url=url, state_dir=str(tmp_path / "other"))
    folder = local_bundle(sessions, other, models[1])
    assert (folder / "model.onnx").read_bytes() == (kept / "model.onnx").read_bytes()
    # The model whose files were gone works as before: from the path it was recorded at.
    assert local_bundle(sessions, other, models[2]) == gone.parent
    engine.dispose()
    postgres.drop_database(url)


def test_the_leaders_genre_map_is_versioned_and_followed_by_hosts_without_one(hosts):
    leader, other, sessions = hosts
    live = Live(other)
    follower = FollowedGenreMap(live, sessions)
    assert follower.refresh() is None and "Yodel" not in live.genre_map.canonical
    assert publish_genre_map(sessions, leader) is None  # no genres.toml yet: nothing
    with sessions() as session:
        assert "shipped" in host_genre_map(other, session).source

    leader.state_dir.mkdir(parents=True)
    shipped = default_genres_text()
    leader.genres_path.write_text(shipped)
    assert publish_genre_map(sessions, leader) == 1
    assert publish_genre_map(sessions, leader) == 1  # the same text: no new version
    with_yodel = shipped.replace("\ncanonical = [", '\ncanonical = ["Yodel", ', 1)
    assert with_yodel != shipped
    leader.genres_path.write_text(with_yodel)
    assert publish_genre_map(sessions, leader) == 2
    leader.genres_path.write_text('canonical = ["Yodel", "yodel"]\n')
    assert publish_genre_map(sessions, leader) is None  # refused: v2 stays the newest
    with sessions() as session:
        assert session.scalar(select(func.max(StoredGenreMap.version))) == 2
        mapped = host_genre_map(other, session)
    assert "Yodel" in mapped.canonical and mapped.canonical_for("YODEL") == "Yodel"
    assert "genre map v2 from the database" in mapped.source

    follower._checked = 0.0  # it looks every CHECK_SECONDS
    assert follower.refresh() == 2
    assert live.genre_map.canonical_for("yodel") == "Yodel"
    # A host with a genres.toml of its own keeps using it.
    other.state_dir.mkdir(parents=True)
    other.genres_path.write_text(shipped)
    with sessions() as session:
        assert "Yodel" not in host_genre_map(other, session).canonical
    follower._checked = 0.0
    assert follower.refresh() is None


def host_config(base, name: str, library, url: str, batch: int, processes: int = 1):
    """Another host's config on the shared database: a state dir of its own, not created
    yet; it claims at most max(batch, 4 * processes) songs at a time."""
    path = write_config(base / f"{name}.toml", library, base / f"{name}-state",
                        processes=str(processes))
    path.write_text(f'database_url = "{url}"\n'
                    + path.read_text().replace("batch_songs = 8", f"batch_songs = {batch}"))
    return path


def spawn(config, log_path, *command: str) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(EXE + ["--config", str(config), *command],
                                stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_a_worker_and_a_standby_on_other_hosts_follow_the_leaders_model_and_genre_map(
        tmp_path, postgres):
    url = postgres.new_database()
    leader = PostgresDaemonStation(tmp_path / "leader", genre_bundle(tmp_path / "hears-metal",
                                                               GENRES, "Metal"), url)
    # The leader's worker holds at most 4 songs at a time: the other worker gets some.
    leader.config_path.write_text(leader.config_path.read_text().replace("batch_songs = 8",
                                                               "batch_songs = 1"))
    # The registry recorded the leader's own path, which another host does not have.
    elsewhere = "/srv/leader-host/genretagger/models/v0001/model.onnx"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET path = :p, report_path = NULL"), {"p": elsewhere})
    engine.dispose()
    genres_toml = leader.state / "genres.toml"
    genres_toml.write_text(default_genres_text())
    # Enough songs that the leader's own worker cannot finish them all between two of the
    # other worker's looks at the queue.
    make_library(leader.library / "first", songs_per_genre=12, genres=("Classical", "Metal"),
                 untagged_share=1.0, seconds=(4, 5), formats=(".flac", ".mp3"), broken=0)
    config = host_config(tmp_path, "worker", leader.library, url, batch=32, processes=2)
    worker_log, standby_log = tmp_path / "worker.log", tmp_path / "standby.log"
    worker = spawn(config, worker_log, "worker", "--name", "far")
    standby = None

    def logs() -> str:
        return "".join(f"--- {name}\n{path.read_text()[-3000:]}\n" for name, path in (
            ("worker", worker_log), ("standby", standby_log), ("leader", leader.log))
            if path.exists())

    def detail(pid: int | None = None) -> dict:
        rows = leader.query("SELECT detail FROM workers WHERE pid = ? AND stopped_at IS NULL",
                            pid or worker.pid)
        return rows[0][0] if rows else {}

    try:
        # The worker is ready first (the leader's own worker then cannot take every song).
        wait_for(lambda: "using model v1" in worker_log.read_text() or worker.poll(), 90,
                 "the worker to load the model")
        assert worker.poll() is None, logs()
        leader.start()
        leader.wait("24 suggestions", lambda: len(leader.suggestions()) == 24, timeout=120)
        assert worker.poll() is None, logs()
        said = worker_log.read_text()
        assert "bundle copied from the database" in said and "suggested Metal for" in said, \
            logs()
        first = (tmp_path / "worker-state" / "models" / "v0001" / "model.onnx").read_bytes()
        assert first == (leader.state / "models" / "v0001" / "model.onnx").read_bytes()
        leader.wait("the worker on genre map v1", lambda: detail().get("genre_map") == 1)
        # A standby `run` on a third host, its state dir empty too, follows the same way.
        standby = spawn(host_config(tmp_path, "standby", leader.library, url, batch=1),
                        standby_log, "run")
        leader.wait("the standby on genre map v1",
                    lambda: detail(standby.pid).get("genre_map") == 1, timeout=90)
        assert "from genre map v1 from the database" in standby_log.read_text(), logs()
        assert leader.query("SELECT role FROM workers WHERE pid = ?", standby.pid) == [
            ("standby",)]

        # The station adds a genre on the leader and reloads it: the worker knows it.
        genres_toml.write_text(default_genres_text().replace(
            "\ncanonical = [", '\ncanonical = ["Yodel", ', 1))
        leader.proc.send_signal(signal.SIGHUP)
        leader.wait("the worker and the standby on genre map v2", lambda: (
            detail().get("genre_map"), detail(standby.pid).get("genre_map")) == (2, 2),
            timeout=30)
        assert "genre map v2 from the database" in worker_log.read_text(), logs()
        assert "(new: Yodel)" in worker_log.read_text(), logs()
        # Asked on the worker's host, `status` knows the new genre too (no model has it yet).
        status = subprocess.run(EXE + ["--config", str(config), "status", "--json"],
                                capture_output=True, text=True, timeout=60)
        data = json.loads(status.stdout)
        assert "Yodel" in data["cannot_suggest_yet"], status.stdout
        assert [w["genre_map"] for w in data["workers"] if w["name"] == "far"] == [2]
        lines = subprocess.run(EXE + ["--config", str(config), "status"], capture_output=True,
                               text=True, timeout=60).stdout.splitlines()
        assert any(" worker far: alive" in line and line.endswith(", genre map v2")
                   for line in lines), lines

        # A model that knows the new genre is trained and activated on the leader's host.
        leader_config = load_config(leader.config_path)
        engine, sessions = open_database(url)
        model = registry.register_bundle(sessions, leader_config, genre_bundle(
            tmp_path / "hears-yodel", (*GENRES, "Yodel"), "Yodel"))
        engine.dispose()
        done = subprocess.run(EXE + ["--config", str(leader.config_path), "models", "activate",
                                     str(model.version)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        leader.wait("the worker's and the standby's copies of v0002", lambda: all(
            (tmp_path / f"{host}-state" / "models" / "v0002" / "model.onnx").is_file()
            for host in ("worker", "standby")), timeout=30)
        make_library(leader.library / "later", songs_per_genre=12, genres=("Classical", "Metal"),
                     untagged_share=1.0, seconds=(4, 5), formats=(".ogg",), broken=0, seed=2)
        leader.wait("48 suggestions", lambda: len(leader.suggestions()) == 48, timeout=120)
        # The worker logs a suggestion just after committing it.
        leader.wait("the worker's Yodel suggestions", lambda: "suggested Yodel for later/"
                    in worker_log.read_text(), timeout=30)
        assert worker.poll() is None and standby.poll() is None, logs()
    finally:
        leader.kill()
        for proc in (worker, standby):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    postgres.drop_database(url)
