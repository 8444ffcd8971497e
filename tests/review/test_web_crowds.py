"""The review page under a crowd, on a real waitress server over real loopback sockets
(127.0.0.0/8 gives each "machine" its own source address): one address holding hundreds
of slow connections cannot keep another's request out, slow requests are cut off, and
wrong passwords from many addresses slow guessing without locking out the right
password or the scraper's bearer token."""

from __future__ import annotations

import http.client
import re
import socket
import time
import urllib.parse

import pytest
from werkzeug.security import generate_password_hash

from daemon.review.web import WebServer
from daemon.review.web.connections import OVER_CAP_ANSWER
from daemon.review.web.security import LoginLimiter
from daemon.service.metrics import StationMetrics

PASSWORD = "station-secret-42"
TOKEN = "scrape-" + "s" * 25


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    root.mkdir()
    return root


@pytest.fixture
def serve(database):
    """serve(config) -> a started WebServer; closed after the test."""
    _, sessions = database
    started = []

    def start(config) -> WebServer:
        server = WebServer(config, sessions, port=0, metrics=StationMetrics(config, sessions))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def request(port: int, method: str, url: str, *, source: str = "127.0.0.1",
            headers: dict | None = None, body: str | None = None,
            timeout: float = 10.0) -> tuple[http.client.HTTPResponse, bytes, float]:
    """One request from `source`: (response, body, seconds it took)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response, data, time.monotonic() - started


def slow_connection(port: int, source: str) -> socket.socket:
    """A client that sends the start of a request's headers and then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


def test_one_address_with_300_slow_connections_cannot_keep_another_out(
        library, make_config, serve):
    config = make_config(library)
    server = serve(config)
    per_address = config.review.connections_per_address
    crowd = []
    try:
        for _ in range(300):  # three times what plain waitress serves in all
            crowd.append(slow_connection(server.port, "127.0.0.2"))
        for attempt in range(3):
            response, body, seconds = request(server.port, "GET", "/")
            assert response.status == 200 and seconds < 2.0, (attempt, response.status,
                                                               seconds)
        response, body, seconds = request(server.port, "GET", "/metrics")
        assert response.status == 200 and b"genretagger_" in body and seconds < 2.0
        # The crowd's address holds its share and no more; the rest were told why.
        assert server._server.connections_from("127.0.0.2") == per_address
        refused = crowd[-1]
        refused.settimeout(5)
        assert refused.recv(len(OVER_CAP_ANSWER) + 1).startswith(
            b"HTTP/1.1 503 Service Unavailable")
    finally:
        for sock in crowd:
            sock.close()


@pytest.mark.parametrize("start", [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    b"POST /logout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n\r\ncsrf_token=",
], ids=["headers", "body"])
def test_a_request_that_trickles_in_is_cut_off_and_frees_its_place(
        library, make_config, serve, start):
    """request_seconds bounds a request's arrival, headers or body, even when every byte
    is on time for the idle timeout (a byte each half second); an idle connection is
    closed too."""
    config = make_config(library, review={"request_seconds": 2,
                                          "connections_per_address": 2})
    server = serve(config)
    trickler = socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                        source_address=("127.0.0.3", 0))
    trickler.sendall(start)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                    source_address=("127.0.0.3", 0))
    try:
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 8:
            try:
                trickler.sendall(b"x")
            except OSError:  # reset by the server
                closed_after = time.monotonic() - started
                break
            trickler.settimeout(0.5)
            try:
                if trickler.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
        assert closed_after is not None and 1.5 <= closed_after < 5.0, closed_after
        idle.settimeout(5)
        assert idle.recv(1) == b""  # closed by the server, not by our timeout
        # Both places are free again: the address is served.
        response, _, _ = request(server.port, "GET", "/", source="127.0.0.3")
        assert response.status == 200
    finally:
        trickler.close()
        idle.close()


def test_the_sign_in_limits_by_the_clock():
    """LoginLimiter on its own clock: five tries an address, one while the crowd of
    wrong tries lasts, everything back once the window has passed; an IPv6 /64 is one
    guesser."""
    now = [0.0]
    limiter = LoginLimiter(clock=lambda: now[0])
    for n in range(9):  # 45 wrong tries: not yet a crowd
        for _ in range(5):
            assert limiter.retry_after(f"10.0.0.{n}") == 0
            limiter.failed(f"10.0.0.{n}")
            now[0] += 1
    assert limiter.retry_after("10.0.0.0") == pytest.approx(300 - 45)
    limiter.failed("10.0.0.9")
    assert limiter.retry_after("10.0.0.10") == 0  # one wrong try behind it: still fine
    for _ in range(4):
        limiter.failed("10.0.0.9")
    # 50 within the window: a crowd. A newcomer gets one wrong try, then waits.
    assert limiter.retry_after("10.0.0.10") == 0
    limiter.failed("10.0.0.10")
    now[0] += 10
    assert limiter.retry_after("10.0.0.10") == pytest.approx(290)
    assert limiter.retry_after("10.0.0.11") == 0
    # The window passes: the crowd is gone and so are the waits.
    now[0] += 300
    assert limiter.retry_after("10.0.0.10") == 0 and limiter.retry_after("10.0.0.0") == 0
    for i in range(5):
        limiter.failed(f"2001:db8::{i + 1}")
    assert limiter.retry_after("2001:db8::99") > 0  # the same /64
    assert limiter.retry_after("2001:db8:0:1::1") == 0
    assert limiter.retry_after("::ffff:10.0.0.10") == 0


