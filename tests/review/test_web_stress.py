"""The review page under stress, on a real migrated SQLite file: another process holding
the write lock (POSTs answer "busy" with Retry-After within seconds, pages keep loading),
a really full database (SQLite's own SQLITE_FULL, said as such), and ids and page numbers
out of any range (404 / 400, never a 500)."""

from __future__ import annotations

import http.client
import re
import threading
import time

import pytest
from helpers import add_suggested_track, hold_write_lock
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError

from daemon.core.db.engine import BUSY_TIMEOUT_S, impatient_sessions, transaction
from daemon.core.db.models import Decision, Suggestion
from daemon.review.web import WebServer, create_app
from daemon.review.web.app import BUSY_MESSAGE, FULL_MESSAGE, RETRY_AFTER_S, WEB_BUSY_TIMEOUT_S


class Visitor:
    """One browser's session against the real server: its cookie and CSRF token."""

    def __init__(self, port: int):
        self.port = port
        page = self.request("GET", "/")
        assert page.status == 200
        self.cookie = page.getheader("Set-Cookie").split(";", 1)[0]
        self.token = re.search(r'name="csrf-token" content="([^"]+)"',
                               page.body.decode()).group(1)

    def request(self, method: str, url: str, headers: dict | None = None, body: str = "",
                timeout: float = 15.0) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = dict(headers or {})
        if getattr(self, "cookie", None):
            headers["Cookie"] = self.cookie
        started = time.monotonic()
        conn.request(method, url, body=body, headers=headers)
        response = conn.getresponse()
        response.body = response.read()
        response.seconds = time.monotonic() - started
        conn.close()
        return response

    def post(self, url: str, json: bool = True, **kw) -> http.client.HTTPResponse:
        headers = {"X-CSRFToken": self.token,
                   "Content-Type": "application/x-www-form-urlencoded",
                   "Origin": f"http://127.0.0.1:{self.port}"}
        if json:
            headers["Accept"] = "application/json"
        return self.request("POST", url, headers, **kw)


def test_a_locked_database_answers_busy_within_seconds_and_pages_keep_loading(sqlite_station):
    config = sqlite_station.config
    sessions = sqlite_station.sessions
    db_file = sqlite_station.sqlite_file
    sids = [add_suggested_track(sessions, f"Incoming/{i}.mp3")[1] for i in range(5)]
    server = WebServer(config, sessions, port=0)  # waitress with its four threads
    server.start()
    try:
        visitor = Visitor(server.port)
        holder = hold_write_lock(db_file, 60)  # far longer than any request may wait
        try:
            # As many stuck review actions as the server has threads.
            answers: dict[int, http.client.HTTPResponse] = {}
            posts = [threading.Thread(target=lambda s=s: answers.__setitem__(
                s, visitor.post(f"/suggestions/{s}/accept", body="choice=1")))
                for s in sids[:4]]
            for t in posts:
                t.start()
            time.sleep(0.2)
            # Reading still works (WAL): the history page answers while the POSTs wait,
            # at worst after one short busy wait frees a thread, never after 30 s.
            history = visitor.request("GET", "/history", timeout=10)
            assert history.status == 200 and history.seconds < WEB_BUSY_TIMEOUT_S + 2
            for t in posts:
                t.join(15)
            assert sorted(answers) == sids[:4]
            for answer in answers.values():
                assert answer.status == 503
                assert answer.getheader("Retry-After") == str(RETRY_AFTER_S)
                assert answer.seconds < WEB_BUSY_TIMEOUT_S + 2 < BUSY_TIMEOUT_S
                assert BUSY_MESSAGE.encode() in answer.body
            # A plain form (no script) gets the same words as a page.
            form = visitor.post(f"/suggestions/{sids[4]}/reject", json=False, body="next=/")
            assert form.status == 503 and form.getheader("Retry-After")
            assert b"busy" in form.body and b"Try again in a few seconds" in form.body
        finally:
            holder.kill()
            holder.wait(10)
        with sessions() as db:
            assert db.scalars(select(Decision)).all() == []  # nothing half-done
        # The lock gone, the same action goes through.
        assert visitor.post(f"/suggestions/{sids[0]}/accept", body="choice=1").status == 200
    finally:
        server.close()


