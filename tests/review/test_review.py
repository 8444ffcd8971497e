"""Review decisions on a real migrated database (SQLite and PostgreSQL): accept, override,
reject, undo, bulk."""

from __future__ import annotations

import pytest
from helpers import add_suggested_track
from sqlalchemy import func, select

from daemon.core.db.models import Decision, Suggestion, Track, utcnow
from daemon.core.states import TrackState
from daemon.review import decisions as review
from daemon.review import listing
from daemon.suggest.suggestions import rejected_genres


@pytest.fixture
def setup(tmp_path, make_config, any_database):
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library)
    _, sessions = any_database
    return config, sessions


def track_of(sessions, track_id):
    with sessions() as session:
        return session.get(Track, track_id)


def suggestion_of(sessions, suggestion_id):
    with sessions() as session:
        return session.get(Suggestion, suggestion_id)


def test_accept_writes_one_decision_and_confirms_the_label(setup):
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "A/one.mp3", raw_genre=None)
    [decision] = review.accept(sessions, config, [sid], who="tester")
    assert (decision.action, decision.how, decision.genre, decision.who) == (
        "accept", "single", "Rock", "tester")
    assert decision.previous_genre is None
    assert decision.write_status == "pending"
    track = track_of(sessions, track_id)
    assert track.state == TrackState.REVIEWED
    assert (track.confirmed_genre, track.confirmed_decision_id) == ("Rock", decision.id)
    assert track.confirmed_at is not None
    assert suggestion_of(sessions, sid).status == "accepted"


def test_choosing_a_runner_up_is_an_override(setup):
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "A/two.mp3", raw_genre="Classic Rok")
    [decision] = review.accept(sessions, config, [sid], who="t", choice=2)
    assert (decision.action, decision.how, decision.genre) == ("override", "override", "Metal")
    assert decision.previous_genre == "Classic Rok"
    assert suggestion_of(sessions, sid).status == "overridden"
    assert track_of(sessions, track_id).confirmed_genre == "Metal"
    with pytest.raises(review.NotPending):
        review.accept(sessions, config, [sid], who="t")


def test_override_checks_the_genre_and_folds_case(setup):
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "A/three.flac")
    with pytest.raises(review.UnknownGenre, match="Polka"):
        review.override(sessions, config, sid, "Polka", who="t")
    decision = review.override(sessions, config, sid, "hip-hop", who="t")
    assert decision.genre == "Hip-Hop" and decision.action == "override"
    assert track_of(sessions, track_id).confirmed_genre == "Hip-Hop"


def test_reject_leaves_the_track_unlabelled_and_reviewed(setup):
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "A/four.ogg")
    [decision] = review.reject(sessions, config, [sid], who="t")
    assert decision.action == "reject" and decision.genre is None
    assert decision.write_status == "none"
    track = track_of(sessions, track_id)
    assert track.confirmed_genre is None and track.state == TrackState.REVIEWED
    assert suggestion_of(sessions, sid).status == "rejected"
    with sessions() as session:
        assert rejected_genres(session, track_id) == {suggestion_of(sessions, sid).genre}


def test_unknown_ids_and_one_bad_id_writes_nothing(setup):
    config, sessions = setup
    _, sid = add_suggested_track(sessions, "A/five.mp3")
    with pytest.raises(review.UnknownSuggestion):
        review.accept(sessions, config, [sid, 999], who="t")
    assert suggestion_of(sessions, sid).status == "pending"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Decision)) == 0
    with pytest.raises(review.UnknownDecision):
        review.undo(sessions, config, 12345, who="t")
    with pytest.raises(review.ReviewError, match="no choice 4"):
        review.accept(sessions, config, [sid], who="t", choice=4)


def test_wrong_track_state_is_refused(setup):
    config, sessions = setup
    _, sid = add_suggested_track(sessions, "A/six.mp3", state=TrackState.QUEUED)
    with pytest.raises(review.NotPending, match="queued"):
        review.accept(sessions, config, [sid], who="t")


