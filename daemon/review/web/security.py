"""Who may use the review page, and the headers every response carries.

Loopback by default: with no password or token configured the page answers only
requests from this machine, addressed by a loopback name (a DNS-rebinding page cannot
borrow the browser). Listening on anything else needs `review.password_hash`
(`genretagger hash-password`) or `review.token`; then every page asks for it once per
browser session. Wrong passwords and tokens are limited per address (LoginLimiter).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
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


def guesser(address: str) -> str:
    """Who the sign-in limits count: an IPv4 address, or an IPv6 address's /64 (one
    host is commonly given a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """Wrong passwords and tokens, counted per address and for everyone together.

    One address gets `max_failures` wrong tries per `window` seconds, then waits until
    the oldest ages out (the right password too: that address is the one guessing).
    Everyone together: while `max_total` wrong tries or more arrived within the window (a
    guesser spread over many addresses), every address gets only `max_failures_crowded`
    wrong tries per window. That slows guessing without locking anybody else out: an
    address that has not guessed wrong is always heard, so the right password or token
    still gets in."""

    def __init__(self, max_failures: int = 5, window: float = 300.0, max_total: int = 50,
                 max_failures_crowded: int = 1, clock=time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.max_total = max_total
        self.max_failures_crowded = max(1, min(max_failures_crowded, max_failures))
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        # Only whether max_total arrived within the window matters: keep that many.
        self._all: deque[float] = deque(maxlen=max(1, max_total))
        self._lock = threading.Lock()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, address: str) -> float:
        """0 when a try is allowed, else seconds until the next one is."""
        with self._lock:
            now = self.clock()
            times = self._failures.get(guesser(address), deque())
            self._trim(times, now)
            self._trim(self._all, now)
            allowed = (self.max_failures if len(self._all) < self.max_total
                       else self.max_failures_crowded)
            if len(times) < allowed:
                return 0.0
            # Wait until enough of this address's wrong tries have aged out.
            return times[len(times) - allowed] + self.window - now

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            self._failures.setdefault(guesser(address), deque()).append(now)
            self._all.append(now)
            if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
                for key in list(self._failures)[:5_000]:
                    del self._failures[key]

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(guesser(address), None)

