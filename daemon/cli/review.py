"""`genretagger review`: review suggested genres from the shell."""

from __future__ import annotations

import getpass

import click

from daemon.cli.base import Context, cli, echo_json, pass_context
from daemon.core.states import Action, QueueSort, SuggestionStatus, WriteStatus

# Each command imports what it works with inside its body: `genretagger --help` or
# `status` takes about 0.3 s that way, against about 2 s with every command's modules
# (onnxruntime, numpy, Flask, the trainer plumbing) imported up front.


@cli.group("review")
def review_group() -> None:
    """Review suggested genres from the shell.

    accept / set / reject take SUGGESTION ids (the first column of `review list`);
    undo takes a DECISION id (the first column of `review history`); not-a-song and
    song take library PATHs.
    """


def _review_sessions(ctx: Context):
    return ctx.database()[1]


def _cli_reviewer() -> str:
    try:
        return f"{getpass.getuser()} (command line)"
    except (KeyError, OSError):
        return "command line"


def _echo_decisions(sessions, decisions, as_json: bool) -> None:
    from daemon.core.db.models import Track
    from daemon.review.listing import decision_json

    with sessions() as session:
        rows = [decision_json(d, session.get(Track, d.track_id)) for d in decisions]
    if as_json:
        echo_json({"decisions": rows})
        return
    for row in rows:
        what = {Action.ACCEPT: f"accepted {row['genre']}", Action.OVERRIDE: f"set {row['genre']}",
                Action.REJECT: "rejected",
                Action.UNDO: f"undid decision {row['undoes_id']}",
                Action.NOT_A_SONG: 'marked "not a song"',
                Action.SONG: 'marked "a song"'}[row["action"]]
        write = "" if row["write_status"] == WriteStatus.NONE else f" [file: {row['write_status']}]"
        if row["file_genre"] is not None:  # read back from the file after the write
            write = f" [file: written, reads {row['file_genre'] or 'no genre'}]"
        click.echo(f"decision {row['id']}: {what} for {row['path']}{write}")


@review_group.command("list")
@click.option("--genre", help="only this suggested genre")
@click.option("--min-confidence", type=click.FloatRange(0, 1), help="only at least this sure (0-1)")
@click.option("--state", default=SuggestionStatus.PENDING.value, show_default=True,
              type=click.Choice([*map(str, SuggestionStatus), "all"]), help="suggestion state")
@click.option("--folder", help="only songs under this library folder")
@click.option("--format", "fmt", help="only this file format (mp3, flac, ...)")
@click.option("--sort", default=QueueSort.CONFIDENT.value, show_default=True,
              type=click.Choice([*map(str, QueueSort)]))
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True,
              help='{"total": n, "suggestions": [...]} (shape: daemon/review/listing.py)')
