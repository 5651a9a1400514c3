"""A database that hangs instead of refusing never holds a call beyond its stated bound.

PostgreSQL is reached through a TCP proxy on loopback that can be frozen (it keeps the
connections open and stops forwarding: what a server under SIGSTOP looks like); SQLite is
held by another connection's write lock. Under either: hook calls are answered (the replay
check falls back to this process, and still refuses a replay), feedback gets its 503 with
Retry-After, ``/readyz`` says not ready, each within ``DB_TIMEOUT_SECONDS`` plus a generous
margin; once the database answers again, everything is written again. A write ended at its
bound is rolled back, not left to land later.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from client_tokens import BASE, SANDBOX_ISSUERS_FILE, bearer, sandbox_token
from conftest import FIXTURES, load_json, make_app
from dbsupport import TEST_HMAC_KEY, postgres_or_skip
from faults import FreezableProxy
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from cds_service.store.tables import AuditCall, Feedback
from cds_service.web.state import state_of

SERVICE = "/cds-services/vcf-order-select"
REQUEST = load_json(FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json")
DB_TIMEOUT_S = 0.5
MARGIN_S = 2.5  # generous, for a shared machine; the bound itself is DB_TIMEOUT_SECONDS per step


def feedback_body() -> dict:
    return {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                          "outcomeTimestamp": "2026-01-02T03:04:05Z"}]}


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - started


class Caller:
    """A CDS Client with auth on: every call signed with a fresh sandbox token (jti)."""

    def __init__(self, app) -> None:
        self.client = app.test_client()

    def hook(self, token: str | None = None):
        token = token or sandbox_token(BASE + SERVICE)
        return timed(self.client.post, SERVICE, json=REQUEST, headers=bearer(token))

    def feedback(self, body=None):
        token = sandbox_token(BASE + SERVICE + "/feedback")
        return timed(self.client.post, SERVICE + "/feedback", json=body or feedback_body(), headers=bearer(token))

    def readyz(self):
        return timed(self.client.get, "/readyz")


def rows(url, model) -> int:
    """How many rows ``model``'s table holds, read on a connection of its own to ``url``."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(model)).scalar_one()
    finally:
        engine.dispose()


def bounded_app(**config):
    return make_app(AUTH="on", TRUSTED_ISSUERS=str(SANDBOX_ISSUERS_FILE), DB_TIMEOUT_SECONDS=DB_TIMEOUT_S, **config)


def check_hung_database_is_bounded(caller: Caller) -> None:
    token = sandbox_token(BASE + SERVICE)
    (resp, elapsed) = caller.hook(token)
    assert resp.status_code == 200 and elapsed < DB_TIMEOUT_S * 2 + MARGIN_S, elapsed
    (resp, elapsed) = caller.hook(token)  # the same jti again: caught by this process's cache
    assert resp.status_code == 401 and elapsed < DB_TIMEOUT_S * 2 + MARGIN_S, elapsed
    (resp, elapsed) = caller.feedback()
    assert resp.status_code == 503 and resp.headers["Retry-After"], resp.get_data(as_text=True)
    assert resp.get_json()["resourceType"] == "OperationOutcome" and elapsed < DB_TIMEOUT_S + MARGIN_S, elapsed
    (resp, elapsed) = caller.readyz()
    assert resp.status_code == 503 and resp.get_json()["checks"]["database"].startswith("failed")
    assert elapsed < DB_TIMEOUT_S + MARGIN_S, elapsed


def wait_until_written(caller: Caller, within: float = 20) -> None:
    """Feedback stored again (the cool-down has passed and the connections were replaced)."""
    end = time.monotonic() + within
    while True:
        (resp, _) = caller.feedback()
        if resp.status_code == 200:
            return
        assert time.monotonic() < end, f"still {resp.status_code} {within} s after the database came back"
        time.sleep(0.5)


def wait_until_ready(caller: Caller, within: float = 20) -> None:
    end = time.monotonic() + within
    while caller.readyz()[0].status_code != 200:
        assert time.monotonic() < end, f"/readyz not ready {within} s after the database came back"
        time.sleep(0.5)


@pytest.fixture()
def postgres_behind_proxy():
    """(proxy, settings) for a fresh migrated schema of the test server, reached through a FreezableProxy."""
    url = make_url(postgres_or_skip())
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(port=proxy.port).update_query_dict({"options": f"-csearch_path={schema}"})
    config = {"DATABASE_URL": proxied.render_as_string(hide_password=False), "AUDIT_HMAC_KEY": TEST_HMAC_KEY}
    from cds_service.settings import Settings
    from cds_service.store.db import Database

    with Database.from_settings(Settings.load(config)) as db:
        db.upgrade()
    try:
        yield proxy, config, url.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        proxy.thaw()
        proxy.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_a_hanging_postgresql_never_holds_a_call(postgres_behind_proxy):
    proxy, config, direct_url = postgres_behind_proxy
    app = bounded_app(**config)
    caller = Caller(app)
    try:
        assert caller.hook()[0].status_code == 200
        assert caller.feedback()[0].status_code == 200
        proxy.freeze()
        check_hung_database_is_bounded(caller)
        # The steps blocked on the frozen server were ended with their calls (their sockets
        # cut), though the server still does not answer: nothing is left waiting on it.
        assert state_of(app).database.pending == 0, "database steps still stuck on a frozen server"
        proxy.thaw()
        wait_until_written(caller)
        assert caller.hook()[0].status_code == 200
        wait_until_ready(caller)
    finally:
        proxy.thaw()
        state_of(app).database.dispose()
    assert rows(direct_url, Feedback) >= 2
    assert rows(direct_url, AuditCall) >= 2