def test_undo_restores_suggestion_state_and_previous_label(setup):
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "A/seven.mp3")
    [first] = review.accept(sessions, config, [sid], who="t")
    undo_row = review.undo(sessions, config, first.id, who="t")
    assert (undo_row.action, undo_row.how, undo_row.undoes_id) == ("undo", "undo", first.id)
    track = track_of(sessions, track_id)
    assert track.confirmed_genre is None and track.state == TrackState.SUGGESTED
    assert suggestion_of(sessions, sid).status == "pending"
    with sessions() as session:
        first = session.get(Decision, first.id)
        assert first.undone and first.write_status == "none"  # never reached the file
    with pytest.raises(review.CannotUndo):
        review.undo(sessions, config, first.id, who="t")
    with pytest.raises(review.CannotUndo):
        review.undo(sessions, config, undo_row.id, who="t")
    # Decide again, then a second round: undo goes back to the earlier label.
    [second] = review.accept(sessions, config, [sid], who="t", choice=3)
    assert track_of(sessions, track_id).confirmed_genre == "Pop"
    with sessions() as session, session.begin():
        newer = Suggestion(track_id=track_id, genre="Jazz", confidence=0.7,
                           top=[["Jazz", 0.7], ["Blues", 0.2], ["Pop", 0.1]],
                           status="pending", replaces_id=sid)
        session.add(newer)
        session.get(Track, track_id).state = TrackState.SUGGESTED
        session.flush()
        newer_id = newer.id
    [third] = review.accept(sessions, config, [newer_id], who="t")
    assert third.previous_genre == "Pop"
    with pytest.raises(review.CannotUndo, match="came later"):
        review.undo(sessions, config, second.id, who="t")
    review.undo(sessions, config, third.id, who="t")
    track = track_of(sessions, track_id)
    assert (track.confirmed_genre, track.confirmed_decision_id) == ("Pop", second.id)


def test_undo_of_a_written_decision_writes_the_previous_genre_back(setup):
    config, sessions = setup
    _, sid = add_suggested_track(sessions, "A/eight.mp3", raw_genre="Rok")
    [decision] = review.accept(sessions, config, [sid], who="t")
    with sessions() as session, session.begin():
        session.get(Decision, decision.id).write_status = "written"
    undo_row = review.undo(sessions, config, decision.id, who="t")
    assert (undo_row.genre, undo_row.write_status) == ("Rok", "pending")


def test_bulk_accept_counts_first_and_respects_the_cutoff(setup):
    config, sessions = setup
    ids = [add_suggested_track(sessions, f"B/{i}.mp3", top=(("Jazz", c), ("Blues", 1 - c)))[1]
           for i, c in enumerate((0.95, 0.91, 0.9, 0.5, 0.2))]
    count, up_to = listing.count_above(sessions(), 0.9)
    assert count == 3 and up_to == ids[2]
    # A confident suggestion arriving after the count was shown is not accepted unseen.
    late = add_suggested_track(sessions, "B/late.mp3", top=(("Jazz", 0.99),))[1]
    decisions = review.bulk_accept(sessions, config, 0.9, who="t", up_to_id=up_to)
    assert sorted(d.suggestion_id for d in decisions) == ids[:3]
    assert {d.how for d in decisions} == {"bulk"}
    assert suggestion_of(sessions, late).status == "pending"
    with pytest.raises(review.ReviewError):
        review.bulk_accept(sessions, config, 1.5, who="t")


def test_write_tags_off_keeps_decisions_in_the_db(tmp_path, make_config, any_database):
    config = make_config(tmp_path, review={"write_tags": False})
    _, sessions = any_database
    _, sid = add_suggested_track(sessions, "C/one.mp3")
    [decision] = review.accept(sessions, config, [sid], who="t")
    assert decision.write_status == "off"


def test_a_new_decision_cancels_an_older_unwritten_write(setup):
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "D/one.mp3")
    [first] = review.accept(sessions, config, [sid], who="t")
    with sessions() as session, session.begin():
        newer = Suggestion(track_id=track_id, genre="Folk", confidence=0.6,
                           top=[["Folk", 0.6]], status="pending", created_at=utcnow())
        session.add(newer)
        session.get(Track, track_id).state = TrackState.SUGGESTED
        session.flush()
        newer_id = newer.id
    review.accept(sessions, config, [newer_id], who="t")
    with sessions() as session:
        assert session.get(Decision, first.id).write_status == "none"
        assert listing.write_backlog(session) == {"pending": 1, "failed": 0}


