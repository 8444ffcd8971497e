"""Prometheus metrics: what `status --json` reports, collected when Prometheus scrapes.

The review page serves them at /metrics (daemon.review.web.metrics) behind its own rules.
One custom Collector reads everything at scrape time: the database figures in one short
read transaction (the same functions `status` uses, daemon.service.status), the
components' health from the running service in this process; every worker's heartbeat
age (the service's and each `genretagger worker`'s, on any host) from the workers table.
Nothing is counted in the process between scrapes, so nothing can be counted twice or
drift from what `status` says.

A database that cannot be read within METRICS_BUSY_TIMEOUT_S (locked, full, gone) leaves
its figures out: the answer still comes, with what needs no database and
`genretagger_metrics_db_up 0`.

    genretagger_tracks{state}                       tracks in each state
    genretagger_queue_depth                         queued + retrying + working
    genretagger_quarantined_tracks                  files that cannot be classified
    genretagger_files_last_hour{outcome}            classified | failed, last hour (Events)
    genretagger_files_per_minute{outcome}           the same / 60
    genretagger_pending_suggestions                 waiting for the music director
    genretagger_write_backlog                       decided genres not yet in their files
    genretagger_write_failures                      of those, the last write failed
    genretagger_model_version                       the active model (absent: none yet)
    genretagger_model_accuracy{family}              its test-split figures, by its family
    genretagger_model_macro_f1{family}
    genretagger_tournament_accuracy{family}         each family on the holdout the night
    genretagger_tournament_macro_f1{family}         the active model was chosen
    genretagger_retrain_last_run_info{trigger,status}        1 for the newest training run
    genretagger_retrain_last_run_started_timestamp_seconds
    genretagger_retrain_last_run_finished_timestamp_seconds  absent while it runs
    genretagger_daemon_heartbeat_timestamp_seconds  the service's last heartbeat row
    genretagger_component_alive{component}          0/1, daemon.core.health reports
    genretagger_component_healthy{component}        0/1
    genretagger_worker_heartbeat_age_seconds{worker}  since each running worker last beat
                                                    (worker="host:pid"; stopped ones left out)
    genretagger_metrics_db_up                       1: the database figures are in
    genretagger_state_disk_free_bytes               free space on state_dir's disk (the
                                                    "database" component is unhealthy
                                                    while it is full or writes fail)
plus the process_* metrics of the process serving them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import is_postgresql, make_engine, make_sessionmaker, sqlite_path
from daemon.core.db.models import Model, ServiceState, TrainingRun, utcnow
from daemon.core.disk import state_disk
from daemon.core.health import describe_failure
from daemon.learn.runs import last_run
from daemon.service.status import (
    DAEMON_KEY,
    describe_model,
    events_last_hour,
    pending_suggestions,
    published_health,
    tracks_by_state,
    write_backlog,
)
from daemon.suggest.active import active_model
from daemon.suggest.queue import queue_depth
from daemon.suggest.workers import list_workers
from daemon.tags.live import Live, as_live

log = logging.getLogger(__name__)

PREFIX = "genretagger_"
# A scrape waits at most this long for a lock on the database (Prometheus gives up on the
# whole scrape after 10 s by default).
METRICS_BUSY_TIMEOUT_S = 1.0
# A bundle that does not say its family is the seed CNN (daemon.suggest.bundle).
DEFAULT_FAMILY = "cnn"


@dataclass(frozen=True)
class MetricsSources:
    """What the running service shares with the collector; None where there is no service
    in this process (then the components come from state_dir/health.json, as for status).

    components: daemon.core.health reports by name (Service.components)."""

    components: Callable[[], dict[str, dict[str, Any]]] | None = None


def _gauge(name: str, doc: str, value: float | None = None,
           labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if labels is None:
        return GaugeMetricFamily(PREFIX + name, doc, value=value)
    family = GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
    if value is not None:
        family.add_metric(list(labels.values()), value)
    return family


def _labelled(name: str, doc: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], float(value))
    return family


def _seconds(value: datetime | None) -> float | None:
    return value.astimezone(UTC).timestamp() if value is not None else None


def database_figures(session: Session, now: datetime) -> dict[str, Any]:
    """Everything the metrics take from the database, read in `session`'s one transaction."""
    model = active_model(session)
    beat = session.get(ServiceState, DAEMON_KEY)
    waiting, failed = write_backlog(session)
    return {"by_state": tracks_by_state(session), "queue_depth": queue_depth(session),
            "last_hour": events_last_hour(session, now),
            "pending": pending_suggestions(session), "write_backlog": waiting,
            "write_failures": failed, "model": model, "run": last_run(session),
            "heartbeat": _heartbeat(beat.value if beat is not None else None),
            "worker_ages": {f"{w['host']}:{w['pid']}": w["heartbeat_age"]
                            for w in list_workers(session, now) if w["stopped_at"] is None}}


