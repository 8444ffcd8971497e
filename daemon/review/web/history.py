"""The history of decisions, newest first, and undo (of one decision, or the reviewer's
last: the "u" key)."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from daemon.core.states import WRITE_OUTSTANDING
from daemon.review import decisions, listing
from daemon.review.web.common import bad_page, here, page_number, page_url, review
from daemon.review.web.songs import failed, undone

bp = Blueprint("history", __name__)

PAGE_SIZE = 50
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
    return render_template(
        "history.html", rows=rows, total=total, page=page,
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