@pass_context
def review_list(ctx: Context, genre: str | None, min_confidence: float | None, state: str,
                folder: str | None, fmt: str | None, sort: str, limit: int, offset: int,
                as_json: bool) -> None:
    """Suggestions waiting for review (or in another state), most sure first."""
    from daemon.review.decisions import top_choices
    from daemon.review.listing import (
        QueueFilter,
        list_suggestions,
        sounds_like,
        suggestion_json,
        unverified_model_ids,
    )
    from daemon.review.web.format import context_reason, likeness, percent

    f = QueueFilter(status=state, genre=genre, min_confidence=min_confidence, folder=folder,
                    format=fmt, sort=sort)
    with _review_sessions(ctx)() as session:
        rows, total = list_suggestions(session, f, limit=limit, offset=offset)
        unverified = unverified_model_ids(session)
        data = [suggestion_json(s, t, unverified=s.model_id in unverified) for s, t in rows]
        alike = sounds_like(session, (s for s, _ in rows))
    if as_json:
        echo_json({"total": total, "suggestions": data})
        return
    click.echo(f"{total} suggestion(s){'' if total <= len(data) else f', showing {len(data)}'}")
    for (suggestion, _), row in zip(rows, data, strict=True):
        # The stored confidences, not the JSON's 4-decimal ones: the percentages are the
        # ones the page shows and `--all-above` compares.
        top = ", ".join(f"{g} {percent(c)}" for g, c in top_choices(suggestion))
        mark = "  (unverified: not yet learned from your station's songs)" \
            if row["unverified"] else ""
        click.echo(f"{row['id']:>7}  {percent(suggestion.confidence):>4}  {row['genre']:<12} "
                   f"[{top}]  {row['path']}{mark}")
        if context_reason(row["context"]):
            click.echo(f"         context: {context_reason(row['context'])}")
        if alike.get(row["id"]):
            click.echo("         sounds like: " + "; ".join(
                f"{n['name']} ({n['genre']}, {likeness(n['similarity'])})"
                for n in alike[row["id"]]))


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
    from daemon.review import listing
    from daemon.review.web.format import percent

    if bool(ids) == (all_above is not None):
        raise click.UsageError("give suggestion ids or --all-above X (not both)")
    sessions = _review_sessions(ctx)
    who = _cli_reviewer()
    if ids:
        decisions = review.accept(sessions, ctx.config, ids, who=who, choice=choice)
    else:
        with sessions() as session:
            count, up_to_id = listing.count_above(session, all_above)
        click.echo(f"{count} pending suggestion(s) are at least {percent(all_above)} sure",
                   err=as_json)
        if count == 0:
            decisions = []
        elif not yes and not click.confirm(f"accept all {count}?", err=as_json):
            raise click.exceptions.Abort()
        else:
            decisions = review.bulk_accept(sessions, ctx.config, all_above, who=who,
                                           up_to_id=up_to_id)
    _echo_decisions(sessions, decisions, as_json)
    if decisions and decisions[0].batch_id and not as_json:
        click.echo(f"batch {decisions[0].batch_id} (undo it in one step with `genretagger "
                   f"review undo --batch {decisions[0].batch_id}`)")


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
@click.argument("decision_id", type=int, required=False)
@click.option("--batch", metavar="BATCH", help="undo a whole bulk or album action in one step")
@click.option("--wait", type=click.FloatRange(0), default=10.0, show_default=True,
              help="seconds to wait for the service to put the file back")
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_undo(ctx: Context, decision_id: int | None, batch: str | None, wait: float,
                as_json: bool) -> None:
    """Undo DECISION_ID (see `review history`), or a whole action with --batch: a genre
    already written is taken out of the file again, which is put back exactly as it was
    before (what the file then holds is read from it, once the service has written it)."""
    from daemon.review.decisions import undo, undo_batch
    from daemon.review.writeback import file_report, wait_for_files

    if (decision_id is None) == (batch is None):
        raise click.UsageError("give a DECISION_ID or --batch BATCH (not both)")
    sessions = _review_sessions(ctx)
    made = ([undo(sessions, ctx.config, decision_id, who=_cli_reviewer())]
            if batch is None else undo_batch(sessions, ctx.config, batch, who=_cli_reviewer()))
    made = wait_for_files(sessions, [d.id for d in made], timeout=wait)
    _echo_decisions(sessions, made, as_json)
    if not as_json:
        for decision in made:
            click.echo(f"  decision {decision.id}: {file_report(decision)}")


@review_group.command("not-a-song")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_not_a_song(ctx: Context, paths: tuple[str, ...], as_json: bool) -> None:
    """Mark files as not songs (station IDs, sweepers, liners, beds): they leave the review
    queue and are never trained on. PATH is relative to the library root, or any path
    into it. `review undo DECISION_ID` takes a mark back."""
    _mark_paths(ctx, paths, Action.NOT_A_SONG, as_json)


@review_group.command("song")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def review_song(ctx: Context, paths: tuple[str, ...], as_json: bool) -> None:
    """Mark files the [library] exclude patterns or min_song_seconds keep out (see
    `status`) as songs after all: they are classified and come up for review."""
    _mark_paths(ctx, paths, Action.SONG, as_json)


def _mark_paths(ctx: Context, paths: tuple[str, ...], action: Action, as_json: bool) -> None:
    from daemon.review.songmarks import mark_tracks, tracks_for_paths

    sessions = _review_sessions(ctx)
    with sessions() as session:
        ids = tracks_for_paths(session, ctx.config, paths)
    _echo_decisions(sessions, mark_tracks(sessions, ctx.config, ids, action,
                                          who=_cli_reviewer()), as_json)


