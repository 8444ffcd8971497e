"""Watching the library between reconcile walks, and settling what it reports.

    observer      watchdog: inotify on local disks; polling on network mounts (cifs, smb3,
                  nfs, nfs4, fuse.sshfs, ...: inotify only sees changes made through this
                  kernel, not by another SMB/NFS client). `library.watch` overrides.
    handler       each created/modified/closed/moved/deleted file -> Library.notice (one
                  stat; a move is a delete plus a create, recognised by fingerprint later)
    settle loop   a thread: every second Library.settle_due() (the stages of
                  daemon.library.settle), and a look at the root

The polling observer stats with lstat and neither observer follows symlinked folders, so
a link loop cannot hang them; files behind a symlinked folder are found by the reconcile
walk instead. When the root vanishes (an SMB mount dropped) or is replaced (remounted:
another device/inode) the observer is dead or watching the wrong thing: the settle loop
notices, logs once, and re-arms a fresh observer when the root is back, followed by one
reconcile walk for whatever changed while nobody was looking.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from daemon.core.config import LibraryConfig
from daemon.core.filesystems import filesystem_type, is_network_filesystem
from daemon.core.health import Health, thread_alive
from daemon.library.reconcile import Library
from daemon.tags.live import Live

log = logging.getLogger(__name__)

# Opened/closed-without-writing events are left out on purpose: the worker reading a song
# must not look like a change.
EVENTS = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileMovedEvent,
          FileDeletedEvent, DirCreatedEvent, DirMovedEvent, DirDeletedEvent]
SETTLE_INTERVAL = 1.0
SETTLE_LIMIT = 200  # files settled per pass
JOIN_SECONDS = 5.0

Kind = Literal["native", "polling"]


def observer_kind(watch: str, network: bool) -> Kind:
    """config.library.watch ("auto" | "native" | "polling") + whether the root is on a
    network filesystem -> which observer to run."""
    if watch in ("native", "polling"):
        return watch  # type: ignore[return-value]
    return "polling" if network else "native"


def root_identity(root: str) -> tuple[int, int] | None:
    """(device, inode) of the root folder, None when it is not there."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(root) else None


class _Events(FileSystemEventHandler):
    """Passes file paths from events to Library.notice. Runs on watchdog's thread: cheap,
    and never raises (an exception there would kill the observer)."""

    def __init__(self, library: Library):
        self.library = library

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.is_directory:
                return  # watchdog reports the files of a moved-in folder one by one
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self.library.notice(os.fsdecode(path))
        except Exception:
            log.exception("watch event %r could not be handled", event)


