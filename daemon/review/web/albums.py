"""The review page "By album": one row per album with songs waiting for review, accept one
genre for the whole album or for the agreeing songs, the album consistency audit ("use X
for all"), and the undo of a whole album action.

Every album action goes through a confirm page that says how many songs get the genre and
how many files will be written (like the bulk accept); the confirmed form carries the
highest suggestion id it counted, so songs suggested meanwhile are not decided unseen.
Posts answer JSON to the keyboard script (`Accept: application/json`), else redirect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlencode

from flask import Blueprint, current_app, flash, jsonify, render_template, request, url_for
from flask_wtf.csrf import generate_csrf
from werkzeug.routing import BaseConverter

from daemon.core.db.models import Decision
from daemon.review import albums, decisions, listing
from daemon.review.web.common import (
    LRU,
    MAX_ROW_ID,
    bad_page,
    go_next,
    here,
    next_page,
    page_number,
    page_url,
    plain,
    review,
    url_pattern,
    wants_json,
)
from daemon.review.web.songs import after_undo, failed

bp = Blueprint("albums", __name__)


class AlbumKey(BaseConverter):
    """`<album:key>`: an album key (daemon.library.albums.KEY_DIGITS hex digits); anything
    else is no album, a 404."""

    regex = r"[0-9a-f]{16}"


class BatchId(BaseConverter):
    """`<batch:batch_id>`: an album action's batch id (uuid4 hex)."""

    regex = r"[0-9a-f]{32}"


# Before the routes below: registering the blueprint adds them in this order.
bp.record_once(lambda state: state.app.url_map.converters.update(album=AlbumKey,
                                                                 batch=BatchId))

PAGE_SIZE = 20  # albums (some 250 songs): about the song view's 50 rows of work
MIXED_SHOWN = 10
# ?scope= of the confirm page: the accept scopes, or "relabel" (the audit's use X for all).
RELABEL = "relabel"
# app.extensions key of the page's reused filter choices and audit (_page_options).
_OPTIONS = "album_options"
# ... and of the album list's aggregates (albums.list_albums(cache=)).
_AGGREGATES = "album_aggregates"
_SENTINEL_KEY = "f0e1d2c3b4a59687"
# Where an album action goes back to (app-relative, as `next=` values are).
LIST_PATH = "/albums"


def _album_filter() -> albums.AlbumFilter:
    args = request.args
    sort = args.get("sort", albums.ALBUM_SORTS[0])
    return albums.AlbumFilter(genre=args.get("genre") or None,
                              folder=args.get("folder") or None,
                              format=args.get("format") or None,
                              sort=sort if sort in albums.ALBUM_SORTS else albums.ALBUM_SORTS[0])


@bp.get("/albums")
def album_list():
    f, page = _album_filter(), page_number()
    if page is None:
        return bad_page()
    deps = review()
    with deps.sessions() as db:
        rows, total = albums.list_albums(
            db, f, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE,
            cache=current_app.extensions.setdefault(_AGGREGATES, LRU(64)))
        context = dict(
            rows=rows, total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)),
            filter=f, sorts=albums.ALBUM_SORTS, **_page_options(db),
            csrf=generate_csrf(), write_tags=deps.config.review.write_tags,
            last_batch=decisions.last_batch(db, deps.config.review.reviewer),
            preview_url=url_pattern("media.preview", "track_id"), confirm_url=_confirm_url(),
            page_url=page_url("albums.album_list"), here=here())
        return render_template("albums.html", **context)


def _confirm_url() -> Callable[[str, str, str], str]:
    """(album key, genre, scope) -> its confirm page coming back here: url_for once a page
    (with query arguments it costs a page of 25 albums some 10 ms)."""
    before, after = url_for("albums.confirm", key=_SENTINEL_KEY).split(_SENTINEL_KEY)
    back = urlencode({"next": here()})
    return lambda key, genre, scope: (f"{before}{key}{after}?"
                                      f"{urlencode({'genre': genre, 'scope': scope})}&{back}")


def _page_options(db) -> dict:
    """The filter choices and the consistency audit: aggregates over every track, so
    reused while nothing they depend on has moved (albums.list_version)."""
    def make() -> dict:
        mixed, mixed_total = albums.list_mixed(db, limit=MIXED_SHOWN)
        return dict(mixed=mixed, mixed_total=mixed_total,
                    pending_genres=listing.pending_genres(db),
                    formats=listing.pending_formats(db))
    stamp = (albums.list_version(db), int(time.monotonic() // albums.AGGREGATE_REUSE_S))
    return current_app.extensions.setdefault(_OPTIONS, LRU(2)).get_or_make(stamp, make)


def _scope() -> tuple[str, bool] | None:
    scope = request.values.get("scope", "all")
    if scope == RELABEL:
        return "all", True
    return (scope, False) if scope in albums.ALBUM_SCOPES else None


@bp.get("/albums/<album:key>/confirm")
def confirm(key: str):
    scope = _scope()
    genre = request.args.get("genre", "")
    if scope is None or not genre:
        return plain(400, "That album action is not one this page offers.")
    deps = review()
    try:
        with deps.sessions() as db:
            album = albums.get_album(db, key)
            preview = albums.preview_action(db, deps.config, key, genre, scope=scope[0],
                                            relabel=scope[1])
    except decisions.ReviewError as err:
        return plain(404 if isinstance(err, albums.UnknownAlbum) else 400, str(err))
    back = next_page(current_app.url_map, request.args.get("next") or LIST_PATH)
    return render_template("album_confirm.html", album=album, preview=preview,
                           scope=request.args.get("scope", "all"), back=back,
                           cancel_url=request.script_root + back)


@bp.post("/albums/<album:key>/accept")
def accept(key: str):
    deps = review()
    scope = _scope()
    if scope is None:
        return failed(decisions.ReviewError("that album action is not one this page offers"))
    try:
        up_to = request.form.get("up_to_id", "")
        up_to_id = int(up_to) if up_to else None
        if up_to_id is not None and not 0 <= up_to_id <= MAX_ROW_ID:
            raise ValueError(up_to)
        made = albums.accept_album(deps.sessions, deps.config, key,
                                      request.form.get("genre", ""), scope=scope[0],
                                      relabel=scope[1], who=deps.config.review.reviewer,
                                      up_to_id=up_to_id)
    except ValueError:
        return failed(decisions.ReviewError("the album form was incomplete; try again"))
    except decisions.ReviewError as err:
        return failed(err)
    return _done(made, f"{made[0].genre} for {len(made)} song(s) of the album.")


def _done(made: list[Decision], message: str, *, reloaded: bool = False):
    """The answer to an album action; `reloaded`: the keyboard script reloads the page
    after it, so the message waits for that page too."""
    deps = review()
    deps.notify()
    batch = made[0].batch_id if made else None
    if wants_json():
        if reloaded:
            flash(message)
        return jsonify(ok=True, message=message, count=len(made), batch_id=batch)
    flash(message)
    return go_next(request.form.get("next") or LIST_PATH)


@bp.post("/batches/<batch:batch_id>/undo")
def undo(batch_id: str):
    deps = review()
    try:
        made = decisions.undo_batch(deps.sessions, deps.config, batch_id,
                                    who=deps.config.review.reviewer)
    except decisions.ReviewError as err:
        return failed(err)
    made, message = after_undo(made)
    return _done(made, message, reloaded=True)


@bp.post("/albums/undo-last")
def undo_last():
    deps = review()
    with deps.sessions() as db:
        batch = decisions.last_batch(db, deps.config.review.reviewer)
    if batch is None:
        return failed(decisions.CannotUndo("no album action to undo"))
    return undo(batch)
