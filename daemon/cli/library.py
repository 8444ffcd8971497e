"""`genretagger scan`: a read-only inventory of a folder of songs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from daemon.cli.base import EXISTING_FILE, Context, cli, echo_json, pass_context
from daemon.core.config import AUDIO_EXTENSIONS, find_config
from daemon.core.errors import ConfigError

# Each command imports what it works with inside its body: `genretagger --help` or
# `status` takes about 0.3 s that way, against about 2 s with every command's modules
# (onnxruntime, numpy, Flask, the trainer plumbing) imported up front.


@cli.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path, readable=False))
@click.option("--json", "as_json", is_flag=True, help="the inventory as JSON (shape: README)")
@click.option("--genres", "genres_path", help="genres.toml to map with (default: the "
              "station's from the config, else the shipped one)",
              type=EXISTING_FILE)
@click.option("--tags-only", is_flag=True,
              help="read headers only: skip the short decode near each song's end that "
                   "finds truncated files")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True,
              help="files read at once (more helps on a slow network drive)")
@pass_context
def scan(ctx: Context, directory: Path, as_json: bool, genres_path: Path | None,
         tags_only: bool, threads: int) -> int:
    """Inventory DIR read-only: format, duration, raw and canonical genre, errors per file."""
    from daemon.core.paths import relative_inside, stored_path
    from daemon.library.scan import format_text, scan_library
    from daemon.tags.genres import load_genre_map, station_genre_map

    try:
        find_config(ctx.config_path)
    except ConfigError:
        config = None  # no config yet: the shipped genre map and the default extensions
    else:
        config = ctx.config
    if genres_path is not None:
        genre_map = load_genre_map(genres_path)
    else:
        genre_map = station_genre_map(config) if config else load_genre_map()
    extensions = config.library.extensions if config else AUDIO_EXTENSIONS
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a folder"
        raise click.ClickException(f"{directory} {what}")
    rules, under = None, ""
    if config is not None:
        # The patterns are relative to the library root: a folder inside it is matched
        # at its place there; any other folder as if it were the root.
        rules = config.library.song_rules
        inside = relative_inside(os.path.realpath(config.library.root),
                                 os.path.realpath(directory))
        if inside is not None:
            under = stored_path(inside) + "/"
    try:
        report = scan_library(directory, genre_map, progress=sys.stderr.isatty(),
                              extensions=extensions, threads=threads, check_end=not tags_only,
                              rules=rules, under=under)
    except OSError as err:
        raise click.ClickException(f"cannot list {directory}: {err.strerror or err}") from None
    if as_json:
        echo_json(report.to_json())
    else:
        for line in format_text(report):
            click.echo(line)
    return 0
