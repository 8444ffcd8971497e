"""Security of the review page: binding rules, login and its rate limit, CSRF, the media
endpoints refusing anything outside the library, headers, the cookie key's permissions."""

from __future__ import annotations

import html
import re
import stat

import pytest
from helpers import add_suggested_track
from werkzeug.security import generate_password_hash

from daemon.core.db.models import Suggestion
from daemon.core.errors import ConfigError
from daemon.review.web import WebServer, create_app
from daemon.review.web.security import SECRET_FILE, LoginLimiter, is_loopback

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
    # A real hash, made cheap to check: the tests below sign in a hundred times.
    password_hash = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    config = make_config(library, review={"host": "0.0.0.0", "password_hash": password_hash})
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


# `next=` as it appears in the URL (percent-encoded by hand), and where sign-in must lead.
NEXT_REFUSED = [
    "/%09/evil.example", "/%0a/evil.example", "/%0d/evil.example", "/%0d%0a/evil.example",
    "/%00/evil.example", "//evil.example", "///evil.example", "////evil.example",
    "%2f%2fevil.example", "/%2f/evil.example", "%2F%2Fevil.example/history",
    "/%5cevil.example", "/%5c/evil.example", "%5c%5cevil.example", "%5c/evil.example",
    "/%252f/evil.example", "/%255cevil.example", "/%2509/evil.example",
    "https://evil.example/", "http:evil.example", "http:/evil.example", "HTTP://evil.example",
    "//evil.example@localhost/", "javascript:alert(1)", "JaVaScRiPt:alert(1)",
    "%20/evil.example", "%20//evil.example", "%09//evil.example", "%0a//evil.example",
    "/history%09", "/history%0d%0aSet-Cookie:%20x=1", "/history%20",
    "%ef%bc%8f%ef%bc%8fevil.example", "/%ef%bc%8fevil.example", "/%e2%81%84evil.example",
    "/.//evil.example", "/./evil.example", "/%2e%2e//evil.example", "evil.example", ".",
    "?page=2", "/no-such-page", "/login?next=//evil.example", "/logout", "/static/app.js",
    "/suggestions/1/accept",
]
NEXT_KEPT = {  # as given in the URL -> the Location after signing in
    "/history": "/history",
    "%2Fhistory%3Fpage%3D2": "/history?page=2",
    "%2F%3Fgenre%3DHip%2BHop%26page%3D2": "/?genre=Hip+Hop&page=2",
    "%2F%3Ffolder%3DJazz%252FLive%255CB": "/?folder=Jazz%2FLive%5CB",
    "/models?version=3": "/models?version=3",
    "%2Fmodels%3Fversion%3D3": "/models?version=3",
    "%2Fbulk%3Fthreshold%3D0.9": "/bulk?threshold=0.9",
    "/": "/",
}


def sign_in_via(client, raw_next: str, *, base_url: str = "http://localhost/") -> str:
    """GET /login?next=RAW (what the redirect to the login page carries), then submit the
    page's own form as a browser would; the Location it leads to."""
    page = client.get(f"/login?next={raw_next}", base_url=base_url).get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    kept = html.unescape(re.search(r'name="next" value="([^"]*)"', page).group(1))
    r = client.post("/login", data={"csrf_token": token, "password": PASSWORD, "next": kept},
                    base_url=base_url)
    assert r.status_code == 303, raw_next
    return r.headers["Location"]


def test_next_after_sign_in_never_leaves_the_site(locked):
    config, sessions = locked
    client = make_client(config, sessions, limiter=LoginLimiter())
    for raw in NEXT_REFUSED:
        assert sign_in_via(client, raw) == "/", raw
        # Posted straight to the form (no login page first): the same answer.
        token = token_of(client, "/login")
        r = client.post(f"/login?next={raw}", data={"csrf_token": token, "password": PASSWORD})
        assert r.headers["Location"] == "/", raw
    for raw, location in NEXT_KEPT.items():
        assert sign_in_via(client, raw) == location, raw


def test_review_actions_go_back_only_to_pages_of_the_site(library, make_config, database):
    _, sessions = database
    client = make_client(make_config(library), sessions)
    for target in ("//evil.example", "/\t/evil.example", "/\\evil.example", "/\r\n/x",
                   "https://evil.example", " /history", "/history\n"):
        _, sid = add_suggested_track(sessions, f"{len(target)}-{ord(target[1])}.mp3")
        r = client.post(f"/suggestions/{sid}/reject",
                        data={"csrf_token": token_of(client), "next": target})
        assert r.status_code == 303 and r.headers["Location"] == "/", repr(target)
    _, sid = add_suggested_track(sessions, "kept.mp3")
    r = client.post(f"/suggestions/{sid}/accept",
                    data={"csrf_token": token_of(client), "next": "/?page=2&genre=Rock"})
    assert r.headers["Location"] == "/?page=2&genre=Rock"


