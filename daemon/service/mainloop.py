"""The main thread of `genretagger run` and `genretagger worker`: one supervised loop.

    signals   SIGTERM/SIGINT: stop; SIGHUP: reload (the process's own `reload`). The
              handlers only set flags and wake the loop: the main thread acts.
    start     the process's start(); a configuration error (or a database that needs the
              service's migrations) exits 2 with one line, a failure the process words
              itself (`start_failure`: e.g. a damaged database, 3) with its code, any other
              failure 1 (the traceback at debug level)
    beat      every `every` seconds, or at once when woken: the process's tick() (its
              heartbeat, its STATUS= line); tick() False ends the loop with exit 1 (the
              leader lost its lock: systemd restarts it)
    stop      the process's stop(), always, in a finally; exit 0 after a signal

What a process runs (daemon.service.wiring.Service, daemon.service.workerprocess.
WorkerProcess) are its components; the loop only drives them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from daemon.core.errors import ConfigError, SchemaBehind

log = logging.getLogger(__name__)


class Process(Protocol):
    """What the main loop runs."""

    def start(self) -> None: ...

    def tick(self) -> bool: ...

    def stop(self) -> None: ...


class Wakeup:
    """What the main thread sleeps on between beats: set() from any thread, or a signal.

    The kernel hands a process-directed signal to whichever thread does not block it,
    often one of the components' threads; Python then runs the handler only when the main
    thread next runs bytecode, which a thread asleep in Event.wait does not do until its
    timeout. A self-pipe registered with signal.set_wakeup_fd is written by the C-level
    handler on any thread, so select() on it wakes the main thread at once."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        """The end signals write to (signal.set_wakeup_fd)."""
        return self._write

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> bool:
        """Sleep until set() or a signal, at most `timeout` seconds; True when woken."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        return bool(ready)

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass


class MainLoop:
    """Signals, start, the beat, stop: `run(process)` returns the exit code."""

    def __init__(self, every: float, on_reload: Callable[[], object] | None = None,
                 start_failure: Callable[[Exception], int | None] = lambda err: None):
        self.every = every
        self.on_reload = on_reload
        self.start_failure = start_failure
        self.stop_event = threading.Event()
        self.wake = Wakeup()
        self._reload_requested = False

    def install_signal_handlers(self) -> int:
        """Install the handlers (main thread only); returns the wakeup fd it replaced."""
        previous = signal.set_wakeup_fd(self.wake.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        return previous

    def _on_stop(self, signum, _frame) -> None:
        if not self.stop_event.is_set():
            log.info("%s: stopping", signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def _on_reload(self, _signum, _frame) -> None:
        if self.on_reload is None:
            log.warning("a worker applies a changed config on restart (systemctl restart "
                        "genretagger-worker@...)")
            return
        self._reload_requested = True
        self.wake.set()

    def run(self, process: Process) -> int:
        """0 after a signal-initiated stop, 2 on a configuration error at start, the
        process's own code or 1 for another start-up failure, 1 when tick() says so."""
        previous_wakeup = self.install_signal_handlers()
        try:
            try:
                process.start()
            except (ConfigError, SchemaBehind) as err:  # README: configuration errors exit 2
                log.error("cannot start: %s", err)
                return 2
            except Exception as err:
                code = self.start_failure(err)
                if code is None:  # one clear line for the journal
                    log.error("cannot start: %s: %s", type(err).__name__, err)
                    log.debug("start-up failure", exc_info=True)
                return 1 if code is None else code
            while not self.stop_event.is_set():
                if not process.tick():
                    return 1
                self.wake.wait(self.every)
                self.wake.clear()
                if self._reload_requested and not self.stop_event.is_set():
                    self._reload_requested = False
                    self.on_reload()
        finally:
            try:
                process.stop()
            finally:
                signal.set_wakeup_fd(previous_wakeup)
        return 0
