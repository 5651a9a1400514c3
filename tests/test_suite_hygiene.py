"""The suite keeps to temporary directories (the final check is ``conftest._repo_data_dir_untouched``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from conftest import REPO_DATA_DIR, SESSION_DATA_DIR, TEST_APP_CONFIG, directory_state, make_app

from cds_service.app import state_of
from cds_service.settings import Settings


def test_a_test_app_keeps_its_data_in_the_tests_temporary_directory(tmp_path):
    app = make_app()
    data_dir = Settings.load(TEST_APP_CONFIG).data_dir
    assert data_dir == tmp_path / "var"
    assert state_of(app).database.engine.url.database == str(tmp_path / "var" / "vcf-cds.sqlite3")
    state_of(app).database.dispose()


def test_apps_built_outside_a_test_use_a_temporary_directory_too():
    assert SESSION_DATA_DIR.is_relative_to(Path(tempfile.gettempdir()))
    assert not SESSION_DATA_DIR.is_relative_to(REPO_DATA_DIR.parent)


def test_directory_state_sees_a_changed_file(tmp_path):
    assert directory_state(tmp_path / "absent") is None
    (tmp_path / "db").write_bytes(b"one")
    before = directory_state(tmp_path)
    (tmp_path / "db").write_bytes(b"one more")
    assert directory_state(tmp_path) != before
