"""Who may use the review page, and the headers every response carries.

Loopback by default: with no password or token configured the page answers only
requests from this machine, addressed by a loopback name (a DNS-rebinding page cannot
borrow the browser). Listening on anything else needs `review.password_hash`
(`genretagger hash-password`) or `review.token`; then every page asks for it once per
browser session. Failed logins are rate-limited per address.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from werkzeug.security import check_password_hash

from daemon.core.config import LOOPBACK_NAMES, ReviewConfig, is_loopback  # noqa: F401
from daemon.core.errors import ConfigError

SECRET_FILE = "web-secret.key"

# No inline script or style anywhere: the CSP forbids both.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def host_name(host_header: str) -> str:
    """The name part of a Host header ("[::1]:8650" -> "::1", "a:80" -> "a")."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def login_required(review: ReviewConfig) -> bool:
    return bool(review.password_hash or review.token)


def check_bind(review: ReviewConfig) -> None:
    """Refuse to listen beyond this machine without a password or token (ConfigError)."""
    if not is_loopback(review.host) and not login_required(review):
        raise ConfigError(
            f"review.host = {review.host!r} is reachable from other machines: set "
            "review.password_hash (make one with `genretagger hash-password`) or "
            "review.token first, or keep review.host = \"127.0.0.1\"")


def check_secret(review: ReviewConfig, given: str) -> bool:
    """Does `given` match the configured password (hashed) or token?"""
    if not given:
        return False
    if review.token and hmac.compare_digest(given.encode(), review.token.encode()):
        return True
    if review.password_hash:
        try:
            return check_password_hash(review.password_hash, given)
        except (ValueError, TypeError):
            return False
    return False


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750), else None."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def check_token(review: ReviewConfig, given: str | None) -> bool:
    """Is `given` the configured review.token? (Never the password: a scraper sends it
    every few seconds, and the password's hash is made slow to check on purpose.)"""
    return bool(review.token and given
                and hmac.compare_digest(given.encode(), review.token.encode()))


def credential_epoch(review: ReviewConfig) -> str:
    """Changes when the password/token changes, so old logins stop working."""
    material = f"{review.password_hash or ''}\0{review.token or ''}".encode()
    return hashlib.sha256(material).hexdigest()[:16]


def load_secret_key(state_dir: Path) -> bytes:
    """The cookie-signing key, created once under state_dir with mode 0600."""
    path = Path(state_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        key = path.read_bytes().strip()
        if len(key) >= 32:
            return key
        # Empty or truncated (a crash while creating it): start over.
        path.unlink()
        return load_secret_key(state_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes().strip()


class LoginLimiter:
    """At most `max_failures` failed logins per address per `window` seconds, and
    `max_total` from everyone together (a password guesser with many addresses)."""

    def __init__(self, max_failures: int = 5, window: float = 300.0, max_total: int = 50,
                 clock=time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.max_total = max_total
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, address: str) -> float:
        """0 when a try is allowed, else seconds until the next one is."""
        with self._lock:
            now = self.clock()
            times = self._failures.get(address, deque())
            self._trim(times, now)
            self._trim(self._all, now)
            waits = []
            if len(times) >= self.max_failures:
                waits.append(times[0] + self.window - now)
            if len(self._all) >= self.max_total:
                waits.append(self._all[0] + self.window - now)
            return max(waits, default=0.0)

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            self._failures.setdefault(address, deque()).append(now)
            self._all.append(now)
            if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
                for key in list(self._failures)[:5_000]:
                    del self._failures[key]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

