"""The `genretagger` command group and what its commands share: the Context (the config
file, loaded on first use; the database), `main()` with the exit codes, JSON output.

Thin: each command parses its options, loads the config when it needs one, calls one
function of the module that owns the job, and prints. Exit codes: 0 ok, 1 failure,
2 usage or config error. `--json` shapes are produced by the owning module.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import sqlite3
import sys
from pathlib import Path

import click

from daemon.core.config import Config, load_config
from daemon.core.errors import ConfigError, DatabaseProblem, GenretaggerError
from daemon.service.logs import setup_logging


class Context:
    def __init__(self, config_path: Path | None):
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def database(self):
        """(engine, sessions) on the station's database; only the service migrates it."""
        from daemon.core.db.engine import open_database  # SQLAlchemy + Alembic: 0.3 s

        refuse_root_in_service_state(self.config.state_dir)
        return open_database(self.config.db_url, upgrade=False,
                             busy_timeout=self.config.database_busy_seconds)


def refuse_root_in_service_state(state_dir: Path) -> None:
    """Root must not work in a state dir another user (the service's) owns.

    `sudo genretagger status` would leave root-owned files there (the database's -wal
    and -shm, a migration backup, model files) that the service cannot open: it would
    fail at its next start. The error says which command to run instead.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = state_dir.stat().st_uid
    except OSError:
        return  # not created yet
    if owner == 0:
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = f"#{owner}"
    raise ConfigError(
        f"running as root, but the state dir {state_dir} belongs to {name}: files root "
        f"creates there would lock the service out. Run it as {name}: "
        f"sudo -u {name} {shlex.join(sys.argv)}")


pass_context = click.make_pass_decorator(Context)
# An option naming a file that must exist (a Path, never a directory).
EXISTING_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


class StationGroup(click.Group):
    """The command group: a database error in any command (a full disk, a damaged or
    read-only file, a server gone) becomes one line naming the database and what to do
    (exit 1), never a traceback."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except SQLAlchemyError as err:
            raise DatabaseProblem(_database_problem(ctx.obj, err)) from err
        except sqlite3.DatabaseError as err:  # a raw SQLite connection (backups, restore)
            raise DatabaseProblem(_database_problem(ctx.obj, err)) from err


def _database_problem(obj: Context | None, err: BaseException) -> str:
    from daemon.core.db.engine import database_problem

    try:
        config = obj.config if obj is not None else None
    except ConfigError:
        config = None
    if config is None:
        return f"database error: {err}".splitlines()[0]
    return database_problem(err, config.db_url, config.backups_dir)


@click.group(cls=StationGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="config.toml (default: $GENRETAGGER_CONFIG, /etc/genretagger/config.toml)")
@click.version_option(package_name="genretagger")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Suggest genres for the station's music library and learn from reviews."""
    setup_logging()
    ctx.obj = Context(config_path)


def main() -> None:
    try:
        # Commands return an exit code when they have one other than 0.
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except GenretaggerError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
