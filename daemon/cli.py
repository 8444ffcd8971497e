"""The `genretagger` command.

Thin: each command parses its options, loads the config when it needs one, calls one
function of the module that owns the job, and prints. Exit codes: 0 ok, 1 failure,
2 usage or config error. `--json` shapes are produced by the owning module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from daemon.config import Config, load_config, render_config
from daemon.errors import ConfigError, GenretaggerError
from daemon.logs import setup_logging


class Context:
    def __init__(self, config_path: Path | None):
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


pass_context = click.make_pass_decorator(Context)


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="config.toml (default: $GENRETAGGER_CONFIG, /etc/genretagger/config.toml)")
@click.version_option(package_name="genretagger")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Suggest genres for the station's music library and learn from reviews."""
    setup_logging()
    ctx.obj = Context(config_path)


@cli.command()
@click.option("--library", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="the music drive")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False),
              help="database, models, feature cache (default: ./genretagger-state)")
@click.option("--force", is_flag=True, help="overwrite an existing config.toml")
@pass_context
def init(ctx: Context, library: Path, state_dir: Path | None, force: bool) -> None:
    """Write a commented config.toml and create the database."""
    from daemon.db.engine import open_database
    from daemon.genres import default_genres_text

    library = library.resolve()
    if not library.is_dir():
        raise ConfigError(f"library {library}: not a directory")
    state_dir = (state_dir or Path("genretagger-state")).resolve()
    path = ctx.config_path or Path("config.toml")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(library, state_dir), encoding="utf-8")
    config = load_config(path)
    if not config.genres_path.exists():
        config.genres_path.write_text(default_genres_text(), encoding="utf-8")
    open_database(config.db_url)
    click.echo(f"wrote {path}\n  library:   {library}\n  state dir: {state_dir}\n"
               f"  database:  {config.db_url}\n  genres:    {config.genres_path}\n"
               f"next: genretagger --config {path} run")


@cli.command("check-config")
@pass_context
def check_config(ctx: Context) -> None:
    """Validate the config file (and genres.toml) without starting anything."""
    from daemon.genres import load_genre_map

    config = ctx.config
    genre_map = load_genre_map(config.genres_path if config.genres_path.exists() else None)
    problems = []
    if not config.library.root.is_dir():
        problems.append(f"library.root {config.library.root}: not a directory (yet?)")
    click.echo(f"config ok: library {config.library.root}, state dir {config.state_dir}, "
               f"{len(genre_map.canonical)} genres")
    for problem in problems:
        click.echo(f"warning: {problem}")


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


if __name__ == "__main__":
    main()
