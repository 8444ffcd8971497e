"""Shared fixtures: real encoded audio, real migrated SQLite files, real configs.

Shared by every test module: add a fixture here only when two modules need it. The station
family (tests/stations.py's Station): `station` on both backends, `sqlite_station`,
`postgres_station`, and `make_station` for any other config; a module's own kind of station
gets its own name (`cold_station`, `served_station`, ...), never `station`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import EXE
from stations import Station, open_station

from daemon.cli.demo import encode, make_library, synthesize
from daemon.core.config import Config, parse_config


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first: under pytest-xdist (`make test`) the long training
    and daemon modules start at once rather than trailing at the end of the run."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


@pytest.fixture
def make_song(tmp_path):
    """make_song(name, genre="Rock", seconds=12, sr=22050, channels=2, **tags) -> Path.

    `genre` is the music synthesised; tags (title, artist, album, genre_tag) are written
    with mutagen when given.
    """

    def make(name: str, genre: str = "Rock", seconds: float = 12.0, sr: int = 22_050,
             channels: int = 2, seed: int = 0, folder: Path | None = None,
             genre_tag: str | None = None, **tags: str | None) -> Path:
        path = (folder or tmp_path / "songs") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        encode(path, synthesize(genre, seconds, sr, seed, channels), sr)
        if genre_tag is not None:
            tags["genre"] = genre_tag
        if tags:
            from daemon.tags.write import write_tags

            write_tags(path, **tags)
        return path

    return make


@pytest.fixture
def make_config(tmp_path):
    """make_config(root, **sections) -> Config with state under tmp_path.

    `library={...}` adds keys to the [library] section next to root.
    """

    def make(root: Path, **sections: dict) -> Config:
        data = {"library": {"root": str(root)}, "state_dir": str(tmp_path / "state")}
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_config(data, "test config")

    return make


@pytest.fixture
def database(tmp_path):
    """(engine, sessionmaker) for a real SQLite file migrated by Alembic."""
    from daemon.core.db.engine import open_database

    engine, sessions = open_database(f"sqlite:///{tmp_path / 'genretagger.db'}")
    yield engine, sessions
    engine.dispose()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server for the whole session (tests/pgcluster.py)."""
    from pgcluster import Cluster

    cluster = Cluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The URL of a new migrated database, once on SQLite and once on PostgreSQL: a test
    taking it runs on both backends."""
    if request.param == "sqlite":
        from daemon.core.db.engine import open_database

        url = f"sqlite:///{tmp_path / 'genretagger.db'}"
        engine, _ = open_database(url)
        engine.dispose()
        yield url
        return
    cluster = request.getfixturevalue("postgres")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)


@pytest.fixture
def make_station(tmp_path):
    """make_station(database_url=None, config_path=None, **sections) -> the test's Station
    in tmp_path (library/, state/, config.toml), closed after the test (tests/stations.py)."""
    made: list[Station] = []

    def make(database_url: str | None = None, config_path: Path | None = None,
             **sections) -> Station:
        if made:
            raise RuntimeError("one station per test: its folders are tmp_path's")
        made.append(open_station(tmp_path, database_url=database_url,
                                 config_path=config_path, **sections))
        return made[-1]

    yield make
    for station in made:
        station.close()


@pytest.fixture
def station(database_url, make_station) -> Station:
    """A station with an empty library and the plain config, on a new migrated database:
    the test runs once on SQLite and once on PostgreSQL (closed before its database goes)."""
    return make_station(database_url=database_url)


@pytest.fixture
def sqlite_station(make_station) -> Station:
    """`station` on SQLite only: the state dir's genretagger.db."""
    return make_station()


@pytest.fixture
def postgres_station(make_station, postgres) -> Station:
    """`station` on PostgreSQL only."""
    url = postgres.new_database()
    made = make_station(database_url=url)
    yield made
    made.close()  # before the database goes
    postgres.drop_database(url)


def shared_dir(tmp_path_factory, worker_id: str, name: str) -> Path:
    """A folder every test process of this run sees: the session's base temp dir, or
    under pytest-xdist the parent the workers' base dirs share (fill it under a lock)."""
    base = tmp_path_factory.getbasetemp()
    return (base if worker_id == "master" else base.parent) / name


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, worker_id) -> Path:
    """A trainer --out dir (model.onnx ...) for Classical / Hip-Hop / Metal.

    Session-scoped and kept where every test process of the run finds it, so
    test_service, test_worker and test_isolation share one training instead of each
    running its own (under pytest-xdist the first worker trains, the others wait).
    """
    from filelock import FileLock

    base = shared_dir(tmp_path_factory, worker_id, "trained-3-genres")
    base.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base) + ".lock"):
        return _train_three_genres(base)


def _train_three_genres(base: Path) -> Path:
    if (base / "out" / "model.onnx").exists():
        return base / "out"
    shutil.rmtree(base, ignore_errors=True)
    make_library(base / "library", songs_per_genre=6, genres=("Classical", "Hip-Hop", "Metal"),
                 untagged_share=0.0, seconds=(5, 8), formats=(".wav", ".flac", ".mp3"),
                 artists_per_genre=3, broken=0)
    done = subprocess.run(EXE + ["train", "--library", str(base / "library"), "--out",
                                 str(base / "out.partial"), "--cache", str(base / "cache"),
                                 "--epochs", "3", "--min-songs", "4",
                                 # The seed CNN's plain bundle these tests were written
                                 # for (test_tournament trains the three families).
                                 "--family", "cnn", "--no-backbone"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (base / "out.partial").rename(base / "out")
    return base / "out"


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_database_url(request, tmp_path):
    """The URL of a new database with no tables (for migration tests), once on SQLite (a
    file not created yet) and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'station.db'}"
        return
    cluster = request.getfixturevalue("postgres")
    url = cluster.new_database(migrated=False)
    yield url
    cluster.drop_database(url)


@pytest.fixture
def any_database(database_url):
    """(engine, sessionmaker) on a new migrated database, on SQLite and on PostgreSQL
    (`database_url`'s two runs); the `database` fixture's both-backends twin."""
    from daemon.core.db.engine import open_database

    engine, sessions = open_database(database_url)
    yield engine, sessions
    engine.dispose()
