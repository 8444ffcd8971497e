"""`genretagger run`: the service. Wires the components, handles signals, talks to systemd.

Start order (each needs the ones before it):

    leader      one try at the leader lock (daemon.service.leader)
    database    check, open + migrate (backed up first; damaged: exit 3), network-DB warning
    genre map   state_dir/genres.toml (the leader publishes it for every host: see
                daemon.tags.stored_genres), else the newest published, else the shipped
    neighbours  "sounds like": the labelled songs' embeddings in memory, refreshed from
                the database and the embedding cache every minute in its own thread
    worker      decoder pool + the classify loop (requeues what a crash left working);
                it asks the neighbours for each suggestion's nearest songs
    web         the review page
    watcher     filesystem events between walks (settle tracking), armed before ...
    library     ... the initial reconciliation walk, so nothing slips between the two;
                settled files are read (tags, header, fingerprint) in tag-reader child
                processes, which the review page shares for its spectrograms and previews
    writer      accepted genres into the files
    scheduler   reconcile every library.reconcile_minutes; with SQLite, the daily backup
    retrainer   recovers cut-off runs; trains the first model in the background when
                there is none (a trainer subprocess); started once the first walk's
                files have settled, since it learns from their tags; then the nightly
                job is added to the scheduler (a night missed while down runs at once)

Watcher + walk, writer, scheduler and retrainer run only in the leader; a standby (another
service holds the lock) starts them when it takes over. Then READY=1 to systemd. Each
component follows daemon.core.health.Component (start, close, health_report); the
service keeps the started ones in a list. Stop closes them in reverse, within
STOP_SECONDS in all (systemd's TimeoutStopSec is 30): the worker stops claiming first and
finishes its in-flight files while the others close.

Every component reads the running config (and the genre map) from one daemon.tags.live
Live. The main thread is daemon.service.mainloop's, as for `genretagger worker`:
SIGTERM/SIGINT: stop, exit 0. SIGHUP: reload and validate the config file and the
genre map (the leader publishes a changed one), and replace the Live's config with one
carrying what can change while running (LIVE_KEYS); others are logged as needing a restart.

Every HEARTBEAT_SECONDS the service publishes a heartbeat + pid in `service_state` (what
`status` reads) and a STATUS= line for `systemctl status`; a thread of its own writes
every component's health (daemon.core.health) to state_dir/health.json twice as often,
so a locked database cannot hold that back. healthy() (what the watchdog pings on)
covers the main loop and every component.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from daemon.core.config import Config, load_config
from daemon.core.db.backup import DAMAGED_EXIT
from daemon.core.db.engine import transaction
from daemon.core.db.models import ServiceState, utcnow
from daemon.core.errors import ConfigError
from daemon.core.health import Component, describe_failure, write_health
from daemon.core.heap import bound_heap
from daemon.core.threads import limit_math_threads
from daemon.learn.retrainer import Retrainer, nightly_job
from daemon.library.read import reader_pool
from daemon.library.reconcile import Library
from daemon.library.watcher import Watcher
from daemon.review.web.app import WebServer
from daemon.review.writeback import Writer
from daemon.service import storage
from daemon.service.leader import Leadership, Stopping, try_lock
from daemon.service.logs import setup_logging
from daemon.service.mainloop import MainLoop
from daemon.service.metrics import MetricsSources, StationMetrics
from daemon.service.notify import Notifier, WatchdogPinger, watchdog_interval
from daemon.service.scheduler import Scheduler
from daemon.service.status import DAEMON_KEY, HEARTBEAT_SECONDS
from daemon.suggest.neighbours import Neighbours
from daemon.suggest.queue import queue_depth
from daemon.suggest.worker import Worker
from daemon.suggest.workers import beat, register, retire
from daemon.tags.genres import station_genres_file
from daemon.tags.live import LIVE_KEYS, Live, changed_keys, with_keys
from daemon.tags.stored_genres import host_genre_map, publish_genre_map

log = logging.getLogger(__name__)

STOP_SECONDS = 20.0
# Of STOP_SECONDS: how long the worker's in-flight files may take to finish.
DRAIN_SECONDS = 15.0
# Each component but the last to close (the worker, whose in-flight files have been
# draining since the stop began: it gets what is left) closes within this much.
CLOSE_SECONDS = 5.0
# The first model waits for the first walk's files to settle, at most this much longer.
SETTLE_WAIT_SECONDS = 300.0
class Service:
    """The daemon process: `run()` starts everything, serves until a signal, stops."""

    def __init__(self, config: Config, config_path: Path | None = None,
                 notifier: Notifier | None = None):
        self.live = Live(config)
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.loop = MainLoop(HEARTBEAT_SECONDS, on_reload=self.reload,
                             start_failure=self._start_failure)
        self.stop_event = self.loop.stop_event
        self._wake = self.loop.wake
        self._started: list[tuple[str, Component]] = []  # (name, component), in start order
        self._lock = threading.Lock()  # _started vs the late retrainer start
        self._beat = time.monotonic()
        self._running = False  # the main loop has started (start-up is done)
        self.started_at = utcnow()
        self.sessions = None
        self.worker_id: int | None = None  # this service's row in the workers registry
        self.worker: Worker | None = None
        self.neighbours: Neighbours | None = None
        self.library: Library | None = None
        self.watcher: Watcher | None = None
        self.writer: Writer | None = None
        # Set by the review page after every decision; the writer, if it runs here, wakes.
        self.decision_made = threading.Event()
        self.web: WebServer | None = None
        self.readers = None
        self.scheduler: Scheduler | None = None
        self.retrainer: Retrainer | None = None
        self.lock = None  # the leader lock, tried first at start
        self._took_lock = False
        self.leadership: Leadership | None = None  # built once the database is open
        self.pinger = WatchdogPinger(self.notifier, watchdog_interval(), self.healthy)
        self.storage_watch = storage.StorageWatch()
        self._health_stop = threading.Event()
        self._health_thread = threading.Thread(target=self._health_loop, name="health",
                                               daemon=True)

    @property
    def config(self) -> Config:
        return self.live.config

    # ---- start -------------------------------------------------------------------------

    def _add(self, name: str, component: Component) -> Component:
        component.start()
        self._started.append((name, component))
        log.info("started %s", name)
        return component

    def start(self) -> None:
        """Open the database and start every component in order; then READY=1."""
        config = self.config
        bound_heap()  # before onnxruntime and the first batch allocate anything large
        limit_math_threads(config.classifier.threads)
        self.pinger.start()
        self.lock = try_lock(config)  # one try now, before anything is published
        self._took_lock = self.lock.held()
        self._health_thread.start()
        self.notifier.status("opening the database")
        self.engine, self.sessions = storage.open_checked(config)
        live = self.live
        with self.sessions() as session:  # this host's genres.toml, else the leader's
            live.replace_genre_map(host_genre_map(config, session))
        log.info("genre map: %d genres from %s", len(live.genre_map.canonical),
                 live.genre_map.source)
        # This service's row in the workers registry: its worker claims under it and
        # beats it; `status` and /metrics list it; the leadership keeps its role.
        self.worker_id = register(self.sessions, "leader", {"config": str(self.config_path)})
        self.leadership = Leadership(config, self.lock, self.sessions, on_lead=self._lead,
                                     on_lost=self._wake.set, on_status=self.notifier.status,
                                     worker_id=self.worker_id)
        self._publish_heartbeat()

        self.neighbours = self._add("neighbours", Neighbours(config.cache_dir,
                                                             sessions=self.sessions))
        # Stop claiming at once on a stop; what is in flight drains while the rest closes.
        self.worker = self._add("worker", Worker(
            live, self.sessions, worker_id=self.worker_id, neighbours=self.neighbours,
            drain_seconds=DRAIN_SECONDS))
        # Nothing parses a library file in this process: one small pool of child processes
        # reads settled files and decodes the review page's media.
        self.readers = reader_pool(config)
        self.web = self._add("web", WebServer(
            live, self.sessions, decision_made=self.decision_made,
            children=self.readers,
            metrics=StationMetrics(live, self.sessions, MetricsSources(self.components))))
        if not self.leadership.start():  # the leader's parts now, or a standby's polling
            return
        self.notifier.ready(self.status_line())
        log.info("genretagger running on %s (pid %d, %s)", config.library.root, os.getpid(),
                 "the leader" if self.leadership.leading else "a standby")

    def _lead(self) -> None:
        """The leader-only components (a standby's, in the leader thread). Raises Stopping
        once a stop has begun."""
        live, config = self.live, self.config
        publish_genre_map(self.sessions, self.config)
        self.library = Library(live, self.sessions, readers=self.readers)
        # Watch first, then walk: a file copied in while the walk runs is seen by one or
        # the other (both feed the same settle tracker), never by neither.
        self.watcher = self._add_leader("watcher", Watcher(live, self.library))
        self.notifier.status(f"initial walk of {config.library.root}")
        if not self._running:
            self.notifier.extend_timeout(600)  # a big library on a share takes a while
        try:
            self.library.reconcile()
        except Exception:  # a failed first walk is retried by the interval job
            log.exception("initial reconcile failed")
        self.writer = self._add_leader("writer", Writer(
            live, self.sessions, children=self.readers, decision_made=self.decision_made))
        self.scheduler = Scheduler(live, self.sessions)
        self.scheduler.add_reconcile(self.library)
        self.scheduler.add_requeue_dead()
        self.scheduler.add_backup()
        self._add_leader("scheduler", self.scheduler)
        # Its thread recovers runs cut off by a restart and, with no active model, trains
        # the first one (a subprocess) in the background -- from the tagged tracks, so only
        # once the first walk's files have settled.
        self.retrainer = Retrainer(live, self.sessions)
        threading.Thread(target=self._start_retrainer, name="start-retrainer",
                         daemon=True).start()
        self._wake.set()  # the main loop publishes the heartbeat now

    def _add_leader(self, name: str, component: Component) -> Component:
        # A standby's promotion runs in the leader thread: never add after stop() began.
        with self._lock:
            if self.stop_event.is_set():
                raise Stopping
            return self._add(name, component)

    def _start_retrainer(self) -> None:
        """Start the Retrainer once the library has no files left settling (bounded)."""
        settle = self.config.library.settle_seconds
        deadline = time.monotonic() + 3 * settle + SETTLE_WAIT_SECONDS
        self.stop_event.wait(settle + 1)
        while self.library.settling and time.monotonic() < deadline:
            if self.stop_event.wait(1.0):
                return
        with self._lock:
            if self.stop_event.is_set():
                return
            self._add("retrainer", self.retrainer)
        # Now that the retrainer can take it, the nightly job: a night missed while the
        # daemon was down (the run rows say so) runs at once. Outside the lock: reading
        # the rows may wait out a busy database, and healthy() takes that lock.
        if self.config.retrain.enabled and not self.stop_event.is_set():
            self.scheduler.add_nightly(partial(nightly_job, self.retrainer))

    def _retire_worker(self) -> None:
        if self.worker_id is None:
            return
        worker = self.worker
        try:
            if worker is not None:  # the row's files_done is final
                beat(self.sessions, self.worker_id, worker.classified + worker.failed)
            retire(self.sessions, self.worker_id)
        except Exception as err:  # dead_after hands its tracks back anyway
            log.warning("cannot retire worker %d: %s", self.worker_id, describe_failure(err))

    # ---- running -----------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """This service leads (before its Leadership is built: it took the lock)."""
        return self.leadership.leading if self.leadership is not None else self._took_lock

    def run(self) -> int:
        """The main thread (daemon.service.mainloop): start, heartbeat + STATUS until a
        signal, stop. Returns 0 after a signal-initiated stop, 2 when start-up found a
        configuration error, 3 for a damaged database, 1 when it failed otherwise (logged)
        or the leader lost its lock (systemd restarts it, as leader or standby)."""
        return self.loop.run(self)

    def _start_failure(self, err: Exception) -> int | None:
        if damaged := storage.damaged_start(err, self.config):  # systemd: no restart
            log.error("cannot start: %s", damaged)
            return DAMAGED_EXIT
        return None

    def tick(self) -> bool:
        """One beat of the main loop: heartbeat and STATUS=. False once the leader lock
        is lost."""
        self._beat, self._running = time.monotonic(), True
        if self.leadership is not None and self.leadership.lost:
            return False
        self._publish_heartbeat()
        self.notifier.status(self.status_line())
        return True

    def status_line(self) -> str:
        """`systemctl status` line: queue depth, model, last file."""
        try:
            with self.sessions() as session:
                depth = queue_depth(session)
        except Exception as err:  # the DB locked or full: say which, rather than die
            return describe_failure(err)
        worker = self.worker
        model = (f"model {worker.model_id}" if worker and worker.model_id
                 else "no model yet")
        last = worker.last_file if worker and worker.last_file else "none yet"
        line = f"{depth} in queue, {model}, last file: {last}"
        return line if self.leading else f"{self.leadership.waiting_text()}; {line}"

    def _publish_heartbeat(self, stopped: bool = False) -> None:
        if not self.leading:  # `status` shows the leader
            return
        now = utcnow().isoformat()
        value = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started_at": self.started_at.isoformat(), "heartbeat": now,
                 "last_file": self.worker.last_file if self.worker else None,
                 "model_id": self.worker.model_id if self.worker else None,
                 "stopped_at": now if stopped else None}
        try:
            with transaction(self.sessions) as session:
                session.merge(ServiceState(key=DAEMON_KEY, value=value, updated_at=utcnow()))
            self.storage_watch.wrote()
        except Exception as err:  # a locked DB delays the heartbeat; it must not stop us
            log.warning("cannot publish the heartbeat: %s", err)
            self.storage_watch.failed(err, self.config)

    def components(self) -> dict[str, dict[str, Any]]:
        """Every background component's health report (daemon.core.health shapes), by name:
        main, neighbours, worker, watcher, settle, writer, web, scheduler, its jobs, retrainer."""
        main_alive = time.monotonic() - self._beat < 6 * HEARTBEAT_SECONDS
        reports: dict[str, dict[str, Any]] = {
            "main": {"alive": main_alive, "healthy": main_alive or not self._running,
                     "last_progress_at": None, "last_error": None, "last_error_at": None,
                     "errors": 0, "failing": False}}
        with self._lock:
            started = list(self._started)
        for name, component in started:
            try:
                got = component.health_report()
            except Exception as err:  # a report must never take the watchdog down with it
                got = {"alive": False, "healthy": False, "last_error": describe_failure(err)}
            if isinstance(got, dict) and all(isinstance(v, dict) for v in got.values()) \
                    and got:
                reports.update(got)  # a component with several parts (watcher+settle, jobs)
            else:
                reports[name] = got
        if self.leadership is not None:
            reports["leader"] = self.leadership.health_report()
        reports[storage.STORAGE_COMPONENT] = self.storage_watch.report(self.config.state_dir)
        if self.retrainer is not None and "retrainer" not in reports:
            reports["retrainer"] = {**self.retrainer.health_report(), "healthy": True,
                                    "waiting": "for the first walk's files to settle"}
        return reports

    def healthy(self) -> bool:
        """For the watchdog: every thread goes round (storage aside: no restart makes room)."""
        if self.stop_event.is_set() or not self._running:
            return True  # starting or stopping: systemd's start/stop timeouts cover us
        return all(report.get("healthy") for name, report in self.components().items()
                   if name != storage.STORAGE_COMPONENT)

    def _publish_health(self, stopped: bool = False) -> None:
        """state_dir/health.json for `status` (a file, so a locked database cannot hold
        it back)."""
        if not self.leading:
            return
        components = self.components()
        data = {"pid": os.getpid(), "written_at": utcnow().isoformat(),
                "started_at": self.started_at.isoformat(),
                "healthy": all(r.get("healthy") for r in components.values()),
                "stopped_at": utcnow().isoformat() if stopped else None,
                "components": components}
        try:
            write_health(self.config.health_path, data)
        except OSError as err:  # a full state disk: the heartbeat row may still get through
            log.warning("cannot publish component health: %s", describe_failure(err))

    def _health_loop(self) -> None:
        while True:
            self._publish_health()
            if self._health_stop.wait(HEARTBEAT_SECONDS / 2):
                return

    # ---- reload ------------------------------------------------------------------------

    def reload(self) -> list[str]:
        """SIGHUP: re-read and validate the config; apply live keys. Returns changed keys."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            log.error("config reload failed, keeping the running config: %s", err)
            self.notifier.ready(self.status_line())
            return []
        changed = changed_keys(self.config.model_dump(mode="json"),
                               new.model_dump(mode="json"))
        if not changed:
            log.info("config reloaded: nothing changed")
        live = [k for k in changed if k in LIVE_KEYS]
        restart = [k for k in changed if k not in LIVE_KEYS]
        running = new if not restart else with_keys(self.config, new, live)
        # No genres.toml here: the leader's map stays, which the worker keeps following.
        own_map = station_genres_file(running) is not None
        try:  # every component reads live.config from here on
            self.live.replace(running, None if own_map else self.live.genre_map)
        except ConfigError as err:  # genres.toml went bad: keep both as they were
            log.error("config reload failed, keeping the running config: %s", err)
            self.notifier.ready(self.status_line())
            return []
        # What is derived from the config once, rather than read on use:
        if "log_level" in live:
            setup_logging(running.log_level)
        if "library.reconcile_minutes" in live and self.scheduler is not None:
            self.scheduler.reschedule_reconcile()
        if live:
            log.info("config reloaded; applied %s", ", ".join(live))
        if restart:
            log.warning("config changed but needs a restart to apply: %s "
                        "(systemctl restart genretagger)", ", ".join(restart))
        if self.leading:
            publish_genre_map(self.sessions, self.config)
        self.notifier.ready(self.status_line())
        return changed

    # ---- stop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every started component in reverse order, within STOP_SECONDS in all."""
        deadline = time.monotonic() + STOP_SECONDS - 1
        with self._lock:
            self.stop_event.set()
        self.notifier.stopping()
        if self.worker is not None:
            self.worker.stop()  # stop claiming now; in-flight files finish meanwhile
        if self.leadership is not None:
            self.leadership.halt(CLOSE_SECONDS)  # no promotion while we stop
        while self._started:
            name, component = self._started.pop()
            left = max(0.5, deadline - time.monotonic())
            try:
                component.close(min(CLOSE_SECONDS, left) if self._started else left)
            except Exception:
                log.exception("closing %s failed", name)
            log.info("stopped %s", name)
        if self.readers is not None:
            self.readers.close()
        self._health_stop.set()
        if self._health_thread.is_alive():
            self._health_thread.join(2.0)
        self._publish_health(stopped=True)
        if self.sessions is not None:
            self._publish_heartbeat(stopped=True)
            self._retire_worker()
        # The lock goes last, once our last word is written.
        if self.leadership is not None:
            self.leadership.close()
        elif self.lock is not None:  # start-up failed before the database was open
            self.lock.close()
        if self.sessions is not None:
            self.engine.dispose()
        self.pinger.close()
        self.notifier.close()
        log.info("genretagger stopped")
