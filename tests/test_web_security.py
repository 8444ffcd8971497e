"""Security of the review page: binding rules, login and its rate limit, CSRF, the media
endpoints refusing anything outside the library, headers, the cookie key's permissions."""

from __future__ import annotations

import re
import stat

import pytest
from test_review import add_suggested_track
from werkzeug.security import generate_password_hash

from daemon.errors import ConfigError
from daemon.web import WebServer, create_app
from daemon.web.security import SECRET_FILE, LoginLimiter, is_loopback

PASSWORD = "station-secret-42"


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    root.mkdir()
    return root


def make_client(config, sessions, **kw):
    app = create_app(config, sessions, **kw)
    app.testing = True
    return app.test_client()


def token_of(client, url="/") -> str:
    page = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def test_loopback_detection():
    for host in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org", "", None, "127.0.0.1.nip.io"):
        assert not is_loopback(host), host


def test_non_loopback_bind_needs_a_password_or_token(library, make_config, database):
    _, sessions = database
    for host in ("0.0.0.0", "192.168.1.10"):
        # The config itself refuses it (check-config, run and every command alike).
        with pytest.raises(ConfigError, match="review.host: .*password_hash"):
            make_config(library, review={"host": host})
    config = make_config(library, review={"host": "0.0.0.0", "token": "t" * 32})
    server = WebServer(config, sessions, port=0)
    server.start()
    import http.client
    import time

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 302  # to the login page
    started = time.monotonic()
    server.close()  # with a keep-alive connection still open
    assert time.monotonic() - started < 3
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=2).request("GET", "/")


@pytest.fixture
def locked(library, make_config, database):
    config = make_config(library, review={"host": "0.0.0.0",
                                          "password_hash": generate_password_hash(PASSWORD)})
    _, sessions = database
    return config, sessions


def test_signed_out_visitors_get_the_login_page_or_401(locked, library, make_song):
    config, sessions = locked
    make_song("a.wav", seconds=3, folder=library)
    track_id, sid = add_suggested_track(sessions, "a.wav")
    client = make_client(config, sessions, limiter=LoginLimiter())
    remote = {"REMOTE_ADDR": "192.168.1.50"}
    for url in ("/", "/history", "/models", "/bulk?threshold=0.5"):
        r = client.get(url, environ_base=remote)
        assert r.status_code == 302 and "/login" in r.headers["Location"], url
    for url in (f"/tracks/{track_id}/preview.wav", f"/tracks/{track_id}/spectrogram.png"):
        assert client.get(url, environ_base=remote).status_code == 401
    assert client.get("/", headers={"Accept": "application/json"},
                      environ_base=remote).status_code == 401
    login = client.get("/login?next=/history", environ_base=remote)
    assert login.status_code == 200 and 'type="password"' in login.get_data(as_text=True)
    token = token_of(client, "/login")
    r = client.post("/login", data={"csrf_token": token, "password": "wrong", "next": "/"},
                    environ_base=remote)
    assert r.status_code == 401
    r = client.post("/login", data={"csrf_token": token, "password": PASSWORD,
                                    "next": "/history"}, environ_base=remote)
    assert r.status_code == 303 and r.headers["Location"] == "/history"
    assert client.get("/", environ_base=remote).status_code == 200
    assert client.get(f"/tracks/{track_id}/preview.wav", environ_base=remote).status_code == 200
    # Signing out ends it.
    client.post("/logout", data={"csrf_token": token_of(client)}, environ_base=remote)
    assert client.get("/", environ_base=remote).status_code == 302


