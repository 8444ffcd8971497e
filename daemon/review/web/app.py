"""The review page: the Flask app factory (`create_app`) and the daemon's server thread
(`WebServer`).

Blueprints: auth (sign-in/out, who may ask, security headers), songs (the queue of
pending suggestions and what is done with one, bulk accept), history (decisions, undo),
models (the models page), media (a song's spectrogram and preview). Each finds its
dependencies in app.extensions["review"] (daemon.review.web.common.Review).
"""

from __future__ import annotations

import logging
import threading

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from waitress import wasyncore

from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.core.db.engine import database_busy, database_full, impatient_sessions
from daemon.core.health import Health, thread_alive
from daemon.core.states import Action, How, WriteStatus
from daemon.library.read import reader_pool
from daemon.review.web import albums, auth, history, media, models, notsongs, songs
from daemon.review.web.common import Review, RowId, plain
from daemon.review.web.connections import guarded_server
from daemon.review.web.format import context_reason, likeness, path_breaks, percent, when
from daemon.review.web.metrics import Exposition
from daemon.review.web.metrics import bp as metrics_bp
from daemon.review.web.security import (
    LoginLimiter,
    check_bind,
    credential_epoch,
    load_secret_key,
    login_required,
)
from daemon.tags.live import Live, as_live

log = logging.getLogger(__name__)

# A review action waits this long for the database's write lock, then answers "busy":
# with the full busy timeout, four held-up POSTs would tie up every server thread.
WEB_BUSY_TIMEOUT_S = 2.0
RETRY_AFTER_S = 5

BUSY_MESSAGE = ("The music library is busy saving other changes, so nothing was changed. "
                "Try again in a few seconds.")
FULL_MESSAGE = ("The disk where genretagger keeps its records is full, so nothing was "
                "saved. Please tell the IT volunteer.")
TROUBLE_MESSAGE = ("genretagger's records cannot be reached right now, so nothing was "
                   "changed. Please tell the IT volunteer if this keeps happening.")