def test_list_filters_sorts_and_pages(setup):
    config, sessions = setup
    add_suggested_track(sessions, "Jazz/a.flac", top=(("Jazz", 0.6),), fmt="flac")
    add_suggested_track(sessions, "Jazz/b.mp3", top=(("Jazz", 0.9),))
    add_suggested_track(sessions, "Rock_100%/c.mp3", top=(("Rock", 0.7),))
    with sessions() as session:
        rows, total = listing.list_suggestions(session, listing.QueueFilter(sort="uncertain"))
        assert total == 3 and [s.confidence for s, _ in rows] == [0.6, 0.7, 0.9]
        rows, total = listing.list_suggestions(session, listing.QueueFilter(folder="Jazz"))
        assert total == 2 and rows[0][1].path == "Jazz/b.mp3"
        # The folder as a reviewer types it: case does not matter, on either backend
        # (SQLite's LIKE ignores ASCII case; PostgreSQL's would not).
        _, total = listing.list_suggestions(session, listing.QueueFilter(folder="jazz"))
        assert total == 2
        # LIKE wildcards in folder names are literal.
        _, total = listing.list_suggestions(session, listing.QueueFilter(folder="Rock_100%"))
        assert total == 1
        _, total = listing.list_suggestions(session, listing.QueueFilter(folder="Rock_1"))
        assert total == 0
        _, total = listing.list_suggestions(session, listing.QueueFilter(format="flac"))
        assert total == 1
        rows, total = listing.list_suggestions(session, listing.QueueFilter(min_confidence=0.7),
                                              limit=1, offset=1)
        assert total == 2 and len(rows) == 1
        shape = listing.suggestion_json(*rows[0])
        assert set(shape) >= {"id", "track_id", "path", "genre", "confidence", "top", "status"}
        assert shape["top"][0] == {"genre": shape["genre"], "confidence": shape["confidence"]}
        with pytest.raises(review.ReviewError):
            listing.list_suggestions(session, listing.QueueFilter(sort="random"))


# ----------------------------------------------------------------- the review commands

def run_cli(config_path, *args, input=None):
    import json

    from click.testing import CliRunner

    from daemon.cli import cli

    result = CliRunner().invoke(cli, ["--config", str(config_path), *args], input=input)
    data = None
    if "--json" in args and result.exit_code == 0:
        data = json.loads(result.stdout)
    return result, data


def test_review_commands(sqlite_station):
    config_path, sessions = sqlite_station.config_path, sqlite_station.sessions
    ids = [add_suggested_track(sessions, f"X/{i}.mp3", top=(("Jazz", c), ("Blues", 1 - c)))[1]
           for i, c in enumerate((0.97, 0.92, 0.4, 0.3))]
    result, data = run_cli(config_path, "review", "list", "--min-confidence", "0.5", "--json")
    assert data["total"] == 2 and [s["id"] for s in data["suggestions"]] == ids[:2]
    result, data = run_cli(config_path, "review", "accept", str(ids[3]), "--choice", "2",
                           "--json")
    [decision] = data["decisions"]
    assert (decision["action"], decision["genre"], decision["write_status"]) == (
        "override", "Blues", "pending")
    assert decision["who"].endswith("(command line)")
    # Bulk: the count comes first; saying no changes nothing.
    result, _ = run_cli(config_path, "review", "accept", "--all-above", "0.9", input="n\n")
    assert "2 pending suggestion(s)" in result.output and result.exit_code != 0
    result, data = run_cli(config_path, "review", "list", "--json")
    assert data["total"] == 3
    result, data = run_cli(config_path, "review", "accept", "--all-above", "0.9", "--yes",
                           "--json")
    assert sorted(d["suggestion_id"] for d in data["decisions"]) == ids[:2]
    result, data = run_cli(config_path, "review", "set", str(ids[2]), "Metal", "--json")
    assert data["decisions"][0]["genre"] == "Metal"
    result, data = run_cli(config_path, "review", "undo", str(data["decisions"][0]["id"]),
                           "--json")
    assert data["decisions"][0]["action"] == "undo"
    result, data = run_cli(config_path, "review", "reject", str(ids[2]), "--json")
    assert data["decisions"][0]["action"] == "reject"
    result, data = run_cli(config_path, "review", "history", "--json")
    assert data["total"] == 6
    result, _ = run_cli(config_path, "review", "list", "--state", "accepted")
    assert "2 suggestion(s)" in result.output
    # Bad input: typed errors, not tracebacks.
    result, _ = run_cli(config_path, "review", "set", str(ids[0]), "Polka")
    assert isinstance(result.exception, review.NotPending)
    result, _ = run_cli(config_path, "review", "accept")
    assert result.exit_code == 2


