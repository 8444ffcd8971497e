"""The review page: Flask app (`create_app`) and the daemon's server thread (`WebServer`).

Pages: the queue of pending suggestions (/), bulk accept (/bulk), the history of
decisions with undo (/history) and the models (/models). Review actions are POSTs with
a CSRF token; with `Accept: application/json` they answer JSON (the keyboard script),
otherwise they redirect back (plain forms work without JavaScript).

Media: /tracks/<id>/spectrogram.png and /tracks/<id>/preview.wav take a track id and
serve only a tracked file under the library root; the preview answers Range requests.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, Map

from daemon.audio.extract import ExtractPool
from daemon.core.config import Config
from daemon.core.db.engine import database_busy, database_full, impatient_sessions
from daemon.core.db.models import Decision, Suggestion, Track
from daemon.core.errors import FileError
from daemon.core.health import Health, thread_alive
from daemon.review import decisions as review
from daemon.review.web import media
from daemon.review.web.security import (
    SECURITY_HEADERS,
    LoginLimiter,
    check_bind,
    check_secret,
    credential_epoch,
    host_name,
    is_loopback,
    load_secret_key,
    login_required,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 50
HISTORY_PAGE_SIZE = 50
OPTIONS_TTL_S = 10.0
# Pages a signed-out visitor may see.
OPEN_ENDPOINTS = frozenset({"login", "static"})
# A review action waits this long for the database's write lock, then answers "busy":
# with the full busy timeout, four held-up POSTs would tie up every server thread.
WEB_BUSY_TIMEOUT_S = 2.0
RETRY_AFTER_S = 5
# The largest id SQLite's INTEGER holds; a longer one in a URL is simply not a row.
MAX_ROW_ID = 2**63 - 1
# Page numbers run from 1 to this (50 million songs); anything else is a bad request.
MAX_PAGE = 1_000_000
# What a `next=` may contain: printable ASCII without spaces or backslashes (every page
# of ours builds it from request.full_path, which is percent-encoded).
_NEXT_CHARS = re.compile(r"[!-\[\]-~]+")

BUSY_MESSAGE = ("The music library is busy saving other changes, so nothing was changed. "
                "Try again in a few seconds.")
FULL_MESSAGE = ("The disk where genretagger keeps its records is full, so nothing was "
                "saved. Please tell the IT volunteer.")
TROUBLE_MESSAGE = ("genretagger's records cannot be reached right now, so nothing was "
                   "changed. Please tell the IT volunteer if this keeps happening.")
FOREIGN_POST_MESSAGE = ("This came from another web site, so it was refused. Open the "
                        "review page itself and try again.")


class _SessionInterface(SecureCookieSessionInterface):
    """The Secure cookie flag follows the request: set behind HTTPS, left off on plain
    HTTP (the station LAN), where a Secure cookie would never come back."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


class _LRU:
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


def _percent(value: float | None) -> str:
    return "" if value is None else f"{float(value) * 100:.0f}%"


def _when(value) -> str:
    """A stored UTC time in the server's local time, as the station reads clocks."""
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M")


def _wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


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
    return "/" if endpoint in ("login", "static") else target


def _same_host(value: str) -> bool:
    """Is this Origin / Referer header the host the request was sent to?"""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


def _page_number() -> int | None:
    """The ?page= number, 1 when absent, None when it is not a whole number 1..MAX_PAGE."""
    value = request.args.get("page")
    if value is None or value == "":
        return 1
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_PAGE)):
        return None
    page = int(value)
    return page if 1 <= page <= MAX_PAGE else None