@review_group.command("history")
@click.option("--limit", type=click.IntRange(1), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='{"total": n, "decisions": [...]}')
@pass_context
def review_history(ctx: Context, limit: int, as_json: bool) -> None:
    """The newest decisions (the audit log), with their ids for `review undo`."""
    from daemon.review.listing import decision_json, list_decisions

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


# ---------------------------------------------------------------- albums

@review_group.group("album")
def album_group() -> None:
    """Review an album at a time, and the album consistency audit.

    KEY is an album's key (the first column of `review album list`); undo takes the
    BATCH id an accept or use printed.
    """


def _album_line(a: dict) -> str:
    who = f" — {a['artist']}" if a["artist"] else ""
    return (f"{a['key']}  {a['title']}{who}  ({a['songs']} songs, {a['pending']} to review; "
            f"{a['majority'] or '-'}: {a['agreeing']} of {a['pending']} agree)")


@album_group.command("list")
@click.option("--genre", help="only albums whose most suggested genre is this")
@click.option("--folder", help="only albums with songs under this library folder")
@click.option("--format", "fmt", help="only albums with songs of this file format")
@click.option("--sort", default="agreeing", show_default=True,
              type=click.Choice(["agreeing", "pending", "album"]))
@click.option("--limit", type=click.IntRange(1), default=25, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True,
              help='{"total": n, "albums": [...]} (shape: daemon/review/albums.py)')
@pass_context
def album_list(ctx: Context, genre: str | None, folder: str | None, fmt: str | None,
               sort: str, limit: int, offset: int, as_json: bool) -> None:
    """Albums with songs waiting for review, most in agreement first."""
    from daemon.review.albums import AlbumFilter, album_json, list_albums

    with _review_sessions(ctx)() as session:
        found, total = list_albums(session, AlbumFilter(genre=genre, folder=folder,
                                                        format=fmt, sort=sort),
                                   limit=limit, offset=offset)
        data = [album_json(a) for a in found]
    if as_json:
        echo_json({"total": total, "albums": data})
        return
    click.echo(f"{total} album(s) with songs to review"
               + ("" if total <= len(data) else f", showing {len(data)}"))
    for a in data:
        click.echo(_album_line(a))


@album_group.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="album_json with its tracks")
@pass_context
def album_show(ctx: Context, key: str, as_json: bool) -> None:
    """One album's songs: what each is suggested or tagged, and who disagrees."""
    from daemon.review.albums import album_json, get_album
    from daemon.review.web.format import percent

    with _review_sessions(ctx)() as session:
        data = album_json(get_album(session, key), songs=True)
    if as_json:
        echo_json(data)
        return
    click.echo(_album_line(data))
    if data["labelled"]:
        click.echo("tagged/confirmed: " + ", ".join(f"{g} {n}"
                                                    for g, n in data["labelled"].items()))
    for t in data["tracks"]:
        if t["suggestion_id"] is not None:
            mark = "" if t["agrees"] else "  <- disagrees"
            what = f"suggested {t['genre']} {percent(t['confidence'])}{mark}"
        else:
            what = f"{t['state']} {t['label'] or '-'}"
        click.echo(f"  {t['path']}: {what}")


def _album_action(ctx: Context, key: str, genre: str, scope: str, relabel: bool, yes: bool,
                  as_json: bool) -> None:
    """The shared confirm step of `accept` and `use`: say what will change, ask, do."""
    from daemon.review.albums import accept_album, preview_action

    sessions = _review_sessions(ctx)
    with sessions() as session:
        plan = preview_action(session, ctx.config, key, genre, scope=scope, relabel=relabel)
    click.echo(f"{plan.songs} song(s) get {plan.genre} ({plan.overrides} of them change "
               f"genre); {plan.files} file(s) will be written", err=as_json)
    if plan.songs and not yes and not click.confirm("go ahead?", err=as_json):
        raise click.exceptions.Abort()
    made = accept_album(sessions, ctx.config, key, genre, scope=scope, relabel=relabel,
                        who=_cli_reviewer(), up_to_id=plan.up_to_id)
    _echo_decisions(sessions, made, as_json)
    if not as_json:
        click.echo(f"batch {made[0].batch_id} (undo it with `genretagger review album undo "
                   f"{made[0].batch_id}`)")


