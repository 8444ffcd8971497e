"""`genretagger status`: counts, throughput, daemon liveness, quarantine, retraining.

A real migrated database (SQLite and PostgreSQL) filled the way the daemon fills it; the
CLI as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from daemon.cli.status_text import render_status
from daemon.core.db.engine import transaction
from daemon.core.db.models import (
    Decision,
    Event,
    Model,
    ServiceState,
    Suggestion,
    Track,
    TrainingRun,
    utcnow,
)
from daemon.core.states import TrackState
from daemon.learn.schedule import NightlyHistory, next_nightly, next_nightly_run, nightly_history
from daemon.service.scheduler import NIGHTLY_FUNC, Scheduler
from daemon.service.status import DAEMON_KEY, collect_status
from daemon.suggest.queue import queue_depth

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def setup(tmp_path, make_config, any_database):
    engine, sessions = any_database
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, database_url=str(engine.url))
    return config, sessions


def add_tracks(sessions, state: TrackState, n: int, start: int, **fields) -> list[int]:
    ids = []
    with transaction(sessions) as session:
        for i in range(start, start + n):
            track = Track(path=f"{state}/song {i:03d}.mp3", size=1000 + i, mtime=1.0,
                          state=state, **fields)
            if state == TrackState.QUARANTINED:
                track.last_error = f"cannot decode song {i:03d}"
                track.attempts = 4
                track.state_changed_at = NOW - timedelta(minutes=100 - i)
            session.add(track)
            session.flush()
            ids.append(track.id)
    return ids


def heartbeat(sessions, pid: int, beat: datetime, stopped: bool = False) -> None:
    with transaction(sessions) as session:
        session.merge(ServiceState(key=DAEMON_KEY, value={
            "pid": pid, "started_at": (beat - timedelta(hours=1)).isoformat(),
            "heartbeat": beat.isoformat(), "last_file": "Rock/new song.mp3", "model_id": 1,
            "stopped_at": beat.isoformat() if stopped else None}))


def test_counts_throughput_quarantine_and_liveness(setup):
    config, sessions = setup
    add_tracks(sessions, TrackState.QUEUED, 7, 0)
    add_tracks(sessions, TrackState.RETRYING, 2, 100)
    suggested = add_tracks(sessions, TrackState.SUGGESTED, 5, 200)
    add_tracks(sessions, TrackState.TAGGED, 11, 300)
    add_tracks(sessions, TrackState.QUARANTINED, 25, 0)
    with transaction(sessions) as session:
        for track_id in suggested:
            session.add(Suggestion(track_id=track_id, genre="Rock", confidence=0.9,
                                   top=[["Rock", 0.9], ["Pop", 0.05], ["Jazz", 0.05]]))
        session.add(Decision(track_id=suggested[0], action="accept", how="single",
                             genre="Rock", who="md", write_status="pending"))
        session.add(Decision(track_id=suggested[1], action="accept", how="single",
                             genre="Rock", who="md", write_status="written"))
        # 30 files in the last hour (0.5/min); older ones do not count.
        for i in range(24):
            session.add(Event(at=NOW - timedelta(minutes=2 * i + 1), kind="classified"))
        for i in range(6):
            session.add(Event(at=NOW - timedelta(minutes=5 * i + 1), kind="failed"))
        for i in range(10):
            session.add(Event(at=NOW - timedelta(hours=2, minutes=i), kind="classified"))
        session.add(Event(at=NOW - timedelta(minutes=1), kind="reconcile"))
    heartbeat(sessions, os.getpid(), NOW - timedelta(seconds=5))

    data = collect_status(config, sessions, now=NOW)

    assert data["tracks"]["by_state"] == {
        "queued": 7, "working": 0, "retrying": 2, "quarantined": 25, "suggested": 5,
        "reviewed": 0, "tagged": 11, "missing": 0, "not_a_song": 0}
    assert data["tracks"]["total"] == 50
    assert data["queue_depth"] == 9
    assert data["last_hour"] == {"classified": 24, "failed": 6}
    assert data["files_per_minute"] == 0.5
    assert data["pending_suggestions"] == 5
    assert data["decisions_waiting"] == 1
    assert data["daemon"]["running"] is True
    assert data["daemon"]["pid"] == os.getpid()
    assert data["daemon"]["last_file"] == "Rock/new song.mp3"
    assert data["model"] is None
    assert data["quarantined_total"] == 25
    shown = data["quarantined"]
    assert len(shown) == 20
    # Newest first: song 024 was quarantined last.
    assert shown[0]["path"] == "quarantined/song 024.mp3"
    assert shown[0]["reason"] == "cannot decode song 024"
    assert shown[0]["attempts"] == 4
    json.dumps(data)  # the --json shape is plain JSON

    text = render_status(data)
    assert f"running (pid {os.getpid()}" in text
    assert "quarantined/song 024.mp3: cannot decode song 024" in text
    assert "and 5 more" in text
    assert "9 waiting, 0.5 files/min" in text
    assert "model:       none yet" in text


def test_status_and_the_worker_give_one_queue_depth(setup):
    """Queued, retrying and working tracks wait for the worker; every other state does not.
    `status` and the worker's own count are the one query (daemon.suggest.queue)."""
    config, sessions = setup
    add_tracks(sessions, TrackState.QUEUED, 3, 0)
    add_tracks(sessions, TrackState.RETRYING, 2, 100)
    add_tracks(sessions, TrackState.WORKING, 4, 200)
    for start, state in enumerate((TrackState.SUGGESTED, TrackState.REVIEWED,
                                   TrackState.TAGGED, TrackState.QUARANTINED,
                                   TrackState.MISSING)):
        add_tracks(sessions, state, 1, 300 + start)
    with sessions() as session:
        assert queue_depth(session) == 9
    assert collect_status(config, sessions, now=NOW)["queue_depth"] == 9


