"""Timed jobs: the reconciliation walk every `library.reconcile_minutes`, the nightly retrain.

APScheduler 3's BackgroundScheduler with its in-memory job store: nothing the scheduler
does between jobs touches the database, so a locked or full database can fail a job
but never the scheduler's own thread. (With the SQLAlchemy job store one "database is
locked" in update_job killed that thread for good, silently.)

What the persistent store used to give, a nightly run missed while the daemon was down
firing when it comes back (within retrain.misfire_grace_minutes; several missed runs
fire once), comes from the training-run rows instead: `next_nightly_run()` is a pure
function of the retrain config, the time and `NightlyHistory` (the newest nightly run
and the first run of any kind), and the one answer `status`, `retrain`, the review page
and the scheduler itself use. A due time in the past means "missed: runs now".

Every job body runs inside `Scheduler._supervised`: an exception is logged and recorded
in that job's Health (daemon.core.health) and the job runs again at its next time.

The live components a job needs are registered by the Service under a name in the small
registry below and looked up with `live(name)`; a job firing when its component is not
registered (the daemon is shutting down) logs and does nothing. Registered names:
"library" (daemon.library.reconcile.Library), "sessions" (the sessionmaker), "retrainer"
(daemon.learn.retrainer.Retrainer, registers itself in start()), "worker"
(daemon.suggest.worker.Worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import ref_to_obj
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config, RetrainConfig
from daemon.core.errors import GenretaggerError
from daemon.core.health import Health, describe_failure, thread_alive

log = logging.getLogger(__name__)

RECONCILE_JOB = "reconcile"
NIGHTLY_JOB = "nightly-retrain"
NIGHTLY_FUNC = "daemon.learn.retrainer:nightly_job"
# Executor threads: the nightly run (hours), a walk, and room for a late one.
JOB_THREADS = 3


class JobFailed(GenretaggerError):
    """A job ran but did not do its work (e.g. the walk could not write the database)."""


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


# ---- job functions ------------------------------------------------------------------------

def run_reconcile() -> Any | None:
    """One reconciliation walk with the registered Library (which logs the counts and
    publishes them as ServiceState "last_reconcile"). Returns its ReconcileResult."""
    library = live("library")
    if library is None:
        log.info("reconcile skipped: the library is not running")
        return None
    return library.reconcile()


def reconcile_job() -> None:
    """The interval job: one walk; a walk that could not reach the database raises
    JobFailed, so the scheduler records it (and the next interval tries again)."""
    result = run_reconcile()
    if result is not None and result.error:
        raise JobFailed(f"reconcile: {result.error}")


# ---- when the nightly run is due (pure) -------------------------------------------------

def next_nightly(hour: int, minute: int, now: datetime) -> datetime:
    """The next local `hour:minute` strictly after `now` (an aware local datetime)."""
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


@dataclass(frozen=True)
class NightlyHistory:
    """What the training-run rows say: when the newest nightly run started, and when the
    first run of any kind did (the station has been retraining since then)."""

    last_nightly: datetime | None = None
    first_run: datetime | None = None


def next_nightly_run(retrain: RetrainConfig, now: datetime,
                     history: NightlyHistory = NightlyHistory()) -> datetime | None:
    """When the nightly retrain runs next (aware, in now's zone's local time), or None
    when retraining is off.

    A scheduled time that passed without a nightly run since (the daemon was down) is
    still the answer while it is at most retrain.misfire_grace_minutes old: it is due now.
    Older missed runs are skipped; several missed nights count once. Before any run at
    all nothing counts as missed (nothing says the daemon was meant to be up).
    """
    if not retrain.enabled:
        return None
    local = now.astimezone()
    upcoming = next_nightly(retrain.hour, retrain.minute, local)
    previous = upcoming - timedelta(days=1)
    since = history.last_nightly or history.first_run
    if (since is not None and since < previous
            and local - previous <= timedelta(minutes=retrain.misfire_grace_minutes)):
        return previous
    return upcoming


def nightly_history(session: Session) -> NightlyHistory:
    """The two facts next_nightly_run needs, from the training_runs table."""
    from daemon.core.db.models import TrainingRun

    last = session.scalar(select(func.max(TrainingRun.started_at))
                          .where(TrainingRun.trigger == "nightly"))
    first = session.scalar(select(func.min(TrainingRun.started_at)))
    return NightlyHistory(_aware(last), _aware(first))


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return value


# ---- the scheduler -----------------------------------------------------------------------

class Scheduler:
    """APScheduler with an in-memory job store; start()/close(), its own stop event.

    `sessions` (the daemon's sessionmaker) is read for the training-run rows when the
    nightly job is added. Each job has a Health (`job_health[job_id]`); `health_report()`
    covers the scheduler's thread and its jobs.
    """

    def __init__(self, config: Config, sessions: sessionmaker[Session] | None = None):
        self.config = config
        self.sessions = sessions
        self.stop_event = threading.Event()
        self.health = Health("scheduler")
        self.job_health: dict[str, Health] = {}
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(JOB_THREADS)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    def _supervised(self, job_id: str, func: Callable[..., Any], args: tuple) -> None:
        """Run one job body; a failure is logged and recorded, never propagated."""
        health = self.job_health[job_id]
        try:
            func(*args)
        except JobFailed as err:  # the component logged the details already
            log.error("%s; it runs again at its next time", err)
            health.failed(err)
        except Exception as err:
            log.exception("job %s failed; it runs again at its next time", job_id)
            health.failed(err)
        else:
            health.progress()

    def _add(self, job_id: str, name: str, func: Callable[..., Any] | str, trigger,
             args: tuple = (), grace_seconds: int = 60,
             next_run_time: datetime | None = None) -> None:
        if isinstance(func, str):
            if ":" not in func:
                raise ValueError(f"{func!r}: give a textual reference 'module:function'")
            func = ref_to_obj(func)
        self.job_health.setdefault(job_id, Health(job_id))
        extra = {"next_run_time": next_run_time} if next_run_time is not None else {}
        self.scheduler.add_job(self._supervised, trigger, args=(job_id, func, tuple(args)),
                               id=job_id, name=name, replace_existing=True,
                               misfire_grace_time=grace_seconds, **extra)

    def add_reconcile(self, minutes: float | None = None) -> None:
        """Every `minutes` (default library.reconcile_minutes): `reconcile_job`."""
        minutes = minutes or self.config.library.reconcile_minutes
        # A walk more than one interval late is pointless: the next one is due anyway.
        self._add(RECONCILE_JOB, "reconciliation walk", reconcile_job,
                  IntervalTrigger(minutes=minutes), grace_seconds=max(1, int(minutes * 60)))

    def add_nightly(self, func: Callable[..., Any] | str = NIGHTLY_FUNC, *, args: tuple = (),
                    job_id: str = NIGHTLY_JOB, now: datetime | None = None) -> None:
        """Run `func` at retrain.hour:minute local time; a run missed while the daemon was
        down (next_nightly_run, from the training-run rows) runs at once."""
        retrain = self.config.retrain
        now = now or datetime.now().astimezone()
        history = NightlyHistory()
        if self.sessions is not None:
            try:
                with self.sessions() as session:
                    history = nightly_history(session)
            except Exception as err:  # unreadable now: keep the schedule, no catch-up
                log.error("cannot read the training runs for a missed night: %s; the "
                          "nightly retrain keeps its schedule", describe_failure(err))
                self.health.failed(err)
        due = next_nightly_run(retrain, now, history)
        missed = due is not None and due <= now
        if missed:
            log.warning("the nightly retrain of %s did not run (the daemon was down); "
                        "running it now", f"{due:%Y-%m-%d %H:%M}")
        self._add(job_id, "nightly retrain", func,
                  CronTrigger(hour=retrain.hour, minute=retrain.minute), args=args,
                  grace_seconds=retrain.misfire_grace_minutes * 60,
                  next_run_time=now if missed else None)

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
        self.scheduler.start()
        self.health.progress()

    @property
    def running(self) -> bool:
        return self.scheduler.running

    def thread_alive(self) -> bool:
        # APScheduler keeps its loop thread private; it is what fires every job.
        return self.running and thread_alive(getattr(self.scheduler, "_thread", None))

    def health_report(self) -> dict[str, dict[str, Any]]:
        """{"scheduler": report, job id: report, ...} (daemon.core.health shapes)."""
        alive = self.thread_alive()
        reports = {"scheduler": self.health.report(alive)}
        for job_id, health in self.job_health.items():
            job = self.scheduler.get_job(job_id)
            nxt = getattr(job, "next_run_time", None) if job is not None else None
            reports[job_id] = health.report(alive and job is not None,
                                            next_run=nxt.isoformat() if nxt else None)
        return reports

    def close(self) -> None:
        """Stop firing jobs; a job already running finishes on its own (its component's
        close() makes it quick)."""
        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
