"""sd_notify, by hand: a few datagrams to the socket systemd names in $NOTIFY_SOCKET.

With `Type=notify` systemd waits for READY=1 before it calls the service started, shows
our STATUS= line in `systemctl status`, and restarts us when WATCHDOG=1 pings stop for
longer than `WatchdogSec=`. Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.

The protocol is one datagram of newline-separated KEY=VALUE lines on an AF_UNIX socket;
a leading '@' in the path means Linux's abstract namespace (a NUL byte instead).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _address(path: str) -> str | bytes:
    return b"\0" + path[1:].encode() if path.startswith("@") else path


class Notifier:
    """Sends sd_notify messages to `socket_path` (default: $NOTIFY_SOCKET, then unset it).

    The variable is removed from the environment so that child processes (decoders, the
    trainer) cannot speak for the service; systemd's NotifyAccess=main would ignore them.
    """

    def __init__(self, socket_path: str | None = None):
        if socket_path is None:
            socket_path = os.environ.pop("NOTIFY_SOCKET", None)
        self.socket_path = socket_path or None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        if self.socket_path:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the daemon on a receiver that stopped reading: drop the message.
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send KEY=VALUE lines as one datagram; False when not under systemd or on error."""
        if self._sock is None:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        try:
            with self._lock:
                self._sock.sendto(data, _address(self.socket_path))
        except OSError as err:
            # systemd gone or the socket full: nothing we can do but say so once per call.
            log.debug("sd_notify %r failed: %s", lines, err)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        # STATUS is one line; systemctl shows it verbatim.
        return self.send("STATUS=" + text.replace("\n", " "))

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for more start/stop time (a long initial reconcile)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: dict[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when not asked.

    $WATCHDOG_PID, when set, must be our pid: the watchdog is the main process's job.
    """
    environ = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (watchdog_pid and watchdog_pid != str(pid)):
        return None
    return usec / 2_000_000


class WatchdogPinger:
    """Pings WATCHDOG=1 every `interval` seconds while `healthy()` says True.

    A stuck or dead component makes `healthy()` False, the pings stop, and systemd kills
    and restarts the service (Restart=on-failure) after WatchdogSec.
    """

    def __init__(self, notifier: Notifier, interval: float | None,
                 healthy: Callable[[], bool]):
        self.notifier = notifier
        self.interval = interval
        self.healthy = healthy
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.notifier.enabled or not self.interval:
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        warned = False
        while not self.stop_event.wait(self.interval):
            try:
                ok = self.healthy()
            except Exception:  # a health check that fails is an unhealthy service
                log.exception("health check failed")
                ok = False
            if ok:
                self.notifier.watchdog()
                warned = False
            elif not warned:
                log.error("a component is not healthy: no watchdog pings; systemd will "
                          "restart the service if it does not recover")
                warned = True

    def close(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