def test_daemon_not_running_when_stale_dead_or_stopped(setup):
    config, sessions = setup
    assert collect_status(config, sessions, now=NOW)["daemon"]["running"] is False
    assert "never started" in render_status(collect_status(config, sessions, now=NOW))

    heartbeat(sessions, os.getpid(), NOW - timedelta(minutes=10))
    stale = collect_status(config, sessions, now=NOW)
    assert stale["daemon"]["running"] is False
    assert "NOT RUNNING" in render_status(stale)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    heartbeat(sessions, dead.pid, NOW - timedelta(seconds=2))
    assert collect_status(config, sessions, now=NOW)["daemon"]["running"] is False

    heartbeat(sessions, os.getpid(), NOW - timedelta(seconds=2), stopped=True)
    stopped = collect_status(config, sessions, now=NOW)
    assert stopped["daemon"]["running"] is False
    assert "stopped at" in render_status(stopped)


def test_model_reconcile_and_retraining(setup):
    config, sessions = setup
    with transaction(sessions) as session:
        session.add(Model(version=3, path="/state/models/v0003/model.onnx", sha256="ab" * 32,
                          status="active", classes=["Jazz", "Rock", "Pop"],
                          metrics={"accuracy": 0.91, "macro_f1": 0.9}, n_songs=120,
                          activated_at=NOW - timedelta(days=1)))
        session.add(TrainingRun(trigger="nightly", status="rejected",
                                reason="macro-F1 dropped 2.1 points",
                                started_at=NOW - timedelta(hours=9),
                                finished_at=NOW - timedelta(hours=8)))
        session.add(ServiceState(key="last_reconcile", value={
            "root": "/srv/music", "files": 1500, "new": 3, "missing": 0, "guarded": True,
            "reason": "library root is empty (unmounted?)", "at": NOW.isoformat()}))
    data = collect_status(config, sessions, now=NOW)
    assert data["model"]["version"] == 3
    assert data["model"]["macro_f1"] == 0.9
    assert data["retraining"]["last"]["status"] == "rejected"
    assert data["last_reconcile"]["guarded"] is True
    # No job store yet: the next run is computed from retrain.hour/minute (03:00 local).
    expected = next_nightly(3, 0, NOW.astimezone()).astimezone(UTC)
    assert data["retraining"]["next"] == expected.isoformat()
    text = render_status(data)
    assert "v3, 3 genres, 120 songs, accuracy 91%, macro-F1 0.90" in text
    assert "GUARDED" in text and "unmounted" in text
    assert "nightly rejected" in text


def test_status_and_the_scheduler_agree_on_the_next_nightly_run(setup):
    config, sessions = setup
    config = config.model_copy(update={"retrain": config.retrain.model_copy(
        update={"hour": 4, "minute": 30})})
    scheduler = Scheduler(config, sessions)
    scheduler.add_nightly(NIGHTLY_FUNC)
    scheduler.start()
    try:
        planned = scheduler.next_run("nightly-retrain")
    finally:
        scheduler.close()
    assert planned is not None
    local = planned.astimezone()
    assert (local.hour, local.minute) == (4, 30)
    data = collect_status(config, sessions, now=utcnow())
    assert data["retraining"]["next"] == planned.astimezone(UTC).isoformat()
    # status no longer reads APScheduler's private table, and the scheduler keeps none.
    with sessions() as session:
        from sqlalchemy import inspect

        assert "apscheduler_jobs" not in inspect(session.get_bind()).get_table_names()


