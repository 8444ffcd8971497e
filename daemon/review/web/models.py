"""The models page in the director's words: a one-line verdict on the chosen model (how
many of the station's genres it suggests, right on how many test songs), the genres it
cannot suggest yet, its figures genre by genre with the test songs behind each, what it
confuses, every version, and when it learns next; the statistics behind a disclosure."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, render_template, request

from daemon.learn import registry, runs
from daemon.learn.coldstart import is_unverified
from daemon.learn.labels import station_cannot_suggest
from daemon.learn.registry import list_models
from daemon.learn.report import genre_figures, model_report_facts, recall_table, verdict
from daemon.learn.runs import last_run
from daemon.learn.schedule import next_nightly_run, nightly_history
from daemon.review.web.common import review

bp = Blueprint("models", __name__)

# What the station calls each model status and each retrain outcome.
MODEL_STATUS = {registry.ACTIVE: "In use", registry.RETIRED: "Replaced",
                registry.REJECTED: "Not good enough", registry.CANDIDATE: "Being checked",
                registry.ROLLED_BACK: "Rolled back"}
RUN_OUTCOME = {runs.PROMOTED: "the new version is now in use",
               runs.REJECTED: "the new version was not better, so the old one stays in use",
               runs.FAILED: "it did not finish", runs.SKIPPED: "nothing new to learn from",
               runs.RUNNING: "still learning"}
# Each kind of model the trainer builds, in words (the details name the family too).
FAMILY_WORDS = {"cnn": "a network that learned your songs' sound",
                "backbone": "a general music model with a last layer learned from your songs",
                "ensemble": "the two above together",
                "coldstart": "a general music model, not yet taught by your songs"}


@bp.get("/models")
def models():
    deps = review()
    with deps.sessions() as db:
        all_models = list_models(db)
        last = last_run(db)
        next_run = next_nightly_run(deps.config.retrain, datetime.now().astimezone(),
                                    nightly_history(db))
    chosen = None
    version = request.args.get("version", type=int)
    for model in all_models:
        if (version is not None and model.version == version) or \
                (version is None and model.status == registry.ACTIVE):
            chosen = model
            break
    if chosen is None and all_models and version is None:
        chosen = all_models[0]
    with deps.sessions() as db:
        # Live: the songs each genre has now, against the chosen model's genres.
        cannot = station_cannot_suggest(db, deps.config, chosen.classes or [] if chosen else [])
    facts = model_report_facts(chosen) if chosen else {}
    metrics = (chosen.metrics or {}) if chosen else {}
    return render_template(
        "models.html", models=all_models, chosen=chosen, matrix=confusion(chosen),
        last_run=last, next_run=next_run, model_status=MODEL_STATUS, outcomes=RUN_OUTCOME,
        tournament=tournament_table(facts.get("tournament")), cannot_suggest=cannot,
        verdict=verdict(list(chosen.classes or []), cannot, metrics,
                        unverified=is_unverified(chosen)) if chosen else None,
        figures=genre_figures(metrics, facts.get("not_tested")), served=facts.get("served"),
        family_words=FAMILY_WORDS)


def tournament_table(tournament: dict | None) -> dict | None:
    """The tournament for the template: rows as recorded, and per genre each family's
    recall in words ("not tested" for a genre with no holdout song, never 0%)."""
    if not tournament or not tournament.get("rows"):
        return None
    return {"holdout_songs": tournament.get("holdout_songs"),
            "winner": tournament.get("winner"), "why": tournament.get("why"),
            "rows": tournament["rows"], "recall": recall_table(tournament)}


def confusion(model) -> dict | None:
    """The chosen model's confusion matrix for the template: genres, rows of (count,
    shade 0-9) with shade relative to the row's total, or None when not recorded."""
    if model is None:
        return None
    metrics = model.metrics or {}
    matrix = metrics.get("confusion")
    genres = metrics.get("genres") or list(model.classes or [])
    if not matrix or len(matrix) != len(genres):
        return None
    rows = []
    for genre, counts in zip(genres, matrix, strict=True):
        total = sum(counts) or 1
        rows.append((genre, [(int(c), min(9, int(10 * c / total))) for c in counts]))
    return {"genres": genres, "rows": rows}
