"""The shipped production front (deploy/nginx/vcf-cds.conf) in front of `vcf-cds serve`.

Runs Debian's nginx on loopback with the file as shipped (addresses, a self-signed
certificate made here and log paths replaced; the client timeouts shortened to 2 s so the
test need not wait 10 s). Skipped without nginx, except in CI (VCF_CDS_REQUIRE_NGINX=1).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from urllib.parse import urlsplit

import pytest
import requests
from conftest import FIXTURES
from faults import SlowLoris, clean_env, free_port, nginx_front, nginx_or_skip, serve_process

SERVICE = "/cds-services/vcf-order-select"
BODY = (FIXTURES / "bench" / "typical-request.json").read_bytes()
FAST_S = 2.0  # generous: these answer in milliseconds when nothing waits on a slow client
SHORT_TIMEOUTS = {"client_header_timeout 10s;": "client_header_timeout 2s;",
                  "client_body_timeout 10s;": "client_body_timeout 2s;"}


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    nginx_or_skip()
    tmp = tmp_path_factory.mktemp("front")
    port = free_port()
    env = clean_env(VCF_CDS_AUTH="off", VCF_CDS_DATA_DIR=str(tmp / "var"))
    with serve_process(env, tmp / "serve.log", port=port) as direct, \
            nginx_front([f"127.0.0.1:{port}"], tmp / "nginx", replace=SHORT_TIMEOUTS) as nginx:
        yield {**nginx, "direct": direct}


def timed_get(url: str, cert: str | bool, path: str) -> tuple[int, float]:
    started = time.monotonic()
    resp = requests.get(url + path, verify=cert, timeout=30)
    return resp.status_code, time.monotonic() - started


def timed_hook(url: str, cert: str | bool) -> tuple[int, float]:
    started = time.monotonic()
    resp = requests.post(url + SERVICE, data=BODY, headers={"Content-Type": "application/json"}, verify=cert,
                         timeout=30)
    return resp.status_code, time.monotonic() - started


def test_slow_loris_connections_no_longer_delay_health_or_hook_calls(front):
    loris = SlowLoris(front["url"], 20, interval=0.5, seconds=8)
    try:
        time.sleep(1)  # every slow connection open and dripping
        for _ in range(5):
            for status, elapsed in (timed_get(front["url"], front["cert"], "/healthz"),
                                    timed_hook(front["url"], front["cert"])):
                assert status == 200 and elapsed < FAST_S, (status, elapsed)
        # nginx ends them at client_header_timeout; none ever reached a worker.
        deadline = time.monotonic() + 10
        while loris.closed_by_server < loris.opened and time.monotonic() < deadline:
            time.sleep(0.2)
        assert loris.closed_by_server == loris.opened
    finally:
        loris.close()


def test_without_the_front_two_slow_clients_hold_both_workers(front):
    """Why the front is required: gunicorn's two sync workers each wait on one slow client."""
    loris = SlowLoris(front["direct"], 2, interval=0.5, seconds=6)
    try:
        time.sleep(0.5)
        with pytest.raises(requests.Timeout):
            requests.get(front["direct"] + "/healthz", timeout=2)
    finally:
        loris.close()


def raw_tls(url: str, data: bytes, source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((parts.hostname, parts.port), timeout=10,
                                  source_address=(source, 0) if source else None) as raw, \
            context.wrap_socket(raw, server_hostname=parts.hostname) as sock:
        sock.sendall(data)
        received = b""
        try:
            # Until the announced body is complete: nginx may linger before closing.
            while chunk := sock.recv(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if sep and length is not None and len(body) >= length:
                    break
        except (ssl.SSLError, ConnectionResetError):
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("name, request_bytes, status", [
    ("garbage request line", b"HELLO\r\n\r\n", 400),
    ("request line too long", b"GET /explain?token=" + b"A" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("header too large", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ("body too large", b"POST /cds-services/vcf-order-select HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 9000000\r\nConnection: close\r\n\r\n{", 413),
])
def test_what_nginx_refuses_itself_is_a_json_outcome(name, request_bytes, status, front):
    got, headers, body = raw_tls(front["url"], request_bytes)
    assert got == status, (name, body[:300])
    assert headers["content-type"] == "application/json", name
    assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_the_access_log_has_no_query_string(front):
    requests.get(front["url"] + "/explain?token=secret-link-token", verify=front["cert"], timeout=10)
    time.sleep(0.2)
    log = front["access_log"].read_text()
    assert "/explain" in log and "secret-link-token" not in log


def test_a_service_that_is_down_is_a_json_503(tmp_path):
    closed = free_port()  # nothing listens there
    with nginx_front([f"127.0.0.1:{closed}"], tmp_path / "nginx") as nginx:
        resp = requests.post(nginx["url"] + SERVICE, data=BODY, verify=nginx["cert"], timeout=10)
    assert resp.status_code == 503 and resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Retry-After"] and resp.json()["issue"][0]["code"] == "transient"


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/healthz"])
def test_probes_and_metrics_are_not_served_to_other_networks(path, front):
    # 127.0.0.2 stands for an address outside the allowed monitoring networks.
    got, headers, body = raw_tls(front["url"], f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
                                 source="127.0.0.2")
    assert got == 403 and headers["content-type"] == "application/json"
    assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert requests.get(front["url"] + path, verify=front["cert"], timeout=10).status_code == 200
