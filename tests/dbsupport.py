"""Database fixtures: every test that touches the database runs on SQLite and on PostgreSQL.

SQLite is the embedded default in the test's own DATA_DIR (conftest points every app at
tmp_path). PostgreSQL runs when ``VCF_CDS_TEST_POSTGRES_URL`` is set
(``postgresql+psycopg://user:password@127.0.0.1/db``): each test gets a fresh schema,
dropped afterwards. Without the variable those tests are skipped, unless
``VCF_CDS_REQUIRE_POSTGRES=1`` (set by ``.ci/run``), which makes them fail instead.

Its fixtures are registered for every test module by ``pytest_plugins`` in ``conftest.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import TEST_APP_CONFIG, make_app
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cds_service.app import state_of

POSTGRES_URL = os.environ.get("VCF_CDS_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("VCF_CDS_REQUIRE_POSTGRES") == "1"
BACKENDS = ["sqlite", "postgresql"]
TEST_HMAC_KEY = "test-audit-key-" + "0123456789abcdef" * 2


def postgres_or_skip() -> str:
    """The test server's URL; skip (or fail under VCF_CDS_REQUIRE_POSTGRES=1) without one."""
    if POSTGRES_URL:
        return POSTGRES_URL
    message = "VCF_CDS_TEST_POSTGRES_URL is not set: no PostgreSQL server to test on"
    if REQUIRE_POSTGRES:
        pytest.fail(message + " (VCF_CDS_REQUIRE_POSTGRES=1)")
    pytest.skip(message)


@pytest.fixture(params=BACKENDS)
def db_config(request) -> dict[str, Any]:
    """Settings (upper-case keys) pointing an app at a fresh, migrated database of each backend."""
    if request.param == "sqlite":
        yield {}
        return
    admin = create_engine(postgres_or_skip(), isolation_level="AUTOCOMMIT")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    config = {"DATABASE_URL": url.render_as_string(hide_password=False), "AUDIT_HMAC_KEY": TEST_HMAC_KEY}
    from cds_service.settings import Settings
    from cds_service.store.db import Database

    db = Database.from_settings(Settings.load(config))
    db.upgrade()
    db.dispose()
    try:
        yield config
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def env_for(config: dict[str, Any]) -> dict[str, str]:
    """``VCF_CDS_*`` environment variables for the command line, same database as ``config``."""
    return {f"VCF_CDS_{k}": str(v) for k, v in {**TEST_APP_CONFIG, **config}.items()}


@pytest.fixture()
def app_factory(db_config) -> Callable[..., Any]:
    """``app_factory(**overrides)``: make_app on the test database; engines closed at teardown."""
    apps = []

    def factory(**overrides: Any):
        app = make_app(**{**db_config, **overrides})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        state_of(app).database.dispose()


@pytest.fixture()
def db_app(app_factory):
    """An app on the test database."""
    return app_factory()


@pytest.fixture()
def database(db_app):
    """The test app's :class:`cds_service.store.db.Database`."""
    return state_of(db_app).database


def run_in_processes(fn: Callable[[Any], Any], args: list[Any], timeout: float = 60) -> list[Any]:
    """Run ``fn(arg)`` for each arg in its own forked process, all released at once by a
    barrier; return the results in order. ``fn`` and what it reads from globals are
    inherited through fork. Raises AssertionError naming a child that failed."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()

    def child(index: int, arg: Any) -> None:
        try:
            barrier.wait(timeout=timeout)
            results.put((index, True, fn(arg)))
        except BaseException as exc:
            results.put((index, False, f"{type(exc).__name__}: {exc}"))

    procs = [ctx.Process(target=child, args=(i, a)) for i, a in enumerate(args)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    for _ in procs:
        index, ok, value = results.get(timeout=timeout)
        assert ok, f"process {index} failed: {value}"
        out[index] = value
    for p in procs:
        p.join(timeout=timeout)
    return [out[i] for i in range(len(args))]
