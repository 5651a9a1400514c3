"""Shared test fixtures: paths to the repo's fixtures and to ../shared (beside the clone in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The database fixtures (db_config, database, db_app, app_factory) for every test module.
pytest_plugins = ["dbsupport"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
INTEROP = SHARED / "interop"
FIXTURES = ROOT / "fhir_fixtures"


def load_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def knowledge():
    from cds_service.decision.knowledge import load_knowledge

    return load_knowledge()


@pytest.fixture(scope="session")
def schemas():
    from cds_service.protocol.request import load_request_schemas

    return load_request_schemas()


# Settings every test app starts from; a test overrides only what it is about. Client
# authentication is off here so each test exercises its own subject; tests/test_auth.py
# builds apps with AUTH="on".
TEST_APP_CONFIG: dict = {"AUTH": "off"}


def make_app(**overrides):
    """A Flask app on the test defaults plus ``overrides`` (setting names in upper case)."""
    from cds_service.app import create_app

    return create_app({**TEST_APP_CONFIG, **overrides})


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path, monkeypatch):
    """Every test app keeps its database and audit key under the test's tmp_path,
    never in the developer's data directory."""
    monkeypatch.setitem(TEST_APP_CONFIG, "DATA_DIR", str(tmp_path / "var"))


@pytest.fixture()
def app():
    return make_app()


@pytest.fixture()
def client(app):
    return app.test_client()
