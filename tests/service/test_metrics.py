"""/metrics: the Prometheus endpoint on the review page.

The real Flask app on a real migrated SQLite file, parsed with prometheus_client's own
parser and compared with what `status --json` (the CLI as a subprocess) says about the
same database; who may read it; a locked database; and the daemon as a real subprocess
scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from urllib.error import HTTPError

import pytest
from helpers import (
    EXE,
    DaemonStation,
    genre_bundle,
    hold_exclusive_lock,
    hold_write_lock,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from werkzeug.security import generate_password_hash

from daemon.core.config import load_config, parse_config
from daemon.core.db.engine import make_engine, make_sessionmaker, transaction
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
from daemon.core.health import write_health
from daemon.core.states import TrackState
from daemon.review.web import create_app
from daemon.service.metrics import METRICS_BUSY_TIMEOUT_S, MetricsSources, StationMetrics
from daemon.service.status import DAEMON_KEY

TOKEN = "scrape-" + "s" * 25
PASSWORD = "station-secret-42"
TOURNAMENT = {"winner": "backbone", "holdout_songs": 40, "rows": [
    {"family": "cnn", "accuracy": 0.8, "macro_f1": 0.71},
    {"family": "backbone", "accuracy": 0.9, "macro_f1": 0.86},
    {"family": "ensemble", "accuracy": 0.875, "macro_f1": 0.84}]}


def _daemon_config(tmp_path, database_url: str | None) -> Path:
    """The config file the daemon's subprocess tests run with (helpers.write_config),
    naming `database_url` when given."""
    path = write_config(tmp_path / "config.toml", tmp_path / "library", tmp_path / "state")
    if database_url is not None:  # a top-level key: before the first [section]
        path.write_text(f'database_url = "{database_url}"\n' + path.read_text())
    return path


@pytest.fixture
def daemon_config_station(database_url, make_station, tmp_path):
    """A station on the daemon's test config (a free review port, one decoder), on SQLite
    and on PostgreSQL."""
    return make_station(config_path=_daemon_config(tmp_path, database_url))


@pytest.fixture
def sqlite_daemon_config_station(make_station, tmp_path):
    """daemon_config_station's SQLite-only twin (its file is state_dir/genretagger.db)."""
    return make_station(config_path=_daemon_config(tmp_path, None))


def close(app) -> None:
    """What WebServer.close does for the app: its children and the scrape's connections."""
    app.extensions["children"].close()
    if "metrics" in app.extensions:
        app.extensions["metrics"].close()