@album_group.command("accept")
@click.argument("key")
@click.argument("genre")
@click.option("--agreeing-only", is_flag=True,
              help="only the songs suggested GENRE (else every song waiting gets it)")
@click.option("--yes", is_flag=True, help="do not ask first")
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def album_accept(ctx: Context, key: str, genre: str, agreeing_only: bool, yes: bool,
                 as_json: bool) -> None:
    """Give GENRE to the album's songs waiting for review; says how many files will be
    written and asks first."""
    _album_action(ctx, key, genre, "agreeing" if agreeing_only else "all", False, yes,
                  as_json)


@album_group.command("use")
@click.argument("key")
@click.argument("genre")
@click.option("--yes", is_flag=True, help="do not ask first")
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def album_use(ctx: Context, key: str, genre: str, yes: bool, as_json: bool) -> None:
    """Use GENRE for every song of the album: the ones waiting for review and the tagged
    or confirmed ones too (the consistency audit's fix)."""
    _album_action(ctx, key, genre, "all", True, yes, as_json)


@album_group.command("undo")
@click.argument("batch")
@click.option("--json", "as_json", is_flag=True, help='{"decisions": [...]}')
@pass_context
def album_undo(ctx: Context, batch: str, as_json: bool) -> None:
    """Take back a whole album action (BATCH, as accept or use printed it) in one step."""
    from daemon.review.decisions import undo_batch

    sessions = _review_sessions(ctx)
    _echo_decisions(sessions, undo_batch(sessions, ctx.config, batch, who=_cli_reviewer()),
                    as_json)


@album_group.command("mixed")
@click.option("--limit", type=click.IntRange(1), default=25, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help='{"total": n, "albums": [...]}')
@pass_context
def album_mixed(ctx: Context, limit: int, offset: int, as_json: bool) -> None:
    """The consistency audit: albums whose tagged songs carry different genres (fix one
    with `review album use KEY GENRE`)."""
    from daemon.review.albums import album_json, list_mixed

    with _review_sessions(ctx)() as session:
        found, total = list_mixed(session, limit=limit, offset=offset)
        data = [album_json(a) for a in found]
    if as_json:
        echo_json({"total": total, "albums": data})
        return
    click.echo(f"{total} album(s) whose tagged songs carry different genres")
    for a in data:
        who = f" — {a['artist']}" if a["artist"] else ""
        click.echo(f"{a['key']}  {a['title']}{who}: "
                   + ", ".join(f"{g} {n}" for g, n in a["labelled"].items()))


@review_group.command("retry")
@click.argument("paths", metavar="PATH...", nargs=-1)
@click.option("--all-quarantined", "every", is_flag=True,
              help="every quarantined song (`status` lists them)")
@pass_context
def review_retry(ctx: Context, paths: tuple[str, ...], every: bool) -> int:
    """Send quarantined songs back to the queue (after fixing what failed: a permission,
    a broken copy). PATH: the song's file, or its path inside the library."""
    from daemon.core.paths import display_stored
    from daemon.suggest.queue import retry_quarantined

    if bool(paths) == every:
        raise click.UsageError("give song paths or --all-quarantined (not both)")
    root = ctx.config.library.root
    wanted = None if every else [_stored_in_library(root, p) for p in paths]
    done, left = retry_quarantined(_review_sessions(ctx), wanted)
    for stored in done:
        click.echo(f"queued again: {display_stored(stored)}")
    for stored in left:
        click.echo(f"not quarantined: {display_stored(stored)}", err=True)
    if not done and every:
        click.echo("no quarantined songs")
    return 1 if left else 0


def _stored_in_library(root, given: str) -> str:
    """A song named on the command line (its file, or its path inside the library) ->
    its stored path; a file outside the library is a usage error."""
    import os

    from daemon.core.paths import relative_inside, stored_path

    absolute = os.path.abspath(given) if os.path.isabs(given) or os.path.exists(given) \
        else os.path.join(root, given)
    rel = relative_inside(os.path.abspath(root), os.path.abspath(absolute))
    if rel is None:
        raise click.UsageError(f"{given}: not inside the library {root}")
    return stored_path(rel)