def _heartbeat(value: Any) -> float | None:
    """The service's heartbeat row (status.DAEMON_KEY) -> its time, None when unreadable."""
    try:
        return datetime.fromisoformat(value["heartbeat"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _track_families(f: dict[str, Any]) -> Iterator[Metric]:
    yield _labelled("tracks", "Tracks in each state.", "state", f["by_state"])
    yield _gauge("queue_depth", "Tracks the worker still has to do (queued, retrying, "
                 "working).", f["queue_depth"])
    yield _gauge("quarantined_tracks", "Files that cannot be classified (retried when the "
                 "file changes).", f["by_state"]["quarantined"])
    yield _labelled("files_last_hour", "Files classified / failed on in the last hour.",
                    "outcome", f["last_hour"])
    yield _labelled("files_per_minute", "Files classified / failed on per minute, over the "
                    "last hour.", "outcome", {k: v / 60.0 for k, v in f["last_hour"].items()})
    yield _gauge("pending_suggestions", "Suggestions waiting for review.", f["pending"])
    yield _gauge("write_backlog", "Decided genres not yet written into their files.",
                 f["write_backlog"])
    yield _gauge("write_failures", "Decided genres whose last write into the file failed.",
                 f["write_failures"])
    if f["heartbeat"] is not None:
        yield _gauge("daemon_heartbeat_timestamp_seconds", "The service's last heartbeat "
                     "in the database.", f["heartbeat"])


def _model_families(model: Model | None) -> Iterator[Metric]:
    if model is None:
        return
    facts, metrics = describe_model(model), model.metrics or {}
    tournament = metrics.get("tournament") if isinstance(metrics.get("tournament"), dict) \
        else {}
    family = str(metrics.get("family") or tournament.get("winner") or DEFAULT_FAMILY)
    yield _gauge("model_version", "The active model's version.", facts["version"])
    for key, what in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        own = facts[key]
        yield _gauge(f"model_{key}", f"The active model's {what} on its test songs.",
                     own if isinstance(own, int | float) else None, {"family": family})
        rows = {str(r.get("family")): r[key] for r in tournament.get("rows") or []
                if isinstance(r, dict) and isinstance(r.get(key), int | float)}
        yield _labelled(f"tournament_{key}", f"Each family's {what} on the holdout songs of "
                        "the night the active model was chosen.", "family", rows)


def _run_families(run: TrainingRun | None) -> Iterator[Metric]:
    if run is None:
        return
    yield _gauge("retrain_last_run_info", "The newest training run: 1, labelled by what "
                 "started it and how it ended.", 1.0,
                 {"trigger": str(run.trigger), "status": str(run.status)})
    yield _gauge("retrain_last_run_started_timestamp_seconds", "When the newest training "
                 "run started.", _seconds(run.started_at))
    if run.finished_at is not None:
        yield _gauge("retrain_last_run_finished_timestamp_seconds", "When the newest "
                     "training run finished.", _seconds(run.finished_at))


def _impatient_from_the_start(sessions: sessionmaker[Session]) -> sessionmaker[Session] | None:
    """Sessions that give up on the database within about METRICS_BUSY_TIMEOUT_S, from the
    moment they connect, on an engine of the scrape's own. SQLite: a new connection's
    set-up (journal mode, pragmas) waits its engine's whole busy timeout, which
    per-transaction impatience cannot shorten. PostgreSQL: connect_timeout (libpq's whole
    seconds) for a server that is gone, lock_timeout and statement_timeout at connect for
    one that is locked or stuck. Other databases: None (`sessions` as they are)."""
    url = str(sessions.kw["bind"].url)
    if is_postgresql(url):
        return make_sessionmaker(make_engine(
            url, busy_timeout=METRICS_BUSY_TIMEOUT_S, connect_timeout=METRICS_BUSY_TIMEOUT_S,
            statement_timeout=METRICS_BUSY_TIMEOUT_S))
    if sqlite_path(url) is None:
        return None
    return make_sessionmaker(make_engine(url, busy_timeout=METRICS_BUSY_TIMEOUT_S))


class StationCollector(Collector):
    """The station's figures at scrape time (see the module docstring for the names)."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session],
                 sources: MetricsSources | None = None):
        self.live = as_live(config)
        self._own = _impatient_from_the_start(sessions)
        self.sessions = self._own or sessions
        self.sources = sources or MetricsSources()

    def close(self) -> None:
        """Close the scrape's own database connections."""
        if self._own is not None:
            self._own.kw["bind"].dispose()

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        figures = self._read_database(now)
        if figures is not None:
            yield from _track_families(figures)
            yield from _model_families(figures["model"])
            yield from _run_families(figures["run"])
            yield _labelled("worker_heartbeat_age_seconds", "Seconds since the worker last "
                            "beat (the workers table).", "worker", figures["worker_ages"])
        yield from self._component_families(now)
        yield _gauge("metrics_db_up", "1 when this scrape could read the database.",
                     0.0 if figures is None else 1.0)
        free = state_disk(self.live.config.state_dir)["free_bytes"]
        if free is not None:
            yield _gauge("state_disk_free_bytes", "Free bytes on the disk holding state_dir "
                         "(the database, backups, models).", float(free))

    def _read_database(self, now: datetime) -> dict[str, Any] | None:
        try:
            with self.sessions() as session:
                return database_figures(session, now)
        except SQLAlchemyError as err:  # answer with the rest; db_up 0 says why it is short
            log.warning("metrics: cannot read the database: %s", describe_failure(err))
            return None

    def _component_families(self, now: datetime) -> Iterator[Metric]:
        if self.sources.components is not None:
            reports = self.sources.components()
        else:
            health = published_health(self.live.config, now)
            reports = health.get("components", {}) if health else {}
        for key in ("alive", "healthy"):
            yield _labelled(f"component_{key}", f"1 when the component is {key} "
                            "(daemon.core.health).", "component",
                            {name: 1.0 if r.get(key) else 0.0 for name, r in reports.items()})


class StationMetrics:
    """What /metrics serves: a registry of its own (never the global one: two apps in
    one process would count twice) with the station's collector and this process's CPU,
    memory and open files. close() when the page stops."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session],
                 sources: MetricsSources | None = None):
        self.collector = StationCollector(config, sessions, sources)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    def exposition(self) -> bytes:
        """The Prometheus text format (CONTENT_TYPE_LATEST), collected now."""
        return generate_latest(self.registry)

    def close(self) -> None:
        self.collector.close()
