"""What operators are shown: a missing song's suggestion leaves the queue (and
cannot be accepted into a file that is not there), a stopped former leader is listed as
stopped (not as a standby), `status` says when the library folder cannot be read, and a
start-up that fails before the database is open logs no spurious leader error."""

from __future__ import annotations

import logging

import pytest
from helpers import add_suggested_track

from daemon.cli.status_text import render_status
from daemon.core.db.engine import transaction
from daemon.core.db.models import Track, utcnow
from daemon.core.states import TrackState
from daemon.review import decisions, listing
from daemon.service.leader import Leadership, try_lock
from daemon.service.status import collect_status
from daemon.suggest.workers import list_workers, register, retire


def test_a_missing_songs_suggestion_leaves_the_queue_and_comes_back_with_it(
        tmp_path, make_config, any_database):
    _, sessions = any_database
    config = make_config(tmp_path / "library")
    gone_id, gone_sid = add_suggested_track(sessions, "A/gone.mp3", fmt="ogg")
    add_suggested_track(sessions, "A/here.mp3")

    def queue() -> list[str]:
        with sessions() as session:
            rows, total = listing.list_suggestions(session)
            assert total == len(rows)
            return [t.path for _, t in rows]

    assert sorted(queue()) == ["A/gone.mp3", "A/here.mp3"]
    with transaction(sessions) as session:
        track = session.get(Track, gone_id)
        track.state, track.state_changed_at = TrackState.MISSING, utcnow()

    assert queue() == ["A/here.mp3"]
    with sessions() as session:
        assert listing.count_above(session, 0.5)[0] == 1
        assert listing.pending_formats(session) == ["mp3"]
        assert listing.pending_genres(session) == [("Rock", 1)]
    status = collect_status(config, sessions)
    assert status["pending_suggestions"] == 1
    with pytest.raises(decisions.NotPending, match="missing from the library"):
        decisions.accept(sessions, config, [gone_sid], who="md")
    made = decisions.bulk_accept(sessions, config, 0.5, who="md")
    assert [d.track_id for d in made] != [gone_id] and len(made) == 1
    with sessions() as session:  # kept pending, not decided: nothing to write
        assert session.get(Track, gone_id).state == TrackState.MISSING

    with transaction(sessions) as session:  # the file is back (daemon.library.record)
        session.get(Track, gone_id).state = TrackState.SUGGESTED
    assert queue() == ["A/gone.mp3"]
    (decision,) = decisions.accept(sessions, config, [gone_sid], who="md")
    assert decision.genre == "Rock"


def test_a_stopped_leader_is_listed_as_a_stopped_leader(make_config, tmp_path, database,
                                                         caplog):
    _, sessions = database
    config = make_config(tmp_path / "library")
    worker_id = register(sessions, "leader")
    leadership = Leadership(config, try_lock(config), sessions, on_lead=lambda: None,
                            on_lost=lambda: None, on_status=lambda _: None,
                            worker_id=worker_id)
    assert leadership.leading and leadership.start()
    retire(sessions, worker_id)  # the service's stop: its row first, then the lock
    leadership.close()
    with sessions() as session:
        (row,) = list_workers(session, utcnow())
    assert row["role"] == "leader" and row["stopped_at"] is not None and not row["alive"]
    lines = render_status(collect_status(config, sessions)).splitlines()
    (line,) = [x for x in lines if x.startswith("  ") and f":{row['pid']} " in x]
    assert " leader: stopped " in line and "standby" not in line

    # Start-up that fails before the database is open: the lock goes quietly.
    early = try_lock(config)
    assert early.held()
    caplog.clear()  # another test may have left the service's loggers at INFO
    with caplog.at_level(logging.WARNING, logger="daemon.service.leader"):
        early.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_status_says_when_the_library_folder_cannot_be_read(tmp_path, make_config, database):
    _, sessions = database
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library)
    assert collect_status(config, sessions)["library"]["problem"] is None
    library.rename(tmp_path / "unmounted")
    data = collect_status(config, sessions)
    assert data["library"]["problem"] == "does not exist (not mounted?)"
    assert (f"library:     CANNOT READ {library}: does not exist (not mounted?)"
            in render_status(data))
    (tmp_path / "unmounted").rename(library)
    (library / "x").mkdir()
    config = make_config(library / "x" / "file")
    (library / "x" / "file").write_text("not a folder")
    assert collect_status(config, sessions)["library"]["problem"] == "not a folder"