def test_a_full_database_says_so_not_busy(sqlite_station):
    config, engine, sessions = sqlite_station.config, sqlite_station.engine, sqlite_station.sessions
    # A raw genre tag far larger than a page: its decision row needs new pages.
    _, sid = add_suggested_track(sessions, "big tag.mp3", raw_genre="Rock; " * 40_000)

    def at_its_size_limit(dbapi_conn, _record):
        # SQLite's own limit on the file's pages: writes that need one more page fail
        # with SQLITE_FULL ("database or disk is full"), as on a full state disk.
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    event.listen(engine, "connect", at_its_size_limit)
    engine.dispose()  # every connection from now on has the limit
    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"',
                      client.get("/").get_data(as_text=True)).group(1)
    r = client.post(f"/suggestions/{sid}/accept", headers={
        "X-CSRFToken": token, "Accept": "application/json"})
    assert r.status_code == 507, r.json
    assert r.json["error"] == FULL_MESSAGE and "busy" not in r.json["error"]
    assert "Retry-After" not in r.headers  # waiting does not make space
    page = client.post(f"/suggestions/{sid}/accept", data={"csrf_token": token, "next": "/"})
    assert page.status_code == 507 and "tell the IT volunteer" in page.get_data(as_text=True)
    with sessions() as db:
        assert db.get(Suggestion, sid).status == "pending"
    # Space made: the same action is stored.
    event.remove(engine, "connect", at_its_size_limit)
    engine.dispose()
    r = client.post(f"/suggestions/{sid}/accept", headers={
        "X-CSRFToken": token, "Accept": "application/json"})
    assert r.status_code == 200


OUT_OF_RANGE_IDS = [str(2**63), str(2**63 + 1), str(2**64), "9" * 40, "-1", "-0", "1e3",
                    "0x10", "١٢"]


def test_ids_out_of_range_are_404_on_every_id_route(sqlite_station):
    config, sessions = sqlite_station.config, sqlite_station.sessions
    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    token = re.search(r'name="csrf-token" content="([^"]+)"',
                      client.get("/").get_data(as_text=True)).group(1)
    routes = [rule for rule in app.url_map.iter_rules() if rule.arguments - {"filename"}]
    # accept, set, reject, not a song, undo, spectrogram, preview, "this is a song"; an
    # album's confirm and accept, a batch's undo (their keys are hex: a number too long is
    # no album either)
    assert len(routes) == 11
    for rule in routes:
        method = "POST" if "POST" in rule.methods else "GET"
        for value in OUT_OF_RANGE_IDS:
            url = re.sub(r"<[^>]+>", value, rule.rule)
            for accept in ("text/html", "application/json"):
                r = client.open(url, method=method, data={"csrf_token": token, "choice": "1"},
                                headers={"Accept": accept})
                assert r.status_code == 404, (url, accept, r.status_code)
        # The largest id there can be: looked up, not there.
        url = re.sub(r"<[^>]+>", str(2**63 - 1), rule.rule)
        r = client.open(url, method=method, data={"csrf_token": token, "choice": "1"},
                        headers={"Accept": "application/json"})
        assert r.status_code == 404, url
    # A model version is only compared, never bound: any number is just not found.
    assert client.get(f"/models?version={2**64}").status_code == 200
    # The bulk form's "up to" id, too: refused as incomplete, not a 500.
    r = client.post("/bulk", data={"csrf_token": token, "threshold": "0.5",
                                   "up_to_id": str(2**63)},
                    headers={"Accept": "application/json"})
    assert r.status_code == 400


@pytest.mark.parametrize("page", ["99999999999999999999", str(2**63), "1000001", "0", "-1",
                                  "abc", "1.5", " 2", "+2", "2_0", "١", "1e9", "%00"])
