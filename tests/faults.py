"""Misbehaving peers on loopback for the deadline and fault-injection tests.

- :class:`SlowFhirServer`: an HTTP server that answers like a broken FHIR server: trickles
  its headers, trickles a body it announced with ``Content-Length``, or redirects to itself
  slowly. It counts connections and notices when the client shuts one down.
- :class:`FreezableProxy`: a TCP proxy in front of a real server (PostgreSQL) that can be
  frozen: it keeps accepting connections but stops forwarding bytes both ways, which is what a
  database under SIGSTOP or behind a dead link looks like to a client. Needs no privileges.
- :func:`serve_process`: ``vcf-cds serve`` in a subprocess, waited on until ready.

Every thread is a daemon and every loop is bounded by :attr:`stop` events, so a failing test
never hangs the run.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests
from conftest import ROOT
from processes import stop

TRICKLE_INTERVAL_S = 0.2


class SlowFhirServer:
    """A loopback HTTP server misbehaving in one of these ``mode`` s:

    - ``headers``: the status line, then one header byte every 0.2 s, never ending;
    - ``body``: complete headers with ``Content-Length: 1000000``, then one body byte every 0.2 s;
    - ``redirect``: every answer a 302 to the same server, each after 0.4 s;
    - ``silent``: accepts and never says anything.

    ``url`` is its FHIR base URL; ``closed_by_client`` counts connections the client ended
    (read EOF or reset) while the server was still trickling.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.connections = 0
        self.closed_by_client = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/fhir"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _client_gone(self, conn: socket.socket) -> bool:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        try:
            return conn.recv(65536, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _trickle(self, conn: socket.socket, head: bytes, data: bytes) -> None:
        conn.sendall(head)
        for _ in range(10_000):  # bounded: 2,000 s at most, the stop event ends it first
            if self.stop.wait(TRICKLE_INTERVAL_S):
                return
            if self._client_gone(conn):
                with self._lock:
                    self.closed_by_client += 1
                return
            try:
                conn.sendall(data)
            except OSError:
                with self._lock:
                    self.closed_by_client += 1
                return

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                conn.recv(65536)  # the request (small: a GET)
                if self.mode == "headers":
                    self._trickle(conn, b"HTTP/1.1 200 OK\r\n", b"X")
                elif self.mode == "body":
                    self._trickle(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                                        b"Content-Length: 1000000\r\n\r\n{", b" ")
                elif self.mode == "redirect":
                    if not self.stop.wait(0.4):
                        conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {self.url}/Patient/again\r\n"
                                     f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                else:  # silent
                    self._trickle(conn, b"", b"")
            except OSError:
                pass

    def close(self) -> None:
        """Stop serving (ends every trickle within 0.2 s)."""
        self.stop.set()
        self._sock.close()

    def wait_closed_by_client(self, count: int, within: float = 5.0) -> bool:
        """True once the client has shut down ``count`` connections (polls up to ``within`` s)."""
        end = time.monotonic() + within
        while time.monotonic() < end:
            if self.closed_by_client >= count:
                return True
            time.sleep(0.05)
        return False


class FreezableProxy:
    """A TCP proxy on loopback to ``target`` (host, port): :meth:`freeze` stops it forwarding
    (connections stay open, new ones are accepted and left silent); :meth:`thaw` resumes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.running.clear()

    def thaw(self) -> None:
        self.running.set()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _pipe_pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._conns += [client, upstream]
        with client, upstream:
            pairs = {client: upstream, upstream: client}
            while not self.stop.is_set():
                if not self.running.wait(0.1):
                    continue  # frozen: bytes wait in the kernel buffers, nobody moves them
                readable, _, _ = select.select(list(pairs), [], [], 0.1)
                for sock in readable:
                    if not self.running.is_set():
                        break
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    try:
                        pairs[sock].sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        self.stop.set()
        self._sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without VCF_CDS_/PROMETHEUS_ variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCF_CDS_", "PROMETHEUS_"))}
    env.update(settings)
    return env


@contextlib.contextmanager
def serve_process(env: Mapping[str, str], log_path: Path, *, workers: int = 2,
                  port: int | None = None) -> Iterator[str]:
    """Run ``vcf-cds serve`` on loopback with ``env``; yield its base URL once ``/readyz``
    answers 200 (at most 60 s); stop it with SIGTERM (then SIGKILL) afterwards."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cds_service.ops.cli", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", str(workers)],
                                cwd=ROOT, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, "not ready within 60 s: " + log_path.read_text()[-2000:]
                time.sleep(0.1)
            yield url
        finally:
            stop(proc)


# ------------------------------------------------------------------------ the nginx front

NGINX_CONF = ROOT / "deploy" / "nginx" / "vcf-cds.conf"
REQUIRE_NGINX = os.environ.get("VCF_CDS_REQUIRE_NGINX") == "1"


def nginx_or_skip() -> str:
    """Path of Debian's nginx; skip without it (fail under VCF_CDS_REQUIRE_NGINX=1, as in CI)."""
    import shutil

    import pytest

    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
    if found:
        return found
    message = "nginx is not installed (apt-get install nginx): the front is not tested"
    if REQUIRE_NGINX:
        pytest.fail(message + " (VCF_CDS_REQUIRE_NGINX=1)")
    pytest.skip(message)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost, valid one day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def front_config(upstreams: list[str], port: int, cert: Path, key: Path, access_log: Path,
                 replace: Mapping[str, str] | None = None) -> str:
    """deploy/nginx/vcf-cds.conf as shipped, with only its addresses, certificate and log
    path replaced (and ``replace``: more exact line substitutions); each must match once."""
    import re

    text = NGINX_CONF.read_text(encoding="utf-8")
    subs = {
        r"    server 127\.0\.0\.1:8080 (.*);": "".join(f"    server {u} \\1;\n" for u in upstreams).rstrip("\n"),
        r"    listen 443 ssl;": f"    listen 127.0.0.1:{port} ssl;",
        r"    listen \[::\]:443 ssl;\n": "",
        r"ssl_certificate     /etc/ssl/vcf-cds/fullchain\.pem;": f"ssl_certificate     {cert};",
        r"ssl_certificate_key /etc/ssl/vcf-cds/privkey\.pem;": f"ssl_certificate_key {key};",
        r"access_log /var/log/nginx/vcf-cds\.access\.log vcf_cds;": f"access_log {access_log} vcf_cds;",
        **{re.escape(k): v for k, v in (replace or {}).items()},
    }
    for pattern, value in subs.items():
        text, count = re.subn(pattern, value, text)
        assert count == 1, f"{pattern!r} no longer matches deploy/nginx/vcf-cds.conf once"
    return text


@contextlib.contextmanager
def nginx_front(upstreams: list[str], folder: Path, *, replace: Mapping[str, str] | None = None,
                port: int | None = None) -> Iterator[dict]:
    """Run nginx on loopback (``port``, default a free one) with the shipped front
    configuration in front of ``upstreams`` (host:port). Yields {"url", "cert", "access_log",
    "error_log"}; stops nginx afterwards."""
    binary = nginx_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_certificate(folder)
    port = port or free_port()
    access_log, error_log = folder / "access.log", folder / "error.log"
    (folder / "vcf-cds.conf").write_text(front_config(upstreams, port, cert, key, access_log, replace))
    temp = "\n".join(f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                               "uwsgi", "scgi"))
    # As root, the workers would run as nobody, who cannot enter the test's private folder.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {error_log} info;\n"
        f"events {{ worker_connections 512; }}\n"
        f"http {{\n{temp}\n    include {folder / 'vcf-cds.conf'};\n}}\n")
    check = subprocess.run([binary, "-t", "-e", str(error_log), "-p", str(folder), "-c", str(folder / "nginx.conf")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-e", str(error_log), "-p", str(folder), "-c", str(folder / "nginx.conf"),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, error_log.read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "nginx did not listen within 20 s"
            time.sleep(0.05)
        yield {"url": url, "cert": str(cert), "access_log": access_log, "error_log": error_log}
    finally:
        stop(proc, grace_seconds=10)


class SlowLoris:
    """``count`` TLS (or plain) connections to ``url`` sending a request's headers one byte
    every ``interval`` seconds, for at most ``seconds``; :attr:`closed_by_server` counts those
    the server ended before they finished."""

    def __init__(self, url: str, count: int, *, interval: float = 0.5, seconds: float = 20) -> None:
        import ssl
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.stop = threading.Event()
        self.closed_by_server = 0
        self.opened = 0
        self._lock = threading.Lock()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self._threads = []
        for _ in range(count):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            if parts.scheme == "https":
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            self.opened += 1
            t = threading.Thread(target=self._drip, args=(sock, interval, seconds), daemon=True)
            t.start()
            self._threads.append(t)

    def _drip(self, sock: socket.socket, interval: float, seconds: float) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        with sock:
            for i in range(min(len(request), int(seconds / interval))):
                if self.stop.wait(interval):
                    return
                try:
                    sock.sendall(request[i:i + 1])
                except OSError:
                    with self._lock:
                        self.closed_by_server += 1
                    return

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[tuple[dict[str, str], object]]:
    """A fresh schema on the test PostgreSQL, migrated; yields (settings, SQLAlchemy URL
    with its search_path) and drops it afterwards. Skips (or fails in CI) without a server."""
    import uuid

    from dbsupport import TEST_HMAC_KEY, postgres_or_skip
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from cds_service.settings import Settings
    from cds_service.store.db import Database

    base = make_url(postgres_or_skip())
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    config = {"DATABASE_URL": url.render_as_string(hide_password=False), "AUDIT_HMAC_KEY": TEST_HMAC_KEY}
    try:
        with Database.from_settings(Settings.load(config)) as db:
            db.upgrade()
        yield config, url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
