"""Shared fixtures: real encoded audio, real migrated SQLite files, real configs.

Shared by every test module: add a fixture here only when two modules need it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli.demo import encode, synthesize
from daemon.core.config import Config, parse_config


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
