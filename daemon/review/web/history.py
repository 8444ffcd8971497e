"""The history of decisions, newest first, and undo (of one decision, or the reviewer's
last: the "u" key); above it, the songs that could not be read (quarantined), each with
a "Try again" button for after the fix."""

from __future__ import annotations

from flask import Blueprint, flash, jsonify, render_template, request
from sqlalchemy import func, select

from daemon.core.db.models import Track
from daemon.core.states import WRITE_OUTSTANDING, TrackState
from daemon.review import decisions, listing
from daemon.review.web.common import (
    bad_page,
    go_next,
    here,
    page_number,
    page_url,
    review,
    wants_json,
)
from daemon.review.web.songs import failed, undone
from daemon.suggest.queue import retry_quarantined

bp = Blueprint("history", __name__)

PAGE_SIZE = 50
QUARANTINE_SHOWN = 20
# ?show= value: only the decisions whose genre is not in the file yet.
UNWRITTEN = "unwritten"


@bp.get("/history")
def history():
    page = page_number()
    if page is None:
        return bad_page()
    only = request.args.get("show")
    statuses = WRITE_OUTSTANDING if only == UNWRITTEN else None
    with review().sessions() as db:
        rows, total = listing.list_decisions(db, limit=PAGE_SIZE,
                                             offset=(page - 1) * PAGE_SIZE,
                                             write_status=statuses)
        backlog = listing.write_backlog(db)
        quarantined = db.scalars(
            select(Track).where(Track.state == TrackState.QUARANTINED)
            .order_by(Track.state_changed_at.desc(), Track.id.desc())
            .limit(QUARANTINE_SHOWN)).all()
        quarantined_total = db.scalar(select(func.count()).select_from(Track).where(
            Track.state == TrackState.QUARANTINED)) or 0
    return render_template(
        "history.html", rows=rows, total=total, page=page,
        quarantined=quarantined, quarantined_total=quarantined_total,
        pages=max(1, -(-total // PAGE_SIZE)), only=only,
        backlog=backlog, here=here(), page_url=page_url("history.history"))


@bp.post("/decisions/<id:decision_id>/undo")
def undo(decision_id: int):
    deps = review()
    try:
        decision = decisions.undo(deps.sessions, deps.config, decision_id,
                                  who=deps.config.review.reviewer)
    except decisions.ReviewError as err:
        return failed(err)
    return undone([decision])


@bp.post("/undo-last")
def undo_last():
    """The "u" key: the reviewer's newest decision, or the whole bulk or album action it
    belongs to."""
    deps = review()
    who = deps.config.review.reviewer
    with deps.sessions() as db:
        last = decisions.last_undoable(db, who)
    if last is None:
        return failed(decisions.CannotUndo("nothing to undo"))
    try:
        if last.batch_id is not None:
            made = decisions.undo_batch(deps.sessions, deps.config, last.batch_id, who=who)
        else:
            made = [decisions.undo(deps.sessions, deps.config, last.id, who=who)]
    except decisions.ReviewError as err:
        return failed(err)
    return undone(made)


@bp.post("/quarantined/retry")
def retry():
    """Quarantined songs back to the queue: the one in the form's `path` (stored form), or
    every one with `all=1`."""
    every = request.form.get("all") == "1"
    path = request.form.get("path")
    if not every and not path:
        return _answer(False, "Say which song to try again.", 400)
    done, _left = retry_quarantined(review().sessions, None if every else [path])
    if not done:
        return _answer(False, "That song is not quarantined (any more).", 409)
    return _answer(True, f"{len(done)} song(s) will be tried again." if every
                   else "The song will be tried again.")


def _answer(ok: bool, message: str, status: int = 200):
    if wants_json():
        return jsonify(ok=ok, message=message), status
    flash(message, "message" if ok else "error")
    return go_next(request.form.get("next"))
