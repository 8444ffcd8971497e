"""waitress, held against a crowd of slow clients.

waitress serves at most `connection_limit` connections and has no limit per address, so
one machine opening a hundred connections and sending their headers a byte at a time
stops the page (and /metrics) for everyone, before anybody signs in. Here:

- each address may hold `per_address` connections; past that a new one is answered
  503 and closed at once, so one address can never fill the server;
- a request must arrive whole (headers and body) within `request_seconds` of its first
  byte, and a connection idle that long is closed, so slow clients free their places;
- the server waits on poll(), not select(), so hundreds of sockets are no problem.

A page opened beyond the station's LAN belongs behind a reverse proxy (README).
"""

from __future__ import annotations

import logging
import socket
import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger(__name__)

# Every address together; each address gets at most `per_address` of them.
CONNECTION_LIMIT = 500
# The review page's forms are small (the app refuses bodies over 64 KB); waitress need
# not spool a gigabyte to disk before the app can say so.
MAX_BODY_BYTES = 1024 * 1024
# Seconds between two warnings about the same address being over its cap.
WARN_EVERY_S = 60.0

_OVER_CAP_TEXT = b"Too many connections from your address; wait.\n"
OVER_CAP_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
                   b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
                   b"Connection: close\r\n\r\n" % len(_OVER_CAP_TEXT)) + _OVER_CAP_TEXT


class TimedChannel(HTTPChannel):
    """A connection that knows when the request it is reading began."""

    request_started: float | None = None
    _timed: object = None

    def received(self, data: bytes) -> bool:
        result = super().received(data)
        if self.request is None:
            self.request_started = self._timed = None
        elif self.request is not self._timed:
            self.request_started, self._timed = time.time(), self.request
        return result


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with a per-address connection cap and a deadline for a
    request's arrival (see the module's docstring)."""

    channel_class = TimedChannel

    def __init__(self, *args, per_address: int, request_seconds: float,
                 exempt: frozenset[str] = frozenset(), **kw):
        self.per_address = per_address
        self.exempt = exempt
        self.request_seconds = request_seconds
        self._warned: dict[str, float] = {}
        super().__init__(*args, **kw)

    def connections_from(self, host: str) -> int:
        # Over the whole map: servers listening on several addresses share it.
        return sum(1 for c in list(self._map.values())
                   if isinstance(c, HTTPChannel) and c.addr and c.addr[0] == host)

    def handle_accept(self) -> None:
        try:
            accepted = self.accept()
            if accepted is None:
                return
            conn, addr = accepted
            self.set_socket_options(conn)
        except OSError:
            return  # the client left before we got to it (as waitress itself does)
        addr = self.fix_addr(addr)
        if addr[0] not in self.exempt and self.connections_from(addr[0]) >= self.per_address:
            self._refuse(conn, addr[0])
            return
        self.channel_class(self, conn, addr, self.adj, map=self._map)

    def _refuse(self, conn: socket.socket, host: str) -> None:
        try:
            conn.setblocking(False)
            conn.send(OVER_CAP_ANSWER)  # a fresh socket's send buffer takes it whole
        except OSError:
            pass
        finally:
            conn.close()
        now = time.monotonic()
        if now - self._warned.get(host, -WARN_EVERY_S) >= WARN_EVERY_S:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned[host] = now
            log.warning("review page: %s holds %d connections, the most one address may; "
                        "refusing more from it", host, self.per_address)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # closes connections idle past channel_timeout
        cutoff = now - self.request_seconds
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if not channel.requests and started is not None and started < cutoff:
                channel.will_close = True


def guarded_server(application, *, host: str, port: int, threads: int, per_address: int,
                   request_seconds: int, trusted_proxy: str | None = None,
                   **adjustments) -> GuardedServer | MultiSocketServer:
    """What waitress.create_server builds, with GuardedServer listening: one server, or a
    MultiSocketServer when `host` names several addresses ("localhost": 127.0.0.1, ::1).
    `trusted_proxy`: the reverse proxy's address, whose X-Forwarded-For/-Proto are
    believed and which is exempt from the per-address cap (it buffers slow clients
    itself and carries many browsers); `adjustments`: waitress's own (url_prefix ...)."""
    if trusted_proxy:
        proxy = {"trusted_proxy": trusted_proxy, "trusted_proxy_count": 1,
                 "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
                 "clear_untrusted_proxy_headers": True}
    else:
        # Unbelieved, but left for the app to see: a page without a password refuses
        # what a proxy on this machine passes on (daemon.review.web.auth).
        proxy = {"clear_untrusted_proxy_headers": False}
    adj = Adjustments(
        host=host, port=port, threads=threads, connection_limit=CONNECTION_LIMIT,
        channel_timeout=request_seconds, cleanup_interval=1, asyncore_use_poll=True,
        max_request_body_size=MAX_BODY_BYTES, **proxy, **adjustments)
    exempt = frozenset({trusted_proxy} if trusted_proxy else ())
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict = {}
    servers = [GuardedServer(application, socket_map, dispatcher=dispatcher, adj=adj,
                             sockinfo=sockinfo, per_address=per_address,
                             request_seconds=request_seconds, exempt=exempt)
               for sockinfo in adj.listen]
    if len(servers) == 1:
        return servers[0]
    return MultiSocketServer(socket_map, adj, [(s.effective_host, s.effective_port)
                                               for s in servers], dispatcher)
