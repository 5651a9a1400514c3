"""Fault injection on loopback: `vcf-cds serve` (2 workers, auth on) under one fault at a time.

Faults: a FHIR server that trickles its headers, trickles a body under its Content-Length,
redirects slowly or never answers; a database that hangs (PostgreSQL behind a frozen TCP
proxy when VCF_CDS_TEST_POSTGRES_URL is set, else SQLite held by another writer's lock);
slow-loris clients in front of the shipped nginx configuration (when nginx is installed);
hostile inputs. For each it prints requests sent, 5xx, worst latency and acknowledged
feedback rows lost, and asserts: no 5xx, worst latency within the stated bound plus a
generous margin, nothing acknowledged lost.

Bounded: CHAOS_ROUNDS (default 3) requests of each kind per fault, so it runs in `make
test` in well under a minute; `make chaos` runs it with CHAOS_ROUNDS=40.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from client_tokens import SANDBOX_ISSUERS_FILE, sandbox_token
from conftest import FIXTURES, load_json
from dbsupport import POSTGRES_URL
from faults import (
    FreezableProxy,
    SlowFhirServer,
    SlowLoris,
    clean_env,
    free_port,
    fresh_postgres_schema,
    nginx_front,
    serve_process,
)
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from test_fhir_fetch import without_prefetch

from cds_service.store.tables import Feedback

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "3"))
SERVICE = "/cds-services/vcf-order-select"
FEEDBACK = SERVICE + "/feedback"
REQUEST = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
FHIR_BUDGET_S = 0.5
DB_TIMEOUT_S = 0.5
# Stated bounds (README "Deployment and limits") and the generous slack a shared CI machine needs.
FETCH_BOUND_S = FHIR_BUDGET_S + 0.5
DB_BOUND_S = 2 * DB_TIMEOUT_S
SLACK_S = 2.0
FHIR_MODES = ("headers", "body", "redirect", "silent")


@dataclass
class Tally:
    """What one fault did to the service."""

    fault: str
    bound: float
    sent: int = 0
    server_errors: int = 0
    worst: float = 0.0
    acknowledged: set[str] = field(default_factory=set)
    lost: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def record(self, status: int, elapsed: float) -> None:
        self.sent += 1
        self.server_errors += status >= 500 and status != 503  # 503 + Retry-After is the contract
        self.worst = max(self.worst, elapsed)
        self.statuses[status] = self.statuses.get(status, 0) + 1


class Service:
    """The service under test and the peers it depends on."""

    def __init__(self, url: str, public: str, fhir: dict[str, SlowFhirServer], hold_database, stored_cards,
                 front: dict | None) -> None:
        self.url, self.public, self.fhir = url, public, fhir
        self.hold_database, self.stored_cards, self.front = hold_database, stored_cards, front

    def call(self, tally: Tally, method: str, path: str, body: object = None, *, base: str | None = None,
             verify: str | bool = False, expect: tuple[int, ...] = (200,)) -> requests.Response | None:
        headers = {"Content-Type": "application/json"}
        if path.startswith("/cds-services"):
            headers["Authorization"] = "Bearer " + sandbox_token(self.public + path)
        started = time.monotonic()
        try:
            resp = requests.request(method, (base or self.url) + path, headers=headers, verify=verify, timeout=60,
                                    data=None if body is None else json.dumps(body))
        except requests.RequestException:
            tally.record(599, time.monotonic() - started)  # no answer at all counts as a 5xx
            return None
        tally.record(resp.status_code, time.monotonic() - started)
        assert resp.status_code in expect or resp.status_code == 503, (tally.fault, path, resp.status_code, resp.text)
        return resp

    def feedback(self, tally: Tally, card: str) -> int:
        body = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-30T10:00:00Z"}]}
        resp = self.call(tally, "POST", FEEDBACK, body)
        if resp is not None and resp.status_code == 200:
            tally.acknowledged.add(card)
        return resp.status_code if resp is not None else 599


@pytest.fixture(scope="module")
def tallies(request):
    found: list[Tally] = []
    yield found
    lines = [f"fault injection, {ROUNDS} rounds ({'PostgreSQL' if POSTGRES_URL else 'SQLite'}):",
             "  fault                  requests  5xx  worst s (bound)  rows lost (of acknowledged)",
             *(f"  {t.fault:<22} {t.sent:>8} {t.server_errors:>4} {t.worst:>8.2f} ({t.bound:.1f}) {t.lost:>10}"
               f" (of {len(t.acknowledged)})"
               f"   statuses {dict(sorted(t.statuses.items()))}" for t in found)]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


@contextlib.contextmanager
def database(tmp) -> Iterator[tuple[dict[str, str], object, object]]:
    """(settings, hold, stored_cards): PostgreSQL through a freezable proxy when configured,
    else the embedded SQLite file, which ``hold`` locks."""
    if POSTGRES_URL:
        with fresh_postgres_schema() as (config, url):
            proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
            proxied = make_url(config["DATABASE_URL"]).set(port=proxy.port)

            @contextlib.contextmanager
            def hold() -> Iterator[None]:
                proxy.freeze()
                try:
                    yield
                finally:
                    proxy.thaw()

            engine = create_engine(url)
            try:
                yield ({**config, "DATABASE_URL": proxied.render_as_string(hide_password=False)}, hold,
                       lambda: set(_cards(engine)))
            finally:
                proxy.thaw()
                proxy.close()
                engine.dispose()
        return
    path = tmp / "var" / "vcf-cds.sqlite3"

    @contextlib.contextmanager
    def hold_sqlite() -> Iterator[None]:
        holder = sqlite3.connect(path, timeout=5, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    def stored() -> set[str]:
        engine = create_engine(f"sqlite:///{path}")
        try:
            return set(_cards(engine))
        finally:
            engine.dispose()

    yield {}, hold_sqlite, stored


def _cards(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Feedback.card_uuid)).scalars())


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("chaos")
    fhir = {mode: SlowFhirServer(mode) for mode in FHIR_MODES}
    front_port = free_port()
    public = f"https://127.0.0.1:{front_port}"
    try:
        with database(tmp) as (db_config, hold, stored):
            port = free_port()
            env = clean_env(VCF_CDS_AUTH="on", VCF_CDS_TRUSTED_ISSUERS=str(SANDBOX_ISSUERS_FILE),
                            VCF_CDS_PUBLIC_BASE_URL=public, VCF_CDS_DATA_DIR=str(tmp / "var"),
                            VCF_CDS_FHIR_ALLOWLIST=",".join(s.url for s in fhir.values()),
                            VCF_CDS_ALLOW_HTTP_LOOPBACK="true", VCF_CDS_FHIR_BUDGET_SECONDS=str(FHIR_BUDGET_S),
                            VCF_CDS_DB_TIMEOUT_SECONDS=str(DB_TIMEOUT_S),
                            **{f"VCF_CDS_{k}": v for k, v in db_config.items()})
            with serve_process(env, tmp / "serve.log", port=port) as url, contextlib.ExitStack() as stack:
                front = None
                with contextlib.suppress(pytest.skip.Exception):
                    front = stack.enter_context(nginx_front([f"127.0.0.1:{port}"], tmp / "nginx", port=front_port,
                                                            replace={"client_header_timeout 10s;":
                                                                     "client_header_timeout 3s;"}))
                yield Service(url, public, fhir, hold, stored, front)
    finally:
        for server in fhir.values():
            server.close()


@pytest.mark.parametrize("mode", FHIR_MODES)
def test_fhir_server_fault(mode, service, tallies):
    tally = Tally(f"fhir-{mode}", FETCH_BOUND_S)
    tallies.append(tally)
    body = without_prefetch(REQUEST, server_url=service.fhir[mode].url)
    for _ in range(ROUNDS):
        service.call(tally, "POST", SERVICE, body, expect=(412,))
    assert service.call(tally, "POST", SERVICE, REQUEST) is not None  # and full prefetch still answers
    assert tally.server_errors == 0 and tally.worst < tally.bound + SLACK_S, tally


def test_database_hang(service, tallies):
    tally = Tally("database-hang", DB_BOUND_S)
    tallies.append(tally)
    service.feedback(tally, str(uuid.uuid4()))
    pending = []
    with service.hold_database():
        for _ in range(ROUNDS):
            service.call(tally, "POST", SERVICE, REQUEST)
            card = str(uuid.uuid4())
            if service.feedback(tally, card) != 200:
                pending.append(card)
            service.call(tally, "GET", "/readyz", expect=(503,))
    # Every feedback refused with 503 is sent again, as the Retry-After asks, until stored.
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        if service.feedback(tally, pending[0]) == 200:
            pending.pop(0)
        else:
            time.sleep(0.5)
    assert not pending, "feedback still refused 30 s after the database came back"
    tally.lost = len(tally.acknowledged - service.stored_cards())
    assert tally.server_errors == 0 and tally.lost == 0, tally
    assert tally.worst < tally.bound + SLACK_S, tally


def test_slow_loris_clients(service, tallies):
    if service.front is None:
        pytest.skip("nginx is not installed: without the front, slow clients hold the sync workers (README)")
    tally = Tally("slow-loris-via-nginx", 0.5)
    tallies.append(tally)
    loris = SlowLoris(service.front["url"], 10 * ROUNDS, interval=0.5, seconds=6)
    try:
        time.sleep(0.5)
        for _ in range(ROUNDS):
            service.call(tally, "GET", "/healthz", base=service.front["url"], verify=service.front["cert"])
            service.call(tally, "POST", SERVICE, REQUEST, base=service.front["url"], verify=service.front["cert"])
    finally:
        loris.close()
    assert tally.server_errors == 0 and tally.worst < tally.bound + SLACK_S, tally


def test_hostile_inputs(service, tallies):
    tally = Tally("hostile-inputs", 0.5)
    tallies.append(tally)
    overflow = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                              "outcomeTimestamp": "9999-12-31T23:59:59-23:59"}]}
    nul = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-11-30T10:00:00Z",
                         "overrideReason": {"userComment": "a\x00b"}}]}
    for _ in range(ROUNDS):
        service.call(tally, "POST", FEEDBACK, overflow, expect=(400,))
        service.call(tally, "POST", FEEDBACK, nul, expect=(400,))
        service.call(tally, "POST", SERVICE, {**REQUEST, "hookInstance": f"{uuid.uuid4()}\x00"})
        started = time.monotonic()
        token = sandbox_token(service.public + SERVICE).encode()
        status = _raw_status(service.url, b"POST " + SERVICE.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: "
                             b"Bearer " + token + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        tally.record(status, time.monotonic() - started)
        assert status == 400, status
    assert tally.server_errors == 0 and tally.worst < tally.bound + SLACK_S, tally


def _raw_status(url: str, data: bytes) -> int:
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        first = sock.recv(64)
    return int(first.split()[1])


def test_threads_left_behind_are_bounded(service):
    """After every fault, the service answers at once and is ready again: nothing it started
    is still holding it."""
    end = time.monotonic() + 20
    while True:
        started = time.monotonic()
        status = requests.get(service.url + "/readyz", timeout=10).status_code
        assert time.monotonic() - started < DB_BOUND_S + SLACK_S
        if status == 200:
            break
        assert time.monotonic() < end, "not ready 20 s after the last fault"
        time.sleep(0.5)
    assert threading.active_count() < 200  # this process's helpers (trickling servers, proxies) ended too
