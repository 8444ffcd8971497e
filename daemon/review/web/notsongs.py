"""The files that are not songs ([library] exclude, min_song_seconds, "Not a song"), each
with the reason, and "This is a song" for the one the rules caught wrongly (a short song
in a station with a min_song_seconds): it is classified and comes up for review."""

from __future__ import annotations

from flask import Blueprint, render_template

from daemon.core.states import Action
from daemon.review import decisions, songmarks
from daemon.review.web.common import bad_page, here, page_number, page_url, review
from daemon.review.web.songs import done, failed

bp = Blueprint("notsongs", __name__)

PAGE_SIZE = 50


@bp.get("/not-songs")
def not_songs():
    page = page_number()
    if page is None:
        return bad_page()
    with review().sessions() as db:
        rows, total = songmarks.list_not_songs(db, limit=PAGE_SIZE,
                                               offset=(page - 1) * PAGE_SIZE)
    return render_template("not_songs.html", rows=rows, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), here=here(),
                           page_url=page_url("notsongs.not_songs"))


@bp.post("/tracks/<id:track_id>/song")
def song(track_id: int):
    deps = review()
    try:
        made = songmarks.mark_tracks(deps.sessions, deps.config, [track_id], Action.SONG,
                                     who=deps.config.review.reviewer)
    except decisions.ReviewError as err:
        return failed(err)
    return done(made, "Marked a song: it will be classified and come up for review.")
