"""`genretagger init`, `check-config`, `hash-password`: setting the station up."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from daemon.cli.base import Context, cli, pass_context
from daemon.core.config import parse_config, render_config
from daemon.core.errors import ConfigError

# Each command imports what it works with inside its body: `genretagger --help` or
# `status` takes about 0.3 s that way, against about 2 s with every command's modules
# (onnxruntime, numpy, Flask, the trainer plumbing) imported up front.


@cli.command()
@click.option("--library", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="the music drive")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="database, models, feature cache (default: ./genretagger-state)")
@click.option("--database-url", metavar="URL",
              help="a PostgreSQL database for several hosts, postgresql+psycopg://user:"
                   "password@host/database (default: SQLite in the state dir)")
@click.option("--force", is_flag=True, help="overwrite an existing config.toml")
@pass_context
def init(ctx: Context, library: Path, state_dir: Path | None, database_url: str | None,
         force: bool) -> None:
    """Write a commented config.toml and create the database."""
    from daemon.core.db.engine import display_url, open_database
    from daemon.tags.genres import default_genres_text

    library = library.resolve()
    if not library.is_dir():
        raise ConfigError(f"library {library}: not a directory")
    state_dir = (state_dir or Path("genretagger-state")).resolve()
    path = ctx.config_path or Path("config.toml")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    state_dir.mkdir(parents=True, exist_ok=True)
    text = render_config(library, state_dir, database_url)
    # Checked before anything is written: a mistyped URL leaves no config behind.
    config = parse_config(tomllib.loads(text), str(path))
    engine, _ = open_database(config.db_url)  # DatabaseUnreachable names server and reason
    engine.dispose()
    path.write_text(text, encoding="utf-8")
    if not config.genres_path.exists():
        config.genres_path.write_text(default_genres_text(), encoding="utf-8")
    click.echo(f"wrote {path}\n  library:   {library}\n  state dir: {state_dir}\n"
               f"  database:  {display_url(config.db_url)}\n  genres:    {config.genres_path}\n"
               f"next: genretagger --config {path} run")


@cli.command("check-config")
@pass_context
def check_config(ctx: Context) -> None:
    """Validate the config file (and genres.toml) without starting anything."""
    from daemon.tags.genres import station_genre_map

    config = ctx.config
    genre_map = station_genre_map(config)
    problems = []
    if not config.library.root.is_dir():
        problems.append(f"library.root {config.library.root}: not a directory (yet?)")
    problems += _database_problems(config.db_url)
    click.echo(f"config ok: library {config.library.root}, state dir {config.state_dir}, "
               f"{len(genre_map.canonical)} genres")
    for problem in problems:
        click.echo(f"warning: {problem}")


def _database_problems(url: str) -> list[str]:
    """A database server (PostgreSQL) named in the config that cannot be reached; a
    SQLite file is created when needed, so there is nothing to check for it."""
    from daemon.core.db.engine import display_url, is_postgresql, make_engine

    if not is_postgresql(url):
        return []
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = make_engine(url, connect_timeout=5)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", err)).strip().splitlines()
        return [f"database_url {display_url(url)}: cannot reach it: "
                f"{reason[0] if reason else err}"]
    finally:
        engine.dispose()
    return []


@cli.command("hash-password")
def hash_password() -> None:
    """Print a hash of a new review-page password for config.toml's [review] password_hash."""
    from werkzeug.security import generate_password_hash

    password = click.prompt("review page password", hide_input=True,
                            confirmation_prompt=True, err=True)
    if len(password) < 8:
        raise click.UsageError("use at least 8 characters")
    click.echo(generate_password_hash(password))
    click.echo("put it in config.toml under [review]: password_hash = \"<the line above>\"",
               err=True)
