"""The station a test runs against, in this process: a library folder, the config file that
names it, the validated Config read back from that file, and a migrated database (SQLite or
PostgreSQL) with its sessions.

conftest.py builds them: `station` (once on SQLite, once on PostgreSQL), `sqlite_station`,
`postgres_station`, and `make_station` for any other config. Module-scoped stations (a
trained library shared by a module) call `open_station` themselves. The daemon as a real
subprocess on such a folder is helpers.DaemonStation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, make_url, select
from sqlalchemy.orm import sessionmaker

from daemon.core.config import Config, load_config, parse_config
from daemon.core.db.engine import open_database
from daemon.core.db.models import Model, Suggestion, TrainingRun
from daemon.learn import registry
from daemon.suggest.active import active_model


@dataclass
class Station:
    """A station in this process: `config` is what `config_path` says; `sessions` open the
    database that config names. `truth` maps a generated library's paths (relative to
    `library`) to the genre synthesised, when the test made the library with one."""

    base: Path
    library: Path
    config_path: Path
    config: Config
    engine: Engine
    sessions: sessionmaker
    truth: dict[str, str] = field(default_factory=dict)

    @property
    def sqlite_file(self) -> Path:
        """The database file, on SQLite."""
        return Path(make_url(self.config.db_url).database)

    def reconfigured(self, **sections: dict) -> Config:
        """The station's config with keys of some sections changed (the file stays as is)."""
        data = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        return parse_config(data, "test config")

    def active(self) -> Model | None:
        with self.sessions() as session:
            return active_model(session)

    def models(self) -> list[Model]:
        with self.sessions() as session:
            return registry.list_models(session)

    def pending(self) -> list[Suggestion]:
        """The pending suggestions, oldest first."""
        with self.sessions() as session:
            return list(session.scalars(select(Suggestion).where(
                Suggestion.status == "pending").order_by(Suggestion.id)))

    def runs(self) -> list[TrainingRun]:
        with self.sessions() as session:
            return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id)))

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`genretagger --config <config_path> ...` as a real subprocess."""
        return subprocess.run([sys.executable, "-m", "daemon.cli", "--config",
                               str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        self.engine.dispose()


def open_station(base: Path, *, database_url: str | None = None,
                 config_path: Path | None = None, truth: dict[str, str] | None = None,
                 **sections) -> Station:
    """A station under `base`: library/, state/ and config.toml, whose [library] root and
    state_dir are those folders, with `database_url` (else the state dir's SQLite file) and
    `sections` (a dict adds keys to that section, anything else is a top-level key).

    With `config_path`, that file is the station's config as it is (no `sections`)."""
    if config_path is None:
        config_path = base / "config.toml"
        data: dict = {"state_dir": str(base / "state"), "library": {"root": str(base / "library")}}
        if database_url is not None:
            data["database_url"] = database_url
        for key, value in sections.items():
            data[key] = ({**data[key], **value} if isinstance(value, dict)
                         and isinstance(data.get(key), dict) else value)
        base.mkdir(parents=True, exist_ok=True)
        config_path.write_text(to_toml(data), encoding="utf-8")
    elif sections or database_url is not None:
        raise ValueError("a ready config file takes no sections")
    config = load_config(config_path)
    config.library.root.mkdir(parents=True, exist_ok=True)
    engine, sessions = open_database(config.db_url)
    return Station(base, config.library.root, config_path, config, engine, sessions,
                   truth or {})


def to_toml(data: dict) -> str:
    """`data` as TOML: top-level keys, then one [table] per dict (dotted for nested ones).
    A JSON string, number, boolean or list of them is the same value written in TOML."""
    def table(name: str, values: dict) -> list[str]:
        lines = [f"[{name}]"] if name else []
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()
                  if not isinstance(value, dict)]
        for key, value in values.items():
            if isinstance(value, dict):
                lines += table(f"{name}.{key}" if name else key, value)
        return lines

    return "\n".join(table("", data)) + "\n"