def test_under_a_url_prefix_every_redirect_keeps_it(locked, make_song, library):
    """Behind a proxy at /radio/ (SCRIPT_NAME): sign-in and plain-form actions lead back
    under /radio/, and the page's script takes its URLs from the page."""
    config, sessions = locked
    app = create_app(config, sessions, limiter=LoginLimiter())
    app.testing = True
    client = app.test_client()
    prefixed = "http://localhost/radio/"  # SCRIPT_NAME = /radio
    r = client.get("/history", base_url=prefixed)
    assert r.status_code == 302 and r.headers["Location"].startswith("/radio/login?next=")
    raw_next = r.headers["Location"].split("next=", 1)[1]
    assert sign_in_via(client, raw_next, base_url=prefixed) == "/radio/history"
    assert sign_in_via(client, "//evil.example", base_url=prefixed) == "/radio/"
    _, sid = add_suggested_track(sessions, "a.mp3")
    page = client.get("/?page=1", base_url=prefixed).get_data(as_text=True)
    assert 'data-undo-last-url="/radio/undo-last"' in page
    assert f'action="/radio/suggestions/{sid}/accept"' in page
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    here = html.unescape(re.search(r'name="next" value="([^"]*)"', page).group(1))
    r = client.post(f"/suggestions/{sid}/accept", data={"csrf_token": token, "next": here},
                    base_url=prefixed)
    assert r.status_code == 303 and r.headers["Location"] == "/radio/?page=1"
    r = client.post("/undo-last", data={"csrf_token": token}, base_url=prefixed)
    assert r.status_code == 303 and r.headers["Location"] == "/radio/"
    js = client.get("/static/app.js", base_url=prefixed).get_data(as_text=True)
    assert not re.search(r"""["'`]/[a-z]""", js), "a URL written into app.js"


def test_posts_from_another_site_are_refused_by_origin_or_referer(locked):
    config, sessions = locked
    client = make_client(config, sessions, limiter=LoginLimiter())
    # Signing in from a foreign page is refused too (login CSRF).
    token = token_of(client, "/login")
    r = client.post("/login", data={"csrf_token": token, "password": PASSWORD},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "another web site" in r.get_data(as_text=True)
    assert sign_in_via(client, "/") == "/"
    token = token_of(client)
    cases = [  # (headers, expected status) with a valid CSRF token every time
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),  # sandboxed frames, data: pages
        ({"Origin": "http://localhost.evil.example"}, 403),
        ({"Origin": "http://localhost:8650"}, 403),  # another port is another site
        ({"Origin": "file://"}, 403),
        ({"Origin": "http://evil.example", "Referer": "http://localhost/"}, 403),
        ({"Referer": "http://evil.example/page"}, 403),
        ({"Referer": "http://localhost.evil.example/"}, 403),
        ({"Referer": "javascript:alert(1)"}, 403),
        ({"Referer": "garbage"}, 403),
        ({"Origin": "http://localhost"}, 200),
        ({"Origin": "https://localhost"}, 200),  # HTTPS ended at a proxy in front
        ({"Origin": "http://LOCALHOST"}, 200),
        ({"Referer": "http://localhost/?page=2"}, 200),  # no Origin: the Referer decides
        ({}, 200),  # neither (a script, not a browser): the CSRF token alone decides
    ]
    for headers, status in cases:
        _, sid = add_suggested_track(sessions, f"{len(headers)}-{hash(str(headers))}.mp3")
        r = client.post(f"/suggestions/{sid}/reject", headers={
            **headers, "X-CSRFToken": token, "Accept": "application/json"},
            environ_base={"REMOTE_ADDR": "192.168.1.50"})
        assert r.status_code == status, (headers, r.status_code)
        if status == 403:
            assert "another web site" in r.json["error"]
            with sessions() as db:
                assert db.get(Suggestion, sid).status == "pending"
    # A foreign Origin is refused as such, token or not.
    r = client.post("/undo-last", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    # The right Origin does not replace the token.
    _, sid = add_suggested_track(sessions, "no-token.mp3")
    r = client.post(f"/suggestions/{sid}/reject", headers={"Origin": "http://localhost"})
    assert r.status_code == 400
