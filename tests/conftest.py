"""Shared test fixtures: paths to the repo's fixtures and to ../shared (beside the clone in CI).

No test writes outside a temporary directory: every app keeps its database and audit key in
the test's ``tmp_path`` (apps built outside a test, at import, in one temporary directory of
the session), and the session fails if the repository's own data directory (``./var``, the
default ``DATA_DIR``) was created or changed.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
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


def request_body(case_id: str) -> dict:
    """The fixture request ``fhir_fixtures/requests/<case_id>.json`` as an EHR posts it."""
    return load_json(FIXTURES / "requests" / f"{case_id}.json")


def counter_ids():
    """Card and suggestion ids from a counter, as ``fhir_fixtures/make_expected.py`` makes
    them, so a whole response can be compared with its reviewed expected file."""
    n = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(n):012d}"


@pytest.fixture(scope="session")
def knowledge():
    from cds_service.decision.knowledge import load_knowledge

    return load_knowledge()


@pytest.fixture(scope="session")
def schemas():
    from cds_service.protocol.request import load_request_schemas

    return load_request_schemas()


# Where apps built outside a test (at import time) keep their data; each test gets its own
# below. Removed at the end of the session.
SESSION_DATA_DIR = Path(tempfile.mkdtemp(prefix="vcf-cds-tests-"))
# The developer's data directory: the default DATA_DIR, relative to the repository.
REPO_DATA_DIR = ROOT / "var"
# Hypothesis keeps caches (constants, Unicode tables) under ./.hypothesis unless told otherwise.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(SESSION_DATA_DIR / "hypothesis"))

# Settings every test app starts from; a test overrides only what it is about. Client
# authentication is off here so each test exercises its own subject; tests/test_auth.py
# builds apps with AUTH="on".
# The database bound is generous here: on a loaded machine a write can take over a second,
# and these tests read what was written; the bound itself is tested with its own small value
# (test_db_bounds.py, test_chaos.py).
TEST_APP_CONFIG: dict = {"AUTH": "off", "DATA_DIR": str(SESSION_DATA_DIR / "var"), "DB_TIMEOUT_SECONDS": 30}


def make_app(**overrides):
    """A Flask app on the test defaults plus ``overrides`` (setting names in upper case)."""
    from cds_service.app import create_app

    return create_app({**TEST_APP_CONFIG, **overrides})


def directory_state(path: Path) -> dict[str, tuple[int, int]] | None:
    """Every file under ``path`` with its size and modification time (ns); None when ``path``
    does not exist. SQLite touches its -wal and -shm files on every open, so a database that
    was only opened shows too."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def _repo_data_dir_untouched():
    """The suite's last check: the repository's ./var is as it was before the first test."""
    before = directory_state(REPO_DATA_DIR)
    yield
    shutil.rmtree(SESSION_DATA_DIR, ignore_errors=True)
    after = directory_state(REPO_DATA_DIR)
    assert after == before, (f"the test suite wrote into {REPO_DATA_DIR} (the developer's DATA_DIR); "
                             f"a test app or command missed the temporary DATA_DIR. Before: {before}; after: {after}")


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
