"""Timed jobs: the reconciliation walk every `library.reconcile_minutes`, the nightly retrain,
every REQUEUE_DEAD_SECONDS the tracks of dead workers back to the queue, and the daily
backup of a SQLite database.

APScheduler 3's BackgroundScheduler with its in-memory job store: nothing the scheduler
does between jobs touches the database, so a locked or full database can fail a job
but never the scheduler's own thread (a persistent job store writes on every run, and
one "database is locked" there ends that thread for good, silently).

A nightly run missed while the daemon was down fires when it comes back, at the time
daemon.learn.schedule.next_nightly_run gives from the training-run rows (the one answer
`status`, `retrain` and the review page use too).

Every job body runs inside `Scheduler._supervised`: an exception is logged and recorded
in that job's Health (daemon.core.health) and the job runs again at its next time.

A job is handed what it works on when it is added (a bound method or functools.partial:
the job store is in memory, nothing is pickled): `add_reconcile(library)`,
`add_nightly(partial(nightly_job, retrainer))`. The scheduler shuts down before the
components its jobs use close (the service closes in reverse start order).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import ref_to_obj
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.backup import backup_database, list_backups
from daemon.core.db.engine import sqlite_path
from daemon.core.errors import BackupFailed, GenretaggerError
from daemon.core.health import Health, describe_failure, thread_alive
from daemon.learn.schedule import NightlyHistory, next_nightly_run, nightly_history
from daemon.library.reconcile import Library
from daemon.suggest.workers import requeue_dead
from daemon.tags.live import Live, as_live

log = logging.getLogger(__name__)

RECONCILE_JOB = "reconcile"
NIGHTLY_JOB = "nightly-retrain"
REQUEUE_DEAD_JOB = "requeue-dead"
BACKUP_JOB = "backup"
# How often the leader looks for dead workers' tracks (at most half of dead_after).
REQUEUE_DEAD_SECONDS = 30.0
# The nightly job by name (it takes the Retrainer: add_nightly(NIGHTLY_FUNC, args=(r,))).
NIGHTLY_FUNC = "daemon.learn.retrainer:nightly_job"
# Executor threads: the nightly run (hours), a walk, and room for a late one.
JOB_THREADS = 3


class JobFailed(GenretaggerError):
    """A job ran but did not do its work (e.g. the walk could not write the database)."""


# ---- job functions ------------------------------------------------------------------------

def reconcile_job(library: Library) -> None:
    """The interval job: one walk (the Library logs the counts and publishes them as
    ServiceState "last_reconcile"); a walk that could not reach the database raises
    JobFailed, so the scheduler records it (and the next interval tries again)."""
    result = library.reconcile()
    if result is not None and result.error:
        raise JobFailed(f"reconcile: {result.error}")


def _walk_grace(minutes: float) -> int:
    # A walk more than one interval late is pointless: the next one is due anyway.
    return max(1, int(minutes * 60))


# ---- the scheduler -----------------------------------------------------------------------

class Scheduler:
    """APScheduler with an in-memory job store; start()/close(), its own stop event.

    `sessions` (the daemon's sessionmaker) is read for the training-run rows when the
    nightly job is added. Each job has a Health (`job_health[job_id]`); `health_report()`
    covers the scheduler's thread and its jobs.
    """

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session] | None = None):
        self.live = as_live(config)
        self.sessions = sessions
        self.stop_event = threading.Event()
        self.health = Health("scheduler")
        self.job_health: dict[str, Health] = {}
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(JOB_THREADS)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )

    @property
    def config(self) -> Config:
        return self.live.config

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

    def add_reconcile(self, library: Library) -> None:
        """Every library.reconcile_minutes: `reconcile_job(library)`."""
        minutes = self.config.library.reconcile_minutes
        self._add(RECONCILE_JOB, "reconciliation walk", partial(reconcile_job, library),
                  IntervalTrigger(minutes=minutes), grace_seconds=_walk_grace(minutes))

    def add_nightly(self, func: Callable[..., Any] | str, *, args: tuple = (),
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

    def add_requeue_dead(self) -> None:
        """Tracks held by workers whose heartbeat stopped go back to the queue, every
        REQUEUE_DEAD_SECONDS (or half of workers.dead_after_seconds, if sooner)."""
        seconds = min(REQUEUE_DEAD_SECONDS, self.config.workers.dead_after_seconds / 2)
        self._add(REQUEUE_DEAD_JOB, "requeue dead workers' tracks", self._requeue_dead,
                  IntervalTrigger(seconds=seconds), grace_seconds=int(seconds))

    def add_backup(self) -> None:
        """Every day at backup.hour:minute local time, the SQLite database into
        state_dir/backups (daemon.core.db.backup; the newest backup.keep stay). With no
        backup from the last day (a first start, or the daemon was down), one runs now.
        Nothing with backups off, or on PostgreSQL (pg_dump's job)."""
        backup = self.config.backup
        if not backup.enabled or sqlite_path(self.config.db_url) is None:
            return
        now = datetime.now().astimezone()
        newest = list_backups(self.config.backups_dir)
        stale = not newest or (now.timestamp() - newest[0].stat().st_mtime > 86400)
        self._add(BACKUP_JOB, "daily database backup", self._backup,
                  CronTrigger(hour=backup.hour, minute=backup.minute),
                  grace_seconds=6 * 3600, next_run_time=now if stale else None)

    def _backup(self) -> None:
        path = sqlite_path(self.config.db_url)
        if path is None:
            return
        try:
            made = backup_database(path, self.config.backups_dir, "daily",
                                   keep=self.config.backup.keep)
        except BackupFailed as err:
            raise JobFailed(f"backup: {err}") from err
        log.info("backed the database up to %s", made)

    def _requeue_dead(self) -> None:
        requeue_dead(self.sessions, self.config.workers.dead_after_seconds)

    def reschedule_reconcile(self) -> None:
        """Apply the running config's reconcile interval (SIGHUP)."""
        minutes = self.config.library.reconcile_minutes
        if self.scheduler.get_job(RECONCILE_JOB) is not None:
            self.scheduler.modify_job(RECONCILE_JOB, misfire_grace_time=_walk_grace(minutes))
            self.scheduler.reschedule_job(RECONCILE_JOB, trigger=IntervalTrigger(minutes=minutes))

    def next_run(self, job_id: str) -> datetime | None:
        job = self.scheduler.get_job(job_id)
        return getattr(job, "next_run_time", None) if job is not None else None

    def start(self) -> None:
        self.scheduler.start()
        self.health.progress()

    def thread_alive(self) -> bool:
        # APScheduler keeps its loop thread private; it is what fires every job.
        return self.scheduler.running and thread_alive(getattr(self.scheduler, "_thread", None))

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

    def close(self, timeout: float = 0.0) -> None:
        """Stop firing jobs without waiting (`timeout` unused): a job already running
        finishes on its own, and its component's close() makes it quick."""
        self.stop_event.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
