"""The composition root: ``create_app`` and the typed application state it builds."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import FIXTURES, TEST_APP_CONFIG, make_app
from dbsupport import TEST_HMAC_KEY
from sqlalchemy import func, select

from cds_service.app import AppState, create_app, state_of
from cds_service.decision.knowledge import load_knowledge
from cds_service.settings import Settings
from cds_service.store.db import Database
from cds_service.store.tables import AuditCall

SERVICE_URL = "/cds-services/vcf-order-select"


def test_app_serves_the_knowledge_and_database_it_is_handed(tmp_path):
    knowledge = load_knowledge()
    database = Database.from_settings(Settings.load({"DATA_DIR": str(tmp_path / "own")}))
    database.upgrade()
    # KNOWLEDGE_DIR names nothing: knowledge handed in is used as it is, never loaded again.
    app = create_app({**TEST_APP_CONFIG, "KNOWLEDGE_DIR": str(tmp_path / "absent"), "AUDIT_HMAC_KEY": TEST_HMAC_KEY},
                     knowledge=knowledge, database=database)
    state = state_of(app)
    assert state.knowledge is knowledge and state.database is database
    body = (FIXTURES / "requests" / "v1-new-vcf-mri-with-contrast.json").read_bytes()
    assert app.test_client().post(SERVICE_URL, data=body, content_type="application/json").status_code == 200
    with database.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditCall)).scalar_one() == 1
    assert state.audit.failures.value == 0
    database.dispose()


def test_state_is_typed_and_frozen():
    state = state_of(make_app())
    assert isinstance(state, AppState)
    assert isinstance(state.settings, Settings) and state.audit.database is state.database
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.knowledge = None  # type: ignore[misc]
    state.database.dispose()


def test_each_app_has_its_own_state():
    first, second = make_app(), make_app()
    assert state_of(first) is not state_of(second)
    assert state_of(first).audit.failures is not state_of(second).audit.failures
    for app in (first, second):
        state_of(app).database.dispose()