def scrape(client, path: str = "/metrics", **kw) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label pairs: value}, from the parsed exposition text."""
    r = client.get(path, **kw)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "text/plain"
    return parse(r.get_data(as_text=True))


def parse(text: str) -> dict[str, dict[tuple, float]]:
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def value(samples, name: str) -> float:
    return samples[name][()]


def fill(sessions, now: datetime) -> None:
    """The database as a day of the daemon leaves it."""
    states = {TrackState.QUEUED: 6, TrackState.RETRYING: 2, TrackState.WORKING: 1,
              TrackState.SUGGESTED: 4, TrackState.TAGGED: 9, TrackState.QUARANTINED: 3}
    with transaction(sessions) as session:
        tracks = []
        for state, n in states.items():
            for i in range(n):
                track = Track(path=f"{state}/song {i}.mp3", size=1000 + i, mtime=1.0,
                              state=state, last_error="cannot decode" if i else None)
                session.add(track)
                tracks.append(track)
        session.flush()
        suggested = [t for t in tracks if t.state == TrackState.SUGGESTED]
        for track in suggested:
            session.add(Suggestion(track_id=track.id, genre="Rock", confidence=0.9,
                                   top=[["Rock", 0.9], ["Pop", 0.05], ["Jazz", 0.05]]))
        for track, status in zip(suggested, ("pending", "failed", "failed", "written"),
                                 strict=True):
            session.add(Decision(track_id=track.id, action="accept", how="single",
                                 genre="Rock", who="md", write_status=status))
        for i in range(21):
            session.add(Event(at=now - timedelta(minutes=2 * i + 1), kind="classified"))
        for i in range(4):
            session.add(Event(at=now - timedelta(minutes=7 * i + 1), kind="failed"))
        session.add(Event(at=now - timedelta(hours=3), kind="classified"))
        session.add(Model(version=4, path="/state/models/v0004/model.onnx", sha256="ab" * 32,
                          status="active", classes=["Jazz", "Rock", "Pop"], n_songs=120,
                          metrics={"accuracy": 0.9, "macro_f1": 0.86,
                                   "tournament": TOURNAMENT},
                          activated_at=now - timedelta(days=1)))
        session.add(TrainingRun(trigger="nightly", status="rejected",
                                reason="macro-F1 dropped 2.1 points",
                                started_at=now - timedelta(hours=9),
                                finished_at=now - timedelta(hours=8)))
        session.add(ServiceState(key=DAEMON_KEY, value={
            "pid": os.getpid(), "started_at": (now - timedelta(hours=1)).isoformat(),
            "heartbeat": (now - timedelta(seconds=3)).isoformat(), "last_file": None,
            "model_id": 1, "stopped_at": None}))


def publish_health(config) -> None:
    """state_dir/health.json as a live service publishes it (this process's pid)."""
    report = {"last_progress_at": None, "last_error": None, "last_error_at": None,
              "errors": 0, "failing": False}
    write_health(config.health_path, {
        "pid": os.getpid(), "written_at": utcnow().isoformat(), "healthy": False,
        "stopped_at": None, "components": {
            "worker": {**report, "alive": True, "healthy": True},
            "writer": {**report, "alive": True, "healthy": False, "failing": True},
            "watcher": {**report, "alive": False, "healthy": False}}})


def status_json(config_path) -> dict:
    done = subprocess.run(EXE + ["--config", str(config_path), "status", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_metrics_say_what_status_json_says(daemon_config_station):
    path = daemon_config_station.config_path
    config = daemon_config_station.config
    sessions = daemon_config_station.sessions
    fill(sessions, utcnow())
    publish_health(config)
    status = status_json(path)
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions))
    m = scrape(app.test_client())
    close(app)

    assert value(m, "genretagger_metrics_db_up") == 1
    assert by(m, "genretagger_tracks", "state") == status["tracks"]["by_state"]
    assert value(m, "genretagger_queue_depth") == status["queue_depth"] == 9
    assert value(m, "genretagger_quarantined_tracks") == status["quarantined_total"] == 3
    assert by(m, "genretagger_files_last_hour", "outcome") == status["last_hour"] \
        == {"classified": 21, "failed": 4}
    per_minute = by(m, "genretagger_files_per_minute", "outcome")
    assert per_minute == {"classified": 21 / 60, "failed": 4 / 60}
    assert sum(per_minute.values()) == pytest.approx(status["files_per_minute"], abs=0.005)
    assert value(m, "genretagger_pending_suggestions") == status["pending_suggestions"] == 4
    assert value(m, "genretagger_write_backlog") == status["decisions_waiting"] == 3
    assert value(m, "genretagger_write_failures") == status["write_failures_total"] == 2

    assert value(m, "genretagger_model_version") == status["model"]["version"] == 4
    # A model row that does not name its family: the tournament's winner is it.
    assert by(m, "genretagger_model_accuracy", "family") == {
        "backbone": status["model"]["accuracy"]}
    assert by(m, "genretagger_model_macro_f1", "family") == {
        "backbone": status["model"]["macro_f1"]}
    assert by(m, "genretagger_tournament_macro_f1", "family") == {
        r["family"]: r["macro_f1"] for r in TOURNAMENT["rows"]}
    assert by(m, "genretagger_tournament_accuracy", "family")["ensemble"] == 0.875

    last = status["retraining"]["last"]
    assert list(m["genretagger_retrain_last_run_info"]) == [
        (("status", last["status"]), ("trigger", last["trigger"]))]
    assert value(m, "genretagger_retrain_last_run_started_timestamp_seconds") == \
        pytest.approx(datetime.fromisoformat(last["started_at"]).timestamp())
    assert value(m, "genretagger_retrain_last_run_finished_timestamp_seconds") == \
        pytest.approx(datetime.fromisoformat(last["finished_at"]).timestamp())
    assert value(m, "genretagger_daemon_heartbeat_timestamp_seconds") == \
        pytest.approx(datetime.fromisoformat(status["daemon"]["heartbeat"]).timestamp())

    for key in ("alive", "healthy"):
        assert by(m, f"genretagger_component_{key}", "component") == {
            name: float(c[key]) for name, c in status["components"].items()}
    assert by(m, "genretagger_component_healthy", "component") == {
        "worker": 1, "writer": 0, "watcher": 0}
    # The process serving them says what it costs.
    assert value(m, "process_resident_memory_bytes") > 0


def test_an_empty_station_and_the_running_services_own_reports(daemon_config_station):
    """No model, no run, no health file: those families are empty, not made up. With the
    service's sources, components and the worker's heartbeat come from them."""
    config, sessions = daemon_config_station.config, daemon_config_station.sessions
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions))
    m = scrape(app.test_client())
    close(app)
    assert value(m, "genretagger_queue_depth") == 0
    assert "genretagger_model_version" not in m
    assert "genretagger_retrain_last_run_info" not in m
    assert "genretagger_component_alive" not in m
    assert "genretagger_worker_heartbeat_age_seconds" not in m

    sources = MetricsSources(
        components=lambda: {"worker": {"alive": True, "healthy": False}})
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions, sources))
    m = scrape(app.test_client())
    close(app)
    assert by(m, "genretagger_component_alive", "component") == {"worker": 1}
    assert by(m, "genretagger_component_healthy", "component") == {"worker": 0}


