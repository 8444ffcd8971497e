"""The queue of songs to review and what a reviewer does with one: accept (a choice of the
top three), set another genre, reject, and bulk accept above a confidence.

Review actions are POSTs with a CSRF token; with `Accept: application/json` they answer
JSON (the keyboard script), otherwise they redirect back (plain forms work without
JavaScript). `done` and `failed` are the answer of every decision, here and in history.
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from daemon.core.db.models import Decision, Track
from daemon.core.states import SuggestionStatus
from daemon.review import decisions, listing, songmarks
from daemon.review.web.common import (
    MAX_ROW_ID,
    bad_page,
    go_next,
    here,
    page_number,
    page_url,
    plain,
    review,
    url_pattern,
    wants_json,
)
from daemon.review.web.format import percent
from daemon.review.writeback import file_report, wait_for_files

bp = Blueprint("songs", __name__)

PAGE_SIZE = 50
SORTS = ("confident", "uncertain")
# The bulk confirm page names this many songs; the rest are counted.
BULK_LISTED = 200


def _filter_options(db: Session) -> dict:
    """The filter boxes' choices: a few aggregate queries over every pending suggestion,
    so they are refreshed every few seconds rather than on every keypress."""
    deps = review()

    def make() -> dict:
        paths = db.scalars(select(Track.path).join(Track.suggestions)
                           .where(decisions.waiting_for_review()))
        folders = {PurePosixPath(p).parts[0] for p in paths if "/" in p}
        genres = decisions.canonical_genres(db, deps.live)
        return dict(
            genres=genres, pending_genres=listing.pending_genres(db),
            formats=listing.pending_formats(db), folders=sorted(folders)[:500],
            # Every row repeats this list; built once instead of 50 times a page.
            genre_options=Markup("").join(
                Markup('<option value="{0}">{0}</option>').format(g) for g in genres),
        )
    return deps.filter_options.get_or_make(make)


def _queue_filter() -> listing.QueueFilter:
    args = request.args
    sort = args.get("sort", SORTS[0])
    return listing.QueueFilter(
        status=SuggestionStatus.PENDING, genre=args.get("genre") or None,
        folder=args.get("folder") or None, format=args.get("format") or None,
        sort=sort if sort in SORTS else SORTS[0])


def _song_urls() -> dict:
    """Each row's URLs, from url_for once a page rather than five times a row."""
    return dict(accept_url=url_pattern("songs.accept", "suggestion_id"),
                set_url=url_pattern("songs.set_genre", "suggestion_id"),
                reject_url=url_pattern("songs.reject", "suggestion_id"),
                not_song_url=url_pattern("songs.not_a_song", "suggestion_id"),
                spectrogram_url=url_pattern("media.spectrogram", "track_id"),
                preview_url=url_pattern("media.preview", "track_id"))


@bp.get("/")
def queue():
    f, page = _queue_filter(), page_number()
    if page is None:
        return bad_page()
    deps = review()
    with deps.sessions() as db:
        rows, total = listing.list_suggestions(db, f, limit=PAGE_SIZE,
                                               offset=(page - 1) * PAGE_SIZE)
        context = dict(
            rows=rows, total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)),
            sounds_like=listing.sounds_like(db, (s for s, _ in rows)),
            unverified=listing.unverified_model_ids(db),
            filter=f, **_filter_options(db), **_song_urls(), csrf=generate_csrf(),
            backlog=listing.write_backlog(db), write_tags=deps.config.review.write_tags,
            page_url=page_url("songs.queue"), here=here(),
        )
    return render_template("queue.html", **context)


@bp.get("/bulk")
def bulk_confirm():
    try:
        threshold = float(request.args.get("threshold", "0.9"))
    except ValueError:
        threshold = -1.0
    if threshold > 1.0:  # typed as a percentage
        threshold /= 100.0
    if not 0.0 <= threshold <= 1.0:
        return plain(400, "How sure must be a number between 0 and 100.")
    deps = review()
    with deps.sessions() as db:
        count, up_to_id = listing.count_above(db, threshold)
        by_genre = listing.pending_genres(db, min_confidence=threshold)
        songs = listing.bulk_songs(db, threshold, up_to_id, BULK_LISTED)
    return render_template("bulk.html", threshold=threshold, count=count, up_to_id=up_to_id,
                           by_genre=by_genre, songs=songs,
                           files=count if deps.config.review.write_tags else 0)


