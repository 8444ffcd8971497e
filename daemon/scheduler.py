"""Timed jobs: the reconciliation walk every `library.reconcile_minutes`, the nightly retrain.

APScheduler 3's BackgroundScheduler keeps its jobs in the daemon's own database (table
`apscheduler_jobs`, created by APScheduler itself), so a nightly run missed while the
server was down still fires when the daemon comes back within the grace time, and a
backlog of missed runs collapses into one (coalesce).

Jobs stored in a database cannot hold live objects. So:
- a job's function is a module-level function named by its textual reference
  ("module:function"), and its arguments are plain picklable values (ids, strings);
- the live components a job needs (the Library, the Retrainer, ...) are registered by
  the Service under a name in the small registry below, and the job function looks them
  up with `live(name)`. A job firing when its component is not registered (the daemon is
  shutting down) logs and does nothing.

Registered names: "library" (daemon.library.Library), "sessions" (the sessionmaker),
"retrainer" (daemon.retrain.Retrainer, registers itself in start()), "worker"
(daemon.worker.Worker).

The nightly retrain: `daemon.retrain:nightly_job` calls `live("retrainer").run("nightly")`;
the Service adds it with `scheduler.add_nightly(NIGHTLY_FUNC)` when `retrain.enabled`
(any module-level "module:function" works the same way).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import Config
from daemon.db.engine import make_engine

log = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
RECONCILE_JOB = "reconcile"
NIGHTLY_JOB = "nightly-retrain"
NIGHTLY_FUNC = "daemon.retrain:nightly_job"  # helper F's job function

# ---- the registry of live components that stored jobs reach ---------------------------

_live: dict[str, Any] = {}
_live_lock = threading.Lock()


def register(name: str, component: Any) -> None:
    """Make `component` reachable by job functions as `live(name)`."""
    with _live_lock:
        _live[name] = component


def unregister(name: str) -> None:
    with _live_lock:
        _live.pop(name, None)


def live(name: str) -> Any | None:
    """The component registered under `name`, or None (not running / shutting down)."""
    with _live_lock:
        return _live.get(name)


# ---- job functions (module level: stored by textual reference) --------------------------

def run_reconcile() -> Any | None:
    """One reconciliation walk with the registered Library (which logs the counts and
    publishes them as ServiceState "last_reconcile"). Returns its ReconcileResult."""
    library = live("library")
    if library is None:
        log.info("reconcile skipped: the library is not running")
        return None
    return library.reconcile()


def reconcile_job() -> None:
    """The interval job (textual reference `daemon.scheduler:reconcile_job`)."""
    try:
        run_reconcile()
    except Exception:  # a failed walk is retried at the next interval
        log.exception("reconcile failed")


# ---- the scheduler -----------------------------------------------------------------------

def next_nightly(hour: int, minute: int, now: datetime) -> datetime:
    """The next local `hour:minute` strictly after `now` (an aware local datetime)."""
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


class Scheduler:
    """APScheduler with a job store in the daemon's database. start()/close(), own stop event.

    `sessions_or_url` is the daemon's sessionmaker (its engine is reused) or a DB URL.
    """

    def __init__(self, config: Config, sessions_or_url: sessionmaker[Session] | str):
        self.config = config
        if isinstance(sessions_or_url, str):
            engine: Engine = make_engine(sessions_or_url)
        else:
            engine = sessions_or_url.kw["bind"]
        self.stop_event = threading.Event()
        store = SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)
        # Created here, before the daemon's writers start, rather than in start().
        self._retry("creating the job table",
                    lambda: store.jobs_t.create(engine, checkfirst=True))
        self.scheduler = BackgroundScheduler(
            jobstores={"default": store},
            executors={"default": {"type": "threadpool", "max_workers": 2}},
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def add_reconcile(self, minutes: float | None = None) -> None:
        """Every `minutes` (default library.reconcile_minutes): `reconcile_job`."""
        minutes = minutes or self.config.library.reconcile_minutes
        self.scheduler.add_job(
            "daemon.scheduler:reconcile_job", IntervalTrigger(minutes=minutes),
            id=RECONCILE_JOB, name="reconciliation walk", replace_existing=True,
            # A walk more than one interval late is pointless: the next one is due anyway.
            misfire_grace_time=max(1, int(minutes * 60)),
        )

    def add_nightly(self, func: str, *, args: tuple = (), job_id: str = NIGHTLY_JOB) -> None:
        """Run `func` ("module:function", picklable `args`) at retrain.hour:minute local time.

        A run missed while the daemon was down still fires within
        retrain.misfire_grace_minutes after it comes back; several missed runs fire once.
        """
        if ":" not in func:
            raise ValueError(f"{func!r}: give a textual reference 'module:function'")
        retrain = self.config.retrain
        self.scheduler.add_job(
            func, CronTrigger(hour=retrain.hour, minute=retrain.minute), args=list(args),
            id=job_id, name="nightly retrain", replace_existing=True,
            misfire_grace_time=retrain.misfire_grace_minutes * 60,
        )

    def remove(self, job_id: str) -> None:
        if self.scheduler.get_job(job_id) is not None:
            self.scheduler.remove_job(job_id)

    def reschedule_reconcile(self, minutes: float) -> None:
        """Apply a new reconcile interval (SIGHUP)."""
        self.add_reconcile(minutes)

    def next_run(self, job_id: str) -> datetime | None:
        job = self.scheduler.get_job(job_id)
        return getattr(job, "next_run_time", None) if job is not None else None

    def start(self) -> None:
        self._retry("starting the scheduler", self.scheduler.start)

    def _retry(self, what: str, func, attempts: int = 10) -> None:
        """SQLite answers "database is locked" at once, without waiting, when a read
        turns into a write while another connection writes; that passes in a moment."""
        for attempt in range(1, attempts + 1):
            try:
                func()
                return
            except OperationalError as err:
                if attempt == attempts or self.stop_event.wait(0.5):
                    raise
                log.warning("%s: %s; trying again", what, str(err).splitlines()[0])

    @property
    def running(self) -> bool:
        return self.scheduler.running

    def close(self) -> None:
        """Stop firing jobs; a job already running finishes on its own (its component's
        close() makes it quick)."""
        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