def test_metrics_can_be_switched_off(daemon_config_station, tmp_path):
    config, sessions = daemon_config_station.config, daemon_config_station.sessions
    off = parse_config({**config.model_dump(mode="json"), "metrics": {"enabled": False}},
                       "test config")
    handed = StationMetrics(off, sessions)
    app = create_app(off, sessions, metrics=handed)
    assert app.test_client().get("/metrics").status_code == 404
    close(app)
    handed.close()


def test_who_may_read_the_metrics(daemon_config_station):
    """No password or token: this machine only, like the page. With one: a signed-in
    browser or review.token as a bearer token; anything else 401, never the login page;
    wrong tokens are rate-limited like wrong passwords."""
    config, sessions = daemon_config_station.config, daemon_config_station.sessions
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions))
    client = app.test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.168.1.20"}
                      ).status_code == 403
    close(app)

    password_hash = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    locked = parse_config({**config.model_dump(mode="json"), "review": {
        "host": "0.0.0.0", "token": TOKEN, "password_hash": password_hash}}, "test config")
    app = create_app(locked, sessions, metrics=StationMetrics(locked, sessions))
    app.testing = True
    lan = {"REMOTE_ADDR": "192.168.1.20"}
    client = app.test_client()
    refused = client.get("/metrics", environ_base=lan)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "genretagger_" not in refused.get_data(as_text=True)
    for wrong in ("Bearer nope", f"Basic {TOKEN}", f"Bearer {PASSWORD}", "Bearer"):
        assert client.get("/metrics", headers={"Authorization": wrong},
                          environ_base=lan).status_code == 401, wrong
    m = scrape(client, headers={"Authorization": f"Bearer {TOKEN}"}, environ_base=lan)
    assert value(m, "genretagger_metrics_db_up") == 1
    # The token opens /metrics only, not the review pages.
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"},
                      environ_base=lan).status_code == 302

    browser = app.test_client()
    login = browser.get("/login", environ_base=lan).get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', login).group(1)
    assert browser.post("/login", data={"csrf_token": csrf, "password": PASSWORD},
                        environ_base=lan).status_code == 303
    scrape(browser, environ_base=lan)

    guesser = {"REMOTE_ADDR": "192.168.1.66"}
    codes = [client.get("/metrics", headers={"Authorization": f"Bearer guess{i}"},
                        environ_base=guesser).status_code for i in range(6)]
    assert codes == [401] * 5 + [429]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                      environ_base=guesser).status_code == 429
    close(app)


def test_a_held_write_lock_does_not_hold_up_a_scrape(sqlite_daemon_config_station):
    """The daemon's writer (or anyone) holding the write lock: WAL lets the scrape read."""
    config, sessions = sqlite_daemon_config_station.config, sqlite_daemon_config_station.sessions
    fill(sessions, utcnow())
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions))
    holder = hold_write_lock(config.state_dir / "genretagger.db", 8)
    try:
        started = time.monotonic()
        m = scrape(app.test_client())
        assert time.monotonic() - started < 2.0
    finally:
        holder.kill()
        holder.wait()
        close(app)
    assert value(m, "genretagger_metrics_db_up") == 1
    assert value(m, "genretagger_queue_depth") == 9


