"""`genretagger status`: what the daemon is doing, read from the database alone.

Works whether or not the daemon runs (it reads the same database; SQLite WAL lets it
read while the daemon writes). The daemon publishes a heartbeat in `service_state`
(key "daemon") and every component's health in state_dir/health.json (daemon.core.health);
it counts as running when either is fresh and its pid is alive.

`status --json` shape (stable; times are ISO 8601 UTC strings or null):

    {
      "daemon": {"running": bool, "pid": int|null, "started_at": str|null,
                 "heartbeat": str|null, "stopped_at": str|null, "last_file": str|null,
                 "model_loaded": int|null,
                 "healthy": bool|null,        # null: no live service published its health
                 "publishing": bool},         # false: alive (it holds the leader lock)
                                              # but neither heartbeat nor health is fresh
      "storage": {"state_dir": str, "free_bytes": int|null, "total_bytes": int|null,
                  "disk_full": bool,          # less than 1 MiB free on state_dir's disk
                  "database_unwritable": str|null,   # why the SQLite file cannot be written
                  "condition": str|null},     # what is wrong, in words; null: all well
      "library": {"root": str, "problem": str|null,    # why the root cannot be read
                  "unreadable_folders": [str]},       # folders the last walk could not
                                                      # list (their songs are kept)
      "leader": null | {"host": str, "pid": int, "since": str,   # the service running the
                        "stopped_at": str|null},  # walk, writer, scheduler, retrainer
      "components": {name: {"alive": bool, "healthy": bool, "last_progress_at": str|null,
                            "last_error": str|null, "last_error_at": str|null,
                            "errors": int, "failing": bool, ...}},
                     # main, neighbours, worker, watcher, settle, writer, web, scheduler, reconcile,
                     # nightly-retrain, retrainer; {} when the daemon is not running
      "database": str,               # a SQLite file's path, or the URL without password
      "tracks": {"total": int, "by_state": {state: int for every TrackState}},
      "queue_depth": int,            # queued + retrying + working
      "files_per_minute": float,     # classified + failed over the last hour / 60
      "last_hour": {"classified": int, "failed": int},
      "pending_suggestions": int,
      "mixed_albums": int,           # albums whose tagged/confirmed songs carry different
                                     # genres (`review album mixed` lists them)
      "decisions_waiting": int,      # decided genres not yet written into files
                                     # (write pending, or failed and retried later)
      "write_failures_total": int,   # of those, the ones whose last write failed
      "write_failures": [{"path": str, "genre": str|null, "reason": str|null,
                          "attempts": int, "next_try": str|null}],   # oldest 20
      "model": null | {"id": int, "version": int, "path": str, "activated_at": str|null,
                       "n_songs": int, "classes": [str], "accuracy": float|null,
                       "macro_f1": float|null},
      "last_reconcile": null | {"at": str, "seconds": float, "guarded": bool,
                                "reason": str|null, ...the walk's counts},
      "skipped_total": int,          # song-named entries the last walk did not read:
      "skipped": [{"path": str, "reason": str}],   # folders, FIFOs, sockets, devices,
                                     # broken links, loops, links leading outside (first 50)
      "quarantined_total": int,
      "quarantined": [{"path": str, "reason": str|null, "attempts": int,
                       "since": str|null}],   # newest 20
      "not_songs_total": int,        # files that are not songs ([library] exclude,
      "not_songs": [{"path": str,    # min_song_seconds, "Not a song" in review): never
                     "reason": str|null, "since": str|null}],  # queued or trained on;
                                     # the first 100 by path
      "cannot_suggest_yet": {genre: {"songs": int, "needs": int}},
                     # the station's genres the active model (or, with none, any model)
                     # does not suggest: its labelled songs now and how many more it
                     # needs (min_songs_per_genre_backbone with the backbone on, else
                     # min_songs_per_genre; 0: enough now, learned at the next retrain)
      "not_tested": {genre: str},   # the active model learned it but no held-out song
                                     # could test it: why, in words
      "workers": [{"id": int, "host": str, "pid": int,
                   "role": str,               # leader | standby (a service) | worker
                   "name": str|null,          # `genretagger worker --name`
                   "started_at": str, "heartbeat_at": str, "heartbeat_age": float,
                   "files_done": int, "files_per_minute": float,  # over the last minute
                   "genre_map": int|null,     # the leader's published version it follows
                                              # (null: its own genres.toml)
                   "alive": bool, "stopped_at": str|null}],
                     # every process that claims tracks, running or stopped in the
                     # last day, oldest first; dead = stopped, heartbeat older than
                     # workers.dead_after_seconds, or its pid gone on this host
      "retraining": {"enabled": bool,
                     "last": null | {"id": int, "trigger": str, "status": str,
                                     "reason": str|null, "started_at": str|null,
                                     "finished_at": str|null, "model_id": int|null},
                     "next": str|null}
    }
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import display_url, sqlite_path
from daemon.core.db.models import (
    Decision,
    Event,
    Model,
    ServiceState,
    Suggestion,
    Track,
    utcnow,
)
from daemon.core.health import pid_alive, read_health
from daemon.core.states import WRITE_OUTSTANDING, TrackState, WriteStatus
from daemon.learn.labels import station_cannot_suggest
from daemon.learn.report import model_report_facts
from daemon.learn.runs import last_run
from daemon.learn.schedule import next_nightly_run, nightly_history
from daemon.review.albums import count_mixed
from daemon.review.decisions import waiting_for_review
from daemon.service.leader import LEADER_KEY, lock_holder
from daemon.service.storage import library_problem, storage_status
from daemon.suggest.active import active_model
from daemon.suggest.queue import queue_depth
from daemon.suggest.workers import list_workers

DAEMON_KEY = "daemon"
LAST_RECONCILE_KEY = "last_reconcile"
# The daemon writes its heartbeat every HEARTBEAT_SECONDS; three missed ones = not running.
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 3 * HEARTBEAT_SECONDS
QUARANTINE_SHOWN = 20
NOT_SONGS_SHOWN = 100
WRITE_FAILURES_SHOWN = 20


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def daemon_running(value: dict | None, now: datetime) -> bool:
    """A heartbeat dict (ServiceState "daemon") -> is the daemon up right now?"""
    if not value or value.get("stopped_at"):
        return False
    try:
        beat = datetime.fromisoformat(value["heartbeat"])
    except (KeyError, TypeError, ValueError):
        return False
    fresh = (now - beat).total_seconds() <= STALE_SECONDS
    # A leader on another host (several hosts, one database): its pid means nothing here.
    elsewhere = value.get("host") not in (None, socket.gethostname())
    return fresh and (elsewhere or pid_alive(value.get("pid")))


def next_retrain(session: Session, config: Config, now: datetime) -> datetime | None:
    """The nightly job's next run (UTC): daemon.learn.schedule.next_nightly_run on the
    training-run rows, the same answer the running scheduler acts on."""
    due = next_nightly_run(config.retrain, now, nightly_history(session))
    return due.astimezone(UTC) if due is not None else None


def published_health(config: Config, now: datetime) -> dict | None:
    """The running service's state_dir/health.json, or None when no live service wrote a
    fresh one (stopped, crashed, or never started)."""
    data = read_health(config.health_path)
    if not data or data.get("stopped_at") or not pid_alive(data.get("pid")):
        return None
    try:
        written = datetime.fromisoformat(data["written_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return data if (now - written).total_seconds() <= STALE_SECONDS else None


def model_status(session: Session) -> dict | None:
    """The active model as `status --json` shows it, or None."""
    return describe_model(active_model(session))


def describe_model(model: Model | None) -> dict | None:
    """A model row as `status --json`'s "model" (None stays None)."""
    if model is None:
        return None
    metrics = model.metrics or {}
    return {"id": model.id, "version": model.version, "path": model.path,
            "activated_at": _iso(model.activated_at), "n_songs": model.n_songs,
            "classes": list(model.classes or []), "accuracy": metrics.get("accuracy"),
            "macro_f1": metrics.get("macro_f1")}