class _SessionInterface(SecureCookieSessionInterface):
    """The Secure cookie flag follows the request: set behind HTTPS, left off on plain
    HTTP (the station LAN), where a Secure cookie would never come back."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def create_app(config: Config | Live, sessions: sessionmaker[Session], *,
               decision_made: threading.Event | None = None,
               limiter: LoginLimiter | None = None,
               children: ExtractPool | None = None,
               metrics: Exposition | None = None) -> Flask:
    """The review web app for `config` on the database behind `sessions`.

    `decision_made` is set after every review action (the daemon gives the writer the same
    Event, so accepted genres reach the files promptly). `children`: the child processes
    songs are decoded in for the spectrogram and preview (the daemon shares the library's
    tag readers); without one the app starts its own, as app.extensions["children"].
    `metrics`: what /metrics serves (daemon.service.metrics.StationMetrics, which the
    caller builds and closes); without it, or with [metrics] enabled = false, /metrics
    is not there."""
    live = as_live(config)
    config = live.config  # what the app is built with; each request reads live.config
    app = Flask(__name__)
    _configure(app, config)
    children = children if children is not None else reader_pool(config)
    app.extensions["children"] = children
    app.extensions["live"] = live
    app.extensions["review"] = Review(
        live=live, sessions=impatient_sessions(sessions, WEB_BUSY_TIMEOUT_S),
        children=children, limiter=limiter or LoginLimiter(),
        needs_login=login_required(config.review), epoch=credential_epoch(config.review),
        decision_made=decision_made)
    if config.metrics.enabled and metrics is not None:
        app.extensions["metrics"] = metrics
    # Order matters: before_request functions run in the order they are registered, so a
    # foreign POST is refused before the CSRF check, and both come before sign-in.
    app.before_request(auth.same_site_posts_only)
    CSRFProtect(app)
    for blueprint in (auth.bp, songs.bp, albums.bp, history.bp, models.bp, media.bp,
                      metrics_bp, notsongs.bp):
        app.register_blueprint(blueprint)
    _error_handlers(app)
    return app


def _configure(app: Flask, config: Config) -> None:
    app.config.update(
        SECRET_KEY=load_secret_key(config.state_dir),
        SESSION_COOKIE_NAME="genretagger_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session, which expires itself
        MAX_CONTENT_LENGTH=64 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.session_interface = _SessionInterface()
    app.url_map.converters["id"] = RowId
    app.jinja_env.filters["percent"] = percent
    app.jinja_env.filters["when"] = when
    app.jinja_env.filters["likeness"] = likeness
    app.jinja_env.filters["context_reason"] = context_reason
    app.jinja_env.filters["path_breaks"] = path_breaks
    app.jinja_env.globals.update(
        needs_login=login_required(config.review), Action=Action, How=How,
        WriteStatus=WriteStatus)


def _error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(err: CSRFError):
        return plain(400, "This page was open too long or came from elsewhere; "
                          "reload it and try again.")

    @app.errorhandler(OperationalError)
    def database_trouble(err: OperationalError):
        # The transaction was rolled back: nothing was changed, whatever the reason.
        if database_full(err):
            log.error("review page: the database's disk is full: %s", err.orig)
            return plain(507, FULL_MESSAGE)
        if database_busy(err):  # a write elsewhere held the lock past WEB_BUSY_TIMEOUT_S
            log.warning("review page: database busy: %s", err.orig)
            return plain(503, BUSY_MESSAGE, {"Retry-After": str(RETRY_AFTER_S)})
        log.error("review page: database error: %s", err)
        return plain(503, TROUBLE_MESSAGE)

    @app.errorhandler(404)
    def not_found(err):
        return plain(404, "Nothing here.")


class WebServer:
    """The review page served by waitress in a thread. start() / close().

    `url_prefix` ("/radio") serves the page under that path, as behind a proxy that
    forwards /radio/... unchanged; every URL the page makes then starts with it."""

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 decision_made: threading.Event | None = None, port: int | None = None,
                 threads: int = 4, url_prefix: str = "",
                 children: ExtractPool | None = None, metrics: Exposition | None = None):
        self.live = as_live(config)
        self.metrics = metrics  # handed over: closed with the server
        self.sessions = sessions
        self.decision_made = decision_made
        self.children = children
        self._own_children: ExtractPool | None = None  # started by create_app: ours to close
        self.host = self.config.review.host
        self.requested_port = self.config.review.port if port is None else port
        self.threads = threads
        self.url_prefix = url_prefix.rstrip("/")
        self._stop = threading.Event()
        self._server = None
        self._thread: threading.Thread | None = None
        self.health = Health("web")

    @property
    def config(self) -> Config:
        return self.live.config

    def health_report(self) -> dict:
        """daemon.core.health shape: alive = the server thread runs."""
        return self.health.report(thread_alive(self._thread), url=self.url)

    @property
    def port(self) -> int:
        return int(self._server.effective_port) if self._server else self.requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.url_prefix}/"

    def start(self) -> None:
        """Bind and serve; raises ConfigError for a non-loopback host without a password
        or token, OSError when the port is taken."""
        check_bind(self.config.review)
        app = create_app(self.live, self.sessions, decision_made=self.decision_made,
                         children=self.children, metrics=self.metrics)
        self._own_children = app.extensions["children"] if self.children is None else None
        review = self.config.review
        self._server = guarded_server(app, host=self.host, port=self.requested_port,
                                      threads=self.threads,
                                      per_address=review.connections_per_address,
                                      request_seconds=review.request_seconds,
                                      trusted_proxy=review.trusted_proxy,
                                      ident="genretagger", url_prefix=self.url_prefix)
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._thread.start()
        self.health.progress()
        log.info("review page on %s", self.url)

    def _serve(self) -> None:
        try:
            self._server.run()
        except Exception as err:
            if not self._stop.is_set():
                log.exception("review page server stopped unexpectedly")
                self.health.failed(err)

    def close(self, timeout: float = 5.0) -> None:
        if self._server is None or self._stop.is_set():
            return
        self._stop.set()
        server = self._server
        # Close every socket from inside the server's own loop, which then finds its map
        # empty and returns; closing from this thread would race its select().
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        if self._thread is not None:
            self._thread.join(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)
        self._thread = None
        if self._own_children is not None:
            self._own_children.close()
        if self.metrics is not None:
            self.metrics.close()
