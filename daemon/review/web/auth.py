"""Who may use the review page: the same-site check on every POST, sign-in (when a
password or token is set) or this machine only (when not), sign-out, and the security
headers on every answer."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from daemon.review.web.common import (
    OPEN_ENDPOINTS,
    TOKEN_ENDPOINTS,
    Review,
    go_next,
    next_page,
    plain,
    review,
    wants_json,
)
from daemon.review.web.security import (
    SECURITY_HEADERS,
    bearer_token,
    check_secret,
    check_token,
    host_name,
    is_loopback,
)

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

FOREIGN_POST_MESSAGE = ("This came from another web site, so it was refused. Open the "
                        "review page itself and try again.")
# What a reverse proxy adds to the requests it passes on.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host")
# Answered without signing in: the media a page embeds are not pages to come back to.
MEDIA_ENDPOINTS = ("media.spectrogram", "media.preview")


def _same_host(value: str) -> bool:
    """Is this Origin / Referer header the host the request was sent to?"""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


def same_site_posts_only():
    """Defence in depth beside the CSRF token (OWASP), checked before it: a POST a browser
    sends from another site says so in Origin, or failing that in Referer. With neither
    (a script, not a browser) the token alone decides."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    origin = request.headers.get("Origin")
    referer = request.headers.get("Referer")
    if (origin is not None and not _same_host(origin)) or \
            (origin is None and referer is not None and not _same_host(referer)):
        log.warning("refused a %s to %s from Origin %r / Referer %r", request.method,
                    request.path, origin, referer)
        return plain(403, FOREIGN_POST_MESSAGE)
    return None


@bp.before_app_request
def guard():
    g.started = time.perf_counter()
    deps = review()
    if deps.needs_login:
        if request.endpoint in OPEN_ENDPOINTS or session.get("auth") == deps.epoch:
            return None
        if request.endpoint in TOKEN_ENDPOINTS:
            return _token_or_refuse(deps)
        if wants_json() or request.method != "GET" or request.endpoint in MEDIA_ENDPOINTS:
            return plain(401, "Please sign in first.")
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    # No password: this machine only, addressed by a loopback name, and not through a
    # proxy on this machine (which would pass on anybody's request from loopback).
    if not is_loopback(request.remote_addr) or any(
            name in request.headers for name in PROXY_HEADERS):
        return plain(403, "The review page only answers this computer. Ask the IT "
                          "volunteer to set a password to use it from elsewhere.")
    if not is_loopback(host_name(request.host)):
        return plain(400, "Unexpected host name.")
    return None


def _token_or_refuse(deps: Review):
    """A script's request: None (go on) for the right bearer token, else 401 (429 while
    the address is locked out, as for sign-in)."""
    address = request.remote_addr or "?"
    given = bearer_token(request.headers.get("Authorization"))
    challenge = {"WWW-Authenticate": 'Bearer realm="genretagger"'}
    if given is None:
        return Response("Send review.token as 'Authorization: Bearer <token>'.\n", 401,
                        challenge, mimetype="text/plain")
    wait = deps.limiter.retry_after(address)
    if wait > 0:
        return Response("Too many wrong tokens; wait.\n", 429,
                        {"Retry-After": str(max(1, round(wait)))}, mimetype="text/plain")
    if check_token(deps.config.review, given):
        deps.limiter.succeeded(address)
        return None
    deps.limiter.failed(address)
    log.warning("wrong bearer token for %s from %s", request.path, address)
    return Response("That token is not right.\n", 401, challenge, mimetype="text/plain")


@bp.after_app_request
def headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.mimetype in ("text/html", "application/json"):
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    deps = review()
    if not deps.needs_login:
        return redirect(url_for("songs.queue"))
    target = next_page(current_app.url_map, request.values.get("next"))
    address = request.remote_addr or "?"
    if request.method == "GET":
        return render_template("login.html", next=target, error=None)
    wait = deps.limiter.retry_after(address)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        return render_template("login.html", next=target, error=(
            f"Too many wrong tries. Wait about {minutes} minute(s).")), 429
    if check_secret(deps.config.review, request.form.get("password", "")):
        deps.limiter.succeeded(address)
        session.clear()
        session.permanent = True
        session["auth"] = deps.epoch
        return go_next(target)
    deps.limiter.failed(address)
    log.warning("failed review-page sign-in from %s", address)
    return render_template("login.html", next=target,
                           error="That password is not right."), 401


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("auth.login") if review().needs_login else url_for("songs.queue"),
                    303)