def test_a_missed_night_comes_from_the_run_rows(setup):
    """The daemon was down at 03:00: back within misfire_grace_minutes, the run is due at
    once (status says so and the scheduler fires it); later, it waits for the next night."""
    config, sessions = setup
    tz = datetime.now().astimezone().tzinfo
    retrain = config.retrain  # 03:00, grace 120 min
    back = datetime(2026, 5, 4, 4, 10, tzinfo=tz)
    last = NightlyHistory(last_nightly=datetime(2026, 5, 3, 3, 0, 1, tzinfo=tz),
                          first_run=datetime(2026, 4, 1, 3, 0, 1, tzinfo=tz))
    assert next_nightly_run(retrain, back, last) == datetime(2026, 5, 4, 3, 0, tzinfo=tz)
    # Several missed nights fire once: the newest one, if still within the grace time.
    older = NightlyHistory(last_nightly=datetime(2026, 4, 28, 3, 0, 1, tzinfo=tz))
    assert next_nightly_run(retrain, back, older) == datetime(2026, 5, 4, 3, 0, tzinfo=tz)
    late = datetime(2026, 5, 4, 5, 1, tzinfo=tz)
    assert next_nightly_run(retrain, late, last) == datetime(2026, 5, 5, 3, 0, tzinfo=tz)
    ran = NightlyHistory(last_nightly=datetime(2026, 5, 4, 3, 0, 2, tzinfo=tz))
    assert next_nightly_run(retrain, back, ran) == datetime(2026, 5, 5, 3, 0, tzinfo=tz)
    # No run rows at all: nothing says the daemon was meant to be up at 03:00.
    assert next_nightly_run(retrain, back) == datetime(2026, 5, 5, 3, 0, tzinfo=tz)
    # The first run (any trigger) counts as the start of the station's history.
    first = NightlyHistory(first_run=datetime(2026, 5, 3, 14, 0, tzinfo=tz))
    assert next_nightly_run(retrain, back, first) == datetime(2026, 5, 4, 3, 0, tzinfo=tz)
    off = retrain.model_copy(update={"enabled": False})
    assert next_nightly_run(off, back, last) is None

    # The same rows in the database: status shows the missed run as due, the scheduler
    # fires it at once, and the review page's answer is the same one.
    now = datetime.now().astimezone()
    missed = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    config = config.model_copy(update={"retrain": retrain.model_copy(
        update={"hour": missed.hour, "minute": missed.minute})})
    with transaction(sessions) as session:
        session.add(TrainingRun(trigger="nightly", status="skipped", reason="nothing new",
                                started_at=(missed - timedelta(days=1, seconds=-1))
                                .astimezone(UTC), finished_at=utcnow()))
    data = collect_status(config, sessions, now=now.astimezone(UTC))
    assert data["retraining"]["next"] == missed.astimezone(UTC).isoformat()
    with sessions() as session:
        assert next_nightly_run(config.retrain, now, nightly_history(session)) == missed
    fired = []
    scheduler = Scheduler(config, sessions)
    scheduler.add_nightly(lambda: fired.append(1))
    scheduler.start()
    try:
        from helpers import wait_for

        wait_for(lambda: fired, 10, "the missed nightly run")
    finally:
        scheduler.close()


def test_next_nightly_is_pure():
    tz = datetime.now().astimezone().tzinfo
    before = datetime(2026, 3, 1, 2, 59, tzinfo=tz)
    assert next_nightly(3, 0, before) == datetime(2026, 3, 1, 3, 0, tzinfo=tz)
    at = datetime(2026, 3, 1, 3, 0, tzinfo=tz)
    assert next_nightly(3, 0, at) == datetime(2026, 3, 2, 3, 0, tzinfo=tz)