class Watcher:
    """Watches the library root and settles what changes.

    `Watcher(config.library, library)`; start() starts the observer and the settle thread,
    close() stops both (bounded by a few seconds). Owns its stop event.
    """

    def __init__(self, config: Live | LibraryConfig, library: Library, *,
                 settle_interval: float = SETTLE_INTERVAL):
        # Given its library section alone, the watcher follows its library's Live.
        self.live = config if isinstance(config, Live) else library.live
        self.library = library
        self.root = library.root
        self.settle_interval = settle_interval
        self.kind: Kind = observer_kind(self.config.watch, is_network_filesystem(self.root))
        self.stop = threading.Event()
        self.rearmed = 0  # how many times the observer was re-armed after losing the root
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None
        self._root_lost = False
        self._thread: threading.Thread | None = None
        self.health = Health("watcher")

    @property
    def config(self) -> LibraryConfig:
        return self.live.config.library

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start the settle thread, which arms the observer first thing (arming walks the
        tree: on a big share that takes a while, and must not hold up the service's
        start). Does not reconcile: the service walks at start-up and on its interval."""
        log.info("watching %s (%s filesystem) with the %s observer%s", self.root,
                 filesystem_type(self.root), self.kind,
                 f", polling every {self.config.poll_seconds:g} s"
                 if self.kind == "polling" else "")
        self._thread = threading.Thread(target=self._settle_loop, name="settle", daemon=True)
        self._thread.start()

    def close(self, timeout: float = JOIN_SECONDS) -> None:
        """Stop the settle thread and the observer; returns within about `timeout` s."""
        deadline = time.monotonic() + timeout
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("settle thread still busy after %.0f s; leaving it", timeout)
        self._disarm(max(0.5, deadline - time.monotonic()))

    def health_report(self) -> dict[str, dict]:
        """{"watcher": ..., "settle": ...} (daemon.core.health shapes). The settle thread re-arms
        a dead observer and waits out a lost root, so the pair is healthy while it runs."""
        settle_alive = thread_alive(self._thread)
        watcher = self.health.report(self.watching, healthy=settle_alive, kind=self.kind,
                                     root_lost=self._root_lost, rearmed=self.rearmed)
        settle = self.library.settle_health.report(settle_alive,
                                                   settling=self.library.settling)
        return {"watcher": watcher, "settle": settle}

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def watching(self) -> bool:
        """Whether an observer is running on the root as it is now."""
        observer = self._observer
        return (observer is not None and observer.is_alive()
                and bool(observer.emitters)
                and all(e.is_alive() for e in observer.emitters)
                and self._identity is not None and self._identity == root_identity(self.root))

    # ---------------------------------------------------------------- observer

    def _new_observer(self, kind: Kind) -> BaseObserver:
        if kind == "polling":
            # lstat: a symlinked folder is not descended into, so a loop cannot recurse.
            return PollingObserverVFS(os.lstat, os.scandir,
                                      polling_interval=self.config.poll_seconds)
        return Observer()

    def _arm(self) -> bool:
        """Start a fresh observer on the root. False when the root is not there."""
        identity = root_identity(self.root)
        if identity is None:
            self._lose_root()
            return False
        observer = self._new_observer(self.kind)
        try:
            observer.schedule(_Events(self.library), self.root, recursive=True,
                              event_filter=EVENTS)
            observer.start()
        except OSError as err:
            self._stop_observer(observer, JOIN_SECONDS)
            if isinstance(err, FileNotFoundError | NotADirectoryError) \
                    or root_identity(self.root) is None:
                self._lose_root()  # gone while we were arming
                return False
            if self.kind == "native":
                # Most likely the inotify watch limit (fs.inotify.max_user_watches).
                log.warning("native watching of %s failed (%s); polling every %g s instead",
                            self.root, err, self.config.poll_seconds)
                self.kind = "polling"
                return self._arm()
            if not self._root_lost:
                log.error("cannot watch %s: %s; trying again every second", self.root, err)
            self._root_lost = True  # a walk follows once watching works again
            return False
        if self.stop.is_set():  # close() came while we were arming
            self._stop_observer(observer, JOIN_SECONDS)
            return False
        self._observer, self._identity = observer, identity
        self.health.progress()
        return True

    def _disarm(self, timeout: float = JOIN_SECONDS) -> None:
        observer, self._observer, self._identity = self._observer, None, None
        if observer is not None:
            self._stop_observer(observer, timeout)

    @staticmethod
    def _stop_observer(observer: BaseObserver, timeout: float) -> None:
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout)
        except Exception as err:  # a half-started observer; nothing left to stop
            log.debug("stopping the observer: %r", err)

    def _lose_root(self) -> None:
        if not self._root_lost:
            self.health.failed(f"library root {self.root} is gone (unmounted or renamed?)")
            log.error("library root %s is gone (unmounted or renamed?); watching paused, "
                      "will resume when it is back", self.root)
            self._root_lost = True

    def check_root(self) -> None:
        """Re-arm the observer if it died or the root was replaced; pause while the root
        is gone. Called from the settle loop about once a second."""
        if self.watching:
            return
        identity = root_identity(self.root)
        if identity is None:
            self._disarm(0.5)
            self._lose_root()
            return
        restarting = self._observer is not None  # it died, or watches a replaced root
        was_lost = self._root_lost
        self._disarm()
        if not self._arm():
            return
        self._root_lost = False
        if was_lost or restarting:
            self.rearmed += 1
            log.warning("%s; watching again, walking it for changes made meanwhile",
                        f"library root {self.root} is back" if was_lost
                        else f"the observer on {self.root} stopped or the root was replaced")
            self.library.reconcile()

    # ------------------------------------------------------------- settle loop

    def _settle_loop(self) -> None:
        busy = True  # the first pass (arming the observer) runs at once
        while not self.stop.wait(0 if busy else self.settle_interval):
            try:
                self.check_root()
                # A big batch (a whole album copied in) settles a bounded chunk per pass
                # so close() never waits long.
                busy = self.library.settle_due(limit=SETTLE_LIMIT) >= SETTLE_LIMIT
            except Exception as err:
                log.exception("settle loop")
                self.library.settle_health.failed(err)
                busy = False
