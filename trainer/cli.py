"""The trainer's commands: `python -m trainer train|evaluate|coldstart ...`.

`genretagger train|evaluate` runs these same commands (daemon.cli imports this module only
when one of them is invoked). Exit codes: 0 ok, 1 failure, 2 usage or config error.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

from daemon.core.errors import ConfigError, GenretaggerError, ModelMismatch
from daemon.service.logs import setup_logging
from trainer.dataset import DatasetError
from trainer.evaluate import evaluate_model
from trainer.tournament import ALL, FAMILIES
from trainer.train import SONGS_PER_EPOCH
from trainer.train import train as _run_training

# Written into --out when the library cannot make a model (DatasetError), with the reason.
NOT_TRAINED = "not_trained.json"

# An option naming a file that must exist (a Path, never a directory).
EXISTING_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)
# What `train` needs beyond the daemon's dependencies: the [trainer] extra.
TRAINER_EXTRA = ("tensorflow", "tf2onnx", "matplotlib")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Train and evaluate genretagger models."""
    setup_logging()  # the retrainer reads the trainer's progress from its log


@cli.command()
@click.option("--library", required=True, type=click.Path(path_type=Path, file_okay=False,
                                                          exists=True),
              help="a tagged library to learn from")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="run directory: model.onnx, model.keras, report.json, plots, split.json")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              help="feature cache (default ~/.cache/genretagger/features)")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--clip-seconds", type=click.FloatRange(0.5, 5.0), default=1.0, show_default=True,
              help="clip length; the seed's 1 s, or 2 s")
@click.option("--windows", type=click.IntRange(1), default=None,
              help="windows per song (CNN clips and backbone patches): the service's "
                   "classifier.windows_per_song [default: 8]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-songs", type=click.IntRange(1), default=20, show_default=True,
              help="genres with fewer songs are left out (and reported)")
@click.option("--min-songs-backbone", type=click.IntRange(1), default=3, show_default=True,
              help="the same for the backbone head (few-shot genres)")
@click.option("--family", type=click.Choice([*FAMILIES, ALL]), default=ALL, show_default=True,
              help="the model family to train; all: the tournament of every family this "
                   "trainer can build, the best one becoming model.onnx")
@click.option("--no-backbone", "no_backbone", is_flag=True,
              help="switch the pretrained backbone off: the CNN alone, no embedding output")
@click.option("--genres", "genres_path", type=EXISTING_FILE,
              help="genres.toml (default: the shipped one)")
@click.option("--labels", "labels_path", type=EXISTING_FILE,
              help="JSON {relative path: genre}: confirmed labels overriding file tags")
@click.option("--warm-start", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="a previous --out directory to continue from (same classes only)")
@click.option("--holdout", "holdout_path", type=EXISTING_FILE,
              help="JSON [relative path, ...]: these songs' artists go to the test split")
@click.option("--known", "known_path", type=EXISTING_FILE,
              help="JSON {relative path: {size, mtime, fingerprint, artist, album, genres}} "
                   "from the daemon: unchanged files are not read again")
@click.option("--not-songs", "not_songs_path", type=EXISTING_FILE,
              help="JSON {relative path: reason} from the daemon: files that are not songs "
                   "(jingles, sweepers), never trained on")
@click.option("--batch-size", type=click.IntRange(1), help="clips per training step")
@click.option("--songs-per-epoch", type=click.IntRange(1), default=SONGS_PER_EPOCH,
              show_default=True, help="the CNN trains on at most this many songs an epoch "
              "(a fresh sample balanced across genres each epoch)")
@click.option("--processes", type=click.IntRange(1), help="decoding processes")
@click.option("--time-budget", "time_budget", type=click.FloatRange(min=0, min_open=True),
              metavar="MINUTES", help="end the run within this: fitting stops early (keeping "
              "its best epoch) to leave time for evaluation and export")
