"""`genretagger models`: the model registry (list, show, activate, roll back)."""

from __future__ import annotations

import click

from daemon.cli.base import Context, cli, echo_json, pass_context

# Each command imports what it works with inside its body: `genretagger --help` or
# `status` takes about 0.3 s that way, against about 2 s with every command's modules
# (onnxruntime, numpy, Flask, the trainer plumbing) imported up front.


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
    """One model version in detail: per-genre metrics, the tournament table of the night
    it was trained, and the genres it cannot suggest yet (with the songs each needs)."""
    from daemon.learn.coldstart import is_unverified
    from daemon.learn.labels import station_cannot_suggest
    from daemon.learn.registry import get_model, model_details
    from daemon.learn.report import (
        cannot_suggest_lines,
        context_lines,
        model_report_facts,
        served_lines,
        tournament_lines,
        verdict,
    )

    with _models_sessions(ctx)() as session:
        model = get_model(session, version)
        data = model_details(model)
        facts = model_report_facts(model)
        data["tournament"] = facts["tournament"]
        data["left_out"] = facts["left_out"]
        data["context"] = facts["context"]
        data["served"], data["not_tested"] = facts["served"], facts["not_tested"]
        data["cannot_suggest_yet"] = station_cannot_suggest(session, ctx.config,
                                                            model.classes or [])
        data["verdict"] = verdict(list(model.classes or []), data["cannot_suggest_yet"],
                                  model.metrics or {}, unverified=is_unverified(model))
    if as_json:
        echo_json(data)
        return
    click.echo(data["verdict"])
    for key in ("version", "status", "created_at", "activated_at", "trained_until", "n_songs",
                "accuracy", "macro_f1", "path", "report_path"):
        click.echo(f"{key + ':':<15}{data[key]}")
    click.echo(f"{'classes:':<15}{', '.join(data['classes'])}")
    if data["unverified"]:
        click.echo(f"{'unverified:':<15}yes: the cold start (MSD tags mapped by genres.toml), "
                   "never measured on the station's songs; the first trained model replaces it")
    per_class = data["metrics"].get("per_class", {})
    if per_class:
        click.echo(f"{'genre':<16}{'precision':>10}{'recall':>8}{'f1':>7}{'songs':>7}")
        for genre, m in per_class.items():
            if m.get("recall") is None or not m.get("support"):  # no test song of it
                click.echo(f"{genre:<16}{'not tested':>25}{m.get('support', 0):>7}")
                continue
            click.echo(f"{genre:<16}{m['precision']:>10.2f}{m['recall']:>8.2f}{m['f1']:>7.2f}"
                       f"{m['support']:>7}")
    for line in (served_lines(data["served"], data["not_tested"])
                 + tournament_lines(data["tournament"]) + context_lines(data["context"])):
        click.echo(line)
    if data["cannot_suggest_yet"]:
        click.echo("cannot suggest yet (too few confirmed or tagged songs):")
        for line in cannot_suggest_lines(data["cannot_suggest_yet"]):
            click.echo(line)


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
