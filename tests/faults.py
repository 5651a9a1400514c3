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
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