def create_app(config: Config, sessions: sessionmaker[Session], *,
               on_decision: Callable[[], None] | None = None,
               limiter: LoginLimiter | None = None,
               children: ExtractPool | None = None) -> Flask:
    """The review web app for `config` on the database behind `sessions`.

    `on_decision` is called after every review action (the daemon passes the writer's
    wake(), so accepted genres reach the files promptly). `children`: the child processes
    songs are decoded in for the spectrogram and preview (the daemon shares the library's
    tag readers); without one the app starts its own, as app.extensions["children"]."""
    app = Flask(__name__)
    if children is None:
        from daemon.library.reconcile import reader_pool

        children = reader_pool(config)
    app.extensions["children"] = children
    decode_timeout = config.workers.decode_timeout
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
    sessions = impatient_sessions(sessions, WEB_BUSY_TIMEOUT_S)
    limiter = limiter or LoginLimiter()
    needs_login = login_required(config.review)
    epoch = credential_epoch(config.review)
    who = config.review.reviewer
    thumbs = _LRU(256)
    previews = _LRU(16)
    app.jinja_env.filters["percent"] = _percent
    app.jinja_env.filters["when"] = _when
    app.jinja_env.globals["needs_login"] = needs_login

    def notify() -> None:
        if on_decision is not None:
            try:
                on_decision()
            except Exception:  # the decision is stored; waking the writer is a nicety
                log.exception("on_decision callback failed")

    # ------------------------------------------------------------ access

    @app.before_request
    def same_site_posts_only():
        # Defence in depth beside the CSRF token (OWASP), checked first: a POST a browser
        # sends from another site says so in Origin, or failing that in Referer. With
        # neither (a script, not a browser) the token alone decides.
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = request.headers.get("Origin")
        referer = request.headers.get("Referer")
        if (origin is not None and not _same_host(origin)) or \
                (origin is None and referer is not None and not _same_host(referer)):
            log.warning("refused a %s to %s from Origin %r / Referer %r", request.method,
                        request.path, origin, referer)
            return _plain(403, FOREIGN_POST_MESSAGE)
        return None

    CSRFProtect(app)  # after the check above: before_request functions run in order

    @app.before_request
    def guard():
        g.started = time.perf_counter()
        if needs_login:
            if request.endpoint in OPEN_ENDPOINTS or session.get("auth") == epoch:
                return None
            if _wants_json() or request.method != "GET" or request.endpoint in (
                    "spectrogram", "preview"):
                return _plain(401, "Please sign in first.")
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        # No password: this machine only, addressed by a loopback name.
        if not is_loopback(request.remote_addr):
            return _plain(403, "The review page only answers this computer. Ask the IT "
                               "volunteer to set a password to use it from elsewhere.")
        if not is_loopback(host_name(request.host)):
            return _plain(400, "Unexpected host name.")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.mimetype in ("text/html", "application/json"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def _plain(status: int, message: str, headers: dict | None = None):
        if _wants_json():
            return jsonify(ok=False, error=message), status, headers or {}
        return (render_template("message.html", message=message, status=status), status,
                headers or {})

    def go_next(target: str | None):
        """303 to `target` (an app-relative page, checked) under this app's URL prefix."""
        return redirect(request.script_root + next_page(app.url_map, target), 303)

    @app.errorhandler(CSRFError)
    def csrf_error(err: CSRFError):
        return _plain(400, "This page was open too long or came from elsewhere; "
                           "reload it and try again.")

    @app.errorhandler(OperationalError)
    def database_trouble(err: OperationalError):
        # The transaction was rolled back: nothing was changed, whatever the reason.
        if database_full(err):
            log.error("review page: the database's disk is full: %s", err.orig)
            return _plain(507, FULL_MESSAGE)
        if database_busy(err):  # a write elsewhere held the lock past WEB_BUSY_TIMEOUT_S
            log.warning("review page: database busy: %s", err.orig)
            return _plain(503, BUSY_MESSAGE, {"Retry-After": str(RETRY_AFTER_S)})
        log.error("review page: database error: %s", err)
        return _plain(503, TROUBLE_MESSAGE)

    @app.errorhandler(404)
    def not_found(err):
        return _plain(404, "Nothing here.")

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if not needs_login:
            return redirect(url_for("queue"))
        target = next_page(app.url_map, request.values.get("next"))
        address = request.remote_addr or "?"
        if request.method == "POST":
            wait = limiter.retry_after(address)
            if wait > 0:
                minutes = max(1, round(wait / 60))
                return render_template("login.html", next=target, error=(
                    f"Too many wrong tries. Wait about {minutes} minute(s).")), 429
            if check_secret(config.review, request.form.get("password", "")):
                limiter.succeeded(address)
                session.clear()
                session.permanent = True
                session["auth"] = epoch
                return go_next(target)
            limiter.failed(address)
            log.warning("failed review-page sign-in from %s", address)
            return render_template("login.html", next=target,
                                   error="That password is not right."), 401
        return render_template("login.html", next=target, error=None)

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login") if needs_login else url_for("queue"), 303)

    # ------------------------------------------------------------ pages

    # The filter boxes' choices: a few aggregate queries over every pending suggestion,
    # so they are refreshed every few seconds rather than on every keypress.
    options_cache: dict = {"at": -1e9, "value": None}
    options_lock = threading.Lock()

    def filter_options(db: Session) -> dict:
        with options_lock:
            if time.monotonic() - options_cache["at"] < OPTIONS_TTL_S:
                return options_cache["value"]
        paths = db.scalars(select(Track.path).join(Track.suggestions)
                           .where(Suggestion.status == "pending"))
        folders = {PurePosixPath(p).parts[0] for p in paths if "/" in p}
        genres = review.canonical_genres(db, config)
        value = dict(
            genres=genres, pending_genres=review.pending_genres(db),
            formats=review.pending_formats(db), folders=sorted(folders)[:500],
            # Every row repeats this list; built once instead of 50 times a page.
            genre_options=Markup("").join(
                Markup('<option value="{0}">{0}</option>').format(g) for g in genres),
        )
        with options_lock:
            options_cache.update(at=time.monotonic(), value=value)
        return value

    def queue_filter() -> tuple[review.QueueFilter, int]:
        args = request.args
        sort = args.get("sort", "confident")
        if sort not in ("confident", "uncertain"):
            sort = "confident"
        return review.QueueFilter(
            status="pending", genre=args.get("genre") or None,
            folder=args.get("folder") or None, format=args.get("format") or None, sort=sort,
        ), _page_number()

    def bad_page():
        return _plain(400, "There is no such page: pages are numbered 1, 2, 3 and so on.")

    @app.get("/")
    def queue():
        f, page = queue_filter()
        if page is None:
            return bad_page()
        with sessions() as db:
            rows, total = review.list_suggestions(db, f, limit=PAGE_SIZE,
                                                  offset=(page - 1) * PAGE_SIZE)
            pages = max(1, -(-total // PAGE_SIZE))
            context = dict(
                rows=rows, total=total, page=page, pages=pages, filter=f,
                **filter_options(db), csrf=generate_csrf(), root=request.script_root,
                backlog=review.write_backlog(db), write_tags=config.review.write_tags,
                page_url=lambda p: url_for("queue", **_query(page=p)),
                here=request.full_path.rstrip("?"),
            )
        return render_template("queue.html", **context)

    def _query(**changes) -> dict:
        args = {k: v for k, v in request.args.items() if v}
        args.update({k: v for k, v in changes.items() if v is not None})
        return args

    @app.get("/bulk")
    def bulk_confirm():
        try:
            threshold = float(request.args.get("threshold", "0.9"))
        except ValueError:
            threshold = -1.0
        if threshold > 1.0:  # typed as a percentage
            threshold /= 100.0
        if not 0.0 <= threshold <= 1.0:
            return _plain(400, "How sure must be a number between 0 and 100.")
        with sessions() as db:
            count, up_to_id = review.count_above(db, threshold)
            by_genre = review.pending_genres(db, min_confidence=threshold)
        return render_template("bulk.html", threshold=threshold, count=count, up_to_id=up_to_id,
                               by_genre=by_genre)

    @app.get("/history")
    def history():
        page = _page_number()
        if page is None:
            return bad_page()
        only = request.args.get("show")
        statuses = review.WRITE_OUTSTANDING if only == "unwritten" else None
        with sessions() as db:
            rows, total = review.list_decisions(db, limit=HISTORY_PAGE_SIZE,
                                                offset=(page - 1) * HISTORY_PAGE_SIZE,
                                                write_status=statuses)
            backlog = review.write_backlog(db)
        pages = max(1, -(-total // HISTORY_PAGE_SIZE))
        return render_template(
            "history.html", rows=rows, total=total, page=page, pages=pages, only=only,
            backlog=backlog, here=request.full_path.rstrip("?"),
            page_url=lambda p: url_for("history", **_query(page=p)))

    @app.get("/models")
    def models():
        from daemon.learn.registry import list_models
        from daemon.learn.runs import last_run, next_nightly_run
        from daemon.service.scheduler import nightly_history

        with sessions() as db:
            all_models = list_models(db)
            last = last_run(db)
            next_run = next_nightly_run(config, history=nightly_history(db))
        chosen = None
        version = request.args.get("version", type=int)
        for model in all_models:
            if (version is not None and model.version == version) or \
                    (version is None and model.status == "active"):
                chosen = model
                break
        if chosen is None and all_models and version is None:
            chosen = all_models[0]
        return render_template("models.html", models=all_models, chosen=chosen,
                               matrix=_confusion(chosen), last_run=last,
                               next_run=next_run)

    # ------------------------------------------------------------ actions

    def done(decisions: list[Decision], message: str):
        notify()
        if _wants_json():
            with sessions() as db:
                tracks = {t.id: t for t in db.scalars(select(Track).where(
                    Track.id.in_([d.track_id for d in decisions])))}
            return jsonify(ok=True, message=message, decisions=[
                review.decision_json(d, tracks[d.track_id]) for d in decisions])
        flash(message)
        return go_next(request.form.get("next"))

    def failed(err: review.ReviewError):
        status = 404 if isinstance(err, (review.UnknownSuggestion, review.UnknownDecision)) \
            else 409 if isinstance(err, (review.NotPending, review.CannotUndo)) else 400
        if _wants_json():
            return jsonify(ok=False, error=str(err)), status
        flash(str(err), "error")
        return go_next(request.form.get("next"))

    @app.post("/suggestions/<id:suggestion_id>/accept")
    def accept(suggestion_id: int):
        try:
            choice = int(request.form.get("choice", 1))
            decisions = review.accept(sessions, config, [suggestion_id], who=who, choice=choice)
        except ValueError:
            return failed(review.ReviewError("choice must be 1, 2 or 3"))
        except review.ReviewError as err:
            return failed(err)
        return done(decisions, f"Accepted {decisions[0].genre}.")

    @app.post("/suggestions/<id:suggestion_id>/set")
    def set_genre(suggestion_id: int):
        try:
            decision = review.override(sessions, config, suggestion_id,
                                       request.form.get("genre", ""), who=who)
        except review.ReviewError as err:
            return failed(err)
        return done([decision], f"Set to {decision.genre}.")

    @app.post("/suggestions/<id:suggestion_id>/reject")
    def reject(suggestion_id: int):
        try:
            decisions = review.reject(sessions, config, [suggestion_id], who=who)
        except review.ReviewError as err:
            return failed(err)
        return done(decisions, "Marked as not this genre; the song stays without one.")

    @app.post("/bulk")
    def bulk_accept():
        try:
            threshold = float(request.form["threshold"])
            up_to_id = int(request.form["up_to_id"])
            if not 0 <= up_to_id <= MAX_ROW_ID:
                raise ValueError(up_to_id)
            decisions = review.bulk_accept(sessions, config, threshold, who=who,
                                           up_to_id=up_to_id)
        except (KeyError, ValueError):
            return failed(review.ReviewError("the bulk form was incomplete; try again"))
        except review.ReviewError as err:
            return failed(err)
        notify()
        message = f"Accepted {len(decisions)} suggestion(s) at least {_percent(threshold)} sure."
        if _wants_json():
            return jsonify(ok=True, message=message, count=len(decisions))
        flash(message)
        return redirect(url_for("queue"), 303)

    @app.post("/decisions/<id:decision_id>/undo")
    def undo(decision_id: int):
        try:
            decision = review.undo(sessions, config, decision_id, who=who)
        except review.ReviewError as err:
            return failed(err)
        return done([decision], "Undone.")

    @app.post("/undo-last")
    def undo_last():
        with sessions() as db:
            last = review.last_undoable(db, who)
        if last is None:
            return failed(review.CannotUndo("nothing to undo"))
        try:
            decision = review.undo(sessions, config, last.id, who=who)
        except review.ReviewError as err:
            return failed(err)
        return done([decision], "Undone.")

    # ------------------------------------------------------------ media

    def tracked_file(track_id: int) -> tuple[Track, object]:
        with sessions() as db:
            track = db.get(Track, track_id)
        if track is None:
            abort(404)
        try:
            return track, media.library_file(config.library.root, track.path)
        except media.OutsideLibrary as err:
            log.warning("refused to serve track %d: %s", track_id, err)
            abort(404)

    @app.get("/tracks/<id:track_id>/spectrogram.png")
    def spectrogram(track_id: int):
        track, path = tracked_file(track_id)
        key = (track.id, track.fingerprint, track.size, track.mtime)
        try:
            png = thumbs.get_or_make(key, lambda: media.png_bytes(media.spectrogram_image(
                media.song_spectrogram(path, track.fingerprint, config.cache_dir,
                                       children=children, timeout=decode_timeout))))
        except FileError as err:
            return _plain(422, f"This song cannot be read: {err.reason}")
        response = Response(png, mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    @app.get("/tracks/<id:track_id>/preview.wav")
    def preview(track_id: int):
        track, path = tracked_file(track_id)
        key = (track.id, track.size, track.mtime)
        try:
            wav = previews.get_or_make(key, lambda: media.preview_wav(
                path, track.duration, children=children, timeout=decode_timeout))
        except FileError as err:
            return _plain(422, f"This song cannot be played: {err.reason}")
        response = send_file(io.BytesIO(wav), mimetype="audio/wav", conditional=True,
                             etag=f"{track.id}-{track.size}-{track.mtime}", max_age=3600,
                             download_name=f"preview-{track.id}.wav")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return app


def _confusion(model) -> dict | None:
    """The chosen model's confusion matrix for the template: genres, rows of (count,
    shade 0-9) with shade relative to the row's total, or None when not recorded."""
    if model is None:
        return None
    metrics = model.metrics or {}
    matrix = metrics.get("confusion")
    genres = metrics.get("genres") or list(model.classes or [])
    if not matrix or len(matrix) != len(genres):
        return None
    rows = []
    for genre, counts in zip(genres, matrix, strict=True):
        total = sum(counts) or 1
        rows.append((genre, [(int(c), min(9, int(10 * c / total))) for c in counts]))
    return {"genres": genres, "rows": rows}


class WebServer:
    """The review page served by waitress in a thread. start() / close().

    `url_prefix` ("/radio") serves the page under that path, as behind a proxy that
    forwards /radio/... unchanged; every URL the page makes then starts with it."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], *,
                 on_decision: Callable[[], None] | None = None, port: int | None = None,
                 threads: int = 4, url_prefix: str = "",
                 children: ExtractPool | None = None):
        self.config = config
        self.sessions = sessions
        self.on_decision = on_decision
        self.children = children
        self._own_children: ExtractPool | None = None  # started by create_app: ours to close
        self.host = config.review.host
        self.requested_port = config.review.port if port is None else port
        self.threads = threads
        self.url_prefix = url_prefix.rstrip("/")
        self._stop = threading.Event()
        self._server = None
        self._thread: threading.Thread | None = None
        self.health = Health("web")

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
        from waitress.server import create_server

        check_bind(self.config.review)
        app = create_app(self.config, self.sessions, on_decision=self.on_decision,
                         children=self.children)
        self._own_children = app.extensions["children"] if self.children is None else None
        self._server = create_server(app, host=self.host, port=self.requested_port,
                                     threads=self.threads, ident="genretagger",
                                     url_prefix=self.url_prefix,
                                     clear_untrusted_proxy_headers=True)
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
        from waitress import wasyncore

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