def train(library: Path, out: Path, cache_dir: Path | None, epochs: int, clip_seconds: float,
          windows: int | None, seed: int, min_songs: int, min_songs_backbone: int,
          family: str, no_backbone: bool,
          genres_path: Path | None, labels_path: Path | None,
          warm_start: Path | None, holdout_path: Path | None, known_path: Path | None,
          not_songs_path: Path | None, batch_size: int | None, songs_per_epoch: int,
          processes: int | None, time_budget: float | None) -> int:
    """Train a model on a tagged library and write a calibrated ONNX bundle into --out."""
    # Checked without importing: TensorFlow loads only after decoding is done.
    missing = [m for m in TRAINER_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        click.echo(f"error: training needs the trainer extra ({', '.join(missing)} not "
                   "installed): pip install 'genretagger[trainer]'", err=True)
        return 2
    try:
        report = _run_training(library, out, cache_dir=cache_dir, epochs=epochs,
                               clip_seconds=clip_seconds, seed=seed,
                               **({"windows": windows} if windows else {}), min_songs=min_songs,
                               min_songs_backbone=min_songs_backbone, family=family,
                               backbone=not no_backbone,
                               genres_path=genres_path, labels_path=labels_path,
                               warm_start=warm_start, holdout_path=holdout_path,
                               known_path=known_path, not_songs_path=not_songs_path,
                               batch_size=batch_size, songs_per_epoch=songs_per_epoch,
                               processes=processes, time_budget_minutes=time_budget)
    except DatasetError as err:
        # The library's shape cannot make a model yet: the reason, for the retrainer's run.
        write_not_trained(out, str(err))
        raise
    test = report["metrics"]["test"]
    click.echo(f"model: {out / 'model.onnx'}\n  genres: {', '.join(report['classes'])}\n"
               f"  test songs: {test['n_songs']}, song accuracy {test['song_accuracy']:.1%}, "
               f"macro-F1 {test['macro_f1']:.3f}{_windows(test)}\n"
               f"  temperature {report['temperature']:.3f}; features: "
               f"{report['cache']['decoded']} decoded, {report['cache']['cached']} cached\n"
               f"  tournament: {report['tournament']['winner']} wins: "
               f"{report['tournament']['why']}")
    click.echo(f"  served: {report['served']['songs']} labelled songs, "
               f"{report['served']['how']}")
    for genre, why in (report.get("training_set") or {}).get("not_tested", {}).items():
        click.echo(f"  not tested: {genre} ({why})")
    for genre, left in report["left_out"].items():
        click.echo(f"  left out: {genre} ({left['songs']} songs, needs {left['needs']} more)")
    return 0


def write_not_trained(out: Path, reason: str) -> None:
    """out/not_trained.json {"reason"}: why this library made no model (read by the
    retrainer, which records the night as skipped with that reason)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / NOT_TRAINED).write_text(json.dumps({"reason": reason}), encoding="utf-8")


@cli.command()
@click.option("--model", "model_path", required=True,
              type=EXISTING_FILE)
@click.option("--library", required=True, type=click.Path(path_type=Path, file_okay=False,
                                                          exists=True))
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              help="feature cache (default ~/.cache/genretagger/features)")
@click.option("--genres", "genres_path", type=EXISTING_FILE)
@click.option("--json", "as_json", is_flag=True, help="the full report as JSON")
def evaluate(model_path: Path, library: Path, cache_dir: Path | None,
             genres_path: Path | None, as_json: bool) -> None:
    """Score a model bundle on a tagged library through onnxruntime (the serving path)."""
    try:
        report = evaluate_model(model_path, library, genres_path=genres_path,
                                cache_dir=cache_dir, progress=sys.stderr.isatty() and not as_json)
    except ModelMismatch as err:
        raise click.BadParameter(str(err), param_hint="--model") from None
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    if not report["n_songs"]:
        click.echo("no song of the model's genres in the library: nothing to score")
        return
    click.echo(f"{report['n_songs']} songs: song accuracy {report['accuracy']:.1%}, "
               f"macro-F1 {report['macro_f1']:.3f}{_windows(report)}, ECE {report['ece']:.3f}")
    for genre, m in report["per_class"].items():
        if m["recall"] is None:  # no song of this genre here: never shown as 0
            click.echo(f"  {genre:<16} not tested (no song of this genre)")
            continue
        click.echo(f"  {genre:<16} precision {m['precision']:.2f}  recall {m['recall']:.2f}"
                   f"  F1 {m['f1']:.2f}  songs {m['support']}")
    if report["failed"]:
        click.echo(f"{len(report['failed'])} files could not be read (see --json)")


@cli.command()
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="directory for model.onnx and report.json")
@click.option("--genres", "genres_path", type=EXISTING_FILE,
              help="genres.toml with the [cold_start] table (default: the shipped one)")
def coldstart(out: Path, genres_path: Path | None) -> None:
    """Write the unverified cold-start bundle: backbone MSD tags -> the station's genres.

    Needs the ONNX backbone (`make backbone`), not TensorFlow.
    """
    from daemon.tags.genres import load_genre_map
    from trainer.coldstart import build

    done = build(out, load_genre_map(genres_path))
    click.echo(f"model: {done.path} (cold start, unverified)\n"
               f"  genres: {', '.join(done.classes)}\n"
               f"  no MSD tag (never suggested): {', '.join(done.no_tag) or 'none'}\n"
               f"  parity {done.parity_max_abs_diff:.1e}, {done.seconds:.1f} s")
def _windows(test: dict) -> str:
    """The window accuracy of a one-member family (an ensemble has none of its own)."""
    accuracy = test.get("clip_accuracy")
    return "" if accuracy is None else f", clip accuracy {accuracy:.1%}"


def main(argv: list[str] | None = None) -> None:
    """`python -m trainer`: run one command and exit with its code."""
    try:
        code = cli.main(argv, prog_name="python -m trainer", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 1
    except GenretaggerError as err:
        click.echo(f"error: {err}", err=True)
        code = 2 if isinstance(err, ConfigError) else 1
    sys.exit(code if isinstance(code, int) else 0)