def test_the_token_also_signs_in_and_next_cannot_leave_the_site(library, make_config, database):
    _, sessions = database
    config = make_config(library, review={"host": "0.0.0.0", "token": "tok-" + "x" * 28})
    client = make_client(config, sessions)
    r = client.post("/login", data={"csrf_token": token_of(client, "/login"),
                                    "password": "tok-" + "x" * 28,
                                    "next": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["Location"] == "/"


def test_login_attempts_are_rate_limited(locked):
    config, sessions = locked
    now = [1000.0]
    client = make_client(config, sessions,
                         limiter=LoginLimiter(max_failures=5, window=300, clock=lambda: now[0]))
    token = token_of(client, "/login")
    codes = [client.post("/login", data={"csrf_token": token, "password": f"guess{i}"}).status_code
             for i in range(7)]
    assert codes == [401] * 5 + [429] * 2
    # Even the right password waits out the lock, then works.
    assert client.post("/login", data={"csrf_token": token,
                                       "password": PASSWORD}).status_code == 429
    now[0] += 301
    assert client.post("/login", data={"csrf_token": token,
                                       "password": PASSWORD}).status_code == 303


def test_without_a_password_only_this_machine_is_answered(library, make_config, database):
    _, sessions = database
    client = make_client(make_config(library), sessions)
    assert client.get("/").status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "192.168.1.50"}).status_code == 403
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: refused.
    assert client.get("/", headers={"Host": "evil.example:8650"}).status_code == 400
    assert client.get("/", headers={"Host": "[::1]:8650"}).status_code == 200


def test_every_state_change_needs_a_valid_csrf_token(library, make_config, database):
    _, sessions = database
    config = make_config(library)
    client = make_client(config, sessions)
    _, sid = add_suggested_track(sessions, "x.mp3")
    posts = [f"/suggestions/{sid}/accept", f"/suggestions/{sid}/reject",
             f"/suggestions/{sid}/set", "/decisions/1/undo", "/undo-last", "/bulk", "/logout"]
    for url in posts:
        assert client.post(url, data={"choice": "1", "genre": "Jazz"}).status_code == 400, url
        r = client.post(url, data={"csrf_token": "forged"}, headers={"X-CSRFToken": "forged"})
        assert r.status_code == 400, url
    # A token from another browser session does not work either.
    other = make_client(config, sessions)
    stolen = token_of(other)
    client.get("/")
    r = client.post(f"/suggestions/{sid}/accept", headers={"X-CSRFToken": stolen,
                                                           "Accept": "application/json"})
    assert r.status_code == 400 and "reload it" in r.json["error"]
    r = client.post(f"/suggestions/{sid}/accept", headers={"X-CSRFToken": token_of(client),
                                                           "Accept": "application/json"})
    assert r.status_code == 200


def test_media_endpoints_serve_only_tracked_files_inside_the_library(
        library, make_config, database, make_song, tmp_path):
    _, sessions = database
    client = make_client(make_config(library), sessions)
    inside = make_song("in.wav", seconds=3, folder=library)
    outside = make_song("secret.wav", seconds=3, folder=tmp_path / "private")
    (library / "escape.wav").symlink_to(outside)
    (library / "alias.wav").symlink_to(inside)
    ids = {name: add_suggested_track(sessions, name)[0] for name in (
        "in.wav", "escape.wav", "alias.wav", "../private/secret.wav", str(outside),
        "sub/../../private/secret.wav", "missing.wav")}
    for kind in ("preview.wav", "spectrogram.png"):
        assert client.get(f"/tracks/{ids['in.wav']}/{kind}").status_code == 200
        assert client.get(f"/tracks/{ids['alias.wav']}/{kind}").status_code == 200
        for name in ("escape.wav", "../private/secret.wav", str(outside),
                     "sub/../../private/secret.wav", "missing.wav"):
            assert client.get(f"/tracks/{ids[name]}/{kind}").status_code == 404, (name, kind)
    # The endpoint takes a track id: a path in the URL never reaches a file.
    for url in ("/tracks/..%2F..%2Fetc%2Fpasswd/preview.wav", "/tracks/%2Fetc%2Fpasswd/preview.wav",
                "/tracks/../../etc/passwd", "/tracks/-1/preview.wav", "/static/../app.py",
                "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert b"RIFF" not in r.data and b"import" not in r.data


def test_security_headers_and_cookie_key(library, make_config, database):
    _, sessions = database
    config = make_config(library)
    client = make_client(config, sessions)
    r = client.get("/")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "same-origin"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "<script>" not in r.get_data(as_text=True)  # no inline scripts to allow
    key = config.state_dir / SECRET_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The same key next time: sessions survive a daemon restart.
    before = key.read_bytes()
    make_client(config, sessions)
    assert key.read_bytes() == before