def test_bad_page_numbers_are_400_on_every_list(sqlite_station, page):
    config, sessions = sqlite_station.config, sqlite_station.sessions
    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    for url in ("/", "/history", "/?show=unwritten", "/history?show=unwritten"):
        sep = "&" if "?" in url else "?"
        r = client.get(f"{url}{sep}page={page}")
        assert r.status_code == 400, (url, page)
        assert "There is no such page" in r.get_data(as_text=True)


def test_page_numbers_in_range_still_work(sqlite_station):
    config, sessions = sqlite_station.config, sqlite_station.sessions
    for i in range(3):
        add_suggested_track(sessions, f"{i}.mp3")
    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    for url in ("/", "/history"):
        assert client.get(url).status_code == 200
        assert client.get(f"{url}?page=").status_code == 200
        assert client.get(f"{url}?page=1").status_code == 200
        # Past the last page (the script reloads it after the last song on it): empty.
        assert client.get(f"{url}?page=1000000").status_code == 200


def test_the_short_wait_is_the_review_pages_alone(sqlite_station):
    """Web and service share the engine's pooled connections: after the page's 2 s wait
    was set on one, the service's next transaction on it still waits its full timeout."""
    engine = sqlite_station.engine
    sessions = sqlite_station.sessions
    db_file = sqlite_station.sqlite_file
    web = impatient_sessions(sessions, WEB_BUSY_TIMEOUT_S)
    engine.dispose()
    with web() as db:  # the only pooled connection now carries the short wait
        db.execute(text("SELECT 1"))
    holder = hold_write_lock(db_file, 3.5)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"), transaction(web):
            pass
        assert WEB_BUSY_TIMEOUT_S - 0.5 < time.monotonic() - started < WEB_BUSY_TIMEOUT_S + 1
        with transaction(sessions) as db:  # waits the lock out (3.5 s), then writes
            db.execute(text("INSERT INTO service_state (key, value, updated_at) "
                            "VALUES ('after the lock', '{}', '2026-01-01 00:00:00')"))
        assert time.monotonic() - started > 3.0
    finally:
        holder.kill()
        holder.wait(10)
    assert engine.pool.checkedin() == 1  # the same connection both times


def test_a_held_row_lock_on_postgresql_answers_busy_within_seconds(postgres_station):
    """PostgreSQL's counterpart of the locked SQLite file: another connection holds the
    songs' rows (FOR UPDATE) far longer than a request may wait. Review actions answer
    "busy" with Retry-After within the page's short wait (lock_timeout), pages keep
    loading, nothing is half-done, and the service's own connections keep their patience."""
    config = postgres_station.config
    engine = postgres_station.engine
    sessions = postgres_station.sessions
    sids = [add_suggested_track(sessions, f"Incoming/{i}.mp3")[1] for i in range(3)]
    server = WebServer(config, sessions, port=0)
    server.start()
    try:
        visitor = Visitor(server.port)
        with sessions() as holder, holder.begin():
            holder.execute(text("SELECT id FROM suggestions FOR UPDATE")).all()
            answers = [visitor.post(f"/suggestions/{s}/accept", body="choice=1")
                       for s in sids[:2]]
            for answer in answers:
                assert answer.status == 503, answer.body
                assert answer.getheader("Retry-After") == str(RETRY_AFTER_S)
                assert answer.seconds < WEB_BUSY_TIMEOUT_S + 2 < BUSY_TIMEOUT_S
                assert BUSY_MESSAGE.encode() in answer.body
            history = visitor.request("GET", "/history", timeout=10)
            assert history.status == 200 and history.seconds < 2
            # The web's short wait was SET LOCAL: the pooled connection it used is back
            # with the service's own lock_timeout.
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == \
                    f"{BUSY_TIMEOUT_S}s"
        with sessions() as db:
            assert db.scalars(select(Decision)).all() == []
        assert visitor.post(f"/suggestions/{sids[0]}/accept", body="choice=1").status == 200
    finally:
        server.close()
