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

from daemon.core.config import Config, load_config, render_config
from daemon.core.errors import ConfigError, GenretaggerError
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
        from daemon.core.db.engine import open_database

        refuse_root_in_service_state(self.config.state_dir)
        return open_database(self.config.db_url, upgrade=False,
                             busy_timeout=self.config.database_busy_seconds)


def refuse_root_in_service_state(state_dir: Path) -> None:
    """Root must not work in a state dir another user (the service's) owns.

    `sudo genretagger status` would leave root-owned files there (the database's -wal
    and -shm, a migration backup, model files) that the service cannot open: it would
    fail at its next start. The error says which command to run instead.
    """
    import os
    import pwd
    import shlex

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
    from daemon.core.db.engine import open_database
    from daemon.tags.genres import default_genres_text

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
    from daemon.tags.genres import load_genre_map

    config = ctx.config
    genre_map = load_genre_map(config.genres_path if config.genres_path.exists() else None)
    problems = []
    if not config.library.root.is_dir():
        problems.append(f"library.root {config.library.root}: not a directory (yet?)")
    click.echo(f"config ok: library {config.library.root}, state dir {config.state_dir}, "
               f"{len(genre_map.canonical)} genres")
    for problem in problems:
        click.echo(f"warning: {problem}")


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
    from daemon.core.config import AUDIO_EXTENSIONS, find_config
    from daemon.library.scan import format_text, load_scan_genre_map, scan_library

    try:
        find_config(ctx.config_path)
    except ConfigError:
        config = None  # no config yet: the shipped genre map and the default extensions
    else:
        config = ctx.config
    genre_map = load_scan_genre_map(genres_path, config.genres_path if config else None)
    extensions = config.library.extensions if config else AUDIO_EXTENSIONS
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a folder"
        raise click.ClickException(f"{directory} {what}")
    try:
        report = scan_library(directory, genre_map, progress=sys.stderr.isatty(),
                              extensions=extensions, threads=threads, check_end=not tags_only)
    except OSError as err:
        raise click.ClickException(f"cannot list {directory}: {err.strerror or err}") from None
    if as_json:
        echo_json(report.to_json())
    else:
        for line in format_text(report):
            click.echo(line)
    return 0


