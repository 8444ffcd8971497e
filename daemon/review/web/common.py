"""What every page of the review app shares: its dependencies (`Review`, kept in
`app.extensions["review"]`), the plain/JSON answer, the checked `next=` redirect, the
?page= number and the row-id URL converter."""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import current_app, jsonify, redirect, render_template, request, url_for
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, Map

from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.review.web.security import LoginLimiter
from daemon.tags.live import Live

# The largest id SQLite's INTEGER holds; a longer one in a URL is simply not a row.
MAX_ROW_ID = 2**63 - 1
# Page numbers run from 1 to this (50 million songs); anything else is a bad request.
MAX_PAGE = 1_000_000
# How long the queue's filter choices are reused.
OPTIONS_TTL_S = 10.0
# Pages a signed-out visitor may see.
OPEN_ENDPOINTS = frozenset({"auth.login", "static"})
# Read by scripts (a Prometheus scraper), which send review.token as a bearer token.
TOKEN_ENDPOINTS = frozenset({"metrics.metrics"})
# What a `next=` may contain: printable ASCII without spaces or backslashes (every page
# of ours builds it from request.full_path, which is percent-encoded).
_NEXT_CHARS = re.compile(r"[!-\[\]-~]+")
# Stands for a row id in a URL built once per page (see `url_pattern`).
_SENTINEL_ID = 918273645546372819


class LRU:
    """A few recently built thumbnails / previews (Range requests fetch one repeatedly)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class TimedValue:
    """One value rebuilt at most every `ttl` seconds (the queue's filter choices)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._at = -1e9
        self._value = None
        self._lock = threading.Lock()

    def get_or_make(self, make: Callable[[], object]):
        with self._lock:
            if time.monotonic() - self._at < self.ttl:
                return self._value
        value = make()
        with self._lock:
            self._at, self._value = time.monotonic(), value
        return value


@dataclass
class Review:
    """The review app's dependencies: app.extensions["review"]."""

    live: Live  # the running config and genre map; each request reads them here
    sessions: sessionmaker[Session]  # impatient: a held write lock answers "busy" soon
    children: ExtractPool
    limiter: LoginLimiter
    needs_login: bool  # a password or token is set
    epoch: str  # security.credential_epoch: a signed-in session carries it
    # Set after every review action; the writer, built with the same Event, wakes on it.
    decision_made: threading.Event | None = None
    thumbs: LRU = field(default_factory=lambda: LRU(256))
    previews: LRU = field(default_factory=lambda: LRU(16))
    filter_options: TimedValue = field(default_factory=lambda: TimedValue(OPTIONS_TTL_S))

    @property
    def config(self) -> Config:
        return self.live.config

    def notify(self) -> None:
        if self.decision_made is not None:
            self.decision_made.set()


def review() -> Review:
    """The running app's dependencies."""
    return current_app.extensions["review"]


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


def plain(status: int, message: str, headers: dict | None = None):
    """`message` with `status`: JSON for the keyboard script, else the message page."""
    if wants_json():
        return jsonify(ok=False, error=message), status, headers or {}
    return (render_template("message.html", message=message, status=status), status,
            headers or {})


def bad_page():
    return plain(400, "There is no such page: pages are numbered 1, 2, 3 and so on.")


class RowId(IntegerConverter):
    """`<id:name>`: a database row id (0 to 2^63 - 1). Anything larger is a 404, where
    the plain int converter would hand SQLite a number it cannot bind (OverflowError).
    ASCII digits only: Python's \\d would also read "١٢" as 12."""

    regex = r"[0-9]+"

    def __init__(self, map: Map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ROW_ID)
        super().__init__(map, *args, **kwargs)


def next_page(url_map: Map, target: str | None) -> str:
    """`target` when it is one of this app's pages as an app-relative path ("/history?
    page=2", what `here` and the login redirect carry), else "/" (the queue).

    Never an open redirect: no scheme, no host, nothing a browser reads as one ("//",
    "/\\", tabs and newlines it strips, spaces, non-ASCII look-alikes), and the path must
    route to a page here."""
    if not target or not _NEXT_CHARS.fullmatch(target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") \
            or parts.path.startswith("//"):
        return "/"
    try:
        endpoint, _ = url_map.bind("localhost").match(parts.path, method="GET")
    except HTTPException:  # not found, not a page (POST only), or a redirect ("//x")
        return "/"
    return "/" if endpoint in OPEN_ENDPOINTS else target


def go_next(target: str | None):
    """303 to `target` (an app-relative page, checked) under this app's URL prefix."""
    return redirect(request.script_root + next_page(current_app.url_map, target), 303)


def page_number() -> int | None:
    """The ?page= number, 1 when absent, None when it is not a whole number 1..MAX_PAGE."""
    value = request.args.get("page")
    if value is None or value == "":
        return 1
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_PAGE)):
        return None
    page = int(value)
    return page if 1 <= page <= MAX_PAGE else None


def here() -> str:
    """This page as an app-relative path, for `next=`."""
    return request.full_path.rstrip("?")


def page_url(endpoint: str) -> Callable[[int], str]:
    """page -> this page's URL with the same filters and that ?page=."""
    def url(page: int) -> str:
        args = {k: v for k, v in request.args.items() if v}
        args["page"] = page
        return url_for(endpoint, **args)
    return url


def url_pattern(endpoint: str, name: str) -> Callable[[int], str]:
    """row id -> url_for(endpoint, name=id), built by url_for once: the queue's 50 rows
    each need several of these URLs."""
    before, after = url_for(endpoint, **{name: _SENTINEL_ID}).split(str(_SENTINEL_ID))
    return lambda row_id: f"{before}{int(row_id)}{after}"
