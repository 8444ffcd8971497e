"""The README's reverse-proxy snippets, as written there, run with real nginx and Caddy
in front of a real review page with `review.trusted_proxy`: HTTPS through the proxy,
the cookie marked Secure, sign-in working, and the sign-in limits counting each browser
(its own loopback address) rather than the proxy."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from helpers import free_port
from werkzeug.security import generate_password_hash

from daemon.review.web import WebServer

README = Path(__file__).resolve().parents[2] / "README.md"
SITE = "review.radio.example"
PASSWORD = "station-secret-42"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # sbin: not on a user's PATH

pytestmark = pytest.mark.slow


def snippet(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, f"the README has {len(blocks)} {language} blocks"
    return blocks[0]


class ViaProxy(http.client.HTTPSConnection):
    """HTTPS to the proxy on 127.0.0.1:`port` as a browser asking for SITE would
    (SNI and Host), from loopback address `source`."""

    def __init__(self, port: int, source: str):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test's own certificate
        super().__init__(SITE, port, context=context, timeout=15)
        self.proxy_port, self.source = port, source

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=15,
                                        source_address=(self.source, 0))
        self.sock = self._context.wrap_socket(sock, server_hostname=SITE)


def call(port: int, source: str, method: str, url: str, headers: dict | None = None,
         body: str | None = None) -> tuple[int, dict, str]:
    conn = ViaProxy(port, source)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def wait_for(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text() if log.exists() else "exited"
        try:
            status, _, _ = call(port, "127.0.0.1", "GET", "/login")
            if status == 200:
                return
        except (OSError, ssl.SSLError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the proxy did not answer: {log.read_text() if log.exists() else ''}")


@pytest.fixture
def page(tmp_path, make_config, database):
    """The review page on loopback with a password, trusting the proxy at 127.0.0.1."""
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, review={
        "password_hash": generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000"),
        "trusted_proxy": "127.0.0.1", "port": free_port()})
    server = WebServer(config, database[1])
    server.start()
    yield server
    server.close()


def nginx(tmp_path: Path, page_port: int, port: int) -> tuple[subprocess.Popen, Path]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                    "1", "-subj", f"/CN={SITE}", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    site = (snippet("nginx")
            .replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
            .replace(f"/etc/letsencrypt/live/{SITE}/fullchain.pem", str(tmp_path / "cert.pem"))
            .replace(f"/etc/letsencrypt/live/{SITE}/privkey.pem", str(tmp_path / "key.pem"))
            .replace("127.0.0.1:8650", f"127.0.0.1:{page_port}"))
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
user root root;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx.log warn;
events {{}}
http {{
    access_log off;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
{site}
}}
""")
    log = tmp_path / "nginx.log"
    return subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp_path), "-e", str(log)],
                            stdout=subprocess.DEVNULL, stderr=log.open("w")), log


def caddy(tmp_path: Path, page_port: int, port: int) -> tuple[subprocess.Popen, Path]:
    # Only what a test machine needs on top: no admin endpoint, a certificate of Caddy's
    # own local CA (kept in tmp_path, not installed), its ports.
    local = (f"\tadmin off\n\tlocal_certs\n\tskip_install_trust\n"
             f"\thttp_port {free_port()}\n\thttps_port {port}\n"
             f"\tstorage file_system {tmp_path / 'caddy'}\n")
    text = snippet("caddyfile").replace("{\n", "{\n" + local, 1)
    text = text.replace("127.0.0.1:8650", f"127.0.0.1:{page_port}")
    conf = tmp_path / "Caddyfile"
    conf.write_text(text)
    log = tmp_path / "caddy.log"
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env), log


def sign_in(port: int, source: str, password: str, session: dict) -> int:
    if "cookie" not in session:
        status, headers, body = call(port, source, "GET", "/login")
        assert status == 200
        assert "Secure" in headers["Set-Cookie"]  # X-Forwarded-Proto: https was believed
        session["cookie"] = headers["Set-Cookie"].split(";", 1)[0]
        session["csrf"] = re.search(r'name="csrf-token" content="([^"]+)"', body).group(1)
    status, headers, _ = call(
        port, source, "POST", "/login",
        body=urllib.parse.urlencode({"csrf_token": session["csrf"], "password": password}),
        headers={"Cookie": session["cookie"], "Origin": f"https://{SITE}:{port}",
                 # Flask-WTF checks it on HTTPS; a browser sends it (same-origin policy)
                 "Referer": f"https://{SITE}:{port}/login",
                 "Content-Type": "application/x-www-form-urlencoded"})
    if status == 303:
        session["cookie"] = headers["Set-Cookie"].split(";", 1)[0]
    return status


@pytest.mark.parametrize("proxy", [nginx, caddy], ids=["nginx", "caddy"])
def test_the_readme_snippet_serves_the_page_over_https(tmp_path, page, proxy):
    assert shutil.which(NGINX if proxy is nginx else "caddy"), \
        f"{proxy.__name__} is missing (make test installs it)"
    port = free_port()
    process, log = proxy(tmp_path, page.port, port)
    try:
        wait_for(port, process, log)
        guesser: dict = {}
        assert [sign_in(port, "127.0.0.5", f"guess-{i}", guesser) for i in range(6)] == \
            [401] * 5 + [429]
        director: dict = {}
        assert sign_in(port, "127.0.0.6", PASSWORD, director) == 303
        status, _, body = call(port, "127.0.0.6", "GET", "/",
                               headers={"Cookie": director["cookie"]})
        assert status == 200 and "Sign in" not in body
        # A form posted from another site is refused through the proxy too.
        status, _, _ = call(port, "127.0.0.6", "POST", "/logout",
                            body=f"csrf_token={director['csrf']}",
                            headers={"Cookie": director["cookie"],
                                     "Origin": "https://evil.example",
                                     "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 403
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