@cli.command()
@pass_context
def run(ctx: Context) -> int:
    """Run the service in the foreground (systemd: Type=notify). SIGTERM stops, SIGHUP reloads."""
    from daemon.service.wiring import Service

    config = ctx.config
    setup_logging(config.log_level)
    refuse_root_in_service_state(config.state_dir)
    return Service(config, ctx.config_path).run()


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="the stable JSON shape (documented in daemon/service/status.py)")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Is the daemon running, what is queued, the model, quarantined files."""
    from daemon.service.status import collect_status, render_status

    config = ctx.config
    engine, sessions = ctx.database()
    try:
        data = collect_status(config, sessions)
    finally:
        engine.dispose()
    if as_json:
        echo_json(data)
    else:
        click.echo(render_status(data))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False), help="a model bundle (.onnx)")
@click.option("--json", "as_json", is_flag=True, help="JSON: {model, files: [...]}")
def classify(files: tuple[Path, ...], model_path: Path, as_json: bool) -> int:
    """Top-3 genres with calibrated confidences for each FILE (exit 1 if any file failed)."""
    import os

    import numpy as np

    from daemon.audio.extract import ExtractPool
    from daemon.audio.features import FeatureSpec
    from daemon.core.errors import FileError, ModelMismatch
    from daemon.suggest.classifier import Classifier, read_metadata

    try:
        # The bundle's own spec: the command computes whatever features the model wants.
        spec = FeatureSpec.from_json(json.dumps(read_metadata(model_path)["feature_spec"]))
        classifier = Classifier.load(model_path, spec)
    except (ModelMismatch, KeyError, TypeError, ValueError) as err:
        raise click.BadParameter(str(err), param_hint="--model") from None
    results: dict[str, dict] = {}
    features: dict[str, np.ndarray] = {}
    # Child processes: a decoder that crashes or hangs on one file fails only that file.
    with ExtractPool(min(len(files), os.cpu_count() or 1), spec) as pool:
        for path, result in pool.map([str(f) for f in files]):
            if isinstance(result, FileError):
                results[str(path)] = {"path": str(path), "genres": [], "error": result.reason}
            else:
                features[str(path)] = result.features
    decoded = list(features)
    for start in range(0, len(decoded), 32):  # clips of 32 songs per onnxruntime run
        batch = decoded[start:start + 32]
        for path, row in zip(batch, classifier.predict_songs([features[p] for p in batch]),
                             strict=True):
            results[path] = {"path": path, "error": None, "genres": [
                {"genre": g, "confidence": round(c, 4)} for g, c in classifier.top(row)]}
    rows = [results[str(f)] for f in files]
    if as_json:
        echo_json({"model": {"path": str(model_path), "sha256": classifier.sha256,
                             "classes": list(classifier.classes),
                             "temperature": classifier.temperature},
                   "files": rows})
    else:
        for row in rows:
            if row["error"]:
                click.echo(f"{row['path']}: error: {row['error']}", err=True)
            else:
                click.echo(f"{row['path']}: " + ", ".join(
                    f"{g['genre']} {g['confidence']:.1%}" for g in row["genres"]))
    return 1 if any(row["error"] for row in rows) else 0


# `train` and `evaluate` are the trainer's commands (trainer.cli). trainer is imported only
# when one of them runs: it needs TensorFlow and the [trainer] extra, which the daemon
# never loads. Options, --help and errors are the trainer's own.
TRAINER_COMMAND = {"context_settings": {"ignore_unknown_options": True},
                   "add_help_option": False}


def run_trainer_command(name: str, args: tuple[str, ...]) -> int:
    """Run trainer.cli's command `name` with `args`, under this command's name."""
    from trainer.cli import cli as trainer_cli

    prog = click.get_current_context().find_root().info_name
    return trainer_cli.main([name, *args], prog_name=prog, standalone_mode=False)


@cli.command(**TRAINER_COMMAND)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args: tuple[str, ...]) -> int:
    """Train a model on a tagged library and write a calibrated ONNX bundle into --out."""
    return run_trainer_command("train", args)


@cli.command(**TRAINER_COMMAND)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate(args: tuple[str, ...]) -> int:
    """Score a model bundle on a tagged library through onnxruntime (the serving path)."""
    return run_trainer_command("evaluate", args)


# ---- retraining and the model registry (daemon.learn.retrainer, daemon.learn.registry) --

@cli.command()
@click.option("--now", is_flag=True,
              help="train now in the foreground (trainer subprocess), gate, activate")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def retrain(ctx: Context, now: bool, as_json: bool) -> int:
    """Show what the nightly retraining would do, or (--now) retrain immediately."""
    from daemon.core.db.models import utcnow
    from daemon.learn.retrainer import Retrainer
    from daemon.learn.runs import last_run, run_summary
    from daemon.service.status import next_retrain

    config = ctx.config
    _engine, sessions = ctx.database()
    retrainer = Retrainer(config, sessions)
    if now:
        try:
            result = retrainer.run("manual")
        finally:
            retrainer.close()
        if as_json:
            echo_json(result)
        else:
            click.echo(f"run {result['id']}: {result['status']}: {result['reason']}")
            if result.get("log_path"):
                click.echo(f"trainer log: {result['log_path']}")
        return 0 if result["status"] in ("promoted", "rejected", "skipped") else 1
    train, reason, facts = retrainer.decide()
    with sessions() as session:
        last = last_run(session)
        nightly = next_retrain(session, config, utcnow())
        data = {"would_train": train, "reason": reason, **facts,
                "last_run": run_summary(last) if last else None,
                "next_nightly": nightly.isoformat() if nightly else None}
    if as_json:
        echo_json(data)
        return 0
    click.echo(f"policy: {'would train' if train else 'would skip'}: {reason}")
    if last is not None:
        click.echo(f"last run: {last.started_at.astimezone():%Y-%m-%d %H:%M} {last.status}: "
                   f"{last.reason}")
    click.echo("next nightly run: " + (f"{nightly.astimezone():%Y-%m-%d %H:%M}" if nightly
                                       else "disabled (retrain.enabled = false)"))
    return 0


@cli.group()
def models() -> None:
    """The model registry: list, show, activate, roll back."""


def _models_sessions(ctx: Context):
    return ctx.database()[1]


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def models_list(ctx: Context, as_json: bool) -> None:
    """Every model version: date, data size, metrics, status."""
    from daemon.learn.registry import list_models, model_summary

    with _models_sessions(ctx)() as session:
        rows = [model_summary(m) for m in list_models(session)]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no models yet (genretagger retrain --now trains the first one)")
        return
    click.echo(f"{'version':>7}  {'status':<11} {'created':<16}  {'songs':>6}  {'acc':>5}  "
               f"{'F1':>5}  classes")
    for m in rows:
        acc = f"{100 * m['accuracy']:.1f}" if m["accuracy"] is not None else "-"
        f1 = f"{100 * m['macro_f1']:.1f}" if m["macro_f1"] is not None else "-"
        created = m["created_at"][:16].replace("T", " ") if m["created_at"] else "-"
        click.echo(f"{m['version']:>7}  {m['status']:<11} {created:<16}  {m['n_songs']:>6}  "
                   f"{acc:>5}  {f1:>5}  {len(m['classes'])}")


@models.command("show")
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def models_show(ctx: Context, version: int, as_json: bool) -> None:
    """One model version in detail (per-genre metrics)."""
    from daemon.learn.registry import get_model, model_details

    with _models_sessions(ctx)() as session:
        data = model_details(get_model(session, version))
    if as_json:
        echo_json(data)
        return
    for key in ("version", "status", "created_at", "activated_at", "trained_until", "n_songs",
                "accuracy", "macro_f1", "path", "report_path"):
        click.echo(f"{key + ':':<15}{data[key]}")
    click.echo(f"{'classes:':<15}{', '.join(data['classes'])}")
    per_class = data["metrics"].get("per_class", {})
    if per_class:
        click.echo(f"{'genre':<16}{'precision':>10}{'recall':>8}{'f1':>7}{'songs':>7}")
        for genre, m in per_class.items():
            click.echo(f"{genre:<16}{m['precision']:>10.2f}{m['recall']:>8.2f}{m['f1']:>7.2f}"
                       f"{m['support']:>7}")


@models.command("activate")
@click.argument("version", type=int)
@pass_context
def models_activate(ctx: Context, version: int) -> None:
    """Make VERSION the active model (the daemon switches between batches)."""
    from daemon.learn.registry import activate

    model = activate(_models_sessions(ctx), version)
    click.echo(f"model v{model.version:04d} is active")


@models.command("rollback")
@pass_context
def models_rollback(ctx: Context) -> None:
    """Re-activate the model that was active before the current one."""
    from daemon.learn.registry import rollback

    model = rollback(_models_sessions(ctx))
    click.echo(f"rolled back: model v{model.version:04d} is active")


@cli.group("review")
def review_group() -> None:
    """Review suggested genres from the shell.

    accept / set / reject take SUGGESTION ids (the first column of `review list`);
    undo takes a DECISION id (the first column of `review history`).
    """


def _review_sessions(ctx: Context):
    return ctx.database()[1]


def _cli_reviewer() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):
        return "command line"


def _echo_decisions(sessions, decisions, as_json: bool) -> None:
    from daemon.core.db.models import Track
    from daemon.review.decisions import decision_json

    with sessions() as session:
        rows = [decision_json(d, session.get(Track, d.track_id)) for d in decisions]
    if as_json:
        echo_json({"decisions": rows})
        return
    for row in rows:
        what = {"accept": f"accepted {row['genre']}", "override": f"set {row['genre']}",
                "reject": "rejected", "undo": f"undid decision {row['undoes_id']}"}[row["action"]]
        write = "" if row["write_status"] in ("none",) else f" [file: {row['write_status']}]"
        click.echo(f"decision {row['id']}: {what} for {row['path']}{write}")


@review_group.command("list")
@click.option("--genre", help="only this suggested genre")
@click.option("--min-confidence", type=click.FloatRange(0, 1), help="only at least this sure (0-1)")
@click.option("--state", default="pending", show_default=True,
              type=click.Choice(["pending", "accepted", "overridden", "rejected", "superseded",
                                 "all"]), help="suggestion state")
@click.option("--folder", help="only songs under this library folder")
@click.option("--format", "fmt", help="only this file format (mp3, flac, ...)")
@click.option("--sort", default="confident", show_default=True,
              type=click.Choice(["confident", "uncertain", "newest"]))
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True,
              help='{"total": n, "suggestions": [...]} (shape: daemon/review/decisions.py)')
@pass_context
def review_list(ctx: Context, genre: str | None, min_confidence: float | None, state: str,
                folder: str | None, fmt: str | None, sort: str, limit: int, offset: int,
                as_json: bool) -> None:
    """Suggestions waiting for review (or in another state), most sure first."""
    from daemon.review.decisions import QueueFilter, list_suggestions, suggestion_json

    f = QueueFilter(status=state, genre=genre, min_confidence=min_confidence, folder=folder,
                    format=fmt, sort=sort)
    with _review_sessions(ctx)() as session:
        rows, total = list_suggestions(session, f, limit=limit, offset=offset)
        data = [suggestion_json(s, t) for s, t in rows]
    if as_json:
        echo_json({"total": total, "suggestions": data})
        return
    click.echo(f"{total} suggestion(s){'' if total <= len(data) else f', showing {len(data)}'}")
    for row in data:
        top = ", ".join(f"{t['genre']} {100 * t['confidence']:.0f}%" for t in row["top"])
        click.echo(f"{row['id']:>7}  {100 * row['confidence']:>3.0f}%  {row['genre']:<12} "
                   f"[{top}]  {row['path']}")


@review_group.command("accept")
@click.argument("ids", metavar="SUGGESTION_ID...", nargs=-1, type=int)
@click.option("--all-above", type=click.FloatRange(0, 1), metavar="X",
              help="accept every pending suggestion at least this sure (0-1)")
@click.option("--choice", type=click.IntRange(1, 3), default=1, show_default=True,
              help="which of the top-3 genres to accept")
@click.option("--yes", is_flag=True, help="do not ask before a bulk accept")
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_accept(ctx: Context, ids: tuple[int, ...], all_above: float | None, choice: int,
                  yes: bool, as_json: bool) -> None:
    """Accept suggestions by SUGGESTION id, or all above a confidence with --all-above."""
    from daemon.review import decisions as review

    if bool(ids) == (all_above is not None):
        raise click.UsageError("give suggestion ids or --all-above X (not both)")
    sessions = _review_sessions(ctx)
    who = _cli_reviewer()
    if ids:
        decisions = review.accept(sessions, ctx.config, ids, who=who, choice=choice)
    else:
        with sessions() as session:
            count, up_to_id = review.count_above(session, all_above)
        click.echo(f"{count} pending suggestion(s) are at least {100 * all_above:g}% sure",
                   err=as_json)
        if count == 0:
            decisions = []
        elif not yes and not click.confirm(f"accept all {count}?", err=as_json):
            raise click.exceptions.Abort()
        else:
            decisions = review.bulk_accept(sessions, ctx.config, all_above, who=who,
                                           up_to_id=up_to_id)
    _echo_decisions(sessions, decisions, as_json)


@review_group.command("set")
@click.argument("suggestion_id", type=int)
@click.argument("genre")
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_set(ctx: Context, suggestion_id: int, genre: str, as_json: bool) -> None:
    """Give the song of SUGGESTION_ID another genre (one of the station's genres)."""
    from daemon.review.decisions import override

    sessions = _review_sessions(ctx)
    decision = override(sessions, ctx.config, suggestion_id, genre, who=_cli_reviewer())
    _echo_decisions(sessions, [decision], as_json)


@review_group.command("reject")
@click.argument("ids", metavar="SUGGESTION_ID...", nargs=-1, type=int, required=True)
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_reject(ctx: Context, ids: tuple[int, ...], as_json: bool) -> None:
    """None of the suggested genres fit: the song stays without one."""
    from daemon.review.decisions import reject

    sessions = _review_sessions(ctx)
    _echo_decisions(sessions, reject(sessions, ctx.config, ids, who=_cli_reviewer()), as_json)


@review_group.command("undo")
@click.argument("decision_id", type=int)
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_undo(ctx: Context, decision_id: int, as_json: bool) -> None:
    """Undo DECISION_ID (see `review history`); a genre already written is put back."""
    from daemon.review.decisions import undo

    sessions = _review_sessions(ctx)
    decision = undo(sessions, ctx.config, decision_id, who=_cli_reviewer())
    _echo_decisions(sessions, [decision], as_json)


@review_group.command("history")
@click.option("--limit", type=click.IntRange(1), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='{"total": n, "decisions": [...]}')
@pass_context
def review_history(ctx: Context, limit: int, as_json: bool) -> None:
    """The newest decisions (the audit log), with their ids for `review undo`."""
    from daemon.review.decisions import decision_json, list_decisions

    with _review_sessions(ctx)() as session:
        rows, total = list_decisions(session, limit=limit)
        data = [decision_json(d, t) for d, t in rows]
    if as_json:
        echo_json({"total": total, "decisions": data})
        return
    for row in data:
        undone = " (undone)" if row["undone"] else ""
        click.echo(f"{row['id']:>7}  {row['at'][:16].replace('T', ' ')}  {row['action']:<8} "
                   f"{row['genre'] or '-':<12} file:{row['write_status']:<8} {row['who']}  "
                   f"{row['path']}{undone}")


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