def test_cli_error_exit_codes(sqlite_station):
    import subprocess
    import sys

    config_path, sessions = sqlite_station.config_path, sqlite_station.sessions
    _, sid = add_suggested_track(sessions, "Y/one.mp3")
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config_path),
                           "review", "set", str(sid), "Polka"], capture_output=True, text=True)
    assert proc.returncode == 1 and "'Polka' is not one of the station's genres" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "hash-password"],
                          input="correct horse\ncorrect horse\n", capture_output=True, text=True)
    assert proc.returncode == 0
    from werkzeug.security import check_password_hash

    assert check_password_hash(proc.stdout.strip(), "correct horse")


def test_review_set_matches_genres_as_the_genre_map_does(sqlite_station):
    """`review set` spells genres through daemon.tags.genres.normalise: "hip hop", "HIPHOP" and
    "Hip–Hop" are Hip-Hop; a real CLI process."""
    import subprocess
    import sys

    config_path, sessions = sqlite_station.config_path, sqlite_station.sessions
    for n, typed in enumerate(("hip hop", "HIPHOP", "  Hip Hop ")):
        _, sid = add_suggested_track(sessions, f"Z/{n}.mp3")
        proc = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config_path),
                               "review", "set", str(sid), typed, "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (typed, proc.stderr)
        assert '"genre": "Hip-Hop"' in proc.stdout


def test_an_invalid_transition_is_an_error_line_not_a_traceback(tmp_path):
    """InvalidTransition (a ValueError: a race or a bug, never the user's input) reaching
    the CLI is reported like every other error: one line, exit 1. The command that hits
    it is a stand-in registered on the real `genretagger` group in a real process."""
    import subprocess
    import sys

    script = (
        "from daemon import cli\n"
        "from daemon.core.db.models import Track\n"
        "from daemon.core.states import TrackState, move\n"
        "@cli.cli.command('race')\n"
        "def race():\n"
        "    move(Track(path='A/song.mp3', state=TrackState.QUEUED), TrackState.REVIEWED)\n"
        "cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", script, "race"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: A/song.mp3: track cannot go from queued to reviewed" in proc.stderr


def _at_once(work, n: int = 6) -> list:
    """Run work() in n threads released together; their results or exceptions."""
    import threading

    barrier, results = threading.Barrier(n), []

    def run():
        barrier.wait()
        try:
            results.append(work())
        except Exception as err:  # noqa: BLE001 - the test sorts them out
            results.append(err)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_reviewers_deciding_one_song_at_once_make_one_decision(setup):
    """Six reviewers press accept on the same song at the same moment: on PostgreSQL
    (READ COMMITTED, row locks) as on SQLite, one decision; the others are told it is no
    longer pending. Then six undo it at once: one undo."""
    config, sessions = setup
    track_id, sid = add_suggested_track(sessions, "Race/one.mp3")
    results = _at_once(lambda: review.accept(sessions, config, [sid], who="t"))
    decided = [r for r in results if isinstance(r, list)]
    assert len(decided) == 1, results
    assert all(isinstance(r, review.NotPending) for r in results if r not in decided)
    [decision] = decided[0]
    results = _at_once(lambda: review.undo(sessions, config, decision.id, who="t"))
    assert sum(isinstance(r, Decision) for r in results) == 1, results
    assert all(isinstance(r, review.CannotUndo) for r in results if not isinstance(r, Decision))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Decision)) == 2
        assert session.get(Track, track_id).confirmed_genre is None
        assert session.get(Suggestion, sid).status == "pending"


def test_bulk_accepts_at_once_decide_each_song_once(setup):
    """Two people press "accept all above 80%" at the same moment: every song gets one
    decision, not two (on PostgreSQL the second one waits for the first one's row locks
    and then finds the songs decided)."""
    config, sessions = setup
    sids = [add_suggested_track(sessions, f"Bulk/{i:02d}.mp3", top=(("Rock", 0.9),))[1]
            for i in range(20)]
    results = _at_once(lambda: review.bulk_accept(sessions, config, 0.8, who="t"), n=4)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(len(r) for r in results) == 20
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Decision)) == 20
        assert sorted(d.suggestion_id for d in session.scalars(select(Decision))) == sids
