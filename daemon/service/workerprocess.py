"""`genretagger worker`: an extra process that only claims, decodes, classifies and stores
suggestions, for another host that mounts the same music drive (or more cores on this one).

No watcher, reconciliation, writer, review page, scheduler or retrainer: those run in the
one service (`genretagger run`). The process reads the library root and the database
from the shared config, registers in the workers registry (role "worker",
daemon.suggest.workers), and runs one daemon.suggest.worker.Worker under that id: its
loop claims (FOR UPDATE SKIP LOCKED on PostgreSQL), beats the registry, and picks up the
model the leader promotes (daemon.suggest.active). The leader's scheduler hands the tracks
of a worker whose heartbeat stopped back to the queue.

Refuses to start (exit 2, one clear line) when
- the library root is missing or empty: the share is not mounted here, and every file
  would fail as unreadable;
- the database is SQLite on a network filesystem: SQLite's locking does not hold across
  hosts. SQLite on a local disk is allowed for one-host use (extra worker processes beside
  the service on the same machine); several hosts need PostgreSQL.
- the database needs migrations (the service applies them at its start).

SIGTERM/SIGINT: stop claiming, finish in-flight files (drain), hand the rest back, retire
the row, exit 0. sd_notify: READY=1 once claiming, STATUS= every heartbeat, WATCHDOG=1
while the worker's loop goes round. Exit codes as `run`: 0 stopped by a signal, 2
configuration error, 1 any other start-up failure.
"""

from __future__ import annotations

import logging
import os

from daemon.core.config import Config
from daemon.core.db.engine import display_url, open_database, sqlite_path
from daemon.core.errors import ConfigError
from daemon.core.filesystems import filesystem_type, is_network_filesystem
from daemon.core.health import describe_failure
from daemon.core.heap import bound_heap
from daemon.core.threads import limit_math_threads
from daemon.library.mounts import ROOT_EMPTY, ROOT_MISSING, has_entries
from daemon.service.mainloop import MainLoop
from daemon.service.notify import Notifier, WatchdogPinger, watchdog_interval
from daemon.suggest.queue import queue_depth
from daemon.suggest.worker import Worker
from daemon.suggest.workers import HEARTBEAT_SECONDS, beat, register, retire

log = logging.getLogger(__name__)

# Of systemd's TimeoutStopSec (30): the drain gets this much, the rest is bookkeeping.
DRAIN_SECONDS = 20.0


def refuse_to_start(config: Config, mounts_text: str | None = None) -> None:
    """ConfigError when this host cannot be a worker: no library here, or a SQLite file
    other hosts cannot share (see the module docstring). mounts_text: /proc/mounts's
    text (read when None)."""
    root = config.library.root
    if not os.path.isdir(root):
        raise ConfigError(f"library root {root}: {ROOT_MISSING}; mount the music drive on "
                          "this host at the same path the service uses")
    if not has_entries(str(root)):
        raise ConfigError(f"library root {root}: {ROOT_EMPTY}; mount the music drive on this "
                          "host at the same path the service uses")
    path = sqlite_path(config.db_url)
    if path is not None and is_network_filesystem(path.parent, mounts_text):
        raise ConfigError(
            f"database {path} is SQLite on a network filesystem "
            f"({filesystem_type(path.parent, mounts_text)}): a worker needs a shared "
            "database; SQLite works only for workers on the service's own host. For "
            "several hosts set "
            "database_url to PostgreSQL (postgresql+psycopg://...)")


class WorkerProcess:
    """The `genretagger worker` process: run() starts, serves until a signal, stops."""

    def __init__(self, config: Config, name: str | None = None,
                 notifier: Notifier | None = None):
        self.config = config
        self.name = name
        self.notifier = notifier or Notifier()
        self.loop = MainLoop(HEARTBEAT_SECONDS)  # SIGHUP: a changed config needs a restart
        self.stop_event = self.loop.stop_event
        self.engine = self.sessions = None
        self.worker: Worker | None = None
        self.worker_id: int | None = None
        self.pinger = WatchdogPinger(self.notifier, watchdog_interval(), self.healthy)

    def start(self) -> None:
        """Check the host, open the database, register, start the Worker; READY=1."""
        refuse_to_start(self.config)
        bound_heap()
        limit_math_threads(self.config.classifier.threads)
        self.notifier.status("opening the database")
        # upgrade=False: migrations are the service's (it backs the database up first).
        self.engine, self.sessions = open_database(
            self.config.db_url, upgrade=False, busy_timeout=self.config.database_busy_seconds)
        if sqlite_path(self.config.db_url) is not None:
            log.info("the database is SQLite: fine for workers on this host beside the "
                     "service; workers on other hosts need PostgreSQL")
        self.worker_id = register(self.sessions, "worker",
                                  {"name": self.name} if self.name else None)
        self.worker = Worker(self.config, self.sessions, worker_id=self.worker_id,
                             drain_seconds=DRAIN_SECONDS)
        self.worker.start()
        self.pinger.start()
        self.notifier.ready(self.status_line())
        log.info("genretagger worker %d (%s) claiming from %s, library %s", self.worker_id,
                 self.name or f"pid {os.getpid()}", display_url(self.config.db_url),
                 self.config.library.root)

    def run(self) -> int:
        """The main thread (daemon.service.mainloop): 0 after a signal-initiated stop, 2 on
        a configuration error, 1 when start-up failed otherwise (logged)."""
        return self.loop.run(self)

    def tick(self) -> bool:
        """One beat of the main loop: the STATUS= line."""
        self.notifier.status(self.status_line())
        return True

    def status_line(self) -> str:
        """`systemctl status` line: this worker's files, the queue, the model."""
        worker = self.worker
        try:
            with self.sessions() as session:
                depth = queue_depth(session)
        except Exception as err:
            return describe_failure(err)
        done = (worker.classified + worker.failed) if worker else 0
        model = f"model {worker.model_id}" if worker and worker.model_id else "no model yet"
        return f"worker {self.worker_id}: {done} files done, {depth} in queue, {model}"

    def healthy(self) -> bool:
        """For the watchdog: the worker's loop goes round (or we are stopping)."""
        return self.stop_event.is_set() or (self.worker is not None and self.worker.healthy())

    def stop(self) -> None:
        """Stop claiming, drain, hand back what is left, retire the row."""
        self.stop_event.set()
        self.notifier.stopping()
        if self.worker is not None:
            self.worker.close()
        if self.worker_id is not None:
            try:
                done = (self.worker.classified + self.worker.failed) if self.worker else 0
                beat(self.sessions, self.worker_id, done)  # the row's files_done is final
                retire(self.sessions, self.worker_id)
            except Exception as err:  # the leader hands its tracks back after dead_after
                log.warning("cannot retire worker %d: %s", self.worker_id,
                            describe_failure(err))
        if self.engine is not None:
            self.engine.dispose()
        self.pinger.close()
        self.notifier.close()
        log.info("genretagger worker stopped")

