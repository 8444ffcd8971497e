"""Benchmark: the review page while one address holds hundreds of slow connections.

The real WebServer (waitress behind daemon.review.web.connections' guard) against the
same app on plain waitress with its defaults (what the page ran on before the guard),
each on a real migrated SQLite file. For each: the time of a new connection's GET of the
queue page from 127.0.0.1, first idle, then while 127.0.0.2 holds `--slow` connections
that sent half their headers. Printed: median and p95, and the crowd/idle ratio; a GET
that gets no answer within `--timeout` seconds is counted, not timed.

Not pass/fail.

    .venv/bin/python bench/crowd.py [--slow 300] [--requests 50]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from waitress import wasyncore  # noqa: E402
from waitress.server import create_server  # noqa: E402

from daemon.core.config import parse_config  # noqa: E402
from daemon.core.db.engine import open_database  # noqa: E402
from daemon.review.web import WebServer, create_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from review import percentiles  # noqa: E402  (bench/review.py: the page bench)


class PlainWaitress:
    """The app on waitress.create_server with waitress's own limits."""

    def __init__(self, config, sessions):
        self.app = create_app(config, sessions)
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=4,
                                    clear_untrusted_proxy_headers=True)
        self.port = int(self.server.effective_port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        server = self.server
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        self.thread.join(5)
        server.task_dispatcher.shutdown(timeout=5)
        self.app.extensions["children"].close()
        self.app.extensions["metrics"].close()


def time_fresh_gets(port: int, n: int, timeout: float) -> tuple[list[float], int]:
    """n GETs of / each on a new connection -> (seconds of those answered, unanswered)."""
    times, unanswered = [], 0
    for _ in range(n):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"GET /: HTTP {response.status}")
            times.append(time.perf_counter() - started)
        except (TimeoutError, ConnectionError):
            unanswered += 1
        finally:
            conn.close()
    return times, unanswered


def crowd(port: int, n: int) -> list[socket.socket]:
    held = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                        source_address=("127.0.0.2", 0))
        with contextlib.suppress(OSError):  # refused by the guard: still a try made
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        held.append(sock)
    return held


def row(name: str, times: list[float], unanswered: int, idle_median: float | None) -> str:
    if not times:
        return f"{name:<24} {'-':>9} {'-':>9} {'-':>7} {unanswered:>10}"
    median, p95 = percentiles(times)
    ratio = f"{median / idle_median:.2f}" if idle_median else "1.00"
    return f"{name:<24} {median:>8.1f}  {p95:>8.1f}  {ratio:>6} {unanswered:>10}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        library, state = Path(tmp) / "library", Path(tmp) / "state"
        library.mkdir()
        config = parse_config({"library": {"root": str(library)}, "state_dir": str(state)})
        engine, sessions = open_database(config.db_url)
        print(f"{args.slow} slow connections from 127.0.0.2; GET / on a new connection "
              f"from 127.0.0.1 (ms; ratio = median / the same server idle)")
        print(f"{'server':<24} {'median':>9} {'p95':>9} {'ratio':>7} {'unanswered':>10}")
        for name, make in (("guarded (shipped)", lambda: WebServer(config, sessions, port=0)),
                           ("plain waitress", lambda: PlainWaitress(config, sessions))):
            server = make()
            server.start()
            try:
                idle, lost = time_fresh_gets(server.port, args.requests, args.timeout)
                idle_median = percentiles(idle)[0] if idle else None
                print(row(f"{name}, idle", idle, lost, None))
                held = crowd(server.port, args.slow)
                try:
                    # Plain waitress answers nobody here: a few tries show it.
                    n = args.requests if name.startswith("guarded") else 3
                    busy, lost = time_fresh_gets(server.port, n, args.timeout)
                    print(row(f"{name}, crowd", busy, lost, idle_median))
                finally:
                    for sock in held:
                        sock.close()
            finally:
                server.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