def test_status_command(tmp_path):
    library, state = tmp_path / "library", tmp_path / "state"
    library.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\n[library]\nroot = "{library}"\n')
    exe = [sys.executable, "-m", "daemon.cli", "--config", str(config)]
    done = subprocess.run(exe + ["status", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {"daemon", "tracks", "queue_depth", "files_per_minute", "last_hour",
                         "pending_suggestions", "mixed_albums", "decisions_waiting",
                         "write_failures_total",
                         "write_failures", "model",
                         "last_reconcile", "quarantined_total", "quarantined", "retraining",
                         "components", "skipped_total", "skipped", "cannot_suggest_yet",
                         "workers", "leader", "database", "storage", "library",
                         "not_songs_total", "not_songs", "not_tested"}
    assert data["leader"] is None  # no service has led yet
    assert data["database"] == str(state / "genretagger.db")
    assert data["daemon"]["running"] is False
    assert data["components"] == {} and data["daemon"]["healthy"] is None
    assert data["tracks"]["total"] == 0
    human = subprocess.run(exe + ["status"], capture_output=True, text=True, timeout=120)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("daemon:      never started")


@pytest.mark.slow  # runs the CLI in several subprocesses; make test runs it
def test_root_is_refused_in_the_services_state_dir(tmp_path):
    """`sudo genretagger status` must not leave root-owned files (the database's -wal and
    -shm, backups) in the service's state dir: the service could not open them any more.
    Root is told which command to run instead; nothing is created."""
    library, state = tmp_path / "library", tmp_path / "state"
    library.mkdir()
    state.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\n[library]\nroot = "{library}"\n')
    exe = [sys.executable, "-m", "daemon.cli", "--config", str(config)]
    if os.geteuid() == 0:  # CI runs as root; anyone else cannot be root by mistake
        os.chown(state, 65534, 65534)  # the service's user (here: nobody) owns it
        for command in (["status"], ["review", "list"], ["models", "list"], ["retrain"],
                        ["run"]):
            done = subprocess.run(exe + command, capture_output=True, text=True, timeout=120)
            assert done.returncode == 2, (command, done.stderr)
            assert "belongs to nobody" in done.stderr and "sudo -u nobody" in done.stderr
            assert list(state.iterdir()) == []
        os.chown(state, 0, 0)  # root's own state dir: no objection
    done = subprocess.run(exe + ["status"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (state / "genretagger.db").exists()


def test_init_and_status_on_a_postgresql_database(tmp_path, postgres):
    """`init --database-url` on an empty PostgreSQL database: it is migrated, the config
    carries the URL, check-config passes, and `status` names the database without its
    password."""
    from sqlalchemy.engine import make_url

    from daemon.core.db.engine import make_engine, pending_migrations

    blank = postgres.new_database(migrated=False)
    try:
        url = make_url(blank).set(password="hunter2").render_as_string(hide_password=False)
        library = tmp_path / "library"
        library.mkdir()
        config = tmp_path / "config.toml"
        exe = [sys.executable, "-m", "daemon.cli", "--config", str(config)]
        done = subprocess.run(exe + ["init", "--library", str(library), "--state-dir",
                                     str(tmp_path / "state"), "--database-url", url],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "hunter2" not in done.stdout and ":***@" in done.stdout
        assert f'database_url = "{url}"' in config.read_text()
        engine = make_engine(blank)
        assert pending_migrations(engine) == []
        engine.dispose()
        assert not list((tmp_path / "state").glob("*.db"))  # no SQLite file beside it
        checked = subprocess.run(exe + ["check-config"], capture_output=True, text=True,
                                 timeout=120)
        assert checked.returncode == 0 and "warning" not in checked.stdout, checked.stdout
        status = subprocess.run(exe + ["status", "--json"], capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["database"] == url.replace("hunter2", "***")
        assert data["tracks"]["total"] == 0
        human = subprocess.run(exe + ["status"], capture_output=True, text=True, timeout=120)
        assert human.returncode == 0 and f"database:    {data['database']}" in human.stdout
        assert "hunter2" not in human.stdout + status.stdout
    finally:
        postgres.drop_database(blank)


def test_init_refuses_a_database_url_it_cannot_use(tmp_path):
    """A URL for another database (or PostgreSQL without the psycopg driver named) is a
    config error naming database_url; nothing is written."""
    library = tmp_path / "library"
    library.mkdir()
    config = tmp_path / "config.toml"
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config), "init",
                           "--library", str(library), "--state-dir", str(tmp_path / "state"),
                           "--database-url", "postgresql://station@dbhost/genretagger"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "database_url" in done.stderr and "postgresql+psycopg://" in done.stderr
    assert not config.exists()


def test_check_config_warns_about_a_database_server_it_cannot_reach(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                      'database_url = "postgresql+psycopg://station:s3cret@127.0.0.1:9/gt"\n'
                      f'[library]\nroot = "{library}"\n')
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config),
                           "check-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("warning: database_url postgresql+psycopg://station:***@127.0.0.1:9/gt: cannot "
            "reach it: ") in done.stdout and "s3cret" not in done.stdout