def done(made: list[Decision], message: str, *, notified: bool = False):
    """The answer to a stored decision: JSON with the decisions, or back to the page."""
    deps = review()
    if not notified:
        deps.notify()
    if wants_json():
        with deps.sessions() as db:
            tracks = {t.id: t for t in db.scalars(select(Track).where(
                Track.id.in_([d.track_id for d in made])))}
        return jsonify(ok=True, message=message,
                       batch_id=made[0].batch_id if made else None, decisions=[
                           listing.decision_json(d, tracks[d.track_id]) for d in made])
    flash(message)
    return go_next(request.form.get("next"))


def after_undo(made: list[Decision]) -> tuple[list[Decision], str]:
    """An undo's decisions once the writer has put their files back (it is woken and
    waited for, a few seconds at most, when it runs here), and the message saying what
    each file reads now: read from the file after the write, never assumed."""
    deps = review()
    deps.notify()
    if deps.decision_made is not None:
        made = wait_for_files(deps.sessions, [d.id for d in made])
    reports = Counter(file_report(d) for d in made)
    said = "; ".join(what if n == 1 else f"{what} ({n} songs)"
                     for what, n in reports.items() if what)
    message = f"Undone ({len(made)} song{'s' if len(made) != 1 else ''})."
    return made, message + (f" {said[0].upper()}{said[1:]}." if said else "")


def undone(made: list[Decision]):
    """The answer to an undo (one decision or a whole batch). The keyboard script reloads
    the page after an undo, so the message waits for that page too."""
    made, message = after_undo(made)
    if wants_json():
        flash(message)
    return done(made, message, notified=True)


def failed(err: decisions.ReviewError):
    """The answer to a decision that could not be made: 404, 409 or 400 with the reason."""
    status = 404 if isinstance(err, decisions.NotFound) \
        else 409 if isinstance(err, (decisions.NotPending, decisions.CannotUndo)) else 400
    if wants_json():
        return jsonify(ok=False, error=str(err)), status
    flash(str(err), "error")
    return go_next(request.form.get("next"))


@bp.post("/suggestions/<id:suggestion_id>/accept")
def accept(suggestion_id: int):
    deps = review()
    try:
        choice = int(request.form.get("choice", 1))
        made = decisions.accept(deps.sessions, deps.config, [suggestion_id],
                                who=deps.config.review.reviewer, choice=choice)
    except ValueError:
        return failed(decisions.ReviewError("choice must be 1, 2 or 3"))
    except decisions.ReviewError as err:
        return failed(err)
    return done(made, f"Accepted {made[0].genre}.")


@bp.post("/suggestions/<id:suggestion_id>/set")
def set_genre(suggestion_id: int):
    deps = review()
    try:
        decision = decisions.override(deps.sessions, deps.config, suggestion_id,
                                      request.form.get("genre", ""),
                                      who=deps.config.review.reviewer)
    except decisions.ReviewError as err:
        return failed(err)
    return done([decision], f"Set to {decision.genre}.")


@bp.post("/suggestions/<id:suggestion_id>/reject")
def reject(suggestion_id: int):
    deps = review()
    try:
        made = decisions.reject(deps.sessions, deps.config, [suggestion_id],
                                who=deps.config.review.reviewer)
    except decisions.ReviewError as err:
        return failed(err)
    return done(made, "Marked as not this genre; the song stays without one.")


@bp.post("/suggestions/<id:suggestion_id>/not-a-song")
def not_a_song(suggestion_id: int):
    deps = review()
    try:
        made = songmarks.mark_suggestion(deps.sessions, deps.config, suggestion_id,
                                         who=deps.config.review.reviewer)
    except decisions.ReviewError as err:
        return failed(err)
    return done([made], "Marked not a song: it leaves the queue and is never learned from.")


@bp.post("/bulk")
def bulk_accept():
    deps = review()
    try:
        threshold = float(request.form["threshold"])
        up_to_id = int(request.form["up_to_id"])
        if not 0 <= up_to_id <= MAX_ROW_ID:
            raise ValueError(up_to_id)
        made = decisions.bulk_accept(deps.sessions, deps.config, threshold,
                                     who=deps.config.review.reviewer, up_to_id=up_to_id)
    except (KeyError, ValueError):
        return failed(decisions.ReviewError("the bulk form was incomplete; try again"))
    except decisions.ReviewError as err:
        return failed(err)
    deps.notify()
    message = f"Accepted {len(made)} suggestion(s) at least {percent(threshold)} sure."
    batch = made[0].batch_id if made else None
    if batch:
        message += " Press u to undo them all in one step."
    if wants_json():
        return jsonify(ok=True, message=message, count=len(made), batch_id=batch)
    flash(message)
    return redirect(url_for("songs.queue"), 303)