def test_a_database_nobody_can_read_gives_db_up_0_not_a_hang(sqlite_daemon_config_station):
    """An exclusive lock shuts readers out: the scrape answers within the metrics' busy
    timeout with what needs no database, and says the rest is missing."""
    config, sessions = sqlite_daemon_config_station.config, sqlite_daemon_config_station.sessions
    fill(sessions, utcnow())
    sources = MetricsSources(components=lambda: {"worker": {"alive": True, "healthy": True}})
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions, sources))
    # Exclusive mode on a WAL file is granted only with no other connection open.
    sessions.kw["bind"].dispose()
    holder = hold_exclusive_lock(config.state_dir / "genretagger.db", 15)
    try:
        started = time.monotonic()
        m = scrape(app.test_client())
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert took < METRICS_BUSY_TIMEOUT_S + 2.0
    assert value(m, "genretagger_metrics_db_up") == 0
    assert "genretagger_queue_depth" not in m and "genretagger_tracks" not in m
    assert by(m, "genretagger_component_alive", "component") == {"worker": 1}
    assert "genretagger_worker_heartbeat_age_seconds" not in m  # the workers table
    # Once the lock is gone the next scrape has everything again.
    m = scrape(app.test_client())
    assert value(m, "genretagger_metrics_db_up") == 1
    assert value(m, "genretagger_queue_depth") == 9
    close(app)


@pytest.fixture
def postgres_daemon_config_station(make_station, tmp_path, postgres):
    """daemon_config_station's PostgreSQL-only twin."""
    url = postgres.new_database()
    station = make_station(config_path=_daemon_config(tmp_path, url))
    yield station
    station.close()  # before the database goes
    postgres.drop_database(url)


def test_postgresql_row_locks_do_not_hold_up_a_scrape(postgres_daemon_config_station):
    """PostgreSQL: writers holding row locks on every track (FOR UPDATE) do not stop the
    scrape's reads."""
    config = postgres_daemon_config_station.config
    sessions = postgres_daemon_config_station.sessions
    fill(sessions, utcnow())
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions))
    with sessions() as holder, holder.begin():
        holder.execute(text("SELECT id FROM tracks FOR UPDATE")).all()
        started = time.monotonic()
        m = scrape(app.test_client())
        assert time.monotonic() - started < 2.0
    close(app)
    assert value(m, "genretagger_metrics_db_up") == 1
    assert value(m, "genretagger_queue_depth") == 9


def test_a_locked_or_unreachable_postgresql_gives_db_up_0_fast(postgres_daemon_config_station):
    """PostgreSQL: a table locked against readers (ACCESS EXCLUSIVE, e.g. a migration or
    a VACUUM FULL) or a server that is not there: the scrape answers within about the
    metrics' timeout, db_up 0, with the rest of what it knows."""
    config = postgres_daemon_config_station.config
    sessions = postgres_daemon_config_station.sessions
    fill(sessions, utcnow())
    sources = MetricsSources(components=lambda: {"worker": {"alive": True, "healthy": True}})
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions, sources))
    with sessions() as holder, holder.begin():
        holder.execute(text("LOCK TABLE tracks IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        m = scrape(app.test_client())
        took = time.monotonic() - started
    assert took < METRICS_BUSY_TIMEOUT_S + 1.5
    assert value(m, "genretagger_metrics_db_up") == 0
    assert by(m, "genretagger_component_alive", "component") == {"worker": 1}
    m = scrape(app.test_client())  # the lock gone: everything again
    assert value(m, "genretagger_metrics_db_up") == 1
    close(app)

    gone = make_sessionmaker(make_engine("postgresql+psycopg://station@127.0.0.1:9/none"))
    app = create_app(config, gone, metrics=StationMetrics(config, gone, sources))
    started = time.monotonic()
    m = scrape(app.test_client())
    assert time.monotonic() - started < METRICS_BUSY_TIMEOUT_S + 1.5
    assert value(m, "genretagger_metrics_db_up") == 0
    close(app)


def test_the_running_daemon_serves_metrics_over_http(tmp_path):
    station = DaemonStation(tmp_path, genre_bundle(tmp_path / "bundle", ("Jazz", "Rock"), "Rock"))
    port = load_config(station.config_path).review.port
    station.start()
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return parse(r.read().decode())
        except (OSError, HTTPError):
            return None

    try:
        # The page comes up before the leader's writer has started: wait for all three.
        def all_up():
            s = scraped()
            started = set(by(s, "genretagger_component_alive", "component")) if s else set()
            return s if {"worker", "writer", "web"} <= started else None

        m = station.wait("/metrics", all_up)
        assert value(m, "genretagger_metrics_db_up") == 1
        assert value(m, "genretagger_model_version") == 1
        alive = by(m, "genretagger_component_alive", "component")
        assert alive["worker"] == alive["writer"] == alive["web"] == 1
        ages = by(m, "genretagger_worker_heartbeat_age_seconds", "worker")
        assert list(ages) == [f"{socket.gethostname()}:{station.proc.pid}"]
        assert 0 <= next(iter(ages.values())) < 30
        assert value(m, "process_resident_memory_bytes") > 0
        code, _ = station.stop()
        assert code == 0
    finally:
        station.kill()