class Browser:
    """A browser on one address: its session cookie and the sign-in form's CSRF token."""

    def __init__(self, port: int, address: str, forwarded_for: str | None = None):
        self.port, self.address = port, address
        # What a reverse proxy on `address` adds for the browser it passes on.
        self.via = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        response, body, _ = request(port, "GET", "/login", source=address,
                                    headers=self.via)
        assert response.status == 200
        self.cookie = response.getheader("Set-Cookie").split(";", 1)[0]
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', body.decode()).group(1)

    def sign_in(self, password: str) -> int:
        response, _, _ = request(
            self.port, "POST", "/login", source=self.address,
            body=urllib.parse.urlencode({"csrf_token": self.csrf, "password": password}),
            headers={"Cookie": self.cookie, "Origin": f"http://127.0.0.1:{self.port}",
                     "Content-Type": "application/x-www-form-urlencoded", **self.via})
        if response.status == 303:
            self.cookie = response.getheader("Set-Cookie").split(";", 1)[0]
        return response.status

    def get(self, url: str) -> int:
        response, _, _ = request(self.port, "GET", url, source=self.address,
                                 headers={"Cookie": self.cookie, **self.via})
        return response.status


def scrape(port: int, address: str, token: str = TOKEN) -> int:
    response, body, _ = request(port, "GET", "/metrics", source=address,
                                headers={"Authorization": f"Bearer {token}"})
    assert response.status != 200 or b"genretagger_metrics_db_up" in body
    return response.status


def test_wrong_passwords_from_many_addresses_do_not_lock_out_the_right_one(
        library, make_config, serve):
    password_hash = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    config = make_config(library, review={"password_hash": password_hash, "token": TOKEN})
    server = serve(config)
    port = server.port
    assert scrape(port, "127.0.0.200") == 200
    # Ten addresses guess five times each: fifty wrong passwords within minutes.
    for n in range(1, 11):
        guesser = Browser(port, f"127.0.0.{n}")
        assert [guesser.sign_in(f"guess-{n}-{i}") for i in range(5)] == [401] * 5
        assert guesser.sign_in(f"guess-{n}-5") == 429  # each guesser waits its turn
    # A guesser that already used its tries waits even with the right password ...
    assert Browser(port, "127.0.0.1").sign_in(PASSWORD) == 429
    # ... but the music director on an eleventh address signs in at once,
    director = Browser(port, "127.0.0.11")
    assert director.sign_in(PASSWORD) == 303
    assert director.get("/") == 200
    # and Prometheus keeps scraping with its token, from its usual address or a new one.
    assert scrape(port, "127.0.0.200") == 200
    assert scrape(port, "127.0.0.201") == 200
    # Guessing is slowed while the crowd lasts: a new address gets one wrong try, not five.
    newcomer = Browser(port, "127.0.0.12")
    assert [newcomer.sign_in(f"another-{i}") for i in range(3)] == [401, 429, 429]
    assert [scrape(port, "127.0.0.13", f"wrong-{i}") for i in range(3)] == [401, 429, 429]
    assert scrape(port, "127.0.0.14") == 200


def test_behind_a_trusted_proxy_each_browser_is_counted_not_the_proxy(
        library, make_config, serve):
    """review.trusted_proxy: the sign-in limits follow X-Forwarded-For, so one guesser
    behind the proxy cannot lock out the rest; the proxy (which buffers slow clients
    itself) is not held to connections_per_address; anyone else's X-Forwarded-For is
    ignored."""
    password_hash = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    config = make_config(library, review={"password_hash": password_hash,
                                          "trusted_proxy": "127.0.0.9",
                                          "connections_per_address": 4})
    server = serve(config)
    port = server.port
    guesser = Browser(port, "127.0.0.9", forwarded_for="203.0.113.5")
    assert [guesser.sign_in(f"guess-{i}") for i in range(6)] == [401] * 5 + [429]
    director = Browser(port, "127.0.0.9", forwarded_for="198.51.100.7")
    assert director.sign_in(PASSWORD) == 303 and director.get("/") == 200
    held = [slow_connection(port, "127.0.0.9") for _ in range(8)]
    try:
        assert director.get("/") == 200
    finally:
        for sock in held:
            sock.close()
    # Not the proxy: its X-Forwarded-For is not believed, whatever it claims.
    spoofer = Browser(port, "127.0.0.30")
    codes = []
    for i in range(6):
        spoofer.via = {"X-Forwarded-For": f"192.0.2.{i}"}
        codes.append(spoofer.sign_in(f"spoof-{i}"))
    assert codes == [401] * 5 + [429]


def test_a_page_without_a_password_refuses_what_came_through_a_proxy(
        library, make_config, serve):
    """A reverse proxy on this machine reaches the page from loopback: without a password
    the page would answer anybody the proxy serves, so a proxied request is refused."""
    server = serve(make_config(library))
    response, _, _ = request(server.port, "GET", "/")
    assert response.status == 200
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        response, body, _ = request(server.port, "GET", "/",
                                    headers={header: "for=203.0.113.5"})
        assert response.status == 403 and b"set a password" in body, header