def test_a_postgresql_that_hangs_before_the_first_connection_never_holds_a_call(postgres_behind_proxy):
    """No connection is pooled yet: each step has to open one from a frozen server."""
    proxy, config, _ = postgres_behind_proxy
    app = bounded_app(**config)
    caller = Caller(app)
    try:
        proxy.freeze()
        check_hung_database_is_bounded(caller)
        assert state_of(app).database.pending == 0
        proxy.thaw()
        wait_until_written(caller)
        assert caller.hook()[0].status_code == 200
    finally:
        proxy.thaw()
        state_of(app).database.dispose()


def test_calls_in_flight_together_on_a_hanging_postgresql_are_each_bounded(postgres_behind_proxy):
    """A threaded worker: several hook calls blocked on the frozen server at once (one on the
    pooled connection, the others opening their own) are all answered within the bound."""
    proxy, config, _ = postgres_behind_proxy
    app = bounded_app(**config)
    callers = [Caller(app) for _ in range(3)]
    try:
        assert callers[0].hook()[0].status_code == 200
        proxy.freeze()
        with ThreadPoolExecutor(len(callers)) as pool:
            answers = list(pool.map(Caller.hook, callers))
        assert [resp.status_code for resp, _ in answers] == [200, 200, 200]
        assert max(elapsed for _, elapsed in answers) < DB_TIMEOUT_S * 2 + MARGIN_S, answers
        assert state_of(app).database.pending == 0
        proxy.thaw()
        wait_until_written(callers[1])
    finally:
        proxy.thaw()
        state_of(app).database.dispose()


def test_a_locked_sqlite_database_never_holds_a_call(tmp_path):
    app = bounded_app()
    caller = Caller(app)
    assert caller.hook()[0].status_code == 200
    database = state_of(app).database
    holder = sqlite3.connect(database.engine.url.database, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        check_hung_database_is_bounded(caller)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_until_written(caller)
    # The audit write ended at its bound was rolled back, not left to land once the lock was
    # released: the call answered meanwhile is counted as not written, and only the first is kept.
    assert state_of(app).audit.failures.value == 1
    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditCall)).scalar_one() == 1
    database.dispose()


def test_pooled_connections_lost_to_a_server_restart_cost_no_call(postgres_behind_proxy):
    # The request path's pool lends connections without pinging them first: the step that
    # finds its connection dead (here its server process ended, as a restart ends them all)
    # runs once more on a fresh one. Nothing is lost and the jti still counts.
    _proxy, config, direct_url = postgres_behind_proxy
    app = bounded_app(**config)
    caller = Caller(app)
    database = state_of(app).database
    assert caller.hook()[0].status_code == 200
    assert caller.feedback()[0].status_code == 200
    pids = {connection.info.backend_pid for connection in list(database._connections) if not connection.closed}
    admin = create_engine(direct_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for pid in pids:
                assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        token = sandbox_token(BASE + SERVICE)
        resp, _ = caller.hook(token)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert state_of(app).audit.failures.value == 0  # its audit record was written
        assert rows(direct_url, AuditCall) == 2
        assert Caller(bounded_app(**config)).hook(token)[0].status_code == 401  # another worker sees the jti
        assert caller.feedback()[0].status_code == 200
        assert caller.readyz()[0].status_code == 200
    finally:
        admin.dispose()


def test_an_audit_write_that_landed_before_its_connection_was_lost_is_not_taken_for_a_replay(
        postgres_behind_proxy, monkeypatch):
    # The connection dies after the server committed the write but before its answer came
    # back: the second try finds the call's own jti recorded. That is not a replay.
    from contextlib import contextmanager

    from sqlalchemy.exc import OperationalError

    from cds_service.store.db import Database

    _proxy, config, direct_url = postgres_behind_proxy
    real, lost = Database.autocommit, []

    @contextmanager
    def answer_lost_after_commit(self):
        with real(self) as conn:
            yield conn
        if not lost:
            lost.append(True)
            raise OperationalError("INSERT ...", {}, Exception("server closed the connection unexpectedly"),
                                   connection_invalidated=True)

    monkeypatch.setattr(Database, "autocommit", answer_lost_after_commit)
    app = bounded_app(**config)
    token = sandbox_token(BASE + SERVICE)
    resp, _ = Caller(app).hook(token)
    assert lost and resp.status_code == 200, resp.get_data(as_text=True)
    assert state_of(app).audit.failures.value == 0
    assert rows(direct_url, AuditCall) == 1  # written once
    assert Caller(bounded_app(**config)).hook(token)[0].status_code == 401  # and its jti counts
