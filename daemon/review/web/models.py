"""The models page: every model version with its scores, the chosen one's confusion
matrix, and when the nightly retrain last ran and runs next."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, render_template, request

from daemon.learn import registry, runs
from daemon.learn.registry import list_models
from daemon.learn.runs import last_run
from daemon.review.web.common import review
from daemon.service.scheduler import next_nightly_run, nightly_history

bp = Blueprint("models", __name__)

# What the station calls each model status and each retrain outcome.
MODEL_STATUS = {registry.ACTIVE: "In use", registry.RETIRED: "Replaced",
                registry.REJECTED: "Not good enough", registry.CANDIDATE: "Being checked",
                registry.ROLLED_BACK: "Rolled back"}
RUN_OUTCOME = {runs.PROMOTED: "the new version is now in use",
               runs.REJECTED: "the new version was not better, so the old one stays in use",
               runs.FAILED: "it did not finish", runs.SKIPPED: "nothing new to learn from",
               runs.RUNNING: "still learning"}


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
    return render_template("models.html", models=all_models, chosen=chosen,
                           matrix=confusion(chosen), last_run=last, next_run=next_run,
                           model_status=MODEL_STATUS, outcomes=RUN_OUTCOME)


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