def events_last_hour(session: Session, now: datetime) -> dict[str, int]:
    """Files the worker classified and failed on in the hour before `now` (Event rows)."""
    rows = session.execute(
        select(Event.kind, func.count()).where(Event.at >= now - timedelta(hours=1),
                                                Event.kind.in_(("classified", "failed")))
        .group_by(Event.kind)).all()
    events = dict(rows)
    return {"classified": int(events.get("classified", 0)),
            "failed": int(events.get("failed", 0))}


def _daemon_part(beat: dict, health: dict | None, now: datetime,
                 holder: int | None = None) -> dict[str, Any]:
    # The health file is written apart from the database: a daemon waiting out a locked
    # database still counts as running. On a full disk it can write neither; the leader
    # lock's holder still says it is alive.
    publishing = daemon_running(beat, now) or health is not None
    alive = holder is not None and pid_alive(holder)
    return {
        "running": publishing or alive,
        "publishing": publishing,
        "healthy": health.get("healthy") if health else (False if alive else None),
        "pid": beat.get("pid") if publishing or not alive else holder,
        "started_at": beat.get("started_at"),
        "heartbeat": beat.get("heartbeat"),
        "stopped_at": beat.get("stopped_at"),
        "last_file": beat.get("last_file"),
        "model_loaded": beat.get("model_id"),
    }


def write_backlog(session: Session) -> tuple[int, int]:
    """(decided genres not yet in their files, of those the ones whose last write failed)."""
    live = Decision.undone.is_(False)
    waiting = session.scalar(select(func.count()).select_from(Decision).where(
        Decision.write_status.in_(WRITE_OUTSTANDING), live)) or 0
    failed = session.scalar(select(func.count()).select_from(Decision).where(
        Decision.write_status == WriteStatus.FAILED, live)) or 0
    return int(waiting), int(failed)


def _writes(session: Session) -> dict[str, Any]:
    """Decided genres not yet in their files: how many, and the oldest failures."""
    waiting, failed_total = write_backlog(session)
    failed = session.execute(
        select(Decision, Track.path).join(Track, Decision.track_id == Track.id)
        .where(Decision.write_status == WriteStatus.FAILED, Decision.undone.is_(False))
        .order_by(Decision.id).limit(WRITE_FAILURES_SHOWN)).all()
    return {"decisions_waiting": waiting, "write_failures_total": failed_total,
            "write_failures": [{"path": path, "genre": d.genre, "reason": d.write_error,
                                "attempts": d.write_attempts,
                                "next_try": _iso(d.next_write_at)} for d, path in failed]}


def _quarantined(session: Session) -> list[dict[str, Any]]:
    tracks = session.scalars(
        select(Track).where(Track.state == TrackState.QUARANTINED)
        .order_by(Track.state_changed_at.desc(), Track.id.desc())
        .limit(QUARANTINE_SHOWN)).all()
    return [{"path": t.path, "reason": t.last_error, "attempts": t.attempts,
             "since": _iso(t.state_changed_at)} for t in tracks]


def _not_songs(session: Session) -> list[dict[str, Any]]:
    tracks = session.scalars(
        select(Track).where(Track.state == TrackState.NOT_A_SONG)
        .order_by(Track.path).limit(NOT_SONGS_SHOWN)).all()
    return [{"path": t.path, "reason": t.not_song_reason, "since": _iso(t.state_changed_at)}
            for t in tracks]


def _retraining(session: Session, config: Config, now: datetime) -> dict[str, Any]:
    last = last_run(session)
    return {
        "enabled": config.retrain.enabled,
        "last": None if last is None else {
            "id": last.id, "trigger": last.trigger, "status": last.status,
            "reason": last.reason, "started_at": _iso(last.started_at),
            "finished_at": _iso(last.finished_at), "model_id": last.model_id},
        "next": _iso(next_retrain(session, config, now)),
    }


def _workers(session: Session, config: Config, now: datetime) -> list[dict[str, Any]]:
    rows = list_workers(session, now, config.workers.dead_after_seconds)
    return [{**w, **{k: _iso(w[k]) for k in ("started_at", "heartbeat_at", "stopped_at")}}
            for w in rows]


def tracks_by_state(session: Session) -> dict[str, int]:
    """How many tracks are in each TrackState (every state, 0 when none)."""
    counts = dict(session.execute(
        select(Track.state, func.count()).group_by(Track.state)).all())
    return {state.value: int(counts.get(state.value, 0)) for state in TrackState}


def pending_suggestions(session: Session) -> int:
    """Suggestions waiting for the music director."""
    return int(session.scalar(select(func.count()).select_from(Suggestion)
                              .join(Track, Suggestion.track_id == Track.id)
                              .where(waiting_for_review())) or 0)


def collect_status(config: Config, sessions: sessionmaker[Session],
                   now: datetime | None = None) -> dict[str, Any]:
    """Everything `status` shows, as the documented JSON-able dict."""
    now = now or utcnow()
    with sessions() as session:
        by_state = tracks_by_state(session)
        last_hour = events_last_hour(session, now)
        heartbeat = session.get(ServiceState, DAEMON_KEY)
        reconcile = session.get(ServiceState, LAST_RECONCILE_KEY)
        leader = session.get(ServiceState, LEADER_KEY)
        walk = dict(reconcile.value or {}) if reconcile is not None else None
        health = published_health(config, now)
        components = health.get("components", {}) if health else {}
        active = active_model(session)
        holder = lock_holder(config.state_dir) if sqlite_path(config.db_url) else None
        root = config.library.root
        return {
            "daemon": _daemon_part(dict(heartbeat.value) if heartbeat is not None else {},
                                   health, now, holder),
            "storage": storage_status(config, components),
            "library": {"root": str(root), "problem": library_problem(root),
                        "unreadable_folders": list((walk or {}).get("unreadable_folders")
                                                   or [])},
            "leader": dict(leader.value) if leader is not None else None,
            "components": components,
            "database": display_url(config.db_url),
            "tracks": {"total": sum(by_state.values()), "by_state": by_state},
            "queue_depth": queue_depth(session),
            "files_per_minute": round((last_hour["classified"] + last_hour["failed"]) / 60.0,
                                      2),
            "last_hour": last_hour,
            "pending_suggestions": pending_suggestions(session),
            "mixed_albums": count_mixed(session),
            **_writes(session),
            "model": model_status(session),
            "last_reconcile": dict(reconcile.value) if reconcile is not None else None,
            "skipped_total": int(walk.get("skipped", 0)) if walk is not None else 0,
            "skipped": list(walk.get("skipped_files", [])) if walk is not None else [],
            "quarantined_total": by_state["quarantined"],
            "quarantined": _quarantined(session),
            "not_songs_total": by_state[TrackState.NOT_A_SONG],
            "not_songs": _not_songs(session),
            "retraining": _retraining(session, config, now),
            "workers": _workers(session, config, now),
            "cannot_suggest_yet": station_cannot_suggest(
                session, config, active.classes or [] if active is not None else []),
            "not_tested": model_report_facts(active)["not_tested"] if active is not None
            else {},
        }
